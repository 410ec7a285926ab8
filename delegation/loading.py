"""Loading the operator's directory: the registry as it stands, and a set of changes
written in one transaction.

An import must not leave the registry half-loaded (a person without the BAL that came on
the same line, a delegation without its mailbox), so everything an import changes is
written in one transaction through the same row writers as the single changes
(`write_entry`, `write_mailbox`, `Grants.apply_grant`, `Grants.revoke_row`): a delegation
loaded is audited as a grant, one removed as a revocation, and their change events go
out after commit, so decisions remembered on any node are forgotten and the sessions of a
delegate or holder who lost a BAL end. The values are checked by the caller
(`check_person`, `check_mailbox`, `parse_rights`): this module does not parse.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import TypeVarTuple

from sqlalchemy import Row, Select, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from delegation.audit import AuditAction, AuditRecord
from delegation.audit_trail import AuditTrail
from delegation.delegations import change_event
from delegation.directory import write_entry
from delegation.events import ChangeEvent
from delegation.grants import Grants, Origin
from delegation.mailboxes import write_mailbox
from delegation.models import (
    DelegationRow,
    DirectoryAddressRow,
    DirectoryEntryRow,
    MailboxRow,
)
from delegation.store import Store

REMOVED = "removed from the operator's directory"


@dataclass(frozen=True, slots=True)
class PersonWrite:
    idnat: str
    given_name: str
    family_name: str
    profession: str | None


@dataclass(frozen=True, slots=True)
class MailboxWrite:
    """A mailbox; `backend` None keeps the recorded one (a new mailbox: placed by routing)."""

    address: str
    type: str
    holder_idnat: str | None
    organisation: str | None
    backend: str | None = None


@dataclass(frozen=True, slots=True)
class DelegationWrite:
    mailbox: str
    delegate_idnat: str
    rights: frozenset[str]
    expires_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class OpenDelegation:
    id: int
    rights: frozenset[str]
    expires_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class RegistryState:
    """People, mailboxes (backend as recorded) and open delegations by mailbox then
    delegate: what an import compares its file with."""

    people: dict[str, PersonWrite]
    mailboxes: dict[str, MailboxWrite]
    delegations: dict[str, dict[str, OpenDelegation]]


@dataclass(frozen=True, slots=True)
class Load:
    """What one import writes. Removals: the mailboxes and people go with their delegations
    (revoked first, so that their events fire); `revoke` names open delegations by
    (mailbox, delegation id)."""

    people: tuple[PersonWrite, ...] = ()
    mailboxes: tuple[MailboxWrite, ...] = ()
    delegations: tuple[DelegationWrite, ...] = ()
    revoke: tuple[tuple[str, int], ...] = ()
    remove_mailboxes: tuple[str, ...] = ()
    remove_people: tuple[str, ...] = ()
    moved: tuple[str, ...] = field(default=())
    """Mailboxes whose holder or backend changed: decisions remembered for them are stale."""


_Ts = TypeVarTuple("_Ts")
CHUNK = 500  # keys in one IN (...): far below every backend's bound on parameters
PARTITION = 5000  # rows of the registry read between two turns of the event loop


async def _loaded(
    db: AsyncSession, load: Load
) -> tuple[dict[str, DirectoryEntryRow], dict[str, MailboxRow]]:
    """The existing rows a load writes, in a few queries instead of one per row (and
    referenced here, so the session's weak identity map keeps them)."""
    idnats = sorted(
        {p.idnat for p in load.people} | {m.holder_idnat for m in load.mailboxes if m.holder_idnat}
    )
    addresses = sorted({m.address for m in load.mailboxes})
    people: dict[str, DirectoryEntryRow] = {}
    boxes: dict[str, MailboxRow] = {}
    for start in range(0, len(idnats), CHUNK):
        for entry in await db.scalars(
            select(DirectoryEntryRow)
            .options(selectinload(DirectoryEntryRow.addresses))
            .where(DirectoryEntryRow.idnat.in_(idnats[start : start + CHUNK]))
        ):
            people[entry.idnat] = entry
    for start in range(0, len(addresses), CHUNK):
        for box in await db.scalars(
            select(MailboxRow).where(MailboxRow.address.in_(addresses[start : start + CHUNK]))
        ):
            boxes[box.address] = box
    return people, boxes


async def _partitioned(db: AsyncSession, query: Select[*_Ts]) -> list[Row[*_Ts]]:
    """All rows of `query`, fetched `PARTITION` at a time with a pause between: the loop
    serves other sessions between partitions instead of waiting for the whole table."""
    found: list[Row[*_Ts]] = []
    result = await db.stream(query.execution_options(yield_per=PARTITION))
    async for partition in result.partitions():
        found += partition
        await asyncio.sleep(0)
    return found


class Loading:
    """Reads the registry whole, and writes a `Load` in one transaction."""

    def __init__(self, store: Store, grants: Grants, trail: AuditTrail) -> None:
        self._store = store
        self._grants = grants
        self._trail = trail

    async def state(self) -> RegistryState:
        """Read in partitions of plain columns (no ORM objects): a registry of 200,000 BAL
        built in one go held the event loop for seconds, every session of the node with it."""
        people: dict[str, PersonWrite] = {}
        boxes: dict[str, MailboxWrite] = {}
        delegations: dict[str, dict[str, OpenDelegation]] = {}
        async with self._store.reading() as db:
            for person in await _partitioned(
                db,
                select(
                    DirectoryEntryRow.idnat,
                    DirectoryEntryRow.given_name,
                    DirectoryEntryRow.family_name,
                    DirectoryEntryRow.profession,
                ),
            ):
                idnat, given, family, profession = person
                people[idnat] = PersonWrite(idnat, given, family, profession)
            for box in await _partitioned(
                db,
                select(
                    MailboxRow.address,
                    MailboxRow.type,
                    MailboxRow.holder_idnat,
                    MailboxRow.organisation,
                    MailboxRow.backend,
                ),
            ):
                address, kind, holder, organisation, backend = box
                boxes[address] = MailboxWrite(address, kind, holder, organisation, backend)
            for address, row in await _partitioned(
                db,
                select(MailboxRow.address, DelegationRow)
                .join(DelegationRow.mailbox)
                .where(DelegationRow.revoked_at.is_(None)),
            ):
                delegations.setdefault(address, {})[row.delegate_idnat] = OpenDelegation(
                    row.id, row.rights, row.expires_at
                )
        return RegistryState(people, boxes, delegations)

    async def load(self, load: Load, *, actor: str, origin: Origin, summary: str) -> int:
        """Write `load` in one transaction (all or nothing), audit it as one `admin` event
        with `summary` (plus the grants and revocations), then publish its change events.
        Returns how many change events went out."""
        now = self._store.now()

        async def attempt() -> list[ChangeEvent]:
            events: list[ChangeEvent] = []
            async with self._store.writing() as db:
                people, boxes = await _loaded(db, load)
                with db.no_autoflush:
                    for person in load.people:
                        people[person.idnat] = await write_entry(
                            db,
                            person.idnat,
                            person.given_name,
                            person.family_name,
                            person.profession,
                            loaded=people,
                        )
                    await db.flush()
                    for box in load.mailboxes:
                        await write_mailbox(
                            db,
                            box.address,
                            box.type,
                            box.holder_idnat,
                            box.organisation,
                            backend=box.backend,
                            loaded=boxes,
                            holders=people,
                        )
                await db.flush()
                events += [ChangeEvent("moved", a, "", 0, now) for a in load.moved]
                for wanted in load.delegations:
                    row = await db.scalar(
                        select(MailboxRow)
                        .where(MailboxRow.address == wanted.mailbox)
                        .with_for_update(key_share=True)
                    )
                    assert row is not None, "a delegation on a mailbox the load does not hold"
                    delegation, kind = await self._grants.apply_grant(
                        db,
                        row,
                        wanted.delegate_idnat,
                        wanted.rights,
                        wanted.expires_at,
                        actor=actor,
                        now=now,
                        audit=origin,
                    )
                    if kind is not None:
                        events.append(change_event(kind, delegation, now))
                for address, delegation_id in load.revoke:
                    found = await db.get(DelegationRow, delegation_id)
                    if found is not None:
                        events += self._revoke(db, found, address, actor, origin, now)
                for address in load.remove_mailboxes:
                    events += await self._remove_mailbox(db, address, actor, origin, now)
                for idnat in load.remove_people:
                    events += await self._remove_person(db, idnat, actor, origin, now)
                interface, software, remote = origin
                self._trail.add(
                    db,
                    AuditRecord(
                        actor,
                        "",
                        AuditAction.ADMIN,
                        interface=interface,
                        software=software,
                        remote=remote,
                        detail=summary,
                        at=now,
                    ),
                )
            return events

        events = await self._store.retry_on_integrity(attempt)
        await self._store.publish(events)
        return len(events)

    def _revoke(
        self,
        db: AsyncSession,
        row: DelegationRow,
        address: str,
        actor: str,
        origin: Origin,
        now: dt.datetime,
    ) -> list[ChangeEvent]:
        if not self._grants.revoke_row(
            db, row, address, actor=actor, reason=REMOVED, now=now, origin=origin
        ):
            return []
        return [ChangeEvent("revoked", address, row.delegate_idnat, row.id, now)]

    async def _remove_mailbox(
        self, db: AsyncSession, address: str, actor: str, origin: Origin, now: dt.datetime
    ) -> list[ChangeEvent]:
        """Revoke the mailbox's open delegations, then delete it, its delegations' rows and
        its listing in the directory; a `moved` event ends its holder's sessions."""
        box = await db.scalar(
            select(MailboxRow).where(MailboxRow.address == address).with_for_update()
        )
        if box is None:
            return []
        events: list[ChangeEvent] = []
        for row in await db.scalars(
            select(DelegationRow).where(
                DelegationRow.mailbox_id == box.id, DelegationRow.revoked_at.is_(None)
            )
        ):
            events += self._revoke(db, row, address, actor, origin, now)
        await db.flush()
        await db.execute(delete(DelegationRow).where(DelegationRow.mailbox_id == box.id))
        await db.execute(delete(DirectoryAddressRow).where(DirectoryAddressRow.address == address))
        await db.execute(delete(MailboxRow).where(MailboxRow.id == box.id))
        return [*events, ChangeEvent("moved", address, "", 0, now)]

    async def _remove_person(
        self, db: AsyncSession, idnat: str, actor: str, origin: Origin, now: dt.datetime
    ) -> list[ChangeEvent]:
        """Revoke the delegations the person receives, then delete them and the person."""
        events: list[ChangeEvent] = []
        rows = await db.execute(
            select(MailboxRow.address, DelegationRow)
            .join(DelegationRow.mailbox)
            .where(DelegationRow.delegate_idnat == idnat, DelegationRow.revoked_at.is_(None))
        )
        for address, row in rows.all():
            events += self._revoke(db, row, address, actor, origin, now)
        await db.flush()
        await db.execute(delete(DelegationRow).where(DelegationRow.delegate_idnat == idnat))
        await db.execute(delete(DirectoryAddressRow).where(DirectoryAddressRow.idnat == idnat))
        await db.execute(delete(DirectoryEntryRow).where(DirectoryEntryRow.idnat == idnat))
        return events
