"""The command that tells the operator's MTA where a BAL now lives, run after a cut-over
or a rollback (`[migration] mta_hook`): an argv, never a shell line, with `{bal}`,
`{source}` and `{target}` replaced in each argument."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections.abc import Sequence

log = logging.getLogger(__name__)

OUTPUT_KEPT = 300


async def run_hook(
    argv: Sequence[str], *, bal: str, source: str, target: str, seconds: float
) -> str | None:
    """Run the hook; None when there is none, "ok", or what went wrong (exit status and
    the end of its output, or the timeout)."""
    if not argv:
        return None
    values = {"bal": bal, "source": source, "target": target}
    if any(value.startswith("-") for value in values.values()):
        return "not started: a field starts with '-' (it would read as an option)"
    try:
        command = [part.format_map(values) for part in argv]
    except (KeyError, ValueError, IndexError) as exc:
        return f"not started: mta_hook names an unknown field {exc}"[:OUTPUT_KEPT]
    # subprocess.Popen, waited for in a thread: Python 3.11's asyncio child watcher can lose
    # the race to reap a child and report 255 for a hook that succeeded (CPython gh-86276)
    try:
        process = await asyncio.to_thread(
            subprocess.Popen,
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except OSError as exc:
        return f"not started: {exc}"[:OUTPUT_KEPT]
    try:
        output, _ = await asyncio.to_thread(process.communicate, timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.communicate)
        return f"timed out after {seconds:g} s"
    finally:
        if process.poll() is None:  # cancelled: the hook does not outlive its job
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    if process.returncode == 0:
        log.info("migration.mta_hook_done", extra={"bal": bal, "target": target})
        return "ok"
    tail = output.decode("utf-8", "replace").strip()[-OUTPUT_KEPT:]
    return f"exit {process.returncode}: {tail}"
