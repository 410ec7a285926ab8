"""The gateway's decision cache and batched audit, over a real registry (SQLite and,
when configured, PostgreSQL): fast repeats, yet a revocation applies at once."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from delegation import DelegationService
from delegation.audit import AuditAction, AuditRecord
from gateway.audit import AuditSink
from gateway.decisions import DecisionCache
from tests.delegation.conftest import Clock, person

MARTIN = "claire.martin@medecin.mssante.fr"
BERNARD = "899700000003"


@pytest.fixture
async def cache(seeded: DelegationService):
    decisions = DecisionCache(seeded, ttl=60)
    decisions.start()
    await asyncio.sleep(0)  # let it subscribe
    yield decisions
    await decisions.stop()


async def count_reads(service: DelegationService, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = service.decide

    async def counting(identity, mailbox):  # type: ignore[no-untyped-def]
        calls.append(mailbox)
        return await original(identity, mailbox)

    monkeypatch.setattr(service, "decide", counting)
    return calls


async def test_grants_are_remembered_refusals_are_not(
    seeded: DelegationService, cache: DecisionCache, monkeypatch: pytest.MonkeyPatch
):
    reads = await count_reads(seeded, monkeypatch)
    for _ in range(3):
        assert (await cache.decide(person(BERNARD), MARTIN)).grant is not None
        assert (await cache.decide(person(BERNARD), "eve.moreau@medecin.mssante.fr")).grant is None
    assert reads.count(MARTIN) == 1
    assert reads.count("eve.moreau@medecin.mssante.fr") == 3


async def test_revocation_is_seen_at_once(
    seeded: DelegationService, cache: DecisionCache, monkeypatch: pytest.MonkeyPatch
):
    assert (await cache.decide(person(BERNARD), MARTIN)).grant is not None
    holder = person("899700000001")
    (delegation,) = [
        d for d in await seeded.delegations_of(holder, MARTIN) if d.delegate_idnat == BERNARD
    ]
    await seeded.revoke(holder, MARTIN, delegation.id)
    await asyncio.sleep(0.01)  # the bus delivers to the cache's subscription
    decision = await cache.decide(person(BERNARD), MARTIN)
    assert decision.grant is None
    assert decision.refusal == "revoked"


async def test_a_change_during_a_read_is_not_cached(
    seeded: DelegationService, cache: DecisionCache, monkeypatch: pytest.MonkeyPatch
):
    """The read started before the revocation: its (stale) grant must not be remembered."""
    original = seeded.decide
    holder = person("899700000001")
    (delegation,) = [
        d for d in await seeded.delegations_of(holder, MARTIN) if d.delegate_idnat == BERNARD
    ]

    async def slow(identity, mailbox):  # type: ignore[no-untyped-def]
        decision = await original(identity, mailbox)
        await seeded.revoke(holder, MARTIN, delegation.id)
        await asyncio.sleep(0.01)
        return decision

    monkeypatch.setattr(seeded, "decide", slow)
    assert (await cache.decide(person(BERNARD), MARTIN)).grant is not None
    monkeypatch.setattr(seeded, "decide", original)
    assert (await cache.decide(person(BERNARD), MARTIN)).grant is None


async def test_expiry_is_checked_on_every_use(
    seeded: DelegationService, cache: DecisionCache, clock: Clock
):
    holder = person("899700000007")
    soon = clock.now + dt.timedelta(minutes=5)
    await seeded.grant(holder, "eve.moreau@medecin.mssante.fr", BERNARD, ["read"], soon)
    await asyncio.sleep(0.01)
    assert (await cache.decide(person(BERNARD), "eve.moreau@medecin.mssante.fr")).grant
    clock.advance(minutes=6)  # no expiry pass has run: the cache must still refuse
    decision = await cache.decide(person(BERNARD), "eve.moreau@medecin.mssante.fr")
    assert decision.grant is None
    assert decision.refusal == "expired"


async def test_audit_sink_writes_in_batches_and_drains_on_stop(
    seeded: DelegationService, monkeypatch: pytest.MonkeyPatch
):
    batches: list[int] = []
    original = seeded.record_many

    async def counting(events):  # type: ignore[no-untyped-def]
        batches.append(len(events))
        await original(events)

    monkeypatch.setattr(seeded, "record_many", counting)
    sink = AuditSink(seeded)
    sink.start()
    for number in range(1200):
        await sink.submit(
            AuditRecord(BERNARD, MARTIN, AuditAction.READ, "imap", detail=str(number))
        )
    await sink.stop()
    assert sum(batches) == 1200
    assert len(batches) < 1200 / 10
    events = await seeded.audit_for(MARTIN, limit=2000)
    assert {e.detail for e in events if e.action == "read"} == {str(n) for n in range(1200)}
    assert all(e.at is not None for e in events)


async def test_audit_sink_retries_through_an_outage_and_loses_nothing(
    seeded: DelegationService, monkeypatch: pytest.MonkeyPatch
):
    original = seeded.record_many
    failures = {"left": 3}

    async def flaky(events):  # type: ignore[no-untyped-def]
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("database unreachable")
        await original(events)

    monkeypatch.setattr(seeded, "record_many", flaky)
    sink = AuditSink(seeded)
    sink.start()
    for number in range(5):
        await sink.submit(
            AuditRecord(BERNARD, MARTIN, AuditAction.STORE, "imap", detail=f"o{number}")
        )
    await asyncio.wait_for(sink.flush(), 10)
    await sink.stop()
    events = await seeded.audit_for(MARTIN)
    assert {e.detail for e in events if e.action == "store"} == {f"o{n}" for n in range(5)}
