"""Mailboxes (BAL): their type, their holder or organisation, and the backend they live on.

A personal (PER) mailbox names its holder, who must be in the directory and gets the
address listed on their entry, so that the directory and the mailboxes cannot disagree on
who holds a BAL; the others (ORG, APP, CAB) name their organisation instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from delegation.errors import Invalid, NotFound
from delegation.events import ChangeEvent
from delegation.models import (
    MAILBOX_STATES,
    MAILBOX_TYPES,
    NAME_LENGTH,
    DirectoryAddressRow,
    DirectoryEntryRow,
    MailboxRow,
)
from delegation.parsing import normal_address, parse_idnat
from delegation.store import Store


@dataclass(frozen=True, slots=True)
class Mailbox:
    address: str
    type: str
    holder_idnat: str | None
    holder_name: str
    organisation: str | None
    backend: str
    state: str


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


BACKEND_LENGTH = 64
BY_ROUTING = ""
"""The backend recorded for a mailbox the routing places (`[routing]`): no name of its own."""


def check_mailbox(
    address: str, type: str, holder_idnat: str | None, organisation: str | None
) -> tuple[str, str, str | None, str | None]:
    """A mailbox's fields checked and made canonical: a PER one names its holder, the
    others their organisation (`Invalid` with a stable reason)."""
    address = normal_address(address)
    if type not in MAILBOX_TYPES:
        raise Invalid(f"mailbox type is one of {', '.join(MAILBOX_TYPES)}", reason="bad-type")
    if type == "PER":
        if holder_idnat is None:
            raise Invalid("a personal mailbox needs its holder", reason="bad-holder")
        return address, type, parse_idnat(holder_idnat), None
    if holder_idnat is not None:
        raise Invalid(f"a {type} mailbox has no personal holder", reason="bad-holder")
    if not organisation or len(organisation) > NAME_LENGTH:
        raise Invalid(f"a {type} mailbox needs its organisation", reason="bad-holder")
    return address, type, None, organisation


async def write_mailbox(
    db: AsyncSession,
    address: str,
    type: str,
    holder_idnat: str | None,
    organisation: str | None,
    *,
    backend: str | None = None,
    state: str | None = None,
    loaded: Mapping[str, MailboxRow] | None = None,
    holders: Mapping[str, DirectoryEntryRow] | None = None,
) -> MailboxRow:
    """Create or update a mailbox's row in `db`'s transaction (values from `check_mailbox`):
    its holder gets the address listed, a former holder loses it. `backend` or `state`
    None keeps the stored one (a new mailbox: placed by routing, active). `loaded`: the
    existing rows of the addresses a bulk load writes (an address missing there is new),
    so that a load does not ask the database once per mailbox; `holders` the same for
    the people (addresses loaded)."""
    holder = None
    if holder_idnat is not None:
        if holders is not None:
            holder = holders.get(holder_idnat)
        else:
            holder = await db.get(
                DirectoryEntryRow,
                holder_idnat,
                options=[selectinload(DirectoryEntryRow.addresses)],
            )
        if holder is None:
            raise NotFound(f"{holder_idnat} is not in the directory", reason="unknown-holder")
        if address not in {a.address for a in holder.addresses}:
            holder.addresses.append(DirectoryAddressRow(idnat=holder.idnat, address=address))
    if loaded is not None:
        row = loaded.get(address)
    else:
        row = await db.scalar(select(MailboxRow).where(MailboxRow.address == address))
    if row is None:
        row = MailboxRow(address=address, backend=BY_ROUTING, state="active")
        db.add(row)
    elif row.holder_idnat is not None and row.holder_idnat != holder_idnat:
        await db.execute(
            delete(DirectoryAddressRow).where(
                DirectoryAddressRow.idnat == row.holder_idnat,
                DirectoryAddressRow.address == address,
            )
        )
    row.type = type
    row.holder_idnat = holder_idnat
    row.holder = holder
    row.organisation = organisation
    if backend is not None:
        row.backend = backend
    if state is not None:
        row.state = state
    return row


class Mailboxes:
    """Reads and upserts mailboxes."""

    def __init__(self, store: Store) -> None:
        self._store = store

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
        if state not in MAILBOX_STATES:
            raise Invalid(f"state is one of {', '.join(MAILBOX_STATES)}", reason="bad-state")
        if not backend or len(backend) > BACKEND_LENGTH:
            raise Invalid("a backend name of at most 64 characters", reason="bad-backend")
        address, type, holder_idnat, organisation = check_mailbox(
            address, type, holder_idnat, organisation
        )

        async def attempt() -> Mailbox:
            async with self._store.writing() as db:
                row = await write_mailbox(
                    db, address, type, holder_idnat, organisation, backend=backend, state=state
                )
                await db.flush()
                return _mailbox(row)

        return await self._store.retry_on_integrity(attempt)

    async def move_mailbox(self, address: str, backend: str) -> Mailbox:
        """Record that the mailbox now lives on `backend`, and tell every node (a `moved`
        event) so that decisions remembered with the old backend are forgotten."""
        if not backend or len(backend) > BACKEND_LENGTH:
            raise Invalid("a backend name of at most 64 characters", reason="bad-backend")
        address = normal_address(address)
        async with self._store.writing() as db:
            row = await db.scalar(
                select(MailboxRow)
                .options(selectinload(MailboxRow.holder))
                .where(MailboxRow.address == address)
            )
            if row is None:
                raise NotFound(f"{address} is not in the registry", reason="unknown-mailbox")
            row.backend = backend
            await db.flush()
            moved = _mailbox(row)
        await self._store.publish([ChangeEvent("moved", address, "", 0, self._store.now())])
        return moved

    async def placements(self) -> list[tuple[str, str]]:
        """Every mailbox's (address, recorded backend), by address: what a wave of moves
        chooses from."""
        async with self._store.reading() as db:
            rows = await db.execute(
                select(MailboxRow.address, MailboxRow.backend).order_by(MailboxRow.address)
            )
            return [(address, backend) for address, backend in rows]

    async def any_mailbox(self) -> bool:
        """Whether the registry holds at least one mailbox (an empty one serves nobody)."""
        async with self._store.reading() as db:
            return await db.scalar(select(MailboxRow.id).limit(1)) is not None

    async def mailbox(self, address: str) -> Mailbox | None:
        async with self._store.reading() as db:
            row = await db.scalar(
                select(MailboxRow)
                .options(selectinload(MailboxRow.holder))
                .where(MailboxRow.address == address.strip().lower())
            )
            return _mailbox(row) if row else None
