"""What an Alembic ``env.py`` does, once: the registry's chain and the gateway's both run it,
on a connection handed in by their migrate function, or, from the ``alembic`` command
line, on an async engine of their own (``-x url=...``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from alembic import context
from sqlalchemy import Connection, MetaData, pool

from delegation.db import async_url, create_engine

IncludeName = Callable[[str | None, str, Any], bool]


def run_environment(
    metadata: MetaData, default_version_table: str, include_name: IncludeName | None = None
) -> None:
    config = context.config
    version_table = config.get_main_option("version_table") or default_version_table
    options: dict[str, Any] = {
        "target_metadata": metadata,
        "version_table": version_table,
    }
    if include_name is not None:
        options["include_name"] = include_name

    def url() -> str:
        given = context.get_x_argument(as_dictionary=True).get("url")
        given = given or config.get_main_option("sqlalchemy.url")
        if not given:
            raise SystemExit("give the database URL: alembic -x url=sqlite:///path.db ...")
        return given

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying
            compare_type=True,
            **options,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run_online(database: str) -> None:
        engine = create_engine(database, poolclass=pool.NullPool)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(run)
                await connection.commit()
        finally:
            await engine.dispose()

    shared = config.attributes.get("connection")
    if context.is_offline_mode():
        context.configure(
            url=async_url(url()),
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            **options,
        )
        with context.begin_transaction():
            context.run_migrations()
    elif isinstance(shared, Connection):
        run(shared)
    else:
        asyncio.run(run_online(url()))
