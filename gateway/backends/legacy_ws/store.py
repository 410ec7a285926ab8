"""A `MailStore` over the historic web services: a historic BAL served by the IMAP engine.

Folders come from ``listFolders``: 2 is INBOX, 5 ``\\Sent``, 6 ``\\Drafts``, 3 ``\\Trash``,
4 ``\\Junk``; every other folder by the path of its names, ``/`` separated (a ``/`` inside
a historic name becomes ``_``). The folder list is kept `poll_interval` seconds.

A folder's state is one paged ``searchMessages`` of the folder (all pages, oldest first):
UIDs come from the `UidMap` (new messages get UIDs ascending by date then id; messages
gone are forgotten; a message whose content changed under its messageId, a draft
replaced, gets a new UID), flags are mapped (UNREAD ↔ not ``\\Seen``, FLAGGED ↔
``\\Flagged``, REPLIED → ``\\Answered``, DELETED → ``\\Deleted``, DRAFT → ``\\Draft``,
FORWARDED → ``$Forwarded``).
States are shared by the sessions of a BAL and kept until its ``syncMessages`` poller
(`gateway.backends.legacy_ws.watch`) reports a change in the folder; the poller's version
is the engine's change signal for NOOP and IDLE.

Messages are rebuilt with `message_to_rfc5322` from the message object of the last
search and the attachments (``downloadAttachment``). The rebuild is deterministic, so the
bytes are kept in an LRU bounded in octets, shared by every session, keyed by (backend,
BAL, messageId, `content_key`). RFC822.SIZE must be known at the state already, without
downloading the attachments: the rebuild's length depends only on the attachments'
lengths, so it is computed with placeholder bytes of each attachment's declared size
(and remembered per content key); a platform declaring wrong sizes would give a wrong
RFC822.SIZE (logged when noticed).

Flags: ``\\Seen`` and ``\\Flagged`` go to ``updateMessages`` (READ/UNREAD,
FLAGGED/UNFLAGGED). The services hold no other flag a client may set, so the gateway
keeps them in its database beside the UID (shared by every session and node, kept across
restarts): ``\\Deleted`` (EXPUNGE sends ``updateMessages DELETE`` for the marked messages
and those the platform itself says are DELETED), and keywords (``$MDNSent``,
``$Forwarded``, any atom), ``\\Answered`` and ``\\Draft``, at most `MAX_KEYWORDS`
keywords of at most `MAX_KEYWORD_LENGTH` octets per message and `MAX_FOLDER_KEYWORDS`
distinct ones per folder (beyond, NO [LIMIT] before anything is written); keywords
compare without regard to case, the folder's first spelling stays. What the platform says
itself still wins: REPLIED, DRAFT and FORWARDED show ``\\Answered``, ``\\Draft`` and
``$Forwarded`` whatever the gateway keeps. APPEND's keywords (and ``\\Answered``) are
kept; MOVE and COPY carry keywords, ``\\Answered`` and ``\\Draft`` (not ``\\Deleted``)
to the message in the destination; a message expunged or gone forgets them (its UID row
goes, and they with it). MOVE is
``moveMessages``; so is COPY, the platform holding one copy of a message, with the
original still listed until expunged (expunging it deletes nothing; see `copy`); a
second COPY of it, and APPEND outside Drafts, are ``NO [CANNOT]``; APPEND to Drafts is
``draftMessage``.

Errors: no answer or refused credentials → `StoreUnavailable` (NO [UNAVAILABLE]); code
41 → `FolderNotFound`; 45 → `MessageGone`; any other code → `StoreError` with its text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import re
import time
from collections import OrderedDict
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

from gateway.backends.legacy_ws.client import (
    LegacyAuthError,
    LegacyError,
    LegacyTooLarge,
    LegacyUnavailable,
    LegacyWsClient,
)
from gateway.backends.legacy_ws.mime import (
    MimeRejected,
    content_key,
    historic_date,
    message_to_rfc5322,
    rfc5322_to_message,
)
from gateway.backends.legacy_ws.uidmap import (
    DELETED,
    Entry,
    FlagChange,
    TooManyKeywords,
    UidMap,
    mark,
    mark_owner,
)
from gateway.backends.legacy_ws.watch import BalWatch, Folder, Kept, Watches
from gateway.imap.codes import Code
from gateway.imap.mailstore import (
    DELIMITER,
    SYSTEM_FLAGS,
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
    Unsupported,
)
from gateway.mss.historic_ws import IMAP_FLAGS
from gateway.runtime.tls import backend_context
from gateway.settings import BackendSettings

log = logging.getLogger(__name__)

ROOT = 1  # Zimbra's USER_ROOT: the parent of top-level folders
INBOX, TRASH, JUNK, SENT, DRAFTS = 2, 3, 4, 5, 6
SPECIAL: dict[int, SpecialUse] = {
    SENT: "\\Sent",
    DRAFTS: "\\Drafts",
    TRASH: "\\Trash",
    JUNK: "\\Junk",
}
FOLDER_MISSING, MESSAGE_MISSING, DUPLICATE_FOLDER = 41, 45, 30
# historic flag, IMAP flag, whether the IMAP flag is set when the historic one is
FLAG_MAP: tuple[tuple[str, str, bool], ...] = (
    ("UNREAD", "\\Seen", False),
    *((historic, imap, True) for imap, historic in IMAP_FLAGS),
)
ON_PLATFORM = frozenset({"\\Seen", "\\Flagged"})  # set through updateMessages
SHOWN_BY_PLATFORM = frozenset({"\\Answered", "\\Draft", "$Forwarded"})  # it says, never sets
MAX_KEYWORDS = 64  # per message, as Dovecot
MAX_KEYWORD_LENGTH = 64  # octets: gw_legacy_flags.flag
MAX_FOLDER_KEYWORDS = 256  # distinct, per folder: every SELECT lists them in FLAGS
KEYWORD = re.compile(r"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")  # RFC 3501 atom
_SYSTEM = {flag.lower(): flag for flag in SYSTEM_FLAGS}
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
MAX_SIZES = 200_000
MAX_DECLARED = 64 * 1024 * 1024  # an attachment size beyond this is not believed
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def imap_flags(message: Mapping[str, Any]) -> frozenset[str]:
    """The IMAP flags of a historic message object."""
    raw = message.get("flags")
    historic = {f for f in raw if isinstance(f, str)} if isinstance(raw, list) else set()
    flags = set()
    for name, flag, when_set in FLAG_MAP:
        if (name in historic) == when_set:
            flags.add(flag)
    return frozenset(flags)


@contextlib.contextmanager
def translated(context: str = "") -> Iterator[None]:
    """The client's failures as the engine's `StoreError`s."""
    try:
        yield
    except LegacyTooLarge as exc:
        log.warning("legacy_ws.too_large", extra={"error": str(exc), "context": context})
        what = context or "answer of the historic mail service"
        raise StoreError(f"{what} too large for the gateway", Code.LIMIT) from None
    except LegacyUnavailable as exc:
        log.warning("legacy_ws.unavailable", extra={"error": exc.reason, "context": context})
        raise StoreUnavailable("historic mail service unavailable, try again later") from None
    except LegacyAuthError as exc:
        log.error("legacy_ws.auth_refused", extra={"code": exc.code, "context": context})
        raise StoreUnavailable("historic mail service refused the gateway") from None
    except LegacyError as exc:
        if exc.code == FOLDER_MISSING:
            raise FolderNotFound(context or "folder") from None
        if exc.code == MESSAGE_MISSING:
            raise MessageGone() from None
        if exc.code == DUPLICATE_FOLDER:
            raise FolderExists(context or "folder") from None
        raise StoreError(f"historic mail service refused ({exc.code}): {exc.message}") from None


class MessageCache:
    """Rebuilt messages by (backend, BAL, messageId, content key): an LRU bounded in octets,
    and their sizes (bounded in count) for RFC822.SIZE."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, max_sizes: int = MAX_SIZES) -> None:
        self.max_bytes = max_bytes
        self.max_sizes = max_sizes
        self._bytes: OrderedDict[tuple[str, ...], bytes] = OrderedDict()
        self._sizes: OrderedDict[tuple[str, ...], int] = OrderedDict()
        self._total = 0

    def get(self, key: tuple[str, ...]) -> bytes | None:
        data = self._bytes.get(key)
        if data is not None:
            self._bytes.move_to_end(key)
        return data

    def put(self, key: tuple[str, ...], data: bytes) -> None:
        self.remember_size(key, len(data))
        if len(data) > self.max_bytes or key in self._bytes:
            return
        self._bytes[key] = data
        self._total += len(data)
        while self._total > self.max_bytes:
            _, old = self._bytes.popitem(last=False)
            self._total -= len(old)

    def size(self, key: tuple[str, ...]) -> int | None:
        return self._sizes.get(key)

    def remember_size(self, key: tuple[str, ...], size: int) -> None:
        self._sizes[key] = size
        self._sizes.move_to_end(key)
        while len(self._sizes) > self.max_sizes:
            self._sizes.popitem(last=False)


