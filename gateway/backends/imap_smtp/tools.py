"""A BAL on an IMAP server as the operator's tools see it (`MailboxAccess`), over the
sans-I/O client codec, logged in with the gateway's master credentials.

Used for `imap_smtp` platforms and for the historic platform's own IMAP. One command at
a time on one connection; message bytes are read in batches of `BATCH` so a 2,000-message
folder never sits in memory at once. The server must offer UIDPLUS (APPENDUID, UID
EXPUNGE): every platform of the field does, and without it an append cannot say which
message it made.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Collection, Iterable, Sequence
from typing import NoReturn

from gateway.backends.base import (
    UNREAD,
    ToolFolder,
    ToolMessage,
    UidImport,
    Upstream,
    digest,
)
from gateway.backends.errors import (
    BackendCannot,
    BackendNotFound,
    BackendRefused,
    BackendTooLarge,
    BackendUnavailable,
)
from gateway.backends.imap_smtp.upstream import Dialogue, open_upstream
from gateway.backends.uid_import import OperatorImport
from gateway.imap import mutf7
from gateway.imap.client import ParsedValue, ParseError, Tagged, Untagged, parse_code
from gateway.imap.codes import Code
from gateway.imap.mailstore import SYSTEM_FLAGS, SpecialUse
from gateway.imap.response import Atom
from gateway.settings import BackendSettings

log = logging.getLogger(__name__)

BATCH = 200  # messages fetched per UID FETCH
BATCH_BYTES = 32 * 1024 * 1024  # bytes of messages fetched per UID FETCH (past one message)
SPECIAL_USES: frozenset[str] = frozenset({"\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive"})
# A backend's NO, by its response code, becomes one of our backend errors (else refused)
_NOT_FOUND = frozenset({Code.NONEXISTENT, Code.EXPUNGEISSUED})
_TOO_LARGE = frozenset({Code.TOOBIG, Code.LIMIT, Code.OVERQUOTA})
_UNAVAILABLE = frozenset({Code.UNAVAILABLE, Code.INUSE, Code.SERVERBUG})
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def quoted(text: str) -> bytes:
    """An IMAP quoted string (mailbox names in modified UTF-7 are ASCII)."""
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


def imap_date(moment: dt.datetime) -> bytes:
    """RFC 3501 date-time: ``"02-Jan-2026 10:00:00 +0100"``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    offset = moment.utcoffset() or dt.timedelta()
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    zone = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    text = f"{moment.day:02d}-{_MONTHS[moment.month - 1]}-{moment.year:04d} "
    return f'"{text}{moment:%H:%M:%S} {zone}"'.encode("ascii")


