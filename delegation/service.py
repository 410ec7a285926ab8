"""The delegation service: who may open which mailbox, and the changes to that.

`resolve` is the realm of STYLE.md's cred picture: psc_auth says who the caller is, this
says what they get. Every resolution is written to the audit trail, allowed or refused.
Changes (`grant`, `revoke`, expiry) are published on the `ChangeBus` only after their
transaction committed, so a subscriber that re-checks sees the new state.

Decisions worth knowing:

* A delegation is *open* until revoked and *active* while open and not past its expiry.
  Granting again to the same delegate updates the open row (same id), also when it had
  expired: the holder renews it; the event is "updated" if it was active, else "granted".
* Revoking an already revoked delegation returns it unchanged (idempotent, no event).
* `received` and `accessible` list active delegations only; `delegations_of` lists the
  open ones (active and expired, so the holder can renew) unless asked for revoked ones.
* On SQLite, writes are serialised by an in-process lock (SQLite has one writer); on
  PostgreSQL, changes to one mailbox's delegations are serialised by a row lock on the
  mailbox, so concurrent grants and revokes end in a consistent state.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import unicodedata
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from typing import Literal, TypeVar

from sqlalchemy import exists, or_, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import joinedload, selectinload

from delegation.audit import (
    AuditAction,
    AuditRecord,
    check_action,
    check_interface,
    described,
    fitted,
)
from delegation.errors import Conflict, DelegationError, Invalid, NotFound, NotHolder
from delegation.events import ChangeBus, ChangeEvent, ChangeKind, LocalBus
from delegation.expiry import check_expiry
from delegation.models import (
    ADDRESS_LENGTH,
    INTERFACES,
    MAILBOX_STATES,
    MAILBOX_TYPES,
    MAX_ID,
    NAME_LENGTH,
    REASON_LENGTH,
    RIGHTS,
    AuditEventRow,
    DelegationRow,
    DirectoryAddressRow,
    DirectoryEntryRow,
    MailboxRow,
)
from psc_auth.errors import IdNatError
from psc_auth.identity import Identity
from psc_auth.idnat import IdNat

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
Via = Literal["holder", "delegation"]
DelegationState = Literal["active", "expired", "revoked"]
_T = TypeVar("_T")

MIN_QUERY = 3
MAX_QUERY = 256  # the historic web services' search string limit
MAX_LIMIT = 500
_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_QUERYABLE = re.compile("[^\x00-\x1f\x7f\ud800-\udfff]*")
_LIGATURES = str.maketrans({"œ": "oe", "æ": "ae", "ø": "o", "đ": "d", "ł": "l", "ß": "ss"})


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    idnat: str
    given_name: str
    family_name: str
    profession: str | None
    ecps_only: bool
    addresses: tuple[str, ...]

    @property
    def display_name(self) -> str:
        return f"{self.given_name} {self.family_name}".strip() or self.idnat


@dataclass(frozen=True, slots=True)
class Mailbox:
    address: str
    type: str
    holder_idnat: str | None
    holder_name: str
    organisation: str | None
    backend: str
    state: str


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at: dt.datetime
    actor_idnat: str
    mailbox: str
    delegation_id: int | None
    action: str
    interface: str
    software: str | None
    remote: str | None
    result: str
    detail: str | None


def fold(text: str) -> str:
    """Lower-case, accent-free, punctuation as single spaces: "Hélène D'Œuf" → "helene d oeuf"."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[\W_]+", " ", bare.casefold().translate(_LIGATURES)).split())


def _search_key(entry: DirectoryEntryRow) -> str:
    return f"{fold(entry.family_name)} {fold(entry.given_name)} {entry.idnat}"


def normal_address(address: str) -> str:
    """The canonical (lower-case) form of a BAL address; Invalid if it is not one."""
    value = address.strip().lower() if isinstance(address, str) else ""
    if len(value) > ADDRESS_LENGTH or not _ADDRESS.fullmatch(value):
        raise Invalid(f"not a mailbox address: {address!r:.80}", reason="bad-address")
    return value


