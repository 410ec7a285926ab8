"""Historic message ids numbered per BAL (a BAL leaving the historic platform keeps the
platform's own messageIds, which that platform numbers per BAL).

The row key of `gw_historic_messages` stays its primary key; the id LPS see becomes
`message_id`, unique per (backend, BAL). Rows made before keep their key as their id, and
each BAL's next id starts above every id issued so far, so no id LPS hold names another
message.

Revision ID: gw0007
Revises: gw0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "gw0007"
down_revision: str | Sequence[str] | None = "gw0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("gw_historic_messages") as batch:
        batch.add_column(sa.Column("message_id", sa.BigInteger(), nullable=True))
    op.execute("UPDATE gw_historic_messages SET message_id = id")
    with op.batch_alter_table("gw_historic_messages") as batch:
        batch.alter_column("message_id", existing_type=sa.BigInteger(), nullable=False)
        batch.create_unique_constraint(
            "uq_gw_historic_messages_backend_bal_message_id", ["backend", "bal", "message_id"]
        )
    with op.batch_alter_table("gw_historic_sync") as batch:
        batch.add_column(sa.Column("next_id", sa.BigInteger(), server_default="1", nullable=False))
    op.execute(
        "UPDATE gw_historic_sync SET next_id = "
        "(SELECT COALESCE(MAX(id), 0) + 1 FROM gw_historic_messages)"
    )


def downgrade() -> None:
    """Refused once an id differs from its row key (given per BAL, or adopted from the
    historic platform): without `message_id` the LPS's ids would name other messages."""
    differing = op.get_bind().scalar(
        sa.text("SELECT COUNT(*) FROM gw_historic_messages WHERE message_id <> id")
    )
    if differing:
        raise RuntimeError(
            f"{differing} historic message ids are not their row keys: downgrading past "
            "gw0007 would give LPS other messages under the ids they hold"
        )
    with op.batch_alter_table("gw_historic_sync") as batch:
        batch.drop_column("next_id")
    with op.batch_alter_table("gw_historic_messages") as batch:
        batch.drop_constraint("uq_gw_historic_messages_backend_bal_message_id", type_="unique")
        batch.drop_column("message_id")
