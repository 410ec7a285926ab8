"""Warm backend sessions over the mock operator's modern platform, on real sockets: a
logged-out session is handed to the same person's next login with the same rights from the
same address, looking like a fresh one; never to anyone else; dropped on revocation,
narrowing, a move, a hold, its time being up, the backend's end and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.fronts.imap.relay import Relay
from gateway.runtime import logs
from gateway.settings import MockSettings, Settings
from tests.support.imap import login, scripted
from tests.support.stacks import Stack, identity, mock_backend, running_stack
from tests.support.waiting import until
from tests.support.warm import backend_connections, dropped, parked, warm

MARTIN = "claire.martin@medecin.mssante.fr"
MOREAU = "eve.moreau@medecin.mssante.fr"
BERNARD = "899700000003"


async def logged_out(stack: Stack, persona: str, bal: str = MARTIN) -> None:
    """A session that logs in, selects, reads, and logs out: kept warm."""
    kept = warm(stack, "kept")
    client = await login(stack, persona, bal)
    await client.ok("SELECT INBOX")
    await client.ok("FETCH 1:* (FLAGS)")
    await client.ok("LOGOUT")
    await client.until_closed()
    await until(lambda: warm(stack, "kept") == kept + 1, "the session is kept warm")


@pytest.fixture
def backend_overrides() -> dict[str, Any]:
    return {"keep_warm": 30}


async def test_a_reused_session_looks_like_a_fresh_one(stack: Stack):
    """The first session takes the messages' \\Recent: the second (reused) and the third
    (fresh, the pool emptied) are compared."""
    await scripted(stack, "dr-martin", MARTIN)
    assert warm(stack, "miss") == 1
    await until(lambda: parked(stack) == 1, "the session is kept warm")
    assert backend_connections(stack) == 1

    reused = await scripted(stack, "dr-martin", MARTIN)
    assert warm(stack, "hit") == 1
    assert backend_connections(stack) == 1  # no second connection was opened
    await until(lambda: parked(stack) == 1, "kept again")
    assert stack.gateway.imap is not None
    await stack.gateway.imap.warm.drop_all()
    await until(lambda: backend_connections(stack) == 0, "the pool is empty")

    fresh = await scripted(stack, "dr-martin", MARTIN)
    assert warm(stack, "miss") == 2
    assert reused == fresh
    assert any(b"EXISTS" in line for line in fresh)


async def test_every_client_session_leaves_its_own_audit_trail(stack: Stack):
    await logged_out(stack, "dr-martin")
    await logged_out(stack, "dr-martin")
    assert warm(stack, "hit") == 1
    assert stack.gateway.audit is not None
    assert stack.gateway.delegations is not None
    await stack.gateway.audit.flush()
    events = await stack.gateway.delegations.audit_for(MARTIN)
    logins = [e for e in events if e.action == "login" and e.interface == "imap"]
    assert len(logins) == 2
    assert all(e.result == "ok" and e.mailbox == MARTIN for e in logins)
    reads = [e for e in events if e.action == "read" and e.interface == "imap"]
    assert len(reads) == 2  # each session's own count of read commands


@pytest.mark.parametrize("late", ["update", "kick"])
async def test_a_change_as_the_session_closes_keeps_nothing_warm(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, late: str
):
    """The delegation changed (or a revocation, a PSC logout ended the session) while the
    session was closing, after its client left: too late to apply, so the backend session
    is closed rather than kept with what it was allowed before."""
    kept = Relay._kept

    def changed_meanwhile(relay: Relay, done: Any) -> bool:
        if late == "update":
            relay.update(frozenset(), relay.expires_at)
        else:
            relay.kick("delegation revoked")
        return kept(relay, done)

    monkeypatch.setattr(Relay, "_kept", changed_meanwhile)
    client = await login(stack, "dr-martin", MARTIN)
    await client.ok("SELECT INBOX")
    await client.ok("LOGOUT")
    await client.until_closed()
    await until(lambda: backend_connections(stack) == 0, "the backend session closed")
    assert warm(stack, "kept") == 0
    assert parked(stack) == 0


class _Sessions(logging.Handler):
    """Each record of the gateway with the session it was emitted in."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[logging.LogRecord, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record, logs.session_id.get()))