def parse_imap_date(value: bytes) -> dt.datetime:
    return dt.datetime.strptime(value.decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z")


def uid_set(uids: Iterable[int]) -> bytes:
    """The UIDs as an IMAP set, runs of consecutive UIDs as ranges (``1:500,502``): a
    whole folder is a few bytes, not thousands of numbers for the server to match."""
    runs: list[bytes] = []
    ordered = sorted(set(uids))
    start = 0
    for index in range(1, len(ordered) + 1):
        if index == len(ordered) or ordered[index] != ordered[index - 1] + 1:
            low, high = ordered[start], ordered[index - 1]
            runs.append(b"%d" % low if low == high else b"%d:%d" % (low, high))
            start = index
    return b",".join(runs)


def _appended_uid(done: Tagged) -> int | None:
    """The UID an APPEND's APPENDUID code gives (RFC 4315)."""
    if done.code is None:
        return None
    name, rest = parse_code(done.code)
    parts = rest.split()
    if name == Code.APPENDUID and len(parts) == 2 and parts[1].isdigit():
        return int(parts[1])
    return None


def _flag_list(flags: Collection[str]) -> bytes:
    kept = [f for f in flags if f.lower() != "\\recent"]
    return b"(" + " ".join(kept).encode("ascii") + b")"


class ImapMailboxAccess:
    """`MailboxAccess` over one logged-in IMAP connection. `public_uids`: whether its UIDs
    are those the BAL's clients see (not so for the historic platform's own IMAP)."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        importer: OperatorImport | None = None,
        public_uids: bool = True,
    ) -> None:
        self.public_uids = public_uids
        self._importer = importer
        self._up = upstream
        self._talk = Dialogue(upstream.reader, upstream.writer, upstream.reply_timeout)
        if upstream.leftover:
            self._talk.codec.receive_data(upstream.leftover)
        self._selected: tuple[str, bool] | None = None  # (folder, read-write)
        self._validity: int | None = None  # the selected folder's UIDVALIDITY, as SELECT said
        # (folder, UIDVALIDITY) -> UID -> (size, digest): what `messages` has read already
        self._digests: dict[tuple[str, int], dict[int, tuple[int, str]]] = {}
        self._delimiter = "/"
        capabilities = {c.upper() for c in upstream.capabilities}
        self._literal_plus = "LITERAL+" in capabilities
        if "UIDPLUS" not in capabilities:
            raise BackendUnavailable("protocol", f"{upstream.backend}: no UIDPLUS")

    @classmethod
    async def open(
        cls, name: str, backend: BackendSettings, bal: str, *, public_uids: bool = True
    ) -> ImapMailboxAccess:
        upstream = await open_upstream(name, backend, bal, "", master=True)
        importer = OperatorImport(name, backend, bal) if backend.import_url else None
        try:
            return cls(upstream, importer=importer, public_uids=public_uids)
        except BaseException:
            await upstream.close()
            if importer is not None:
                await importer.aclose()
            raise

    async def aclose(self) -> None:
        with contextlib.suppress(BackendUnavailable, OSError, TimeoutError):
            await self._talk.command(b"LOGOUT")
        await self._up.close()
        if self._importer is not None:
            await self._importer.aclose()

    # -- UidImport, when the platform has an import API -------------------------------------
    @property
    def uid_import(self) -> UidImport | None:
        return self if self._importer is not None else None

    async def import_folder(self, folder: str, uidvalidity: int) -> bool:
        assert self._importer is not None
        await self._unselect()  # a server ends a session whose folder changes UIDVALIDITY
        return await self._importer.import_folder(folder, uidvalidity)

    async def _unselect(self) -> None:
        """Leave the selected folder without expunging anything (RFC 3691, or CLOSE once
        it is read-only)."""
        if self._selected is None:
            return
        folder, _ = self._selected
        self._selected = None
        if "UNSELECT" in self.capabilities:
            await self._run(b"UNSELECT")
        else:
            await self._run(b"EXAMINE " + self._mailbox(folder))
            await self._run(b"CLOSE")

    async def import_message(
        self,
        folder: str,
        uid: int,
        message: bytes,
        flags: Collection[str],
        internal_date: dt.datetime,
    ) -> int | None:
        assert self._importer is not None
        if self._selected is not None and self._selected[0] == folder:
            self._selected = None
        return await self._importer.import_message(folder, uid, message, flags, internal_date)

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(c.upper() for c in self._up.capabilities)

    def mailbox_name(self, folder: str) -> bytes:
        """`folder` ("/"-separated, decoded) as the quoted IMAP mailbox name to send."""
        return self._mailbox(folder)

    async def run(
        self, command: bytes, literal: bytes | None = None
    ) -> tuple[Tagged, list[Untagged]]:
        """One command beyond `MailboxAccess`, for tools that need more IMAP (the legacy
        front: SEARCH, MOVE, RENAME...). The folder selection is forgotten, since the
        command may change it. Failures as `_run`'s."""
        self._selected = None
        return await self._run(command, literal)

    # -- commands --------------------------------------------------------------------------
    async def _run(
        self, command: bytes, literal: bytes | None = None
    ) -> tuple[Tagged, list[Untagged]]:
        """One command; a NO is a `BackendRefused` by its response code, a BAD a protocol
        failure (we sent it: the server and we disagree on IMAP)."""
        try:
            if literal is None:
                done, events = await self._talk.command(command)
            else:
                done, events = await self._talk.command_with_literal(
                    command, literal, synchronising=not self._literal_plus
                )
        except TimeoutError:
            raise BackendUnavailable(
                "timeout", f"{self._up.backend}: no answer", after=self._up.reply_timeout
            ) from None
        except (ConnectionError, OSError) as exc:
            raise BackendUnavailable("disconnected", f"{self._up.backend}: {exc}") from None
        if done.status == "OK":
            return done, events
        self._refused(command, done)

    def _refused(self, command: bytes, done: Tagged) -> NoReturn:
        """The `BackendError` of a NO or BAD, by its response code."""
        code = parse_code(done.code)[0] if done.code else ""
        text = f"{command.split(b' ', 1)[0].decode('ascii', 'replace')}: {done.text}"
        if done.status == "BAD":
            raise BackendUnavailable("protocol", f"{self._up.backend}: {text}")
        if code in _NOT_FOUND:
            raise BackendNotFound(text)
        if code in _TOO_LARGE:
            raise BackendTooLarge(text)
        if code == Code.CANNOT:
            raise BackendCannot(text)
        if code in _UNAVAILABLE:
            raise BackendUnavailable("unavailable", f"{self._up.backend}: {text}")
        raise BackendRefused(text)

    @property
    def delimiter(self) -> str:
        """The server's hierarchy delimiter, as its LIST said ("/" until it has)."""
        return self._delimiter

    def _mailbox(self, folder: str) -> bytes:
        name = folder if self._delimiter == "/" else folder.replace("/", self._delimiter)
        return quoted(mutf7.encode(name))

    async def _select(self, folder: str, *, write: bool) -> int:
        """SELECT (or EXAMINE) `folder` unless it is already open so; returns EXISTS."""
        if self._selected == (folder, True) or (not write and self._selected == (folder, False)):
            return -1
        self._selected = None
        verb = b"SELECT " if write else b"EXAMINE "
        _, events = await self._run(verb + self._mailbox(folder))
        self._selected = (folder, write)
        self._validity = None
        for event in events:
            name, rest = parse_code(event.code) if event.kind == "OK" and event.code else ("", "")
            if name == Code.UIDVALIDITY and rest.strip().isdigit():
                self._validity = int(rest)
        return next((e.number or 0 for e in events if e.kind == "EXISTS"), 0)

    async def _leave(self) -> None:
        """Deselect before APPENDing to the selected folder: a server tells the client of
        every arrival in its selected folder, and some (the gateway's own engine, hence the
        mock's modern platform) re-read the whole folder to do so, which made copying into
        a large folder quadratic. CLOSE on a read-only selection expunges nothing."""
        assert self._selected is not None
        writable = self._selected[1]
        self._selected = None
        if not writable:
            await self._run(b"CLOSE")
        elif "UNSELECT" in self.capabilities:
            await self._run(b"UNSELECT")

    # -- MailboxAccess ---------------------------------------------------------------------
    async def folders(self) -> Sequence[ToolFolder]:
        _, events = await self._run(b'LIST "" "*"')
        found: list[ToolFolder] = []
        for event in events:
            if event.kind != "LIST":
                continue
            try:
                values = event.values()
            except ParseError:
                raise BackendUnavailable("protocol", f"{self._up.backend}: bad LIST") from None
            if len(values) < 4 or not isinstance(values[1], list):
                continue
            attributes = {str(a.value) for a in values[1] if isinstance(a, Atom)}
            if any(a.lower() in ("\\noselect", "\\nonexistent") for a in attributes):
                continue
            delimiter, raw = values[2], values[3]
            if isinstance(delimiter, bytes) and delimiter:
                self._delimiter = delimiter.decode("ascii", "replace")
            name = _text(raw)
            if name is None:
                continue
            name = mutf7.decode(name)
            if self._delimiter != "/":
                name = name.replace(self._delimiter, "/")
            if name.upper() == "INBOX":
                name = "INBOX"
            special = next((a for a in attributes if a in SPECIAL_USES), None)
            found.append(ToolFolder(name, special))  # type: ignore[arg-type]
        return found

    async def messages(self, folder: str) -> Sequence[ToolMessage]:
        """The folder's messages: flags, dates and sizes listed at once, then the bytes of
        those whose digest this access has not computed yet (an IMAP message never changes
        under its UID in one UIDVALIDITY), in batches of at most `BATCH` messages and
        `BATCH_BYTES` bytes, so that a listing repeated during a cut-over reads only what
        is new, and a folder of large messages is not held whole in memory."""
        listed, known = await self._list(folder)
        batch: list[int] = []
        weight = 0
        for uid in sorted(listed):
            if uid in known:
                continue
            batch.append(uid)
            weight += listed[uid][2]
            if len(batch) >= BATCH or weight >= BATCH_BYTES:
                known.update(await self._digest(batch))
                batch, weight = [], 0
        if batch:
            known.update(await self._digest(batch))
        return [
            ToolMessage(uid, flags, date, known[uid][0], known[uid][1])
            for uid, (flags, date, _) in sorted(listed.items())
            if uid in known  # expunged between the two FETCHes
        ]

    async def listing(self, folder: str, uidvalidity: int | None = None) -> Sequence[ToolMessage]:
        """The folder's messages without reading their bytes: flags, dates, RFC822.SIZE,
        and the digests this access computed already (`UNREAD` for the others). With
        `uidvalidity`, the folder must still have it (else the caller's UIDs, and the
        digests it knows under them, name other messages)."""
        listed, known = await self._list(folder)
        if uidvalidity is not None and listed and self._validity not in (None, uidvalidity):
            raise BackendUnavailable(
                "unavailable", f"{self._up.backend}: {folder} has a new UIDVALIDITY, copy again"
            )
        return [
            ToolMessage(uid, flags, date, *known.get(uid, (size, UNREAD)))
            for uid, (flags, date, size) in sorted(listed.items())
        ]

    async def _list(
        self, folder: str
    ) -> tuple[dict[int, tuple[frozenset[str], dt.datetime, int]], dict[int, tuple[int, str]]]:
        """UID → (flags, INTERNALDATE, RFC822.SIZE) of the folder's messages, and this
        access's digests of the folder as of its UIDVALIDITY."""
        exists = await self._select(folder, write=False)
        if exists == 0:
            return {}, {}
        known = await self._known(folder)
        _, events = await self._run(b"UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE)")
        listed: dict[int, tuple[frozenset[str], dt.datetime, int]] = {}
        for event in events:
            items = fetch_items(event)
            uid, flags = items.get("UID"), items.get("FLAGS")
            date, size = items.get("INTERNALDATE"), items.get("RFC822.SIZE")
            if not isinstance(uid, int):
                continue
            listed[uid] = (
                frozenset(
                    str(f.value)
                    for f in (flags if isinstance(flags, list) else [])
                    if isinstance(f, Atom) and str(f.value).lower() != "\\recent"
                ),
                parse_imap_date(date) if isinstance(date, bytes) else dt.datetime.now(dt.UTC),
                size if isinstance(size, int) else 0,
            )
        return listed, known

    async def _digest(self, uids: Sequence[int]) -> dict[int, tuple[int, str]]:
        """(size, digest) of each message's bytes (those expunged meanwhile are missing).
        The bytes are not kept for the copy that follows: a message expunged in between
        must not be copied (in a trailing sync nothing would take it back)."""
        return {uid: (len(body), digest(body)) for uid, body in (await self._bodies(uids)).items()}

    async def _bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The bytes of `uids` in the selected folder, in one UID FETCH; a server that
        refuses it whole because some were expunged since (NO, RFC 9051 §6.4.5 allows
        either) is asked again for each one, and those gone are left out."""
        try:
            return await self._fetch_bodies(uids)
        except BackendNotFound:
            if len(uids) == 1:
                return {}
        found: dict[int, bytes] = {}
        for uid in uids:
            with contextlib.suppress(BackendNotFound):
                found |= await self._fetch_bodies([uid])
        return found

    async def _fetch_bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        _, events = await self._run(b"UID FETCH " + uid_set(uids) + b" (UID BODY.PEEK[])")
        found: dict[int, bytes] = {}
        for event in events:
            items = fetch_items(event)
            uid, body = items.get("UID"), items.get("BODY[]")
            if isinstance(uid, int) and isinstance(body, bytes):
                found[uid] = body
        return found

    async def headers(self, folder: str) -> dict[int, tuple[bytes, dt.datetime, int]]:
        """UID → (header block, INTERNALDATE, RFC822.SIZE) of each message of `folder`, in
        batches of `BATCH`: what pairs a message read through the historic platform's IMAP
        with its web-service messageId (`gateway.bal_migration.historic_match`)."""
        if await self._select(folder, write=False) == 0:
            return {}
        _, events = await self._run(b"UID FETCH 1:* (UID)")
        uids = sorted(
            {u for e in events if isinstance(u := fetch_items(e).get("UID"), int) and u > 0}
        )
        found: dict[int, tuple[bytes, dt.datetime, int]] = {}
        for start in range(0, len(uids), BATCH):
            wanted = uid_set(uids[start : start + BATCH])
            _, events = await self._run(
                b"UID FETCH " + wanted + b" (UID INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER])"
            )
            for event in events:
                items = fetch_items(event)
                uid, header = items.get("UID"), items.get("BODY[HEADER]")
                date, size = items.get("INTERNALDATE"), items.get("RFC822.SIZE")
                if isinstance(uid, int) and isinstance(header, bytes) and isinstance(date, bytes):
                    octets = size if isinstance(size, int) else 0
                    found[uid] = (header, parse_imap_date(date), octets)
        return found

    async def uidvalidity(self, folder: str) -> int:
        """The folder's UIDVALIDITY (STATUS), for tools that keep UIDs across runs."""
        _, events = await self._run(b"STATUS " + self._mailbox(folder) + b" (UIDVALIDITY)")
        for event in events:
            if event.kind != "STATUS":
                continue
            try:
                values = event.values()
            except ParseError:
                break
            items = values[-1] if values and isinstance(values[-1], list) else []
            for index in range(0, len(items) - 1, 2):
                name, value = items[index], items[index + 1]
                if (
                    isinstance(name, Atom)
                    and str(name.value).upper() == "UIDVALIDITY"
                    and isinstance(value, int)
                ):
                    return value
        raise BackendUnavailable("protocol", f"{self._up.backend}: STATUS without UIDVALIDITY")

    async def fetch(self, folder: str, uid: int) -> bytes:
        await self._select(folder, write=False)
        _, events = await self._run(b"UID FETCH %d (UID BODY.PEEK[])" % uid)
        for event in events:
            items = fetch_items(event)
            if items.get("UID") == uid and isinstance(items.get("BODY[]"), bytes):
                body = items["BODY[]"]
                assert isinstance(body, bytes)
                return body
        raise BackendNotFound(f"no message {uid} in {folder}")

    async def fetch_many(self, folder: str, uids: Sequence[int]) -> dict[int, bytes]:
        """The bytes of several messages in one UID FETCH (a migration's copy: one round
        trip for a batch); a UID missing from the answer was expunged."""
        if not uids:
            return {}
        await self._select(folder, write=False)
        found = await self._bodies(uids)
        # their digests as `messages` would compute them: a verification (under a cut-over's
        # hold) after this copy reads only what is new
        known = await self._known(folder)
        known.update((uid, (len(body), digest(body))) for uid, body in found.items())
        return found

    async def _known(self, folder: str) -> dict[int, tuple[int, str]]:
        """UID → (size, digest) this access has read of the selected `folder`, under its
        UIDVALIDITY (as SELECT said it, else as STATUS says it)."""
        validity = self._validity if self._validity is not None else await self.uidvalidity(folder)
        return self._digests.setdefault((folder, validity), {})

    async def append(
        self,
        folder: str,
        message: bytes,
        flags: Collection[str] = (),
        internal_date: dt.datetime | None = None,
    ) -> int:
        command = b"APPEND " + self._mailbox(folder) + b" " + _flag_list(flags)
        if internal_date is not None:
            command += b" " + imap_date(internal_date)
        if self._selected is not None and self._selected[0] == folder:
            await self._leave()
        done, _ = await self._run(command, literal=message)
        uid = _appended_uid(done)
        if uid is None:
            raise BackendUnavailable("protocol", f"{self._up.backend}: APPEND without APPENDUID")
        return uid

    async def append_many(
        self,
        folder: str,
        messages: Sequence[tuple[bytes, Collection[str], dt.datetime | None]],
    ) -> list[int]:
        """APPEND several (message, flags, date) at once, pipelined with LITERAL+ (one by
        one without it); their new UIDs, in order. A refusal raises after every answer is
        read: those appended before it are found by the caller's checkpoints."""
        if not self._literal_plus or len(messages) < 2:
            return [await self.append(folder, m, f, d) for m, f, d in messages]
        if self._selected is not None and self._selected[0] == folder:
            await self._leave()
        commands = []
        for message, flags, date in messages:
            command = b"APPEND " + self._mailbox(folder) + b" " + _flag_list(flags)
            if date is not None:
                command += b" " + imap_date(date)
            commands.append((command, message))
        try:
            answers = await self._talk.pipelined(commands)
        except TimeoutError:
            raise BackendUnavailable(
                "timeout", f"{self._up.backend}: no answer", after=self._up.reply_timeout
            ) from None
        except (ConnectionError, OSError) as exc:
            raise BackendUnavailable("disconnected", f"{self._up.backend}: {exc}") from None
        uids: list[int] = []
        for done, _ in answers:
            if done.status != "OK":
                self._refused(b"APPEND", done)
            uid = _appended_uid(done)
            if uid is None:
                raise BackendUnavailable(
                    "protocol", f"{self._up.backend}: APPEND without APPENDUID"
                )
            uids.append(uid)
        return uids

    async def set_flags(self, folder: str, uid: int, flags: Collection[str]) -> None:
        await self._select(folder, write=True)
        await self._run(b"UID STORE %d FLAGS.SILENT " % uid + _flag_list(flags))

    async def delete(self, folder: str, uids: Iterable[int]) -> None:
        wanted = uid_set(uids)
        if not wanted:
            return
        await self._select(folder, write=True)
        await self._run(b"UID STORE " + wanted + b" +FLAGS.SILENT (\\Deleted)")
        await self._run(b"UID EXPUNGE " + wanted)

    async def create_folder(self, name: str) -> None:
        try:
            await self._run(b"CREATE " + self._mailbox(name))
        except BackendRefused as refusal:
            existing = {f.name for f in await self.folders()}
            if name not in existing and not (name.upper() == "INBOX"):
                raise refusal from None


def _text(value: ParsedValue) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Atom):
        return str(value.value)
    return None


def fetch_items(event: Untagged) -> dict[str, ParsedValue]:
    """``* n FETCH (NAME value ...)`` as a dict by upper-case item name."""
    if event.kind != "FETCH":
        return {}
    try:
        values = event.values()
    except ParseError:
        return {}
    items = values[2] if len(values) >= 3 and isinstance(values[2], list) else []
    found: dict[str, ParsedValue] = {}
    for index in range(0, len(items) - 1, 2):
        name = items[index]
        if isinstance(name, Atom):
            found[str(name.value).upper()] = items[index + 1]
    return found


__all__ = [
    "SYSTEM_FLAGS",
    "ImapMailboxAccess",
    "SpecialUse",
    "fetch_items",
    "imap_date",
    "quoted",
]
