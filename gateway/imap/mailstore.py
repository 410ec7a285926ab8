"""What the IMAP engine serves: one small interface, any backend behind it.

A `MailStore` is one mailbox (BAL) as the engine sees it: folders, messages with UIDs and
flags, and a change signal. The engine keeps each session's view (sequence numbers, what
the client was told) and re-synchronises from `folder_state` whenever `ChangeHub` says the
folder moved, so a store need not describe its changes: it only bumps a version.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.imap.codes import Code

SpecialUse = Literal["\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive"]
FlagMode = Literal["replace", "add", "remove"]
DELIMITER = "/"
SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


class StoreError(Exception):
    """A store refused an operation. `code` is an RFC 5530 response code for the reply."""

    def __init__(self, message: str, code: Code | None = None) -> None:
        self.code = code
        super().__init__(message)


class FolderNotFound(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no folder {name}", Code.NONEXISTENT)


class FolderExists(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"folder {name} already exists", Code.ALREADYEXISTS)


class MessageGone(StoreError):
    def __init__(self) -> None:
        super().__init__("message has been expunged", Code.EXPUNGEISSUED)


class StoreUnavailable(StoreError):
    """The backend behind the store is down or too slow: answered NO [UNAVAILABLE] or BYE."""

    def __init__(self, message: str = "mail store unavailable") -> None:
        super().__init__(message, Code.UNAVAILABLE)


class Unsupported(StoreError):
    """The backend cannot do this at all (the historic web services): NO [CANNOT]."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Code.CANNOT)


@dataclass(frozen=True, slots=True)
class FolderInfo:
    name: str  # hierarchy separated by DELIMITER, "INBOX" for the inbox
    special_use: SpecialUse | None = None
    subscribed: bool = True


@dataclass(frozen=True, slots=True)
class MessageMeta:
    uid: int
    flags: frozenset[str]
    internal_date: dt.datetime
    size: int


@dataclass(frozen=True, slots=True)
class FolderState:
    uidvalidity: int
    uidnext: int
    messages: tuple[MessageMeta, ...]  # ascending UID


@dataclass(frozen=True, slots=True)
class CopyResult:
    """UIDPLUS: the destination's UIDVALIDITY and the (source, destination) UID pairs."""

    uidvalidity: int
    pairs: tuple[tuple[int, int], ...]


class MailStore(Protocol):
    """One BAL's folders and messages. Every method may raise a `StoreError`."""

    @property
    def address(self) -> str: ...

    async def list_folders(self) -> Sequence[FolderInfo]: ...

    async def create_folder(self, name: str) -> None: ...

    async def delete_folder(self, name: str) -> None: ...

    async def rename_folder(self, old: str, new: str) -> None: ...

    async def subscribe(self, name: str, subscribed: bool) -> None: ...

    async def folder_state(self, name: str) -> FolderState: ...

    async def fetch_message(self, name: str, uid: int) -> bytes: ...

    async def fetch_messages(self, name: str, uids: Sequence[int]) -> dict[int, bytes]:
        """Several messages in one round trip (absent UIDs are simply missing)."""
        ...

    async def append(
        self, name: str, message: bytes, flags: Collection[str], internal_date: dt.datetime
    ) -> tuple[int, int]:
        """Store a message; returns (UIDVALIDITY, UID) for APPENDUID."""
        ...

    async def store_flags(
        self, name: str, uids: Collection[int], mode: FlagMode, flags: Collection[str]
    ) -> dict[int, frozenset[str]]:
        """Change flags; returns the new flags of the messages that still exist."""
        ...

    async def copy(self, name: str, uids: Collection[int], destination: str) -> CopyResult: ...

    async def move(self, name: str, uids: Collection[int], destination: str) -> CopyResult: ...

    async def expunge(self, name: str, uids: Collection[int] | None = None) -> list[int]:
        """Remove messages flagged \\Deleted (only among `uids` when given)."""
        ...


class ChangeHub:
    """In-process change signal per (BAL, folder): a version number and a wake-up.

    Stores call `touch` after each change; sessions remember the version they saw and wait
    on `changed` (IDLE). Several processes sharing one store would replace this with the
    database's notifications; the engine does not care.
    """

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], int] = {}
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = {}

    def version(self, bal: str, folder: str) -> int:
        return self._versions.get((bal.lower(), folder), 0)

    def touch(self, bal: str, folder: str) -> None:
        key = (bal.lower(), folder)
        self._versions[key] = self._versions.get(key, 0) + 1
        for event in self._waiters.get(key, ()):
            event.set()

    async def wait(self, bal: str, folder: str, seen: int) -> None:
        """Wait until the version differs from `seen` (callers bound it with a timeout)."""
        key = (bal.lower(), folder)
        if self._versions.get(key, 0) != seen:
            return
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        try:
            await event.wait()
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[key]


class RecentRegistry:
    """Who holds each message's \\Recent (RFC 3501 §2.3.2), per (BAL, folder, UIDVALIDITY):
    the highest UID a session has already claimed.

    \\Recent is session state that no backend stores: a message is recent to exactly one
    session, the first to select its folder (SELECT, not EXAMINE) or, already selected, to
    hear of it after it arrived. A read-only session sees the unclaimed messages as recent
    without taking them. In process, like `ChangeHub`: every session of a store's folder
    must meet here (several processes would keep the claim in the store's database), and a
    restart makes the messages already there recent once more, as a new index would.
    """

    def __init__(self) -> None:
        self._claimed: dict[tuple[str, str], tuple[int, int]] = {}  # -> (UIDVALIDITY, UID)

    def claimed(self, bal: str, folder: str, uidvalidity: int) -> int:
        """The highest UID already claimed: the messages above it are recent to no one yet."""
        entry = self._claimed.get((bal.lower(), folder))
        return entry[1] if entry is not None and entry[0] == uidvalidity else 0

    def claim(self, bal: str, folder: str, uidvalidity: int, uid: int) -> int:
        """Take every message up to `uid`; returns the highest UID claimed before, so the
        caller's recent messages are those above it (none when another was first)."""
        previous = self.claimed(bal, folder, uidvalidity)
        if uid > previous:
            self._claimed[(bal.lower(), folder)] = (uidvalidity, uid)
        return previous

    def rename(self, bal: str, old: str, new: str) -> None:
        """The claims follow a folder and its sub-folders to their new names (their
        UIDVALIDITY is kept: the messages are the same)."""
        key = bal.lower()
        moved = {
            folder: entry
            for (owner, folder), entry in self._claimed.items()
            if owner == key and (folder == old or folder.startswith(old + DELIMITER))
        }
        for folder, entry in moved.items():
            del self._claimed[(key, folder)]
            self._claimed[(key, new + folder[len(old) :])] = entry
