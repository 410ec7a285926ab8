"""MSSanté non-conformities per day, software, interface and rule (`[mss] policy`).

Revision ID: gw0008
Revises: gw0007
Create Date: 2026-12-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "gw0008"
down_revision: str | Sequence[str] | None = "gw0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gw_usage_nonconformities",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("software", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("interface", sa.String(24), nullable=False),
        sa.Column("rule", sa.String(40), nullable=False),
        sa.Column("refused", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reported", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "day",
            "software",
            "version",
            "interface",
            "rule",
            name=op.f("pk_gw_usage_nonconformities"),
        ),
    )


def downgrade() -> None:
    op.drop_table("gw_usage_nonconformities")
