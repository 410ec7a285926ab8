"""The IMAP server engine: one `ImapSession` per connection, serving any `MailStore`.

The session is a state machine (not authenticated → authenticated → selected → logout)
that executes parsed commands and writes replies through a `Channel`. It owns no socket:
the transport hands it commands and gives it a channel to write to, read SASL lines from,
and upgrade to TLS.

This module is the dispatcher and the session's own commands (any state, login, ENABLE,
NAMESPACE, IDLE) with the synchronisation every reply ends with; the commands on folders
live in `mailboxes`, those on the selected folder in `selected`, FETCH in `fetch`. Each
of those is a function of the session and its command, using the session's `reply`,
`ok`, `require`, `store` and `view`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

from gateway.imap import commands as c
from gateway.imap import fetch, mailboxes, selected
from gateway.imap.codes import LOGIN_FAILURES, Code
from gateway.imap.fetch import internal_date
from gateway.imap.listing import list_entries as _list_entries
from gateway.imap.listing import lsub_entries as _lsub_entries
from gateway.imap.listing import pattern_regex as _pattern_regex
from gateway.imap.mailstore import (
    DELIMITER,
    FolderNotFound,
    FolderState,
    MailStore,
    RecentRegistry,
    StoreError,
    StoreUnavailable,
)
from gateway.imap.response import (
    Atom,
    Status,
    continuation,
    tagged,
    untagged,
    untagged_status,
)
from gateway.imap.session import (
    Authenticator,
    ExternalAuthenticator,
    ExternalCredentials,
    SessionGrant,
    decode_external,
)
from gateway.imap.structure_cache import StructureCache
from gateway.imap.view import SelectedView
from gateway.runtime.login import AuthFailed, ConnectionInfo
from gateway.runtime.logs import identified
from gateway.runtime.protocols import conforms
from psc_auth.errors import SaslError
from psc_auth.sasl import (
    Mechanism,
    TokenCredentials,
    decode,
    decode_base64,
    decode_login,
    encode_base64,
)

__all__ = [
    "MECHANISMS",
    "Channel",
    "EngineConfig",
    "ImapSession",
    "Logout",
    "_list_entries",  # the listing helpers, imported from here before they had a module
    "_lsub_entries",
    "_pattern_regex",
    "internal_date",
]

log = logging.getLogger(__name__)

MECHANISMS = ("XOAUTH2", "OAUTHBEARER", "PLAIN")
_CLIENTS_FAULT = ("authentication", "authorization")
MAX_AUTH_FAILURES = 3
SASL_STEP_TIMEOUT = 60.0
IDLE_POLL_INTERVAL = 5.0  # without a change hub, IDLE re-reads the folder this often


class Channel(Protocol):
    """What the transport offers the session."""

    async def write(self, data: bytes) -> None: ...

    async def read_raw_line(self) -> bytes | None:
        """The next client line, unparsed (SASL response, DONE); None at end of stream."""
        ...

    async def start_tls(self) -> None: ...


@runtime_checkable
class CertificateChannel(Protocol):
    """A channel that can tell the client's TLS certificate (for SASL EXTERNAL)."""

    def peer_certificate(self) -> bytes | None:
        """The certificate (DER) the client presented and TLS verified; None without."""
        ...


