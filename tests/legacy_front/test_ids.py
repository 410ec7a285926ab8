"""Historic ids and change tokens in the gateway's tables, on SQLite and PostgreSQL: ids
assigned once, changes reported exactly after a token, and two nodes (two engines on
one database) never handing out the same versions."""

from __future__ import annotations

import asyncio

import pytest

from delegation.db import create_engine, migrate
from gateway.db import migrate_gateway
from gateway.legacy_front.ids import HistoricIds

BAL = "claire.martin@medecin.mssante.fr"


@pytest.fixture
async def db_url(fresh_db_url: str) -> str:
    await migrate(fresh_db_url)
    await migrate_gateway(fresh_db_url)
    return fresh_db_url


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
