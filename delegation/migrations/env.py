"""Alembic environment of the delegation registry (see `delegation.alembic_env`)."""

from __future__ import annotations

from delegation.alembic_env import run_environment
from delegation.db import VERSION_TABLE
from delegation.models import Base

run_environment(Base.metadata, VERSION_TABLE)