async def test_a_hit_is_logged_with_the_first_session(stack: Stack):
    """The backend logs a reused session under its first login: the gateway's log names
    that first session in the line of the one that reused it."""
    seen = _Sessions()
    gateway_log = logging.getLogger("gateway")
    gateway_log.addHandler(seen)
    level = gateway_log.level
    gateway_log.setLevel(logging.INFO)
    try:
        await logged_out(stack, "dr-martin")
        await logged_out(stack, "dr-martin")
    finally:
        gateway_log.removeHandler(seen)
        gateway_log.setLevel(level)
    assert warm(stack, "hit") == 1
    closed = [s for r, s in seen.seen if r.getMessage() == "imap.session_closed"]
    (reused,) = [(r, s) for r, s in seen.seen if r.getMessage() == "imap.warm_reused"]
    record, second = reused
    assert record.__dict__["first_session"] == closed[0]
    assert second == closed[1] != closed[0]


async def test_a_client_gone_at_rest_leaves_a_warm_session(stack: Stack):
    client = await login(stack, "dr-martin", MARTIN)
    await client.ok("SELECT INBOX")
    await client.close()  # no LOGOUT: an LPS that just drops the connection
    await until(lambda: parked(stack) == 1, "the session is kept warm")
    again = await login(stack, "dr-martin", MARTIN)
    assert warm(stack, "hit") == 1
    selected = await again.ok("SELECT INBOX")
    assert b"* 3 EXISTS" in selected.untagged
    await again.close()


async def test_never_handed_to_another_person_and_evicted_for_them(stack: Stack):
    """Bernard (a delegate of Martin's BAL, all rights) does not get Martin's session; the
    backend counts both on the same BAL from the same address, so Martin's goes."""
    await logged_out(stack, "dr-martin")
    client = await login(stack, "sec-bernard", MARTIN)
    assert warm(stack, "hit") == 0
    assert warm(stack, "miss") == 2
    assert dropped(stack, "evicted") == 1
    await until(lambda: backend_connections(stack) == 1, "only Bernard's connection is left")
    await client.ok("LOGOUT")


async def test_narrowing_drops_the_warm_session_and_narrower_logins_miss(stack: Stack):
    registry = stack.gateway.delegations
    assert registry is not None
    await logged_out(stack, "sec-bernard")
    await registry.grant(await identity(stack, "dr-martin"), MARTIN, BERNARD, ["read"])
    await until(lambda: parked(stack) == 0, "the wider session is dropped at once")
    assert dropped(stack, "changed") == 1
    await until(lambda: backend_connections(stack) == 0, "and closed")
    client = await login(stack, "sec-bernard", MARTIN)
    assert warm(stack, "hit") == 0
    selected = await client.ok("EXAMINE INBOX")
    assert b"* 3 EXISTS" in selected.untagged
    await client.ok("LOGOUT")


async def test_revocation_drops_the_warm_session_at_once(stack: Stack):
    registry = stack.gateway.delegations
    assert registry is not None
    await logged_out(stack, "sec-bernard")
    holder = await identity(stack, "dr-martin")
    (delegation,) = [
        d for d in await registry.delegations_of(holder, MARTIN) if d.delegate_idnat == BERNARD
    ]
    await registry.revoke(holder, MARTIN, delegation.id)
    await until(lambda: parked(stack) == 0, "dropped when the registry says so")
    assert dropped(stack, "revoked") == 1
    await until(lambda: backend_connections(stack) == 0, "its backend connection closed")


