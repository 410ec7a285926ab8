"""IMAP UIDs for the historic platform's messages, persisted in the gateway's database.

The historic services name a message by its ``messageId``; IMAP needs, per folder, a
UIDVALIDITY and strictly ascending UIDs that survive restarts (clients cache by UID).
Per (backend, BAL, historic folder id) the gateway keeps a random non-zero 32-bit
UIDVALIDITY, fixed when the folder is first seen, and UIDNEXT; per message in it, the UID
(unique both ways). A message moved away is forgotten; if it comes back it is a new
message there and gets a new UID, as on any IMAP server. UIDNEXT never goes back.

Beside each UID: the `content_key` of the message it stands for (a draft replaced through
``draftMessage`` keeps its messageId but changes: it must get a new UID, since an IMAP
message never changes under its UID), and the ``\\Deleted`` mark, which the historic
services cannot hold; kept here, it survives restarts and is shared by every node. So are
the other flags the services cannot hold (keywords, ``\\Answered``, ``\\Draft``): one row
each beside the UID, deleted with it, so that a message gone, moved away or expunged
forgets them (`change_flags`).

`assign` is atomic and safe with concurrent callers (several sessions of one BAL, several
gateway nodes): its transaction takes the folder's write lock first (an insert on SQLite,
which then serialises writers; ``SELECT ... FOR UPDATE`` of the folder row on PostgreSQL)
before it reads UIDNEXT. `change_flags` takes the same lock, so that its bounds on
keywords hold whatever other sessions and nodes write at once. The tables are created by
`gateway.db.migrate_gateway`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, Table, delete, func, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db import (
    ADDRESS_LENGTH,
    BACKEND_LENGTH,
    FLAG_LENGTH,
    HISTORIC_ID_LENGTH,
    legacy_flags,
    legacy_folders,
    legacy_uids,
)

MAX_IDS = 200_000  # per call: a folder larger than this is refused upstream anyway
_CHUNK = 500  # ids per IN (...) clause, well under every backend's parameter limit
MAX_UID = 2**32 - 1
DELETED = "\\Deleted"
SYSTEM_KEPT = ("\\Answered", "\\Draft")  # the system flags among the kept flags

FolderKey = tuple[str, str, int]


@dataclass(frozen=True)
class Entry:
    """What the gateway holds about one historic message of a folder."""

    uid: int
    content_key: str | None  # None: not recorded yet (rows from before gw0002)
    deleted: bool
    flags: frozenset[str] = frozenset()  # kept flags: keywords, \\Answered, \\Draft


@dataclass(frozen=True)
class FlagChange:
    """What becomes of the kept flags of one message: `add` and `remove` (compared without
    regard to case, as IMAP compares flags), or, with `replace`, exactly `add`."""

    add: frozenset[str] = frozenset()
    remove: frozenset[str] = frozenset()
    replace: bool = False


class TooManyKeywords(ValueError):
    """A change would leave a message, or a folder, with more keywords than allowed."""


def mark(message_id: str, flag: str) -> str:
    """One mark (``\\Deleted`` or a kept flag) of one message as one string, for comparing
    sets of marks (flags hold no space, so the last space separates the two)."""
    return f"{message_id} {flag}"


def mark_owner(value: str) -> str:
    """The messageId of a `mark`."""
    return value.rpartition(" ")[0]


class UidMap:
    """messageId ↔ UID per historic folder, over `engine` (the registry's database)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def folder(self, backend: str, bal: str, folder_id: int) -> tuple[int, int]:
        """(UIDVALIDITY, UIDNEXT) of the folder, created at first sight."""
        key = _key(backend, bal, folder_id)
        async with self._engine.connect() as connection:
            row = await _folder_row(connection, key)
        if row is not None:
            return row[1], row[2]
        async with self._engine.begin() as connection:
            await _create_folder(connection, key)
            row = await _folder_row(connection, key)
        assert row is not None
        return row[1], row[2]

    async def assign(
        self,
        backend: str,
        bal: str,
        folder_id: int,
        message_ids: Sequence[str],
        keys: Mapping[str, str] | None = None,
    ) -> dict[str, int]:
        """The UID of each of `message_ids`: kept if it has one, otherwise the next ones,
        ascending in the order given, recorded with their content key from `keys`.
        Atomic: concurrent callers never share a UID."""
        key = _key(backend, bal, folder_id)
        wanted = _ids(message_ids)
        if not wanted:
            await self.folder(backend, bal, folder_id)
            return {}
        async with self._engine.connect() as connection:  # the usual case: all known
            row = await _folder_row(connection, key)
            known = await _known(connection, row[0], wanted) if row is not None else {}
        if len(known) == len(wanted):
            return {message_id: known[message_id] for message_id in wanted}

        async with self._engine.begin() as connection:
            await _create_folder(connection, key)  # a write first: SQLite's write lock
            row = await _folder_row(connection, key, lock=True)
            assert row is not None
            folder, _, uidnext = row
            known = await _known(connection, folder, wanted)
            new = [message_id for message_id in wanted if message_id not in known]
            if uidnext + len(new) > MAX_UID:
                raise OverflowError("UIDs exhausted in this folder: a new UIDVALIDITY is needed")
            fresh = {message_id: uidnext + index for index, message_id in enumerate(new)}
            rows = [
                {
                    "folder": folder,
                    "message_id": m,
                    "uid": uid,
                    "content_key": _content_key((keys or {}).get(m)),
                }
                for m, uid in fresh.items()
            ]
            for start in range(0, len(rows), _CHUNK):
                await connection.execute(legacy_uids.insert(), rows[start : start + _CHUNK])
            await connection.execute(
                legacy_folders.update()
                .where(legacy_folders.c.id == folder)
                .values(uidnext=uidnext + len(new))
            )
        known.update(fresh)
        return {message_id: known[message_id] for message_id in wanted}

    async def forget(
        self, backend: str, bal: str, folder_id: int, message_ids: Sequence[str]
    ) -> None:
        """Drop the UIDs of messages gone from the folder (moved away, deleted)."""
        await self._each(backend, bal, folder_id, message_ids, lambda rows: delete(rows))

    async def forget_uids(
        self, backend: str, bal: str, folder_id: int, uids: Mapping[str, int]
    ) -> None:
        """Drop these messageId → UID mappings, each only if it still holds that UID (a
        mapping given again meanwhile, by another session or node, stays)."""
        _ids(list(uids))
        key = _key(backend, bal, folder_id)
        async with self._engine.begin() as connection:
            row = await _folder_row(connection, key)
            if row is None:
                return
            for message_id, uid in uids.items():
                await connection.execute(
                    delete(legacy_uids).where(
                        legacy_uids.c.folder == row[0],
                        legacy_uids.c.message_id == message_id,
                        legacy_uids.c.uid == uid,
                    )
                )

    async def uids(self, backend: str, bal: str, folder_id: int) -> dict[str, int]:
        """Every mapping of the folder, by ascending UID."""
        entries = await self.entries(backend, bal, folder_id)
        return {message_id: entry.uid for message_id, entry in entries.items()}

    async def entries(self, backend: str, bal: str, folder_id: int) -> dict[str, Entry]:
        """Every message the folder holds for the gateway, by ascending UID."""
        key = _key(backend, bal, folder_id)
        c = legacy_uids.c
        query = (
            select(c.message_id, c.uid, c.content_key, c.deleted)
            .join(legacy_folders, legacy_folders.c.id == c.folder)
            .where(*_matches(key))
            .order_by(c.uid)
        )
        async with self._engine.connect() as connection:
            rows = list(await connection.execute(query))
            kept = await _kept_flags(connection, key)
        return {
            m: Entry(uid, content, bool(deleted), frozenset(kept.get(m, ())))
            for m, uid, content, deleted in rows
        }

    async def marks(self, backend: str, bal: str, folder_id: int) -> frozenset[str]:
        """Every mark the gateway holds in the folder (``\\Deleted`` and kept flags) as
        `mark` strings: what a BAL's watch compares to hear of another node's changes."""
        deleted = await self.deleted_ids(backend, bal, folder_id)
        async with self._engine.connect() as connection:
            kept = await _kept_flags(connection, _key(backend, bal, folder_id))
        marks = {mark(m, DELETED) for m in deleted}
        marks.update(mark(m, flag) for m, flags in kept.items() for flag in flags)
        return frozenset(marks)

    async def deleted_ids(self, backend: str, bal: str, folder_id: int) -> frozenset[str]:
        """The messages of the folder with the gateway's ``\\Deleted`` mark."""
        key = _key(backend, bal, folder_id)
        c = legacy_uids.c
        query = (
            select(c.message_id)
            .join(legacy_folders, legacy_folders.c.id == c.folder)
            .where(*_matches(key), c.deleted.is_(True))
        )
        async with self._engine.connect() as connection:
            return frozenset((await connection.scalars(query)).all())

    async def set_keys(
        self, backend: str, bal: str, folder_id: int, keys: Mapping[str, str]
    ) -> None:
        """Record the content keys of messages whose UID has none yet."""
        by_key: dict[str, list[str]] = {}
        for message_id, content in keys.items():
            by_key.setdefault(content, []).append(message_id)
        for content, message_ids in by_key.items():
            await self._update(
                backend, bal, folder_id, message_ids, content_key=_content_key(content)
            )

    async def mark_deleted(
        self, backend: str, bal: str, folder_id: int, message_ids: Sequence[str], *, deleted: bool
    ) -> None:
        """Set or clear the gateway's ``\\Deleted`` mark."""
        await self._update(backend, bal, folder_id, message_ids, deleted=deleted)

    async def change_flags(
        self,
        backend: str,
        bal: str,
        folder_id: int,
        changes: Mapping[str, FlagChange],
        *,
        per_message: int | None = None,
        per_folder: int | None = None,
    ) -> dict[str, frozenset[str]]:
        """Apply `changes` (messageId → change) to the kept flags, in one transaction under
        the folder's lock; returns the kept flags of those messages that have a UID here
        (others, gone meanwhile, are left alone), with what other sessions and nodes set.
        Raises `TooManyKeywords`, writing nothing, if a message would have more than
        `per_message` keywords or the folder more than `per_folder` distinct ones."""
        wanted = _ids(list(changes))
        for change in changes.values():
            _flags(change.add | change.remove)
        key = _key(backend, bal, folder_id)
        try:
            return await self._change_flags(key, wanted, changes, per_message, per_folder)
        except IntegrityError:
            # a message forgotten (expunged elsewhere) between the read and the insert:
            # the second attempt no longer finds it
            return await self._change_flags(key, wanted, changes, per_message, per_folder)

    async def _change_flags(
        self,
        key: FolderKey,
        message_ids: list[str],
        changes: Mapping[str, FlagChange],
        per_message: int | None,
        per_folder: int | None,
    ) -> dict[str, frozenset[str]]:
        async with self._engine.begin() as connection:
            row = await _folder_row(connection, key, lock=True)
            if row is None:
                return {}
            await _change_flags(connection, row[0], changes, per_message, per_folder)
            return await _flags_of(connection, row[0], message_ids)

    async def forget_folder(self, backend: str, bal: str, folder_id: int) -> None:
        """Drop a folder deleted on the historic side; recreated, it gets a new UIDVALIDITY."""
        async with self._engine.begin() as connection:
            await connection.execute(
                delete(legacy_folders).where(*_matches(_key(backend, bal, folder_id)))
            )

    async def _update(
        self, backend: str, bal: str, folder_id: int, message_ids: Sequence[str], **values: Any
    ) -> None:
        await self._each(
            backend, bal, folder_id, message_ids, lambda rows: rows.update().values(**values)
        )

    async def _each(
        self,
        backend: str,
        bal: str,
        folder_id: int,
        message_ids: Sequence[str],
        statement: Callable[[Table], Any],
    ) -> None:
        """Run `statement` (an UPDATE or DELETE of the UID table) on those messages of the
        folder, in chunks, in one transaction."""
        wanted = _ids(message_ids)
        if not wanted:
            return
        key = _key(backend, bal, folder_id)
        async with self._engine.begin() as connection:
            row = await _folder_row(connection, key)
            if row is None:
                return
            for chunk in _chunks(wanted):
                await connection.execute(
                    statement(legacy_uids).where(
                        legacy_uids.c.folder == row[0], legacy_uids.c.message_id.in_(chunk)
                    )
                )


def _key(backend: str, bal: str, folder_id: int) -> FolderKey:
    if not 0 < len(backend) <= BACKEND_LENGTH:
        raise ValueError("backend name: 1 to 64 characters")
    if not 0 < len(bal) <= ADDRESS_LENGTH:
        raise ValueError("BAL: 1 to 255 characters")
    if isinstance(folder_id, bool) or not isinstance(folder_id, int) or not 0 <= folder_id < 2**62:
        raise ValueError("historic folder id: a non-negative integer")
    return backend, bal.lower(), folder_id


def _content_key(value: str | None) -> str | None:
    if value is not None and not 0 < len(value) <= 64:
        raise ValueError("content key: 1 to 64 characters")
    return value


def _ids(message_ids: Sequence[str]) -> list[str]:
    if isinstance(message_ids, str):
        raise TypeError("message_ids: a sequence of ids, not one string")
    if len(message_ids) > MAX_IDS:
        raise ValueError(f"more than {MAX_IDS} message ids in one call")
    for message_id in message_ids:
        if not isinstance(message_id, str) or not 0 < len(message_id) <= HISTORIC_ID_LENGTH:
            raise ValueError(f"invalid historic message id: {message_id!r}")
    return list(dict.fromkeys(message_ids))


def _flags(flags: Collection[str]) -> None:
    for flag in flags:
        if not isinstance(flag, str) or not 0 < len(flag.encode()) <= FLAG_LENGTH or " " in flag:
            raise ValueError(f"invalid flag: {flag!r}")
        if flag.startswith("\\") and flag not in SYSTEM_KEPT:
            raise ValueError(f"not a flag kept here: {flag!r}")


def _chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _matches(key: FolderKey) -> list[Any]:
    backend, bal, folder_id = key
    return [
        legacy_folders.c.backend == backend,
        legacy_folders.c.bal == bal,
        legacy_folders.c.folder_id == folder_id,
    ]


async def _folder_row(
    connection: AsyncConnection, key: FolderKey, *, lock: bool = False
) -> tuple[int, int, int] | None:
    """(row id, UIDVALIDITY, UIDNEXT); with `lock`, the row locked until commit (PostgreSQL)."""
    query = select(
        legacy_folders.c.id, legacy_folders.c.uidvalidity, legacy_folders.c.uidnext
    ).where(*_matches(key))
    if lock:
        query = query.with_for_update()
    row = (await connection.execute(query)).first()
    return (row[0], row[1], row[2]) if row is not None else None


async def _create_folder(connection: AsyncConnection, key: FolderKey) -> None:
    """Insert the folder unless it exists (the first writer's UIDVALIDITY wins)."""
    backend, bal, folder_id = key
    values = {
        "backend": backend,
        "bal": bal,
        "folder_id": folder_id,
        "uidvalidity": secrets.randbelow(MAX_UID) + 1,
        "uidnext": 1,
    }
    columns = ["backend", "bal", "folder_id"]
    if connection.dialect.name == "postgresql":
        statement: Any = pg_insert(legacy_folders).values(values)
    else:
        statement = sqlite_insert(legacy_folders).values(values)
    await connection.execute(statement.on_conflict_do_nothing(index_elements=columns))


async def _known(connection: AsyncConnection, folder: int, wanted: list[str]) -> dict[str, int]:
    known: dict[str, int] = {}
    for chunk in _chunks(wanted):
        result = await connection.execute(
            select(legacy_uids.c.message_id, legacy_uids.c.uid).where(
                legacy_uids.c.folder == folder, legacy_uids.c.message_id.in_(chunk)
            )
        )
        known.update((message_id, uid) for message_id, uid in result)
    return known


async def _kept_flags(connection: AsyncConnection, key: FolderKey) -> dict[str, list[str]]:
    f = legacy_flags.c
    query = (
        select(f.message_id, f.flag)
        .join(legacy_folders, legacy_folders.c.id == f.folder)
        .where(*_matches(key))
    )
    kept: dict[str, list[str]] = {}
    for message_id, flag in await connection.execute(query):
        kept.setdefault(message_id, []).append(flag)
    return kept


async def _flags_of(
    connection: AsyncConnection, folder: int, message_ids: list[str]
) -> dict[str, frozenset[str]]:
    """The kept flags of those of `message_ids` that have a UID in the folder."""
    found: dict[str, set[str]] = {}
    u, f = legacy_uids.c, legacy_flags.c
    for chunk in _chunks(message_ids):
        rows = await connection.execute(
            select(u.message_id, f.flag)
            .outerjoin(legacy_flags, (f.folder == u.folder) & (f.message_id == u.message_id))
            .where(u.folder == folder, u.message_id.in_(chunk))
        )
        for message_id, flag in rows:
            flags = found.setdefault(message_id, set())
            if flag is not None:
                flags.add(flag)
    return {message_id: frozenset(flags) for message_id, flags in found.items()}


def _has_flag(folder: Any, message_id: Any, flag: Any) -> Any:
    """EXISTS a kept flag of that message equal to `flag` but for case."""
    other = legacy_flags.alias("other")
    return (
        select(literal(1))
        .where(
            other.c.folder == folder,
            other.c.message_id == message_id,
            func.lower(other.c.flag) == func.lower(flag),
        )
        .exists()
    )


async def _change_flags(
    connection: AsyncConnection,
    folder: int,
    changes: Mapping[str, FlagChange],
    per_message: int | None,
    per_folder: int | None,
) -> None:
    """`UidMap.change_flags` within its transaction: additions first (each only where the
    message has a UID and not the flag yet, whatever its case), then removals, then the
    bounds, checked on what the table now holds."""
    additions: dict[str, list[str]] = {}
    removals: dict[tuple[bool, frozenset[str]], list[str]] = {}
    for message_id, change in changes.items():
        for flag in change.add:
            additions.setdefault(flag, []).append(message_id)
        if change.replace:
            kept = frozenset(f.lower() for f in change.add)
            removals.setdefault((True, kept), []).append(message_id)
        elif change.remove:
            gone = frozenset(f.lower() for f in change.remove)
            removals.setdefault((False, gone), []).append(message_id)
    f, u = legacy_flags.c, legacy_uids.c
    for flag, message_ids in additions.items():
        for chunk in _chunks(message_ids):
            query = select(u.folder, u.message_id, literal(flag, String)).where(
                u.folder == folder,
                u.message_id.in_(chunk),
                ~_has_flag(u.folder, u.message_id, literal(flag, String)),
            )
            await connection.execute(
                legacy_flags.insert().from_select(["folder", "message_id", "flag"], query)
            )
    for (keep, lowered), message_ids in removals.items():
        for chunk in _chunks(message_ids):
            where = [f.folder == folder, f.message_id.in_(chunk)]
            if keep:
                if lowered:
                    where.append(func.lower(f.flag).not_in(lowered))
            else:
                where.append(func.lower(f.flag).in_(lowered))
            await connection.execute(delete(legacy_flags).where(*where))
    if not additions:
        return
    keywords = [f.folder == folder, f.flag.not_in(SYSTEM_KEPT)]
    if per_message is not None:
        grown = list(dict.fromkeys(m for ids in additions.values() for m in ids))
        for chunk in _chunks(grown):
            crowded = await connection.execute(
                select(f.message_id)
                .where(*keywords, f.message_id.in_(chunk))
                .group_by(f.message_id)
                .having(func.count() > per_message)
                .limit(1)
            )
            if crowded.first() is not None:
                raise TooManyKeywords(f"more than {per_message} keywords on one message")
    if per_folder is not None:
        distinct = select(func.count(func.distinct(func.lower(f.flag)))).where(*keywords)
        if (await connection.scalar(distinct) or 0) > per_folder:
            raise TooManyKeywords(f"more than {per_folder} keywords in one folder")
