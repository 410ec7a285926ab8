"""The checkpoints of BAL copies, in the gateway's tables (gw0006): per (BAL, source
backend, target backend) a copy record, per source folder (and UIDVALIDITY) its target
folder, per source message its copy's target UID.

What makes a copy resumable after ``kill -9`` anywhere: an intent row (digest, source UID,
target UID unknown) is committed before each APPEND and completed after it, so a lost
completion is found again by `plan.diff` in the target's listing, and adopted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.bal_migration.plan import Copied
from gateway.db import ERROR_LENGTH, migration_copies, migration_folders, migration_messages

STATES = (
    "planned",
    "copying",
    "copied",
    "failed",
    "verified",
    "different",
    "cut over",  # the BAL lives on the target now; the trailing sync goes on
    "finished",  # the trailing sync is closed
    "rolled back",  # the BAL went back to the source
)


P = ParamSpec("P")
T = TypeVar("T")


def whole(write: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """A write transaction that a cancelled copy lets end (commit or roll back) before the
    cancellation goes on: cut in the middle of a statement, it would leave SQLite's write
    lock with a connection nobody closes, and every writer after it (the copy's own
    "interrupted" record first) would wait for it in vain."""

    @functools.wraps(write)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.ensure_future(write(*args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # seen: the cancellation is what goes on
            raise

    return run


def _flags_text(flags: Iterable[str]) -> str:
    return " ".join(sorted(flags))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class CopyRecord:
    """A copy as `status` shows it."""

    bal: str
    source: str
    target: str
    state: str
    messages: int
    bytes: int
    flag_changes: int
    deletions: int
    last_error: str | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    verified_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class FolderKey:
    key: int
    name: str
    uidvalidity: int
    target: str


class Checkpoints:
    """The copy records of one gateway database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @whole
    async def journal(self, bal: str, source: str, target: str) -> Journal:
        """The journal of copying `bal` from `source` to `target` (created if new)."""
        bal = bal.lower()
        for _ in range(2):  # two nodes creating it at once: the loser reads the winner's
            async with self.engine.begin() as db:
                found = await db.scalar(
                    select(migration_copies.c.id).where(
                        migration_copies.c.bal == bal,
                        migration_copies.c.source == source,
                        migration_copies.c.target == target,
                    )
                )
                if found is not None:
                    return Journal(self.engine, found)
                try:
                    created = await db.execute(
                        insert(migration_copies).values(
                            bal=bal, source=source, target=target, state="planned"
                        )
                    )
                except IntegrityError:
                    continue
                key = created.inserted_primary_key
                assert key is not None
                return Journal(self.engine, int(key[0]))
        raise RuntimeError("copy record neither found nor created")  # pragma: no cover

    async def in_state(self, state: str) -> list[CopyRecord]:
        """The copy records in `state` (the cut-overs whose trailing sync goes on)."""
        async with self.engine.connect() as db:
            rows = (
                (
                    await db.execute(
                        select(migration_copies).where(migration_copies.c.state == state)
                    )
                )
                .mappings()
                .all()
            )
        return [CopyRecord(**{k: v for k, v in row.items() if k != "id"}) for row in rows]

    async def records(self, bal: str | None = None) -> list[CopyRecord]:
        """Every copy record (of `bal`), by BAL, source, target."""
        query = select(migration_copies).order_by(
            migration_copies.c.bal, migration_copies.c.source, migration_copies.c.target
        )
        if bal is not None:
            query = query.where(migration_copies.c.bal == bal.lower())
        async with self.engine.connect() as db:
            rows = (await db.execute(query)).mappings().all()
        return [CopyRecord(**{k: v for k, v in row.items() if k != "id"}) for row in rows]


