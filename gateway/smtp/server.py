"""An aiosmtpd server running in the caller's event loop, on a pre-bound socket.

aiosmtpd bounds a client's silence, not its deafness: a client that pipelines commands and
never reads their replies would hold its connection forever, since a reply waits for room
in the socket and the closing of a connection waits for its replies to leave. Here a reply
that cannot leave within `write_timeout` cuts the connection, so does a connection that has
not authenticated by `preauth_timeout`, and connections not yet authenticated are capped
per source address.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP

from gateway.limits import Exemptions, SlotCounter, client_key
from gateway.net import is_loopback

MAX_MESSAGE_SIZE = 25 * 1024 * 1024  # Mon Espace Santé's limit; an operator's choice
AUTH_LINE_LIMIT = 24 * 1024  # base64 of a 16 KiB SASL response, plus the command
TOO_MANY = b"421 4.3.2 Too many connections, try again later\r\n"
TOO_MANY_FROM_ADDRESS = b"421 4.7.0 Too many connections from your address\r\n"
LOGIN_TIMEOUT = b"421 4.4.2 Authentication took too long, closing connection\r\n"
TOO_CHATTY = b"421 4.7.0 Too many commands before authentication\r\n"
MAX_PREAUTH_REPLIES = 100  # EHLO, STARTTLS, EHLO and AUTH take about twenty reply lines
FAIR_SHARE = 32  # replies in a row before other connections get the event loop


class TokenSMTP(SMTP):
    """aiosmtpd's protocol with room for a PSC token in AUTH's initial response: far longer
    than RFC 5321's 512-octet command line, so the reader's line limit grows with it."""

    line_length_limit = AUTH_LINE_LIMIT

    def __init__(
        self,
        handler: Any,
        *,
        tracker: set[TokenSMTP] | None = None,
        on_lost: Callable[[], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
        max_connections: int = 10_000,
        preauth_slots: SlotCounter | None = None,
        exempt: Exemptions | None = None,
        preauth_timeout: float | None = None,
        write_timeout: float = 120.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._tracker = tracker
        self._on_lost = on_lost
        self._on_refused = on_refused
        self._max_connections = max_connections
        self._preauth = preauth_slots
        self._exempt = exempt or Exemptions()
        self._preauth_timeout = preauth_timeout
        self._write_timeout = write_timeout
        self._slot: str | None = None  # the source address's slot, held until AUTH
        self._replies = 0
        self._login_deadline: asyncio.TimerHandle | None = None
        self._refused = False  # over a cap: hung up on arrival, never counted
        # aiosmtpd keeps these limits in a class-level dict: give each protocol its own.
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit, {"AUTH": AUTH_LINE_LIMIT}
        )
        # aiosmtpd takes every handler attribute named auth_* for a mechanism, data too
        # (TokenAuthMixin.auth_failure_delay would be advertised as "failure_delay").
        for name, mechanism in list(self._auth_methods.items()):
            if not callable(mechanism.method):
                del self._auth_methods[name]

    # aiosmtpd has no hooks for a connection's start and end; a handler that keeps state
    # per client (the gateway's backend session, the open-sessions gauge) may define
    # `connection_opened(server)` / `connection_closed(server)`: called once each,
    # STARTTLS (which makes aiosmtpd call connection_made again) notwithstanding.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        fresh = self._original_transport is None  # set by STARTTLS
        super().connection_made(transport)
        if self.tls_context is not None:
            # AUTH is not even offered in plaintext, except on loopback: a client that sends
            # its token with the AUTH command (SASL-IR) must never do so in the clear.
            self._auth_require_tls = not is_loopback(transport.get_extra_info("peername"))
        if fresh:
            handler = self._handler_coroutine
            if handler is not None:  # ends with ConnectionResetError when a client drops
                handler.add_done_callback(_retrieved)
            if self._tracker is not None and len(self._tracker) >= self._max_connections:
                self._refuse("max_connections", TOO_MANY)
                return
            address = _address(transport.get_extra_info("peername"))
            if self._preauth is not None:
                key = client_key(address)
                if not self._preauth.acquire(key, exempt=address in self._exempt):
                    self._refuse("per_address", TOO_MANY_FROM_ADDRESS)
                    return
                self._slot = key
            if self._preauth_timeout is not None:
                self._login_deadline = self.loop.call_later(
                    self._preauth_timeout, self._cut, LOGIN_TIMEOUT
                )
            if self._tracker is not None:
                self._tracker.add(self)
            _notify(self.event_handler, "connection_opened", self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            with contextlib.suppress(Exception):
                super().connection_lost(error)
            return
        self.logged_in()  # gives the address's slot back, ends the login deadline
        try:
            super().connection_lost(error)
        finally:
            if self._tracker is not None:
                self._tracker.discard(self)
            if self._on_lost is not None:
                self._on_lost()
            _notify(self.event_handler, "connection_closed", self)

    def logged_in(self) -> None:
        """AUTH succeeded: the connection no longer counts against its address's cap, and
        the login deadline is over."""
        if self._login_deadline is not None:
            self._login_deadline.cancel()
            self._login_deadline = None
        if self._slot is not None and self._preauth is not None:
            self._preauth.release(self._slot)
            self._slot = None

    async def push(self, status: AnyStr) -> None:
        """aiosmtpd's reply, which waits for the client to read it: at most `write_timeout`
        (before AUTH, the login deadline bounds it instead), then the connection is cut."""
        before_login = self._login_deadline is not None
        self._replies += 1
        if before_login and self._replies > MAX_PREAUTH_REPLIES:
            self._cut(TOO_CHATTY)
            raise ConnectionResetError("too many commands before authentication")
        try:
            async with asyncio.timeout(None if before_login else self._write_timeout):
                await super().push(status)
        except TimeoutError:
            self._abort()
            raise ConnectionResetError("client does not read its replies") from None
        if self._replies % FAIR_SHARE == 0:
            # A client that pipelines is served in turns with the others: its commands may
            # all be buffered already, and then nothing in aiosmtpd would wait.
            await asyncio.sleep(0)

    def kick(self, reason: str) -> None:
        """End the session now with `421 4.7.0 reason` (its PSC session ended, ...)."""
        text = " ".join(reason.split())[:200].encode("ascii", "replace")
        self._cut(b"421 4.7.0 " + text + b"\r\n")

    def _timeout_cb(self) -> None:
        """aiosmtpd's idle timeout closes the transport, which waits for unread replies to
        leave: for a client that does not read, that is forever."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size():
            self._abort()
            return
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _cut(self, last: bytes) -> None:
        """Say `last` if the client is reading, and hang up either way."""
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            return
        if transport.get_write_buffer_size():
            transport.abort()
            return
        transport.write(last)
        transport.close()
        self.loop.call_later(1.0, self._abort)  # in case `last` itself is never read

    def _abort(self) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.BaseTransport):
            transport.abort()  # type: ignore[attr-defined]

    def _refuse(self, reason: str, reply: bytes) -> None:
        self._refused = True
        if self._on_refused is not None:
            self._on_refused(reason)
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(reply)
            transport.close()

    @property
    def in_transaction(self) -> bool:
        """Between MAIL and the reply to DATA: a message is on its way."""
        return self.envelope is not None and bool(self.envelope.mail_from)

    def shut_down(self) -> None:
        """Tell the client the service is going away (RFC 5321 §3.8) and hang up."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(b"421 4.3.2 Service shutting down\r\n")
            transport.close()


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _address(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _notify(handler: Any, name: str, server: SMTP) -> None:
    hook = getattr(handler, name, None)
    if hook is not None:
        hook(server)


class SmtpServer:
    def __init__(
        self,
        handler: Any,
        sock: socket.socket,
        tls: ssl.SSLContext | None,
        *,
        hostname: str = "localhost",
        data_size_limit: int = MAX_MESSAGE_SIZE,
        ident: str = "MSSante submission",
        timeout: float = 300.0,
        max_connections: int = 10_000,
        preauth_slots: SlotCounter | None = None,
        exempt: Exemptions | None = None,
        preauth_timeout: float | None = None,
        write_timeout: float = 120.0,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """`timeout`: seconds a client may stay silent (it also bounds one DATA, reply
        included, since aiosmtpd restarts its clock per command only). `preauth_slots`
        (shared by a node's listeners) caps the connections not yet authenticated per
        source address, `preauth_timeout` the time to authenticate."""
        self.handler = handler
        self._socket = sock
        self._tls = tls
        self._hostname = hostname
        self._limit = data_size_limit
        self._ident = ident
        self._timeout = timeout
        self._max_connections = max_connections
        self._preauth = preauth_slots
        self._exempt = exempt
        self._preauth_timeout = preauth_timeout
        self._write_timeout = write_timeout
        self._on_refused = on_refused
        self._server: asyncio.Server | None = None
        self._open: set[TokenSMTP] = set()
        self._changed = asyncio.Event()  # a session ended

    @property
    def port(self) -> int:
        port: int = self._socket.getsockname()[1]
        return port

    def _protocol(self) -> TokenSMTP:
        return TokenSMTP(
            self.handler,
            hostname=self._hostname,
            tls_context=self._tls,
            require_starttls=False,
            auth_require_tls=False,  # enforced by TokenAuthMixin, loopback excepted
            auth_exclude_mechanism=["LOGIN"],
            data_size_limit=self._limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            ident=self._ident,
            timeout=self._timeout,
            tracker=self._open,
            on_lost=self._changed.set,
            on_refused=self._on_refused,
            max_connections=self._max_connections,
            preauth_slots=self._preauth,
            exempt=self._exempt,
            preauth_timeout=self._preauth_timeout,
            write_timeout=self._write_timeout,
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, sock=self._socket)

    @property
    def open_sessions(self) -> int:
        return len(self._open)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; give open sessions `grace` seconds to finish their message,
        then answer the rest 421 (they keep their messages and retry elsewhere or later)."""
        if self._server is not None:
            self._server.close()
        for protocol in [p for p in self._open if not p.in_transaction]:
            protocol.shut_down()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self._open:
                    self._changed.clear()
                    await self._changed.wait()
        for protocol in list(self._open):
            protocol.shut_down()
        if self._server is not None:
            await self._server.wait_closed()
