"""A flood of refused commands from one session must not make anybody's events vanish.

The review found that one audit event whose name did not fit its column ("folder-
unsubscribe", refused to a read-only delegate) made the database refuse its whole batch,
other users' events included: any logged-in user could erase the trail. Here one delegate
floods refused UNSUBSCRIBE while the holder works in her own BAL: every event of both is
written."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.fronts.imap.relay import MAX_AUDITS_IN_FLIGHT
from tests.support.imap import login
from tests.support.sasl import xoauth2_b64
from tests.support.stacks import Stack, identity

MARTIN = "claire.martin@medecin.mssante.fr"
MOREAU = "eve.moreau@medecin.mssante.fr"
BERNARD = "899700000003"
FLOOD = 600
WORK = 60


async def written(stack: Stack, mailbox: str, action: str) -> list[Any]:
    """The events of `action` on `mailbox` in the trail, once every event handed over so
    far is written."""
    assert stack.gateway.audit is not None
    assert stack.gateway.delegations is not None
    await stack.gateway.audit.flush()
    found = await stack.gateway.delegations.audit_for(mailbox, limit=10_000)
    return [e for e in found if e.action == action]


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

    stores = await written(stack, MARTIN, "store")
    assert sorted(e.detail for e in stores) == sorted(f"1 +FLAGS (work{n})" for n in range(WORK))
    assert all(e.actor_idnat == "899700000001" and e.result == "ok" for e in stores)
    assert len(await written(stack, MARTIN, "select")) == WORK
    assert len(await written(stack, MARTIN, "login")) == 1

    refused = await written(stack, MOREAU, "folder-unsubscribe")
    assert len(refused) == FLOOD
    assert all(e.result == "refused:noperm" and e.actor_idnat == BERNARD for e in refused)


async def test_a_flooding_session_waits_for_the_trail_instead_of_the_others(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the trail is slower than a session's commands, that session waits (its events
    in flight stay bounded), not everybody else's logins behind an unbounded backlog."""
    registry = stack.gateway.delegations
    assert registry is not None
    assert stack.gateway.imap is not None
    await registry.grant(await identity(stack, "dr-moreau"), MOREAU, BERNARD, ["read"])
    original = registry.record_many

    async def slow(events: list[Any]) -> int:
        await asyncio.sleep(0.02)  # a busy database
        return await original(events)

    monkeypatch.setattr(registry, "record_many", slow)
    flooder = await login(stack, "sec-bernard", MOREAU)
    [relay] = [r for group in stack.gateway.imap.live._relays.values() for r in group]
    count = 3000
    seen: list[int] = []

    async def flood() -> None:
        await flooder.send(b"".join(b"u%d UNSUBSCRIBE F%d\r\n" % (n, n) for n in range(count)))
        for n in range(count):
            assert (await flooder.line(wait=60)).startswith(b"u%d NO [NOPERM]" % n)
            seen.append(len(relay._audits))

    flooding = asyncio.create_task(flood())
    worker = await login(stack, "dr-martin", MARTIN)  # meanwhile, another person logs in
    await worker.ok("SELECT INBOX")
    await flooding
    await flooder.close()
    await worker.close()
    assert max(seen) <= MAX_AUDITS_IN_FLIGHT
    refused = await written(stack, MOREAU, "folder-unsubscribe")
    assert len(refused) == count


async def test_a_stray_8_bit_byte_from_the_client_does_not_erase_its_events(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """aiosmtpd reads an EHLO name with surrogateescape: the byte 0xff arrives as a lone
    surrogate, which no database encoder takes. The event is cleaned, not lost; an
    envelope address with such a byte is refused without a traceback."""
    registry = stack.gateway.delegations
    assert registry is not None
    token = await stack.token("dr-martin")
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.smtp_port)
    try:
        await reader.readline()
        writer.write(b"EHLO pc\xff\r\nAUTH XOAUTH2 " + xoauth2_b64(MARTIN, token) + b"\r\n")
        while (await reader.readline())[:4] != b"235 ":
            pass
        writer.write(b"MAIL FROM:<claire.martin\xff@medecin.mssante.fr>\r\n")
        assert (await reader.readline()).startswith(b"550 5.7.1")
        message = f"From: {MARTIN}\r\nTo: {MARTIN}\r\nSubject: s\r\nX-MSS-NIL: N\r\n\r\nx\r\n"
        writer.write(f"MAIL FROM:<{MARTIN}>\r\nRCPT TO:<{MARTIN}>\r\nDATA\r\n".encode())
        for expected in (b"250", b"250", b"354"):
            assert (await reader.readline()).startswith(expected)
        writer.write(message.encode() + b".\r\n")
        assert (await reader.readline()).startswith(b"250")
    finally:
        writer.close()
    sends = await written(stack, MARTIN, "send")
    assert [e.result for e in sends] == ["ok"]
    assert sends[0].software == "pc?"
    assert not [r for r in caplog.records if r.exc_info]