def parse_idnat(value: str) -> str:
    try:
        return str(IdNat.parse(value))
    except IdNatError as exc:
        raise Invalid(f"bad national identifier: {exc}", reason="bad-idnat") from None


def parse_rights(rights: Collection[str]) -> frozenset[str]:
    """A non-empty subset of read/write/send (a bare string is refused: "read" ≠ {r,e,a,d})."""
    if isinstance(rights, str) or not all(isinstance(r, str) for r in rights):
        raise Invalid("rights must be a list of 'read', 'write', 'send'", reason="bad-rights")
    chosen = frozenset(r.strip().lower() for r in rights)
    if not chosen:
        raise Invalid("at least one right is needed", reason="bad-rights")
    if unknown := chosen - RIGHTS:
        raise Invalid(f"unknown rights: {', '.join(sorted(unknown))}", reason="bad-rights")
    return chosen


def _is_active(row: DelegationRow, now: dt.datetime) -> bool:
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)


def _state(row: DelegationRow, now: dt.datetime) -> DelegationState:
    if row.revoked_at is not None:
        return "revoked"
    return "active" if _is_active(row, now) else "expired"


def _delegation(row: DelegationRow, now: dt.datetime) -> Delegation:
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
        state=_state(row, now),
    )


def _entry(row: DirectoryEntryRow) -> DirectoryEntry:
    return DirectoryEntry(
        idnat=row.idnat,
        given_name=row.given_name,
        family_name=row.family_name,
        profession=row.profession,
        ecps_only=row.ecps_only,
        addresses=tuple(a.address for a in row.addresses),
    )


def _mailbox(row: MailboxRow) -> Mailbox:
    return Mailbox(
        address=row.address,
        type=row.type,
        holder_idnat=row.holder_idnat,
        holder_name=row.holder_name,
        organisation=row.organisation,
        backend=row.backend,
        state=row.state,
    )


def _audit(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        at=row.at,
        actor_idnat=row.actor_idnat,
        mailbox=row.mailbox,
        delegation_id=row.delegation_id,
        action=row.action,
        interface=row.interface,
        software=row.software,
        remote=row.remote,
        result=row.result,
        detail=row.detail,
    )


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


def _rights_text(rights: Iterable[str]) -> str:
    return ",".join(r for r in ("read", "write", "send") if r in set(rights))


# What `_delegation` reads besides the row itself.
_DELEGATION_REFS = (selectinload(DelegationRow.mailbox), selectinload(DelegationRow.delegate))


