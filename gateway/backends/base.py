"""What every backend offers, whatever its kind: the one interface the fronts and the
operator's tools speak.

* `open_imap`: an API LPS IMAP session for a BAL, either an `Upstream` (a logged-in
  connection the front relays byte for byte) or a `MailStore` (the front's IMAP engine
  serves it). The front asks which it got; it never asks the backend's kind.
* `submission`: the SMTP submission path of one client session (`mail`, `rcpt`, `data`),
  with the end-to-end rule: `data` returns only once the platform took the message.
* `probes`: the readiness checks, by name.
* `tools`: a `MailboxAccess` for the operator's tools (migration, the historic interfaces
  over any platform, conformance): folders, messages with their UID, flags, date, size
  and a content digest, a message's bytes, append with flags and date, flags, delete.
  Where the platform can import with given UIDs, the access's `uid_import` is a
  `UidImport` (`uid_import_of`); its `public_uids` says whether its UIDs are those the
  BAL's clients see (`public_uids_of`).

Every failure is a `gateway.backends.errors.BackendError`; no method writes reply text.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Awaitable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.imap.mailstore import MailStore, SpecialUse
from gateway.runtime.dsn import MailDsn, RecipientDsn
from gateway.runtime.login import ConnectionInfo


def digest(message: bytes) -> str:
    """A message's content digest: the same bytes give the same digest on every backend,
    so a copy is verified without trusting either side's ids."""
    return hashlib.sha256(message).hexdigest()


CLOSE_GRACE = 2.0  # seconds a backend connection's orderly close may take before it is cut


@dataclass
class Upstream:
    """A logged-in connection to a backend's IMAP server, for the front to relay byte for
    byte (what `Backend.open_imap` gives when the platform speaks IMAP itself)."""

    backend: str  # its name, for logs and metrics
    reply_timeout: float
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    capabilities: frozenset[str]
    leftover: bytes = b""  # received after the login's completion, for the relay
    # handed on to a warm pool (`gateway.fronts.imap.warm`) under another `Upstream`: this
    # one's `close` no longer closes the connection
    handed_on: bool = False
    # closed (or cut) already: the relay closes it as it ends, the grant's `on_close` then
    # has nothing left to do (a copy made with `dataclasses.replace` starts open)
    _closed: bool = field(default=False, init=False, repr=False, compare=False)

    async def close(self) -> None:
        """Close, and cut the connection if the close has not ended within `CLOSE_GRACE`
        (bytes the backend does not read, a TLS close it does not answer): a backend
        connection must not outlive its session, since the backend counts it (Dovecot's
        ``mail_max_userip_connections``)."""
        if self.handed_on or self._closed:
            return
        writer = self.writer
        try:
            writer.close()
            async with asyncio.timeout(CLOSE_GRACE):  # not wait_for: no task per close
                await writer.wait_closed()
        except BaseException as exc:
            writer.transport.abort()
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._closed = True


@dataclass(frozen=True, slots=True)
class ToolFolder:
    name: str  # "/"-separated hierarchy, "INBOX" for the inbox
    special_use: SpecialUse | None = None


@dataclass(frozen=True, slots=True)
class ToolMessage:
    uid: int
    flags: frozenset[str]
    internal_date: dt.datetime
    size: int
    digest: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """The platform took a submitted message. `text` is its own acknowledgement (one
    line), `reference` its id for the message when it gives one; `sender_recorded` is False
    when the platform could not keep who wrote it (the audit trail must then say it)."""

    text: str = ""
    reference: str | None = None
    sender_recorded: bool = True


class MailboxAccess(Protocol):
    """One BAL as the operator's tools see it. Close it with `aclose`."""

    async def folders(self) -> Sequence[ToolFolder]: ...

    async def messages(self, folder: str) -> Sequence[ToolMessage]:
        """Every message of `folder`, ascending UID, with its digest."""
        ...

    async def fetch(self, folder: str, uid: int) -> bytes: ...

    async def append(
        self,
        folder: str,
        message: bytes,
        flags: Collection[str] = (),
        internal_date: dt.datetime | None = None,
    ) -> int:
        """Store a message; returns its new UID."""
        ...

    async def set_flags(self, folder: str, uid: int, flags: Collection[str]) -> None:
        """Replace the message's flags (keywords included) with `flags`."""
        ...

    async def delete(self, folder: str, uids: Iterable[int]) -> None: ...

    async def create_folder(self, name: str) -> None: ...

    async def aclose(self) -> None: ...


