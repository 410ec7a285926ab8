"""`MemoryStore`: the whole `MailStore` protocol in memory, for testing the engine on bytes.

It behaves as the mock operator's SQL store does (same codes for the same refusals, same
folder rules, a `ChangeHub` touch after each change), with predictable numbers: the n-th
folder created gets UIDVALIDITY ``first_uidvalidity + n - 1``, UIDs start at 1, and
internal dates default to a fixed moment, so tests can assert exact replies.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

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
    StoreUnavailable,
)
from gateway.imap.view import apply_flags

DEFAULT_FOLDERS: tuple[tuple[str, SpecialUse | None], ...] = (
    ("INBOX", None),
    ("Envoyés", "\\Sent"),
    ("Brouillons", "\\Drafts"),
    ("Corbeille", "\\Trash"),
)
WHEN = dt.datetime(2024, 3, 5, 9, 30, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))


@dataclass
class StoredMessage:
    uid: int
    raw: bytes
    flags: frozenset[str]
    internal_date: dt.datetime

    def meta(self) -> MessageMeta:
        return MessageMeta(self.uid, self.flags, self.internal_date, len(self.raw))


@dataclass
class StoredFolder:
    name: str
    uidvalidity: int
    special_use: SpecialUse | None = None
    subscribed: bool = True
    uidnext: int = 1
    messages: dict[int, StoredMessage] = field(default_factory=dict)  # ascending UID

    def add(self, raw: bytes, flags: Collection[str], when: dt.datetime) -> int:
        uid = self.uidnext
        self.uidnext += 1
        self.messages[uid] = StoredMessage(uid, raw, frozenset(flags), when)
        return uid


class MemoryStore:
    """One BAL in memory. `down = True` makes every call raise `StoreUnavailable`."""

    def __init__(
        self,
        address: str = "test@memory.mssante.fr",
        *,
        hub: ChangeHub | None = None,
        folders: Sequence[tuple[str, SpecialUse | None]] = DEFAULT_FOLDERS,
        first_uidvalidity: int = 1000,
    ) -> None:
        self._address = address.lower()
        self.hub = hub or ChangeHub()
        self.down = False
        self._uidvalidities = itertools.count(first_uidvalidity)
        self.folders: dict[str, StoredFolder] = {}  # in creation order, as LIST shows them
        for name, special in folders:
            self.folders[name] = StoredFolder(name, next(self._uidvalidities), special)

    # -- for tests: seeding and looking ----------------------------------------------------
    def deliver(
        self,
        raw: bytes,
        *,
        folder: str = "INBOX",
        flags: Collection[str] = (),
        internal_date: dt.datetime = WHEN,
    ) -> int:
        """Put a message in a folder as a delivery would (the hub is told); its UID."""
        uid = self._folder(folder).add(raw, flags, internal_date)
        self._touch(folder)
        return uid

    def uids(self, folder: str = "INBOX") -> list[int]:
        return list(self._folder(folder).messages)

    def flags(self, uid: int, folder: str = "INBOX") -> frozenset[str]:
        return self._folder(folder).messages[uid].flags

    # -- MailStore ---------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self._address

    async def list_folders(self) -> Sequence[FolderInfo]:
        self._check_up()
        return [FolderInfo(f.name, f.special_use, f.subscribed) for f in self.folders.values()]

    async def create_folder(self, name: str) -> None:
        self._check_up()
        _check_name(name)
        if name in self.folders or name.upper() == "INBOX":
            raise FolderExists(name)
        # the missing levels above are created too, none subscribed (as the SQL store)
        parts = name.split(DELIMITER)
        for depth in range(1, len(parts) + 1):
            level = DELIMITER.join(parts[:depth])
            if level not in self.folders:
                uidvalidity = next(self._uidvalidities)
                self.folders[level] = StoredFolder(level, uidvalidity, subscribed=False)

    async def delete_folder(self, name: str) -> None:
        self._check_up()
        if name == "INBOX":
            raise StoreError("INBOX cannot be deleted", Code.CANNOT)
        folder = self._folder(name)
        if folder.special_use:
            raise StoreError(f"{name} is a special-use folder", Code.CANNOT)
        if any(other.startswith(name + DELIMITER) for other in self.folders):
            raise StoreError(f"{name} has sub-folders", Code.INUSE)
        del self.folders[name]
        self._touch(name)

    async def rename_folder(self, old: str, new: str) -> None:
        self._check_up()
        _check_name(new)
        source = self._folder(old)
        if new in self.folders or new.upper() == "INBOX":
            raise FolderExists(new)
        if old == "INBOX":
            # RFC 3501 §6.3.5: the messages move to a new folder; INBOX stays, empty
            target = StoredFolder(new, next(self._uidvalidities), uidnext=source.uidnext)
            target.messages, source.messages = source.messages, {}
            self.folders[new] = target
        else:
            prefix = old + DELIMITER
            renamed = {}
            for name, folder in self.folders.items():
                if name == old or name.startswith(prefix):
                    folder.name = new + name[len(old) :]
                renamed[folder.name] = folder
            self.folders = renamed
        self._touch(old)
        self._touch(new)

    async def subscribe(self, name: str, subscribed: bool) -> None:
        self._check_up()
        self._folder(name).subscribed = subscribed

    async def folder_state(self, name: str) -> FolderState:
        self._check_up()
        folder = self._folder(name)
        return FolderState(
            folder.uidvalidity,
            folder.uidnext,
            tuple(m.meta() for m in folder.messages.values()),
        )

    async def fetch_message(self, name: str, uid: int) -> bytes:
        self._check_up()
        message = self._folder(name).messages.get(uid)
        if message is None:
            raise MessageGone()
        return message.raw

    async def fetch_messages(self, name: str, uids: Sequence[int]) -> dict[int, bytes]:
        self._check_up()
        messages = self._folder(name).messages
        return {uid: messages[uid].raw for uid in uids if uid in messages}

    async def append(
        self, name: str, message: bytes, flags: Collection[str], internal_date: dt.datetime
    ) -> tuple[int, int]:
        self._check_up()
        folder = self._folder(name)
        uid = folder.add(message, flags, internal_date)
        self._touch(name)
        return folder.uidvalidity, uid

    async def store_flags(
        self, name: str, uids: Collection[int], mode: FlagMode, flags: Collection[str]
    ) -> dict[int, frozenset[str]]:
        self._check_up()
        messages = self._folder(name).messages
        changed: dict[int, frozenset[str]] = {}
        for uid in sorted(set(uids)):
            message = messages.get(uid)
            if message is not None:
                message.flags = apply_flags(message.flags, mode, flags)
                changed[uid] = message.flags
        self._touch(name)
        return changed

    async def copy(self, name: str, uids: Collection[int], destination: str) -> CopyResult:
        return self._copy(name, uids, destination, move=False)

    async def move(self, name: str, uids: Collection[int], destination: str) -> CopyResult:
        return self._copy(name, uids, destination, move=True)

    def _copy(
        self, name: str, uids: Collection[int], destination: str, *, move: bool
    ) -> CopyResult:
        self._check_up()
        source, target = self._folder(name), self._folder(destination)
        pairs = []
        for uid in sorted(set(uids)):
            message = source.messages.get(uid)
            if message is None:
                continue
            new_uid = target.add(message.raw, message.flags, message.internal_date)
            pairs.append((uid, new_uid))
            if move:
                del source.messages[uid]
        self._touch(destination)
        if move:
            self._touch(name)
        return CopyResult(target.uidvalidity, tuple(pairs))

    async def expunge(self, name: str, uids: Collection[int] | None = None) -> list[int]:
        self._check_up()
        messages = self._folder(name).messages
        among = messages.keys() if uids is None else set(uids) & messages.keys()
        gone = sorted(uid for uid in among if "\\Deleted" in messages[uid].flags)
        for uid in gone:
            del messages[uid]
        if gone:
            self._touch(name)
        return gone

    # -- inside --------------------------------------------------------------------------------
    def _folder(self, name: str) -> StoredFolder:
        folder = self.folders.get(name)
        if folder is None:
            raise FolderNotFound(name)
        return folder

    def _touch(self, folder: str) -> None:
        self.hub.touch(self._address, folder)

    def _check_up(self) -> None:
        if self.down:
            raise StoreUnavailable("memory store switched off")


def _check_name(name: str) -> None:
    if not name or any(not part for part in name.split(DELIMITER)):
        raise StoreError(f"invalid folder name {name!r}", Code.CANNOT)
