"""The flags the gateway keeps for historic messages: keywords, \\Answered and \\Draft.

Revision ID: gw0003
Revises: gw0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "gw0003"
down_revision: str | Sequence[str] | None = "gw0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per flag of a UID row; deleting that row (message gone, moved, expunged,
    # folder forgotten) deletes its flags. A later rebuild of gw_legacy_uids on SQLite
    # (batch mode) must switch foreign keys off first, or the rows go with it.
    op.create_table(
        "gw_legacy_flags",
        sa.Column("folder", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("flag", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["folder", "message_id"],
            ["gw_legacy_uids.folder", "gw_legacy_uids.message_id"],
            name=op.f("fk_gw_legacy_flags_folder_gw_legacy_uids"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("folder", "message_id", "flag", name=op.f("pk_gw_legacy_flags")),
    )


def downgrade() -> None:
    op.drop_table("gw_legacy_flags")
