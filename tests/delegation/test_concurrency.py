"""Concurrent grants and revokes on one delegation end consistent, with only our errors."""

from __future__ import annotations

import asyncio
import random

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from delegation import Delegation, DelegationError, DelegationService
from delegation.models import AuditEventRow, DelegationRow, MailboxRow
from tests.delegation.conftest import CLAIRE_BAL, DURAND, MARTIN, MOREAU, person

RIGHT_SETS = (["read"], ["read", "write"], ["send"], ["read", "write", "send"])


async def _open_rows(engine: AsyncEngine) -> list[DelegationRow]:
    async with async_sessionmaker(engine)() as db:
        rows = await db.scalars(
            select(DelegationRow)
            .join(MailboxRow, MailboxRow.id == DelegationRow.mailbox_id)
            .where(
                MailboxRow.address == CLAIRE_BAL,
                DelegationRow.delegate_idnat == DURAND,
                DelegationRow.revoked_at.is_(None),
            )
        )
        return list(rows)


async def test_grant_and_revoke_race(seeded: DelegationService, engine: AsyncEngine) -> None:
    claire = person(MARTIN)
    rng = random.Random(7)
    first = await seeded.grant(claire, CLAIRE_BAL, DURAND, ["read"], None)
    ids = {first.id}
    for _round in range(3):
        calls = []
        for _ in range(30):
            if rng.random() < 0.5:
                rights = rng.choice(RIGHT_SETS)
                calls.append(seeded.grant(claire, CLAIRE_BAL, DURAND, rights, None))
            else:
                calls.append(seeded.revoke(claire, CLAIRE_BAL, rng.choice(sorted(ids))))
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            assert isinstance(result, Delegation | DelegationError), repr(result)
            if isinstance(result, Delegation):
                ids.add(result.id)
        open_rows = await _open_rows(engine)
        assert len(open_rows) <= 1
        listed = [
            d for d in await seeded.delegations_of(claire, CLAIRE_BAL) if d.delegate_idnat == DURAND
        ]
        grant = await seeded.resolve(person(DURAND), CLAIRE_BAL, interface="imap")
        if open_rows:
            assert [d.id for d in listed] == [open_rows[0].id]
            assert grant is not None
            assert grant.delegation_id == open_rows[0].id
            assert grant.rights == open_rows[0].rights
        else:
            assert listed == []
            assert grant is None


async def test_concurrent_first_grants_make_one_delegation(
    seeded: DelegationService, engine: AsyncEngine
) -> None:
    claire = person(MARTIN)
    results = await asyncio.gather(
        *(seeded.grant(claire, CLAIRE_BAL, DURAND, ["read"], None) for _ in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(r, Delegation) for r in results), results
    assert len({r.id for r in results if isinstance(r, Delegation)}) == 1
    assert len(await _open_rows(engine)) == 1


async def test_concurrent_resolutions_are_each_audited(
    seeded: DelegationService, engine: AsyncEngine
) -> None:
    who = [person(MARTIN), person(MOREAU)] * 25
    grants = await asyncio.gather(*(seeded.resolve(i, CLAIRE_BAL, interface="imap") for i in who))
    assert sum(g is not None for g in grants) == 25
    async with async_sessionmaker(engine)() as db:
        counts = dict(
            (
                await db.execute(
                    select(AuditEventRow.result, func.count())
                    .where(AuditEventRow.mailbox == CLAIRE_BAL)
                    .group_by(AuditEventRow.result)
                )
            ).all()
        )
    assert counts == {"ok": 25, "refused:no-delegation": 25}
