"""The directory of people: who can hold a BAL or receive a delegation, and how to find them.

Search must find "Hélène D'Œuf" when typed "helene doeuf" on SQLite and PostgreSQL alike,
without a database extension: each entry stores a folded `search_key` (lower case, no
accents, punctuation as spaces) written on every upsert, and a query matches when each of
its folded words is contained in the key.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from delegation.errors import Invalid
from delegation.models import NAME_LENGTH, DirectoryAddressRow, DirectoryEntryRow
from delegation.parsing import normal_address, parse_idnat
from delegation.store import Store

MIN_QUERY = 3
MAX_QUERY = 256  # the historic web services' search string limit
MAX_LIMIT = 500
_LIGATURES = str.maketrans({"œ": "oe", "æ": "ae", "ø": "o", "đ": "d", "ł": "l", "ß": "ss"})


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


def fold(text: str) -> str:
    """Lower-case, accent-free, punctuation as single spaces: "Hélène D'Œuf" → "helene d oeuf"."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[\W_]+", " ", bare.casefold().translate(_LIGATURES)).split())


def _search_key(entry: DirectoryEntryRow) -> str:
    return f"{fold(entry.family_name)} {fold(entry.given_name)} {entry.idnat}"


def check_person(
    idnat: str, given_name: str, family_name: str, profession: str | None
) -> tuple[str, str, str, str | None]:
    """A person's fields checked and made canonical (`Invalid` with a stable reason)."""
    idnat = parse_idnat(idnat)
    given_name, family_name = given_name.strip(), family_name.strip()
    if not family_name or len(given_name) > NAME_LENGTH or len(family_name) > NAME_LENGTH:
        raise Invalid("a family name of at most 128 characters is needed", reason="bad-name")
    if profession is not None and not (0 < len(profession) <= 8):
        raise Invalid("bad profession code", reason="bad-profession")
    return idnat, given_name, family_name, profession


async def write_entry(
    db: AsyncSession,
    idnat: str,
    given_name: str,
    family_name: str,
    profession: str | None,
    *,
    ecps_only: bool | None = None,
    loaded: Mapping[str, DirectoryEntryRow] | None = None,
) -> DirectoryEntryRow:
    """Create or update a person's row in `db`'s transaction (checked values); its
    addresses loaded. `ecps_only` None keeps the stored flag (False for a new person).
    `loaded`: the existing rows (addresses loaded) of the people a bulk load writes (an
    idNat missing there is new), so that a load does not ask once per person."""
    if loaded is not None:
        row = loaded.get(idnat)
    else:
        row = await db.get(
            DirectoryEntryRow, idnat, options=[selectinload(DirectoryEntryRow.addresses)]
        )
    if row is None:
        row = DirectoryEntryRow(idnat=idnat, addresses=[], ecps_only=False)
        db.add(row)
    row.given_name = given_name
    row.family_name = family_name
    row.profession = profession
    if ecps_only is not None:
        row.ecps_only = ecps_only
    row.search_key = _search_key(row)
    return row


def _entry(row: DirectoryEntryRow) -> DirectoryEntry:
    return DirectoryEntry(
        idnat=row.idnat,
        given_name=row.given_name,
        family_name=row.family_name,
        profession=row.profession,
        ecps_only=row.ecps_only,
        addresses=tuple(a.address for a in row.addresses),
    )


class Directory:
    """Searches, reads and upserts directory entries."""

    def __init__(self, store: Store) -> None:
        self._store = store

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
        async with self._store.reading() as db:
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
        async with self._store.reading() as db:
            row = await db.get(
                DirectoryEntryRow, idnat, options=[selectinload(DirectoryEntryRow.addresses)]
            )
            return _entry(row) if row else None

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
        idnat, given_name, family_name, profession = check_person(
            idnat, given_name, family_name, profession
        )
        wanted = None if addresses is None else sorted({normal_address(a) for a in addresses})

        async def attempt() -> DirectoryEntry:
            async with self._store.writing() as db:
                row = await write_entry(
                    db, idnat, given_name, family_name, profession, ecps_only=ecps_only
                )
                if wanted is not None:
                    current = {a.address: a for a in row.addresses}
                    row.addresses = [
                        current.get(a) or DirectoryAddressRow(idnat=idnat, address=a)
                        for a in wanted
                    ]
                await db.flush()
                return _entry(row)

        return await self._store.retry_on_integrity(attempt)
