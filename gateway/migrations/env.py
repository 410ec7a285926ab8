"""Alembic environment of the gateway's tables: runs on a connection handed in by
`gateway.db.migrate_gateway`, or, from the ``alembic`` command line, on an async engine of
its own (``-x url=...``). Only ``gw_`` tables are compared: the registry's tables live in
the same database under their own chain."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import Connection, pool

from delegation.db import async_url, create_engine
from gateway.db import VERSION_TABLE, metadata

config = context.config
target_metadata = metadata
version_table = config.get_main_option("version_table") or VERSION_TABLE


def _ours(name: str | None, type_: str, _parent: Any) -> bool:
    return type_ != "table" or (name or "").startswith("gw_")


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database URL: alembic -x url=sqlite:///path.db ...")
    return url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=version_table,
        include_name=_ours,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_offline() -> None:
    context.configure(
        url=async_url(_url()),
        target_metadata=target_metadata,
        version_table=version_table,
        include_name=_ours,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(url: str) -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


shared = config.attributes.get("connection")
if context.is_offline_mode():
    _run_offline()
elif isinstance(shared, Connection):
    _run(shared)
else:
    asyncio.run(_run_online(_url()))
