"""Historic ids of a BAL on a modern platform, kept in the gateway's tables (`gateway.db`).

Historic clients keep integer ids: a folder id (the well-known 2, 3, 4, 5, 6 for the
special-use folders, stable integers from 257 for the others, kept across renames) and a
message id, which maps to (folder, UIDVALIDITY, UID) and keeps its value when the message
is moved through the web services (the COPYUID of MOVE says where it went). Message ids
are numbered per BAL, as the historic platform numbers them, so that a BAL leaving it
keeps its ids (`gateway.bal_migration.adopt`); one is never given twice in a BAL, even
after its tombstone is pruned (`next_id`).

syncMessages' token is the BAL's change counter: every message row records the counter's
value when it last changed (first seen, flags seen different, moved, gone). A message
gone stays as a tombstone so that a later sync reports it deleted; past `MAX_TOMBSTONES`
per BAL the oldest are pruned and the `floor` says which tokens can no longer be answered
exactly (the client is then told to start over, as the historic platform does with a
token it does not know).

On a backend with CONDSTORE, each folder row also keeps the (UIDVALIDITY, HIGHESTMODSEQ)
(`Mark`) that the last sync brought the table to, written in the same transaction as
what that sync observed, so that the next one asks the backend only for what changed
since (`modern.ModernBal._catch_up`).

Writes for one BAL are serialised in this process (one lock per BAL); nodes sharing a
PostgreSQL serialise on the counter row's update.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db import historic_folders, historic_messages, historic_sync
from gateway.mss.historic_ws import INVALID_FORMAT, HistoricError

FIRST_USER_FOLDER = 257
MAX_TOMBSTONES = 10_000
MAX_FLAGS_TEXT = 1_000


@dataclass(frozen=True)
class Location:
    """Where a historic message id points: folder path, UIDVALIDITY, UID."""

    folder: str
    uidvalidity: int
    uid: int


@dataclass(frozen=True)
class Mark:
    """A folder's (UIDVALIDITY, HIGHESTMODSEQ) as of the last sync that read it whole."""

    uidvalidity: int
    highestmodseq: int


@dataclass(frozen=True)
class Changes:
    token: int
    modified: dict[int, Location]
    deleted: list[int]


def flags_text(flags: Collection[str]) -> str:
    """A message's flags as one comparable text (sorted, lower case, \\Recent left out)."""
    kept = sorted({f.lower() for f in flags if f.lower() != "\\recent"})
    return " ".join(kept)[:MAX_FLAGS_TEXT]


class HistoricIds:
    """The id tables of every BAL served through the legacy front."""

    def __init__(self, engine: AsyncEngine, *, max_tombstones: int = MAX_TOMBSTONES) -> None:
        self.engine = engine
        self.max_tombstones = max_tombstones
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def of(self, backend: str, bal: str) -> BalIds:
        key = (backend, bal.lower())
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return BalIds(self, key[0], key[1], lock)