@dataclass
class LegacyBackends:
    """What the legacy backends of one gateway share: a client per backend (created at
    first use, closed by `aclose`), the UID map, the message cache, and the watch of each
    BAL in use (whose versions are the engine's change signal: `Watches.version`, `wait`)."""

    uidmap: UidMap
    cache: MessageCache = field(default_factory=MessageCache)
    watches: Watches = field(default_factory=Watches)
    _clients: dict[str, LegacyWsClient] = field(default_factory=dict)

    def client(self, name: str, backend: BackendSettings) -> LegacyWsClient:
        client = self._clients.get(name)
        if client is None:
            assert backend.ws_url is not None
            client = LegacyWsClient(
                backend.ws_url,
                user=backend.master_user,
                password=backend.password(),
                numhomologation=backend.numhomologation,
                timeout=backend.reply_timeout,
                connect_timeout=backend.connect_timeout,
                tls=backend_context(backend.ca_file, backend.tls_verify),
            )
            self._clients[name] = client
        return client

    def store(self, name: str, backend: BackendSettings, bal: str) -> LegacyWsStore:
        client = self.client(name, backend)
        address = bal.lower()

        async def marks(folder_id: int) -> frozenset[str]:
            return await self.uidmap.marks(name, address, folder_id)

        watch = self.watches.watch(client, address, backend.poll_interval, marks)
        return LegacyWsStore(client, self.uidmap, name, watch, cache=self.cache)

    async def aclose(self) -> None:
        await self.watches.aclose()
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


