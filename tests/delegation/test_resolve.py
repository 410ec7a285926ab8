"""`resolve` and `accessible`: holder, delegates, expiry, revocation, and the audit trail."""

from __future__ import annotations

from delegation import DelegationService
from delegation.models import RIGHTS
from tests.delegation.conftest import (
    BERNARD,
    CLAIRE_BAL,
    DUPONT,
    JEAN_BAL,
    LEROY,
    MARTIN,
    MOREAU,
    PAUL_BAL,
    Clock,
    identity,
    person,
)


async def test_holder_has_every_right_on_own_bal(seeded: DelegationService) -> None:
    grant = await seeded.resolve(person(MARTIN), CLAIRE_BAL, interface="imap")
    assert grant is not None
    assert grant.rights == RIGHTS
    assert grant.via == "holder"
    assert grant.delegation_id is None
    assert (grant.holder_idnat, grant.holder_name) == (MARTIN, "Claire MARTIN")
    assert grant.expires_at is None
    assert (grant.mailbox_type, grant.backend) == ("PER", "modern")


async def test_delegates_get_the_delegated_rights(seeded: DelegationService) -> None:
    sophie = person(BERNARD)
    on_claire = await seeded.resolve(sophie, CLAIRE_BAL, interface="imap")
    on_jean = await seeded.resolve(sophie, JEAN_BAL, interface="smtp", action="send")
    assert on_claire is not None
    assert on_jean is not None
    assert on_claire.rights == {"read", "write", "send"}
    assert on_jean.rights == {"read"}
    assert not on_jean.allows("send")
    assert on_jean.via == "delegation"
    assert on_jean.delegation_id is not None
    assert (on_jean.holder_idnat, on_jean.holder_name) == (DUPONT, "Jean DUPONT")
    assert on_jean.backend == "historic"


async def test_address_is_case_insensitive(seeded: DelegationService) -> None:
    grant = await seeded.resolve(
        person(MARTIN), "  Claire.Martin@MEDECIN.mssante.fr", interface="http"
    )
    assert grant is not None
    assert grant.mailbox == CLAIRE_BAL


async def test_others_are_refused(seeded: DelegationService) -> None:
    assert await seeded.resolve(person(MOREAU), CLAIRE_BAL, interface="imap") is None
    # a delegate of Jean's BAL has nothing on Claire's from that
    assert await seeded.resolve(person(LEROY), CLAIRE_BAL, interface="imap") is None
    assert (
        await seeded.resolve(person(MOREAU), "nobody@medecin.mssante.fr", interface="imap") is None
    )
    assert await seeded.resolve(person(MOREAU), "not an address", interface="imap") is None


async def test_every_resolution_is_audited(seeded: DelegationService) -> None:
    eve, sophie = person(MOREAU), person(BERNARD)
    await seeded.resolve(
        person(MARTIN), CLAIRE_BAL, interface="imap", software="LPS 1.0", remote="192.0.2.7"
    )
    await seeded.resolve(sophie, CLAIRE_BAL, interface="smtp", action="send")
    await seeded.resolve(eve, CLAIRE_BAL, interface="historic", action="select", software="x" * 500)
    await seeded.resolve(eve, "Ghost@Example.org", interface="http")

    trail = await seeded.audit_for(CLAIRE_BAL)
    assert [(e.actor_idnat, e.action, e.interface, e.result) for e in trail] == [
        (MOREAU, "select", "historic", "refused:no-delegation"),
        (BERNARD, "send", "smtp", "ok"),
        (MARTIN, "login", "imap", "ok"),
    ]
    refused, delegated, own = trail
    assert own.software == "LPS 1.0"
    assert own.remote == "192.0.2.7"
    assert own.delegation_id is None
    assert own.detail == "via=holder rights=read,write,send"
    assert delegated.delegation_id is not None
    assert refused.software == "x" * 128  # clipped to the column, never an error
    assert [e.at for e in trail] == sorted((e.at for e in trail), reverse=True)
    ghost = await seeded.audit_for("ghost@example.org")
    assert [(g.actor_idnat, g.result) for g in ghost] == [(MOREAU, "refused:unknown-mailbox")]


async def test_expired_delegation_gives_nothing(seeded: DelegationService, clock: Clock) -> None:
    paul = person(LEROY)
    grant = await seeded.resolve(paul, JEAN_BAL, interface="imap")
    assert grant is not None
    assert grant.rights == RIGHTS
    assert grant.expires_at is not None
    clock.now = grant.expires_at
    assert await seeded.resolve(paul, JEAN_BAL, interface="imap") is None
    assert (await seeded.audit_for(JEAN_BAL, limit=1))[0].result == "refused:expired"


async def test_revoked_delegation_gives_nothing(seeded: DelegationService) -> None:
    sophie, jean = person(BERNARD), person(DUPONT)
    grant = await seeded.resolve(sophie, JEAN_BAL, interface="imap")
    assert grant is not None
    assert grant.delegation_id is not None
    await seeded.revoke(jean, JEAN_BAL, grant.delegation_id, "left the practice")
    assert await seeded.resolve(sophie, JEAN_BAL, interface="imap") is None
    last = (await seeded.audit_for(JEAN_BAL, limit=1))[0]
    assert (last.result, last.delegation_id) == ("refused:revoked", grant.delegation_id)


async def test_accessible_lists_own_first_then_delegated(
    seeded: DelegationService, clock: Clock
) -> None:
    assert [(g.mailbox, g.via) for g in await seeded.accessible(person(MARTIN))] == [
        (CLAIRE_BAL, "holder")
    ]
    sophie = await seeded.accessible(person(BERNARD))
    assert [(g.mailbox, g.via, g.rights) for g in sophie] == [
        (CLAIRE_BAL, "delegation", RIGHTS),
        (JEAN_BAL, "delegation", {"read"}),
    ]
    paul = await seeded.accessible(person(LEROY))
    assert [(g.mailbox, g.via) for g in paul] == [(PAUL_BAL, "holder"), (JEAN_BAL, "delegation")]
    clock.advance(days=31)
    assert [g.mailbox for g in await seeded.accessible(person(LEROY))] == [PAUL_BAL]
    assert await seeded.accessible(identity("899700000099")) == []


async def test_record_appends_gateway_actions(seeded: DelegationService) -> None:
    grant = await seeded.resolve(person(BERNARD), CLAIRE_BAL, interface="imap")
    assert grant is not None
    await seeded.record(
        BERNARD,
        CLAIRE_BAL,
        "store",
        interface="imap",
        delegation_id=grant.delegation_id,
        detail="\\Flagged",
    )
    last = (await seeded.audit_for(CLAIRE_BAL, limit=1))[0]
    assert (last.action, last.delegation_id, last.detail) == (
        "store",
        grant.delegation_id,
        "\\Flagged",
    )
