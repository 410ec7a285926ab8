"""The historic ids of a BAL follow it to its new platform at the cut-over.

LPS on the historic interfaces served by the gateway (`gateway.legacy_front`) keep integer
message ids; on a modern platform each maps to (folder, UIDVALIDITY, UID) in
`HistoricIds`' tables, under the name of the backend holding the BAL. When the BAL moves,
each id is rebound to its copy: the copy's journal knows each source message's target UID
and each source folder's target name, and the target tells its folders' UIDVALIDITY. The
ids, their versions (syncMessages' tokens), the folder ids and the tombstones stay: an
LPS lists and reads the same ids after the move, and its next syncMessages reports nothing
new. An id whose message has no copy (expunged before the last delta) becomes a tombstone.

The coordinator's cut-over calls `carry_historic_ids` inside the hold, after the final
delta and before the registry's record changes, and switches nothing if it fails; the
source's rows are copied, not moved, so LPS still reading the old platform until the switch
keep their ids. A rollback calls `carry_back` with both journals (what went back, and the
forward copy's pairs read backwards for what never left).

A BAL leaving the historic platform itself goes through `adopt` instead: there the ids are
the platform's own, and the copy must first find which message each one names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Table, and_, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.backends.base import MailboxAccess
from gateway.bal_migration.checkpoint import Journal
from gateway.db import historic_folders, historic_messages, historic_sync

ID_GAP = 10_000  # ids the old platform may still give (mail arriving) before the switch
TOKEN_GAP = 1_000_000  # syncMessages tokens it may still give before the switch


@dataclass(frozen=True, slots=True)
class Move:
    """Where the messages of one folder (as of one UIDVALIDITY) went."""

    folder: str
    uidvalidity: int
    uids: Mapping[int, int]  # old UID → new UID


Moves = Mapping[tuple[str, int], Move]
"""(old folder, old UIDVALIDITY) → where its messages went."""


async def _uidvalidity(access: MailboxAccess, folder: str) -> int:
    ask = getattr(access, "uidvalidity", None)
    if ask is None:
        raise TypeError("the platform's access does not tell UIDVALIDITY")
    return int(await ask(folder))


async def forward_moves(journal: Journal, target: MailboxAccess) -> dict[tuple[str, int], Move]:
    """What `journal`'s copy did, read from its checkpoints and the target's folders."""
    moves: dict[tuple[str, int], Move] = {}
    for folder in await journal.folders():
        copied = await journal.copied(folder)
        uids = {s: c.target_uid for s, c in copied.items() if c.target_uid is not None}
        validity = await _uidvalidity(target, folder.target)
        moves[(folder.name, folder.uidvalidity)] = Move(folder.target, validity, uids)
    return moves


async def carry_historic_ids(
    engine: AsyncEngine, bal: str, journal: Journal, target: MailboxAccess
) -> int:
    """Rebind every historic id of `bal` from the journal's source backend to its target
    (`target`: the target's access, for its folders' UIDVALIDITY). Returns how many ids
    now point at a copy."""
    record = await journal.record()
    moves = await forward_moves(journal, target)
    return await rebind(engine, bal, record.source, record.target, moves)


async def carry_back(
    engine: AsyncEngine,
    bal: str,
    forward: Journal,
    back: Journal,
    source: MailboxAccess,
    target: MailboxAccess,
) -> int:
    """A rollback's: the ids of `bal` on the platform it leaves (`source`, where `forward`
    copied it) go back to the one it returns to (`target`): a message `back` copied is
    found by its pairs, one that was there before the cut-over by `forward`'s read
    backwards (when the folder's UIDVALIDITY on `source` is still the one it copied to)."""
    record = await back.record()
    moves = await forward_moves(back, target)
    for folder in await forward.folders():
        here = await _uidvalidity(source, folder.target)
        home = await _uidvalidity(target, folder.name)
        copied = await forward.copied(folder)
        inverse = {c.target_uid: s for s, c in copied.items() if c.target_uid is not None}
        if home != folder.uidvalidity:
            inverse = {}  # the folder was made anew there: its old UIDs name nothing
        known = moves.get((folder.target, here))
        merged = {**inverse, **(known.uids if known is not None else {})}
        moves[(folder.target, here)] = Move(folder.name, home, merged)
    return await rebind(engine, bal, record.source, record.target, moves)


async def rebind(engine: AsyncEngine, bal: str, source: str, target: str, moves: Moves) -> int:
    """In one transaction: replace what `target` held of `bal` (an earlier stay there)
    with a copy of `source`'s folders, ids, tombstones and token counter, each live id at
    its message's new place, ids without one as tombstones. `source`'s rows stay: the
    legacy front serves them until the registry's record changes, and a read meanwhile
    must not find them gone. Returns the ids rebound."""
    bal = bal.lower()
    async with engine.begin() as db:
        rows = (
            await db.execute(
                select(
                    historic_folders.c.key, historic_folders.c.name, historic_folders.c.folder_id
                ).where(_mine(historic_folders, source, bal))
            )
        ).all()
        names = {folder: move.folder for (folder, _), move in moves.items()}
        old: dict[int, str] = {}  # source key → source name, for the folders that moved
        folders: list[tuple[str, int]] = []
        for key, name, folder_id in rows:
            if name in names and all(names[name] != n for n, _ in folders):
                old[key] = name
                folders.append((names[name], int(folder_id)))
        state = (
            await db.execute(
                select(
                    historic_sync.c.counter, historic_sync.c.floor, historic_sync.c.next_id
                ).where(_mine(historic_sync, source, bal))
            )
        ).first()
        counter, floor, next_id = (int(v) for v in state) if state is not None else (0, 0, 1)
        messages = (
            await db.execute(
                select(
                    historic_messages.c.message_id,
                    historic_messages.c.folder,
                    historic_messages.c.uidvalidity,
                    historic_messages.c.uid,
                    historic_messages.c.flags,
                    historic_messages.c.version,
                    historic_messages.c.gone,
                ).where(_mine(historic_messages, source, bal))
            )
        ).all()
        kept: list[Row] = []
        lost: list[int] = []
        places: set[tuple[str, int, int]] = set()
        for message_id, folder, validity, uid, flags, version, gone in messages:
            if gone:
                kept.append(Row(int(message_id), None, 0, 0, flags, int(version)))
                continue
            name = old.get(folder)
            move = moves.get((name, int(validity))) if name is not None else None
            new_uid = move.uids.get(int(uid)) if move is not None else None
            place = (move.folder, move.uidvalidity, new_uid) if move and new_uid else None
            if place is None or new_uid is None or place in places:
                lost.append(int(message_id))  # no copy (or a second id for one copy)
                continue
            places.add(place)
            kept.append(Row(int(message_id), place[0], place[1], new_uid, flags, int(version)))
        for message_id in lost:  # tombstones, reported at the next syncMessages
            counter += 1
            kept.append(Row(message_id, None, 0, 0, "", counter))
        # the source keeps serving until the switch: ids and tokens it gives meanwhile
        # must never be given again on the target for something else
        await write(db, target, bal, folders, kept, counter + TOKEN_GAP, floor, next_id + ID_GAP)
    return len(places)


@dataclass(frozen=True, slots=True)
class Row:
    """One message id as `write` stores it; `folder` None: a tombstone."""

    message_id: int
    folder: str | None
    uidvalidity: int
    uid: int
    flags: str
    version: int


async def write(
    db: AsyncConnection,
    backend: str,
    bal: str,
    folders: Sequence[tuple[str, int]],
    messages: Sequence[Row],
    counter: int,
    floor: int,
    next_id: int,
) -> list[Row]:
    """Store a BAL's ids under `backend`, in place of what it held: folders (name, folder
    id), messages, and the token counter, floor and next id (above every id stored).
    Returns the rows stored: a message whose folder has no folder id is left out (the
    legacy front gives it a new id when it meets it)."""
    await _drop(db, backend, bal)
    keys: dict[str, int] = {}
    for name, folder_id in folders:
        key = await db.scalar(
            insert(historic_folders)
            .values(backend=backend, bal=bal, name=name, folder_id=folder_id)
            .returning(historic_folders.c.key)
        )
        assert key is not None
        keys[name] = int(key)
    stored = [row for row in messages if row.folder is None or row.folder in keys]
    values = [
        {
            "backend": backend,
            "bal": bal,
            "message_id": row.message_id,
            "folder": keys[row.folder] if row.folder is not None else None,
            "uidvalidity": row.uidvalidity,
            "uid": row.uid,
            "flags": row.flags,
            "version": row.version,
            "gone": row.folder is None,
        }
        for row in stored
    ]
    for start in range(0, len(values), 1000):
        await db.execute(insert(historic_messages), values[start : start + 1000])
    top = max((row.message_id for row in messages), default=0)
    await db.execute(
        insert(historic_sync).values(
            backend=backend, bal=bal, counter=counter, floor=floor, next_id=max(next_id, top + 1)
        )
    )
    return stored


async def _drop(db: AsyncConnection, backend: str, bal: str) -> None:
    for table in (historic_messages, historic_folders, historic_sync):
        await db.execute(delete(table).where(_mine(table, backend, bal)))


def _mine(table: Table, backend: str, bal: str) -> ColumnElement[bool]:
    return and_(table.c.backend == backend, table.c.bal == bal)