class LegacyWsStore:
    """One historic BAL as a `MailStore` (one per IMAP session, sharing the BAL's watch)."""

    def __init__(
        self,
        client: LegacyWsClient,
        uidmap: UidMap,
        backend_name: str,
        watch: BalWatch,
        *,
        cache: MessageCache | None = None,
    ) -> None:
        self._client = client
        self._uidmap = uidmap
        self._backend = backend_name
        self._watch = watch
        self._bal = watch.bal
        self._poll = watch.poll
        self._cache = cache if cache is not None else MessageCache()
        watch.join(self)

    @property
    def address(self) -> str:
        return self._bal

    async def aclose(self) -> None:
        """The session ended: the BAL is watched while some session still uses it."""
        self._watch.leave(self)

    # -- folders -------------------------------------------------------------------------

    async def _folder_list(self) -> list[Folder]:
        now = time.monotonic()
        kept = self._watch.folders
        if kept is not None and now - kept[1] < self._poll:
            return kept[0]
        with translated():
            tree = await self._client.list_folders(self._bal)
        found: list[Folder] = []
        stack: list[tuple[dict[str, Any], str]] = [(f, "") for f in reversed(tree)]
        while stack:
            folder, prefix = stack.pop()
            folder_id = folder["id"]
            if folder_id == INBOX:
                name = "INBOX"
            else:
                own = str(folder["name"]).replace(DELIMITER, "_").strip() or f"#{folder_id}"
                if not prefix and own.upper() == "INBOX":
                    own = f"{own}-{folder_id}"
                name = f"{prefix}{own}"
            found.append(Folder(name, folder_id, SPECIAL.get(folder_id)))
            children = folder.get("children") or []
            stack.extend((child, name + DELIMITER) for child in reversed(children))
        found.sort(key=lambda f: (f.folder_id != INBOX, f.name))
        self._watch.folders = (found, now)
        return found

    def _forget_folders(self) -> None:
        self._watch.folders = None

    async def _folder(self, name: str) -> Folder:
        wanted = "INBOX" if name.upper() == "INBOX" else name
        for folder in await self._folder_list():
            if folder.name == wanted:
                return folder
        raise FolderNotFound(name)

    async def list_folders(self) -> Sequence[FolderInfo]:
        return [FolderInfo(f.name, f.special_use) for f in await self._folder_list()]

    async def historic_folder_ids(self) -> dict[str, int]:
        """IMAP name → historic folder id (a BAL leaving the platform keeps its ids)."""
        return {f.name: f.folder_id for f in await self._folder_list()}

    async def historic_ids(self, name: str) -> dict[int, str]:
        """UID → messageId of the messages of folder `name` (read afresh; not those COPY
        moved away and still shown until expunged: their id lives in their new folder)."""
        folder = await self._folder(name)
        kept = await self._state(folder, fresh=True)
        away = self._watch.originals.get(folder.folder_id, {})
        return {
            uid: str(message["messageId"])
            for uid, message in kept.messages.items()
            if message["messageId"] not in away
        }

    async def create_folder(self, name: str) -> None:
        _check_name(name)
        folders = {f.name: f for f in await self._folder_list()}
        if name in folders or name.upper() == "INBOX":
            raise FolderExists(name)
        parent_id = ROOT
        parts = name.split(DELIMITER)
        for depth in range(1, len(parts) + 1):
            level = DELIMITER.join(parts[:depth])
            existing = folders.get(level)
            if existing is not None:
                parent_id = existing.folder_id
                continue
            with translated(level):
                created = await self._client.create_folder(self._bal, parts[depth - 1], parent_id)
            self._forget_folders()
            new_id = created.get("id")
            if not isinstance(new_id, int) or isinstance(new_id, bool):
                raise StoreUnavailable("historic mail service gave no folder id")
            parent_id = new_id

    async def delete_folder(self, name: str) -> None:
        folder = await self._folder(name)
        if folder.folder_id == INBOX or folder.special_use is not None:
            raise Unsupported(f"{name} is a special folder of the historic platform")
        # the platform deletes the subfolders with it
        subtree = [folder] + [
            f for f in await self._folder_list() if f.name.startswith(name + DELIMITER)
        ]
        with translated(name):
            await self._client.delete_folder(self._bal, folder.folder_id)
        self._forget_folders()
        self._watch.changed([f.folder_id for f in subtree])
        for gone in subtree:
            await self._uidmap.forget_folder(self._backend, self._bal, gone.folder_id)

    async def rename_folder(self, old: str, new: str) -> None:
        _check_name(new)
        folder = await self._folder(old)
        if folder.folder_id == INBOX or folder.special_use is not None:
            raise Unsupported(f"{old} is a special folder of the historic platform")
        old_parent, _, _ = old.rpartition(DELIMITER)
        new_parent, _, new_leaf = new.rpartition(DELIMITER)
        if old_parent != new_parent:
            raise Unsupported("the gateway renames historic folders within their parent only")
        with translated(old):
            await self._client.rename_folder(self._bal, folder.folder_id, new_leaf)
        self._forget_folders()

    async def subscribe(self, name: str, subscribed: bool) -> None:
        """Accepted and ignored: every historic folder is listed as subscribed."""
        await self._folder(name)

    # -- state ---------------------------------------------------------------------------

    async def folder_state(self, name: str) -> FolderState:
        folder = await self._folder(name)
        return (await self._state(folder)).state

    async def _state(self, folder: Folder, *, fresh: bool = False) -> Kept:
        watch = self._watch
        kept = watch.states.get(folder.folder_id)
        if kept is not None and not fresh and watch.fresh(kept):
            return kept
        async with watch.lock:
            again = watch.states.get(folder.folder_id)
            if again is not None and again is not kept and watch.fresh(again):
                return again  # another session read it while we waited
            return await self._read_state(folder)

    async def _read_state(self, folder: Folder) -> Kept:
        started = time.monotonic()
        since = self._watch.generation()
        key = (self._backend, self._bal, folder.folder_id)
        # UIDs read before the search: one given meanwhile (APPEND, COPY, another node) is
        # for a message this search may not show yet, and must not be forgotten
        known = await self._uidmap.entries(*key)
        with translated(folder.name):
            # with the HTML body: the rebuild needs it (syncs ask for no body at all)
            found = await self._client.search_messages(self._bal, folder.folder_id, html=True)
        by_id = {m["messageId"]: m for m in found}
        originals = self._watch.originals.get(folder.folder_id, {})
        # an original back in the folder, or whose UID another node let go, is shown no more
        self._watch.drop_originals(
            folder.folder_id, [m for m in originals if m in by_id or m not in known]
        )
        originals = self._watch.originals.get(folder.folder_id, {})
        # what the folder shows: its messages, and those COPY moved away, until expunged
        shown = {**originals, **by_id}
        keys = {message_id: content_key(m) for message_id, m in shown.items()}
        # a message gone, or changed under its id (a draft replaced), loses its UID
        stale = [
            message_id
            for message_id, entry in known.items()
            if message_id not in shown
            or (entry.content_key is not None and entry.content_key != keys[message_id])
        ]
        if stale:
            await self._uidmap.forget_uids(*key, {m: known.pop(m).uid for m in stale})
        unkeyed = {m: keys[m] for m, entry in known.items() if entry.content_key is None}
        if unkeyed:
            await self._uidmap.set_keys(*key, unkeyed)
        new = sorted(
            (m for message_id, m in by_id.items() if message_id not in known),
            key=lambda m: (historic_date(m) or EPOCH, _id_order(m["messageId"])),
        )
        uids = {message_id: entry.uid for message_id, entry in known.items()}
        if new:
            ids = [m["messageId"] for m in new]
            uids.update(await self._uidmap.assign(*key, ids, {m: keys[m] for m in ids}))
        uidvalidity, uidnext = await self._uidmap.folder(*key)
        metas: list[MessageMeta] = []
        messages: dict[int, dict[str, Any]] = {}
        cache_keys: dict[int, tuple[str, ...]] = {}
        for message_id, uid in sorted(uids.items(), key=lambda item: item[1]):
            message = shown[message_id]
            flags = imap_flags(message)
            entry = known.get(message_id)
            if entry is not None:
                flags |= entry.flags - ON_PLATFORM - {DELETED}
                if entry.deleted:
                    flags |= {DELETED}
            when = historic_date(message) or EPOCH
            cache_keys[uid] = (self._backend, self._bal, message_id, keys[message_id])
            metas.append(MessageMeta(uid, flags, when, self._size(message, cache_keys[uid])))
            messages[uid] = message
        uidnext = max(uidnext, max(uids.values(), default=0) + 1)
        state = FolderState(uidvalidity, uidnext, tuple(metas))
        marks = frozenset(_marks(known))
        kept = Kept(state, messages, cache_keys, frozenset(shown), started, marks)
        self._watch.keep(folder.folder_id, kept, since)
        return kept

    def _size(self, message: Mapping[str, Any], key: tuple[str, ...]) -> int:
        """The length of the rebuilt message, without downloading its attachments (with
        none, the rebuild is the message itself, kept for FETCH)."""
        size = self._cache.size(key)
        if size is None:
            entries = _attachments(message)
            placeholders = {entry["part"]: bytes(_declared(entry)) for entry in entries}
            try:
                data = message_to_rfc5322(message, placeholders)
            except (KeyError, ValueError, TypeError):
                self._cache.remember_size(key, 0)
                return 0
            if entries:
                self._cache.remember_size(key, len(data))
            else:
                self._cache.put(key, data)
            size = len(data)
        return size

    # -- messages ------------------------------------------------------------------------

    async def fetch_message(self, name: str, uid: int) -> bytes:
        found = await self.fetch_messages(name, [uid])
        if uid not in found:
            raise MessageGone()
        return found[uid]

    async def fetch_messages(self, name: str, uids: Sequence[int]) -> dict[int, bytes]:
        folder = await self._folder(name)
        kept = await self._state(folder)
        if any(uid not in kept.messages for uid in uids):
            kept = await self._state(folder, fresh=True)
        out: dict[int, bytes] = {}
        for uid in uids:
            message = kept.messages.get(uid)
            if message is None:
                continue
            try:
                out[uid] = await self._rebuild(message, kept.keys[uid])
            except MessageGone:
                continue
        return out

    async def _rebuild(self, message: Mapping[str, Any], key: tuple[str, ...]) -> bytes:
        data = self._cache.get(key)
        if data is not None:
            return data
        files: dict[str, bytes] = {}
        for entry in _attachments(message):
            with translated():
                files[entry["part"]] = await self._client.download_attachment(
                    self._bal, str(message["messageId"]), entry["part"]
                )
            if len(files[entry["part"]]) != _declared(entry):
                log.warning(
                    "legacy_ws.attachment_size_differs",
                    extra={"bal": self._bal, "message": message["messageId"]},
                )
        try:
            data = message_to_rfc5322(message, files)
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"historic message cannot be rebuilt: {type(exc).__name__}") from None
        self._cache.put(key, data)
        return data

    async def append(
        self, name: str, message: bytes, flags: Collection[str], internal_date: dt.datetime
    ) -> tuple[int, int]:
        folder = await self._folder(name)
        if folder.folder_id != DRAFTS:
            raise Unsupported("the historic platform takes new messages only in Drafts")
        wanted = _checked_flags(flags)
        if _keywords(wanted.values()):
            wanted = _in_folder(await self._state(folder), wanted)
        try:
            draft = rfc5322_to_message(message)
        except MimeRejected as exc:
            raise StoreError(f"draft refused: {exc.reason}", Code.CANNOT) from None
        with translated(name):
            saved = await self._client.draft_message(self._bal, draft)
        key = (self._backend, self._bal, folder.folder_id)
        message_id = saved["messageId"]
        assigned = await self._uidmap.assign(*key, [message_id], {message_id: content_key(saved)})
        held = _held(frozenset(wanted.values()), saved)
        if held:
            await self._change_flags(key, {message_id: FlagChange(add=held)})
        uidvalidity, _ = await self._uidmap.folder(*key)
        self._watch.changed([folder.folder_id])
        return uidvalidity, assigned[message_id]

    async def store_flags(
        self, name: str, uids: Collection[int], mode: FlagMode, flags: Collection[str]
    ) -> dict[int, frozenset[str]]:
        wanted = _checked_flags(flags)
        folder = await self._folder(name)
        kept = await self._state(folder)
        if mode != "remove":
            wanted = _in_folder(kept, wanted)
        metas = {meta.uid: meta for meta in kept.state.messages}
        operations: dict[str, list[str]] = {}
        marks: dict[bool, list[str]] = {True: [], False: []}
        changes: dict[str, FlagChange] = {}
        # uid → (messageId, its flags but those the gateway keeps, those, \Deleted mark)
        done: dict[int, tuple[str, frozenset[str], frozenset[str], bool]] = {}
        for uid in uids:
            meta, message = metas.get(uid), kept.messages.get(uid)
            if meta is None or message is None:
                continue
            current = meta.flags
            new = _apply(current, mode, wanted)
            message_id = str(message["messageId"])
            for flag, on, off in (
                ("\\Seen", "READ", "UNREAD"),
                ("\\Flagged", "FLAGGED", "UNFLAGGED"),
            ):
                if flag in new and flag not in current:
                    operations.setdefault(on, []).append(message_id)
                elif flag not in new and flag in current:
                    operations.setdefault(off, []).append(message_id)
            deleted = mark(message_id, DELETED) in kept.marks
            if (DELETED in new) != (DELETED in current):
                deleted = DELETED in new
                marks[deleted].append(message_id)
            # what the platform says itself stays, whatever the client asks
            forced = _forced(message)
            after = frozenset(new | forced)
            held = _held(after, message)  # what the gateway keeps
            if len(_keywords(held)) > MAX_KEYWORDS:
                raise StoreError(f"more than {MAX_KEYWORDS} keywords on a message", Code.LIMIT)
            asked = {_spelling(after, flag) for flag in wanted.values()}
            asked -= ON_PLATFORM | {DELETED}
            if mode == "replace":
                changes[message_id] = FlagChange(add=held, replace=True)
            elif mode == "add" and asked - forced:
                changes[message_id] = FlagChange(add=frozenset(asked - forced))
            elif mode == "remove" and asked:
                changes[message_id] = FlagChange(remove=frozenset(asked))
            done[uid] = (message_id, after - held, held, deleted)
        key = (self._backend, self._bal, folder.folder_id)
        # what the table holds now, with what other sessions and nodes set meanwhile
        held_now = await self._change_flags(key, changes) if changes else {}
        for operation, message_ids in operations.items():
            with translated(name):
                await self._client.update_messages(self._bal, message_ids, operation)
        for deleted, message_ids in marks.items():
            if message_ids:
                await self._uidmap.mark_deleted(*key, message_ids, deleted=deleted)
        result: dict[int, frozenset[str]] = {}
        new_marks: dict[str, set[str]] = {}
        for uid, (message_id, base, held, deleted) in done.items():
            held = held_now.get(message_id, held)
            result[uid] = base | held
            new_marks[message_id] = {mark(message_id, f) for f in held}
            if deleted:
                new_marks[message_id].add(mark(message_id, DELETED))
        if result:
            self._update_kept(folder, result, new_marks)
        return result

    async def _change_flags(
        self, key: tuple[str, str, int], changes: Mapping[str, FlagChange]
    ) -> dict[str, frozenset[str]]:
        try:
            return await self._uidmap.change_flags(
                *key, changes, per_message=MAX_KEYWORDS, per_folder=MAX_FOLDER_KEYWORDS
            )
        except TooManyKeywords as exc:  # other sessions or nodes added some meanwhile
            raise StoreError(str(exc), Code.LIMIT) from None

    def _update_kept(
        self,
        folder: Folder,
        flags: Mapping[int, frozenset[str]],
        marks: Mapping[str, Collection[str]],
    ) -> None:
        """The shared state with the flags just set (`marks`: the gateway's marks of each
        message changed, see `mark`): no search is needed to see our own change, and the
        other sessions of the BAL hear of it at once."""
        kept = self._watch.states.get(folder.folder_id)
        if kept is not None:
            metas = tuple(
                MessageMeta(m.uid, flags[m.uid], m.internal_date, m.size) if m.uid in flags else m
                for m in kept.state.messages
            )
            state = FolderState(kept.state.uidvalidity, kept.state.uidnext, metas)
            others = {m for m in kept.marks if mark_owner(m) not in marks}
            mine = {m for message_marks in marks.values() for m in message_marks}
            self._watch.states[folder.folder_id] = dataclasses.replace(
                kept, state=state, marks=frozenset(others | mine)
            )
        self._watch.changed()

    async def copy(self, name: str, uids: Collection[int], destination: str) -> CopyResult:
        """The platform holds one copy of a message: COPY moves it to `destination` at
        once (under the UIDs COPYUID announces), and the original stays listed in `name`
        for this gateway's sessions until they expunge it, which then deletes nothing.
        Clients without MOVE (COPY, ``\\Deleted``, EXPUNGE) get exactly a move; a client
        keeping the original finds the message in `destination` once the original is no
        longer shown (every session of the BAL gone): moved, never lost."""

        async def keep_originals(
            source: Folder, target: Folder, moved: list[dict[str, Any]]
        ) -> None:
            for message in moved:
                self._watch.keep_original(source.folder_id, message)
            self._watch.changed([source.folder_id, target.folder_id])

        return await self._transfer(name, uids, destination, keep_originals)

    async def move(self, name: str, uids: Collection[int], destination: str) -> CopyResult:
        async def forget_originals(
            source: Folder, target: Folder, moved: list[dict[str, Any]]
        ) -> None:
            await self._moved(source, target, [str(m["messageId"]) for m in moved])

        return await self._transfer(name, uids, destination, forget_originals)

    async def _transfer(
        self,
        name: str,
        uids: Collection[int],
        destination: str,
        then: Callable[[Folder, Folder, list[dict[str, Any]]], Awaitable[None]],
    ) -> CopyResult:
        """``moveMessages`` of the messages of `uids` found in `name`, their UIDs in
        `destination` (kept with their content keys) for COPYUID, with the flags the
        gateway kept for them, then `then` what becomes of their originals."""
        source = await self._folder(name)
        target = await self._folder(destination)
        if source.folder_id == target.folder_id:
            raise Unsupported("source and destination are the same folder")
        kept = await self._state(source)
        chosen = sorted(uid for uid in set(uids) if uid in kept.messages)
        originals = self._watch.originals.get(source.folder_id, {})
        if any(str(kept.messages[uid]["messageId"]) in originals for uid in chosen):
            raise Unsupported(
                "already copied to another folder: the historic platform holds one copy"
            )
        keys = {str(kept.messages[uid]["messageId"]): kept.keys[uid][3] for uid in chosen}
        target_key = (self._backend, self._bal, target.folder_id)
        pairs: tuple[tuple[int, int], ...] = ()
        if keys:
            ids = list(keys)
            with translated(destination):
                await self._client.move_messages(self._bal, ids, target.folder_id)
            assigned = await self._uidmap.assign(*target_key, ids, keys)
            pairs = tuple((uid, assigned[m]) for uid, m in zip(chosen, ids, strict=True))
            # from the state, not the table: a read of the source meanwhile may have
            # found the messages gone and forgotten their rows already
            metas = {meta.uid: meta for meta in kept.state.messages}
            carried = {
                message_id: FlagChange(add=held)
                for uid, message_id in zip(chosen, ids, strict=True)
                if (held := _held(metas[uid].flags, kept.messages[uid]))
            }
            if carried:
                await self._uidmap.change_flags(*target_key, carried)
            await then(source, target, [kept.messages[uid] for uid in chosen])
        uidvalidity, _ = await self._uidmap.folder(*target_key)
        return CopyResult(uidvalidity, pairs)

    async def _moved(self, source: Folder, target: Folder, ids: list[str]) -> None:
        await self._uidmap.forget(self._backend, self._bal, source.folder_id, ids)
        self._watch.changed([source.folder_id, target.folder_id])

    async def expunge(self, name: str, uids: Collection[int] | None = None) -> list[int]:
        folder = await self._folder(name)
        if not _doomed(await self._state(folder), uids):
            return []
        # DELETE is for good: first hear every change up to now, so that a message moved
        # away meanwhile (and so still listed here) is not deleted from where it went
        if await self._watch.refresh():
            kept = await self._state(folder)
        else:
            kept = await self._state(folder, fresh=True)
        doomed = _doomed(kept, uids)
        if not doomed:
            return []
        ids = [str(kept.messages[uid]["messageId"]) for uid in doomed]
        originals = self._watch.originals.get(folder.folder_id, {})
        deleted = [m for m in ids if m not in originals]  # the others were moved by COPY
        if deleted:
            with translated(name):
                await self._client.update_messages(self._bal, deleted, "DELETE")
        key = (self._backend, self._bal, folder.folder_id)
        await self._uidmap.forget(*key, ids)
        self._watch.drop_originals(folder.folder_id, ids)
        self._watch.changed([folder.folder_id])
        return doomed


