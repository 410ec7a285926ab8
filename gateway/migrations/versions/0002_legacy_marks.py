"""Per historic message: the content key its UID stands for, and the gateway's \\Deleted mark.

Revision ID: gw0002
Revises: gw0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "gw0002"
down_revision: str | Sequence[str] | None = "gw0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("gw_legacy_uids", sa.Column("content_key", sa.String(64), nullable=True))
    op.add_column(
        "gw_legacy_uids",
        sa.Column("deleted", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("gw_legacy_uids") as batch:
        batch.drop_column("deleted")
        batch.drop_column("content_key")
