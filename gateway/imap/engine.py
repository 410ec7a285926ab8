"""The IMAP server engine: one `ImapSession` per connection, serving any `MailStore`.

The session is a state machine (not authenticated → authenticated → selected → logout)
that executes parsed commands and writes replies through a `Channel`. It owns no socket:
the transport hands it commands and gives it a channel to write to, read SASL lines from,
and upgrade to TLS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.imap import commands as c
from gateway.imap import mutf7
from gateway.imap.codes import LOGIN_FAILURES, Code
from gateway.imap.mailstore import (
    DELIMITER,
    FolderExists,
    FolderInfo,
    FolderNotFound,
    FolderState,
    MailStore,
    MessageGone,
    RecentRegistry,
    StoreError,
    StoreUnavailable,
)
from gateway.imap.message import ParsedMessage, apply_partial
from gateway.imap.response import (
    Atom,
    Literal,
    Raw,
    Value,
    continuation,
    encode,
    tagged,
    untagged,
    untagged_status,
)
from gateway.imap.search import (
    SUPPORTED_CHARSETS,
    Candidate,
    SearchError,
    matches,
    needs_message,
    validate,
)
from gateway.imap.session import Authenticator, SessionGrant
from gateway.imap.structure_cache import CACHEABLE, StructureCache
from gateway.imap.syntax import FetchAttribute, Section, SequenceSet
from gateway.imap.view import (
    ANY_KEYWORD,
    RECENT,
    SYSTEM_FLAGS,
    SelectedView,
    apply_flags,
    flag_list,
)
from gateway.runtime.login import AuthFailed, ConnectionInfo
from psc_auth.errors import SaslError
from psc_auth.sasl import (
    Mechanism,
    decode,
    decode_base64,
    decode_login,
    encode_base64,
)

log = logging.getLogger(__name__)

MECHANISMS = ("XOAUTH2", "OAUTHBEARER", "PLAIN")
_CLIENTS_FAULT = ("authentication", "authorization")
MAX_AUTH_FAILURES = 3
FETCH_BATCH = 64  # messages loaded per store round trip
SASL_STEP_TIMEOUT = 60.0
IDLE_POLL_INTERVAL = 5.0  # without a change hub, IDLE re-reads the folder this often
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class Channel(Protocol):
    """What the transport offers the session."""

    async def write(self, data: bytes) -> None: ...

    async def read_raw_line(self) -> bytes | None:
        """The next client line, unparsed (SASL response, DONE); None at end of stream."""
        ...

    async def start_tls(self) -> None: ...


@dataclass(frozen=True)
class EngineConfig:
    server_name: str = "lps-gateway"
    greeting: str = "MSSanté IMAP ready"
    idle_timeout: float = 30 * 60.0
    auth_failure_delay: float = 1.0
    hub_version: Callable[[str, str], int] | None = None  # (bal, folder) -> version
    hub_wait: Callable[[str, str, int], Awaitable[None]] | None = None
    structures: StructureCache | None = None  # shared by every session of a server
    recent: RecentRegistry = field(default_factory=RecentRegistry)  # likewise


class Logout(Exception):
    """The session is over: the transport closes the connection."""


class ImapSession:
    def __init__(
        self,
        config: EngineConfig,
        authenticator: Authenticator,
        channel: Channel,
        connection: ConnectionInfo,
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self.channel = channel
        self.connection = connection
        self.grant: SessionGrant | None = None
        self.view: SelectedView | None = None
        self.client_id: dict[str, str | None] = {}
        self._auth_failures = 0
        self._used_uid = False

    # -- lifecycle ---------------------------------------------------------------------
    def greeting(self) -> bytes:
        return untagged_status("OK", _ascii(self.config.greeting), self._capability_code())

    def _capability_code(self) -> str:
        """``CAPABILITY IMAP4rev1 ...`` for the greeting and the login OK (RFC 3501 §7.1)."""
        return f"{Code.CAPABILITY} " + " ".join(self.capabilities())

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
        if self.grant is not None and self.grant.capabilities is not None:
            return list(self.grant.capabilities)
        if self.grant is not None:
            return [*caps, "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN", "SPECIAL-USE"]
        if not self.connection.secure and self.connection.tls_available:
            caps.append("STARTTLS")
        if self._plaintext_refused():
            caps.append("LOGINDISABLED")
        else:
            caps += [f"AUTH={m}" for m in MECHANISMS]
        return caps

    def _plaintext_refused(self) -> bool:
        return not self.connection.secure and not self.connection.loopback

    async def close(self) -> None:
        if self.grant is not None and self.grant.on_close is not None:
            await self.grant.on_close()

    async def bye(self, text: str) -> None:
        await self.channel.write(untagged_status("BYE", _ascii(text)))

    # -- dispatch ----------------------------------------------------------------------
    async def execute(self, command: c.Command) -> None:
        """Run one command to completion (tagged reply included). Raises `Logout`."""
        handler = self._handlers().get(type(command))
        if handler is None:
            await self._reply(command.tag, "BAD", "command not supported")
            return
        state_ok, why = self._state_allows(command)
        if not state_ok:
            await self._reply(command.tag, "BAD", why)
            return
        try:
            await handler(command)
        except StoreUnavailable as exc:
            await self._reply(command.tag, "NO", str(exc), Code.UNAVAILABLE)
        except StoreError as exc:
            await self._reply(command.tag, "NO", str(exc), exc.code)

    def _handlers(self) -> dict[type, Callable[..., Awaitable[None]]]:
        return {
            c.Capability: self._capability,
            c.Noop: self._noop,
            c.Check: self._noop,
            c.Logout: self._logout,
            c.StartTls: self._starttls,
            c.Authenticate: self._authenticate,
            c.Login: self._login,
            c.Id: self._id,
            c.Enable: self._enable,
            c.Namespace: self._namespace,
            c.Select: self._select,
            c.Create: self._create,
            c.Delete: self._delete,
            c.Rename: self._rename,
            c.Subscribe: self._subscribe,
            c.Unsubscribe: self._subscribe,
            c.List: self._list,
            c.Status: self._status,
            c.Append: self._append,
            c.Idle: self._idle,
            c.Close: self._close,
            c.Unselect: self._close,
            c.Expunge: self._expunge,
            c.Search: self._search,
            c.Fetch: self._fetch,
            c.Store: self._store_flags,
            c.Copy: self._copy,
            c.Move: self._copy,
        }

    _ANY_STATE = (c.Capability, c.Noop, c.Logout, c.Id)
    _NOT_AUTHENTICATED = (c.StartTls, c.Authenticate, c.Login)
    _SELECTED = (
        c.Check,
        c.Close,
        c.Unselect,
        c.Expunge,
        c.Search,
        c.Fetch,
        c.Store,
        c.Copy,
        c.Move,
    )

    def _state_allows(self, command: c.Command) -> tuple[bool, str]:
        if isinstance(command, self._ANY_STATE):
            return True, ""
        if isinstance(command, self._NOT_AUTHENTICATED):
            return (self.grant is None, "already authenticated")
        if self.grant is None:
            return False, "authenticate first"
        if isinstance(command, self._SELECTED) and self.view is None:
            return False, "no mailbox selected"
        return True, ""

    async def _reply(self, tag: str, status: str, text: str, code: str | None = None) -> None:
        await self.channel.write(tagged(tag, status, _ascii(text), code))  # type: ignore[arg-type]

    async def _ok(self, command: c.Command, text: str, code: str | None = None) -> None:
        await self._sync(allow_expunge=_may_expunge(command))
        await self._reply(command.tag, "OK", text, code)

    def _grant(self) -> tuple[SessionGrant, str]:
        assert self.grant is not None
        return self.grant, self._store.address

    @property
    def _store(self) -> MailStore:
        """The store of the logged-in BAL (only sessions the engine serves have one)."""
        assert self.grant is not None
        assert self.grant.store is not None
        return self.grant.store

    async def _require(self, command: c.Command, right: str) -> bool:
        assert self.grant is not None
        if self.grant.may(right):
            return True
        if self.grant.on_refused is not None:
            await self.grant.on_refused(command, right)
        await self._reply(command.tag, "NO", f"the {right} right is needed for this", Code.NOPERM)
        return False

    # -- any state ---------------------------------------------------------------------
    async def _capability(self, command: c.Capability) -> None:
        await self.channel.write(
            untagged(Atom("CAPABILITY"), *(Atom(x) for x in self.capabilities()))
        )
        await self._ok(command, "CAPABILITY completed")

    async def _noop(self, command: c.Noop | c.Check) -> None:
        await self._ok(command, f"{type(command).__name__.upper()} completed")

    async def _logout(self, command: c.Logout) -> None:
        await self.bye("logging out")
        await self._reply(command.tag, "OK", "LOGOUT completed")
        raise Logout

    async def _id(self, command: c.Id) -> None:
        if command.parameters:
            self.client_id = {k.lower(): v for k, v in command.parameters}
            log.info("imap.client_id", extra={"client": dict(self.client_id)})
        await self.channel.write(
            untagged(Atom("ID"), ["name", self.config.server_name, "vendor", "lps-gateway"])
        )
        await self._ok(command, "ID completed")

    # -- not authenticated -------------------------------------------------------------
    async def _starttls(self, command: c.StartTls) -> None:
        if self.connection.secure or not self.connection.tls_available:
            await self._reply(command.tag, "BAD", "TLS is already active or not available")
            return
        await self._reply(command.tag, "OK", "begin TLS negotiation now")
        await self.channel.start_tls()
        self.connection = ConnectionInfo(
            self.connection.peer, True, self.connection.loopback, False, self.connection.session_id
        )

    async def _login(self, command: c.Login) -> None:
        if self._plaintext_refused():
            await self._reply(command.tag, "NO", "use STARTTLS first", Code.PRIVACYREQUIRED)
            return
        try:
            credentials = decode_login(command.user, command.password)
        except SaslError as exc:
            await self._auth_failed(command.tag, AuthFailed("authentication", str(exc)), False)
            return
        await self._finish_login(command.tag, credentials, challenge_allowed=False)

    async def _authenticate(self, command: c.Authenticate) -> None:
        mechanism = command.mechanism.upper()
        if mechanism not in MECHANISMS:
            await self._reply(command.tag, "NO", "unsupported mechanism", Code.CANNOT)
            return
        if self._plaintext_refused():
            await self._reply(command.tag, "NO", "use STARTTLS first", Code.PRIVACYREQUIRED)
            return
        response = command.initial_response
        if response is None:
            await self.channel.write(continuation(""))
            async with asyncio.timeout(SASL_STEP_TIMEOUT):
                response = await self.channel.read_raw_line()
            if response is None:
                raise Logout
        if response.strip() == b"*":
            await self._reply(command.tag, "BAD", "authentication cancelled")
            return
        try:
            credentials = decode(Mechanism(mechanism), decode_base64(response))
        except SaslError as exc:
            await self._reply(command.tag, "BAD", f"malformed SASL response: {exc}")
            return
        await self._finish_login(command.tag, credentials, challenge_allowed=mechanism != "PLAIN")

    async def _finish_login(
        self, tag: str, credentials: object, *, challenge_allowed: bool
    ) -> None:
        try:
            connection = dataclasses.replace(self.connection, software=self.client_software())
            grant = await self.authenticator.authenticate(credentials, connection)  # type: ignore[arg-type]
        except AuthFailed as failure:
            await self._auth_failed(tag, failure, challenge_allowed)
            return
        self.grant = grant
        log.info(
            "imap.login",
            extra={"bal": grant.mailbox, "actor": grant.actor, "via": grant.via},
        )
        await self._reply(tag, "OK", "logged in", self._capability_code())

    def client_software(self) -> str | None:
        """The client's own name and version from ID, for the audit trail."""
        name = self.client_id.get("name")
        if not name:
            return None
        version = self.client_id.get("version")
        return f"{name} {version}" if version else name

    async def _auth_failed(self, tag: str, failure: AuthFailed, challenge_allowed: bool) -> None:
        self._auth_failures += 1
        if failure.kind == "authentication" and challenge_allowed and failure.challenge:
            # RFC 7628 §3.2.2: the error challenge, then the client's dummy response.
            await self.channel.write(continuation(encode_base64(failure.challenge)))
            async with asyncio.timeout(SASL_STEP_TIMEOUT):
                if await self.channel.read_raw_line() is None:
                    raise Logout
        if failure.kind in _CLIENTS_FAULT and self.config.auth_failure_delay:
            await asyncio.sleep(self.config.auth_failure_delay)
        code = LOGIN_FAILURES[failure.kind]
        log.info("imap.login_refused", extra={"reason": failure.kind, "detail": failure.text})
        await self._reply(tag, "NO", failure.text, code)
        if self._auth_failures >= MAX_AUTH_FAILURES:
            await self.bye("too many failed logins")
            raise Logout

    # -- authenticated -----------------------------------------------------------------
    async def _enable(self, command: c.Enable) -> None:
        await self.channel.write(untagged(Atom("ENABLED")))
        await self._ok(command, "ENABLE completed")

    async def _namespace(self, command: c.Namespace) -> None:
        await self.channel.write(untagged(Atom("NAMESPACE"), [["", DELIMITER]], None, None))
        await self._ok(command, "NAMESPACE completed")

    async def _select(self, command: c.Select) -> None:
        _, bal = self._grant()
        if self.view is not None:
            # The selected mailbox is closed first, without expunge, whatever the outcome
            # (RFC 3501 §6.3.1): a failed SELECT leaves no mailbox selected. [CLOSED] is
            # RFC 7162 / 9051's marker, ignored by IMAP4rev1 clients, sent as Dovecot does.
            self.view = None
            await self.channel.write(untagged_status("OK", "previous mailbox closed", Code.CLOSED))
        version = self._version(bal, command.mailbox)
        try:
            state = await self._store.folder_state(command.mailbox)
        except StoreError:
            await self._selected(command, "failed:no")
            raise
        permanent = self._permanent_flags(command.readonly)
        # A mailbox where this grant can change nothing is read-only (RFC 4314 §3.1.1 style)
        readonly = command.readonly or not permanent
        recent_above = self._claim_recent(bal, command.mailbox, state, readonly)
        view = SelectedView.from_state(
            command.mailbox, readonly, state, version, permanent, recent_above
        )
        out = [
            view.flags_response(),
            view.permanent_flags_response(),
            untagged(view.exists, Atom("EXISTS")),
            untagged(len(view.recent), Atom("RECENT")),
        ]
        unseen = view.first_unseen()
        if unseen is not None:
            out.append(untagged_status("OK", "first unseen", f"{Code.UNSEEN} {unseen}"))
        out += [
            untagged_status("OK", "UIDs valid", f"{Code.UIDVALIDITY} {view.uidvalidity}"),
            untagged_status("OK", "predicted next UID", f"{Code.UIDNEXT} {view.uidnext}"),
        ]
        await self.channel.write(b"".join(out))
        self.view = view
        # Without the write right the mailbox is read-only to this person, \\Seen aside
        # (PERMANENTFLAGS says so): a client must not offer what would be refused.
        writable = not readonly and self._grant()[0].may("write")
        mode = Code.READ_WRITE if writable else Code.READ_ONLY
        await self._reply(
            command.tag, "OK", f"{'EXAMINE' if command.readonly else 'SELECT'} completed", mode
        )
        await self._selected(command, "ok")

    async def _selected(self, command: c.Select, result: str) -> None:
        grant = self._grant()[0]
        if grant.on_selected is not None:
            await grant.on_selected(command, result)

    def _permanent_flags(self, readonly: bool) -> tuple[str, ...]:
        assert self.grant is not None
        if readonly:
            return ()
        if self.grant.may("write"):
            return (*SYSTEM_FLAGS, ANY_KEYWORD)
        return ("\\Seen",) if self.grant.may("read") else ()

    def _claim_recent(self, bal: str, folder: str, state: FolderState, readonly: bool) -> int:
        """Claim \\Recent on the messages of `state` no session has claimed yet (a read-only
        session only looks); returns the UID above which they are this session's."""
        registry = self.config.recent
        if readonly or not state.messages:
            return registry.claimed(bal, folder, state.uidvalidity)
        return registry.claim(bal, folder, state.uidvalidity, state.messages[-1].uid)

    def _version(self, bal: str, folder: str) -> int | None:
        """The folder's change counter; None without a hub (then every sync re-reads)."""
        return self.config.hub_version(bal, folder) if self.config.hub_version else None

    async def _create(self, command: c.Create) -> None:
        if not await self._require(command, "write"):
            return
        name = command.mailbox.rstrip(DELIMITER)
        await self._store.create_folder(name)
        await self._ok(command, "CREATE completed")

    async def _delete(self, command: c.Delete) -> None:
        if not await self._require(command, "write"):
            return
        await self._store.delete_folder(command.mailbox)
        if self.view is not None and self.view.folder == command.mailbox:
            self.view = None
        await self._ok(command, "DELETE completed")

    async def _rename(self, command: c.Rename) -> None:
        if not await self._require(command, "write"):
            return
        old, new = command.old, command.new.rstrip(DELIMITER) or command.new
        if old != "INBOX" and new.startswith(old + DELIMITER):
            await self._reply(command.tag, "NO", "cannot move a folder under itself", Code.CANNOT)
            return
        folders = {f.name for f in await self._store.list_folders()}
        if old not in folders:
            raise FolderNotFound(old)
        if new in folders:
            raise FolderExists(new)
        # RFC 3501 §6.3.5: superior hierarchical names of the new name are created too
        parent = new.rpartition(DELIMITER)[0]
        if parent and parent not in folders:
            await self._store.create_folder(parent)
        await self._store.rename_folder(old, new)
        if old != "INBOX":  # INBOX's messages go to a new folder, a new UIDVALIDITY
            self.config.recent.rename(self._store.address, old, new)
        view = self.view
        if view is not None and old != "INBOX":  # INBOX stays: its view sees the messages go
            if view.folder == old:
                view.folder = new
            elif view.folder.startswith(old + DELIMITER):
                view.folder = new + view.folder[len(old) :]
        await self._ok(command, "RENAME completed")

    async def _subscribe(self, command: c.Subscribe | c.Unsubscribe) -> None:
        if not await self._require(command, "write"):
            return
        await self._store.subscribe(command.mailbox, isinstance(command, c.Subscribe))
        await self._ok(command, f"{type(command).__name__.upper()} completed")

    async def _list(self, command: c.List) -> None:
        name = "LSUB" if command.subscribed else "LIST"
        if not command.pattern and not command.subscribed:
            # RFC 3501 §6.3.8: the hierarchy delimiter and the root name
            await self.channel.write(untagged(Atom("LIST"), [Atom("\\Noselect")], DELIMITER, ""))
            await self._ok(command, "LIST completed")
            return
        folders = list(await self._store.list_folders())
        regex = _pattern_regex(command.reference + command.pattern)
        if command.subscribed:
            entries = _lsub_entries(folders, regex, command.pattern.endswith("%"))
        else:
            entries = _list_entries(folders, regex)
        out = [
            untagged(Atom(name), attributes, DELIMITER, _mailbox(folder))
            for folder, attributes in entries
        ]
        await self.channel.write(b"".join(out))
        await self._ok(command, f"{name} completed")

    async def _status(self, command: c.Status) -> None:
        state = await self._store.folder_state(command.mailbox)
        unclaimed = self.config.recent.claimed(
            self._store.address, command.mailbox, state.uidvalidity
        )
        view = self.view
        own: set[int] = set()  # on its selected folder, a session's own count too (Dovecot)
        if view and (view.folder, view.uidvalidity) == (command.mailbox, state.uidvalidity):
            own = view.recent
        values: dict[str, int] = {
            "MESSAGES": len(state.messages),
            "RECENT": sum(1 for m in state.messages if m.uid > unclaimed or m.uid in own),
            "UIDNEXT": state.uidnext,
            "UIDVALIDITY": state.uidvalidity,
            "UNSEEN": sum(1 for m in state.messages if "\\Seen" not in m.flags),
        }
        items: list[Value] = []
        for item in command.items:
            items += [Atom(item), values[item]]
        await self.channel.write(untagged(Atom("STATUS"), _mailbox(command.mailbox), items))
        await self._ok(command, "STATUS completed")

    async def _append(self, command: c.Append) -> None:
        if not await self._require(command, "write"):
            return
        folders = {f.name for f in await self._store.list_folders()}
        if command.mailbox not in folders:
            await self._reply(command.tag, "NO", "no such folder", Code.TRYCREATE)
            return
        flags = [f for f in command.flags if f != RECENT]
        when = command.internal_date or dt.datetime.now(dt.UTC).astimezone()
        try:
            uidvalidity, uid = await self._store.append(
                command.mailbox, command.message, flags, when
            )
        except FolderNotFound:  # deleted meanwhile
            await self._reply(command.tag, "NO", "no such folder", Code.TRYCREATE)
            return
        await self._ok(command, "APPEND completed", f"{Code.APPENDUID} {uidvalidity} {uid}")

    async def _idle(self, command: c.Idle) -> None:
        await self._sync(allow_expunge=True)
        await self.channel.write(continuation("idling"))
        reader = asyncio.ensure_future(self.channel.read_raw_line())
        waiter: asyncio.Future[None] | None = None
        try:
            async with asyncio.timeout(self.config.idle_timeout):
                while True:
                    waiter = asyncio.ensure_future(self._wait_change())
                    done, _ = await asyncio.wait(
                        {reader, waiter}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if reader in done:
                        break
                    waiter.result()  # a failing change signal ends IDLE with its error
                    try:
                        await self._sync(allow_expunge=True)
                    except StoreError as exc:
                        # no tagged reply before DONE: the client hears when the store
                        # answers again (a lost folder still ends the session, in _sync)
                        log.warning("imap.idle_sync_failed", extra={"error": str(exc)})
        except TimeoutError:
            await self.bye("IDLE for too long")
            raise Logout from None
        finally:
            # never leave a task reading the connection or waiting on the hub behind us:
            # the next command's read must find the connection free
            pending = [t for t in (reader, waiter) if t is not None and not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        line = reader.result()
        if line is None:
            raise Logout
        if line.strip().upper() != b"DONE":
            await self._reply(command.tag, "BAD", "expected DONE")
            return
        await self._ok(command, "IDLE terminated")

    async def _wait_change(self) -> None:
        if self.view is None:
            await asyncio.Event().wait()
            return
        if self.config.hub_wait is None or self.view.version is None:
            await asyncio.sleep(IDLE_POLL_INTERVAL)  # no change signal: poll
            return
        _, bal = self._grant()
        await self.config.hub_wait(bal, self.view.folder, self.view.version)

    # -- selected ----------------------------------------------------------------------
    async def _close(self, command: c.Close | c.Unselect) -> None:
        assert self.view is not None
        view, self.view = self.view, None  # authenticated state whatever happens below
        if isinstance(command, c.Close) and not view.readonly and self._grant()[0].may("write"):
            # silent: no EXPUNGE responses (RFC 3501 §6.4.2). CLOSE has no NO response,
            # so a store failure is logged, not reported.
            try:
                await self._store.expunge(view.folder)
            except StoreError as exc:
                log.warning("imap.close_expunge_failed", extra={"error": str(exc)})
        await self._reply(command.tag, "OK", f"{type(command).__name__.upper()} completed")

    async def _expunge(self, command: c.Expunge) -> None:
        if not await self._require(command, "write"):
            return
        assert self.view is not None
        if self.view.readonly:
            await self._reply(command.tag, "NO", "mailbox is read-only", Code.READ_ONLY)
            return
        uids = None
        if command.uids is not None:
            self._used_uid = True
            uids = [u for u in self.view.uids if command.uids.contains(u, self.view.largest_uid)]
        if uids != []:
            await self._store.expunge(self.view.folder, uids)
        await self._ok(command, "EXPUNGE completed")

    def _targets(self, sequence: SequenceSet, uid: bool) -> list[tuple[int, int]]:
        """(seq, uid) pairs addressed by a sequence set, ascending."""
        assert self.view is not None
        view = self.view
        if uid:
            self._used_uid = True
            if not view.uids:
                return []
            largest = view.largest_uid
            return [
                (index + 1, u) for index, u in enumerate(view.uids) if sequence.contains(u, largest)
            ]
        return [(seq, view.uid_at(seq)) for seq in sequence.iter_numbers(view.exists)]

    async def _bad_sequence(self, command: c.Command, sequence: SequenceSet, uid: bool) -> bool:
        """RFC 3501 §9 / 9051 §9: a message number beyond EXISTS is an error, `*` included
        on an empty mailbox (Dovecot: BAD "Invalid messageset"); UIDs beyond are ignored."""
        assert self.view is not None
        if uid:
            return False
        exists = self.view.exists
        if exists == 0 or any(item.bounds(exists)[1] > exists for item in sequence.ranges):
            await self._reply(command.tag, "BAD", "message number out of range")
            return True
        return False

    async def _fetch(self, command: c.Fetch) -> None:
        assert self.view is not None
        if await self._bad_sequence(command, command.sequence, command.uid):
            return
        view = self.view
        attributes = _unique(command.attributes)
        if command.uid and not any(a.name == "UID" for a in attributes):
            attributes.insert(0, FetchAttribute("UID"))
        marks_seen = (
            not view.readonly
            and self._grant()[0].may("read")
            and any(_sets_seen(a) for a in attributes)
        )
        needs_body = any(
            a.name not in ("UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE") for a in attributes
        )
        wants_flags = any(a.name == "FLAGS" for a in attributes)
        cache = self.config.structures
        # ENVELOPE / BODYSTRUCTURE / BODY alone can come from the cache, without the bytes.
        only_structures = cache is not None and all(
            a.name in ("UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE")
            or (a.name in CACHEABLE and a.section is None)
            for a in attributes
        )
        missing = False
        targets = self._targets(command.sequence, command.uid)
        for begin in range(0, len(targets), FETCH_BATCH):
            batch = targets[begin : begin + FETCH_BATCH]
            cached: dict[int, dict[str, bytes]] = {}
            if needs_body and only_structures:
                cached = self._cached_structures(view, [u for _, u in batch], attributes)
            bodies: dict[int, bytes] = {}
            wanted = [u for _, u in batch if u not in cached] if needs_body else []
            if wanted:
                bodies = await self._store.fetch_messages(view.folder, wanted)
            out: list[bytes] = []
            for seq, uid in batch:
                meta = view.meta[uid]
                parsed = None
                if needs_body and uid not in cached:
                    if uid not in bodies:
                        missing = True
                        continue
                    parsed = ParsedMessage(bodies[uid])
                flags = meta.flags
                if marks_seen and "\\Seen" not in flags and uid not in view.gone:
                    changed = await self._store.store_flags(view.folder, [uid], "add", ["\\Seen"])
                    if uid in changed:
                        flags = changed[uid]
                        out.append(b"".join(view.note_keywords([flags])))
                        view.set_flags(uid, flags)
                items = _fetch_items(
                    attributes,
                    meta.uid,
                    view.shown(uid, flags),
                    meta.internal_date,
                    meta.size,
                    parsed,
                    cached.get(uid),
                )
                if parsed is not None and cache is not None:
                    self._remember_structures(view, uid, attributes, items)
                if flags != meta.flags and not wants_flags:
                    # RFC 3501 §6.4.5: \Seen was set, the client hears of it
                    items += [Atom("FLAGS"), flag_list(view.shown(uid, flags))]
                out.append(untagged(seq, Atom("FETCH"), items))
            await self.channel.write(b"".join(out))
        if missing:
            await self._sync(allow_expunge=_may_expunge(command))
            # RFC 2180 §4.1.2: NO for what another session expunged, in Dovecot's words
            # (those imaptest's stress mode knows: not a failure of the server)
            text = "Some of the requested messages no longer exist"
            await self._reply(command.tag, "NO", text, Code.EXPUNGEISSUED)
            return
        await self._ok(command, "FETCH completed")

    def _cached_structures(
        self, view: SelectedView, uids: list[int], attributes: list[FetchAttribute]
    ) -> dict[int, dict[str, bytes]]:
        """The encoded structures of the messages whose every asked structure is cached."""
        cache = self.config.structures
        assert cache is not None
        assert self.grant is not None
        names = [a.name for a in attributes if a.name in CACHEABLE]
        address = self._store.address
        found: dict[int, dict[str, bytes]] = {}
        for uid in uids:
            entry: dict[str, bytes] = {}
            for name in names:
                value = cache.get((address, view.folder, view.uidvalidity, uid, name))
                if value is None:
                    break
                entry[name] = value
            else:
                found[uid] = entry
        return found

    def _remember_structures(
        self, view: SelectedView, uid: int, attributes: list[FetchAttribute], items: list[Value]
    ) -> None:
        cache = self.config.structures
        assert cache is not None
        assert self.grant is not None
        address = self._store.address
        for index in range(0, len(items) - 1, 2):
            name = items[index]
            if isinstance(name, Atom) and name.value in CACHEABLE:
                value = items[index + 1]
                encoded = value.value if isinstance(value, Raw) else encode(value)
                cache.put((address, view.folder, view.uidvalidity, uid, name.value), encoded)

    async def _store_flags(self, command: c.Store) -> None:
        assert self.view is not None
        if await self._bad_sequence(command, command.sequence, command.uid):
            return
        action = command.action
        # Marking read or unread needs the read right; any other change (FLAGS replaces
        # every flag, even with only \Seen listed) needs write.
        only_seen = action.mode != "replace" and set(action.flags) <= {"\\Seen"}
        if not await self._require(command, "read" if only_seen else "write"):
            return
        if self.view.readonly:
            await self._reply(command.tag, "NO", "mailbox is read-only", Code.READ_ONLY)
            return
        view = self.view
        targets = self._targets(command.sequence, command.uid)
        flags = [f for f in action.flags if f != RECENT]
        changed = await self._store.store_flags(
            view.folder, [u for _, u in targets], action.mode, flags
        )
        out = view.note_keywords(changed.values())
        for seq, uid in targets:
            if uid not in changed or uid not in view.meta:
                continue
            if action.silent:
                # The client knows what it set; changes made meanwhile by others still
                # differ from the view, so the next sync reports them (RFC 3501 §6.4.6).
                view.set_flags(uid, apply_flags(view.meta[uid].flags, action.mode, flags))
                continue
            view.set_flags(uid, changed[uid])
            items: list[Value] = [Atom("FLAGS"), flag_list(view.shown(uid, changed[uid]))]
            if command.uid:
                items = [Atom("UID"), uid, *items]
            out.append(untagged(seq, Atom("FETCH"), items))
        await self.channel.write(b"".join(out))
        await self._ok(command, "STORE completed")

    async def _copy(self, command: c.Copy | c.Move) -> None:
        assert self.view is not None
        if await self._bad_sequence(command, command.sequence, command.uid):
            return
        if not await self._require(command, "write"):
            return
        is_move = isinstance(command, c.Move)
        if is_move and self.view.readonly:
            await self._reply(command.tag, "NO", "mailbox is read-only", Code.READ_ONLY)
            return
        view = self.view
        folders = {f.name for f in await self._store.list_folders()}
        if command.mailbox not in folders:
            await self._reply(command.tag, "NO", "no such folder", Code.TRYCREATE)
            return
        uids = [u for _, u in self._targets(command.sequence, command.uid)]
        if not uids:
            await self._ok(command, "nothing to do")
            return
        action = self._store.move if is_move else self._store.copy
        result = await action(view.folder, uids, command.mailbox)
        code = None
        if result.pairs:
            source = _uid_set([s for s, _ in result.pairs])
            dest = _uid_set([d for _, d in result.pairs])
            code = f"{Code.COPYUID} {result.uidvalidity} {source} {dest}"
        if is_move:
            # RFC 6851 §4.3: COPYUID in an untagged OK before the EXPUNGE responses
            if code:
                await self.channel.write(untagged_status("OK", "moved", code))
            await self._ok(command, "MOVE completed")
        else:
            await self._ok(command, "COPY completed", code)

    async def _search(self, command: c.Search) -> None:
        assert self.view is not None
        view = self.view
        try:
            validate(command.key, command.charset)
        except SearchError as exc:
            if exc.code == Code.BADCHARSET:
                charsets = " ".join(SUPPORTED_CHARSETS)
                await self._reply(command.tag, "NO", str(exc), f"{exc.code} ({charsets})")
            else:
                await self._reply(command.tag, "BAD", str(exc))
            return
        if command.uid:
            self._used_uid = True
        load = needs_message(command.key)
        found: list[int] = []
        for index, uid in enumerate(list(view.uids)):
            meta = view.meta[uid]
            raw = None
            if load:
                try:
                    raw = await self._store.fetch_message(view.folder, uid)
                except MessageGone:
                    continue
            candidate = Candidate(
                seq=index + 1,
                uid=uid,
                flags=meta.flags,
                internal_date=meta.internal_date,
                size=meta.size,
                recent=uid in view.recent,
                message=raw,
            )
            if matches(
                command.key, candidate, largest_seq=view.exists, largest_uid=view.largest_uid
            ):
                found.append(uid if command.uid else index + 1)
        await self.channel.write(untagged(Atom("SEARCH"), *found))
        await self._ok(command, "SEARCH completed")

    # -- synchronisation ---------------------------------------------------------------
    async def _sync(self, *, allow_expunge: bool) -> None:
        """Tell the client what changed in its selected folder since it last heard."""
        view = self.view
        if view is None or self.grant is None:
            return
        bal = self._store.address
        version = self._version(bal, view.folder)
        if version is not None and version == view.version and not (allow_expunge and view.gone):
            return
        try:
            state = await self._store.folder_state(view.folder)
        except FolderNotFound:
            state = None
        if state is None or state.uidvalidity != view.uidvalidity:
            # Deleted (or deleted and re-created) under us: the numbers the client holds
            # mean nothing any more. Dovecot ends the session the same way.
            self.view = None
            await self.bye("selected mailbox was deleted, have to disconnect")
            raise Logout
        view.version = version
        recent_above = None
        if view.arrivals(state):
            recent_above = self._claim_recent(bal, view.folder, state, view.readonly)
        updates = b"".join(
            view.sync(
                state,
                allow_expunge=allow_expunge,
                with_uid=self._used_uid,
                recent_above=recent_above,
            )
        )
        if updates:
            await self.channel.write(updates)


def _may_expunge(command: c.Command) -> bool:
    """RFC 3501 §7.4.1: no EXPUNGE response while answering FETCH, STORE or SEARCH, whose
    replies use sequence numbers; their UID forms may send them (as Dovecot does)."""
    if isinstance(command, c.Fetch | c.Store | c.Search):
        return command.uid
    return True


def _ascii(text: str) -> str:
    """Human-readable text is 7-bit in IMAP4rev1 (RFC 3501 TEXT-CHAR): accents are
    dropped ("Envoyés" -> "Envoyes"), anything else non-ASCII becomes "?"."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(
        ch if ch.isascii() else ("" if unicodedata.combining(ch) else "?") for ch in decomposed
    )


def _unique(attributes: Iterable[FetchAttribute]) -> list[FetchAttribute]:
    """Each FETCH data item once, in the order first asked (``FLAGS FLAGS``: one FLAGS)."""
    seen: set[FetchAttribute] = set()
    out: list[FetchAttribute] = []
    for attribute in attributes:
        if attribute not in seen:
            seen.add(attribute)
            out.append(attribute)
    return out


def _sets_seen(attribute: FetchAttribute) -> bool:
    if attribute.name == "BODY" and attribute.section is not None:
        return not attribute.peek
    return attribute.name in ("RFC822", "RFC822.TEXT")


def internal_date(when: dt.datetime) -> str:
    """RFC 3501 date-time: ``"dd-Mon-yyyy hh:mm:ss +zzzz"``. The day is two digits, as
    Dovecot writes it (date-day-fixed allows "02" as well as " 2"); month names are
    English whatever the locale; a naive datetime is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return (
        f"{when.day:02d}-{MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{hours:02d}{minutes:02d}"
    )


def _fetch_items(
    attributes: Iterable[FetchAttribute],
    uid: int,
    flags: frozenset[str],
    internal: dt.datetime,
    size: int,
    parsed: ParsedMessage | None,
    cached: dict[str, bytes] | None = None,
) -> list[Value]:
    items: list[Value] = []
    for attribute in attributes:
        name = attribute.name
        if cached is not None and name in cached and attribute.section is None:
            items += [Atom(name), Raw(cached[name])]
        elif name == "UID":
            items += [Atom("UID"), uid]
        elif name == "FLAGS":
            items += [Atom("FLAGS"), flag_list(flags)]
        elif name == "INTERNALDATE":
            items += [Atom("INTERNALDATE"), internal_date(internal)]
        elif name == "RFC822.SIZE":
            items += [Atom("RFC822.SIZE"), size]
        else:
            assert parsed is not None
            items += _body_item(attribute, parsed)
    return items


_HEADER_ATOM = re.compile(r"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+")  # astring


def _section_name(attribute: FetchAttribute) -> str:
    """``BODY[section]<origin>`` as the response names it: PEEK dropped, header names as
    the parser gives them (upper case, as Dovecot echoes them), quoted when not atoms."""
    section = attribute.section
    assert section is not None
    spec = ".".join(str(p) for p in section.part)
    if section.text:
        spec = f"{spec}.{section.text}" if spec else section.text
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        names = [
            name if _HEADER_ATOM.fullmatch(name) else encode(name).decode("ascii")
            for name in section.fields
        ]
        spec += " (" + " ".join(names) + ")"
    origin = f"<{attribute.partial[0]}>" if attribute.partial else ""
    return f"BODY[{spec}]{origin}"


def _body_item(attribute: FetchAttribute, parsed: ParsedMessage) -> list[Value]:
    name = attribute.name
    if name == "ENVELOPE":
        return [Atom("ENVELOPE"), parsed.envelope()]
    if name == "BODYSTRUCTURE":
        return [Atom("BODYSTRUCTURE"), parsed.bodystructure(extensible=True)]
    if name == "BODY" and attribute.section is None:
        return [Atom("BODY"), parsed.bodystructure(extensible=False)]
    if name == "RFC822":
        return [Atom("RFC822"), _literal(parsed.raw)]
    if name in ("RFC822.HEADER", "RFC822.TEXT"):
        section = Section(text="HEADER" if name == "RFC822.HEADER" else "TEXT")
        return [Atom(name), _literal(parsed.section(section) or b"")]
    assert attribute.section is not None
    # A part that does not exist is empty, as Dovecot answers it (``BODY[5] {0}``)
    data = parsed.section(attribute.section) or b""
    return [Atom(_section_name(attribute)), _literal(apply_partial(data, attribute.partial))]


def _literal(data: bytes) -> Literal:
    """IMAP literals may not carry NUL (RFC 3501 CHAR8): sent as 0x80, as Dovecot does."""
    return Literal(data.replace(b"\0", b"\x80") if b"\0" in data else data)


def _uid_set(uids: list[int]) -> str:
    """Compact a UID list into a sequence set, keeping the given order's ranges."""
    parts: list[str] = []
    start = prev = uids[0]
    for uid in uids[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def _mailbox(name: str) -> str:
    return name if name == "INBOX" else mutf7.encode(name)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """LIST wildcards: `*` matches anything, `%` anything but the hierarchy delimiter."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "%":
            parts.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def _listed(regex: re.Pattern[str], name: str) -> bool:
    """INBOX matches its pattern in any case (RFC 3501 §5.1)."""
    if regex.fullmatch(name):
        return True
    return name == "INBOX" and re.fullmatch(regex.pattern, name, re.IGNORECASE) is not None


def _ancestors(name: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:depth]) for depth in range(1, len(parts))]


def _list_entries(
    folders: list[FolderInfo], regex: re.Pattern[str]
) -> list[tuple[str, list[Value]]]:
    """LIST replies: matching folders with CHILDREN and SPECIAL-USE attributes, and the
    missing levels of hierarchy above them as ``(\\Noselect \\HasChildren)`` (RFC 3501
    §6.3.8, as Dovecot lists them), each parent just before its first child."""
    names = {f.name for f in folders}
    parents = {a for f in folders for a in _ancestors(f.name)}
    entries: list[tuple[str, list[Value]]] = []
    shown: set[str] = set()
    for folder in folders:
        for ancestor in _ancestors(folder.name):
            if ancestor not in names and ancestor not in shown and _listed(regex, ancestor):
                shown.add(ancestor)
                entries.append((ancestor, [Atom("\\Noselect"), Atom("\\HasChildren")]))
        if not _listed(regex, folder.name):
            continue
        attributes: list[Value] = [
            Atom("\\HasChildren" if folder.name in parents else "\\HasNoChildren")
        ]
        if folder.special_use:
            attributes.append(Atom(folder.special_use))
        entries.append((folder.name, attributes))
    return entries


def _lsub_entries(
    folders: list[FolderInfo], regex: re.Pattern[str], trailing_percent: bool
) -> list[tuple[str, list[Value]]]:
    """LSUB replies: subscribed folders matching; with a trailing ``%``, an unsubscribed
    level above a subscribed folder is listed ``(\\Noselect)`` (RFC 3501 §6.3.9)."""
    subscribed = [f.name for f in folders if f.subscribed]
    chosen = set(subscribed)
    entries: list[tuple[str, list[Value]]] = []
    shown: set[str] = set()
    for name in subscribed:
        if _listed(regex, name):
            entries.append((name, []))
        elif trailing_percent:
            for ancestor in _ancestors(name):
                if ancestor not in chosen and ancestor not in shown and _listed(regex, ancestor):
                    shown.add(ancestor)
                    entries.append((ancestor, [Atom("\\Noselect")]))
    return entries
