"""The gateway's own tables, in the delegation registry's database, and their migrations.

The gateway keeps a little state of its own (the UID mapping of the historic platform's
messages, and the flags it keeps for them). It lives in the registry's database (SQLite
by default, PostgreSQL in production) so that a deployment has one database to run and
back up, but under its own Alembic environment (`gateway/migrations/`, version table
``gw_alembic_version``, tables prefixed ``gw_``): the registry's migrations never see
these tables and the two chains upgrade independently, in any order, on the same
database.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    URL,
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    false,
)

from delegation.db import alembic_config, run_migration
from delegation.models import UTCDateTime

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "gw_alembic_version"

BACKEND_LENGTH = 64
ADDRESS_LENGTH = 255
HISTORIC_ID_LENGTH = 64
FLAG_LENGTH = 64  # a keyword's longest, in octets (atoms are ASCII)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

legacy_folders = Table(
    "gw_legacy_folders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("backend", String(BACKEND_LENGTH), nullable=False),
    Column("bal", String(ADDRESS_LENGTH), nullable=False),
    Column("folder_id", BigInteger, nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),  # 1 .. 2**32-1: not an INTEGER
    Column("uidnext", BigInteger, nullable=False),
    UniqueConstraint("backend", "bal", "folder_id"),
)
"""One historic folder of one BAL of one backend, with its IMAP UIDVALIDITY and UIDNEXT."""

legacy_uids = Table(
    "gw_legacy_uids",
    metadata,
    Column(
        "folder",
        Integer,
        ForeignKey("gw_legacy_folders.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("message_id", String(HISTORIC_ID_LENGTH), primary_key=True),
    Column("uid", BigInteger, nullable=False),
    Column("content_key", String(64), nullable=True),  # None: rows older than gw0002
    Column("deleted", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("folder", "uid"),
)
"""historic messageId ↔ IMAP UID within a folder (unique both ways), with the content the
UID stands for (`content_key`: a replaced draft keeps its messageId, not its UID) and the
``\\Deleted`` mark, which the historic services cannot hold."""

legacy_flags = Table(
    "gw_legacy_flags",
    metadata,
    Column("folder", Integer, primary_key=True),
    Column("message_id", String(HISTORIC_ID_LENGTH), primary_key=True),
    Column("flag", String(FLAG_LENGTH), primary_key=True),
    ForeignKeyConstraint(
        ["folder", "message_id"],
        ["gw_legacy_uids.folder", "gw_legacy_uids.message_id"],
        ondelete="CASCADE",
    ),
)
"""The other flags the gateway keeps for a historic message, one row each: keywords, and
``\\Answered`` / ``\\Draft`` where the platform does not say REPLIED / DRAFT itself. They go
with the message's UID row (gone, moved away, expunged)."""


SOFTWARE_LENGTH = 64  # gateway.usage cleans and cuts what clients say to these
VERSION_LENGTH = 32
INTERFACE_LENGTH = 24
IDNAT_LENGTH = 32

usage_daily = Table(
    "gw_usage_daily",
    metadata,
    Column("day", Date, primary_key=True),
    Column("software", String(SOFTWARE_LENGTH), primary_key=True),
    Column("version", String(VERSION_LENGTH), primary_key=True),
    Column("interface", String(INTERFACE_LENGTH), primary_key=True),
    Column("sessions", BigInteger, nullable=False, server_default="0"),
    Column("messages", BigInteger, nullable=False, server_default="0"),
)
"""Sessions and messages per UTC day, software (and version) and interface: the counts
of any period are a sum over its days."""

usage_seen = Table(
    "gw_usage_seen",
    metadata,
    Column("software", String(SOFTWARE_LENGTH), primary_key=True),
    Column("version", String(VERSION_LENGTH), primary_key=True),
    Column("interface", String(INTERFACE_LENGTH), primary_key=True),
    Column("bal", String(ADDRESS_LENGTH), primary_key=True),
    Column("idnat", String(IDNAT_LENGTH), primary_key=True),
    Column("platform", String(BACKEND_LENGTH), nullable=False),
    Column("delegated", Boolean, nullable=False),
    Column("first_seen", UTCDateTime(), nullable=False),
    Column("last_seen", UTCDateTime(), nullable=False, index=True),
)
"""Who reached which BAL with which software, first and last: the BAL and persons of a
period since a date are exactly the rows last seen since then (platform and delegated
as of the last access)."""

RULE_LENGTH = 40  # gateway.mss.rules.RULES: the longest id is 24 characters

usage_nonconformities = Table(
    "gw_usage_nonconformities",
    metadata,
    Column("day", Date, primary_key=True),
    Column("software", String(SOFTWARE_LENGTH), primary_key=True),
    Column("version", String(VERSION_LENGTH), primary_key=True),
    Column("interface", String(INTERFACE_LENGTH), primary_key=True),
    Column("rule", String(RULE_LENGTH), primary_key=True),
    Column("refused", BigInteger, nullable=False, server_default="0"),
    Column("reported", BigInteger, nullable=False, server_default="0"),
)
"""MSSanté rules broken per UTC day, software (and version), interface and rule id:
`refused` under `[mss] policy = "enforce"` (or a sender-identity or safety rule),
`reported` when the policy let the message through."""


async def migrate_gateway(url: str | URL, revision: str = "head") -> None:
    """Bring the gateway's tables at `url` to `revision` (idempotent; safe on several nodes,
    and beside `delegation.migrate` on the same database)."""
    await run_migration(url, alembic_config(MIGRATIONS, VERSION_TABLE), revision)


