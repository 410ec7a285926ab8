"""A delegation as the service reports it, and its state at a given moment.

A delegation is *open* until revoked and *active* while open and not past its expiry;
an open but expired one is kept (its holder may renew it). The state is computed from the
row and the service clock each time, never stored, so an expiry needs no write to take
effect: the expiry pass only announces it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import selectinload

from delegation.events import ChangeEvent, ChangeKind
from delegation.models import DelegationRow

DelegationState = Literal["active", "expired", "revoked"]

# What `delegation_of` reads besides the row itself.
DELEGATION_REFS = (selectinload(DelegationRow.mailbox), selectinload(DelegationRow.delegate))


@dataclass(frozen=True, slots=True)
class Delegation:
    """A delegation as the service reports it; `state` is as of the call that returned it."""

    id: int
    mailbox: str
    delegate_idnat: str
    delegate_name: str
    rights: frozenset[str]
    granted_by: str
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    revoked_by: str | None
    reason: str | None
    state: DelegationState

    def is_active(self, now: dt.datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def is_active(row: DelegationRow, now: dt.datetime) -> bool:
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)


def state_of(row: DelegationRow, now: dt.datetime) -> DelegationState:
    if row.revoked_at is not None:
        return "revoked"
    return "active" if is_active(row, now) else "expired"


def delegation_of(row: DelegationRow, now: dt.datetime) -> Delegation:
    """The row (loaded with `DELEGATION_REFS`) as reported, in its state at `now`."""
    return Delegation(
        id=row.id,
        mailbox=row.mailbox.address,
        delegate_idnat=row.delegate_idnat,
        delegate_name=row.delegate.display_name,
        rights=row.rights,
        granted_by=row.granted_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
        reason=row.reason,
        state=state_of(row, now),
    )


def change_event(kind: ChangeKind, delegation: Delegation, at: dt.datetime) -> ChangeEvent:
    """The event that tells live sessions of the delegate that `delegation` changed."""
    return ChangeEvent(kind, delegation.mailbox, delegation.delegate_idnat, delegation.id, at)