class BalIds:
    """The ids of one BAL on one backend."""

    def __init__(self, ids: HistoricIds, backend: str, bal: str, lock: asyncio.Lock) -> None:
        self._ids = ids
        self.backend = backend
        self.bal = bal
        self._lock = lock  # held here: the dictionary of locks only keeps it while in use

    def _mine(self, table: object) -> object:
        return and_(table.c.backend == self.backend, table.c.bal == self.bal)  # type: ignore[attr-defined]

    # -- folders ---------------------------------------------------------------------------

    async def folder_ids(self, folders: Mapping[str, int | None]) -> dict[str, int]:
        """name → historic id for the BAL's folders (`folders`: name → its well-known id,
        or None for a folder that gets a stable id of its own)."""
        async with self._lock, self._ids.engine.begin() as db:
            rows = (
                await db.execute(
                    select(historic_folders.c.name, historic_folders.c.folder_id).where(
                        self._mine(historic_folders)  # type: ignore[arg-type]
                    )
                )
            ).all()
            known = {name: folder_id for name, folder_id in rows}
            used = set(known.values())
            next_id = max([FIRST_USER_FOLDER - 1, *(i for i in used if i >= FIRST_USER_FOLDER)]) + 1
            for name, well_known in folders.items():
                if name in known and (well_known is None or known[name] == well_known):
                    continue
                if name in known:  # a folder that became special-use: its id follows
                    await db.execute(
                        delete(historic_folders).where(
                            self._mine(historic_folders),  # type: ignore[arg-type]
                            historic_folders.c.name == name,
                        )
                    )
                if well_known is not None:
                    folder_id = well_known
                    if folder_id in used:  # another folder held the special use before
                        await db.execute(
                            update(historic_folders)
                            .where(
                                self._mine(historic_folders),  # type: ignore[arg-type]
                                historic_folders.c.folder_id == folder_id,
                            )
                            .values(folder_id=next_id)
                        )
                        next_id += 1
                else:
                    folder_id = next_id
                    next_id += 1
                await db.execute(
                    insert(historic_folders).values(
                        backend=self.backend, bal=self.bal, name=name, folder_id=folder_id
                    )
                )
                known[name] = folder_id
                used.add(folder_id)
        return {name: known[name] for name in folders}

    async def renamed(self, old: str, new: str) -> None:
        """A folder and its sub-folders renamed: their ids (and messages) follow."""
        async with self._lock, self._ids.engine.begin() as db:
            rows = (
                await db.execute(
                    select(historic_folders.c.key, historic_folders.c.name).where(
                        self._mine(historic_folders)  # type: ignore[arg-type]
                    )
                )
            ).all()
            for key, name in rows:
                if name == old or name.startswith(old + "/"):
                    await db.execute(
                        update(historic_folders)
                        .where(historic_folders.c.key == key)
                        .values(name=new + name[len(old) :])
                    )

    async def forget_folders(self, names: Iterable[str]) -> None:
        """Folders deleted: their messages become tombstones, their ids are released."""
        wanted = set(names)
        async with self._lock, self._ids.engine.begin() as db:
            rows = (
                await db.execute(
                    select(historic_folders.c.key, historic_folders.c.name).where(
                        self._mine(historic_folders)  # type: ignore[arg-type]
                    )
                )
            ).all()
            keys = [key for key, name in rows if name in wanted]
            if not keys:
                return
            ids = (
                await db.scalars(
                    select(historic_messages.c.id).where(
                        historic_messages.c.folder.in_(keys), historic_messages.c.gone.is_(False)
                    )
                )
            ).all()
            await self._bury(db, list(ids))
            await db.execute(delete(historic_folders).where(historic_folders.c.key.in_(keys)))

    async def marks(self) -> dict[str, Mark]:
        """Folder name → its `Mark`, for the folders synced with CONDSTORE so far."""
        async with self._ids.engine.connect() as db:
            rows = (
                await db.execute(
                    select(
                        historic_folders.c.name,
                        historic_folders.c.uidvalidity,
                        historic_folders.c.highestmodseq,
                    ).where(
                        self._mine(historic_folders),  # type: ignore[arg-type]
                        historic_folders.c.highestmodseq.is_not(None),
                    )
                )
            ).all()
        return {name: Mark(int(v), int(m)) for name, v, m in rows if v is not None}

    async def _folder_key(self, db: AsyncConnection, name: str) -> int | None:
        found: int | None = await db.scalar(
            select(historic_folders.c.key).where(
                self._mine(historic_folders),  # type: ignore[arg-type]
                historic_folders.c.name == name,
            )
        )
        return found

    # -- messages --------------------------------------------------------------------------

    async def _next(self, db: AsyncConnection, count: int = 1) -> int:
        """Advance the BAL's counter by `count`; the first new value. One UPDATE adds to
        the counter in the database and returns it: two nodes serving the BAL never get
        the same versions (a read then a write would let both read the same value)."""
        if count <= 0:
            return 0
        counter = await self._advance(db, "counter", count)
        if counter is None:  # the BAL's first change
            await db.execute(
                insert(historic_sync).values(
                    backend=self.backend, bal=self.bal, counter=count, floor=0, next_id=1
                )
            )
            return 1
        return int(counter) - count + 1

    async def _new_ids(self, db: AsyncConnection, count: int) -> int:
        """`count` message ids never given in this BAL; the first. Called after `_next`
        in the same transaction (the BAL's row exists)."""
        if count <= 0:
            return 0
        after = await self._advance(db, "next_id", count)
        assert after is not None, "the BAL's counter row comes first"
        return after - count

    async def _advance(self, db: AsyncConnection, column: str, count: int) -> int | None:
        """Add `count` to the BAL's `column` of its sync row in one UPDATE, and return the
        new value (None: the BAL has no row yet)."""
        where = and_(historic_sync.c.backend == self.backend, historic_sync.c.bal == self.bal)
        target = historic_sync.c[column]
        advanced = update(historic_sync).where(where).values({target: target + count})
        value = await db.scalar(advanced.returning(target))
        return None if value is None else int(value)

    async def _rows(self, db: AsyncConnection, ids: Collection[int]) -> list[int]:
        """The row keys of the BAL's message ids `ids` (live or tombstones)."""
        if not ids:
            return []
        found = await db.scalars(
            select(historic_messages.c.id).where(
                self._mine(historic_messages),  # type: ignore[arg-type]
                historic_messages.c.message_id.in_(list(ids)),
            )
        )
        return list(found.all())

    async def observe(
        self,
        folder: str,
        uidvalidity: int,
        seen: Mapping[int, str],
        *,
        complete: bool = False,
        vanished: Container[int] = (),
        present: Container[int] | None = None,
        mark: Mark | None = None,
    ) -> dict[int, int]:
        """UID → historic id for the messages `seen` in `folder` (UID → `flags_text`), new
        ids assigned; a row whose flags differ changes version. Rows of another UIDVALIDITY
        are gone, and so are, with `complete` (`seen` is the whole folder), the rows it
        lacks; otherwise those `vanished`, or not `present` (when given). `mark`: the
        folder's CONDSTORE state this observation brings the tables to, kept with it in
        one transaction (a crash between the two would lose changes)."""
        async with self._lock, self._ids.engine.begin() as db:
            key = await self._folder_key(db, folder)
            if key is None:
                return {}
            if mark is not None:
                await db.execute(
                    update(historic_folders)
                    .where(historic_folders.c.key == key)
                    .values(uidvalidity=mark.uidvalidity, highestmodseq=mark.highestmodseq)
                )
            rows = (
                await db.execute(
                    select(
                        historic_messages.c.id,
                        historic_messages.c.message_id,
                        historic_messages.c.uidvalidity,
                        historic_messages.c.uid,
                        historic_messages.c.flags,
                    ).where(historic_messages.c.folder == key, historic_messages.c.gone.is_(False))
                )
            ).all()
            found: dict[int, int] = {}
            changed: dict[int, int] = {}  # row → UID
            buried: list[int] = []
            for row_id, message_id, validity, uid, flags in rows:
                if validity == uidvalidity and uid in seen:
                    found[uid] = int(message_id)
                    if flags != seen[uid]:
                        changed[row_id] = uid
                elif (
                    complete
                    or validity != uidvalidity
                    or uid in vanished
                    or (present is not None and uid not in present)
                ):
                    buried.append(row_id)
            fresh = [uid for uid in seen if uid not in found]
            await self._bury(db, buried)
            version = await self._next(db, len(changed) + len(fresh))
            for row_id, uid in changed.items():
                await db.execute(
                    update(historic_messages)
                    .where(historic_messages.c.id == row_id)
                    .values(flags=seen[uid], version=version)
                )
                version += 1
            message_id = await self._new_ids(db, len(fresh))
            for uid in sorted(fresh):
                await db.execute(
                    insert(historic_messages).values(
                        backend=self.backend,
                        bal=self.bal,
                        message_id=message_id,
                        folder=key,
                        uidvalidity=uidvalidity,
                        uid=uid,
                        flags=seen[uid],
                        version=version,
                    )
                )
                found[uid] = message_id
                message_id += 1
                version += 1
        return found

    async def locate(self, ids: Collection[int]) -> dict[int, Location]:
        """Where each live id is (ids unknown, gone or of another BAL are left out)."""
        if not ids:
            return {}
        async with self._ids.engine.connect() as db:
            rows = (
                await db.execute(
                    select(
                        historic_messages.c.message_id,
                        historic_folders.c.name,
                        historic_messages.c.uidvalidity,
                        historic_messages.c.uid,
                    )
                    .join(historic_folders, historic_folders.c.key == historic_messages.c.folder)
                    .where(
                        self._mine(historic_messages),  # type: ignore[arg-type]
                        historic_messages.c.message_id.in_(list(ids)),
                        historic_messages.c.gone.is_(False),
                    )
                )
            ).all()
        return {int(i): Location(name, validity, uid) for i, name, validity, uid in rows}

    async def moved(self, moves: Mapping[int, Location]) -> None:
        """Messages moved through the web services: they keep their ids at their new place."""
        async with self._lock, self._ids.engine.begin() as db:
            version = await self._next(db, len(moves))
            for message_id, where in moves.items():
                row_id = next(iter(await self._rows(db, [message_id])), None)
                if row_id is None:
                    continue
                key = await self._folder_key(db, where.folder)
                if key is None:
                    await self._bury(db, [row_id])
                    continue
                # a row already made for the new place (a search between MOVE and now)
                await db.execute(
                    delete(historic_messages).where(
                        historic_messages.c.folder == key,
                        historic_messages.c.uidvalidity == where.uidvalidity,
                        historic_messages.c.uid == where.uid,
                        historic_messages.c.id != row_id,
                    )
                )
                await db.execute(
                    update(historic_messages)
                    .where(historic_messages.c.id == row_id)
                    .values(
                        folder=key, uidvalidity=where.uidvalidity, uid=where.uid, version=version
                    )
                )
                version += 1

    async def touched(self, ids: Collection[int]) -> None:
        """Messages whose flags the gateway just changed: a new version for sync."""
        async with self._lock, self._ids.engine.begin() as db:
            rows = await self._rows(db, ids)
            version = await self._next(db, len(rows))
            for row_id in sorted(rows):
                await db.execute(
                    update(historic_messages)
                    .where(historic_messages.c.id == row_id)
                    .values(version=version, flags="?")  # compared anew at the next look
                )
                version += 1

    async def gone(self, ids: Collection[int]) -> None:
        async with self._lock, self._ids.engine.begin() as db:
            await self._bury(db, await self._rows(db, ids))

    async def _bury(self, db: AsyncConnection, ids: list[int]) -> None:
        """Make the rows `ids` tombstones with new versions; prune the oldest past the cap."""
        if not ids:
            return
        version = await self._next(db, len(ids))
        for row_id in ids:
            await db.execute(
                update(historic_messages)
                .where(historic_messages.c.id == row_id)
                .values(gone=True, folder=None, version=version)
            )
            version += 1
        mine = and_(self._mine(historic_messages), historic_messages.c.gone.is_(True))  # type: ignore[arg-type]
        count = await db.scalar(select(func.count()).select_from(historic_messages).where(mine))
        excess = int(count or 0) - self._ids.max_tombstones
        if excess > 0:
            oldest = (
                await db.execute(
                    select(historic_messages.c.id, historic_messages.c.version)
                    .where(mine)
                    .order_by(historic_messages.c.version)
                    .limit(excess)
                )
            ).all()
            await db.execute(
                delete(historic_messages).where(historic_messages.c.id.in_([i for i, _ in oldest]))
            )
            await db.execute(
                update(historic_sync)
                .where(historic_sync.c.backend == self.backend, historic_sync.c.bal == self.bal)
                .values(floor=max(v for _, v in oldest))
            )

    async def changes_since(self, token: int | None) -> Changes:
        """What changed after `token` (None: every live message), and the next token."""
        async with self._ids.engine.connect() as db:
            state = (
                await db.execute(
                    select(historic_sync.c.counter, historic_sync.c.floor).where(
                        historic_sync.c.backend == self.backend, historic_sync.c.bal == self.bal
                    )
                )
            ).first()
            counter, floor = (int(state[0]), int(state[1])) if state else (0, 0)
            if token is not None and (token > counter or token < floor):
                raise HistoricError(INVALID_FORMAT, "jeton de synchronisation inconnu")
            query = (
                select(
                    historic_messages.c.message_id,
                    historic_messages.c.gone,
                    historic_folders.c.name,
                    historic_messages.c.uidvalidity,
                    historic_messages.c.uid,
                )
                .outerjoin(historic_folders, historic_folders.c.key == historic_messages.c.folder)
                .where(self._mine(historic_messages))  # type: ignore[arg-type]
                .order_by(historic_messages.c.version)
            )
            if token is None:
                query = query.where(historic_messages.c.gone.is_(False))
            else:
                query = query.where(historic_messages.c.version > token)
            rows = (await db.execute(query)).all()
        modified: dict[int, Location] = {}
        deleted: list[int] = []
        for message_id, gone, name, validity, uid in rows:
            if gone or name is None:
                deleted.append(int(message_id))
            else:
                modified[int(message_id)] = Location(name, validity, uid)
        return Changes(counter, modified, deleted)
