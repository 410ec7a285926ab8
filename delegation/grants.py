"""Giving, renewing and revoking delegations, and listing them for holder and delegate.

Only the holder of a personal BAL (an administrator for the others) manages its
delegations. Decisions worth knowing:

* Granting again to the same delegate updates the open row (same id), also when it had
  expired: the holder renews it; the event is "updated" if it was active, else "granted".
* Revoking an already revoked delegation returns it unchanged (idempotent, no event).
* `received` lists active delegations only; `delegations_of` lists the open ones (active
  and expired, so the holder can renew) unless asked for revoked ones.
* Every change takes the mailbox's row lock first, so concurrent grants and revokes of one
  mailbox's delegations end in a consistent state; each change and each refusal is audited,
  and the change event goes out after commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from sqlalchemy import exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from delegation.audit import AuditAction, AuditRecord, check_interface
from delegation.audit_trail import AuditTrail
from delegation.delegations import (
    DELEGATION_REFS,
    Delegation,
    change_event,
    delegation_of,
    is_active,
)
from delegation.errors import DelegationError, Invalid, NotFound, NotHolder
from delegation.events import ChangeKind
from delegation.expiry import check_expiry
from delegation.models import (
    MAX_ID,
    REASON_LENGTH,
    DelegationRow,
    DirectoryEntryRow,
    MailboxRow,
)
from delegation.parsing import normal_address, parse_idnat, parse_rights, rights_text
from delegation.store import Store
from psc_auth.identity import Identity

# Who asked, for the audit trail: (interface, software, remote).
Origin = tuple[str, str | None, str | None]


class Grants:
    """Changes to delegations (grant, revoke, provisioning) and their listings."""

    def __init__(self, store: Store, trail: AuditTrail) -> None:
        self._store = store
        self._trail = trail

    async def grant(
        self,
        holder: Identity,
        mailbox: str,
        delegate_idnat: str,
        rights: Collection[str],
        expires_at: dt.datetime | None = None,
        *,
        admin: bool = False,
        interface: str = "http",
        software: str | None = None,
        remote: str | None = None,
    ) -> Delegation:
        """Give (or update) a delegate's rights on a mailbox; audited as "grant". An expiry
        lies in the future, at most 10 years ahead (`delegation.expiry`)."""
        actor = str(holder.idnat)
        try:
            check_interface(interface)
            address = normal_address(mailbox)
            delegate = parse_idnat(delegate_idnat)
            chosen = parse_rights(rights)
            now = self._store.now()
            check_expiry(expires_at, now)
            if expires_at is not None:
                expires_at = expires_at.astimezone(dt.UTC)
            if delegate == actor:
                raise Invalid("one cannot delegate to oneself", reason="self-delegation")

            async def attempt() -> tuple[Delegation, ChangeKind | None]:
                async with self._store.writing() as db:
                    row = await self._managed_mailbox(db, actor, address, admin=admin, lock=True)
                    return await self.apply_grant(
                        db,
                        row,
                        delegate,
                        chosen,
                        expires_at,
                        actor=actor,
                        now=now,
                        audit=(interface, software, remote),
                    )

            delegation, kind = await self._store.retry_on_integrity(attempt)
        except DelegationError as exc:
            await self._trail.refusal(
                actor,
                mailbox,
                AuditAction.GRANT,
                exc,
                interface=interface,
                software=software,
                remote=remote,
            )
            raise
        if kind is not None:
            await self._store.publish([change_event(kind, delegation, now)])
        return delegation

    async def revoke(
        self,
        actor: Identity,
        mailbox: str,
        delegation_id: int,
        reason: str | None = None,
        *,
        admin: bool = False,
        interface: str = "http",
        software: str | None = None,
        remote: str | None = None,
    ) -> Delegation:
        """End a delegation now. Revoking a revoked one returns it as it is (idempotent)."""
        actor_idnat = str(actor.idnat)
        try:
            check_interface(interface)
            address = normal_address(mailbox)
            if reason is not None and len(reason) > REASON_LENGTH:
                raise Invalid(f"reason longer than {REASON_LENGTH} characters", reason="bad-reason")
            if not 1 <= delegation_id <= MAX_ID:  # ids are 32-bit: larger ones cannot exist
                raise NotFound(f"no delegation {delegation_id}", reason="unknown-delegation")
            now = self._store.now()
            async with self._store.writing() as db:
                box = await self._managed_mailbox(db, actor_idnat, address, admin=admin, lock=True)
                row = await db.scalar(
                    select(DelegationRow)
                    .options(*DELEGATION_REFS)
                    .where(DelegationRow.id == delegation_id, DelegationRow.mailbox_id == box.id)
                )
                if row is None:
                    raise NotFound(
                        f"no delegation {delegation_id} on {address}", reason="unknown-delegation"
                    )
                changed = self.revoke_row(
                    db,
                    row,
                    address,
                    actor=actor_idnat,
                    reason=reason,
                    now=now,
                    origin=(interface, software, remote),
                )
                delegation = delegation_of(row, now)
        except DelegationError as exc:
            await self._trail.refusal(
                actor_idnat,
                mailbox,
                AuditAction.REVOKE,
                exc,
                interface=interface,
                software=software,
                remote=remote,
                delegation_id=delegation_id,
            )
            raise
        if changed:
            await self._store.publish([change_event("revoked", delegation, now)])
        return delegation

    def revoke_row(
        self,
        db: AsyncSession,
        row: DelegationRow,
        address: str,
        *,
        actor: str,
        reason: str | None,
        now: dt.datetime,
        origin: Origin,
    ) -> bool:
        """End the delegation `row` (of the mailbox at `address`) in `db`'s transaction, and
        audit it; False when it was already revoked. The caller publishes the event."""
        changed = row.revoked_at is None
        if changed:
            row.revoked_at = now
            row.revoked_by = actor
            row.reason = reason or None
        interface, software, remote = origin
        self._trail.add(
            db,
            AuditRecord(
                actor,
                address,
                AuditAction.REVOKE,
                interface=interface,
                result="ok",
                delegation_id=row.id,
                software=software,
                remote=remote,
                detail=(reason or None) if changed else "already revoked",
                at=now,
            ),
        )
        return changed

    async def provision_delegation(
        self,
        mailbox: str,
        delegate_idnat: str,
        rights: Collection[str],
        expires_at: dt.datetime | None = None,
        *,
        granted_by: str | None = None,
    ) -> Delegation:
        """Create a delegation unless this pair ever had one (seeding: a delegation the holder
        revoked or let expire is not brought back). Returns the new or the latest one."""
        address = normal_address(mailbox)
        delegate = parse_idnat(delegate_idnat)
        chosen = parse_rights(rights)
        now = self._store.now()

        async def attempt() -> tuple[Delegation, ChangeKind | None]:
            async with self._store.writing() as db:
                box = await db.scalar(
                    select(MailboxRow)
                    .where(MailboxRow.address == address)
                    .with_for_update(key_share=True)
                )
                if box is None:
                    raise NotFound(f"no mailbox {address}", reason="unknown-mailbox")
                actor = granted_by or box.holder_idnat or "provisioning"
                return await self.apply_grant(
                    db,
                    box,
                    delegate,
                    chosen,
                    expires_at,
                    actor=actor,
                    now=now,
                    audit=None,
                    only_if_new=True,
                )

        delegation, kind = await self._store.retry_on_integrity(attempt)
        if kind is not None:
            await self._store.publish([change_event(kind, delegation, now)])
        return delegation

    async def delegations_of(
        self,
        actor: Identity,
        mailbox: str,
        *,
        admin: bool = False,
        include_revoked: bool = False,
    ) -> list[Delegation]:
        """The mailbox's delegations for its holder: open ones (active or expired), oldest first."""
        address = normal_address(mailbox)
        now = self._store.now()
        async with self._store.reading() as db:
            box = await self._managed_mailbox(
                db, str(actor.idnat), address, admin=admin, lock=False
            )
            statement = (
                select(DelegationRow)
                .options(*DELEGATION_REFS)
                .where(DelegationRow.mailbox_id == box.id)
            )
            if not include_revoked:
                statement = statement.where(DelegationRow.revoked_at.is_(None))
            rows = (
                await db.scalars(statement.order_by(DelegationRow.created_at, DelegationRow.id))
            ).all()
            return [delegation_of(r, now) for r in rows]

    async def received(self, identity: Identity) -> list[Delegation]:
        """The active delegations this person holds (not the expired or revoked ones)."""
        now = self._store.now()
        async with self._store.reading() as db:
            rows = (
                await db.scalars(
                    select(DelegationRow)
                    .options(*DELEGATION_REFS)
                    .join(DelegationRow.mailbox)
                    .where(
                        DelegationRow.delegate_idnat == str(identity.idnat),
                        DelegationRow.revoked_at.is_(None),
                        or_(DelegationRow.expires_at.is_(None), DelegationRow.expires_at > now),
                    )
                    .order_by(MailboxRow.address)
                )
            ).all()
            return [delegation_of(r, now) for r in rows]

    async def _managed_mailbox(
        self, db: AsyncSession, actor_idnat: str, address: str, *, admin: bool, lock: bool
    ) -> MailboxRow:
        """The mailbox if the actor may manage it: the holder of a PER BAL, an administrator
        for the others. With `lock`, the row lock serialises every change to its delegations."""
        statement = select(MailboxRow).where(MailboxRow.address == address)
        if lock:
            statement = statement.with_for_update(key_share=True)
        mailbox = await db.scalar(statement)
        if mailbox is None:
            raise NotFound(f"no mailbox {address}", reason="unknown-mailbox")
        if mailbox.type == "PER":
            if mailbox.holder_idnat != actor_idnat:
                raise NotHolder("only the holder of a personal mailbox manages its delegations")
        elif not admin:
            raise NotHolder(f"an administrator manages the delegations of {mailbox.type} mailboxes")
        return mailbox

    async def apply_grant(
        self,
        db: AsyncSession,
        mailbox: MailboxRow,
        delegate_idnat: str,
        rights: frozenset[str],
        expires_at: dt.datetime | None,
        *,
        actor: str,
        now: dt.datetime,
        audit: Origin | None,
        only_if_new: bool = False,
    ) -> tuple[Delegation, ChangeKind | None]:
        """Insert or update the open delegation; returns it and the event kind to publish."""
        if mailbox.type == "PER" and mailbox.holder_idnat == delegate_idnat:
            raise Invalid("the holder already has every right", reason="self-delegation")
        entry = await db.get(DirectoryEntryRow, delegate_idnat)
        if entry is None:
            raise NotFound(f"{delegate_idnat} is not in the directory", reason="unknown-delegate")
        pair = (
            DelegationRow.mailbox_id == mailbox.id,
            DelegationRow.delegate_idnat == delegate_idnat,
        )
        if only_if_new and await db.scalar(select(exists().where(*pair))):
            row = await db.scalar(
                select(DelegationRow)
                .options(*DELEGATION_REFS)
                .where(*pair)
                .order_by(DelegationRow.id.desc())
                .limit(1)
            )
            assert row is not None
            return delegation_of(row, now), None
        row = await db.scalar(
            select(DelegationRow).where(*pair, DelegationRow.revoked_at.is_(None))
        )
        kind: ChangeKind
        if row is None:
            row = DelegationRow(
                mailbox_id=mailbox.id,
                delegate_idnat=delegate_idnat,
                granted_by=actor,
                created_at=now,
                updated_at=now,
                expires_at=expires_at,
                expiry_notified=False,
            )
            row.rights = rights
            db.add(row)
            kind = "granted"
        else:
            kind = "updated" if is_active(row, now) else "granted"
            row.rights = rights
            row.expires_at = expires_at
            row.granted_by = actor
            row.updated_at = now
            row.expiry_notified = False
        row.mailbox = mailbox
        row.delegate = entry
        await db.flush()
        if audit is not None:
            interface, software, remote = audit
            expiry = expires_at.isoformat() if expires_at else "never"
            self._trail.add(
                db,
                AuditRecord(
                    actor,
                    mailbox.address,
                    AuditAction.GRANT,
                    interface=interface,
                    result="ok",
                    delegation_id=row.id,
                    software=software,
                    remote=remote,
                    detail=f"{kind} delegate={delegate_idnat} rights={rights_text(rights)} "
                    f"expires={expiry}",
                    at=now,
                ),
            )
        return delegation_of(row, now), kind
