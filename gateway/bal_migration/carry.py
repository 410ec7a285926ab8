"""The historic ids of a BAL follow it to its new platform at the cut-over.

LPS on the historic interfaces served by the gateway (`gateway.legacy_front`) keep integer
message ids; on a modern platform each maps to (folder, UIDVALIDITY, UID) in
`HistoricIds`' tables, under the name of the backend holding the BAL. When the BAL moves,
each id is rebound to its copy: the copy's journal knows each source message's target UID
and each source folder's target name, and the target tells its folders' UIDVALIDITY. The
ids, their versions (syncMessages' tokens), the folder ids and the tombstones stay: an
LPS lists and reads the same ids after the move, and its next syncMessages reports nothing
new. An id whose message has no copy (expunged before the last delta) becomes a tombstone.

The coordinator's cut-over calls `carry_historic_ids` after the final delta and before the
registry's record changes; a rollback calls `carry_back` with both journals (what went
back, and the forward copy's pairs read backwards for what never left).

Not for a BAL leaving the historic platform itself: LPS knew the historic platform's own
messageIds there, which are numbered per BAL while these ids are one sequence for every
BAL, so they cannot be given again (see the README, "What LPS see after a move").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Table, and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.backends.base import MailboxAccess
from gateway.bal_migration.checkpoint import Journal
from gateway.db import historic_folders, historic_messages, historic_sync


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
    """In one transaction: drop what `target` held of `bal` (an earlier stay there), then
    move `source`'s folders, ids, tombstones and token counter to `target`, each live id
    to its message's new place, ids without one to tombstones. Returns the ids rebound."""
    bal = bal.lower()
    async with engine.begin() as db:
        await _drop(db, target, bal)
        names = {folder: move.folder for (folder, _), move in moves.items()}
        rows = (
            await db.execute(
                select(historic_folders.c.key, historic_folders.c.name).where(
                    _mine(historic_folders, source, bal)
                )
            )
        ).all()
        kept = {key: name for key, name in rows if name in names}
        for key, _ in rows:
            if key not in kept:
                await db.execute(delete(historic_folders).where(historic_folders.c.key == key))
        # two steps, so that a folder taking the name another leaves never collides
        for key in kept:
            await db.execute(
                update(historic_folders)
                .where(historic_folders.c.key == key)
                .values(backend=target, name=f"//carried/{key}", uidvalidity=None)
            )
        for key, name in kept.items():
            await db.execute(
                update(historic_folders)
                .where(historic_folders.c.key == key)
                .values(name=names[name], highestmodseq=None)
            )
        carried, lost = await _messages(db, source, bal, kept, moves)
        counter = await db.scalar(
            update(historic_sync)
            .where(historic_sync.c.backend == source, historic_sync.c.bal == bal)
            .values(backend=target, counter=historic_sync.c.counter + len(lost))
            .returning(historic_sync.c.counter)
        )
        version = int(counter or 0) - len(lost) + 1
        for row_id in lost:
            await db.execute(
                update(historic_messages)
                .where(historic_messages.c.id == row_id)
                .values(gone=True, folder=None, version=version)
            )
            version += 1
        await db.execute(
            update(historic_messages)
            .where(_mine(historic_messages, source, bal))
            .values(backend=target)
        )
    return carried


async def _messages(
    db: AsyncConnection, source: str, bal: str, folders: Mapping[int, str], moves: Moves
) -> tuple[int, list[int]]:
    """Each live id of the BAL to its new place, in two steps (a UID another message
    leaves never collides); (how many were rebound, the ids left without a copy)."""
    rows = (
        await db.execute(
            select(
                historic_messages.c.id,
                historic_messages.c.folder,
                historic_messages.c.uidvalidity,
                historic_messages.c.uid,
            ).where(_mine(historic_messages, source, bal), historic_messages.c.gone.is_(False))
        )
    ).all()
    placed: dict[int, tuple[int, int]] = {}
    lost: list[int] = []
    for row_id, folder, validity, uid in rows:
        name = folders.get(folder)
        move = moves.get((name, int(validity))) if name is not None else None
        new_uid = move.uids.get(int(uid)) if move is not None else None
        if move is None or new_uid is None:
            lost.append(row_id)
        else:
            placed[row_id] = (move.uidvalidity, new_uid)
    for row_id in placed:
        await db.execute(
            update(historic_messages).where(historic_messages.c.id == row_id).values(uid=-row_id)
        )
    for row_id, (validity, uid) in placed.items():
        await db.execute(
            update(historic_messages)
            .where(historic_messages.c.id == row_id)
            .values(uidvalidity=validity, uid=uid)
        )
    return len(placed), lost


async def _drop(db: AsyncConnection, backend: str, bal: str) -> None:
    for table in (historic_messages, historic_folders, historic_sync):
        await db.execute(delete(table).where(_mine(table, backend, bal)))


def _mine(table: Table, backend: str, bal: str) -> ColumnElement[bool]:
    return and_(table.c.backend == backend, table.c.bal == bal)
