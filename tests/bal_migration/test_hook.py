"""The MTA hook (`[migration] mta_hook`): an argv with the move's fields, never a shell
line; its outcome is reported, whatever it does."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from gateway.bal_migration.hook import run_hook
from tests.dovecot import alive
from tests.support.waiting import until

MOVE = {"bal": "jean.dupont@medecin.mssante.fr", "source": "historic", "target": "modern"}


async def test_fields_are_arguments_not_shell(tmp_path: Path) -> None:
    out = tmp_path / "args"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(repr(sys.argv[2:]))"
    argv = [sys.executable, "-c", script, str(out), "{bal}", "{source}->{target}", "$(id)"]
    assert await run_hook(argv, **MOVE, seconds=30) == "ok"
    assert out.read_text() == repr([MOVE["bal"], "historic->modern", "$(id)"])


async def test_failures_are_reported() -> None:
    assert await run_hook([], **MOVE, seconds=30) is None
    failed = await run_hook(
        [sys.executable, "-c", "import sys; print('postmap: no such map'); sys.exit(3)"],
        **MOVE,
        seconds=30,
    )
    assert failed == "exit 3: postmap: no such map"
    missing = await run_hook(["/nonexistent/postmap"], **MOVE, seconds=30)
    assert missing is not None
    assert missing.startswith("not started")
    unknown = await run_hook(["echo", "{password}"], **MOVE, seconds=30)
    assert unknown is not None
    assert "unknown field" in unknown
    option = await run_hook(["echo", "{bal}"], **{**MOVE, "bal": "-rf@x.fr"}, seconds=30)
    assert option is not None
    assert option.startswith("not started")
    slow = await run_hook(
        [sys.executable, "-c", "import time; time.sleep(600)"], **MOVE, seconds=0.5
    )
    assert slow == "timed out after 0.5 s"


async def test_a_cancelled_job_leaves_no_hook_behind(tmp_path: Path) -> None:
    started = tmp_path / "pid"
    script = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
    hook = asyncio.create_task(
        run_hook([sys.executable, "-c", script, str(started)], **MOVE, seconds=600)
    )
    await until(lambda: started.exists() and started.read_text() != "", "the hook started")
    pid = int(started.read_text())
    assert alive(pid)
    hook.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hook
    await until(lambda: not alive(pid), "the hook killed with its job")