def _checked_flags(flags: Collection[str]) -> dict[str, str]:
    """The flags asked for, by lower case (IMAP flags compare without regard to case),
    each in its first spelling; refused when invalid or beyond the bounds."""
    wanted: dict[str, str] = {}
    for flag in flags:
        lowered = flag.lower()
        if flag.startswith("\\"):
            if lowered not in _SYSTEM:
                raise StoreError(f"unknown system flag {flag[:MAX_KEYWORD_LENGTH]!r}", Code.CANNOT)
            flag = _SYSTEM[lowered]
        elif len(flag.encode()) > MAX_KEYWORD_LENGTH:
            raise StoreError(f"keyword longer than {MAX_KEYWORD_LENGTH} octets", Code.LIMIT)
        elif not KEYWORD.fullmatch(flag):
            raise StoreError(f"invalid keyword {flag!r}", Code.CANNOT)
        wanted.setdefault(lowered, flag)
    if len(_keywords(wanted.values())) > MAX_KEYWORDS:
        raise StoreError(f"more than {MAX_KEYWORDS} keywords on a message", Code.LIMIT)
    return wanted


def _in_folder(kept: Kept, wanted: Mapping[str, str]) -> dict[str, str]:
    """`wanted` spelt as the folder spells the keywords it has already (one spelling per
    folder in FLAGS); refused if new ones would make that list too long."""
    known = {k.lower(): k for meta in kept.state.messages for k in _keywords(meta.flags)}
    added = {k.lower() for k in _keywords(wanted.values())} - known.keys()
    if added and len(known) + len(added) > MAX_FOLDER_KEYWORDS:
        raise StoreError(f"more than {MAX_FOLDER_KEYWORDS} keywords in a folder", Code.LIMIT)
    return {lowered: known.get(lowered, flag) for lowered, flag in wanted.items()}


