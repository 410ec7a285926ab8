"""A flood of refused commands from one session must not make anybody's events vanish.

The review found that one audit event whose name did not fit its column ("folder-
unsubscribe", refused to a read-only delegate) made the database refuse its whole batch,
other users' events included: any logged-in user could erase the trail. Here one delegate
floods refused UNSUBSCRIBE while the holder works in her own BAL: every event of both is
written."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.gateway.conftest import Stack
from tests.gateway.test_imap_proxy import identity, login

MARTIN = "claire.martin@medecin.mssante.fr"
MOREAU = "eve.moreau@medecin.mssante.fr"
BERNARD = "899700000003"
FLOOD = 600
WORK = 60


async def test_a_flood_of_refused_commands_leaves_every_other_event(stack: Stack) -> None:
    registry = stack.gateway.delegations
    assert registry is not None
    assert stack.gateway.audit is not None
    await registry.grant(await identity(stack, "dr-moreau"), MOREAU, BERNARD, ["read"])
    flooder = await login(stack, "sec-bernard", MOREAU)
    worker = await login(stack, "dr-martin", MARTIN)

    async def flood() -> None:
        lines = b"".join(b"u%d UNSUBSCRIBE Folder%d\r\n" % (n, n) for n in range(FLOOD))
        await flooder.send(lines)
        for n in range(FLOOD):
            line = await flooder.line()
            assert line.startswith(b"u%d NO [NOPERM]" % n), line

    async def work() -> None:
        for n in range(WORK):
            await worker.ok("SELECT INBOX")
            await worker.ok(f"STORE 1 +FLAGS (work{n})")

    await asyncio.gather(flood(), work())
    await flooder.close()
    await worker.close()

    async def written(mailbox: str, count: int, action: str) -> list[Any]:
        """The events of `action` on `mailbox` once `count` are in (the relays hand them
        over in the background): waits for them, within a bound."""
        assert stack.gateway.audit is not None
        assert registry is not None
        deadline = time.monotonic() + 60
        while True:
            await stack.gateway.audit.flush()
            events = [
                e for e in await registry.audit_for(mailbox, limit=10_000) if e.action == action
            ]
            if len(events) >= count or time.monotonic() > deadline:
                return events
            await asyncio.sleep(0.05)

    stores = await written(MARTIN, WORK, "store")
    assert sorted(e.detail for e in stores) == sorted(f"1 +FLAGS (work{n})" for n in range(WORK))
    assert all(e.actor_idnat == "899700000001" and e.result == "ok" for e in stores)
    assert len(await written(MARTIN, WORK, "select")) == WORK
    assert len(await written(MARTIN, 1, "login")) == 1

    refused = await written(MOREAU, FLOOD, "folder-unsubscribe")
    assert len(refused) == FLOOD
    assert all(e.result == "refused:noperm" and e.actor_idnat == BERNARD for e in refused)
