"""The modern platform's `MailStore`, persisted in SQLite (SQLAlchemy 2 async).

Messages are kept as raw RFC 5322 bytes with their flags, internal date and UID. UIDs
and UIDVALIDITY live in the database, so they survive restarts. Writes are serialised by
one lock per platform: SQLite has one writer anyway, and UID allocation must not race.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Collection, Sequence

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gateway.imap.codes import Code
from gateway.imap.mailstore import (
    DELIMITER,
    ChangeHub,
    CopyResult,
    FlagMode,
    FolderExists,
    FolderInfo,
    FolderNotFound,
    FolderState,
    MessageGone,
    MessageMeta,
    SpecialUse,
    StoreError,
)

DEFAULT_FOLDERS: tuple[tuple[str, SpecialUse | None], ...] = (
    ("INBOX", None),
    ("Envoyés", "\\Sent"),
    ("Brouillons", "\\Drafts"),
    ("Corbeille", "\\Trash"),
    ("Indésirables", "\\Junk"),
)
MAX_FOLDER_NAME = 255
MAX_FOLDERS = 1_000
MAX_UID = 2**32 - 1


class ImportConflict(StoreError):
    """An import the folder's state forbids (a UIDVALIDITY for a folder holding messages, a
    UID not above every UID the folder ever gave): the operator API's 409."""

    def __init__(self, text: str) -> None:
        super().__init__(text, Code.CANNOT)


class _Base(DeclarativeBase):
    pass


class MailboxRow(_Base):
    __tablename__ = "mm_mailboxes"
    address: Mapped[str] = mapped_column(String(255), primary_key=True)
    holder_idnat: Mapped[str] = mapped_column(String(32), index=True)
    display_name: Mapped[str] = mapped_column(String(255))