@dataclass(frozen=True)
class EngineConfig:
    """What the sessions of one server share: names, timeouts, the change hub's version
    and wait (None: sessions re-read the store instead), the caches."""

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
    """One client connection's IMAP state: its grant once logged in, its selected view."""

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
        # the client has used a UID command: unsolicited FETCH responses carry UID too
        self.used_uid = False
        self._auth_failures = 0

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
            if self._external_offered():
                caps.append("AUTH=EXTERNAL")
        return caps

    def _external_offered(self) -> bool:
        """EXTERNAL only where it can succeed: the authenticator takes certificates and
        the client presented one (RFC 4422 appendix A)."""
        return (
            conforms(self.authenticator, ExternalAuthenticator)
            and self._client_certificate() is not None
        )

    def _client_certificate(self) -> bytes | None:
        if conforms(self.channel, CertificateChannel):
            return cast(CertificateChannel, self.channel).peer_certificate()
        return None

    def _plaintext_refused(self) -> bool:
        return not self.connection.secure and not self.connection.loopback

    async def close(self) -> None:
        if self.grant is not None and self.grant.on_close is not None:
            await self.grant.on_close()

    async def bye(self, text: str) -> None:
        await self.channel.write(untagged_status("BYE", _ascii(text)))

    # -- dispatch ----------------------------------------------------------------------
    async def execute(self, command: c.Command) -> None:
        """Run one command to completion (tagged reply included). Raises `Logout`.
        A `StoreError` from any handler is the command's NO, with the error's code."""
        handler = _HANDLERS.get(type(command))
        if handler is None:
            await self.reply(command.tag, "BAD", "command not supported")
            return
        why = self._refused_in_this_state(command)
        if why is not None:
            await self.reply(command.tag, "BAD", why)
            return
        try:
            await handler(self, command)
        except StoreUnavailable as exc:
            await self.reply(command.tag, "NO", str(exc), Code.UNAVAILABLE)
        except StoreError as exc:
            await self.reply(command.tag, "NO", str(exc), exc.code)

    def _refused_in_this_state(self, command: c.Command) -> str | None:
        """Why the command is not valid in the session's state (RFC 3501 §3), or None."""
        if isinstance(command, _ANY_STATE):
            return None
        if isinstance(command, _NOT_AUTHENTICATED):
            return None if self.grant is None else "already authenticated"
        if self.grant is None:
            return "authenticate first"
        if isinstance(command, _SELECTED) and self.view is None:
            return "no mailbox selected"
        return None

    # -- what the handlers use -----------------------------------------------------------
    async def reply(self, tag: str, status: Status, text: str, code: str | None = None) -> None:
        """A tagged reply; `code` is what goes between the brackets (a `Code`, with its
        arguments when it has any)."""
        await self.channel.write(tagged(tag, status, _ascii(text), code))

    async def ok(self, command: c.Command, text: str, code: str | None = None) -> None:
        """The tagged OK, after the changes the client may hear of now (`sync_after`)."""
        await self.sync_after(command)
        await self.reply(command.tag, "OK", text, code)

    @property
    def granted(self) -> SessionGrant:
        """The grant of the logged-in session (handlers run only once logged in)."""
        assert self.grant is not None
        return self.grant

    @property
    def store(self) -> MailStore:
        """The store of the logged-in BAL (only sessions the engine serves have one)."""
        assert self.grant is not None
        assert self.grant.store is not None
        return self.grant.store

    async def require(self, command: c.Command, right: str) -> bool:
        """True when the grant has `right`; else the command is answered NO [NOPERM] and
        the grant's owner told (the audit trail records refusals)."""
        grant = self.granted
        if grant.may(right):
            return True
        if grant.on_refused is not None:
            await grant.on_refused(command, right)
        await self.reply(command.tag, "NO", f"the {right} right is needed for this", Code.NOPERM)
        return False

    def folder_version(self, bal: str, folder: str) -> int | None:
        """The folder's change counter; None without a hub (then every sync re-reads)."""
        return self.config.hub_version(bal, folder) if self.config.hub_version else None

    def claim_recent(self, bal: str, folder: str, state: FolderState, readonly: bool) -> int:
        """Claim \\Recent on the messages of `state` no session has claimed yet; returns the
        UID above which they are this session's. A read-only session only looks, and so
        does one without the write right (a delegate who may read: the mailbox is
        READ-ONLY to them, and they must not take the holder's new mail from view)."""
        registry = self.config.recent
        if readonly or not self.granted.may("write") or not state.messages:
            return registry.claimed(bal, folder, state.uidvalidity)
        return registry.claim(bal, folder, state.uidvalidity, state.messages[-1].uid)

    # -- any state ---------------------------------------------------------------------
    async def _capability(self, command: c.Capability) -> None:
        await self.channel.write(
            untagged(Atom("CAPABILITY"), *(Atom(x) for x in self.capabilities()))
        )
        await self.ok(command, "CAPABILITY completed")

    async def _noop(self, command: c.Noop | c.Check) -> None:
        """NOOP and CHECK do nothing but let the changes through (`ok` syncs)."""
        await self.ok(command, f"{type(command).__name__.upper()} completed")

    async def _logout(self, command: c.Logout) -> None:
        await self.bye("logging out")
        await self.reply(command.tag, "OK", "LOGOUT completed")
        raise Logout

    async def _id(self, command: c.Id) -> None:
        """RFC 2971 ID: the client's name and version go to the logs and the audit trail."""
        if command.parameters:
            self.client_id = {k.lower(): v for k, v in command.parameters}
            log.info("imap.client_id", extra={"client": dict(self.client_id)})
        await self.channel.write(
            untagged(Atom("ID"), ["name", self.config.server_name, "vendor", "lps-gateway"])
        )
        await self.ok(command, "ID completed")

    # -- not authenticated -------------------------------------------------------------
    async def _starttls(self, command: c.StartTls) -> None:
        """RFC 3501 §6.2.1: OK, then the handshake; the session then counts as secure."""
        if self.connection.secure or not self.connection.tls_available:
            await self.reply(command.tag, "BAD", "TLS is already active or not available")
            return
        await self.reply(command.tag, "OK", "begin TLS negotiation now")
        await self.channel.start_tls()
        self.connection = dataclasses.replace(
            self.connection, secure=True, tls_available=False, software=None
        )

    async def _login(self, command: c.Login) -> None:
        """LOGIN with a token as the password (`decode_login`), for clients without SASL."""
        if self._plaintext_refused():
            await self.reply(command.tag, "NO", "use STARTTLS first", Code.PRIVACYREQUIRED)
            return
        try:
            credentials = decode_login(command.user, command.password)
        except SaslError as exc:
            await self._auth_failed(command.tag, AuthFailed("authentication", str(exc)), False)
            return
        await self._finish_login(command.tag, credentials, challenge_allowed=False)

    async def _authenticate(self, command: c.Authenticate) -> None:
        """AUTHENTICATE, the initial response inline (SASL-IR) or after an empty ``+``."""
        mechanism = command.mechanism.upper()
        external = mechanism == "EXTERNAL" and conforms(self.authenticator, ExternalAuthenticator)
        if mechanism not in MECHANISMS and not external:
            await self.reply(command.tag, "NO", "unsupported mechanism", Code.CANNOT)
            return
        if self._plaintext_refused():
            await self.reply(command.tag, "NO", "use STARTTLS first", Code.PRIVACYREQUIRED)
            return
        response = command.initial_response
        if response is None:
            await self.channel.write(continuation(""))
            async with asyncio.timeout(SASL_STEP_TIMEOUT):
                response = await self.channel.read_raw_line()
            if response is None:
                raise Logout
        if response.strip() == b"*":
            await self.reply(command.tag, "BAD", "authentication cancelled")
            return
        try:
            decoded = decode_base64(response)
            if external:
                credentials = self._external_credentials(decode_external(decoded))
            else:
                credentials = decode(Mechanism(mechanism), decoded)
        except SaslError as exc:
            await self.reply(command.tag, "BAD", f"malformed SASL response: {exc}")
            return
        except AuthFailed as failure:
            await self._auth_failed(command.tag, failure, False)
            return
        challenge_allowed = mechanism not in ("PLAIN", "EXTERNAL")
        await self._finish_login(command.tag, credentials, challenge_allowed=challenge_allowed)

    def _external_credentials(self, authzid: str) -> TokenCredentials | ExternalCredentials:
        certificate = self._client_certificate()
        if certificate is None:
            raise AuthFailed("authentication", "EXTERNAL needs a TLS client certificate")
        return ExternalCredentials(authzid, certificate)

    async def _finish_login(
        self,
        tag: str,
        credentials: TokenCredentials | ExternalCredentials,
        *,
        challenge_allowed: bool,
    ) -> None:
        """Ask the authenticator; the grant it returns makes the session authenticated."""
        try:
            connection = self.connection
            software = self.client_software()
            if software != connection.software:
                connection = dataclasses.replace(connection, software=software)
            if isinstance(credentials, ExternalCredentials):
                assert isinstance(self.authenticator, ExternalAuthenticator)
                grant = await self.authenticator.authenticate_external(credentials, connection)
            else:
                grant = await self.authenticator.authenticate(credentials, connection)
        except AuthFailed as failure:
            await self._auth_failed(tag, failure, challenge_allowed)
            return
        self.grant = grant
        identified(grant.actor, grant.mailbox)
        log.info(
            "imap.login",
            extra={"bal": grant.mailbox, "actor": grant.actor, "via": grant.via},
        )
        await self.reply(tag, "OK", "logged in", self._capability_code())

    def client_software(self) -> str | None:
        """The client's own name and version from ID, for the audit trail."""
        name = self.client_id.get("name")
        if not name:
            return None
        version = self.client_id.get("version")
        return f"{name} {version}" if version else name

    async def _auth_failed(self, tag: str, failure: AuthFailed, challenge_allowed: bool) -> None:
        """NO with the failure's code (`LOGIN_FAILURES`); the client's own faults wait a
        little, and the third failure ends the session, against guessing."""
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
        await self.reply(tag, "NO", failure.text, code)
        if self._auth_failures >= MAX_AUTH_FAILURES:
            await self.bye("too many failed logins")
            raise Logout

    # -- authenticated: the session's own ------------------------------------------------
    async def _enable(self, command: c.Enable) -> None:
        """RFC 5161: no extension here needs enabling, so none is enabled."""
        await self.channel.write(untagged(Atom("ENABLED")))
        await self.ok(command, "ENABLE completed")

    async def _namespace(self, command: c.Namespace) -> None:
        """RFC 2342: one personal namespace, the BAL's folders; no shared ones."""
        await self.channel.write(untagged(Atom("NAMESPACE"), [["", DELIMITER]], None, None))
        await self.ok(command, "NAMESPACE completed")

    async def _idle(self, command: c.Idle) -> None:
        """RFC 2177 IDLE: changes reported as they happen until the client says DONE; a
        client idle longer than the idle timeout is logged out."""
        await self.sync(allow_expunge=True)
        await self.channel.write(continuation("idling"))
        line = await self._report_changes_until_client_speaks()
        if line is None:
            raise Logout
        if line.strip().upper() != b"DONE":
            await self.reply(command.tag, "BAD", "expected DONE")
            return
        await self.ok(command, "IDLE terminated")

    async def _report_changes_until_client_speaks(self) -> bytes | None:
        """Sync at each change signal until the client's next line, which is returned."""
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
                    await self._idle_sync()
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
        return reader.result()

    async def _idle_sync(self) -> None:
        try:
            await self.sync(allow_expunge=True)
        except StoreError as exc:
            # no tagged reply before DONE: the client hears when the store answers
            # again (a lost folder still ends the session, in `sync`)
            log.warning("imap.idle_sync_failed", extra={"error": str(exc)})

    async def _wait_change(self) -> None:
        """Until the selected folder changes (or, without a change hub, a while)."""
        if self.view is None:
            await asyncio.Event().wait()
            return
        if self.config.hub_wait is None or self.view.version is None:
            await asyncio.sleep(IDLE_POLL_INTERVAL)  # no change signal: poll
            return
        await self.config.hub_wait(self.store.address, self.view.folder, self.view.version)

    # -- synchronisation ---------------------------------------------------------------
    async def sync_after(self, command: c.Command) -> None:
        """`sync`, with the EXPUNGE responses the command's reply allows (RFC 3501 §7.4.1:
        none while answering FETCH, STORE or SEARCH, whose replies use sequence numbers;
        their UID forms may send them, as Dovecot does)."""
        if isinstance(command, c.Fetch | c.Store | c.Search):
            await self.sync(allow_expunge=command.uid)
        else:
            await self.sync(allow_expunge=True)

    async def sync(self, *, allow_expunge: bool) -> None:
        """Tell the client what changed in its selected folder since it last heard."""
        view = self.view
        if view is None or self.grant is None:
            return
        bal = self.store.address
        version = self.folder_version(bal, view.folder)
        if version is not None and version == view.version and not (allow_expunge and view.gone):
            return
        try:
            state = await self.store.folder_state(view.folder)
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
            recent_above = self.claim_recent(bal, view.folder, state, view.readonly)
        updates = b"".join(
            view.sync(
                state,
                allow_expunge=allow_expunge,
                with_uid=self.used_uid,
                recent_above=recent_above,
            )
        )
        if updates:
            await self.channel.write(updates)