# -- the historic interfaces served over any platform (gateway/legacy_front) ----------------

FOLDER_NAME_LENGTH = 1_000  # a folder's full "/"-separated path, decoded
FLAGS_LENGTH = 1_000

historic_folders = Table(
    "gw_historic_folders",
    metadata,
    Column("key", Integer, primary_key=True, autoincrement=True),
    Column("backend", String(BACKEND_LENGTH), nullable=False),
    Column("bal", String(ADDRESS_LENGTH), nullable=False),
    Column("name", String(FOLDER_NAME_LENGTH), nullable=False),
    Column("folder_id", BigInteger, nullable=False),
    Column("uidvalidity", BigInteger, nullable=True),  # as of the last CONDSTORE sync
    Column("highestmodseq", BigInteger, nullable=True),
    UniqueConstraint("backend", "bal", "name"),
    UniqueConstraint(
        "backend", "bal", "folder_id", name="uq_gw_historic_folders_backend_folder_id"
    ),
)
"""A folder of a BAL on a modern platform and its historic folder id (the well-known ids
for the special-use folders, stable integers from 257 for the others; a rename keeps it),
and, on a backend with CONDSTORE, its UIDVALIDITY and HIGHESTMODSEQ at the last sync."""

historic_messages = Table(
    "gw_historic_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # the row's key
    Column("backend", String(BACKEND_LENGTH), nullable=False),
    Column("bal", String(ADDRESS_LENGTH), nullable=False),
    Column("message_id", BigInteger, nullable=False),  # the historic messageId, per BAL
    Column("folder", Integer, nullable=True),  # gw_historic_folders.key; None once gone
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("flags", String(FLAGS_LENGTH), nullable=False, server_default=""),
    Column("version", BigInteger, nullable=False),
    Column("gone", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("folder", "uidvalidity", "uid"),
    UniqueConstraint(
        "backend", "bal", "message_id", name="uq_gw_historic_messages_backend_bal_message_id"
    ),
    Index("ix_gw_historic_messages_bal_version", "backend", "bal", "version"),
)
"""historic messageId ↔ (BAL, folder, UIDVALIDITY, UID) of a message on a modern platform
(ids numbered per BAL, as the historic platform numbers them: a BAL that left it keeps them),
with what syncMessages compares (its flags as last seen, the BAL's change counter when it
last changed, and whether it is gone: a tombstone until pruned)."""

historic_sync = Table(
    "gw_historic_sync",
    metadata,
    Column("backend", String(BACKEND_LENGTH), primary_key=True),
    Column("bal", String(ADDRESS_LENGTH), primary_key=True),
    Column("counter", BigInteger, nullable=False),
    Column("floor", BigInteger, nullable=False),
    Column("next_id", BigInteger, nullable=False, server_default="1"),
)
"""A BAL's change counter (syncMessages' token), the oldest token still answerable
exactly (tombstones older than it were pruned), and the BAL's next message id (never
given twice, even once a tombstone is pruned)."""


# -- moving BAL between backends (gateway/bal_migration) ---------------------------------------

STATE_LENGTH = 16
ERROR_LENGTH = 1_000
DIGEST_LENGTH = 64  # SHA-256, hexadecimal

migration_copies = Table(
    "gw_migration_copies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("bal", String(ADDRESS_LENGTH), nullable=False),
    Column("source", String(BACKEND_LENGTH), nullable=False),
    Column("target", String(BACKEND_LENGTH), nullable=False),
    Column("state", String(STATE_LENGTH), nullable=False),
    Column("messages", BigInteger, nullable=False, server_default="0"),
    Column("bytes", BigInteger, nullable=False, server_default="0"),
    Column("flag_changes", BigInteger, nullable=False, server_default="0"),
    Column("deletions", BigInteger, nullable=False, server_default="0"),
    Column("last_error", String(ERROR_LENGTH), nullable=True),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("verified_at", UTCDateTime(), nullable=True),
    UniqueConstraint("bal", "source", "target"),
)
"""One BAL's copy from one backend to another: its state (planned, copying, copied,
failed, verified, different), what the runs did in total, the last error, when."""

migration_folders = Table(
    "gw_migration_folders",
    metadata,
    Column("key", Integer, primary_key=True, autoincrement=True),
    Column(
        "copy", Integer, ForeignKey("gw_migration_copies.id", ondelete="CASCADE"), nullable=False
    ),
    Column("name", String(FOLDER_NAME_LENGTH), nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("target", String(FOLDER_NAME_LENGTH), nullable=False),
    UniqueConstraint("copy", "name", "uidvalidity"),
)
"""A source folder (as of one UIDVALIDITY) of a copy, and the target folder it goes to."""

migration_messages = Table(
    "gw_migration_messages",
    metadata,
    Column(
        "folder",
        Integer,
        ForeignKey("gw_migration_folders.key", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("source_uid", BigInteger, primary_key=True),
    Column("digest", String(DIGEST_LENGTH), nullable=False),
    Column("target_uid", BigInteger, nullable=True),  # None: an intent (APPEND under way)
    Column("flags", String(FLAGS_LENGTH), nullable=False, server_default=""),
    Column("floor", BigInteger, nullable=False, server_default="0"),
)
"""A source message and its copy's target UID, with the flags copied; a row without a
target UID is an intent written before the APPEND (every target UID then was <= floor)."""
