"""The historic UID mapping on SQLite and PostgreSQL: stable, atomic, beside the registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from delegation import migrate
from delegation.db import VERSION_TABLE as DELEGATION_VERSION_TABLE
from delegation.db import alembic_config, create_engine
from gateway.backends.legacy_ws.uidmap import (
    Entry,
    FlagChange,
    TooManyKeywords,
    UidMap,
    mark,
)
from gateway.db import MIGRATIONS, VERSION_TABLE, legacy_flags, metadata, migrate_gateway

BAL = "jean.dupont@medecin.mssante.fr"
INBOX, SENT = 2, 5
QUERIES = {
    table: f"SELECT version_num FROM {table}"  # noqa: S608 -- constant table names
    for table in (VERSION_TABLE, DELEGATION_VERSION_TABLE)
}


@pytest.fixture
def db_url(migrated_db_url: str) -> str:
    return migrated_db_url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_folder_and_assign(engine: AsyncEngine) -> None:
    uids = UidMap(engine)
    validity, uidnext = await uids.folder("historic", BAL, INBOX)
    assert 0 < validity < 2**32
    assert uidnext == 1
    assert await uids.folder("historic", BAL.upper(), INBOX) == (validity, 1)

    first = await uids.assign("historic", BAL, INBOX, ["257", "12", "300"])
    assert first == {"257": 1, "12": 2, "300": 3}
    again = await uids.assign("historic", BAL, INBOX, ["300", "400", "12", "401", "400"])
    assert again == {"300": 3, "400": 4, "12": 2, "401": 5}
    assert await uids.folder("historic", BAL, INBOX) == (validity, 6)
    assert await uids.uids("historic", BAL, INBOX) == {
        "257": 1,
        "12": 2,
        "300": 3,
        "400": 4,
        "401": 5,
    }

    await uids.forget("historic", BAL, INBOX, ["12", "400", "unknown"])
    assert await uids.uids("historic", BAL, INBOX) == {"257": 1, "300": 3, "401": 5}
    assert await uids.assign("historic", BAL, INBOX, ["12"]) == {"12": 6}  # back: a new UID
    assert await uids.folder("historic", BAL, INBOX) == (validity, 7)

    # other folders, BAL and backends are independent
    assert await uids.assign("historic", BAL, SENT, ["257"]) == {"257": 1}
    assert await uids.assign("other", BAL, INBOX, ["257"]) == {"257": 1}
    assert await uids.assign("historic", "x@y.fr", INBOX, []) == {}

    await uids.forget("historic", BAL, 99, ["1"])  # an unknown folder: nothing to do
    await uids.forget_folder("historic", BAL, INBOX)
    assert await uids.uids("historic", BAL, INBOX) == {}
    assert (await uids.folder("historic", BAL, INBOX))[1] == 1


async def test_inputs_are_limited(engine: AsyncEngine) -> None:
    uids = UidMap(engine)
    with pytest.raises(ValueError, match="message id"):
        await uids.assign("historic", BAL, INBOX, ["x" * 65])
    with pytest.raises(ValueError, match="message id"):
        await uids.assign("historic", BAL, INBOX, [""])
    with pytest.raises(TypeError):
        await uids.assign("historic", BAL, INBOX, "257")
    with pytest.raises(ValueError, match="folder"):
        await uids.folder("historic", BAL, -1)
    with pytest.raises(ValueError, match="BAL"):
        await uids.folder("historic", "", INBOX)
    with pytest.raises(ValueError, match="backend"):
        await uids.folder("h" * 65, BAL, INBOX)


async def test_many_ids_in_one_call(engine: AsyncEngine) -> None:
    uids = UidMap(engine)
    ids = [str(n) for n in range(3000, 0, -1)]
    assigned = await uids.assign("historic", BAL, INBOX, ids)
    assert [assigned[i] for i in ids] == list(range(1, 3001))
    assert await uids.assign("historic", BAL, INBOX, ids) == assigned


async def test_stable_across_a_new_engine(db_url: str, engine: AsyncEngine) -> None:
    first = UidMap(engine)
    folder = await first.folder("historic", BAL, INBOX)
    assigned = await first.assign("historic", BAL, INBOX, ["a", "b", "c"])
    await engine.dispose()

    await migrate_gateway(db_url)  # a restart migrates again: nothing changes
    restarted = create_engine(db_url)
    try:
        second = UidMap(restarted)
        assert await second.folder("historic", BAL, INBOX) == (folder[0], 4)
        assert await second.uids("historic", BAL, INBOX) == assigned
        assert await second.assign("historic", BAL, INBOX, ["c", "d"]) == {"c": 3, "d": 4}
    finally:
        await restarted.dispose()


async def test_concurrent_assign_gives_unique_uids(db_url: str) -> None:
    """Two nodes (two engines) and several sessions assigning at once, overlapping ids."""
    engines = [create_engine(db_url), create_engine(db_url)]
    try:
        maps = [UidMap(e) for e in engines]
        batches = [[f"m{n}" for n in range(start, start + 40)] for start in (0, 20, 40, 60)]
        results = await asyncio.gather(
            *(
                maps[index % 2].assign("historic", BAL, INBOX, batch)
                for index, batch in enumerate(batches)
            ),
            *(maps[index % 2].folder("historic", BAL, SENT) for index in range(4)),
        )
        final = await maps[0].uids("historic", BAL, INBOX)
        assert len(final) == 100
        assert len(set(final.values())) == 100
        assert sorted(final.values()) == list(range(1, 101))
        shared = {m for batch in batches[1:3] for m in batch}
        for batch, result in zip(batches, results[:4], strict=True):
            assert list(result) == batch
            assert all(final[m] == uid for m, uid in result.items())
            own = [result[m] for m in batch if m not in shared]  # new to this call: ascending
            assert own == sorted(own)
        validities = {r for r in results[4:]}
        assert len(validities) == 1  # one UIDVALIDITY for the folder, whoever created it
    finally:
        for engine in engines:
            await engine.dispose()


async def test_migrations_coexist_with_the_registry(fresh_db_url: str) -> None:
    await migrate_gateway(fresh_db_url)
    await migrate(fresh_db_url)
    await asyncio.gather(migrate(fresh_db_url), migrate_gateway(fresh_db_url))
    engine = create_engine(fresh_db_url)
    try:
        async with engine.connect() as connection:
            tables = set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
            versions = {
                table: list((await connection.execute(text(query))).scalars())
                for table, query in QUERIES.items()
            }
        assert {"gw_legacy_folders", "gw_legacy_uids", VERSION_TABLE} <= tables
        assert {"dlg_mailboxes", DELEGATION_VERSION_TABLE} <= tables
        assert versions == {VERSION_TABLE: ["gw0008"], DELEGATION_VERSION_TABLE: ["0003"]}
        assert await UidMap(engine).assign("historic", BAL, INBOX, ["1"]) == {"1": 1}
    finally:
        await engine.dispose()


def _gateway_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "version_table": VERSION_TABLE,
            "include_name": lambda name, kind, _parent: kind != "table" or name.startswith("gw_"),
        },
    )
    return list(compare_metadata(context, metadata))


async def test_migrated_schema_matches_the_tables(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        assert await connection.run_sync(_gateway_diff) == []


async def test_content_keys_and_deleted_marks(engine: AsyncEngine) -> None:
    uidmap = UidMap(engine)
    await uidmap.assign("historic", BAL, INBOX, ["a", "b"], {"a": "k1"})
    entries = await uidmap.entries("historic", BAL, INBOX)
    assert entries["a"] == Entry(1, "k1", deleted=False)
    assert entries["b"] == Entry(2, None, deleted=False)
    await uidmap.set_keys("historic", BAL, INBOX, {"b": "k2"})
    await uidmap.mark_deleted("historic", BAL, INBOX, ["a"], deleted=True)
    entries = await uidmap.entries("historic", BAL, INBOX)
    assert entries["a"] == Entry(1, "k1", deleted=True)
    assert entries["b"] == Entry(2, "k2", deleted=False)
    await uidmap.mark_deleted("historic", BAL, INBOX, ["a"], deleted=False)
    assert not (await uidmap.entries("historic", BAL, INBOX))["a"].deleted
    with pytest.raises(ValueError, match="content key"):
        await uidmap.set_keys("historic", BAL, INBOX, {"a": "x" * 65})


async def test_forgetting_a_uid_leaves_one_given_again_meanwhile(engine: AsyncEngine) -> None:
    uidmap = UidMap(engine)
    first = await uidmap.assign("historic", BAL, INBOX, ["a", "b"])
    await uidmap.forget("historic", BAL, INBOX, ["a"])
    again = await uidmap.assign("historic", BAL, INBOX, ["a"])  # another node, meanwhile
    await uidmap.forget_uids("historic", BAL, INBOX, {"a": first["a"], "b": first["b"]})
    assert await uidmap.uids("historic", BAL, INBOX) == {"a": again["a"]}


def flags(*names: str) -> frozenset[str]:
    return frozenset(names)


async def flag_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(legacy_flags)) or 0)


async def kept(uidmap: UidMap, folder: int = INBOX) -> dict[str, frozenset[str]]:
    return {m: e.flags for m, e in (await uidmap.entries("historic", BAL, folder)).items()}


async def test_kept_flags_add_remove_replace_without_regard_to_case(engine: AsyncEngine) -> None:
    uidmap = UidMap(engine)
    await uidmap.assign("historic", BAL, INBOX, ["a", "b", "c"])
    changed = await uidmap.change_flags(
        "historic",
        BAL,
        INBOX,
        {
            "a": FlagChange(add=flags("$MDNSent", "\\Answered")),
            "b": FlagChange(add=flags("$Label1")),
            "gone": FlagChange(add=flags("$X")),  # no UID here: left alone
        },
    )
    assert changed == {"a": flags("$MDNSent", "\\Answered"), "b": flags("$Label1")}
    assert await kept(uidmap) == {
        "a": flags("$MDNSent", "\\Answered"),
        "b": flags("$Label1"),
        "c": flags(),
    }
    await uidmap.change_flags(
        "historic",
        BAL,
        INBOX,
        {
            "a": FlagChange(add=flags("$mdnsent", "$Forwarded")),  # the first spelling stays
            "b": FlagChange(remove=flags("$LABEL1")),
        },
    )
    assert await kept(uidmap) == {
        "a": flags("$MDNSent", "\\Answered", "$Forwarded"),
        "b": flags(),
        "c": flags(),
    }
    await uidmap.change_flags(
        "historic", BAL, INBOX, {"a": FlagChange(add=flags("$FORWARDED", "Work"), replace=True)}
    )
    assert (await kept(uidmap))["a"] == flags("$Forwarded", "Work")
    await uidmap.mark_deleted("historic", BAL, INBOX, ["b"], deleted=True)
    assert await uidmap.marks("historic", BAL, INBOX) == {
        mark("a", "$Forwarded"),
        mark("a", "Work"),
        mark("b", "\\Deleted"),
    }
    cleared = await uidmap.change_flags("historic", BAL, INBOX, {"a": FlagChange(replace=True)})
    assert cleared == {"a": flags()}
    assert (await kept(uidmap))["a"] == flags()
    assert await uidmap.marks("historic", BAL, INBOX) == {mark("b", "\\Deleted")}


async def test_kept_flags_go_with_the_uid(engine: AsyncEngine) -> None:
    """Forgetting a UID (moved away, expunged, gone, replaced) or the folder drops its flags
    with it: nothing is left for a message that would come back under a new UID."""
    uidmap = UidMap(engine)
    first = await uidmap.assign("historic", BAL, INBOX, ["a", "b", "c"])
    await uidmap.assign("historic", BAL, SENT, ["a"])
    everything = FlagChange(add=flags("$Label1", "\\Draft"))
    await uidmap.change_flags("historic", BAL, INBOX, dict.fromkeys("abc", everything))
    await uidmap.change_flags("historic", BAL, SENT, {"a": everything})
    assert await flag_rows(engine) == 8
    await uidmap.forget("historic", BAL, INBOX, ["a"])
    await uidmap.forget_uids("historic", BAL, INBOX, {"b": first["b"]})
    assert await kept(uidmap) == {"c": everything.add}
    assert await flag_rows(engine) == 4
    assert await uidmap.assign("historic", BAL, INBOX, ["a"]) == {"a": 4}
    assert await kept(uidmap) == {"c": everything.add, "a": flags()}  # back: a new message
    await uidmap.forget_folder("historic", BAL, INBOX)
    assert await kept(uidmap, SENT) == {"a": everything.add}  # another folder: its own
    assert await flag_rows(engine) == 2


async def test_keyword_bounds_write_nothing(engine: AsyncEngine) -> None:
    uidmap = UidMap(engine)
    await uidmap.assign("historic", BAL, INBOX, ["a", "b"])
    bounded = {"per_message": 3, "per_folder": 4}
    three = FlagChange(add=flags("k1", "k2", "k3"))
    await uidmap.change_flags("historic", BAL, INBOX, {"a": three}, **bounded)
    with pytest.raises(TooManyKeywords, match="one message"):
        await uidmap.change_flags(
            "historic",
            BAL,
            INBOX,
            {"b": FlagChange(add=flags("k4")), "a": FlagChange(add=flags("k4"))},
            **bounded,
        )
    assert await kept(uidmap) == {"a": three.add, "b": flags()}  # b unchanged too
    # system flags are no keywords; a keyword there already (in any case) is no new one
    more = FlagChange(add=flags("\\Answered", "\\Draft", "K3"))
    await uidmap.change_flags("historic", BAL, INBOX, {"a": more}, **bounded)
    assert (await kept(uidmap))["a"] == three.add | {"\\Answered", "\\Draft"}
    await uidmap.change_flags(
        "historic", BAL, INBOX, {"b": FlagChange(add=flags("K1", "k2", "k5"))}, **bounded
    )
    with pytest.raises(TooManyKeywords, match="one folder"):
        await uidmap.change_flags(
            "historic",
            BAL,
            INBOX,
            {"b": FlagChange(add=flags("k5", "k6"), replace=True)},
            **bounded,
        )
    assert (await kept(uidmap))["b"] == flags("K1", "k2", "k5")
    for bad in ("x" * 65, "\\Seen", "\\Deleted", "a b", ""):
        with pytest.raises(ValueError, match="flag"):
            await uidmap.change_flags("historic", BAL, INBOX, {"a": FlagChange(add=flags(bad))})


async def _downgrade(url: str, revision: str) -> None:
    config = alembic_config(MIGRATIONS, VERSION_TABLE)

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


async def test_the_flags_revision_downgrades_and_upgrades_again(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        uidmap = UidMap(engine)
        await uidmap.assign("historic", BAL, INBOX, ["a"], {"a": "k"})
        await uidmap.change_flags("historic", BAL, INBOX, {"a": FlagChange(add=flags("$X"))})
        await _downgrade(db_url, "gw0002")
        async with engine.connect() as connection:
            tables = set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
            version = (await connection.execute(text(QUERIES[VERSION_TABLE]))).scalar()
        assert "gw_legacy_flags" not in tables
        assert version == "gw0002"
        await engine.dispose()
        await _downgrade(db_url, "gw0001")
        await migrate_gateway(db_url)
        assert await uidmap.entries("historic", BAL, INBOX) == {"a": Entry(1, None, False)}
        await uidmap.change_flags("historic", BAL, INBOX, {"a": FlagChange(add=flags("$Y"))})
        assert await kept(uidmap) == {"a": flags("$Y")}
        async with engine.connect() as connection:
            assert await connection.run_sync(_gateway_diff) == []
    finally:
        await engine.dispose()
