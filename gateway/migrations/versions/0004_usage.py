"""Who still uses what: daily counts and first/last-seen rows per software and interface.

Revision ID: gw0004
Revises: gw0003
Create Date: 2026-12-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "gw0004"
down_revision: str | Sequence[str] | None = "gw0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gw_usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("software", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("interface", sa.String(24), nullable=False),
        sa.Column("sessions", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("messages", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "day", "software", "version", "interface", name=op.f("pk_gw_usage_daily")
        ),
    )
    op.create_table(
        "gw_usage_seen",
        sa.Column("software", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("interface", sa.String(24), nullable=False),
        sa.Column("bal", sa.String(255), nullable=False),
        sa.Column("idnat", sa.String(32), nullable=False),
        sa.Column("platform", sa.String(64), nullable=False),
        sa.Column("delegated", sa.Boolean(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "software", "version", "interface", "bal", "idnat", name=op.f("pk_gw_usage_seen")
        ),
    )
    op.create_index(op.f("ix_gw_usage_seen_last_seen"), "gw_usage_seen", ["last_seen"])


def downgrade() -> None:
    op.drop_index(op.f("ix_gw_usage_seen_last_seen"), table_name="gw_usage_seen")
    op.drop_table("gw_usage_seen")
    op.drop_table("gw_usage_daily")