Handler = Callable[[ImapSession, Any], Awaitable[None]]

# Which function runs each command: the session's own methods, or a module's function of
# (session, command).
_HANDLERS: dict[type[c.Command], Handler] = {
    c.Capability: ImapSession._capability,
    c.Noop: ImapSession._noop,
    c.Check: ImapSession._noop,
    c.Logout: ImapSession._logout,
    c.Id: ImapSession._id,
    c.StartTls: ImapSession._starttls,
    c.Authenticate: ImapSession._authenticate,
    c.Login: ImapSession._login,
    c.Enable: ImapSession._enable,
    c.Namespace: ImapSession._namespace,
    c.Idle: ImapSession._idle,
    c.Select: mailboxes.select,
    c.Create: mailboxes.create,
    c.Delete: mailboxes.delete,
    c.Rename: mailboxes.rename,
    c.Subscribe: mailboxes.subscribe,
    c.Unsubscribe: mailboxes.subscribe,
    c.List: mailboxes.list_folders,
    c.Status: mailboxes.status,
    c.Append: mailboxes.append,
    c.Close: selected.close,
    c.Unselect: selected.close,
    c.Expunge: selected.expunge,
    c.Search: selected.search,
    c.Store: selected.store,
    c.Copy: selected.copy,
    c.Move: selected.copy,
    c.Fetch: fetch.fetch,
}

# The states each command is valid in (RFC 3501 §6); the rest need a login
_ANY_STATE = (c.Capability, c.Noop, c.Logout, c.Id)
_NOT_AUTHENTICATED = (c.StartTls, c.Authenticate, c.Login)
_SELECTED = (c.Check, c.Close, c.Unselect, c.Expunge, c.Search, c.Fetch, c.Store, c.Copy, c.Move)


def _ascii(text: str) -> str:
    """Human-readable text is 7-bit in IMAP4rev1 (RFC 3501 TEXT-CHAR): accents are
    dropped ("Envoyés" -> "Envoyes"), anything else non-ASCII becomes "?"."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(
        ch if ch.isascii() else ("" if unicodedata.combining(ch) else "?") for ch in decomposed
    )
