"""The historic platform's own IMAP: one `MailStore` per BAL over the `HistoricStore`.

The old platform always had an IMAP of its own beside its web services (DOMAIN.md §4).
This is it, served by the project's engine on its own port, over the very rows the web
services read and write: a flag set on one side is seen on the other, a message expunged
here is gone there.

* Folders by path: folder 2 is INBOX; the other system folders keep their names and get
  their special use (3 \\Trash, 4 \\Junk, 5 \\Sent, 6 \\Drafts); a folder's path is its
  ancestors' names joined by "/" (a historic name cannot hold one). A top-level folder
  the web services named "INBOX" is not shown: the name is the inbox's.
* UIDs: each folder has its UIDVALIDITY and UIDNEXT in the store, and a message gets the
  folder's next UID whenever it enters one (delivery, move, copy, a draft saved again).
* Flags, both ways as the web services mean them: \\Seen is the absence of UNREAD,
  \\Flagged FLAGGED, \\Answered REPLIED, \\Deleted DELETED, \\Draft DRAFT, $Forwarded
  FORWARDED; other keywords are kept as they are. SENT_BY_ME has no IMAP twin and stays.
* Octets: a delivered message is served as it was delivered (its original); one the web
  services composed (sendMessage's copy in Sent, drafts) is rebuilt by `rebuild_mime`,
  the same octets every time, and the size of each rebuild is remembered.
* Changes: the store tells its `watchers` of every committed change, whoever made it. It
  knows folders by id while the engine names them by path, and paths move with renames,
  so one version per BAL: any change wakes the BAL's sessions, which re-read their folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Collection, Iterator, Mapping, Sequence

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
from gateway.imap.view import apply_flags
from gateway.mss.historic_mime import Composition, rebuild_mime
from gateway.mss.historic_shapes import JUNK, ROOT
from gateway.mss.historic_ws import (
    CONTENT_TOO_LARGE,
    DRAFTS,
    EMAIL_INVALID,
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
from mock_operator.historic.store import (
    SYSTEM_FOLDERS,
    HistoricStore,
    ImapFolder,
    MessageSource,
    StoredMessage,
    flags_from_imap,
    imap_flags_of,
)

SPECIAL_USE: dict[int, SpecialUse] = {
    TRASH: "\\Trash",
    JUNK: "\\Junk",
    SENT: "\\Sent",
    DRAFTS: "\\Drafts",
}
# The IMAP side of the store's refusals (RFC 5530 codes); others are a bare NO.
_CODES: dict[int, Code] = {
    FOLDER_DUPLICATE: Code.ALREADYEXISTS,
    FOLDER_MISSING: Code.NONEXISTENT,
    MESSAGE_MISSING: Code.EXPUNGEISSUED,
    EMAIL_INVALID: Code.NONEXISTENT,
    FIELD_MISSING: Code.CANNOT,
    INVALID_FORMAT: Code.CANNOT,
    CONTENT_TOO_LARGE: Code.LIMIT,
}
_MAPPED = frozenset({"UNREAD", *(historic for _, historic in IMAP_FLAGS)})
_FORWARDED = "$Forwarded"
_ALL_FOLDERS = ""  # the one ChangeHub key of a BAL
MAX_SIZES_KEPT = 100_000
MAX_PATH = 1_000


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """A `HistoricError` of the store as the engine's `StoreError`."""
    try:
        yield
    except HistoricError as error:
        raise StoreError(f"{error.message} ({error.code})", _CODES.get(error.code)) from None


def _canonical(flag: str) -> str:
    """$Forwarded whatever its case (IMAP keywords are case-insensitive)."""
    return _FORWARDED if flag.lower() == _FORWARDED.lower() else flag


def stored_flags(imap_flags: Collection[str], kept: Collection[str] = ()) -> frozenset[str]:
    """The store's flags for these IMAP flags; `kept` are flags IMAP does not see."""
    unmapped = {flag for flag in kept if flag not in _MAPPED}
    return flags_from_imap(imap_flags, ROOT) | unmapped


