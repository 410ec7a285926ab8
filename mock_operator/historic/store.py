"""The historic platform's store, in its own SQLite file (tables `hist_*`, SQLAlchemy 2 async).

Kept the way Zimbra (the backend of Mailiz) keeps mail, because that is what the web
services expose and what the gateway must translate: structured messages rather than
raw MIME, and per-account integer item ids shared by folders and messages (system
folders 1 root, 2 Inbox, 3 Trash, 4 Junk, 5 Sent, 6 Drafts; user items from 257). Every
change to a message appends to a change log whose sequence numbers are the
`syncMessages` tokens. Writes are serialised by one lock (SQLite has one writer, and id
allocation must not race). Refusals are `HistoricError`s with the codes of DOMAIN.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    case,
    delete,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mock_operator.historic.contract import (
    ATTACHMENT_MISSING,
    CONTENT_TOO_LARGE,
    DRAFTS,
    FIELD_MISSING,
    FOLDER_DUPLICATE,
    FOLDER_MISSING,
    INBOX,
    INVALID_FORMAT,
    MESSAGE_MISSING,
    SENT,
    TRASH,
    HistoricError,
)
from mock_operator.historic.mime import MAX_MIME_BYTES, ParsedMessage, parse_mime

ROOT = 1  # Zimbra's USER_ROOT: the parent of top-level folders, never listed
JUNK = 4
FIRST_USER_ID = 257
SYSTEM_FOLDERS: dict[int, str] = {
    INBOX: "Boîte de réception",
    TRASH: "Corbeille",
    JUNK: "Indésirables",
    SENT: "Envoyés",
    DRAFTS: "Brouillons",
}
# Flags kept in the store; ATTACHMENT and URGENT are derived from the message itself.
STORED_FLAGS = frozenset(
    {"UNREAD", "FLAGGED", "REPLIED", "SENT_BY_ME", "DELETED", "DRAFT", "FORWARDED"}
)
FLAG_ORDER = (
    "UNREAD",
    "FLAGGED",
    "ATTACHMENT",
    "REPLIED",
    "SENT_BY_ME",
    "DELETED",
    "DRAFT",
    "FORWARDED",
    "URGENT",
)
MAX_FOLDER_NAME = 128
MAX_FOLDER_DEPTH = 10
MAX_FOLDERS = 1_000
MAX_IDS = 1_000


class _Base(DeclarativeBase):
    pass


class AccountRow(_Base):
    __tablename__ = "hist_accounts"
    address: Mapped[str] = mapped_column(String(254), primary_key=True)
    holder_idnat: Mapped[str] = mapped_column(String(32), index=True)
    display_name: Mapped[str] = mapped_column(String(255))
    next_id: Mapped[int] = mapped_column(Integer, default=FIRST_USER_ID)


class FolderRow(_Base):
    __tablename__ = "hist_folders"
    __table_args__ = (UniqueConstraint("address", "folder_id"),)
    row_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(ForeignKey("hist_accounts.address"), index=True)
    folder_id: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(MAX_FOLDER_NAME))


class MessageRow(_Base):
    __tablename__ = "hist_messages"
    __table_args__ = (UniqueConstraint("address", "message_id"),)
    row_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(ForeignKey("hist_accounts.address"), index=True)
    message_id: Mapped[str] = mapped_column(String(32))
    folder_id: Mapped[int] = mapped_column(Integer, index=True)
    conversation_id: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(Text)
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text, nullable=True)
    size: Mapped[int] = mapped_column(Integer)
    date: Mapped[int] = mapped_column(Integer)  # epoch seconds, UTC
    emails: Mapped[str] = mapped_column(Text)  # JSON [[address, name, type], ...]
    flags: Mapped[str] = mapped_column(String(200), default="")
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    read_receipt: Mapped[bool] = mapped_column(Boolean, default=False)
    attachments: Mapped[str] = mapped_column(Text)  # JSON [[part, name, type, size], ...]
    header_message_id: Mapped[str | None] = mapped_column(String(998), nullable=True, index=True)


class AttachmentRow(_Base):
    __tablename__ = "hist_attachments"
    row_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_row: Mapped[int] = mapped_column(
        ForeignKey("hist_messages.row_id", ondelete="CASCADE"), index=True
    )
    part: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ChangeRow(_Base):
    __tablename__ = "hist_changes"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 - SQLAlchemy's declaration
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(254), index=True)
    message_id: Mapped[str] = mapped_column(String(32))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


@dataclass(frozen=True)
class Account:
    address: str
    holder_idnat: str
    display_name: str


@dataclass(frozen=True)
class Folder:
    id: int
    name: str
    parent_id: int
    unread: int
    total: int


@dataclass(frozen=True)
class EmailEntry:
    address: str
    name: str
    type: str  # FROM, TO, CC, BCC


@dataclass(frozen=True)
class AttachmentInfo:
    part: str
    file_name: str
    content_type: str
    size: int


@dataclass(frozen=True)
class StoredMessage:
    message_id: str
    folder_id: int
    conversation_id: str
    subject: str
    body_text: str
    body_html: str | None
    size: int
    date: dt.datetime
    emails: tuple[EmailEntry, ...]
    stored_flags: frozenset[str]
    urgent: bool
    read_receipt: bool
    attachments: tuple[AttachmentInfo, ...]
    header_message_id: str | None

    @property
    def flags(self) -> tuple[str, ...]:
        """All flags in a fixed order, the derived ATTACHMENT and URGENT included."""
        present = set(self.stored_flags)
        if self.attachments:
            present.add("ATTACHMENT")
        if self.urgent:
            present.add("URGENT")
        return tuple(flag for flag in FLAG_ORDER if flag in present)


@dataclass(frozen=True)
class Delivery:
    """One message for `HistoricStore.deliver_many`: the arguments of `deliver_mime`."""

    raw: bytes
    flags: Collection[str] = ("UNREAD",)
    received_at: dt.datetime | None = None


@dataclass(frozen=True)
class Changes:
    token: int
    modified: list[StoredMessage]
    deleted: list[str]


def _stored(row: MessageRow) -> StoredMessage:
    return StoredMessage(
        message_id=row.message_id,
        folder_id=row.folder_id,
        conversation_id=row.conversation_id,
        subject=row.subject,
        body_text=row.body_text,
        body_html=row.body_html,
        size=row.size,
        date=dt.datetime.fromtimestamp(row.date, dt.UTC),
        emails=tuple(EmailEntry(a, n, t) for a, n, t in json.loads(row.emails)),
        stored_flags=frozenset(row.flags.split()),
        urgent=row.urgent,
        read_receipt=row.read_receipt,
        attachments=tuple(AttachmentInfo(p, n, t, s) for p, n, t, s in json.loads(row.attachments)),
        header_message_id=row.header_message_id,
    )


def _message_row(
    address: str,
    message_id: str,
    folder_id: int,
    conversation_id: str,
    parsed: ParsedMessage,
    flag_text: str,
    when: dt.datetime,
) -> MessageRow:
    return MessageRow(
        address=address,
        message_id=message_id,
        folder_id=folder_id,
        conversation_id=conversation_id,
        subject=parsed.subject,
        body_text=parsed.body_text,
        body_html=parsed.body_html,
        size=parsed.size,
        date=int(when.timestamp()),
        emails=json.dumps([list(e) for e in parsed.emails], ensure_ascii=False),
        flags=flag_text,
        urgent=parsed.urgent,
        read_receipt=parsed.read_receipt,
        attachments=json.dumps(
            [[a.part, a.file_name, a.content_type, len(a.data)] for a in parsed.attachments],
            ensure_ascii=False,
        ),
        header_message_id=parsed.header_message_id,
    )


def _check_folder_name(name: str) -> None:
    if not name.strip():
        raise HistoricError(FIELD_MISSING, "nom de dossier manquant")
    if len(name) > MAX_FOLDER_NAME:
        raise HistoricError(CONTENT_TOO_LARGE, f"nom de dossier trop long (> {MAX_FOLDER_NAME})")
    if "/" in name or any(ord(c) < 32 for c in name) or name != name.strip():
        raise HistoricError(INVALID_FORMAT, f"nom de dossier invalide: {name!r}")


def _check_flags(flags: Iterable[str]) -> str:
    unknown = set(flags) - STORED_FLAGS
    if unknown:
        raise HistoricError(INVALID_FORMAT, f"indicateurs inconnus: {sorted(unknown)}")
    return " ".join(sorted(set(flags)))


def _protected(folder_id: int) -> None:
    if folder_id == ROOT or folder_id in SYSTEM_FOLDERS:
        raise HistoricError(INVALID_FORMAT, f"le dossier système {folder_id} ne peut être modifié")


class HistoricStore:
    """All BAL of the historic platform: accounts, folders, messages, change log."""

    def __init__(self, engine: AsyncEngine, *, max_message_bytes: int = MAX_MIME_BYTES) -> None:
        self.engine = engine
        self.max_message_bytes = max_message_bytes
        self._db = async_sessionmaker(engine, expire_on_commit=False)
        self._lock = asyncio.Lock()

    async def create_schema(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(_Base.metadata.create_all)

    # -- accounts ---------------------------------------------------------------------

    async def ensure_account(self, address: str, holder_idnat: str, display_name: str) -> bool:
        """Create the BAL with its system folders if missing; True when created."""
        address = address.lower()
        async with self._lock, self._db.begin() as db:
            if await db.get(AccountRow, address) is not None:
                return False
            db.add(
                AccountRow(
                    address=address,
                    holder_idnat=holder_idnat,
                    display_name=display_name,
                    next_id=FIRST_USER_ID,
                )
            )
            await db.flush()
            db.add(FolderRow(address=address, folder_id=ROOT, parent_id=0, name=""))
            for folder_id, name in SYSTEM_FOLDERS.items():
                db.add(FolderRow(address=address, folder_id=folder_id, parent_id=ROOT, name=name))
        return True

    async def account(self, address: str) -> Account | None:
        async with self._db() as db:
            row = await db.get(AccountRow, address.lower())
        return Account(row.address, row.holder_idnat, row.display_name) if row else None

    async def accounts(self, holder_idnat: str | None = None) -> list[Account]:
        query = select(AccountRow).order_by(AccountRow.address)
        if holder_idnat is not None:
            query = query.where(AccountRow.holder_idnat == holder_idnat)
        async with self._db() as db:
            rows = (await db.scalars(query)).all()
        return [Account(r.address, r.holder_idnat, r.display_name) for r in rows]

    # -- folders ----------------------------------------------------------------------

    async def folders(self, address: str) -> list[Folder]:
        """Every folder but the root, in id order, with unread and total counts."""
        async with self._db() as db:
            rows = (
                await db.scalars(
                    select(FolderRow)
                    .where(FolderRow.address == address, FolderRow.folder_id != ROOT)
                    .order_by(FolderRow.folder_id)
                )
            ).all()
            counts = {
                folder: (total, unread or 0)
                for folder, total, unread in (
                    await db.execute(
                        select(
                            MessageRow.folder_id,
                            func.count(),
                            func.sum(case((MessageRow.flags.contains("UNREAD"), 1), else_=0)),
                        )
                        .where(MessageRow.address == address)
                        .group_by(MessageRow.folder_id)
                    )
                ).all()
            }
        return [
            Folder(
                r.folder_id,
                r.name,
                r.parent_id,
                counts.get(r.folder_id, (0, 0))[1],
                counts.get(r.folder_id, (0, 0))[0],
            )
            for r in rows
        ]

    async def _folder_rows(self, db: AsyncSession, address: str) -> dict[int, FolderRow]:
        rows = (await db.scalars(select(FolderRow).where(FolderRow.address == address))).all()
        return {r.folder_id: r for r in rows}

    @staticmethod
    def _get(folders: dict[int, FolderRow], folder_id: int) -> FolderRow:
        row = folders.get(folder_id)
        if row is None:
            raise HistoricError(FOLDER_MISSING, f"le dossier {folder_id} n'existe pas")
        return row

    @staticmethod
    def _depth(folders: dict[int, FolderRow], folder_id: int) -> int:
        depth = 0
        while folder_id != ROOT and depth <= MAX_FOLDER_DEPTH + 1:
            folder_id = folders[folder_id].parent_id
            depth += 1
        return depth

    @staticmethod
    def subtree(parents: dict[int, int], folder_id: int) -> list[int]:
        """`folder_id` and its descendants, given child → parent."""
        result = [folder_id]
        for current in result:
            result.extend(f for f, p in parents.items() if p == current and f != current)
        return result

    @staticmethod
    def _check_sibling(
        folders: dict[int, FolderRow], parent_id: int, name: str, exclude: int | None = None
    ) -> None:
        for row in folders.values():
            if (
                row.parent_id == parent_id
                and row.folder_id != exclude
                and row.name.casefold() == name.casefold()
            ):
                raise HistoricError(FOLDER_DUPLICATE, f"un dossier « {name} » existe déjà ici")

    async def create_folder(self, address: str, parent_id: int, name: str) -> Folder:
        _check_folder_name(name)
        async with self._lock, self._db.begin() as db:
            folders = await self._folder_rows(db, address)
            self._get(folders, parent_id)
            if len(folders) >= MAX_FOLDERS:
                raise HistoricError(CONTENT_TOO_LARGE, "trop de dossiers")
            if self._depth(folders, parent_id) + 1 > MAX_FOLDER_DEPTH:
                raise HistoricError(INVALID_FORMAT, "arborescence trop profonde")
            self._check_sibling(folders, parent_id, name)
            folder_id = await self._next_id(db, address)
            db.add(FolderRow(address=address, folder_id=folder_id, parent_id=parent_id, name=name))
        return Folder(folder_id, name, parent_id, 0, 0)

    async def rename_folder(self, address: str, folder_id: int, name: str) -> None:
        _check_folder_name(name)
        async with self._lock, self._db.begin() as db:
            folders = await self._folder_rows(db, address)
            row = self._get(folders, folder_id)
            _protected(folder_id)
            self._check_sibling(folders, row.parent_id, name, exclude=folder_id)
            row.name = name

    async def move_folder(self, address: str, folder_id: int, parent_id: int) -> None:
        """Re-parent a folder (trashFolder is a move under Trash)."""
        async with self._lock, self._db.begin() as db:
            folders = await self._folder_rows(db, address)
            row = self._get(folders, folder_id)
            self._get(folders, parent_id)
            _protected(folder_id)
            moved = self.subtree({f: r.parent_id for f, r in folders.items()}, folder_id)
            if parent_id in moved:
                raise HistoricError(INVALID_FORMAT, "un dossier ne peut aller sous lui-même")
            self._check_sibling(folders, parent_id, row.name, exclude=folder_id)
            height = max(self._depth(folders, f) - self._depth(folders, folder_id) for f in moved)
            if self._depth(folders, parent_id) + 1 + height > MAX_FOLDER_DEPTH:
                raise HistoricError(INVALID_FORMAT, "arborescence trop profonde")
            row.parent_id = parent_id

    async def delete_folder(self, address: str, folder_id: int) -> None:
        """Delete a folder, its sub-folders and all their messages."""
        async with self._lock, self._db.begin() as db:
            folders = await self._folder_rows(db, address)
            self._get(folders, folder_id)
            _protected(folder_id)
            doomed = self.subtree({f: r.parent_id for f, r in folders.items()}, folder_id)
            await self._delete_where(db, address, MessageRow.folder_id.in_(doomed))
            await db.execute(
                delete(FolderRow).where(
                    FolderRow.address == address, FolderRow.folder_id.in_(doomed)
                )
            )

    async def empty_folder(self, address: str, folder_id: int) -> None:
        """Delete a folder's messages; emptying Trash also removes the folders inside it."""
        async with self._lock, self._db.begin() as db:
            folders = await self._folder_rows(db, address)
            self._get(folders, folder_id)
            if folder_id == ROOT:
                raise HistoricError(INVALID_FORMAT, "la racine ne peut être vidée")
            doomed = [folder_id]
            if folder_id == TRASH:
                doomed = self.subtree({f: r.parent_id for f, r in folders.items()}, TRASH)
            await self._delete_where(db, address, MessageRow.folder_id.in_(doomed))
            await db.execute(
                delete(FolderRow).where(
                    FolderRow.address == address,
                    FolderRow.folder_id.in_([f for f in doomed if f != folder_id]),
                )
            )

    async def folder_exists(self, address: str, folder_id: int) -> bool:
        async with self._db() as db:
            found = await db.scalar(
                select(FolderRow.row_id).where(
                    FolderRow.address == address, FolderRow.folder_id == folder_id
                )
            )
        return found is not None and folder_id != ROOT

    async def folder_parents(self, address: str) -> dict[int, int]:
        async with self._db() as db:
            rows = (
                await db.execute(
                    select(FolderRow.folder_id, FolderRow.parent_id).where(
                        FolderRow.address == address
                    )
                )
            ).all()
        return {f: p for f, p in rows}

    # -- messages ---------------------------------------------------------------------

    async def _next_id(self, db: AsyncSession, address: str) -> int:
        account = await db.get(AccountRow, address)
        if account is None:
            raise HistoricError(24, f"BAL inconnue: {address}")
        value = account.next_id
        account.next_id = value + 1
        return value

    @staticmethod
    def _log(db: AsyncSession, address: str, ids: Iterable[str], *, deleted: bool) -> None:
        for message_id in ids:
            db.add(ChangeRow(address=address, message_id=message_id, deleted=deleted))

    async def _delete_where(self, db: AsyncSession, address: str, *where: object) -> None:
        rows = (
            await db.execute(
                select(MessageRow.row_id, MessageRow.message_id).where(
                    MessageRow.address == address,
                    *where,  # type: ignore[arg-type]
                )
            )
        ).all()
        row_ids = [r for r, _ in rows]
        await db.execute(delete(AttachmentRow).where(AttachmentRow.message_row.in_(row_ids)))
        await db.execute(delete(MessageRow).where(MessageRow.row_id.in_(row_ids)))
        self._log(db, address, [m for _, m in rows], deleted=True)

    async def deliver_mime(
        self,
        address: str,
        raw: bytes,
        folder_id: int = INBOX,
        flags: Collection[str] = ("UNREAD",),
        *,
        received_at: dt.datetime | None = None,
        replace_id: str | None = None,
        conversation_id: str | None = None,
    ) -> StoredMessage:
        """Store an RFC 5322 message in a BAL's folder, in structured form.

        `replace_id` keeps the id of a message being replaced (a draft saved again);
        the conversation is the one of the message it replies to, when that is here.
        """
        parsed = parse_mime(raw, max_bytes=self.max_message_bytes)
        return await self.store_parsed(
            address,
            parsed,
            folder_id,
            flags,
            received_at=received_at,
            replace_id=replace_id,
            conversation_id=conversation_id,
        )

    async def store_parsed(
        self,
        address: str,
        parsed: ParsedMessage,
        folder_id: int,
        flags: Collection[str],
        *,
        received_at: dt.datetime | None = None,
        replace_id: str | None = None,
        conversation_id: str | None = None,
    ) -> StoredMessage:
        address = address.lower()
        flag_text = _check_flags(flags)
        when = parsed.date or received_at or dt.datetime.now(dt.UTC)
        async with self._lock, self._db.begin() as db:
            if folder_id == ROOT or not await db.scalar(
                select(FolderRow.row_id).where(
                    FolderRow.address == address, FolderRow.folder_id == folder_id
                )
            ):
                raise HistoricError(FOLDER_MISSING, f"le dossier {folder_id} n'existe pas")
            if replace_id is not None:
                await self._delete_where(db, address, MessageRow.message_id == replace_id)
                message_id = replace_id
            else:
                message_id = str(await self._next_id(db, address))
            if conversation_id is None and parsed.references:
                conversation_id = await db.scalar(
                    select(MessageRow.conversation_id)
                    .where(
                        MessageRow.address == address,
                        MessageRow.header_message_id.in_(list(parsed.references)),
                    )
                    .limit(1)
                )
            row = _message_row(
                address,
                message_id,
                folder_id,
                conversation_id or message_id,
                parsed,
                flag_text,
                when,
            )
            db.add(row)
            await db.flush()
            for attachment in parsed.attachments:
                db.add(
                    AttachmentRow(
                        message_row=row.row_id, part=attachment.part, data=attachment.data
                    )
                )
            self._log(db, address, [message_id], deleted=False)
        return _stored(row)

    async def deliver_many(
        self, address: str, deliveries: Iterable[Delivery], folder_id: int = INBOX
    ) -> list[StoredMessage]:
        """Store many RFC 5322 messages in one folder in one transaction (seeding, benchmarks).

        Each message is stored as `deliver_mime` would store it (same rows, a change log
        row each, the conversation of a message it replies to, in this batch or before),
        in the given order; all or none are stored. Parsing is done before the write lock
        is taken.
        """
        address = address.lower()
        parsed: list[tuple[ParsedMessage, str, dt.datetime]] = []
        for delivery in deliveries:
            message = parse_mime(delivery.raw, max_bytes=self.max_message_bytes)
            when = message.date or delivery.received_at or dt.datetime.now(dt.UTC)
            parsed.append((message, _check_flags(delivery.flags), when))
        if not parsed:
            return []
        async with self._lock, self._db.begin() as db:
            if folder_id == ROOT or not await db.scalar(
                select(FolderRow.row_id).where(
                    FolderRow.address == address, FolderRow.folder_id == folder_id
                )
            ):
                raise HistoricError(FOLDER_MISSING, f"le dossier {folder_id} n'existe pas")
            account = await db.get(AccountRow, address)
            if account is None:
                raise HistoricError(24, f"BAL inconnue: {address}")
            first = account.next_id
            account.next_id = first + len(parsed)
            conversations: dict[str, str] = {}  # header Message-ID → conversation, this batch
            rows: list[MessageRow] = []
            with db.no_autoflush:
                for offset, (message, flag_text, when) in enumerate(parsed):
                    message_id = str(first + offset)
                    conversation_id = None
                    if message.references:
                        conversation_id = next(
                            (conversations[r] for r in message.references if r in conversations),
                            None,
                        ) or await db.scalar(
                            select(MessageRow.conversation_id)
                            .where(
                                MessageRow.address == address,
                                MessageRow.header_message_id.in_(list(message.references)),
                            )
                            .limit(1)
                        )
                    conversation_id = conversation_id or message_id
                    if message.header_message_id is not None:
                        conversations.setdefault(message.header_message_id, conversation_id)
                    rows.append(
                        _message_row(
                            address,
                            message_id,
                            folder_id,
                            conversation_id,
                            message,
                            flag_text,
                            when,
                        )
                    )
            db.add_all(rows)
            await db.flush()
            db.add_all(
                AttachmentRow(message_row=row.row_id, part=attachment.part, data=attachment.data)
                for row, (message, _, _) in zip(rows, parsed, strict=True)
                for attachment in message.attachments
            )
            self._log(db, address, [row.message_id for row in rows], deleted=False)
        return [_stored(row) for row in rows]

    async def messages(
        self, address: str, folder_ids: Collection[int] | None = None
    ) -> list[StoredMessage]:
        query = select(MessageRow).where(MessageRow.address == address)
        if folder_ids is not None:
            query = query.where(MessageRow.folder_id.in_(list(folder_ids)))
        async with self._db() as db:
            rows = (await db.scalars(query.order_by(MessageRow.row_id))).all()
        return [_stored(r) for r in rows]

    async def message(self, address: str, message_id: str) -> StoredMessage:
        async with self._db() as db:
            row = await db.scalar(
                select(MessageRow).where(
                    MessageRow.address == address, MessageRow.message_id == message_id
                )
            )
        if row is None:
            raise HistoricError(MESSAGE_MISSING, f"le message {message_id} n'existe pas")
        return _stored(row)

    async def _rows(
        self, db: AsyncSession, address: str, message_ids: Collection[str]
    ) -> list[MessageRow]:
        wanted = list(dict.fromkeys(message_ids))
        if len(wanted) > MAX_IDS:
            raise HistoricError(CONTENT_TOO_LARGE, f"plus de {MAX_IDS} messages")
        rows = (
            await db.scalars(
                select(MessageRow).where(
                    MessageRow.address == address, MessageRow.message_id.in_(wanted)
                )
            )
        ).all()
        missing = set(wanted) - {r.message_id for r in rows}
        if missing:
            raise HistoricError(
                MESSAGE_MISSING, f"message(s) inexistant(s): {', '.join(sorted(missing))}"
            )
        return list(rows)

    async def update_flags(
        self,
        address: str,
        message_ids: Collection[str],
        *,
        add: Collection[str] = (),
        remove: Collection[str] = (),
    ) -> None:
        """Set and clear stored flags; all ids must exist (45), or nothing changes."""
        _check_flags([*add, *remove])
        async with self._lock, self._db.begin() as db:
            for row in await self._rows(db, address, message_ids):
                current = set(row.flags.split())
                new = (current | set(add)) - set(remove)
                if new != current:
                    row.flags = " ".join(sorted(new))
                    self._log(db, address, [row.message_id], deleted=False)

    async def move_messages(
        self, address: str, message_ids: Collection[str], folder_id: int
    ) -> None:
        async with self._lock, self._db.begin() as db:
            folders = await self._folder_rows(db, address)
            if folder_id == ROOT:
                raise HistoricError(FOLDER_MISSING, "la racine ne contient pas de messages")
            self._get(folders, folder_id)
            for row in await self._rows(db, address, message_ids):
                if row.folder_id != folder_id:
                    row.folder_id = folder_id
                    self._log(db, address, [row.message_id], deleted=False)

    async def delete_messages(self, address: str, message_ids: Collection[str]) -> None:
        """Hard delete (updateMessages DELETE); all ids must exist (45)."""
        async with self._lock, self._db.begin() as db:
            rows = await self._rows(db, address, message_ids)
            await self._delete_where(db, address, MessageRow.row_id.in_([r.row_id for r in rows]))

    async def attachment(
        self, address: str, message_id: str, part: str
    ) -> tuple[AttachmentInfo, bytes]:
        message = await self.message(address, message_id)
        info = next((a for a in message.attachments if a.part == part), None)
        async with self._db() as db:
            data = await db.scalar(
                select(AttachmentRow.data)
                .join(MessageRow, MessageRow.row_id == AttachmentRow.message_row)
                .where(
                    MessageRow.address == address,
                    MessageRow.message_id == message_id,
                    AttachmentRow.part == part,
                )
            )
        if info is None or data is None:
            raise HistoricError(
                ATTACHMENT_MISSING, f"la pièce jointe {part} du message {message_id} n'existe pas"
            )
        return info, data

    # -- change log -------------------------------------------------------------------

    async def changes_since(self, address: str, token: int | None) -> Changes:
        """What changed in a BAL after `token` (None: every message), and the next token.

        A message changed and then deleted is reported deleted only; a token from the
        future (another store, a reset) is refused so the client starts over.
        """
        async with self._db() as db:
            now = await db.scalar(select(func.max(ChangeRow.seq))) or 0
            if token is None:
                rows = (
                    await db.scalars(
                        select(MessageRow)
                        .where(MessageRow.address == address)
                        .order_by(MessageRow.row_id)
                    )
                ).all()
                return Changes(now, [_stored(r) for r in rows], [])
            if token > now or token < 0:
                raise HistoricError(INVALID_FORMAT, "jeton de synchronisation inconnu")
            touched = list(
                dict.fromkeys(
                    (
                        await db.scalars(
                            select(ChangeRow.message_id)
                            .where(
                                ChangeRow.address == address,
                                ChangeRow.seq > token,
                                ChangeRow.seq <= now,
                            )
                            .order_by(ChangeRow.seq)
                        )
                    ).all()
                )
            )
            present = {
                r.message_id: r
                for r in (
                    await db.scalars(
                        select(MessageRow).where(
                            MessageRow.address == address, MessageRow.message_id.in_(touched)
                        )
                    )
                ).all()
            }
        return Changes(
            now,
            [_stored(present[m]) for m in touched if m in present],
            [m for m in touched if m not in present],
        )


def flags_from_imap(imap_flags: Collection[str], folder_id: int) -> frozenset[str]:
    """Historic flags of a message known by its IMAP flags (seeding, migration tests)."""
    flags: set[str] = set() if "\\Seen" in imap_flags else {"UNREAD"}
    for imap, historic in (
        ("\\Flagged", "FLAGGED"),
        ("\\Answered", "REPLIED"),
        ("\\Deleted", "DELETED"),
        ("\\Draft", "DRAFT"),
        ("$Forwarded", "FORWARDED"),
    ):
        if imap in imap_flags:
            flags.add(historic)
    if folder_id == SENT:
        flags.add("SENT_BY_ME")
    return frozenset(flags)