class Journal:
    """The checkpoints of one copy (one BAL, source, target). Every method commits."""

    def __init__(self, engine: AsyncEngine, copy: int) -> None:
        self.engine = engine
        self.copy = copy

    async def record(self) -> CopyRecord:
        async with self.engine.connect() as db:
            row = (
                (
                    await db.execute(
                        select(migration_copies).where(migration_copies.c.id == self.copy)
                    )
                )
                .mappings()
                .one()
            )
        return CopyRecord(**{k: v for k, v in row.items() if k != "id"})

    @whole
    async def set_state(self, state: str, *, error: str | None = None) -> None:
        """Move to `state`; "copying" stamps the start and clears the last error, "copied"
        and "failed" the end, "verified" the verification."""
        assert state in STATES
        values: dict[str, object] = {"state": state}
        if state == "copying":
            values |= {"started_at": _now(), "finished_at": None, "last_error": None}
        elif state in ("copied", "failed"):
            values["finished_at"] = _now()
        elif state == "verified":
            values["verified_at"] = _now()
        if error is not None:
            values["last_error"] = error[:ERROR_LENGTH]
        async with self.engine.begin() as db:
            await db.execute(
                update(migration_copies).where(migration_copies.c.id == self.copy).values(**values)
            )

    @whole
    async def seed_from(self, other: Journal, uidvalidity: dict[str, int]) -> int:
        """Make this journal the mirror of `other`, the copy in the other direction: each of
        its copies (source UID → target UID) becomes one here (target UID → source UID) in
        the target folder, as of that folder's `uidvalidity` on this journal's source. So a
        copy back carries only what changed since (a rollback), and a copy forth after a
        rollback duplicates nothing. Returns how many copies it holds."""
        pairs: list[tuple[FolderKey, dict[int, Copied]]] = [
            (folder, await other.copied(folder)) for folder in await other.folders()
        ]
        count = 0
        async with self.engine.begin() as db:
            keys = select(migration_folders.c.key).where(migration_folders.c.copy == self.copy)
            await db.execute(
                delete(migration_messages).where(migration_messages.c.folder.in_(keys))
            )
            await db.execute(delete(migration_folders).where(migration_folders.c.copy == self.copy))
            for folder, copied in pairs:
                if folder.target not in uidvalidity:
                    continue  # gone from this side: nothing of it to mirror
                created = await db.execute(
                    insert(migration_folders).values(
                        copy=self.copy,
                        name=folder.target,
                        uidvalidity=uidvalidity[folder.target],
                        target=folder.name,
                    )
                )
                key = created.inserted_primary_key
                assert key is not None
                rows = [
                    {
                        "folder": int(key[0]),
                        "source_uid": entry.target_uid,
                        "digest": entry.digest,
                        "target_uid": entry.source_uid,
                        "flags": _flags_text(entry.flags),
                        "floor": 0,
                    }
                    for entry in copied.values()
                    if entry.target_uid is not None
                ]
                if rows:
                    await db.execute(insert(migration_messages), rows)
                count += len(rows)
        return count

    async def folders(self) -> list[FolderKey]:
        async with self.engine.connect() as db:
            rows = await db.execute(
                select(
                    migration_folders.c.key,
                    migration_folders.c.name,
                    migration_folders.c.uidvalidity,
                    migration_folders.c.target,
                ).where(migration_folders.c.copy == self.copy)
            )
            return [FolderKey(*row) for row in rows]

    @whole
    async def folder(self, name: str, uidvalidity: int, target: str) -> FolderKey:
        """The row of source folder `name` as of `uidvalidity` (created if new)."""
        for known in await self.folders():
            if known.name == name and known.uidvalidity == uidvalidity:
                return known
        async with self.engine.begin() as db:
            created = await db.execute(
                insert(migration_folders).values(
                    copy=self.copy, name=name, uidvalidity=uidvalidity, target=target
                )
            )
            key = created.inserted_primary_key
            assert key is not None
            return FolderKey(int(key[0]), name, uidvalidity, target)

    @whole
    async def drop_folder(self, folder: FolderKey) -> None:
        async with self.engine.begin() as db:
            await db.execute(
                delete(migration_messages).where(migration_messages.c.folder == folder.key)
            )
            await db.execute(delete(migration_folders).where(migration_folders.c.key == folder.key))

    async def copied(self, folder: FolderKey) -> dict[int, Copied]:
        async with self.engine.connect() as db:
            rows = await db.execute(
                select(
                    migration_messages.c.source_uid,
                    migration_messages.c.digest,
                    migration_messages.c.target_uid,
                    migration_messages.c.flags,
                    migration_messages.c.floor,
                ).where(migration_messages.c.folder == folder.key)
            )
            return {
                int(uid): Copied(
                    int(uid),
                    digest,
                    None if target is None else int(target),
                    frozenset(flags.split()),
                    int(floor),
                )
                for uid, digest, target, flags, floor in rows
            }

    @whole
    async def intend(
        self, folder: FolderKey, entries: Sequence[tuple[int, str, frozenset[str]]], floor: int
    ) -> None:
        """Before APPENDing (source UID, digest, flags): every target UID now is <= floor.
        Replaces what was recorded for those source UIDs."""
        if not entries:
            return
        uids = [uid for uid, _, _ in entries]
        async with self.engine.begin() as db:
            await db.execute(
                delete(migration_messages).where(
                    migration_messages.c.folder == folder.key,
                    migration_messages.c.source_uid.in_(uids),
                )
            )
            await db.execute(
                insert(migration_messages),
                [
                    {
                        "folder": folder.key,
                        "source_uid": uid,
                        "digest": digest,
                        "target_uid": None,
                        "flags": _flags_text(flags),
                        "floor": floor,
                    }
                    for uid, digest, flags in entries
                ],
            )

    @whole
    async def complete(
        self, folder: FolderKey, pairs: Sequence[tuple[int, int]], *, size: int = 0
    ) -> None:
        """The APPENDs (or adoptions) of (source UID, target UID) are done; `size` bytes."""
        if not pairs:
            return
        async with self.engine.begin() as db:
            await db.execute(  # one executemany: a batch's pairs in one round trip
                update(migration_messages)
                .where(
                    migration_messages.c.folder == folder.key,
                    migration_messages.c.source_uid == bindparam("source"),
                )
                .values(target_uid=bindparam("target")),
                [{"source": s, "target": t} for s, t in pairs],
            )
            await db.execute(
                update(migration_copies)
                .where(migration_copies.c.id == self.copy)
                .values(
                    messages=migration_copies.c.messages + len(pairs),
                    bytes=migration_copies.c.bytes + size,
                )
            )

    @whole
    async def flagged(self, folder: FolderKey, source_uid: int, flags: frozenset[str]) -> None:
        async with self.engine.begin() as db:
            await db.execute(
                update(migration_messages)
                .where(
                    migration_messages.c.folder == folder.key,
                    migration_messages.c.source_uid == source_uid,
                )
                .values(flags=_flags_text(flags))
            )
            await db.execute(
                update(migration_copies)
                .where(migration_copies.c.id == self.copy)
                .values(flag_changes=migration_copies.c.flag_changes + 1)
            )

    @whole
    async def forget(self, folder: FolderKey, source_uids: Sequence[int], *, deleted: int) -> None:
        """The source messages are gone (their `deleted` copies deleted on the target)."""
        if not source_uids:
            return
        async with self.engine.begin() as db:
            await db.execute(
                delete(migration_messages).where(
                    migration_messages.c.folder == folder.key,
                    migration_messages.c.source_uid.in_(list(source_uids)),
                )
            )
            await db.execute(
                update(migration_copies)
                .where(migration_copies.c.id == self.copy)
                .values(deletions=migration_copies.c.deletions + deleted)
            )
