"""IMAP sessions to modern backends for the legacy front: a small bounded pool, and the
commands the historic operations need on top of the tools' `MailboxAccess`.

Historic clients make many short calls; logging in (TLS, SASL with the master login) for
each would cost more than the call. A session is kept per (backend, BAL) while idle, at
most `per_bal` of them and `total` in all, and closed once idle past `idle`. A session
that failed (timeout, disconnection, protocol error) is never given back to the pool.

On a backend that offers QRESYNC a session starts with ``ENABLE QRESYNC`` (expunges are
then told as VANISHED, and FETCH ... CHANGEDSINCE can say which UIDs went), so that
syncMessages asks only for what changed (`ImapBal.changed_since`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass

from gateway.backends.base import MailboxAccess
from gateway.backends.errors import (
    BackendError,
    BackendNotFound,
    BackendRefused,
    BackendUnavailable,
)
from gateway.backends.imap_smtp.tools import ImapMailboxAccess, fetch_items, uid_set
from gateway.imap.client import ParsedValue, ParseError, Tagged, Untagged, parse_code
from gateway.imap.codes import Code
from gateway.imap.response import Atom
from gateway.imap.resync import UidSet, highest_modseq, no_modseq, status_values, vanished

log = logging.getLogger(__name__)

MAX_UID_SET = 500  # UIDs per command
SENT_KEPT = 256  # commands remembered per session (`ImapBal.sent`)
DESCRIBED_KEPT = 50_000  # messages whose immutable metadata a session keeps (`Described`)
IMMUTABLE = frozenset({"INTERNALDATE", "RFC822.SIZE", "ENVELOPE"})


def flag_names(value: ParsedValue) -> frozenset[str]:
    return frozenset(
        f.value for f in (value if isinstance(value, list) else []) if isinstance(f, Atom)
    )


def _code_of(done: Tagged, events: list[Untagged], name: str) -> str | None:
    for code in [done.code, *(e.code for e in events if e.kind == "OK")]:
        if code is None:
            continue
        found, rest = parse_code(code)
        if found == name:
            return rest
    return None


def _uids(text: str) -> list[int]:
    """A UID set of a COPYUID code (``4:6,9``) in order."""
    found: list[int] = []
    for piece in text.split(","):
        low, _, high = piece.partition(":")
        if not low.isdigit() or (high and not high.isdigit()):
            return []
        start, end = int(low), int(high or low)
        if abs(end - start) > MAX_UID_SET * 10:
            return []
        step = 1 if end >= start else -1
        found.extend(range(start, end + step, step))
    return found


@dataclass(frozen=True)
class Selected:
    folder: str
    uidvalidity: int
    exists: int
    highestmodseq: int | None = None  # None: no CONDSTORE, or NOMODSEQ for this folder


@dataclass(frozen=True)
class ModseqStatus:
    """A folder's STATUS as CONDSTORE gives it."""

    uidvalidity: int
    highestmodseq: int
    messages: int


class Described:
    """What never changes about a message once it has its UID: its INTERNALDATE, size and
    ENVELOPE (RFC 3501 2.3.1.1: a UID names one message for the life of its UIDVALIDITY).
    Kept per pooled session, so that paging through a folder asks the backend only for
    the page, not for every message's metadata again; bounded, the oldest forgotten."""

    def __init__(self, limit: int = DESCRIBED_KEPT) -> None:
        self.limit = limit
        self._known: OrderedDict[tuple[str, int, int], dict[str, ParsedValue]] = OrderedDict()

    def get(self, folder: str, uidvalidity: int, uid: int) -> dict[str, ParsedValue] | None:
        return self._known.get((folder, uidvalidity, uid))

    def put(self, folder: str, uidvalidity: int, uid: int, data: dict[str, ParsedValue]) -> None:
        kept = {k: v for k, v in data.items() if k in IMMUTABLE}
        key = (folder, uidvalidity, uid)
        known = self._known.pop(key, None)
        self._known[key] = {**(known or {}), **kept}
        while len(self._known) > self.limit:
            self._known.popitem(last=False)

    def __len__(self) -> int:
        return len(self._known)