class DelegationService:
    """Mailboxes, delegations, directory and audit trail over one SQLAlchemy async database."""

    def __init__(
        self,
        db: AsyncEngine | async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utc_now,
        bus: ChangeBus | None = None,
    ) -> None:
        if isinstance(db, AsyncEngine):
            engine: object = db
            self._sessions = async_sessionmaker(db, expire_on_commit=False)
        else:
            engine = db.kw.get("bind")
            self._sessions = db
        # SQLite has one writer: queue writers here rather than fail with "database is locked".
        self._serialise = not isinstance(engine, AsyncEngine) or engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock()
        self._clock = clock
        self.bus: ChangeBus = bus if bus is not None else LocalBus()

    # -- plumbing -----------------------------------------------------------------------

    def now(self) -> dt.datetime:
        """The service clock (injectable for tests); always aware UTC."""
        value = self._clock()
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("the delegation clock must return aware datetimes")
        return value.astimezone(dt.UTC)

    async def ping(self) -> None:
        """Run `SELECT 1`: the readiness probe's proof that the database answers (raises)."""
        async with self._sessions() as db:
            await db.execute(text("SELECT 1"))

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncSession]:
        lock: contextlib.AbstractAsyncContextManager[object] = (
            self._write_lock if self._serialise else contextlib.nullcontext()
        )
        async with lock, self._sessions.begin() as db:
            yield db

    async def _retry_on_integrity(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run a write; a unique-key race with another node is retried, then a Conflict."""
        for remaining in (2, 1, 0):
            try:
                return await attempt()
            except IntegrityError as exc:
                if remaining == 0:
                    raise Conflict(f"concurrent change: {exc.orig}") from None
        raise AssertionError("unreachable")

    async def _publish(self, events: Iterable[ChangeEvent]) -> None:
        """After commit: the change is durable, so a bus failure is logged, not raised."""
        for event in events:
            try:
                await self.bus.publish(event)
            except Exception:
                log.exception(
                    "could not publish %s on delegation %s", event.kind, event.delegation_id
                )

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
        record, _changed = fitted(
            AuditRecord(
                str(actor_idnat),
                mailbox,
                action,
                interface,
                result=result,
                delegation_id=delegation_id,
                software=software,
                remote=remote,
                detail=detail,
            )
        )
        async with self._writing() as db:
            self._add_audit(db, record)

    async def record_many(self, events: Sequence[AuditRecord]) -> int:
        """Append several audit events in one transaction (a batch from a busy front);
        return how many were written. An event that cannot fit its row (an action or an
        interface outside the vocabulary) is left out with a log line, the others written."""
        rows = [row for row in map(self._audit_row, events) if row is not None]
        if rows:
            async with self._writing() as db:
                db.add_all(rows)
        return len(rows)

    def _add_audit(self, db: AsyncSession, record: AuditRecord) -> None:
        row = self._audit_row(record)
        if row is not None:
            db.add(row)

    def _audit_row(self, record: AuditRecord) -> AuditEventRow | None:
        try:
            record, changed = fitted(record)
        except Invalid as exc:
            log.error("audit.event_quarantined", extra={"reason": exc.reason, **described(record)})
            return None
        if changed:
            log.warning("audit.event_clipped", extra={"fields": changed, **described(record)})
        return AuditEventRow(
            at=record.at or self.now(),
            actor_idnat=record.actor_idnat,
            mailbox=record.mailbox,
            delegation_id=record.delegation_id,
            action=record.action.value,
            interface=record.interface,
            software=record.software,
            remote=record.remote,
            result=record.result,
            detail=record.detail,
        )

    async def _record_refusal(
        self,
        actor_idnat: str,
        mailbox: str,
        action: AuditAction,
        error: DelegationError,
        *,
        interface: str,
        software: str | None,
        remote: str | None,
        delegation_id: int | None = None,
    ) -> None:
        if interface not in INTERFACES:
            return  # the refusal is the bad interface itself: nothing valid to record
        async with self._writing() as db:
            self._add_audit(
                db,
                AuditRecord(
                    actor_idnat,
                    mailbox,
                    action,
                    interface,
                    result=f"refused:{error.reason}",
                    delegation_id=delegation_id,
                    software=software,
                    remote=remote,
                    detail=str(error),
                ),
            )

    # -- who may open what ----------------------------------------------------------------

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
        now = self.now()
        address = mailbox.strip().lower() if isinstance(mailbox, str) else ""
        async with self._writing() as db:
            grant, refusal, delegation_id = await self._decide(db, idnat, address, now)
            self._add_audit(
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
                    detail=f"via={grant.via} rights={_rights_text(grant.rights)}"
                    if grant
                    else None,
                    at=now,
                ),
            )
        return grant

    async def decide(self, identity: Identity, mailbox: str) -> Decision:
        """What `resolve` decides, read-only and not audited: for a caller that caches
        decisions and writes its audit events in batches (the gateway's fronts)."""
        address = mailbox.strip().lower() if isinstance(mailbox, str) else ""
        async with self._sessions() as db:
            grant, refusal, delegation_id = await self._decide(
                db, str(identity.idnat), address, self.now()
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
        if not _is_active(row, now):
            return None, "expired", row.id
        return _delegated_grant(mailbox, row), None, row.id

    async def accessible(self, identity: Identity) -> list[Grant]:
        """Own BAL first, then the BAL delegated to this person (active delegations only)."""
        idnat = str(identity.idnat)
        now = self.now()
        async with self._sessions() as db:
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

    # -- managing delegations ------------------------------------------------------------

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
            now = self.now()
            check_expiry(expires_at, now)
            if expires_at is not None:
                expires_at = expires_at.astimezone(dt.UTC)
            if delegate == actor:
                raise Invalid("one cannot delegate to oneself", reason="self-delegation")

            async def attempt() -> tuple[Delegation, ChangeKind | None]:
                async with self._writing() as db:
                    row = await self._managed_mailbox(db, actor, address, admin=admin, lock=True)
                    return await self._apply_grant(
                        db,
                        row,
                        delegate,
                        chosen,
                        expires_at,
                        actor=actor,
                        now=now,
                        audit=(interface, software, remote),
                    )

            delegation, kind = await self._retry_on_integrity(attempt)
        except DelegationError as exc:
            await self._record_refusal(
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
            await self._publish([self._event(kind, delegation, now)])
        return delegation

    async def _apply_grant(
        self,
        db: AsyncSession,
        mailbox: MailboxRow,
        delegate_idnat: str,
        rights: frozenset[str],
        expires_at: dt.datetime | None,
        *,
        actor: str,
        now: dt.datetime,
        audit: tuple[str, str | None, str | None] | None,
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
                .options(*_DELEGATION_REFS)
                .where(*pair)
                .order_by(DelegationRow.id.desc())
                .limit(1)
            )
            assert row is not None
            return _delegation(row, now), None
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
            kind = "updated" if _is_active(row, now) else "granted"
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
            self._add_audit(
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
                    detail=f"{kind} delegate={delegate_idnat} rights={_rights_text(rights)} "
                    f"expires={expiry}",
                    at=now,
                ),
            )
        return _delegation(row, now), kind

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
            now = self.now()
            async with self._writing() as db:
                box = await self._managed_mailbox(db, actor_idnat, address, admin=admin, lock=True)
                row = await db.scalar(
                    select(DelegationRow)
                    .options(*_DELEGATION_REFS)
                    .where(DelegationRow.id == delegation_id, DelegationRow.mailbox_id == box.id)
                )
                if row is None:
                    raise NotFound(
                        f"no delegation {delegation_id} on {address}", reason="unknown-delegation"
                    )
                changed = row.revoked_at is None
                if changed:
                    row.revoked_at = now
                    row.revoked_by = actor_idnat
                    row.reason = reason or None
                self._add_audit(
                    db,
                    AuditRecord(
                        actor_idnat,
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
                delegation = _delegation(row, now)
        except DelegationError as exc:
            await self._record_refusal(
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
            await self._publish([self._event("revoked", delegation, now)])
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
        now = self.now()
        async with self._sessions() as db:
            box = await self._managed_mailbox(
                db, str(actor.idnat), address, admin=admin, lock=False
            )
            statement = (
                select(DelegationRow)
                .options(*_DELEGATION_REFS)
                .where(DelegationRow.mailbox_id == box.id)
            )
            if not include_revoked:
                statement = statement.where(DelegationRow.revoked_at.is_(None))
            rows = (
                await db.scalars(statement.order_by(DelegationRow.created_at, DelegationRow.id))
            ).all()
            return [_delegation(r, now) for r in rows]

    async def received(self, identity: Identity) -> list[Delegation]:
        """The active delegations this person holds (not the expired or revoked ones)."""
        now = self.now()
        async with self._sessions() as db:
            rows = (
                await db.scalars(
                    select(DelegationRow)
                    .options(*_DELEGATION_REFS)
                    .join(DelegationRow.mailbox)
                    .where(
                        DelegationRow.delegate_idnat == str(identity.idnat),
                        DelegationRow.revoked_at.is_(None),
                        or_(DelegationRow.expires_at.is_(None), DelegationRow.expires_at > now),
                    )
                    .order_by(MailboxRow.address)
                )
            ).all()
            return [_delegation(r, now) for r in rows]

    # -- expiry --------------------------------------------------------------------------

    async def expire_due(self) -> list[ChangeEvent]:
        """Publish "expired" once for each delegation whose expiry has passed (any node may
        call it: the conditional update hands each expiry to exactly one caller)."""
        now = self.now()
        async with self._writing() as db:
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
        await self._publish(events)
        return events

    async def expire_forever(self, interval: float = 30.0) -> None:
        """Run `expire_due` every `interval` seconds until cancelled (one task per node)."""
        while True:
            try:
                await self.expire_due()
            except (SQLAlchemyError, OSError):
                log.exception("delegation expiry pass failed; retrying")
            await asyncio.sleep(interval)

    def _event(self, kind: ChangeKind, delegation: Delegation, at: dt.datetime) -> ChangeEvent:
        return ChangeEvent(kind, delegation.mailbox, delegation.delegate_idnat, delegation.id, at)

    # -- directory -----------------------------------------------------------------------

    async def directory_search(self, query: str, limit: int = 20) -> list[DirectoryEntry]:
        """People whose names or idNat contain every word of `query` (at least 3 characters;
        case and accents ignored), at most `limit`, by family then given name."""
        if not isinstance(query, str) or len(query) > MAX_QUERY:
            raise Invalid(f"the query has at most {MAX_QUERY} characters", reason="bad-query")
        words = fold(query).split()
        if sum(len(w) for w in words) < MIN_QUERY:
            raise Invalid(f"the query needs at least {MIN_QUERY} characters", reason="bad-query")
        if not 1 <= limit <= MAX_LIMIT:
            raise Invalid(f"the limit is between 1 and {MAX_LIMIT}", reason="bad-limit")
        async with self._sessions() as db:
            rows = (
                await db.scalars(
                    select(DirectoryEntryRow)
                    .options(selectinload(DirectoryEntryRow.addresses))
                    .where(
                        *(DirectoryEntryRow.search_key.contains(w, autoescape=True) for w in words)
                    )
                    .order_by(
                        DirectoryEntryRow.family_name,
                        DirectoryEntryRow.given_name,
                        DirectoryEntryRow.idnat,
                    )
                    .limit(limit)
                )
            ).all()
            return [_entry(r) for r in rows]

    async def directory_entry(self, idnat: str) -> DirectoryEntry | None:
        async with self._sessions() as db:
            row = await db.get(
                DirectoryEntryRow, idnat, options=[selectinload(DirectoryEntryRow.addresses)]
            )
            return _entry(row) if row else None

    async def audit_for(self, mailbox: str, limit: int = 100) -> list[AuditEvent]:
        """The mailbox's audit trail, newest first."""
        if not 1 <= limit <= 10_000:
            raise Invalid("the limit is between 1 and 10000", reason="bad-limit")
        address = mailbox.strip().lower()
        async with self._sessions() as db:
            rows = (
                await db.scalars(
                    select(AuditEventRow)
                    .where(AuditEventRow.mailbox == address)
                    .order_by(AuditEventRow.at.desc(), AuditEventRow.id.desc())
                    .limit(limit)
                )
            ).all()
            return [_audit(r) for r in rows]

    # -- provisioning ----------------------------------------------------------------------

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
        idnat = parse_idnat(idnat)
        given_name, family_name = given_name.strip(), family_name.strip()
        if not family_name or len(given_name) > NAME_LENGTH or len(family_name) > NAME_LENGTH:
            raise Invalid("a family name of at most 128 characters is needed", reason="bad-name")
        if profession is not None and not (0 < len(profession) <= 8):
            raise Invalid("bad profession code", reason="bad-profession")
        wanted = None if addresses is None else sorted({normal_address(a) for a in addresses})

        async def attempt() -> DirectoryEntry:
            async with self._writing() as db:
                row = await db.get(
                    DirectoryEntryRow, idnat, options=[selectinload(DirectoryEntryRow.addresses)]
                )
                if row is None:
                    row = DirectoryEntryRow(idnat=idnat, addresses=[])
                    db.add(row)
                row.given_name = given_name
                row.family_name = family_name
                row.profession = profession
                row.ecps_only = ecps_only
                row.search_key = _search_key(row)
                if wanted is not None:
                    current = {a.address: a for a in row.addresses}
                    row.addresses = [
                        current.get(a) or DirectoryAddressRow(idnat=idnat, address=a)
                        for a in wanted
                    ]
                await db.flush()
                return _entry(row)

        return await self._retry_on_integrity(attempt)

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
        """Create or update a mailbox. A PER mailbox names its holder (who must be in the
        directory, and gets the address listed); the others name their organisation."""
        address = normal_address(address)
        if type not in MAILBOX_TYPES:
            raise Invalid(f"mailbox type is one of {', '.join(MAILBOX_TYPES)}", reason="bad-type")
        if state not in MAILBOX_STATES:
            raise Invalid(f"state is one of {', '.join(MAILBOX_STATES)}", reason="bad-state")
        if not backend or len(backend) > 64:
            raise Invalid("a backend name of at most 64 characters", reason="bad-backend")
        if type == "PER":
            if holder_idnat is None:
                raise Invalid("a personal mailbox needs its holder", reason="bad-holder")
            holder_idnat = parse_idnat(holder_idnat)
        else:
            if holder_idnat is not None:
                raise Invalid(f"a {type} mailbox has no personal holder", reason="bad-holder")
            if not organisation or len(organisation) > NAME_LENGTH:
                raise Invalid(f"a {type} mailbox needs its organisation", reason="bad-holder")

        async def attempt() -> Mailbox:
            async with self._writing() as db:
                holder = None
                if holder_idnat is not None:
                    holder = await db.get(
                        DirectoryEntryRow,
                        holder_idnat,
                        options=[selectinload(DirectoryEntryRow.addresses)],
                    )
                    if holder is None:
                        raise NotFound(
                            f"{holder_idnat} is not in the directory", reason="unknown-holder"
                        )
                    if address not in {a.address for a in holder.addresses}:
                        holder.addresses.append(
                            DirectoryAddressRow(idnat=holder.idnat, address=address)
                        )
                row = await db.scalar(select(MailboxRow).where(MailboxRow.address == address))
                if row is None:
                    row = MailboxRow(address=address)
                    db.add(row)
                row.type = type
                row.holder_idnat = holder_idnat
                row.holder = holder
                row.organisation = organisation
                row.backend = backend
                row.state = state
                await db.flush()
                return _mailbox(row)

        return await self._retry_on_integrity(attempt)

    async def mailbox(self, address: str) -> Mailbox | None:
        async with self._sessions() as db:
            row = await db.scalar(
                select(MailboxRow)
                .options(selectinload(MailboxRow.holder))
                .where(MailboxRow.address == address.strip().lower())
            )
            return _mailbox(row) if row else None

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
        now = self.now()

        async def attempt() -> tuple[Delegation, ChangeKind | None]:
            async with self._writing() as db:
                box = await db.scalar(
                    select(MailboxRow)
                    .where(MailboxRow.address == address)
                    .with_for_update(key_share=True)
                )
                if box is None:
                    raise NotFound(f"no mailbox {address}", reason="unknown-mailbox")
                actor = granted_by or box.holder_idnat or "provisioning"
                return await self._apply_grant(
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

        delegation, kind = await self._retry_on_integrity(attempt)
        if kind is not None:
            await self._publish([self._event(kind, delegation, now)])
        return delegation