def keywords_of(imap_flags: Collection[str]) -> frozenset[str]:
    """The keywords the store keeps apart: all but system flags and $Forwarded."""
    return frozenset(f for f in imap_flags if not f.startswith("\\") and f != _FORWARDED)


def composition_of(message: StoredMessage, files: Mapping[str, bytes]) -> Composition:
    """What `rebuild_mime` needs of a message kept without its original."""
    sender = next(((e.address, e.name) for e in message.emails if e.type == "FROM"), None)
    message_id = message.header_message_id
    if message_id is None:
        digest = hashlib.sha256(f"{message.message_id}:{message.date}".encode()).hexdigest()
        message_id = f"<hist-{message.message_id}.{digest[:16]}@historique.mssante.fr>"
    return Composition(
        sender=sender,
        recipients=tuple((e.address, e.name, e.type) for e in message.emails if e.type != "FROM"),
        subject=message.subject,
        body=message.body_html if message.body_html is not None else message.body_text,
        is_html=message.body_html is not None,
        urgent=message.urgent,
        read_receipt=message.read_receipt,
        attachments=tuple(
            (a.file_name, a.content_type, files.get(a.part, b"")) for a in message.attachments
        ),
        message_id=message_id,
        date=message.date,
    )


def octets_of(source: MessageSource) -> bytes:
    if source.original is not None:
        return source.original
    return rebuild_mime(composition_of(source.message, source.attachments))


class HistoricImap:
    """The historic platform as the engine sees it: a store per BAL and a change signal."""

    def __init__(self, store: HistoricStore) -> None:
        self.store = store
        self.hub = ChangeHub()
        # (BAL, folder id, UIDVALIDITY, UID) -> size of the rebuild: never reused keys
        self._sizes: dict[tuple[str, int, int, int], int] = {}
        store.watchers.append(self._changed)

    def mailbox(self, address: str) -> HistoricMailStore:
        return HistoricMailStore(self, address.lower())

    def _changed(self, address: str) -> None:
        self.hub.touch(address, _ALL_FOLDERS)

    def version(self, bal: str, folder: str) -> int:
        """`EngineConfig.hub_version`: one version for all of a BAL's folders."""
        return self.hub.version(bal, _ALL_FOLDERS)

    async def wait(self, bal: str, folder: str, seen: int) -> None:
        """`EngineConfig.hub_wait`: until anything in the BAL changed after `seen`."""
        await self.hub.wait(bal, _ALL_FOLDERS, seen)

    async def rebuilt_sizes(
        self, address: str, folder_id: int, uidvalidity: int, uids: Sequence[int]
    ) -> dict[int, int]:
        """The size of each message's rebuild (those that still exist), remembered."""
        found: dict[int, int] = {}
        missing = []
        for uid in uids:
            size = self._sizes.get((address, folder_id, uidvalidity, uid))
            if size is None:
                missing.append(uid)
            else:
                found[uid] = size
        if missing:
            with _refusals():
                sources = await self.store.imap_sources(address, folder_id, missing)
            if len(self._sizes) + len(sources) > MAX_SIZES_KEPT:
                self._sizes.clear()
            for uid, source in sources.items():
                found[uid] = len(octets_of(source))
                self._sizes[(address, folder_id, uidvalidity, uid)] = found[uid]
        return found


def _normal(name: str) -> str:
    """The path with its first level "INBOX" in upper case, as IMAP compares it."""
    first, sep, rest = name.partition(DELIMITER)
    return "INBOX" + sep + rest if first.upper() == "INBOX" else name


