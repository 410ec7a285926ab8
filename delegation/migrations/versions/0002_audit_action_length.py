"""Audit actions up to 32 characters ("folder-unsubscribe" did not fit in 16).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dlg_audit_events") as batch:
        batch.alter_column(
            "action", existing_type=sa.String(16), type_=sa.String(32), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("dlg_audit_events") as batch:
        batch.alter_column(
            "action", existing_type=sa.String(32), type_=sa.String(16), existing_nullable=False
        )