class FolderRow(_Base):
    __tablename__ = "mm_folders"
    __table_args__ = (UniqueConstraint("address", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(ForeignKey("mm_mailboxes.address"), index=True)
    name: Mapped[str] = mapped_column(String(MAX_FOLDER_NAME))
    special_use: Mapped[str | None] = mapped_column(String(16), nullable=True)
    subscribed: Mapped[bool] = mapped_column(Boolean, default=True)
    uidvalidity: Mapped[int] = mapped_column(Integer)
    uidnext: Mapped[int] = mapped_column(Integer, default=1)


class MessageRow(_Base):
    __tablename__ = "mm_messages"
    __table_args__ = (UniqueConstraint("folder_id", "uid"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    folder_id: Mapped[int] = mapped_column(
        ForeignKey("mm_folders.id", ondelete="CASCADE"), index=True
    )
    uid: Mapped[int] = mapped_column(Integer)
    internal_date: Mapped[str] = mapped_column(String(40))
    size: Mapped[int] = mapped_column(Integer)
    flags: Mapped[str] = mapped_column(String(1024), default="")
    body: Mapped[bytes] = mapped_column(LargeBinary)


def _flags_text(flags: Collection[str]) -> str:
    return " ".join(sorted(set(flags)))


def _message_row(
    folder_id: int, uid: int, message: bytes, flags: Collection[str], internal_date: dt.datetime
) -> MessageRow:
    return MessageRow(
        folder_id=folder_id,
        uid=uid,
        internal_date=internal_date.isoformat(),
        size=len(message),
        flags=_flags_text(flags),
        body=message,
    )


def _flags_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


class SqlPlatform:
    """All BAL of the modern platform: provisioning, delivery, and one store per BAL."""

    def __init__(self, engine: AsyncEngine, hub: ChangeHub | None = None) -> None:
        self.engine = engine
        self.hub = hub or ChangeHub()
        self._db = async_sessionmaker(engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock()
        self._last_uidvalidity = 0

    async def create_schema(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(_Base.metadata.create_all)

    def next_uidvalidity(self) -> int:
        """Increasing, 32-bit, never reused within this process's lifetime or across restarts
        (time-based, bumped past the last one handed out)."""
        value = max(int(time.time()), self._last_uidvalidity + 1) % 2**32 or 1
        self._last_uidvalidity = value
        return value

    async def ensure_mailbox(self, address: str, holder_idnat: str, display_name: str) -> bool:
        """Create the BAL and its default folders if missing; True when created."""
        address = address.lower()
        async with self._write_lock, self._db.begin() as db:
            if await db.get(MailboxRow, address) is not None:
                return False
            db.add(
                MailboxRow(address=address, holder_idnat=holder_idnat, display_name=display_name)
            )
            await db.flush()  # the folders' foreign key needs the mailbox row first
            for name, special in DEFAULT_FOLDERS:
                db.add(
                    FolderRow(
                        address=address,
                        name=name,
                        special_use=special,
                        subscribed=True,
                        uidvalidity=self.next_uidvalidity(),
                        uidnext=1,
                    )
                )
        return True

    async def holder_of(self, address: str) -> str | None:
        async with self._db() as db:
            row = await db.get(MailboxRow, address.lower())
        return row.holder_idnat if row else None

    async def mailboxes(self) -> list[tuple[str, str, str]]:
        async with self._db() as db:
            rows = (await db.scalars(select(MailboxRow).order_by(MailboxRow.address))).all()
        return [(r.address, r.holder_idnat, r.display_name) for r in rows]

    async def has_mailbox(self, address: str) -> bool:
        return await self.holder_of(address) is not None

    def store(self, address: str) -> SqlMailStore:
        return SqlMailStore(self, address.lower())

    async def deliver(
        self,
        address: str,
        message: bytes,
        *,
        folder: str = "INBOX",
        flags: Collection[str] = (),
        internal_date: dt.datetime | None = None,
    ) -> int:
        """Put a message in a BAL's folder (SMTP delivery, the sender's Sent copy, seeding)."""
        when = internal_date or dt.datetime.now(dt.UTC)
        _uidvalidity, uid = await self.store(address).append(folder, message, flags, when)
        return uid

    async def deliver_many(
        self,
        address: str,
        messages: Sequence[tuple[bytes, Collection[str], dt.datetime]],
        *,
        folder: str = "INBOX",
    ) -> list[int]:
        """Many (message, flags, internal date) into one folder in one transaction
        (seeding, benchmarks: one commit instead of one each); their UIDs."""
        return await self.store(address).append_many(folder, messages)


class SqlMailStore:
    """One BAL of the modern platform, as a `MailStore`."""

    def __init__(self, platform: SqlPlatform, address: str) -> None:
        self._platform = platform
        self._address = address
        self._db = platform._db
        self._lock = platform._write_lock

    @property
    def address(self) -> str:
        return self._address

    def _touch(self, folder: str) -> None:
        self._platform.hub.touch(self._address, folder)

    async def _folder(self, db: AsyncSession, name: str) -> FolderRow:
        row = await db.scalar(
            select(FolderRow).where(FolderRow.address == self._address, FolderRow.name == name)
        )
        if row is None:
            raise FolderNotFound(name)
        return row

    async def list_folders(self) -> Sequence[FolderInfo]:
        async with self._db() as db:
            rows = (
                await db.scalars(
                    select(FolderRow)
                    .where(FolderRow.address == self._address)
                    .order_by(FolderRow.id)
                )
            ).all()
        return [
            FolderInfo(r.name, r.special_use, r.subscribed)  # type: ignore[arg-type]
            for r in rows
        ]

    async def create_folder(self, name: str) -> None:
        _check_name(name)
        async with self._lock, self._db.begin() as db:
            existing = await db.scalar(
                select(func.count())
                .select_from(FolderRow)
                .where(FolderRow.address == self._address)
            )
            if existing is not None and existing >= MAX_FOLDERS:
                raise StoreError("too many folders", Code.LIMIT)
            names = {
                n
                for n in (
                    await db.scalars(
                        select(FolderRow.name).where(FolderRow.address == self._address)
                    )
                ).all()
            }
            if name in names or name.upper() == "INBOX":
                raise FolderExists(name)
            # RFC 3501 §6.3.3: create the missing superior levels too. None is subscribed:
            # CREATE does not subscribe (§6.3.6 is the client's own step, as in Dovecot),
            # or LSUB could never show an unsubscribed level as \Noselect (§6.3.9).
            parts = name.split(DELIMITER)
            for depth in range(1, len(parts) + 1):
                level = DELIMITER.join(parts[:depth])
                if level not in names:
                    db.add(
                        FolderRow(
                            address=self._address,
                            name=level,
                            subscribed=False,
                            uidvalidity=self._platform.next_uidvalidity(),
                            uidnext=1,
                        )
                    )
                    names.add(level)

    async def delete_folder(self, name: str) -> None:
        if name == "INBOX":
            raise StoreError("INBOX cannot be deleted", Code.CANNOT)
        async with self._lock, self._db.begin() as db:
            row = await self._folder(db, name)
            if row.special_use:
                raise StoreError(f"{name} is a special-use folder", Code.CANNOT)
            children = await db.scalar(
                select(func.count())
                .select_from(FolderRow)
                .where(
                    FolderRow.address == self._address,
                    FolderRow.name.startswith(name + DELIMITER, autoescape=True),
                )
            )
            if children:
                raise StoreError(f"{name} has sub-folders", Code.INUSE)
            await db.execute(delete(MessageRow).where(MessageRow.folder_id == row.id))
            await db.delete(row)
        self._touch(name)

    async def rename_folder(self, old: str, new: str) -> None:
        _check_name(new)
        if new.upper() == "INBOX":
            raise FolderExists(new)
        async with self._lock, self._db.begin() as db:
            source = await self._folder(db, old)
            taken = await db.scalar(
                select(FolderRow.id).where(
                    FolderRow.address == self._address, FolderRow.name == new
                )
            )
            if taken is not None:
                raise FolderExists(new)
            if old == "INBOX":
                # RFC 3501 §6.3.5: messages move to the new folder, INBOX stays, empty.
                target = FolderRow(
                    address=self._address,
                    name=new,
                    subscribed=True,
                    uidvalidity=self._platform.next_uidvalidity(),
                    uidnext=source.uidnext,
                )
                db.add(target)
                await db.flush()
                await db.execute(
                    update(MessageRow)
                    .where(MessageRow.folder_id == source.id)
                    .values(folder_id=target.id)
                )
            else:
                prefix = old + DELIMITER
                children = (
                    await db.scalars(
                        select(FolderRow).where(
                            FolderRow.address == self._address,
                            FolderRow.name.startswith(prefix, autoescape=True),
                        )
                    )
                ).all()
                source.name = new
                for child in children:
                    child.name = new + DELIMITER + child.name[len(prefix) :]
        self._touch(old)
        self._touch(new)

    async def subscribe(self, name: str, subscribed: bool) -> None:
        async with self._lock, self._db.begin() as db:
            row = await self._folder(db, name)
            row.subscribed = subscribed

    async def folder_state(self, name: str) -> FolderState:
        async with self._db() as db:
            folder = await self._folder(db, name)
            rows = (
                await db.execute(
                    select(
                        MessageRow.uid, MessageRow.flags, MessageRow.internal_date, MessageRow.size
                    )
                    .where(MessageRow.folder_id == folder.id)
                    .order_by(MessageRow.uid)
                )
            ).all()
        return FolderState(
            uidvalidity=folder.uidvalidity,
            uidnext=folder.uidnext,
            messages=tuple(
                MessageMeta(uid, _flags_set(flags), dt.datetime.fromisoformat(date), size)
                for uid, flags, date, size in rows
            ),
        )

    async def fetch_message(self, name: str, uid: int) -> bytes:
        async with self._db() as db:
            folder = await self._folder(db, name)
            body = await db.scalar(
                select(MessageRow.body).where(
                    MessageRow.folder_id == folder.id, MessageRow.uid == uid
                )
            )
        if body is None:
            raise MessageGone()
        return body

    async def fetch_messages(self, name: str, uids: Sequence[int]) -> dict[int, bytes]:
        async with self._db() as db:
            folder = await self._folder(db, name)
            rows = (
                await db.execute(
                    select(MessageRow.uid, MessageRow.body).where(
                        MessageRow.folder_id == folder.id, MessageRow.uid.in_(list(uids))
                    )
                )
            ).all()
        return {uid: body for uid, body in rows}

    async def append(
        self, name: str, message: bytes, flags: Collection[str], internal_date: dt.datetime
    ) -> tuple[int, int]:
        async with self._lock, self._db.begin() as db:
            folder = await self._folder(db, name)
            uid = folder.uidnext
            folder.uidnext = uid + 1
            db.add(_message_row(folder.id, uid, message, flags, internal_date))
            uidvalidity = folder.uidvalidity
        self._touch(name)
        return uidvalidity, uid

    async def import_uidvalidity(self, name: str, uidvalidity: int) -> tuple[int, int]:
        """Give the folder `uidvalidity` (a migration keeping the source's): allowed while it
        holds no message; a new value restarts its UIDs at 1. (UIDVALIDITY, UIDNEXT)."""
        if not 0 < uidvalidity <= MAX_UID:
            raise StoreError("UIDVALIDITY out of range", Code.CANNOT)
        async with self._lock, self._db.begin() as db:
            folder = await self._folder(db, name)
            if folder.uidvalidity != uidvalidity:
                held = await db.scalar(
                    select(func.count())
                    .select_from(MessageRow)
                    .where(MessageRow.folder_id == folder.id)
                )
                if held:
                    raise ImportConflict(f"{name} holds {held} messages")
                folder.uidvalidity, folder.uidnext = uidvalidity, 1
            state = folder.uidvalidity, folder.uidnext
        self._touch(name)
        return state

    async def import_message(
        self,
        name: str,
        uid: int,
        message: bytes,
        flags: Collection[str],
        internal_date: dt.datetime,
    ) -> tuple[int, int]:
        """Store `message` under the given `uid`, which must be at least the folder's
        UIDNEXT (UIDs only grow, and a UID once given is never given again); UIDNEXT
        becomes uid + 1. (UIDVALIDITY, UID)."""
        if not 0 < uid < MAX_UID:
            raise StoreError("UID out of range", Code.CANNOT)
        async with self._lock, self._db.begin() as db:
            folder = await self._folder(db, name)
            if uid < folder.uidnext:
                raise ImportConflict(f"UID {uid} is below {name}'s UIDNEXT {folder.uidnext}")
            folder.uidnext = uid + 1
            db.add(_message_row(folder.id, uid, message, flags, internal_date))
            uidvalidity = folder.uidvalidity
        self._touch(name)
        return uidvalidity, uid

    async def append_many(
        self, name: str, messages: Sequence[tuple[bytes, Collection[str], dt.datetime]]
    ) -> list[int]:
        """`append` of each message, in one transaction; their UIDs."""
        async with self._lock, self._db.begin() as db:
            folder = await self._folder(db, name)
            first = folder.uidnext
            folder.uidnext = first + len(messages)
            db.add_all(
                _message_row(folder.id, first + offset, message, flags, when)
                for offset, (message, flags, when) in enumerate(messages)
            )
        self._touch(name)
        return list(range(first, first + len(messages)))

    async def store_flags(
        self, name: str, uids: Collection[int], mode: FlagMode, flags: Collection[str]
    ) -> dict[int, frozenset[str]]:
        wanted = set(flags)
        changed: dict[int, frozenset[str]] = {}
        async with self._lock, self._db.begin() as db:
            folder = await self._folder(db, name)
            rows = (
                await db.scalars(
                    select(MessageRow).where(
                        MessageRow.folder_id == folder.id, MessageRow.uid.in_(list(uids))
                    )
                )
            ).all()
            for row in rows:
                current = set(_flags_set(row.flags))
                if mode == "replace":
                    new = wanted
                elif mode == "add":
                    new = current | wanted
                else:
                    new = current - wanted
                if new != current:
                    row.flags = _flags_text(new)
                changed[row.uid] = frozenset(new)
        self._touch(name)
        return changed

    async def copy(self, name: str, uids: Collection[int], destination: str) -> CopyResult:
        return await self._copy(name, uids, destination, move=False)

    async def move(self, name: str, uids: Collection[int], destination: str) -> CopyResult:
        return await self._copy(name, uids, destination, move=True)

    async def _copy(
        self, name: str, uids: Collection[int], destination: str, *, move: bool
    ) -> CopyResult:
        async with self._lock, self._db.begin() as db:
            source = await self._folder(db, name)
            target = await self._folder(db, destination)
            rows = (
                await db.scalars(
                    select(MessageRow)
                    .where(MessageRow.folder_id == source.id, MessageRow.uid.in_(list(uids)))
                    .order_by(MessageRow.uid)
                )
            ).all()
            pairs = []
            for row in rows:
                new_uid = target.uidnext
                target.uidnext += 1
                pairs.append((row.uid, new_uid))
                if move:
                    row.folder_id = target.id
                    row.uid = new_uid
                else:
                    db.add(
                        MessageRow(
                            folder_id=target.id,
                            uid=new_uid,
                            internal_date=row.internal_date,
                            size=row.size,
                            flags=row.flags,
                            body=row.body,
                        )
                    )
            result = CopyResult(target.uidvalidity, tuple(pairs))
        self._touch(destination)
        if move:
            self._touch(name)
        return result

    async def expunge(self, name: str, uids: Collection[int] | None = None) -> list[int]:
        async with self._lock, self._db.begin() as db:
            folder = await self._folder(db, name)
            query = select(MessageRow).where(MessageRow.folder_id == folder.id)
            if uids is not None:
                query = query.where(MessageRow.uid.in_(list(uids)))
            rows = (await db.scalars(query.order_by(MessageRow.uid))).all()
            gone = [row for row in rows if "\\Deleted" in _flags_set(row.flags)]
            for row in gone:
                await db.delete(row)
            expunged = [row.uid for row in gone]
        if expunged:
            self._touch(name)
        return expunged


def _check_name(name: str) -> None:
    if not name or len(name) > MAX_FOLDER_NAME:
        raise StoreError("folder name empty or too long", Code.CANNOT)
    if any(not part for part in name.split(DELIMITER)) or any(c in name for c in "*%\r\n\0"):
        raise StoreError(f"invalid folder name {name!r}", Code.CANNOT)
