"""From an empty database to a BAL opened, as a new operator does it: `lps-gateway serve
--config` on an empty registry (it says so, and stays ready), `lps-gateway directory
import examples/directory-demo.csv`, then a token from a separately running
`mock-operator serve` opens Claire MARTIN's BAL with imaplib's XOAUTH2: real processes,
real sockets, no restart between the import and the login."""

from __future__ import annotations

import asyncio
import imaplib
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.health import REGISTRY_EMPTY
from tests.support.waiting import eventually
from tests.test_cli import command, mock_process, serve_config, start, stop, token_from_cli

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parents[1] / "examples" / "directory-demo.csv"
CLAIRE = "claire.martin@medecin.mssante.fr"

__all__ = ["mock_process"]  # the fixture, shared with the commands' tests


async def registry_check(url: str, want: str) -> dict[str, Any]:
    """/readyz once its registry check (cached for a second) says `want`: still 200."""
    seen: dict[str, Any] = {}

    async def says() -> bool:
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.get(f"{url}/readyz")
        assert answer.status_code == 200, answer.text
        seen.update(answer.json())
        return bool(seen["checks"].get("registry") == want)

    await eventually(says, f"/readyz saying registry {want!r}")
    return seen


async def test_empty_database_then_import_then_login(
    tmp_path: Path, mock_process: tuple[subprocess.Popen[str], str]
) -> None:
    _mock, mock_url = mock_process
    config = serve_config(tmp_path, mock_process)
    gateway = start([command("lps-gateway"), "serve", "--config", str(config)], tmp_path)
    try:
        assert gateway.stdout is not None
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", gateway.stdout.readline())
        imap = re.search(r"IMAP \(STARTTLS\): +127\.0\.0\.1:(\d+)", gateway.stdout.readline())
        assert found
        assert imap
        url = found.group(1)
        empty = await registry_check(url, REGISTRY_EMPTY)
        assert empty["status"] == "ready"

        done = await asyncio.to_thread(
            subprocess.run,
            [command("lps-gateway"), "directory", "import", str(EXAMPLE), "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "imported: added 17, changed 0" in done.stdout
        assert "unknown backend 'historic'" in done.stderr  # this gateway has one backend
        await registry_check(url, "ok")

        token = await asyncio.to_thread(token_from_cli, mock_url)

        def open_bal() -> tuple[str, str]:
            with imaplib.IMAP4("127.0.0.1", int(imap.group(1))) as client:
                typ, _ = client.authenticate(
                    "XOAUTH2", lambda _: f"user={CLAIRE}\x01auth=Bearer {token}\x01\x01".encode()
                )
                selected, _ = client.select("INBOX")
                return typ, selected

        assert await asyncio.to_thread(open_bal) == ("OK", "OK")
    finally:
        assert stop(gateway) == 0
    logs = gateway.stderr.read() if gateway.stderr else ""
    assert logs.count("registry.empty") == 1, logs