def _keywords(flags: Iterable[str]) -> set[str]:
    return {f for f in flags if not f.startswith("\\")}


def _apply(current: frozenset[str], mode: FlagMode, wanted: Mapping[str, str]) -> set[str]:
    """STORE's `mode` of `wanted` (by lower case) on `current`, keeping the spelling of a
    flag the message has already."""
    spelled = {flag.lower(): flag for flag in current}
    if mode == "replace":
        return {spelled.get(lowered, flag) for lowered, flag in wanted.items()}
    if mode == "add":
        return set(current) | {flag for lowered, flag in wanted.items() if lowered not in spelled}
    return {flag for flag in current if flag.lower() not in wanted}


def _spelling(flags: Collection[str], flag: str) -> str:
    """`flag` as `flags` spell it, if they have it."""
    lowered = flag.lower()
    return next((f for f in flags if f.lower() == lowered), flag)


def _forced(message: Mapping[str, Any]) -> frozenset[str]:
    """The flags the platform shows on a message and the client cannot take away."""
    flags = imap_flags(message)
    return (flags & SHOWN_BY_PLATFORM) | (flags & {DELETED})


def _held(flags: frozenset[str], message: Mapping[str, Any]) -> frozenset[str]:
    """Of a message's flags, those the gateway keeps in its table."""
    return flags - ON_PLATFORM - {DELETED} - _forced(message)