async def test_a_move_of_the_bal_drops_it(stack: Stack):
    registry = stack.gateway.delegations
    assert registry is not None
    await logged_out(stack, "dr-martin")
    await registry.move_mailbox(MARTIN, "elsewhere")  # every node hears it
    await until(lambda: parked(stack) == 0, "a move drops it")
    assert dropped(stack, "moved") == 1
    await until(lambda: backend_connections(stack) == 0, "its backend connection closed")


async def test_a_hold_without_a_move_keeps_it(stack: Stack):
    gate = stack.gateway.gate
    assert gate is not None
    await logged_out(stack, "dr-martin")
    async with gate.hold(MARTIN):  # a cut-over that ends without a move
        waiting = asyncio.create_task(login(stack, "dr-martin", MARTIN))
        await until(lambda: gate.waiting(MARTIN) == 1, "the login waits for the hold")
    client = await waiting
    assert warm(stack, "hit") == 1  # the BAL stayed where it was
    await client.ok("NOOP")
    await client.close()


async def test_a_move_on_this_node_is_a_miss_at_once(stack: Stack):
    """The cut-over's own node: the BAL's epoch is part of the key."""
    gate = stack.gateway.gate
    assert gate is not None
    await logged_out(stack, "dr-martin")
    async with gate.hold(MARTIN) as held:
        held.moved()
    client = await login(stack, "dr-martin", MARTIN)
    assert warm(stack, "hit") == 0
    await client.ok("NOOP")
    await client.close()


async def test_the_backend_ending_it_drops_it(stack: Stack):
    await logged_out(stack, "dr-martin")
    assert stack.mock.imap is not None
    await stack.mock.imap.stop(grace=0)  # says BYE to every session
    await until(lambda: parked(stack) == 0, "dropped on the backend's BYE")
    assert dropped(stack, "backend") == 1


async def test_shutdown_logs_warm_sessions_out(stack: Stack):
    await logged_out(stack, "dr-martin")
    assert stack.gateway.imap is not None
    await stack.gateway.imap.stop(grace=1)
    assert parked(stack) == 0
    assert dropped(stack, "shutdown") == 1
    await until(lambda: backend_connections(stack) == 0, "logged out of the backend")


def keeping_warm(
    seconds: float, tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
) -> contextlib.AbstractAsyncContextManager[Stack]:
    """A stack whose modern backend keeps sessions warm `seconds` (0: not at all)."""

    def configure(settings: Settings, mock: Any) -> None:
        settings.backends = {"modern": mock_backend(mock, keep_warm=seconds)}
        settings.routing.default = "modern"

    return running_stack(stack_settings, mock_settings, tmp_path / "mock", configure)


async def test_time_up_closes_it(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    async with keeping_warm(0.3, tmp_path, stack_settings, mock_settings) as s:
        await logged_out(s, "dr-martin")
        await until(lambda: dropped(s, "expired") == 1, "closed when its time is up")
        await until(lambda: backend_connections(s) == 0, "logged out of the backend")


async def test_keep_warm_zero_relays_logout_to_the_backend(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    async with keeping_warm(0, tmp_path, stack_settings, mock_settings) as s:
        client = await login(s, "dr-martin", MARTIN)
        await client.ok("LOGOUT")
        await client.until_closed()
        await until(lambda: backend_connections(s) == 0, "closed with its client")
        assert warm(s, "kept") == 0
        assert warm(s, "miss") == 0


async def test_the_delegations_expiry_drops_it_before_its_time(stack: Stack):
    registry = stack.gateway.delegations
    assert registry is not None
    # long enough for the session to be logged in and kept on a busy machine, well before
    # its keep_warm (30 s)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
    await registry.grant(await identity(stack, "dr-moreau"), MOREAU, BERNARD, ["read"], soon)
    await logged_out(stack, "sec-bernard", MOREAU)
    await until(lambda: parked(stack) == 0, "dropped when the delegation expires", bound=30)
    assert dropped(stack, "revoked") == 1
    assert dropped(stack, "expired") == 0  # not its keep_warm (30 s)