class UidImport(Protocol):
    """A platform that stores messages under given UIDs, as Dovecot's dsync does: what a
    migration needs to keep UIDs and UIDVALIDITY, and with them every client's cache."""

    async def import_folder(self, folder: str, uidvalidity: int) -> bool:
        """Give `folder` this UIDVALIDITY; False when it cannot (it holds messages)."""
        ...

    async def import_message(
        self,
        folder: str,
        uid: int,
        message: bytes,
        flags: Collection[str],
        internal_date: dt.datetime,
    ) -> int | None:
        """Store `message` under `uid`; None when the folder's UIDs are past it already."""
        ...


def uid_import_of(access: MailboxAccess) -> UidImport | None:
    """The access's `UidImport` when its platform offers one."""
    found: UidImport | None = getattr(access, "uid_import", None)
    return found


UNREAD = ""  # a listing's digest for a message whose bytes were not read


async def listing_of(access: MailboxAccess, folder: str, uidvalidity: int) -> Sequence[ToolMessage]:
    """The folder's messages without reading bytes where the access can list so (`listing`:
    a digest already known, else `UNREAD`; the folder must still have `uidvalidity`), for a
    copy that reads each new message once, when it copies it; otherwise `messages`, every
    digest computed."""
    listing = getattr(access, "listing", None)
    if listing is None:
        return await access.messages(folder)
    found: Sequence[ToolMessage] = await listing(folder, uidvalidity)
    return found


def public_uids_of(access: MailboxAccess) -> bool:
    """Whether the access's UIDs are the ones the BAL's clients see (the historic
    platform's own IMAP is not what LPS reach: the gateway gives those their UIDs)."""
    return bool(getattr(access, "public_uids", True))


class Submission(Protocol):
    """One client session's submission path for one BAL. `key` says which BAL (and
    backend) it can carry; `in_transaction` whether a MAIL is pending on the backend;
    `offers_dsn` whether the platform takes RFC 3461's parameters (`mail`'s and `rcpt`'s
    `dsn`) and sends the notices itself: when it does not, the front sends the "relayed"
    one RFC 3461 §5.2.2 wants."""

    @property
    def key(self) -> tuple[str, str]: ...

    @property
    def connected(self) -> bool: ...

    @property
    def in_transaction(self) -> bool: ...

    @property
    def last_answer(self) -> float: ...

    @property
    def offers_dsn(self) -> bool: ...

    async def open(self) -> None: ...

    async def mail(
        self, sender: str, options: Iterable[str], *, dsn: MailDsn | None = None
    ) -> None: ...

    async def rcpt(
        self, recipient: str, *, utf8: bool = False, dsn: RecipientDsn | None = None
    ) -> None: ...

    async def data(self, message: bytes, recipients: Sequence[str]) -> Accepted: ...

    async def reset(self) -> None: ...

    async def close(self) -> None: ...

    def abort(self) -> None: ...


class Backend(Protocol):
    """A platform holding BAL. `name` is its key in the configuration.

    `token` is the user's PSC access token, or None for a session opened without one (a
    CPS card login): the backend then uses its master login, and one that takes user
    tokens only raises `BackendTokenOnly`. `client`: who the session is for, which a
    backend may pass on (`gateway.backends.origin`)."""

    @property
    def name(self) -> str: ...

    async def open_imap(
        self, bal: str, token: str | None, *, client: ConnectionInfo | None = None
    ) -> Upstream | MailStore: ...

    def submission(
        self, bal: str, token: str | None, *, max_size: int, client: ConnectionInfo | None = None
    ) -> Submission: ...

    def probes(self) -> Mapping[str, Awaitable[str]]: ...

    async def tools(self, bal: str) -> MailboxAccess: ...

    async def aclose(self) -> None: ...
