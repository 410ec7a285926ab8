"""The historic platform's folders (UIDVALIDITY, UIDNEXT) and messageId ↔ UID mapping.

Revision ID: gw0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "gw0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gw_legacy_folders",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("bal", sa.String(255), nullable=False),
        sa.Column("folder_id", sa.BigInteger(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uidnext", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gw_legacy_folders")),
        sa.UniqueConstraint(
            "backend", "bal", "folder_id", name=op.f("uq_gw_legacy_folders_backend")
        ),
    )
    op.create_table(
        "gw_legacy_uids",
        sa.Column("folder", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["folder"],
            ["gw_legacy_folders.id"],
            name=op.f("fk_gw_legacy_uids_folder_gw_legacy_folders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("folder", "message_id", name=op.f("pk_gw_legacy_uids")),
        sa.UniqueConstraint("folder", "uid", name=op.f("uq_gw_legacy_uids_folder")),
    )


def downgrade() -> None:
    op.drop_table("gw_legacy_uids")
    op.drop_table("gw_legacy_folders")