class ImapBal:
    """One BAL's IMAP session (master login), with the commands of the legacy front.

    `avoid`: extensions the backend offers but the gateway must not use (an operator's
    escape hatch for a faulty one; tests use it to take the CONDSTORE-only path)."""

    def __init__(self, access: ImapMailboxAccess, *, avoid: Collection[str] = ()) -> None:
        self.access = access
        self.selected: Selected | None = None
        self._writable = False
        self.broken = False
        caps = access.capabilities - {a.upper() for a in avoid}
        self.has_move = "MOVE" in caps
        self.condstore = "CONDSTORE" in caps or "QRESYNC" in caps
        self._offers_qresync = "QRESYNC" in caps and "ENABLE" in caps
        self._enable = "ENABLE" in caps
        self._condstore_on = False  # ENABLEd: HIGHESTMODSEQ comes with every SELECT
        self.qresync = False  # set once ENABLE QRESYNC succeeded
        self._unselect = "UNSELECT" in caps
        # a mailbox is selected on the server (whatever `selected` says: it forgets on
        # commands that may change the folder, the server does not)
        self.has_selection = False
        # the commands sent (no literals), for operators and tests: what did we ask?
        self.sent: deque[bytes] = deque(maxlen=SENT_KEPT)
        self.described = Described()

    async def start(self) -> None:
        """What a fresh session does once: ENABLE QRESYNC (or CONDSTORE) where offered;
        without ENABLE, each SELECT asks for CONDSTORE itself."""
        if not (self.condstore and self._enable):
            return
        wanted = b"QRESYNC" if self._offers_qresync else b"CONDSTORE"
        try:
            _, events = await self.run(b"ENABLE " + wanted)
        except BackendRefused:
            return
        for event in events:
            if event.kind == "ENABLED":
                words = {w.upper() for w in event.raw.split(b"\r\n", 1)[0].split()[2:]}
                self.qresync = b"QRESYNC" in words
                self._condstore_on = bool(words & {b"QRESYNC", b"CONDSTORE"})

    async def run(
        self, command: bytes, literal: bytes | None = None
    ) -> tuple[Tagged, list[Untagged]]:
        self.sent.append(command)
        if command.startswith((b"SELECT ", b"EXAMINE ", b"UNSELECT", b"CLOSE")):
            self.has_selection = False  # a failed SELECT leaves none either
        try:
            return await self.access.run(command, literal)
        except BackendUnavailable:
            self.broken = True
            raise
        finally:
            if not command.startswith((b"UID ", b"EXPUNGE", b"NOOP", b"STATUS")):
                self.selected = None

    async def select(self, folder: str, *, write: bool = False, fresh: bool = False) -> Selected:
        """SELECT (`write`) or EXAMINE `folder`, unless it already is; `fresh`: always, for
        a caller that needs its counts and mod-sequence as of now (sync)."""
        current = self.selected
        if (
            not fresh
            and current is not None
            and current.folder == folder
            and (self._writable or not write)
        ):
            return current
        verb = b"SELECT " if write else b"EXAMINE "
        self.selected = None
        condstore = b" (CONDSTORE)" if self.condstore and not self._condstore_on else b""
        done, events = await self.run(verb + self.access.mailbox_name(folder) + condstore)
        validity = _code_of(done, events, Code.UIDVALIDITY)
        exists = next((e.number or 0 for e in events if e.kind == "EXISTS"), 0)
        modseq: int | None = None
        if self.condstore:
            codes = [done.code, *(e.code for e in events if e.kind == "OK")]
            if not any(no_modseq(c) for c in codes):
                modseq = next((m for c in codes if (m := highest_modseq(c)) is not None), None)
        selected = Selected(
            folder, int(validity) if validity and validity.isdigit() else 0, exists, modseq
        )
        self.selected, self._writable = selected, write
        self.has_selection = True
        return selected

    def new_request(self) -> None:
        """Forget the selected mailbox's counts between two requests: other clients of the
        BAL changed it meanwhile (new mail, expunges), and a count kept from an earlier
        request would hide it. The next `select` asks the server again."""
        self.selected = None

    async def deselect(self) -> None:
        """Leave the selected mailbox, if any: a server answers STATUS on the mailbox a
        session has selected from that session's view (Dovecot does), which may lag
        behind changes made elsewhere. UNSELECT where offered, else the classic EXAMINE
        of a mailbox that does not exist (a failed EXAMINE leaves none selected)."""
        if not self.has_selection:
            return
        self.selected = None
        if self._unselect:
            await self.run(b"UNSELECT")
            return
        with contextlib.suppress(BackendNotFound, BackendRefused):
            await self.run(
                b'EXAMINE "lps-gateway-no-such-mailbox-' + os.urandom(6).hex().encode() + b'"'
            )

    async def modseq_status(self, folder: str) -> ModseqStatus | None:
        """(UIDVALIDITY, HIGHESTMODSEQ, MESSAGES) of a folder without selecting it; None
        when the backend gives no mod-sequence for it (0 means NOMODSEQ in STATUS). Call
        `deselect` first: STATUS of the selected mailbox may be stale."""
        _, events = await self.run(
            b"STATUS " + self.access.mailbox_name(folder) + b" (UIDVALIDITY HIGHESTMODSEQ MESSAGES)"
        )
        for event in events:
            parsed = status_values(event)
            if parsed is None:
                continue
            values = parsed[1]
            validity, modseq = values.get("UIDVALIDITY"), values.get("HIGHESTMODSEQ")
            if validity is None or not modseq:
                return None
            return ModseqStatus(validity, modseq, values.get("MESSAGES", 0))
        return None

    async def changed_since(self, modseq: int) -> tuple[dict[int, frozenset[str]], UidSet | None]:
        """UID → flags of the selected folder's messages changed after `modseq`, and the
        UIDs expunged since (None without QRESYNC: the caller compares UID SEARCH ALL)."""
        since = b"CHANGEDSINCE %d" % modseq
        items = b"(" + since + (b" VANISHED)" if self.qresync else b")")
        _, events = await self.run(b"UID FETCH 1:* (UID FLAGS) " + items)
        found: dict[int, frozenset[str]] = {}
        gone = UidSet(()) if self.qresync else None
        for event in events:
            if event.kind == "VANISHED" and gone is not None:
                try:
                    told = vanished(event)
                except ParseError as exc:
                    raise BackendUnavailable("protocol", f"bad VANISHED: {exc}") from None
                if told is not None:
                    gone = gone | told.uids
                continue
            got = fetch_items(event)
            uid = got.get("UID")
            if isinstance(uid, int):
                found[uid] = flag_names(got.get("FLAGS"))
        return found, gone

    async def status(self, folder: str) -> tuple[int, int]:
        """(messages, unseen) of a folder."""
        _, events = await self.run(
            b"STATUS " + self.access.mailbox_name(folder) + b" (MESSAGES UNSEEN)"
        )
        for event in events:
            if event.kind != "STATUS":
                continue
            try:
                values = event.values()
            except ParseError:
                continue
            pairs = values[-1] if values and isinstance(values[-1], list) else []
            found: dict[str, ParsedValue] = {}
            for i in range(0, len(pairs) - 1, 2):
                name = pairs[i]
                if isinstance(name, Atom):
                    found[name.value.upper()] = pairs[i + 1]
            messages, unseen = found.get("MESSAGES"), found.get("UNSEEN")
            return (
                messages if isinstance(messages, int) else 0,
                unseen if isinstance(unseen, int) else 0,
            )
        return 0, 0

    async def search(self, criteria: bytes, literal: bytes | None = None) -> list[int]:
        """UID SEARCH in the selected folder; the UIDs found, ascending."""
        _, events = await self.run(b"UID SEARCH " + criteria, literal)
        found: list[int] = []
        for event in events:
            if event.kind != "SEARCH":
                continue
            try:
                values = event.values()
            except ParseError:
                continue
            found.extend(v for v in values[1:] if isinstance(v, int))
        return sorted(set(found))

    async def fetch(self, uids: Iterable[int], items: bytes) -> dict[int, dict[str, ParsedValue]]:
        """UID FETCH `items` of `uids` in the selected folder, by UID (batched)."""
        wanted = sorted(set(uids))
        found: dict[int, dict[str, ParsedValue]] = {}
        for start in range(0, len(wanted), MAX_UID_SET):
            chunk = wanted[start : start + MAX_UID_SET]
            asked = set(chunk)
            _, events = await self.run(b"UID FETCH " + uid_set(chunk) + b" (UID " + items + b")")
            for event in events:
                got = fetch_items(event)
                uid = got.get("UID")
                if isinstance(uid, int) and uid in asked:
                    found.setdefault(uid, {}).update(got)
        return found

    async def all_uids(self) -> dict[int, frozenset[str]]:
        """UID → flags of every message of the selected folder."""
        if self.selected is None or self.selected.exists == 0:
            return {}
        _, events = await self.run(b"UID FETCH 1:* (UID FLAGS)")
        found: dict[int, frozenset[str]] = {}
        for event in events:
            got = fetch_items(event)
            uid = got.get("UID")
            if isinstance(uid, int):
                found[uid] = flag_names(got.get("FLAGS"))
        return found

    async def store(self, uids: Iterable[int], change: bytes) -> None:
        """UID STORE `change` (``+FLAGS.SILENT (\\Seen)``) in the selected folder."""
        wanted = sorted(set(uids))
        for start in range(0, len(wanted), MAX_UID_SET):
            await self.run(
                b"UID STORE " + uid_set(wanted[start : start + MAX_UID_SET]) + b" " + change
            )

    async def expunge(self, uids: Iterable[int]) -> None:
        wanted = sorted(set(uids))
        if not wanted:
            return
        await self.store(wanted, b"+FLAGS.SILENT (\\Deleted)")
        for start in range(0, len(wanted), MAX_UID_SET):
            await self.run(b"UID EXPUNGE " + uid_set(wanted[start : start + MAX_UID_SET]))

    async def move(self, uids: list[int], destination: str) -> tuple[int, dict[int, int]]:
        """Move `uids` of the selected folder: (destination UIDVALIDITY, source UID →
        destination UID) from COPYUID (empty when the server gives none). UID MOVE when
        offered, else COPY, \\Deleted and UID EXPUNGE."""
        verb = b"UID MOVE " if self.has_move else b"UID COPY "
        done, events = await self.run(
            verb + uid_set(uids) + b" " + self.access.mailbox_name(destination)
        )
        if not self.has_move:
            await self.expunge(uids)
        copied = _code_of(done, events, Code.COPYUID)
        if copied is None:
            return 0, {}
        parts = copied.split()
        if len(parts) != 3 or not parts[0].isdigit():
            return 0, {}
        sources, targets = _uids(parts[1]), _uids(parts[2])
        if len(sources) != len(targets):
            return int(parts[0]), {}
        return int(parts[0]), dict(zip(sources, targets, strict=True))


