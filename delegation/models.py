"""Tables of the delegation room (SQLAlchemy 2). The service turns rows into frozen values.

Every table is prefixed ``dlg_`` so the gateway, the mock operator and this package can
share one database. Times are timezone-aware UTC in Python; `UTCDateTime` stores them
as ``timestamptz`` on PostgreSQL and as naive UTC text on SQLite (fixed-width ISO form,
so ordering and comparison in SQL stay correct), and gives them back aware.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

RIGHTS: frozenset[str] = frozenset({"read", "write", "send"})
MAILBOX_TYPES: tuple[str, ...] = ("PER", "ORG", "APP", "CAB")
MAILBOX_STATES: tuple[str, ...] = ("active", "migrating", "migrated")
INTERFACES: tuple[str, ...] = ("imap", "smtp", "http", "historic")

ADDRESS_LENGTH = 255
IDNAT_LENGTH = 32  # psc_auth.idnat.MAX_IDNAT_LENGTH
NAME_LENGTH = 128
REASON_LENGTH = 255
SOFTWARE_LENGTH = 128
REMOTE_LENGTH = 64
RESULT_LENGTH = 64
ACTION_LENGTH = 32  # the longest `AuditAction`, with room
MAX_ID = 2**31 - 1  # ids are 32-bit integer columns on every backend

# Stable constraint names, so Alembic can alter them later on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on every backend; a naive value is a bug and is refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"unexpected datetime value {value!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class DirectoryEntryRow(Base):
    """A person of the national directory who may hold a BAL or receive delegations."""

    __tablename__ = "dlg_directory_entries"

    idnat: Mapped[str] = mapped_column(String(IDNAT_LENGTH), primary_key=True)
    given_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    family_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    profession: Mapped[str | None] = mapped_column(String(8), nullable=True)
    ecps_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Lower-case, accent-free "family given idnat": portable case/accent-insensitive search.
    search_key: Mapped[str] = mapped_column(String(2 * NAME_LENGTH + IDNAT_LENGTH + 2))
    addresses: Mapped[list[DirectoryAddressRow]] = relationship(
        cascade="all, delete-orphan",
        lazy="raise",
        order_by="DirectoryAddressRow.address",
    )

    @property
    def display_name(self) -> str:
        return f"{self.given_name} {self.family_name}".strip() or self.idnat


class DirectoryAddressRow(Base):
    """A BAL address the directory lists for a person (possibly at another operator)."""

    __tablename__ = "dlg_directory_addresses"

    idnat: Mapped[str] = mapped_column(
        ForeignKey("dlg_directory_entries.idnat", ondelete="CASCADE"), primary_key=True
    )
    address: Mapped[str] = mapped_column(String(ADDRESS_LENGTH), primary_key=True)


class MailboxRow(Base):
    """A BAL this gateway serves: who holds it and which backend carries it today."""

    __tablename__ = "dlg_mailboxes"
    __table_args__ = (
        CheckConstraint("address = lower(address)", name="address_lower"),
        CheckConstraint("type IN ('PER', 'ORG', 'APP', 'CAB')", name="type"),
        CheckConstraint("state IN ('active', 'migrating', 'migrated')", name="state"),
        CheckConstraint(
            "(type = 'PER' AND holder_idnat IS NOT NULL)"
            " OR (type <> 'PER' AND organisation IS NOT NULL)",
            name="holder",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(ADDRESS_LENGTH), unique=True)
    type: Mapped[str] = mapped_column(String(3))
    holder_idnat: Mapped[str | None] = mapped_column(
        ForeignKey("dlg_directory_entries.idnat"), nullable=True, index=True
    )
    organisation: Mapped[str | None] = mapped_column(String(NAME_LENGTH), nullable=True)
    backend: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    holder: Mapped[DirectoryEntryRow | None] = relationship(lazy="raise")

    @property
    def holder_name(self) -> str:
        if self.holder is not None:
            return self.holder.display_name
        return self.organisation or self.holder_idnat or ""


class DelegationRow(Base):
    """Rights on a mailbox handed to a delegate.

    A row is *open* until revoked; an open row whose expiry passed is kept (not active) so
    the holder can see and renew it. At most one open row per (mailbox, delegate): a
    partial unique index enforces it, granting again updates that row.
    """

    __tablename__ = "dlg_delegations"
    __table_args__ = (
        CheckConstraint("may_read OR may_write OR may_send", name="rights"),
        Index(
            "uq_dlg_delegations_open",
            "mailbox_id",
            "delegate_idnat",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
        Index("ix_dlg_delegations_expiry", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("dlg_mailboxes.id", ondelete="CASCADE"), index=True
    )
    delegate_idnat: Mapped[str] = mapped_column(
        ForeignKey("dlg_directory_entries.idnat"), index=True
    )
    may_read: Mapped[bool] = mapped_column(Boolean)
    may_write: Mapped[bool] = mapped_column(Boolean)
    may_send: Mapped[bool] = mapped_column(Boolean)
    granted_by: Mapped[str] = mapped_column(String(IDNAT_LENGTH))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(IDNAT_LENGTH), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(REASON_LENGTH), nullable=True)
    # Set once the "expired" change event went out, so it goes out once across nodes.
    expiry_notified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    # Loaded explicitly by the service (selectinload): an implicit lazy load is a bug in async.
    mailbox: Mapped[MailboxRow] = relationship(lazy="raise")
    delegate: Mapped[DirectoryEntryRow] = relationship(lazy="raise")

    @property
    def rights(self) -> frozenset[str]:
        flags = (("read", self.may_read), ("write", self.may_write), ("send", self.may_send))
        return frozenset(name for name, allowed in flags if allowed)

    @rights.setter
    def rights(self, rights: frozenset[str]) -> None:
        self.may_read = "read" in rights
        self.may_write = "write" in rights
        self.may_send = "send" in rights


class AuditEventRow(Base):
    """Who opened or changed what, through which interface, and what we answered.

    Mailbox and delegation are plain values, not foreign keys: the trail outlives them and
    records refusals on addresses that do not exist.
    """

    __tablename__ = "dlg_audit_events"
    __table_args__ = (
        CheckConstraint("interface IN ('imap', 'smtp', 'http', 'historic')", name="interface"),
        Index("ix_dlg_audit_events_mailbox_at", "mailbox", "at"),
        Index("ix_dlg_audit_events_actor_at", "actor_idnat", "at"),
        Index("ix_dlg_audit_events_at", "at"),  # the retention purge, oldest first
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    actor_idnat: Mapped[str] = mapped_column(String(IDNAT_LENGTH))
    mailbox: Mapped[str] = mapped_column(String(ADDRESS_LENGTH))
    delegation_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    action: Mapped[str] = mapped_column(String(ACTION_LENGTH))
    interface: Mapped[str] = mapped_column(String(8))
    software: Mapped[str | None] = mapped_column(String(SOFTWARE_LENGTH), nullable=True)
    remote: Mapped[str | None] = mapped_column(String(REMOTE_LENGTH), nullable=True)
    result: Mapped[str] = mapped_column(String(RESULT_LENGTH))
    detail: Mapped[str | None] = mapped_column(String(REASON_LENGTH), nullable=True)
