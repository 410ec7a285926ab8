"""The delegation service: who may open which mailbox, and the changes to that.

One object for the gateway, the mock operator and the tools to hold, composed of parts
that each keep one responsibility in a module of its own: decisions (`decisions`),
delegation changes and listings (`grants`), the expiry pass (`expiry`), the directory
(`directory`), mailboxes (`mailboxes`) and the audit trail (`audit_trail`). They share one
`Store` (`store`): one clock, one change bus and one write lock, so a decision, a grant
and an audit batch queue behind each other on SQLite exactly as one service's writes do.

The names callers import from here (`Grant`, `Decision`, `Delegation`, ...) stay here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Sequence

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from delegation.audit import AuditAction, AuditRecord
from delegation.audit_trail import AuditEvent, AuditListener, AuditTrail
from delegation.decisions import Decision, Decisions, Grant, Via
from delegation.delegations import Delegation, DelegationState
from delegation.directory import (
    MAX_LIMIT,
    MAX_QUERY,
    MIN_QUERY,
    Directory,
    DirectoryEntry,
    fold,
)
from delegation.events import ChangeBus, ChangeEvent
from delegation.expiry import Expiry
from delegation.grants import Grants, Origin
from delegation.loading import Load, Loading, RegistryState
from delegation.mailboxes import Mailbox, Mailboxes
from delegation.parsing import normal_address, parse_idnat, parse_rights
from delegation.store import Clock, Store, utc_now
from psc_auth.identity import Identity
from psc_auth.idnat import IdNat

__all__ = [
    "MAX_LIMIT",
    "MAX_QUERY",
    "MIN_QUERY",
    "AuditEvent",
    "Clock",
    "Decision",
    "Delegation",
    "DelegationService",
    "DelegationState",
    "DirectoryEntry",
    "Grant",
    "Mailbox",
    "Via",
    "fold",
    "normal_address",
    "parse_idnat",
    "parse_rights",
    "utc_now",
]


class DelegationService:
    """Mailboxes, delegations, directory and audit trail over one SQLAlchemy async database."""

    def __init__(
        self,
        db: AsyncEngine | async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utc_now,
        bus: ChangeBus | None = None,
    ) -> None:
        self._store = Store(db, clock=clock, bus=bus)
        self._trail = AuditTrail(self._store)
        self._decisions = Decisions(self._store, self._trail)
        self._grants = Grants(self._store, self._trail)
        self._expiry = Expiry(self._store)
        self._directory = Directory(self._store)
        self._mailboxes = Mailboxes(self._store)
        self._loading = Loading(self._store, self._grants, self._trail)

    @property
    def bus(self) -> ChangeBus:
        """Where changes are published after commit; may be replaced (e.g. by a test)."""
        return self._store.bus

    @bus.setter
    def bus(self, bus: ChangeBus) -> None:
        self._store.bus = bus

    @property
    def audit_listener(self) -> AuditListener | None:
        """Told of each audit event once written (`[log] audit_to_log`)."""
        return self._trail.listener

    @audit_listener.setter
    def audit_listener(self, listener: AuditListener | None) -> None:
        self._trail.listener = listener

    def now(self) -> dt.datetime:
        """The service clock (injectable for tests); always aware UTC."""
        return self._store.now()

    async def ping(self) -> None:
        """Run `SELECT 1`: the readiness probe's proof that the database answers (raises)."""
        await self._store.ping()

    # -- who may open what (`delegation.decisions`) ---------------------------------------

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
        return await self._decisions.resolve(
            identity, mailbox, interface=interface, software=software, remote=remote, action=action
        )

    async def decide(self, identity: Identity, mailbox: str) -> Decision:
        """What `resolve` decides, read-only and not audited (for callers that cache)."""
        return await self._decisions.decide(identity, mailbox)

    async def accessible(self, identity: Identity) -> list[Grant]:
        """Own BAL first, then the BAL delegated to this person (active delegations only)."""
        return await self._decisions.accessible(identity)

    # -- managing delegations (`delegation.grants`, `delegation.expiry`) -----------------

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
        """Give (or update) a delegate's rights on a mailbox; audited as "grant"."""
        return await self._grants.grant(
            holder,
            mailbox,
            delegate_idnat,
            rights,
            expires_at,
            admin=admin,
            interface=interface,
            software=software,
            remote=remote,
        )

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
        return await self._grants.revoke(
            actor,
            mailbox,
            delegation_id,
            reason,
            admin=admin,
            interface=interface,
            software=software,
            remote=remote,
        )

    async def delegations_of(
        self,
        actor: Identity,
        mailbox: str,
        *,
        admin: bool = False,
        include_revoked: bool = False,
    ) -> list[Delegation]:
        """The mailbox's delegations for its holder: open ones (active or expired), oldest first."""
        return await self._grants.delegations_of(
            actor, mailbox, admin=admin, include_revoked=include_revoked
        )

    async def received(self, identity: Identity) -> list[Delegation]:
        """The active delegations this person holds (not the expired or revoked ones)."""
        return await self._grants.received(identity)

    async def provision_delegation(
        self,
        mailbox: str,
        delegate_idnat: str,
        rights: Collection[str],
        expires_at: dt.datetime | None = None,
        *,
        granted_by: str | None = None,
    ) -> Delegation:
        """Create a delegation unless this pair ever had one (seeding); the new or latest one."""
        return await self._grants.provision_delegation(
            mailbox, delegate_idnat, rights, expires_at, granted_by=granted_by
        )

    async def expire_due(self) -> list[ChangeEvent]:
        """Publish "expired" once for each delegation whose expiry has passed."""
        return await self._expiry.expire_due()

    async def expire_forever(self, interval: float = 30.0) -> None:
        """Run `expire_due` every `interval` seconds until cancelled (one task per node)."""
        await self._expiry.expire_forever(interval)

    # -- directory and mailboxes (`delegation.directory`, `delegation.mailboxes`) ---------

    async def directory_search(self, query: str, limit: int = 20) -> list[DirectoryEntry]:
        """People whose names or idNat contain every word of `query` (case, accents ignored)."""
        return await self._directory.directory_search(query, limit)

    async def directory_entry(self, idnat: str) -> DirectoryEntry | None:
        return await self._directory.directory_entry(idnat)

    async def upsert_directory_entry(
        self,
        idnat: str,
        given_name: str,
        family_name: str,
        *,
        profession: str | None = None,
        ecps_only: bool = False,
        addresses: Iterable[str] | None = None,
    ) -> DirectoryEntry:
        """Create or update a person; `addresses` replaces their BAL list when given."""
        return await self._directory.upsert_directory_entry(
            idnat,
            given_name,
            family_name,
            profession=profession,
            ecps_only=ecps_only,
            addresses=addresses,
        )

    async def upsert_mailbox(
        self,
        address: str,
        *,
        type: str = "PER",
        holder_idnat: str | None = None,
        organisation: str | None = None,
        backend: str = "default",
        state: str = "active",
    ) -> Mailbox:
        """Create or update a mailbox (a PER one names its holder, the others their
        organisation)."""
        return await self._mailboxes.upsert_mailbox(
            address,
            type=type,
            holder_idnat=holder_idnat,
            organisation=organisation,
            backend=backend,
            state=state,
        )

    async def mailbox(self, address: str) -> Mailbox | None:
        return await self._mailboxes.mailbox(address)

    async def placements(self) -> list[tuple[str, str]]:
        """Every mailbox's (address, recorded backend), by address."""
        return await self._mailboxes.placements()

    async def move_mailbox(self, address: str, backend: str) -> Mailbox:
        """The mailbox now lives on `backend` (a BAL moved): every node hears of it."""
        return await self._mailboxes.move_mailbox(address, backend)

    async def any_mailbox(self) -> bool:
        """Whether the registry holds at least one mailbox."""
        return await self._mailboxes.any_mailbox()

    # -- loading the operator's directory (`delegation.loading`) -------------------------

    async def registry_state(self) -> RegistryState:
        """People, mailboxes and open delegations, whole: what an import compares with."""
        return await self._loading.state()

    async def load(self, load: Load, *, actor: str, origin: Origin, summary: str) -> int:
        """Write an import's changes in one transaction, then publish their events."""
        return await self._loading.load(load, actor=actor, origin=origin, summary=summary)

    # -- audit trail (`delegation.audit_trail`) ------------------------------------------

    async def record(
        self,
        actor_idnat: str | IdNat,
        mailbox: str,
        action: AuditAction,
        *,
        interface: str,
        result: str = "ok",
        delegation_id: int | None = None,
        software: str | None = None,
        remote: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Append an audit event for an action the gateway performed (select, store, send...);
        `Invalid` for an action or interface outside the vocabulary."""
        await self._trail.record(
            actor_idnat,
            mailbox,
            action,
            interface=interface,
            result=result,
            delegation_id=delegation_id,
            software=software,
            remote=remote,
            detail=detail,
        )

    async def record_many(self, events: Sequence[AuditRecord]) -> int:
        """Append several audit events in one transaction; return how many were written (an
        event that cannot fit its row is left out with a log line)."""
        return await self._trail.record_many(events)

    async def audit_for(self, mailbox: str, limit: int = 100) -> list[AuditEvent]:
        """The mailbox's audit trail, newest first."""
        return await self._trail.audit_for(mailbox, limit)
