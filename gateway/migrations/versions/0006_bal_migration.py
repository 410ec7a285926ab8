"""Checkpoints of BAL copies between backends (gateway/bal_migration).

Revision ID: gw0006
Revises: gw0005
Create Date: 2026-12-14
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "gw0006"
down_revision: str | Sequence[str] | None = "gw0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gw_migration_copies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("bal", sa.String(255), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("messages", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("flag_changes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("deletions", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_error", sa.String(1000), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gw_migration_copies")),
        sa.UniqueConstraint("bal", "source", "target", name=op.f("uq_gw_migration_copies_bal")),
    )
    op.create_table(
        "gw_migration_folders",
        sa.Column("key", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("copy", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(1000), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("target", sa.String(1000), nullable=False),
        sa.ForeignKeyConstraint(
            ["copy"],
            ["gw_migration_copies.id"],
            name=op.f("fk_gw_migration_folders_copy_gw_migration_copies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_gw_migration_folders")),
        sa.UniqueConstraint(
            "copy", "name", "uidvalidity", name=op.f("uq_gw_migration_folders_copy")
        ),
    )
    op.create_table(
        "gw_migration_messages",
        sa.Column("folder", sa.Integer(), nullable=False),
        sa.Column("source_uid", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("target_uid", sa.BigInteger(), nullable=True),
        sa.Column("flags", sa.String(1000), server_default="", nullable=False),
        sa.Column("floor", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["folder"],
            ["gw_migration_folders.key"],
            name=op.f("fk_gw_migration_messages_folder_gw_migration_folders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("folder", "source_uid", name=op.f("pk_gw_migration_messages")),
    )


def downgrade() -> None:
    op.drop_table("gw_migration_messages")
    op.drop_table("gw_migration_folders")
    op.drop_table("gw_migration_copies")