@dataclass
class _Idle:
    session: ImapBal
    since: float


class SessionPool:
    """Idle `ImapBal` sessions by (backend, BAL); `lease` lends one (opening it if none).

    At most `leased_per_bal` sessions of one BAL are lent at once (more requests for it
    wait their turn), and `per_bal` kept idle: a burst of requests for one BAL must not
    open as many backend connections, which the backend counts per user and address
    (Dovecot's ``mail_max_userip_connections``, 10 by default) against the BAL's own LPS
    sessions."""

    def __init__(
        self,
        *,
        per_bal: int = 2,
        leased_per_bal: int = 3,
        total: int = 32,
        idle: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        avoid: Collection[str] = (),
    ) -> None:
        self.per_bal = per_bal
        self.leased_per_bal = leased_per_bal
        self._leased: dict[tuple[str, str], int] = {}
        self._returned = asyncio.Condition()
        self.avoid = frozenset(avoid)
        self.idle = idle
        self._clock = clock
        self._slots = asyncio.Semaphore(total)
        self._idle: dict[tuple[str, str], list[_Idle]] = {}
        self._reaper: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def lease(
        self, backend: str, bal: str, opener: Callable[[], Awaitable[MailboxAccess]]
    ) -> AsyncIterator[ImapBal]:
        key = (backend, bal.lower())
        async with self._turn(key), self._slots:  # a busy BAL waits, holding no slot
            session = await self._take(key)
            if session is not None:
                session.new_request()
            else:
                access = await opener()
                if not isinstance(access, ImapMailboxAccess):
                    await access.aclose()
                    raise BackendUnavailable(
                        "misconfigured", f"{backend}: no IMAP for the legacy front"
                    )
                session = ImapBal(access, avoid=self.avoid)
                try:
                    await session.start()
                except BaseException:
                    await access.aclose()
                    raise
            try:
                yield session
            except BaseException as exc:
                if isinstance(exc, BackendError) and not isinstance(exc, BackendUnavailable):
                    await self._give_back(key, session)  # refused: the session itself is fine
                else:
                    await session.access.aclose()
                raise
            await self._give_back(key, session)

    @contextlib.asynccontextmanager
    async def _turn(self, key: tuple[str, str]) -> AsyncIterator[None]:
        """One of the BAL's `leased_per_bal` turns, held for a lease."""
        async with self._returned:
            await self._returned.wait_for(lambda: self._leased.get(key, 0) < self.leased_per_bal)
            self._leased[key] = self._leased.get(key, 0) + 1
        try:
            yield
        finally:
            async with self._returned:
                left = self._leased.pop(key) - 1
                if left:
                    self._leased[key] = left
                self._returned.notify_all()

    def leased(self, backend: str, bal: str) -> int:
        return self._leased.get((backend, bal.lower()), 0)

    async def _take(self, key: tuple[str, str]) -> ImapBal | None:
        idle = self._idle.get(key)
        stale: list[_Idle] = []
        found: ImapBal | None = None
        while idle and found is None:
            entry = idle.pop()
            if self._clock() - entry.since < self.idle and not entry.session.broken:
                found = entry.session
            else:
                stale.append(entry)
        for entry in stale:  # closed once nothing more is taken from the list
            with contextlib.suppress(Exception):
                await entry.session.access.aclose()
        return found

    async def _give_back(self, key: tuple[str, str], session: ImapBal) -> None:
        if session.broken:
            await session.access.aclose()
            return
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.per_bal:
            await session.access.aclose()
            return
        idle.append(_Idle(session, self._clock()))
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="legacy-front-reaper")

    async def _reap(self) -> None:
        """Close sessions idle past `idle`, until none is left. The expired are taken out
        of the idle lists before any of them is closed: while a close is awaited, a lease
        may take a session from the same list, or give one back."""
        while self._idle:
            await asyncio.sleep(self.idle / 2)
            now = self._clock()
            expired: list[_Idle] = []
            for key in list(self._idle):
                entries = self._idle[key]
                expired += [e for e in entries if now - e.since >= self.idle]
                entries[:] = [e for e in entries if now - e.since < self.idle]
                if not entries:
                    del self._idle[key]
            for entry in expired:
                with contextlib.suppress(Exception):
                    await entry.session.access.aclose()

    def idle_sessions(self, backend: str, bal: str) -> int:
        return len(self._idle.get((backend, bal.lower()), []))

    def idle_of(self, backend: str, bal: str) -> list[ImapBal]:
        """The idle sessions of a BAL (most recently used last): what they sent, for tests
        and operators."""
        return [e.session for e in self._idle.get((backend, bal.lower()), [])]

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        idle, self._idle = self._idle, {}
        for entries in idle.values():
            for entry in entries:
                await entry.session.access.aclose()
