"""The node's gate (`gateway.bal_migration.gate`): a held BAL's changes wait, are refused
past `max_wait` or told the BAL moved; a hold waits for the changes under way; ended
sessions are told why."""

from __future__ import annotations

import asyncio

import pytest

from gateway.bal_migration.gate import MOVED_BYE, BalGate, Held, Moved
from tests.support.waiting import until

BAL = "jean.dupont@medecin.mssante.fr"


class Session:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def kick(self, reason: str) -> None:
        self.reasons.append(reason)


async def test_a_change_waits_for_the_hold_then_goes_on() -> None:
    gate = BalGate(max_wait=30)
    async with gate.hold(BAL):
        assert gate.held(BAL.upper())

        async def change() -> str:
            async with gate.writing(BAL):
                return "done"

        task = asyncio.create_task(change())
        await until(lambda: gate.waiting(BAL) == 1, "the change waiting")
        assert not task.done()  # held
    assert await task == "done"
    assert not gate.held(BAL)


async def test_a_change_held_too_long_is_refused() -> None:
    gate = BalGate(max_wait=0.05)
    async with gate.hold(BAL):
        with pytest.raises(Held) as refused:
            await gate.passage(BAL)
        assert not isinstance(refused.value, Moved)
    await gate.passage(BAL)  # released: free again


async def test_a_move_ends_sessions_and_tells_waiting_changes() -> None:
    gate = BalGate(max_wait=30)
    here, elsewhere = Session(), Session()
    gate.add(BAL, here)
    gate.add("other@medecin.mssante.fr", elsewhere)
    waiting = asyncio.create_task(gate.passage(BAL))
    async with gate.hold(BAL) as held:
        await until(lambda: gate.waiting(BAL) == 1, "the change waiting")
        assert held.moved() == 1
    with pytest.raises(Moved):
        await waiting
    assert here.reasons == [MOVED_BYE]
    assert elsewhere.reasons == []
    assert gate.sessions(BAL) == 0
    assert "déplacée" in MOVED_BYE
    assert "reconnecter" in MOVED_BYE
    await gate.passage(BAL)  # the next hold starts afresh


async def test_a_hold_waits_for_changes_under_way() -> None:
    gate = BalGate(drain_wait=30)
    gate.begin(BAL)
    holding = asyncio.Event()

    async def hold() -> None:
        async with gate.hold(BAL):
            holding.set()

    task = asyncio.create_task(hold())
    await until(lambda: gate.held(BAL), "the hold asked for")
    assert not holding.is_set()  # still draining the change under way
    gate.done(BAL)
    await task
    assert holding.is_set()


async def test_a_hold_gives_up_when_changes_do_not_end() -> None:
    gate = BalGate(drain_wait=0.05)
    gate.begin(BAL)
    with pytest.raises(Held):
        async with gate.hold(BAL):
            pytest.fail("held although a change was under way")
    assert not gate.held(BAL)  # nothing stays held
    gate.done(BAL)


async def test_a_session_whose_bal_moved_during_its_login_ends_at_once() -> None:
    gate = BalGate()
    epoch = gate.epoch(BAL)  # the login decides where it goes
    async with gate.hold(BAL) as held:
        held.moved()  # ... the BAL moves before the session is tracked
    late, fresh = Session(), Session()
    gate.add(BAL, late, epoch)
    gate.add(BAL, fresh, gate.epoch(BAL))
    assert late.reasons == [MOVED_BYE]
    assert fresh.reasons == []
    assert gate.sessions(BAL) == 1
