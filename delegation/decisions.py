"""Who may open which mailbox: the realm of STYLE.md's cred picture.

psc_auth says who the caller is; `resolve` says what they get on one mailbox (their own
BAL, or an active delegation) and writes the answer to the audit trail, allowed or
refused, in the same transaction. `decide` answers the same question read-only and
unaudited, for the gateway's fronts, which cache decisions and write their audit events
in batches. `accessible` lists what a person may open: own BAL first, then the active
delegations.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from delegation.audit import AuditAction, AuditRecord, check_action, check_interface
from delegation.audit_trail import AuditTrail
from delegation.delegations import is_active
from delegation.models import ADDRESS_LENGTH, RIGHTS, DelegationRow, MailboxRow
from delegation.parsing import rights_text
from delegation.store import Store
from psc_auth.identity import Identity

Via = Literal["holder", "delegation"]

# What a database can be asked about: no control character, no lone surrogate.
_QUERYABLE = re.compile("[^\x00-\x1f\x7f\ud800-\udfff]*")


@dataclass(frozen=True, slots=True)
class Grant:
    """What an identity may do on one mailbox, and why (its own BAL or a delegation)."""

    mailbox: str
    rights: frozenset[str]
    via: Via
    delegation_id: int | None
    holder_idnat: str | None
    holder_name: str
    expires_at: dt.datetime | None
    mailbox_type: str = "PER"
    backend: str = ""

    def allows(self, right: str) -> bool:
        return right in self.rights


@dataclass(frozen=True, slots=True)
class Decision:
    """A decision of the registry: the grant, or why not (and the delegation concerned)."""

    grant: Grant | None
    refusal: str | None
    delegation_id: int | None


def _holder_grant(mailbox: MailboxRow) -> Grant:
    return Grant(
        mailbox=mailbox.address,
        rights=RIGHTS,
        via="holder",
        delegation_id=None,
        holder_idnat=mailbox.holder_idnat,
        holder_name=mailbox.holder_name,
        expires_at=None,
        mailbox_type=mailbox.type,
        backend=mailbox.backend,
    )


def _delegated_grant(mailbox: MailboxRow, row: DelegationRow) -> Grant:
    return Grant(
        mailbox=mailbox.address,
        rights=row.rights,
        via="delegation",
        delegation_id=row.id,
        holder_idnat=mailbox.holder_idnat,
        holder_name=mailbox.holder_name,
        expires_at=row.expires_at,
        mailbox_type=mailbox.type,
        backend=mailbox.backend,
    )


class Decisions:
    """Resolves identities to grants over the registry's mailboxes and delegations."""

    def __init__(self, store: Store, trail: AuditTrail) -> None:
        self._store = store
        self._trail = trail

    async def resolve(
        self,
        identity: Identity,
        mailbox: str,
        *,
        interface: str,
        software: str | None = None,
        remote: str | None = None,
        action: AuditAction = AuditAction.LOGIN,
    ) -> Grant | None:
        """The rights of `identity` on `mailbox`, or None; audited either way."""
        check_interface(interface)
        check_action(action)
        idnat = str(identity.idnat)
        now = self._store.now()
        address = mailbox.strip().lower() if isinstance(mailbox, str) else ""
        async with self._store.writing() as db:
            grant, refusal, delegation_id = await self._decide(db, idnat, address, now)
            self._trail.add(
                db,
                AuditRecord(
                    idnat,
                    address,
                    action,
                    interface=interface,
                    result="ok" if grant else f"refused:{refusal}",
                    delegation_id=delegation_id,
                    software=software,
                    remote=remote,
                    detail=f"via={grant.via} rights={rights_text(grant.rights)}" if grant else None,
                    at=now,
                ),
            )
        return grant

    async def decide(self, identity: Identity, mailbox: str) -> Decision:
        """What `resolve` decides, read-only and not audited: for a caller that caches
        decisions and writes its audit events in batches (the gateway's fronts)."""
        address = mailbox.strip().lower() if isinstance(mailbox, str) else ""
        async with self._store.reading() as db:
            grant, refusal, delegation_id = await self._decide(
                db, str(identity.idnat), address, self._store.now()
            )
        return Decision(grant, refusal, delegation_id)

    async def _decide(
        self, db: AsyncSession, idnat: str, address: str, now: dt.datetime
    ) -> tuple[Grant | None, str | None, int | None]:
        if len(address) > ADDRESS_LENGTH or not _QUERYABLE.fullmatch(address):
            # No mailbox has such an address, and a database would refuse to be asked
            # (NUL, a lone surrogate from a client's stray 8-bit byte).
            return None, "unknown-mailbox", None
        mailbox = await db.scalar(
            select(MailboxRow)
            .options(joinedload(MailboxRow.holder))
            .where(MailboxRow.address == address)
        )
        if mailbox is None:
            return None, "unknown-mailbox", None
        if mailbox.type == "PER" and mailbox.holder_idnat == idnat:
            return _holder_grant(mailbox), None, None
        row = await db.scalar(
            select(DelegationRow).where(
                DelegationRow.mailbox_id == mailbox.id,
                DelegationRow.delegate_idnat == idnat,
                DelegationRow.revoked_at.is_(None),
            )
        )
        if row is None:
            revoked = await db.scalar(
                select(DelegationRow.id)
                .where(
                    DelegationRow.mailbox_id == mailbox.id, DelegationRow.delegate_idnat == idnat
                )
                .order_by(DelegationRow.id.desc())
                .limit(1)
            )
            return None, "revoked" if revoked else "no-delegation", revoked
        if not is_active(row, now):
            return None, "expired", row.id
        return _delegated_grant(mailbox, row), None, row.id

    async def accessible(self, identity: Identity) -> list[Grant]:
        """Own BAL first, then the BAL delegated to this person (active delegations only)."""
        idnat = str(identity.idnat)
        now = self._store.now()
        async with self._store.reading() as db:
            own = (
                await db.scalars(
                    select(MailboxRow)
                    .options(selectinload(MailboxRow.holder))
                    .where(MailboxRow.type == "PER", MailboxRow.holder_idnat == idnat)
                    .order_by(MailboxRow.address)
                )
            ).all()
            delegated = (
                await db.scalars(
                    select(DelegationRow)
                    .join(DelegationRow.mailbox)
                    .options(selectinload(DelegationRow.mailbox).selectinload(MailboxRow.holder))
                    .where(
                        DelegationRow.delegate_idnat == idnat,
                        DelegationRow.revoked_at.is_(None),
                        or_(DelegationRow.expires_at.is_(None), DelegationRow.expires_at > now),
                    )
                    .order_by(MailboxRow.address)
                )
            ).all()
            grants = [_holder_grant(m) for m in own]
            seen = {g.mailbox for g in grants}
            grants += [
                _delegated_grant(d.mailbox, d) for d in delegated if d.mailbox.address not in seen
            ]
        return grants
