"""A copy run in a child process, for the chaos test to `kill -9`: ``python chaos_copy.py
CONFIG`` runs `copy_bal` with the checkpoints in the given database, and prints
``appended <uid>`` (flushed) right after each APPEND the target acknowledged, before its
checkpoint, so that the parent can kill it between the two; once it has announced
``kill_after`` APPENDs it waits to be killed (reading its stdin, which the parent never
writes), so that the kill falls before their checkpoint for sure. CONFIG (0600, holding the
backends' secrets) is JSON: database_url, kill_after, and source and target, each {name,
bal, settings}. Prints ``done <appended>`` when the run completes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from delegation.db import create_engine
from gateway.backends.base import MailboxAccess
from gateway.backends.kinds import backends_from_settings
from gateway.bal_migration.checkpoint import Checkpoints
from gateway.bal_migration.copy import copy_bal
from gateway.settings import BackendSettings
from tests.bal_migration.appends import WatchedAppends


class Announcing(WatchedAppends):
    """The target access, announcing each APPEND it has made (a pipelined batch once it
    is all done: kill -9 then falls between the batch's APPENDs and its checkpoint)."""

    def __init__(self, access: MailboxAccess, kill_after: int) -> None:
        super().__init__(access)
        self.left = kill_after

    def done(self, uids: Sequence[int]) -> None:
        for uid in uids:
            print(f"appended {uid}", flush=True)
        self.left -= len(uids)
        if self.left <= 0:
            sys.stdin.buffer.read()  # the parent kills us here, before the checkpoint


async def _open(side: dict[str, Any]) -> MailboxAccess:
    settings = BackendSettings(**side["settings"])
    backend = backends_from_settings({side["name"]: settings})[side["name"]]
    return await backend.tools(side["bal"])


async def main(config: dict[str, Any]) -> None:
    engine = create_engine(config["database_url"])
    source = await _open(config["source"])
    target = await _open(config["target"])
    try:
        journal = await Checkpoints(engine).journal(
            config["source"]["bal"], config["source"]["name"], config["target"]["name"]
        )
        report = await copy_bal(
            config["source"]["bal"],
            source,
            Announcing(target, config["kill_after"]),  # type: ignore[arg-type]
            journal,
        )
        print(f"done {report.appended}", flush=True)
    finally:
        await source.aclose()
        await target.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
