"""Historic message and folder ids of BAL on modern platforms, and their change counters
(the historic web services served by the gateway over any platform).

Revision ID: gw0005
Revises: gw0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "gw0005"
down_revision: str | Sequence[str] | None = "gw0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gw_historic_folders",
        sa.Column("key", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("bal", sa.String(255), nullable=False),
        sa.Column("name", sa.String(1000), nullable=False),
        sa.Column("folder_id", sa.BigInteger(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=True),
        sa.Column("highestmodseq", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_gw_historic_folders")),
        sa.UniqueConstraint("backend", "bal", "name", name=op.f("uq_gw_historic_folders_backend")),
        sa.UniqueConstraint(
            "backend", "bal", "folder_id", name="uq_gw_historic_folders_backend_folder_id"
        ),
    )
    op.create_table(
        "gw_historic_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("bal", sa.String(255), nullable=False),
        sa.Column("folder", sa.Integer(), nullable=True),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("flags", sa.String(1000), server_default="", nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("gone", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gw_historic_messages")),
        sa.UniqueConstraint(
            "folder", "uidvalidity", "uid", name=op.f("uq_gw_historic_messages_folder")
        ),
    )
    op.create_index(
        "ix_gw_historic_messages_bal_version",
        "gw_historic_messages",
        ["backend", "bal", "version"],
    )
    op.create_table(
        "gw_historic_sync",
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("bal", sa.String(255), nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False),
        sa.Column("floor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("backend", "bal", name=op.f("pk_gw_historic_sync")),
    )


def downgrade() -> None:
    op.drop_table("gw_historic_sync")
    op.drop_index("ix_gw_historic_messages_bal_version", table_name="gw_historic_messages")
    op.drop_table("gw_historic_messages")
    op.drop_table("gw_historic_folders")
