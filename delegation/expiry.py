"""When delegations expire: how far ahead an expiry may lie, and the pass that announces
the expiries that passed.

The limit is checked before any time-zone arithmetic: year 9999 with a negative offset, or
year 1 with a positive one, overflows when converted to UTC. Every way of granting (the
API, the page, an import) goes through it.

An expiry takes effect by itself (a delegation's state is computed from the clock); live
sessions still need to hear of it, so each node runs the pass, and a conditional update
hands each expiry to exactly one of them to announce.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from delegation.errors import Invalid
from delegation.events import ChangeEvent
from delegation.models import DelegationRow, MailboxRow
from delegation.store import Store

log = logging.getLogger("delegation.service")  # the name log filters have always matched

MAX_AHEAD = dt.timedelta(days=3650)


def check_expiry(expires_at: dt.datetime | None, now: dt.datetime) -> None:
    """Refuse (`Invalid`, `bad-expiry`) an expiry without a time zone, not in the future, or more
    than 10 years (3650 days) ahead: a delegation meant to outlast that is granted without an
    expiry and revoked when it ends. Aware datetimes subtract without conversion, so nothing
    here overflows."""
    if expires_at is None:
        return
    if expires_at.tzinfo is None or expires_at.utcoffset() is None:
        raise Invalid("the expiry needs a time zone", reason="bad-expiry")
    ahead = expires_at - now
    if ahead <= dt.timedelta(0):
        raise Invalid("the expiry is not in the future", reason="bad-expiry")
    if ahead > MAX_AHEAD:
        raise Invalid(
            f"the expiry is at most 10 years ({MAX_AHEAD.days} days) ahead", reason="bad-expiry"
        )


class Expiry:
    """Announces, once across all nodes, each delegation whose expiry has passed."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def expire_due(self) -> list[ChangeEvent]:
        """Publish "expired" once for each delegation whose expiry has passed (any node may
        call it: the conditional update hands each expiry to exactly one caller)."""
        now = self._store.now()
        async with self._store.writing() as db:
            claimed = (
                await db.execute(
                    update(DelegationRow)
                    .where(
                        DelegationRow.revoked_at.is_(None),
                        DelegationRow.expiry_notified.is_(False),
                        DelegationRow.expires_at.is_not(None),
                        DelegationRow.expires_at <= now,
                    )
                    .values(expiry_notified=True)
                    .returning(
                        DelegationRow.id,
                        DelegationRow.mailbox_id,
                        DelegationRow.delegate_idnat,
                        DelegationRow.expires_at,
                    )
                    .execution_options(synchronize_session=False)
                )
            ).all()
            if not claimed:
                return []
            found = await db.execute(
                select(MailboxRow.id, MailboxRow.address).where(
                    MailboxRow.id.in_({c.mailbox_id for c in claimed})
                )
            )
            addresses = {mailbox_id: address for mailbox_id, address in found}
        events = [
            ChangeEvent(
                "expired", addresses[c.mailbox_id], c.delegate_idnat, c.id, c.expires_at or now
            )
            for c in sorted(claimed, key=lambda c: c.id)
        ]
        await self._store.publish(events)
        return events

    async def expire_forever(self, interval: float = 30.0) -> None:
        """Run `expire_due` every `interval` seconds until cancelled (one task per node)."""
        while True:
            try:
                await self.expire_due()
            except (SQLAlchemyError, OSError):
                log.exception("delegation expiry pass failed; retrying")
            await asyncio.sleep(interval)
