"""Alembic environment of the gateway's tables (see `delegation.alembic_env`). Only ``gw_``
tables are compared: the registry's tables live in the same database under their own
chain."""

from __future__ import annotations

from typing import Any

from delegation.alembic_env import run_environment
from gateway.db import VERSION_TABLE, metadata


def _ours(name: str | None, type_: str, _parent: Any) -> bool:
    return type_ != "table" or (name or "").startswith("gw_")


run_environment(metadata, VERSION_TABLE, include_name=_ours)
