"""Change detection on historic BAL: one ``syncMessages`` poller per BAL in use.

The historic services push nothing; a client learns what changed by replaying
``syncMessages`` from its last token. The gateway runs one such poller per BAL that has
at least one open session (every `poll_interval` seconds, default 10), whatever the number
of sessions, and what the poller learns serves them all:

* the BAL's folder states (one paged ``searchMessages`` each) are shared by its sessions
  and kept until a sync reports a change in that folder, so a quiet mailbox costs one
  small sync per interval and no search at all;
* each change bumps the BAL's version, which is the engine's change signal: NOOP re-reads
  only when it moved, and IDLE wakes on it (see `gateway.imap.mailstore.ChangeHub`).

A state is trusted only within the token chain: read after the first sync answered (so no
change can fall between the token and the search) and confirmed by a sync that started
less than a few intervals ago. When syncs fail (the services down, a token refused), the
poller bumps the version at each interval, states fall back to expiring after
`poll_interval`, a refused token starts a new chain, and the sync itself is retried less
and less often (up to `MAX_BACKOFF` intervals apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.backends.legacy_ws.client import (
    LegacyAuthError,
    LegacyError,
    LegacyTooLarge,
    LegacyUnavailable,
    LegacyWsClient,
)
from gateway.imap.mailstore import FolderState, SpecialUse

log = logging.getLogger(__name__)

CONFIRMED_FOR = 3  # poll intervals a state stays trusted after the last good sync
MAX_TOKENS = 100_000  # BAL whose last sync token is remembered once no session is open
FOLDER_CHECK = 3  # polls between re-reads of the folder list
MAX_BACKOFF = 32  # poll intervals between sync attempts at worst (5 min 20 s at 10 s)


@dataclass
class Kept:
    """A folder's state as read, shared by the BAL's sessions."""

    state: FolderState
    messages: dict[int, dict[str, Any]]  # UID → message object
    keys: dict[int, tuple[str, ...]]  # UID → its key in the message cache
    ids: frozenset[str]
    at: float  # monotonic time the read started
    marks: frozenset[str] = frozenset()  # the flags the gateway keeps (\\Deleted, keywords)


@dataclass(frozen=True)
class Folder:
    """A historic folder under its IMAP name."""

    name: str
    folder_id: int
    special_use: SpecialUse | None


class BalWatch:
    """What the sessions of one historic BAL share, and the poller that keeps it true."""

    def __init__(
        self,
        client: LegacyWsClient,
        bal: str,
        poll_interval: float,
        on_idle: Callable[[BalWatch], None],
        *,
        token: str | None = None,
        marks: Callable[[int], Awaitable[frozenset[str]]] | None = None,
    ) -> None:
        self.client = client
        self.bal = bal
        self.poll = poll_interval
        self.states: dict[int, Kept] = {}
        self.folders: tuple[list[Folder], float] | None = None
        self.lock = asyncio.Lock()  # one search per BAL at a time
        self.version = 0
        self._users: weakref.WeakSet[object] = weakref.WeakSet()
        self._changed = asyncio.Event()
        self._token = token  # a chain resumed where the last watch of this BAL left it
        self._marks = marks  # the folder's gateway-kept flags as the database has them now
        self._base = math.inf  # when the token chain began (monotonic)
        self._confirmed = -math.inf  # when the last good sync started
        # COPY: source folder → messageId → the message, moved away, still shown there
        self.originals: dict[int, dict[str, dict[str, Any]]] = {}
        self._heard = 0  # changes heard so far
        self._sync_lock = asyncio.Lock()  # the poller's syncs and `refresh`, one at a time
        self._polls = 0
        self._recheck: set[int] = set()  # folders read before the chain began
        self._on_idle = on_idle
        self._task: asyncio.Task[None] | None = None

    # -- users -------------------------------------------------------------------------

    def join(self, user: object) -> None:
        self._users.add(user)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"legacy-watch {self.bal}")

    def leave(self, user: object) -> None:
        self._users.discard(user)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- what sessions ask ---------------------------------------------------------------

    def fresh(self, kept: Kept) -> bool:
        now = time.monotonic()
        if kept.at >= self._base and now - max(kept.at, self._confirmed) < CONFIRMED_FOR * max(
            self.poll, 1.0
        ):
            return True
        return now - kept.at < self.poll

    async def wait(self, seen: int) -> None:
        while self.version == seen:
            self._changed.clear()
            await self._changed.wait()

    def generation(self) -> int:
        """Changes heard so far in the BAL. A state read while one was heard is not shared:
        a message moved out of the folder being read is reported under its new folder."""
        return self._heard

    def keep(self, folder_id: int, kept: Kept, since: int) -> None:
        """Share a state read, unless a change was heard while it was read."""
        if self._heard == since:
            self.states[folder_id] = kept

    def changed(self, folder_ids: Iterable[int] = (), *, everything: bool = False) -> None:
        """Forget the states of `folder_ids` (or all) and tell the sessions to look again."""
        if everything:
            self.states.clear()
            self.folders = None
        for folder_id in folder_ids:
            self.states.pop(folder_id, None)
        self._heard += 1
        self.version += 1
        self._changed.set()

    # -- COPY ----------------------------------------------------------------------------

    def keep_original(self, source: int, message: dict[str, Any]) -> None:
        """A message COPY moved away stays listed in `source` until expunged there."""
        self.originals.setdefault(source, {})[str(message["messageId"])] = message

    def drop_originals(self, source: int, message_ids: Iterable[str]) -> None:
        kept = self.originals.get(source)
        if kept is not None:
            for message_id in message_ids:
                kept.pop(message_id, None)
            if not kept:
                del self.originals[source]

    # -- the poller ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            failures = 0
            while self._users:
                try:
                    async with self._sync_lock:
                        ok = await self._sync_once()
                except Exception:  # never let the BAL go unwatched while in use
                    log.exception("legacy_ws.sync_crashed", extra={"bal": self.bal})
                    self.changed()
                    ok = False
                failures = 0 if ok else failures + 1
                self._polls += 1
                if ok and self._polls % FOLDER_CHECK == 0 and self.folders is not None:
                    # folders created, renamed or deleted elsewhere make no sync change
                    self.folders = None
                    self.changed()
                await self._pause(failures)
        finally:
            if self._task is asyncio.current_task():
                self._task = None
                self._on_idle(self)

    @property
    def token(self) -> str | None:
        return self._token

    async def refresh(self) -> bool:
        """Hear every change made up to now, out of the poller's rhythm (before deleting
        for good); False when no chain of tokens runs, so nothing can be heard."""
        async with self._sync_lock:
            if self._token is None or self._base == math.inf:
                return False  # the chain has not begun: nothing heard can be trusted yet
            return await self._sync_once()

    async def _pause(self, failures: int) -> None:
        """One interval; after repeated failures (the platform down, a BAL whose first
        sync is too large) the sync is tried less and less often, up to `MAX_BACKOFF`
        intervals apart, while the sessions still hear every interval that they must
        re-read their states themselves."""
        intervals = min(2 ** max(failures - 1, 0), MAX_BACKOFF)
        for left in range(intervals, 0, -1):
            await asyncio.sleep(self.poll)
            if left > 1 and self._users:
                self.changed()

    async def _sync_once(self) -> bool:
        started = time.monotonic()
        try:
            result = await self.client.sync_messages(self.bal, self._token, html=False)
        except LegacyTooLarge as exc:
            # too many changes since the token (a bulk move on the platform) come again
            # the same: start a new chain; too large without a token, back off
            log.warning("legacy_ws.sync_too_large", extra={"bal": self.bal, "error": str(exc)})
            self._restart_chain()
            return False
        except (LegacyUnavailable, LegacyAuthError) as exc:
            log.warning("legacy_ws.sync_failed", extra={"bal": self.bal, "error": str(exc)})
            self.changed()
            return False
        except LegacyError as exc:  # a token the platform no longer knows: start over
            log.warning("legacy_ws.sync_reset", extra={"bal": self.bal, "code": exc.code})
            self._restart_chain()
            return False
        if self._base == math.inf:  # the chain (re)starts here
            self._token, self._base = result.token, time.monotonic()
            self._confirmed = started
            # a change between such a read and the token would never be reported
            self._recheck = {fid for fid, kept in self.states.items() if kept.at < self._base}
            return True
        self._token, self._confirmed = result.token, started
        touched = {m["folderId"] for m in result.modified if isinstance(m.get("folderId"), int)}
        touched |= self._recheck
        self._recheck = set()
        ids = {m["messageId"] for m in result.modified} | set(result.deleted)
        touched.update(fid for fid, kept in self.states.items() if not ids.isdisjoint(kept.ids))
        if touched or ids:
            self.changed(touched)
        await self._check_marks()
        return True

    def _restart_chain(self) -> None:
        """Nothing heard so far can be trusted: the next sync starts a new chain of tokens
        (it carries every message of the BAL), and every state is read again."""
        self._token, self._base = None, math.inf
        self.changed(everything=True)

    async def _check_marks(self) -> None:
        """The flags the services cannot hold (``\\Deleted``, keywords, ``\\Answered``,
        ``\\Draft``) live in the gateway's database, where another node may set them without
        any change on the platform: compare what each kept state shows."""
        if self._marks is None:
            return
        for folder_id, kept in list(self.states.items()):
            marks = await self._marks(folder_id)
            if marks != kept.marks and self.states.get(folder_id) is kept:
                self.changed([folder_id])


class Watches:
    """The BAL watches of one gateway; also the engine's change signal for them."""

    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        self._watches: dict[str, BalWatch] = {}
        # the last token of BAL no longer watched: a session coming back resumes the chain
        # instead of a first sync, which carries every message of the BAL
        self._tokens: OrderedDict[str, str] = OrderedDict()
        self._max_tokens = max_tokens

    def watch(
        self,
        client: LegacyWsClient,
        bal: str,
        poll_interval: float,
        marks: Callable[[int], Awaitable[frozenset[str]]] | None = None,
    ) -> BalWatch:
        key = bal.lower()
        found = self._watches.get(key)
        if found is None or found.client is not client:
            token = self._tokens.pop(key, None)
            found = BalWatch(client, key, poll_interval, self._idle, token=token, marks=marks)
            self._watches[key] = found
        return found

    def _idle(self, watch: BalWatch) -> None:
        if self._watches.get(watch.bal) is watch:
            del self._watches[watch.bal]
        if watch.token is not None:
            self._tokens[watch.bal] = watch.token
            self._tokens.move_to_end(watch.bal)
            while len(self._tokens) > self._max_tokens:
                self._tokens.popitem(last=False)

    def current(self, bal: str) -> BalWatch | None:
        """The watch of `bal` while sessions use it (for operators' checks and tests)."""
        return self._watches.get(bal.lower())

    def version(self, bal: str, folder: str) -> int:
        found = self._watches.get(bal.lower())
        return found.version if found is not None else 0

    async def wait(self, bal: str, folder: str, seen: int) -> None:
        found = self._watches.get(bal.lower())
        if found is None:
            await asyncio.Event().wait()  # callers bound it with a timeout
            return
        await found.wait(seen)

    async def aclose(self) -> None:
        watches, self._watches = list(self._watches.values()), {}
        for found in watches:
            await found.aclose()
