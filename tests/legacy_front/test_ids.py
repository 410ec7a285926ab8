"""Historic ids and change tokens in the gateway's tables, on SQLite and PostgreSQL: ids
assigned once, changes reported exactly after a token, and two nodes (two engines on
one database) never handing out the same versions."""

from __future__ import annotations

import asyncio

import pytest

from delegation.db import create_engine, migrate
from gateway.db import migrate_gateway
from gateway.legacy_front.ids import HistoricIds
from tests.gateway.test_legacy_ws_uidmap import _downgrade as downgrade

BAL = "claire.martin@medecin.mssante.fr"


@pytest.fixture
def db_url(migrated_db_url: str) -> str:
    return migrated_db_url


async def test_ids_and_changes_since_a_token(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        ids = HistoricIds(engine).of("modern", BAL)
        folders = await ids.folder_ids({"INBOX": 2, "Patients": None})
        assert folders["INBOX"] == 2
        assert folders["Patients"] >= 257
        first = await ids.observe("INBOX", 7, {1: "\\Seen", 2: ""}, complete=True)
        assert sorted(first) == [1, 2]
        start = (await ids.changes_since(None)).token
        again = await ids.observe("INBOX", 7, {1: "\\Seen", 2: "\\Flagged"}, complete=True)
        assert again == first  # the same ids for the same UIDs
        changes = await ids.changes_since(start)
        assert list(changes.modified) == [first[2]]
        assert changes.deleted == []
        await ids.observe("INBOX", 7, {2: "\\Flagged"}, complete=True)
        gone = await ids.changes_since(changes.token)
        assert gone.deleted == [first[1]]
        assert not gone.modified
    finally:
        await engine.dispose()


async def test_two_nodes_never_share_a_version(db_url: str) -> None:
    """Each node its own engine, as two gateways on one database: their changes to one
    BAL interleave, and every change is reported once after the token before them."""
    nodes = [create_engine(db_url), create_engine(db_url)]
    try:
        bals = [HistoricIds(engine).of("modern", BAL) for engine in nodes]
        await bals[0].folder_ids({"INBOX": 2})
        await bals[0].observe("INBOX", 7, {uid: "" for uid in range(1, 41)}, complete=True)
        start = (await bals[0].changes_since(None)).token

        async def flag(node: int, uids: range) -> None:
            for uid in uids:
                await bals[node].observe("INBOX", 7, {uid: f"$n{node}"})

        await asyncio.gather(flag(0, range(1, 21)), flag(1, range(21, 41)))
        changes = await bals[1].changes_since(start)
        assert len(changes.modified) == 40
        assert changes.token == start + 40  # forty versions, none handed out twice
    finally:
        for engine in nodes:
            await engine.dispose()


async def test_message_ids_are_numbered_per_bal_and_never_given_twice(db_url: str) -> None:
    """Each BAL numbers its messages from 1, as the historic platform does (a BAL leaving
    it keeps its ids); a pruned tombstone's id is not given again."""
    engine = create_engine(db_url)
    try:
        store = HistoricIds(engine, max_tombstones=1)
        mine, other = store.of("modern", BAL), store.of("modern", "x.y@medecin.mssante.fr")
        for ids in (mine, other):
            await ids.folder_ids({"INBOX": 2})
        first = await mine.observe("INBOX", 7, {1: "", 2: ""}, complete=True)
        theirs = await other.observe("INBOX", 7, {5: "", 6: ""}, complete=True)
        assert sorted(first.values()) == [1, 2]
        assert sorted(theirs.values()) == [1, 2]  # the same numbers, another BAL
        assert (await other.locate([1])).keys() == {1}
        assert (await other.locate([1]))[1].uid == 5
        await mine.observe("INBOX", 7, {}, complete=True)  # both gone, one pruned at once
        again = await mine.observe("INBOX", 7, {3: ""}, complete=True)
        assert list(again.values()) == [3]
        assert await mine.locate([1, 2]) == {}
        await mine.gone([3])
        assert (await mine.changes_since(None)).modified == {}
        # ids that are not their row keys any more: going back before gw0007 is refused
        with pytest.raises(RuntimeError, match="not their row keys"):
            await downgrade(db_url, "gw0006")
        assert sorted((await other.locate([1, 2])).keys()) == [1, 2]  # nothing undone
    finally:
        await engine.dispose()


async def test_ids_issued_before_per_bal_numbering_stay(fresh_db_url: str) -> None:
    """A database from before gw0007: every id keeps its value, and each BAL's next id
    starts above every id issued then (an LPS holding an old id is never shown another
    message under it)."""
    from sqlalchemy import text

    await migrate(fresh_db_url)
    await migrate_gateway(fresh_db_url, "gw0006")
    engine = create_engine(fresh_db_url)
    try:
        async with engine.begin() as db:
            await db.execute(
                text(
                    "INSERT INTO gw_historic_folders (backend, bal, name, folder_id) "
                    "VALUES ('modern', :bal, 'INBOX', 2)"
                ),
                {"bal": BAL},
            )
            key = (await db.execute(text("SELECT key FROM gw_historic_folders"))).scalar_one()
            for uid, row in ((1, 40), (2, 41)):
                await db.execute(
                    text(
                        "INSERT INTO gw_historic_messages (id, backend, bal, folder, "
                        "uidvalidity, uid, flags, version) "
                        "VALUES (:id, 'modern', :bal, :key, 7, :uid, '', :uid)"
                    ),
                    {"id": row, "bal": BAL, "key": key, "uid": uid},
                )
            await db.execute(
                text(
                    "INSERT INTO gw_historic_sync (backend, bal, counter, floor) "
                    "VALUES ('modern', :bal, 2, 0)"
                ),
                {"bal": BAL},
            )
        await migrate_gateway(fresh_db_url)
        ids = HistoricIds(engine).of("modern", BAL)
        assert {i: where.uid for i, where in (await ids.locate([40, 41])).items()} == {
            40: 1,
            41: 2,
        }
        fresh = await ids.observe("INBOX", 7, {1: "", 2: "", 3: ""}, complete=True)
        assert fresh == {1: 40, 2: 41, 3: 42}
    finally:
        await engine.dispose()
