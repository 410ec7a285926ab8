"""Engines and schema migrations for the delegation database (SQLite or PostgreSQL).

The schema is owned by Alembic (`delegation/migrations/`), never by ``create_all``, so
an embedded SQLite file and a shared PostgreSQL follow the same upgrade path. Alembic
records our revision in its own table, ``dlg_alembic_version``, so other parts of the
project can keep their own migration chains in the same database.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, event, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "dlg_alembic_version"
_PG_MIGRATION_LOCK = 0x4C505344  # "LPSD": serialises concurrent `migrate` of several nodes
SQLITE_BUSY_TIMEOUT_MS = 5_000
SQLITE_MIGRATION_ATTEMPTS = 5


def async_url(url: str | URL) -> URL:
    """The URL with the project's async driver: aiosqlite for SQLite, asyncpg for PostgreSQL."""
    if isinstance(url, str) and url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.get_driver_name() != "aiosqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql" and parsed.get_driver_name() != "asyncpg":
        return parsed.set(drivername="postgresql+asyncpg")
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database backend {backend!r}: use SQLite or PostgreSQL")
    return parsed


def asyncpg_dsn(url: str | URL) -> str:
    """A plain ``postgresql://`` DSN that asyncpg accepts (for LISTEN/NOTIFY connections)."""
    parsed = async_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError("not a PostgreSQL URL")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def shown(url: str | URL) -> str:
    """The URL with its password masked: the only form a message or log may print."""
    return make_url(url).render_as_string(hide_password=True)


def is_postgresql(url: str | URL) -> bool:
    return async_url(url).get_backend_name() == "postgresql"


def create_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """An async engine; on SQLite with WAL (readers never block the writer), foreign keys
    on (SQLite leaves them off) and a busy timeout for writers of other processes."""
    parsed = async_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_async_engine(parsed, **kwargs)
    engine = create_async_engine(parsed, **kwargs)
    in_memory = parsed.database in (None, "", ":memory:")

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # before anything waits
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def alembic_config(
    script_location: Path = MIGRATIONS, version_table: str = VERSION_TABLE
) -> Config:
    """Alembic's configuration, built in code: the scripts ship inside the package."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("version_table", version_table)
    return config


def _sqlite_transactional_ddl(engine: AsyncEngine) -> None:
    """Make the driver emit ``BEGIN IMMEDIATE`` itself: Python's sqlite3 runs DDL outside any
    transaction, so a failed upgrade would leave half a schema; IMMEDIATE also takes the
    write lock first, so two processes migrating at once run one after the other."""

    @event.listens_for(engine.sync_engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


async def migrate(url: str | URL, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (idempotent; safe on several nodes)."""
    await run_migration(url, alembic_config(), revision)


async def schema_revision(url: str | URL) -> tuple[set[str], set[str]]:
    """The registry's revisions in the database, and this build's heads, read without
    changing anything: a command that only reads (a dry run) must not upgrade a schema
    older nodes still use."""
    config = alembic_config()
    heads = set(ScriptDirectory.from_config(config).get_heads())

    def current(connection: Connection) -> set[str]:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return set(context.get_current_heads())

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(current), heads
    finally:
        await engine.dispose()


async def run_migration(url: str | URL, config: Config, revision: str) -> None:
    """Upgrade the Alembic chain of `config` the safe way for every backend: under the one
    migration lock (PostgreSQL advisory lock / SQLite ``BEGIN IMMEDIATE``; Alembic's
    context is process-global, so no two chains may run at once, even in one process),
    retried when SQLite reports a lock it would not wait for. Shared with the gateway's
    own tables."""

    def upgrade(connection: Connection, revision: str) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        _sqlite_transactional_ddl(engine)
    try:
        for attempt in range(1, SQLITE_MIGRATION_ATTEMPTS + 1):
            try:
                async with engine.begin() as connection:
                    if connection.dialect.name == "postgresql":
                        await connection.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"),
                            {"key": _PG_MIGRATION_LOCK},
                        )
                    await connection.run_sync(upgrade, revision)
                return
            except OperationalError as exc:
                # SQLite answers "locked" at once, busy timeout or not, when nodes switching
                # a new file to WAL meet: the upgrade is transactional, so try again.
                locked = engine.dialect.name == "sqlite" and "locked" in str(exc.orig)
                if not locked or attempt == SQLITE_MIGRATION_ATTEMPTS:
                    raise
                await asyncio.sleep(0.1 * attempt)
    finally:
        await engine.dispose()