def _marks(known: Mapping[str, Entry]) -> Iterator[str]:
    for message_id, entry in known.items():
        if entry.deleted:
            yield mark(message_id, DELETED)
        for flag in entry.flags:
            yield mark(message_id, flag)


def _doomed(kept: Kept, uids: Collection[int] | None) -> list[int]:
    """The UIDs an EXPUNGE removes: flagged ``\\Deleted`` (and among `uids` if given)."""
    allowed = set(uids) if uids is not None else None
    return [
        meta.uid
        for meta in kept.state.messages
        if "\\Deleted" in meta.flags and (allowed is None or meta.uid in allowed)
    ]


def _attachments(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = message.get("attachments")
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("part"), str)]


def _declared(entry: Mapping[str, Any]) -> int:
    size = entry.get("size")
    if isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_DECLARED:
        return size
    return 0


def _id_order(message_id: str) -> tuple[int, str]:
    return (int(message_id), "") if message_id.isdigit() else (2**63, message_id)


def _check_name(name: str) -> None:
    if not name or len(name) > 255:
        raise StoreError("folder name empty or too long", Code.CANNOT)
    if any(not part for part in name.split(DELIMITER)) or any(c in name for c in "*%\r\n\0"):
        raise StoreError(f"invalid folder name {name!r}", Code.CANNOT)
