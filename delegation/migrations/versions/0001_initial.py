"""Directory entries, mailboxes, delegations and audit events.

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = sa.text("revoked_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "dlg_directory_entries",
        sa.Column("idnat", sa.String(32), nullable=False),
        sa.Column("given_name", sa.String(128), nullable=False),
        sa.Column("family_name", sa.String(128), nullable=False),
        sa.Column("profession", sa.String(8), nullable=True),
        sa.Column("ecps_only", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("search_key", sa.String(290), nullable=False),
        sa.PrimaryKeyConstraint("idnat", name=op.f("pk_dlg_directory_entries")),
    )
    op.create_table(
        "dlg_directory_addresses",
        sa.Column("idnat", sa.String(32), nullable=False),
        sa.Column("address", sa.String(255), nullable=False),
        sa.ForeignKeyConstraint(
            ["idnat"],
            ["dlg_directory_entries.idnat"],
            name=op.f("fk_dlg_directory_addresses_idnat_dlg_directory_entries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("idnat", "address", name=op.f("pk_dlg_directory_addresses")),
    )
    op.create_table(
        "dlg_mailboxes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("type", sa.String(3), nullable=False),
        sa.Column("holder_idnat", sa.String(32), nullable=True),
        sa.Column("organisation", sa.String(128), nullable=True),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), server_default="active", nullable=False),
        sa.CheckConstraint("address = lower(address)", name=op.f("ck_dlg_mailboxes_address_lower")),
        sa.CheckConstraint(
            "type IN ('PER', 'ORG', 'APP', 'CAB')", name=op.f("ck_dlg_mailboxes_type")
        ),
        sa.CheckConstraint(
            "state IN ('active', 'migrating', 'migrated')", name=op.f("ck_dlg_mailboxes_state")
        ),
        sa.CheckConstraint(
            "(type = 'PER' AND holder_idnat IS NOT NULL)"
            " OR (type <> 'PER' AND organisation IS NOT NULL)",
            name=op.f("ck_dlg_mailboxes_holder"),
        ),
        sa.ForeignKeyConstraint(
            ["holder_idnat"],
            ["dlg_directory_entries.idnat"],
            name=op.f("fk_dlg_mailboxes_holder_idnat_dlg_directory_entries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dlg_mailboxes")),
        sa.UniqueConstraint("address", name=op.f("uq_dlg_mailboxes_address")),
    )
    op.create_index(
        op.f("ix_dlg_mailboxes_holder_idnat"), "dlg_mailboxes", ["holder_idnat"], unique=False
    )
    op.create_table(
        "dlg_delegations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("delegate_idnat", sa.String(32), nullable=False),
        sa.Column("may_read", sa.Boolean(), nullable=False),
        sa.Column("may_write", sa.Boolean(), nullable=False),
        sa.Column("may_send", sa.Boolean(), nullable=False),
        sa.Column("granted_by", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.Column("expiry_notified", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.CheckConstraint(
            "may_read OR may_write OR may_send", name=op.f("ck_dlg_delegations_rights")
        ),
        sa.ForeignKeyConstraint(
            ["delegate_idnat"],
            ["dlg_directory_entries.idnat"],
            name=op.f("fk_dlg_delegations_delegate_idnat_dlg_directory_entries"),
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["dlg_mailboxes.id"],
            name=op.f("fk_dlg_delegations_mailbox_id_dlg_mailboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dlg_delegations")),
    )
    op.create_index(
        op.f("ix_dlg_delegations_mailbox_id"), "dlg_delegations", ["mailbox_id"], unique=False
    )
    op.create_index(
        op.f("ix_dlg_delegations_delegate_idnat"),
        "dlg_delegations",
        ["delegate_idnat"],
        unique=False,
    )
    op.create_index("ix_dlg_delegations_expiry", "dlg_delegations", ["expires_at"], unique=False)
    op.create_index(
        "uq_dlg_delegations_open",
        "dlg_delegations",
        ["mailbox_id", "delegate_idnat"],
        unique=True,
        sqlite_where=_OPEN,
        postgresql_where=_OPEN,
    )
    op.create_table(
        "dlg_audit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_idnat", sa.String(32), nullable=False),
        sa.Column("mailbox", sa.String(255), nullable=False),
        sa.Column("delegation_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("interface", sa.String(8), nullable=False),
        sa.Column("software", sa.String(128), nullable=True),
        sa.Column("remote", sa.String(64), nullable=True),
        sa.Column("result", sa.String(64), nullable=False),
        sa.Column("detail", sa.String(255), nullable=True),
        sa.CheckConstraint(
            "interface IN ('imap', 'smtp', 'http', 'historic')",
            name=op.f("ck_dlg_audit_events_interface"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dlg_audit_events")),
    )
    op.create_index(
        "ix_dlg_audit_events_mailbox_at", "dlg_audit_events", ["mailbox", "at"], unique=False
    )
    op.create_index(
        "ix_dlg_audit_events_actor_at", "dlg_audit_events", ["actor_idnat", "at"], unique=False
    )


def downgrade() -> None:
    op.drop_table("dlg_audit_events")
    op.drop_index("uq_dlg_delegations_open", table_name="dlg_delegations")
    op.drop_table("dlg_delegations")
    op.drop_table("dlg_mailboxes")
    op.drop_table("dlg_directory_addresses")
    op.drop_table("dlg_directory_entries")
