"""An index on the audit events' time: the retention purge takes the oldest first.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_dlg_audit_events_at", "dlg_audit_events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_dlg_audit_events_at", table_name="dlg_audit_events")
