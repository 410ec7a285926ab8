"""Granting, updating, revoking and expiring delegations; their rules and change events."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from delegation import (
    ChangeEvent,
    Conflict,
    DelegationError,
    DelegationService,
    Invalid,
    LocalBus,
    NotFound,
    NotHolder,
    seed,
)
from delegation.models import RIGHTS, DelegationRow
from tests.delegation.conftest import (
    BERNARD,
    CLAIRE_BAL,
    DUPONT,
    DURAND,
    JEAN_BAL,
    LEROY,
    MARTIN,
    MOREAU,
    PERSONAS,
    START,
    Clock,
    identity,
    person,
)


def drain(subscription: object) -> list[ChangeEvent]:
    items = getattr(subscription, "_items")  # noqa: B009 - a peek for tests only
    events = list(items)
    items.clear()
    return events


def test_errors_are_one_family_with_reasons_and_no_http_status() -> None:
    """The HTTP statuses live at the HTTP edge (tests/api/test_problems.py), not here."""
    family = (NotHolder, NotFound, Conflict, Invalid)
    assert all(issubclass(e, DelegationError) for e in family)
    assert [e.reason for e in family] == ["not-holder", "not-found", "conflict", "invalid"]
    assert not any(hasattr(e, "status") for e in (DelegationError, *family))


async def test_grant_creates_an_active_delegation(seeded: DelegationService, bus: LocalBus) -> None:
    subscription = bus.subscribe()
    expiry = START + dt.timedelta(days=7)
    delegation = await seeded.grant(person(MARTIN), CLAIRE_BAL, DURAND, ["read", "send"], expiry)
    assert delegation.mailbox == CLAIRE_BAL
    assert (delegation.delegate_idnat, delegation.delegate_name) == (DURAND, "Luc DURAND")
    assert delegation.rights == {"read", "send"}
    assert delegation.granted_by == MARTIN
    assert delegation.created_at == START
    assert delegation.expires_at == expiry
    assert delegation.state == "active"
    assert delegation.revoked_at is None
    assert drain(subscription) == [ChangeEvent("granted", CLAIRE_BAL, DURAND, delegation.id, START)]
    grant = await seeded.resolve(person(DURAND), CLAIRE_BAL, interface="imap")
    assert grant is not None
    assert grant.rights == {"read", "send"}
    assert grant.expires_at == expiry
    last = (await seeded.audit_for(CLAIRE_BAL, limit=2))[1]
    assert (last.action, last.actor_idnat, last.result, last.delegation_id) == (
        "grant",
        MARTIN,
        "ok",
        delegation.id,
    )


async def test_granting_again_updates_the_same_delegation(
    seeded: DelegationService, bus: LocalBus, clock: Clock
) -> None:
    first = await seeded.grant(person(MARTIN), CLAIRE_BAL, DURAND, ["read"], None)
    subscription = bus.subscribe()
    clock.advance(hours=1)
    expiry = clock.now + dt.timedelta(days=1)
    second = await seeded.grant(person(MARTIN), CLAIRE_BAL, DURAND, ["read", "write"], expiry)
    assert second.id == first.id
    assert second.rights == {"read", "write"}
    assert second.expires_at == expiry
    assert second.created_at == first.created_at
    assert second.updated_at == clock.now
    assert [e.kind for e in drain(subscription)] == ["updated"]
    open_ones = await seeded.delegations_of(person(MARTIN), CLAIRE_BAL)
    assert [(d.delegate_idnat, d.id) for d in open_ones if d.delegate_idnat == DURAND] == [
        (DURAND, first.id)
    ]


async def test_renewing_an_expired_delegation_reactivates_it(
    seeded: DelegationService, bus: LocalBus, clock: Clock
) -> None:
    jean = person(DUPONT)
    [paul_on_jean] = [
        d for d in await seeded.delegations_of(jean, JEAN_BAL) if d.delegate_idnat == LEROY
    ]
    assert paul_on_jean.expires_at == START + dt.timedelta(days=30)
    clock.advance(days=45)
    [expired] = [
        d for d in await seeded.delegations_of(jean, JEAN_BAL) if d.delegate_idnat == LEROY
    ]
    assert expired.state == "expired"
    subscription = bus.subscribe()
    renewed = await seeded.grant(jean, JEAN_BAL, LEROY, ["read"], clock.now + dt.timedelta(days=10))
    assert renewed.id == paul_on_jean.id
    assert renewed.state == "active"
    assert [e.kind for e in drain(subscription)] == ["granted"]
    assert await seeded.resolve(person(LEROY), JEAN_BAL, interface="imap") is not None


async def test_grant_after_revocation_is_a_new_delegation(seeded: DelegationService) -> None:
    claire = person(MARTIN)
    first = await seeded.grant(claire, CLAIRE_BAL, DURAND, ["read"], None)
    await seeded.revoke(claire, CLAIRE_BAL, first.id)
    second = await seeded.grant(claire, CLAIRE_BAL, DURAND, ["read"], None)
    assert second.id != first.id
    assert second.state == "active"
    history = await seeded.delegations_of(claire, CLAIRE_BAL, include_revoked=True)
    assert [(d.id, d.state) for d in history if d.delegate_idnat == DURAND] == [
        (first.id, "revoked"),
        (second.id, "active"),
    ]


@pytest.mark.parametrize(
    ("actor", "mailbox", "delegate", "rights", "days", "error", "reason"),
    [
        (MOREAU, CLAIRE_BAL, DURAND, ["read"], None, NotHolder, "not-holder"),
        (BERNARD, CLAIRE_BAL, DURAND, ["read"], None, NotHolder, "not-holder"),  # delegates too
        (MARTIN, CLAIRE_BAL, MARTIN, ["read"], None, Invalid, "self-delegation"),
        (MARTIN, CLAIRE_BAL, "899700000099", ["read"], None, NotFound, "unknown-delegate"),
        (MARTIN, CLAIRE_BAL, "12345", ["read"], None, Invalid, "bad-idnat"),
        (MARTIN, "ghost@medecin.mssante.fr", DURAND, ["read"], None, NotFound, "unknown-mailbox"),
        (MARTIN, "no address", DURAND, ["read"], None, Invalid, "bad-address"),
        (MARTIN, CLAIRE_BAL, DURAND, [], None, Invalid, "bad-rights"),
        (MARTIN, CLAIRE_BAL, DURAND, ["read", "admin"], None, Invalid, "bad-rights"),
        (MARTIN, CLAIRE_BAL, DURAND, "read", None, Invalid, "bad-rights"),
        (MARTIN, CLAIRE_BAL, DURAND, ["read"], 0, Invalid, "bad-expiry"),
        (MARTIN, CLAIRE_BAL, DURAND, ["read"], -1, Invalid, "bad-expiry"),
    ],
)
async def test_grant_rules(
    seeded: DelegationService,
    bus: LocalBus,
    actor: str,
    mailbox: str,
    delegate: str,
    rights: list[str],
    days: int | None,
    error: type[DelegationError],
    reason: str,
) -> None:
    subscription = bus.subscribe()
    expiry = None if days is None else START + dt.timedelta(days=days)
    with pytest.raises(error) as raised:
        await seeded.grant(person(actor), mailbox, delegate, rights, expiry)
    assert raised.value.reason == reason
    assert drain(subscription) == []
    if "@" in mailbox:
        last = (await seeded.audit_for(mailbox, limit=1))[0]
        assert (last.action, last.actor_idnat, last.result) == ("grant", actor, f"refused:{reason}")


async def test_expiry_must_be_aware(seeded: DelegationService) -> None:
    with pytest.raises(Invalid, match="time zone"):
        await seeded.grant(person(MARTIN), CLAIRE_BAL, DURAND, ["read"], dt.datetime(2030, 1, 1))


@pytest.mark.parametrize(
    "expiry",
    [
        START + dt.timedelta(days=3651),
        dt.datetime(9999, 12, 31, 23, 59, tzinfo=dt.timezone(-dt.timedelta(hours=12))),
        dt.datetime(9999, 12, 31, 23, 59, tzinfo=dt.UTC),
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=14))),
    ],
)
async def test_an_expiry_lies_within_ten_years(seeded: DelegationService, expiry: dt.datetime):
    """Not an overflow of the time-zone arithmetic: a refusal, audited as any other."""
    with pytest.raises(Invalid) as raised:
        await seeded.grant(person(MARTIN), CLAIRE_BAL, DURAND, ["read"], expiry)
    assert raised.value.reason == "bad-expiry"
    last = (await seeded.audit_for(CLAIRE_BAL, limit=1))[0]
    assert last.result == "refused:bad-expiry"
    granted = await seeded.grant(
        person(MARTIN), CLAIRE_BAL, DURAND, ["read"], START + dt.timedelta(days=3649)
    )
    assert granted.expires_at == START + dt.timedelta(days=3649)


async def test_organisation_mailboxes_need_an_administrator(seeded: DelegationService) -> None:
    box = await seeded.upsert_mailbox(
        "secretariat@clinique.mssante.fr", type="ORG", organisation="Clinique du Parc"
    )
    assert (box.type, box.holder_idnat, box.holder_name) == ("ORG", None, "Clinique du Parc")
    with pytest.raises(NotHolder):
        await seeded.grant(person(MARTIN), box.address, BERNARD, ["read"], None)
    delegation = await seeded.grant(
        person(MARTIN), box.address, BERNARD, ["read"], None, admin=True
    )
    grant = await seeded.resolve(person(BERNARD), box.address, interface="imap")
    assert grant is not None
    assert grant.holder_name == "Clinique du Parc"
    assert grant.mailbox_type == "ORG"
    assert grant.holder_idnat is None
    with pytest.raises(NotHolder):
        await seeded.revoke(person(MARTIN), box.address, delegation.id)
    with pytest.raises(NotHolder):
        await seeded.delegations_of(person(MARTIN), box.address)
    assert len(await seeded.delegations_of(person(MARTIN), box.address, admin=True)) == 1
    await seeded.revoke(person(MARTIN), box.address, delegation.id, admin=True)
    # The administrator flag gives no power over someone's personal mailbox.
    with pytest.raises(NotHolder):
        await seeded.grant(person(MOREAU), CLAIRE_BAL, DURAND, ["read"], None, admin=True)


async def test_revoke_is_for_the_holder_and_idempotent(
    seeded: DelegationService, bus: LocalBus, clock: Clock
) -> None:
    jean = person(DUPONT)
    [sophie_on_jean] = [
        d for d in await seeded.delegations_of(jean, JEAN_BAL) if d.delegate_idnat == BERNARD
    ]
    with pytest.raises(NotHolder):
        await seeded.revoke(person(BERNARD), JEAN_BAL, sophie_on_jean.id)
    with pytest.raises(NotFound):
        await seeded.revoke(jean, JEAN_BAL, 999_999)
    claire_ids = {d.id for d in await seeded.delegations_of(person(MARTIN), CLAIRE_BAL)}
    with pytest.raises(NotFound):  # a delegation of another mailbox
        await seeded.revoke(jean, JEAN_BAL, min(claire_ids))
    subscription = bus.subscribe()
    clock.advance(minutes=5)
    revoked = await seeded.revoke(jean, JEAN_BAL, sophie_on_jean.id, "fin de contrat")
    assert (revoked.state, revoked.revoked_at, revoked.revoked_by, revoked.reason) == (
        "revoked",
        clock.now,
        DUPONT,
        "fin de contrat",
    )
    clock.advance(minutes=5)
    again = await seeded.revoke(jean, JEAN_BAL, sophie_on_jean.id, "other reason")
    assert again == revoked
    assert drain(subscription) == [
        ChangeEvent(
            "revoked", JEAN_BAL, BERNARD, sophie_on_jean.id, START + dt.timedelta(minutes=5)
        )
    ]
    assert [d.id for d in await seeded.delegations_of(jean, JEAN_BAL)] == [
        d.id for d in await seeded.delegations_of(jean, JEAN_BAL) if d.delegate_idnat == LEROY
    ]
    assert [a.action for a in await seeded.audit_for(JEAN_BAL, limit=2)] == ["revoke", "revoke"]


async def test_lists_for_holder_and_delegate(seeded: DelegationService, clock: Clock) -> None:
    with pytest.raises(NotHolder):
        await seeded.delegations_of(person(BERNARD), JEAN_BAL)
    with pytest.raises(NotFound):
        await seeded.delegations_of(person(DUPONT), "ghost@medecin.mssante.fr")
    on_jean = await seeded.delegations_of(person(DUPONT), JEAN_BAL)
    assert [(d.delegate_idnat, d.delegate_name, d.rights) for d in on_jean] == [
        (BERNARD, "Sophie BERNARD", frozenset({"read"})),
        (LEROY, "Paul LEROY", RIGHTS),
    ]
    assert [(d.mailbox, d.state) for d in await seeded.received(person(BERNARD))] == [
        (CLAIRE_BAL, "active"),
        (JEAN_BAL, "active"),
    ]
    assert [d.mailbox for d in await seeded.received(person(LEROY))] == [JEAN_BAL]
    clock.advance(days=30)
    assert await seeded.received(person(LEROY)) == []  # expired: active ones only
    assert [d.state for d in await seeded.delegations_of(person(DUPONT), JEAN_BAL)] == [
        "active",
        "expired",
    ]


async def test_expire_due_publishes_once(
    seeded: DelegationService, bus: LocalBus, clock: Clock
) -> None:
    subscription = bus.subscribe()
    assert await seeded.expire_due() == []
    clock.advance(days=29, hours=23)
    assert await seeded.expire_due() == []
    clock.advance(hours=2)
    [event] = await seeded.expire_due()
    assert (event.kind, event.mailbox, event.delegate_idnat) == ("expired", JEAN_BAL, LEROY)
    assert event.at == START + dt.timedelta(days=30)
    assert await seeded.expire_due() == []
    assert drain(subscription) == [event]
    # renewed then expired again: a new "expired" event
    await seeded.grant(person(DUPONT), JEAN_BAL, LEROY, ["read"], clock.now + dt.timedelta(hours=1))
    clock.advance(hours=2)
    assert [e.delegation_id for e in await seeded.expire_due()] == [event.delegation_id]
    # a revoked delegation is never announced as expired
    claire = person(MARTIN)
    short = await seeded.grant(
        claire, CLAIRE_BAL, DURAND, ["read"], clock.now + dt.timedelta(hours=1)
    )
    await seeded.revoke(claire, CLAIRE_BAL, short.id)
    clock.advance(hours=2)
    assert await seeded.expire_due() == []


async def test_events_go_out_after_commit(engine: AsyncEngine, clock: Clock) -> None:
    """A subscriber that re-reads on an event must see the change it announces."""
    seen: list[tuple[str, bool]] = []

    class Checking(LocalBus):
        async def publish(self, event: ChangeEvent) -> None:
            other = DelegationService(engine, clock=clock)  # its own connections
            active = await other.resolve(
                identity(event.delegate_idnat), event.mailbox, interface="http"
            )
            seen.append((event.kind, active is not None))
            await super().publish(event)

    service = DelegationService(engine, clock=clock, bus=Checking())
    await seed(service, PERSONAS)
    delegation = await service.grant(person(MARTIN), CLAIRE_BAL, DURAND, ["read"], None)
    await service.revoke(person(MARTIN), CLAIRE_BAL, delegation.id)
    assert seen[-2:] == [("granted", True), ("revoked", False)]


async def test_a_failing_bus_does_not_undo_the_change(seeded: DelegationService) -> None:
    class Broken(LocalBus):
        async def publish(self, event: ChangeEvent) -> None:
            raise OSError("network down")

    seeded.bus = Broken()
    delegation = await seeded.grant(person(MARTIN), CLAIRE_BAL, DURAND, ["read"], None)
    assert delegation.state == "active"
    assert await seeded.resolve(person(DURAND), CLAIRE_BAL, interface="imap") is not None


async def test_database_allows_one_open_delegation_per_pair(
    seeded: DelegationService, engine: AsyncEngine
) -> None:
    [existing] = [d for d in await seeded.received(person(BERNARD)) if d.mailbox == JEAN_BAL]

    async def add_second_open_one() -> None:
        async with async_sessionmaker(engine).begin() as db:
            row = await db.get(DelegationRow, existing.id)
            assert row is not None
            db.add(
                DelegationRow(
                    mailbox_id=row.mailbox_id,
                    delegate_idnat=BERNARD,
                    may_read=True,
                    may_write=False,
                    may_send=False,
                    granted_by=DUPONT,
                    created_at=START,
                    updated_at=START,
                )
            )

    with pytest.raises(IntegrityError):
        await add_second_open_one()


async def test_seed_is_idempotent_and_respects_revocations(
    seeded: DelegationService, clock: Clock
) -> None:
    jean = person(DUPONT)
    before = await seeded.delegations_of(jean, JEAN_BAL)
    sophie = next(d for d in before if d.delegate_idnat == BERNARD)
    await seeded.revoke(jean, JEAN_BAL, sophie.id)
    clock.advance(days=3)
    await seed(seeded, PERSONAS)
    after = await seeded.delegations_of(jean, JEAN_BAL, include_revoked=True)
    assert [(d.id, d.state, d.expires_at) for d in after] == [
        (sophie.id, "revoked", None),
        (before[1].id, "active", START + dt.timedelta(days=30)),  # expiry not pushed further
    ]


async def test_seed_takes_the_mock_operators_personas(service: DelegationService) -> None:
    """The mock passes `asdict` of its personas: same contract, no import of the mock here."""
    from mock_operator.personas import default_personas

    await seed(service, [asdict(p) for p in default_personas()])
    sophie = await service.accessible(person(BERNARD))
    assert [(g.mailbox, g.rights) for g in sophie] == [
        (CLAIRE_BAL, RIGHTS),
        (JEAN_BAL, frozenset({"read"})),
    ]
    [paul] = [g for g in await service.accessible(person(LEROY)) if g.via == "delegation"]
    assert paul.mailbox == JEAN_BAL
    assert paul.expires_at == START + dt.timedelta(days=30)
    entry = await service.directory_entry(BERNARD)
    assert entry is not None
    assert entry.ecps_only
    assert entry.addresses == ()
    mailbox = await service.mailbox(JEAN_BAL)
    assert mailbox is not None
    assert mailbox.backend == "historic"


async def test_revoke_of_an_impossible_id_is_not_found(seeded: DelegationService):
    """Ids are 32-bit in the schema: a huge one is simply unknown, never a database error."""
    for huge in (2**31, 2**62):
        with pytest.raises(NotFound):
            await seeded.revoke(person(MARTIN), CLAIRE_BAL, huge)