def _path(folder: ImapFolder, by_id: Mapping[int, ImapFolder]) -> str | None:
    """The folder's IMAP name; None when it has none (under a missing parent, or a
    top-level folder named like the inbox)."""
    parts: list[str] = []
    current = folder
    while len(parts) <= len(by_id):
        if current.id == INBOX:
            return DELIMITER.join(["INBOX", *reversed(parts)])
        parts.append(current.name)
        if current.parent_id == ROOT:
            return None if current.name.upper() == "INBOX" else DELIMITER.join(reversed(parts))
        parent = by_id.get(current.parent_id)
        if parent is None:
            return None
        current = parent
    return None  # a cycle: not a tree


def _check_path(name: str) -> None:
    if not name or len(name) > MAX_PATH:
        raise StoreError("folder name empty or too long", Code.CANNOT)
    if any(not part for part in name.split(DELIMITER)) or any(c in name for c in "*%\r\n\0"):
        raise StoreError(f"invalid folder name {name!r}", Code.CANNOT)


class HistoricMailStore:
    """One BAL of the historic platform, as a `MailStore` (see the module docstring)."""

    def __init__(self, imap: HistoricImap, address: str) -> None:
        self._imap = imap
        self._store = imap.store
        self._address = address

    @property
    def address(self) -> str:
        return self._address

    async def _tree(self) -> dict[str, ImapFolder]:
        """Every folder IMAP shows, by path."""
        folders = await self._store.imap_folders(self._address)
        by_id = {f.id: f for f in folders}
        tree: dict[str, ImapFolder] = {}
        for folder in folders:
            path = _path(folder, by_id)
            if path is not None:
                tree.setdefault(path, folder)
        return tree

    async def _folder(self, name: str) -> ImapFolder:
        folder = (await self._tree()).get(_normal(name))
        if folder is None:
            raise FolderNotFound(name)
        return folder

    async def list_folders(self) -> Sequence[FolderInfo]:
        """INBOX, the other system folders, then the others by path."""
        tree = await self._tree()
        order = sorted(
            tree.items(),
            key=lambda item: (item[0] != "INBOX", item[1].id not in SYSTEM_FOLDERS, item[0]),
        )
        return [
            FolderInfo(path, SPECIAL_USE.get(folder.id), folder.subscribed)
            for path, folder in order
        ]

    async def create_folder(self, name: str) -> None:
        name = _normal(name)
        _check_path(name)
        tree = await self._tree()
        if name in tree:
            raise FolderExists(name)
        # RFC 3501 §6.3.3: the missing superior levels are created too.
        parts = name.split(DELIMITER)
        parent = ROOT
        for depth in range(1, len(parts) + 1):
            level = tree.get(DELIMITER.join(parts[:depth]))
            if level is not None:
                parent = level.id
                continue
            with _refusals():
                created = await self._store.create_folder(self._address, parent, parts[depth - 1])
            parent = created.id

    async def delete_folder(self, name: str) -> None:
        folder = await self._folder(name)
        if folder.id in SYSTEM_FOLDERS:
            raise StoreError(f"{name} is a system folder", Code.CANNOT)
        tree = await self._tree()
        if any(f.parent_id == folder.id for f in tree.values()):
            raise StoreError(f"{name} has sub-folders", Code.INUSE)
        with _refusals():
            await self._store.delete_folder(self._address, folder.id)

    async def rename_folder(self, old: str, new: str) -> None:
        new = _normal(new)
        _check_path(new)
        tree = await self._tree()
        source = tree.get(_normal(old))
        if source is None:
            raise FolderNotFound(old)
        if new in tree or new == "INBOX":
            raise FolderExists(new)
        parent_path, _, leaf = new.rpartition(DELIMITER)
        parent = tree.get(parent_path) if parent_path else None
        if parent_path and parent is None:
            raise FolderNotFound(parent_path)
        parent_id = parent.id if parent is not None else ROOT
        with _refusals():
            if source.id == INBOX:
                # RFC 3501 §6.3.5: the messages move to the new folder, INBOX stays, empty.
                created = await self._store.create_folder(self._address, parent_id, leaf)
                state = await self._store.imap_state(self._address, INBOX)
                uids = [entry.uid for entry in state.entries]
                await self._store.imap_transfer(self._address, INBOX, uids, created.id, move=True)
            elif source.id in SYSTEM_FOLDERS:
                raise StoreError(f"{old} is a system folder", Code.CANNOT)
            else:
                await self._store.relocate_folder(self._address, source.id, parent_id, leaf)

    async def subscribe(self, name: str, subscribed: bool) -> None:
        folder = await self._folder(name)
        with _refusals():
            await self._store.set_subscribed(self._address, folder.id, subscribed)

    async def folder_state(self, name: str) -> FolderState:
        folder = await self._folder(name)
        with _refusals():
            state = await self._store.imap_state(self._address, folder.id)
        sizes = await self._imap.rebuilt_sizes(
            self._address,
            folder.id,
            state.uidvalidity,
            [e.uid for e in state.entries if e.size is None],
        )
        messages = tuple(
            MessageMeta(
                entry.uid,
                imap_flags_of(entry.flags, entry.keywords),
                entry.received,
                entry.size if entry.size is not None else sizes[entry.uid],
            )
            for entry in state.entries
            if entry.size is not None or entry.uid in sizes
        )
        return FolderState(state.uidvalidity, state.uidnext, messages)

    async def fetch_message(self, name: str, uid: int) -> bytes:
        found = await self.fetch_messages(name, [uid])
        if uid not in found:
            raise MessageGone()
        return found[uid]

    async def fetch_messages(self, name: str, uids: Sequence[int]) -> dict[int, bytes]:
        folder = await self._folder(name)
        with _refusals():
            sources = await self._store.imap_sources(self._address, folder.id, uids)
        return {uid: octets_of(source) for uid, source in sources.items()}

    async def append(
        self, name: str, message: bytes, flags: Collection[str], internal_date: dt.datetime
    ) -> tuple[int, int]:
        folder = await self._folder(name)
        wanted = {_canonical(f) for f in flags}
        historic = flags_from_imap(wanted, folder.id)
        with _refusals():
            return await self._store.imap_append(
                self._address, folder.id, message, historic, keywords_of(wanted), internal_date
            )

    async def store_flags(
        self, name: str, uids: Collection[int], mode: FlagMode, flags: Collection[str]
    ) -> dict[int, frozenset[str]]:
        folder = await self._folder(name)
        wanted = frozenset(_canonical(f) for f in flags if f != "\\Recent")

        def change(
            stored: frozenset[str], keywords: frozenset[str]
        ) -> tuple[frozenset[str], frozenset[str]]:
            new = apply_flags(imap_flags_of(stored, keywords), mode, wanted)
            return stored_flags(new, stored), keywords_of(new)

        with _refusals():
            changed = await self._store.imap_update_flags(self._address, folder.id, uids, change)
        return {uid: imap_flags_of(f, k) for uid, (f, k) in changed.items()}

    async def copy(self, name: str, uids: Collection[int], destination: str) -> CopyResult:
        return await self._transfer(name, uids, destination, move=False)

    async def move(self, name: str, uids: Collection[int], destination: str) -> CopyResult:
        return await self._transfer(name, uids, destination, move=True)

    async def _transfer(
        self, name: str, uids: Collection[int], destination: str, *, move: bool
    ) -> CopyResult:
        source = await self._folder(name)
        target = await self._folder(destination)
        with _refusals():
            uidvalidity, pairs = await self._store.imap_transfer(
                self._address, source.id, uids, target.id, move=move
            )
        return CopyResult(uidvalidity, tuple(pairs))

    async def expunge(self, name: str, uids: Collection[int] | None = None) -> list[int]:
        folder = await self._folder(name)
        with _refusals():
            return await self._store.imap_expunge(self._address, folder.id, uids)
