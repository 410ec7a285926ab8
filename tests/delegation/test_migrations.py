"""The Alembic environment shipped in the package: upgrade, idempotence, schema = models."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from delegation import create_engine, migrate
from delegation.audit import AuditAction
from delegation.db import VERSION_TABLE, async_url, asyncpg_dsn, is_postgresql
from delegation.models import Base

TABLES = {
    "dlg_directory_entries",
    "dlg_directory_addresses",
    "dlg_mailboxes",
    "dlg_delegations",
    "dlg_audit_events",
    VERSION_TABLE,
}
HEAD = "0003"


async def _tables_and_version(url: str) -> tuple[set[str], list[str]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            query = text(f"SELECT version_num FROM {VERSION_TABLE}")  # noqa: S608
            versions = list((await conn.execute(query)).scalars())
    finally:
        await engine.dispose()
    return tables, versions


async def test_migrate_twice_is_idempotent(fresh_db_url: str) -> None:
    await migrate(fresh_db_url)
    await migrate(fresh_db_url)
    tables, versions = await _tables_and_version(fresh_db_url)
    assert tables >= TABLES
    assert versions == [HEAD]


async def test_concurrent_migrations_do_not_collide(fresh_db_url: str) -> None:
    """Several nodes starting at once: PostgreSQL advisory lock / SQLite BEGIN IMMEDIATE."""
    await asyncio.gather(*(migrate(fresh_db_url) for _ in range(3)))
    _, versions = await _tables_and_version(fresh_db_url)
    assert versions == [HEAD]


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "version_table": VERSION_TABLE}
    )
    return list(compare_metadata(context, Base.metadata))


async def test_migrated_schema_matches_the_models(fresh_db_url: str) -> None:
    await migrate(fresh_db_url)  # the registry's migrations alone, from an empty database
    engine = create_engine(fresh_db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_sqlite_engine_has_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///a.db", "sqlite+aiosqlite:///a.db"),
        ("sqlite+aiosqlite:///a.db", "sqlite+aiosqlite:///a.db"),
        ("postgresql://u@h:5432/d", "postgresql+asyncpg://u@h:5432/d"),
        ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+asyncpg://u:p@h/d", "postgresql+asyncpg://u:***@h/d"),
    ],
)
def test_urls_get_the_async_driver(url: str, expected: str) -> None:
    assert str(async_url(url)) == expected


def test_asyncpg_dsn_and_backend_detection() -> None:
    assert asyncpg_dsn("postgresql+asyncpg://u:p@h/d") == "postgresql://u:p@h/d"
    assert is_postgresql("postgresql://h/d")
    assert not is_postgresql("sqlite:///x.db")
    with pytest.raises(ValueError, match="unsupported"):
        async_url("mysql://h/d")
    with pytest.raises(ValueError, match="PostgreSQL"):
        asyncpg_dsn("sqlite:///x.db")


async def test_audit_events_survive_the_wider_action_column(fresh_db_url: str) -> None:
    """0002 widens dlg_audit_events.action (SQLite rebuilds the table): the events written
    before stay, and the longest action of the vocabulary fits after."""
    await migrate(fresh_db_url, "0001")
    engine = create_engine(fresh_db_url)
    insert = text(
        "INSERT INTO dlg_audit_events (at, actor_idnat, mailbox, action, interface, result) "
        "VALUES (CURRENT_TIMESTAMP, '899700000003', 'a@b.fr', :action, 'imap', 'ok')"
    )
    try:
        async with engine.begin() as conn:
            await conn.execute(insert, {"action": "select"})
        await migrate(fresh_db_url)
        longest = max(AuditAction, key=len).value
        async with engine.begin() as conn:
            await conn.execute(insert, {"action": longest})
        async with engine.connect() as conn:
            query = text("SELECT action FROM dlg_audit_events ORDER BY id")
            actions = list((await conn.execute(query)).scalars())
    finally:
        await engine.dispose()
    assert actions == ["select", longest]
    assert len(longest) > 16
