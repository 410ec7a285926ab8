"""The historic platform's store, in its own SQLite file (tables `hist_*`, SQLAlchemy 2 async).

Kept the way Zimbra (the backend of Mailiz) keeps mail, because that is what the web
services expose and what the gateway must translate: structured messages rather than
raw MIME, and per-account integer item ids shared by folders and messages (system
folders 1 root, 2 Inbox, 3 Trash, 4 Junk, 5 Sent, 6 Drafts; user items from 257). Every
change to a message appends to a change log whose sequence numbers are the
`syncMessages` tokens. Writes are serialised by one lock (SQLite has one writer, and id
allocation must not race). Refusals are `HistoricError`s with the codes of DOMAIN.md.

The platform also has its own IMAP (`mock_operator.historic.imap`), over these same rows,
so a change made on one side is seen on the other. For it, as Zimbra does, the store
keeps each delivered message's original bytes (`hist_originals`; messages the web
services compose, sendMessage's copy and drafts, have none and are rebuilt), IMAP
keywords, an internal date, and per folder a UIDVALIDITY and UIDNEXT: a message gets the
next UID of the folder it enters, by delivery, a move or a copy. Every committed change
is told to `watchers` (the IMAP sessions' change signal). `create_schema` adds what an
older data directory lacks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

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
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gateway.mss.historic_mime import MAX_MIME_BYTES, ParsedMessage, parse_mime
from gateway.mss.historic_shapes import (
    FLAG_ORDER,
    JUNK,
    ROOT,
    AttachmentInfo,
    EmailEntry,
    Folder,
)
from gateway.mss.historic_ws import (
    ATTACHMENT_MISSING,
    CONTENT_TOO_LARGE,
    DRAFTS,
    FIELD_MISSING,
    FOLDER_DUPLICATE,
    FOLDER_MISSING,
    IMAP_FLAGS,
    INBOX,
    INVALID_FORMAT,
    MESSAGE_MISSING,
    SENT,
    TRASH,
    HistoricError,
)

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
# IMAP flags ↔ stored flags; \Seen is the absence of UNREAD, SENT_BY_ME has no IMAP twin.
MAX_FOLDER_NAME = 128
MAX_FOLDER_DEPTH = 10
MAX_FOLDERS = 1_000
MAX_IDS = 1_000
MAX_KEYWORDS = 64  # IMAP keywords per message
MAX_KEYWORD = 100  # characters of one keyword


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
    uidvalidity: Mapped[int] = mapped_column(Integer, default=1)
    uidnext: Mapped[int] = mapped_column(Integer, default=1)
    subscribed: Mapped[bool] = mapped_column(Boolean, default=True)


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
    imap_uid: Mapped[int] = mapped_column(Integer, default=0)  # in its folder
    received: Mapped[str] = mapped_column(String(40), default="")  # ISO 8601: INTERNALDATE
    keywords: Mapped[str] = mapped_column(Text, default="")  # IMAP keywords, space-separated


class AttachmentRow(_Base):
    __tablename__ = "hist_attachments"
    row_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_row: Mapped[int] = mapped_column(
        ForeignKey("hist_messages.row_id", ondelete="CASCADE"), index=True
    )
    part: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class OriginalRow(_Base):
    """The bytes a message was delivered as (SMTP, IMAP APPEND, seeding)."""

    __tablename__ = "hist_originals"
    message_row: Mapped[int] = mapped_column(
        ForeignKey("hist_messages.row_id", ondelete="CASCADE"), primary_key=True
    )
    raw: Mapped[bytes] = mapped_column(LargeBinary)


# Columns later versions added to tables an older data directory already has.
_ADDED_COLUMNS = {
    "hist_folders": ("uidvalidity", "uidnext", "subscribed"),
    "hist_messages": ("imap_uid", "received", "keywords"),
}


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
    uid: int = 0  # IMAP UID in its folder
    received: dt.datetime | None = None  # IMAP INTERNALDATE
    keywords: frozenset[str] = frozenset()  # IMAP keywords

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
class ImapFolder:
    id: int
    name: str
    parent_id: int
    subscribed: bool


@dataclass(frozen=True)
class ImapEntry:
    """One message of a folder as IMAP lists it; `size` is that of the original, None
    when there is none (the IMAP side rebuilds the message, and knows that size)."""

    uid: int
    row_id: int
    flags: frozenset[str]
    keywords: frozenset[str]
    received: dt.datetime
    size: int | None


@dataclass(frozen=True)
class ImapFolderState:
    uidvalidity: int
    uidnext: int
    entries: tuple[ImapEntry, ...]  # ascending UID


@dataclass(frozen=True)
class MessageSource:
    """What IMAP serves a message from: its original, else the message and its files."""

    row_id: int
    original: bytes | None
    message: StoredMessage
    attachments: dict[str, bytes] = field(default_factory=dict)


FlagChange = Callable[[frozenset[str], frozenset[str]], tuple[frozenset[str], frozenset[str]]]
"""(stored flags, keywords) -> the new ones: an IMAP STORE applied to one message."""


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
        uid=row.imap_uid,
        received=_received(row),
        keywords=frozenset(row.keywords.split()),
    )


def _received(row: MessageRow) -> dt.datetime:
    return _instant(row.received, row.date)


def _instant(received: str | None, date: int) -> dt.datetime:
    """The IMAP internal date; a row of an older store has none: its date stands in."""
    if received:
        return dt.datetime.fromisoformat(received)
    return dt.datetime.fromtimestamp(date, dt.UTC)


def _message_row(
    address: str,
    message_id: str,
    folder_id: int,
    conversation_id: str,
    parsed: ParsedMessage,
    flag_text: str,
    when: dt.datetime,
    received: dt.datetime,
    uid: int,
    keywords: str = "",
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
        imap_uid=uid,
        received=received.isoformat(),
        keywords=keywords,
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


def _check_keywords(keywords: Iterable[str]) -> str:
    wanted = set(keywords)
    if len(wanted) > MAX_KEYWORDS or any(
        not k or len(k) > MAX_KEYWORD or any(c.isspace() for c in k) for k in wanted
    ):
        raise HistoricError(CONTENT_TOO_LARGE, f"trop de mots-clés IMAP (> {MAX_KEYWORDS})")
    return " ".join(sorted(wanted))


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
        self._last_uidvalidity = 0
        self.watchers: list[Callable[[str], None]] = []
        """Called with the BAL's address after each committed change of its folders or
        messages, whoever made it (web services, IMAP, delivery)."""

    async def create_schema(self) -> None:
        """Create the tables; in an older data directory, add the columns it lacks and
        give its folders a UIDVALIDITY and its messages UIDs."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_Base.metadata.create_all)
            await conn.run_sync(_add_missing_columns)
        await self._number_unnumbered()

    async def _number_unnumbered(self) -> None:
        async with self._lock, self._db.begin() as db:
            await db.execute(
                update(MessageRow).where(MessageRow.keywords.is_(None)).values(keywords="")
            )
            await db.execute(
                update(FolderRow).where(FolderRow.subscribed.is_(None)).values(subscribed=True)
            )
            for row in (
                await db.scalars(select(FolderRow).where(FolderRow.uidvalidity.is_(None)))
            ).all():
                row.uidvalidity = self._uidvalidity()
                row.uidnext = row.uidnext or 1
                messages = (
                    await db.scalars(
                        select(MessageRow)
                        .where(
                            MessageRow.address == row.address,
                            MessageRow.folder_id == row.folder_id,
                        )
                        .order_by(MessageRow.row_id)
                    )
                ).all()
                for message in messages:
                    message.imap_uid = row.uidnext
                    row.uidnext += 1
                    if not message.received:
                        message.received = _received(message).isoformat()

    def _uidvalidity(self) -> int:
        """Increasing, 32-bit, never reused by this store (time-based, past the last one)."""
        value = max(int(time.time()), self._last_uidvalidity + 1) % 2**31 or 1
        self._last_uidvalidity = value
        return value

    def _changed(self, address: str) -> None:
        for watcher in self.watchers:
            watcher(address)

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
            db.add(self._folder_row(address, ROOT, 0, ""))
            for folder_id, name in SYSTEM_FOLDERS.items():
                db.add(self._folder_row(address, folder_id, ROOT, name))
        return True

    def _folder_row(self, address: str, folder_id: int, parent_id: int, name: str) -> FolderRow:
        return FolderRow(
            address=address,
            folder_id=folder_id,
            parent_id=parent_id,
            name=name,
            uidvalidity=self._uidvalidity(),
            uidnext=1,
            subscribed=True,
        )

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
            rows = await self._visible_folders(db, address)
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

    @staticmethod
    async def _visible_folders(db: AsyncSession, address: str) -> Sequence[FolderRow]:
        """Every folder of the BAL but the root, in id order: what both faces list."""
        query = (
            select(FolderRow)
            .where(FolderRow.address == address, FolderRow.folder_id != ROOT)
            .order_by(FolderRow.folder_id)
        )
        return (await db.scalars(query)).all()

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
            db.add(self._folder_row(address, folder_id, parent_id, name))
        self._changed(address)
        return Folder(folder_id, name, parent_id, 0, 0)

    async def rename_folder(self, address: str, folder_id: int, name: str) -> None:
        _check_folder_name(name)
        async with self._lock, self._db.begin() as db:
            folders = await self._folder_rows(db, address)
            row = self._get(folders, folder_id)
            _protected(folder_id)
            self._check_sibling(folders, row.parent_id, name, exclude=folder_id)
            row.name = name
        self._changed(address)

    async def move_folder(self, address: str, folder_id: int, parent_id: int) -> None:
        """Re-parent a folder (trashFolder is a move under Trash)."""
        await self.relocate_folder(address, folder_id, parent_id)

    async def relocate_folder(
        self, address: str, folder_id: int, parent_id: int, name: str | None = None
    ) -> None:
        """Re-parent a folder, and rename it at once when `name` is given (IMAP RENAME)."""
        if name is not None:
            _check_folder_name(name)
        async with self._lock, self._db.begin() as db:
            folders = await self._folder_rows(db, address)
            row = self._get(folders, folder_id)
            self._get(folders, parent_id)
            _protected(folder_id)
            moved = self.subtree({f: r.parent_id for f, r in folders.items()}, folder_id)
            if parent_id in moved:
                raise HistoricError(INVALID_FORMAT, "un dossier ne peut aller sous lui-même")
            new_name = row.name if name is None else name
            self._check_sibling(folders, parent_id, new_name, exclude=folder_id)
            height = max(self._depth(folders, f) - self._depth(folders, folder_id) for f in moved)
            if self._depth(folders, parent_id) + 1 + height > MAX_FOLDER_DEPTH:
                raise HistoricError(INVALID_FORMAT, "arborescence trop profonde")
            row.parent_id = parent_id
            row.name = new_name
        self._changed(address)

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
        self._changed(address)

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
        self._changed(address)

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
        await db.execute(delete(OriginalRow).where(OriginalRow.message_row.in_(row_ids)))
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
        keep_original: bool = True,
    ) -> StoredMessage:
        """Store an RFC 5322 message in a BAL's folder, in structured form, and its bytes
        as they came unless `keep_original` is false (what the web services compose).

        `replace_id` keeps the id of a message being replaced (a draft saved again);
        the conversation is the one of the message it replies to, when that is here.
        """
        parsed = parse_mime(raw, max_bytes=self.max_message_bytes)
        row, _ = await self._insert(
            address,
            parsed,
            folder_id,
            flags,
            received_at=received_at,
            replace_id=replace_id,
            conversation_id=conversation_id,
            original=raw if keep_original else None,
        )
        return _stored(row)

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
        """Store a message known only in structured form (it has no original)."""
        row, _ = await self._insert(
            address,
            parsed,
            folder_id,
            flags,
            received_at=received_at,
            replace_id=replace_id,
            conversation_id=conversation_id,
        )
        return _stored(row)

    async def _insert(
        self,
        address: str,
        parsed: ParsedMessage,
        folder_id: int,
        flags: Collection[str],
        *,
        received_at: dt.datetime | None = None,
        replace_id: str | None = None,
        conversation_id: str | None = None,
        original: bytes | None = None,
        keywords: Collection[str] = (),
    ) -> tuple[MessageRow, int]:
        """Add one message; returns its row and its folder's UIDVALIDITY."""
        address = address.lower()
        flag_text = _check_flags(flags)
        keyword_text = _check_keywords(keywords)
        received = received_at or dt.datetime.now(dt.UTC)
        when = parsed.date or received
        async with self._lock, self._db.begin() as db:
            folder = await self._message_folder(db, address, folder_id)
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
                received,
                folder.uidnext,
                keyword_text,
            )
            folder.uidnext += 1
            db.add(row)
            await db.flush()
            for attachment in parsed.attachments:
                db.add(
                    AttachmentRow(
                        message_row=row.row_id, part=attachment.part, data=attachment.data
                    )
                )
            if original is not None:
                db.add(OriginalRow(message_row=row.row_id, raw=original))
            self._log(db, address, [message_id], deleted=False)
            uidvalidity = folder.uidvalidity
        self._changed(address)
        return row, uidvalidity

    @staticmethod
    async def _message_folder(db: AsyncSession, address: str, folder_id: int) -> FolderRow:
        """The folder a message goes to (any but the root), or 41."""
        folder = None
        if folder_id != ROOT:
            folder = await db.scalar(
                select(FolderRow).where(
                    FolderRow.address == address, FolderRow.folder_id == folder_id
                )
            )
        if folder is None:
            raise HistoricError(FOLDER_MISSING, f"le dossier {folder_id} n'existe pas")
        return folder

    async def deliver_many(
        self, address: str, deliveries: Iterable[Delivery], folder_id: int = INBOX
    ) -> list[StoredMessage]:
        """Store many RFC 5322 messages in one folder in one transaction (seeding, benchmarks).

        Each message is stored as `deliver_mime` would store it (same rows, its original, a
        change log row each, the conversation of a message it replies to, in this batch
        or before), in the given order; all or none are stored. Parsing is done before
        the write lock is taken.
        """
        address = address.lower()
        parsed: list[tuple[ParsedMessage, str, dt.datetime, bytes]] = []
        for delivery in deliveries:
            message = parse_mime(delivery.raw, max_bytes=self.max_message_bytes)
            received = delivery.received_at or dt.datetime.now(dt.UTC)
            parsed.append((message, _check_flags(delivery.flags), received, delivery.raw))
        if not parsed:
            return []
        async with self._lock, self._db.begin() as db:
            folder = await self._message_folder(db, address, folder_id)
            account = await db.get(AccountRow, address)
            if account is None:
                raise HistoricError(24, f"BAL inconnue: {address}")
            first = account.next_id
            account.next_id = first + len(parsed)
            first_uid = folder.uidnext
            folder.uidnext = first_uid + len(parsed)
            conversations: dict[str, str] = {}  # header Message-ID → conversation, this batch
            rows: list[MessageRow] = []
            with db.no_autoflush:
                for offset, (message, flag_text, received, _) in enumerate(parsed):
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
                            message.date or received,
                            received,
                            first_uid + offset,
                        )
                    )
            db.add_all(rows)
            await db.flush()
            db.add_all(
                AttachmentRow(message_row=row.row_id, part=attachment.part, data=attachment.data)
                for row, (message, _, _, _) in zip(rows, parsed, strict=True)
                for attachment in message.attachments
            )
            db.add_all(
                OriginalRow(message_row=row.row_id, raw=raw)
                for row, (_, _, _, raw) in zip(rows, parsed, strict=True)
            )
            self._log(db, address, [row.message_id for row in rows], deleted=False)
        self._changed(address)
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
        self._changed(address)

    async def move_messages(
        self, address: str, message_ids: Collection[str], folder_id: int
    ) -> None:
        async with self._lock, self._db.begin() as db:
            folders = await self._folder_rows(db, address)
            if folder_id == ROOT:
                raise HistoricError(FOLDER_MISSING, "la racine ne contient pas de messages")
            target = self._get(folders, folder_id)
            rows = await self._rows(db, address, message_ids)
            for row in sorted(rows, key=lambda r: (r.folder_id, r.imap_uid)):
                if row.folder_id != folder_id:
                    row.folder_id = folder_id
                    row.imap_uid = target.uidnext  # entering a folder: its next UID
                    target.uidnext += 1
                    self._log(db, address, [row.message_id], deleted=False)
        self._changed(address)

    async def delete_messages(self, address: str, message_ids: Collection[str]) -> None:
        """Hard delete (updateMessages DELETE); all ids must exist (45)."""
        async with self._lock, self._db.begin() as db:
            rows = await self._rows(db, address, message_ids)
            await self._delete_where(db, address, MessageRow.row_id.in_([r.row_id for r in rows]))
        self._changed(address)

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

    # -- the platform's own IMAP (mock_operator/historic/imap.py) ----------------------

    async def imap_folders(self, address: str) -> list[ImapFolder]:
        """Every folder but the root, in id order."""
        async with self._db() as db:
            rows = await self._visible_folders(db, address)
        return [ImapFolder(r.folder_id, r.name, r.parent_id, r.subscribed) for r in rows]

    async def set_subscribed(self, address: str, folder_id: int, subscribed: bool) -> None:
        async with self._lock, self._db.begin() as db:
            self._get(await self._folder_rows(db, address), folder_id).subscribed = subscribed

    async def imap_state(self, address: str, folder_id: int) -> ImapFolderState:
        async with self._db() as db:
            folder = await self._message_folder(db, address, folder_id)
            rows = (
                await db.execute(
                    select(
                        MessageRow.imap_uid,
                        MessageRow.row_id,
                        MessageRow.flags,
                        MessageRow.keywords,
                        MessageRow.received,
                        MessageRow.date,
                        MessageRow.size,
                        OriginalRow.message_row,
                    )
                    .outerjoin(OriginalRow, OriginalRow.message_row == MessageRow.row_id)
                    .where(MessageRow.address == address, MessageRow.folder_id == folder_id)
                    .order_by(MessageRow.imap_uid)
                )
            ).all()
        return ImapFolderState(
            folder.uidvalidity,
            folder.uidnext,
            tuple(
                ImapEntry(
                    uid,
                    row_id,
                    frozenset(flags.split()),
                    frozenset(keywords.split()),
                    _instant(received, date),
                    size if kept is not None else None,
                )
                for uid, row_id, flags, keywords, received, date, size, kept in rows
            ),
        )

    async def imap_sources(
        self, address: str, folder_id: int, uids: Collection[int]
    ) -> dict[int, MessageSource]:
        """The messages of these UIDs (those that exist) with their originals, or with
        their attachments' bytes when they have none."""
        async with self._db() as db:
            await self._message_folder(db, address, folder_id)
            rows = (
                await db.execute(
                    select(MessageRow, OriginalRow.raw)
                    .outerjoin(OriginalRow, OriginalRow.message_row == MessageRow.row_id)
                    .where(
                        MessageRow.address == address,
                        MessageRow.folder_id == folder_id,
                        MessageRow.imap_uid.in_(list(uids)),
                    )
                )
            ).all()
            rebuilt = [row.row_id for row, raw in rows if raw is None]
            files: dict[int, dict[str, bytes]] = {}
            if rebuilt:
                for owner, part, data in (
                    await db.execute(
                        select(
                            AttachmentRow.message_row, AttachmentRow.part, AttachmentRow.data
                        ).where(AttachmentRow.message_row.in_(rebuilt))
                    )
                ).all():
                    files.setdefault(owner, {})[part] = data
        return {
            row.imap_uid: MessageSource(row.row_id, raw, _stored(row), files.get(row.row_id, {}))
            for row, raw in rows
        }

    async def imap_append(
        self,
        address: str,
        folder_id: int,
        raw: bytes,
        flags: Collection[str],
        keywords: Collection[str],
        received: dt.datetime,
    ) -> tuple[int, int]:
        """Store a message as IMAP APPEND gives it; returns (UIDVALIDITY, UID)."""
        parsed = parse_mime(raw, max_bytes=self.max_message_bytes)
        row, uidvalidity = await self._insert(
            address, parsed, folder_id, flags, received_at=received, original=raw, keywords=keywords
        )
        return uidvalidity, row.imap_uid

    async def imap_update_flags(
        self, address: str, folder_id: int, uids: Collection[int], change: FlagChange
    ) -> dict[int, tuple[frozenset[str], frozenset[str]]]:
        """Apply `change` to the flags and keywords of these UIDs (those that exist); the
        new ones by UID. A change the store cannot keep changes nothing at all."""
        result: dict[int, tuple[frozenset[str], frozenset[str]]] = {}
        async with self._lock, self._db.begin() as db:
            await self._message_folder(db, address, folder_id)
            rows = (
                await db.scalars(
                    select(MessageRow).where(
                        MessageRow.address == address,
                        MessageRow.folder_id == folder_id,
                        MessageRow.imap_uid.in_(list(uids)),
                    )
                )
            ).all()
            for row in rows:
                flags, keywords = frozenset(row.flags.split()), frozenset(row.keywords.split())
                new_flags, new_keywords = change(flags, keywords)
                if (new_flags, new_keywords) != (flags, keywords):
                    row.flags = _check_flags(new_flags)
                    row.keywords = _check_keywords(new_keywords)
                    self._log(db, address, [row.message_id], deleted=False)
                result[row.imap_uid] = (new_flags, new_keywords)
        self._changed(address)
        return result

    async def imap_transfer(
        self,
        address: str,
        folder_id: int,
        uids: Collection[int],
        destination: int,
        *,
        move: bool,
    ) -> tuple[int, list[tuple[int, int]]]:
        """Copy or move these UIDs (those that exist) to `destination`, in UID order; the
        destination's UIDVALIDITY and the (source, destination) UID pairs. A copy is a new
        message (a new id, its attachments and original duplicated); a move keeps its id."""
        pairs: list[tuple[int, int]] = []
        async with self._lock, self._db.begin() as db:
            await self._message_folder(db, address, folder_id)
            target = await self._message_folder(db, address, destination)
            rows = (
                await db.scalars(
                    select(MessageRow)
                    .where(
                        MessageRow.address == address,
                        MessageRow.folder_id == folder_id,
                        MessageRow.imap_uid.in_(list(uids)),
                    )
                    .order_by(MessageRow.imap_uid)
                )
            ).all()
            for row in rows:
                uid = target.uidnext
                target.uidnext += 1
                pairs.append((row.imap_uid, uid))
                if move:
                    row.folder_id, row.imap_uid = destination, uid
                    self._log(db, address, [row.message_id], deleted=False)
                else:
                    await self._duplicate(db, row, destination, uid)
            uidvalidity = target.uidvalidity
        self._changed(address)
        return uidvalidity, pairs

    async def _duplicate(self, db: AsyncSession, row: MessageRow, folder_id: int, uid: int) -> None:
        message_id = str(await self._next_id(db, row.address))
        copy = MessageRow(
            address=row.address,
            message_id=message_id,
            folder_id=folder_id,
            conversation_id=row.conversation_id,
            subject=row.subject,
            body_text=row.body_text,
            body_html=row.body_html,
            size=row.size,
            date=row.date,
            emails=row.emails,
            flags=row.flags,
            urgent=row.urgent,
            read_receipt=row.read_receipt,
            attachments=row.attachments,
            header_message_id=row.header_message_id,
            imap_uid=uid,
            received=row.received,
            keywords=row.keywords,
        )
        db.add(copy)
        await db.flush()
        for part, data in (
            await db.execute(
                select(AttachmentRow.part, AttachmentRow.data).where(
                    AttachmentRow.message_row == row.row_id
                )
            )
        ).all():
            db.add(AttachmentRow(message_row=copy.row_id, part=part, data=data))
        raw = await db.scalar(select(OriginalRow.raw).where(OriginalRow.message_row == row.row_id))
        if raw is not None:
            db.add(OriginalRow(message_row=copy.row_id, raw=raw))
        self._log(db, row.address, [message_id], deleted=False)

    async def imap_expunge(
        self, address: str, folder_id: int, uids: Collection[int] | None = None
    ) -> list[int]:
        """Delete the messages flagged DELETED (only among `uids` when given); their UIDs."""
        async with self._lock, self._db.begin() as db:
            await self._message_folder(db, address, folder_id)
            query = select(MessageRow.row_id, MessageRow.imap_uid, MessageRow.flags).where(
                MessageRow.address == address, MessageRow.folder_id == folder_id
            )
            if uids is not None:
                query = query.where(MessageRow.imap_uid.in_(list(uids)))
            gone = [
                (row_id, uid)
                for row_id, uid, flags in (await db.execute(query)).all()
                if "DELETED" in flags.split()
            ]
            if gone:
                await self._delete_where(
                    db, address, MessageRow.row_id.in_([row_id for row_id, _ in gone])
                )
        if gone:
            self._changed(address)
        return sorted(uid for _, uid in gone)

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
    """Historic flags of a message known by its IMAP flags (seeding, IMAP APPEND)."""
    flags: set[str] = set() if "\\Seen" in imap_flags else {"UNREAD"}
    for imap, historic in IMAP_FLAGS:
        if imap in imap_flags:
            flags.add(historic)
    if folder_id == SENT:
        flags.add("SENT_BY_ME")
    return frozenset(flags)


def imap_flags_of(flags: Collection[str], keywords: Collection[str]) -> frozenset[str]:
    """The IMAP flags of a message with these stored flags and keywords."""
    found = set(keywords)
    if "UNREAD" not in flags:
        found.add("\\Seen")
    found.update(imap for imap, historic in IMAP_FLAGS if historic in flags)
    return frozenset(found)


def _add_missing_columns(conn: Connection) -> None:
    """Add the columns of `_ADDED_COLUMNS` that tables made by an older version lack, as
    nullable columns (`HistoricStore.create_schema` then fills them in)."""
    inspector = inspect(conn)
    for table_name, names in _ADDED_COLUMNS.items():
        present = {column["name"] for column in inspector.get_columns(table_name)}
        table = _Base.metadata.tables[table_name]
        for name in names:
            if name not in present:
                kind = table.c[name].type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {table_name} ADD COLUMN {name} {kind}"))
