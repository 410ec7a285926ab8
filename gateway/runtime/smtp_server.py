"""An aiosmtpd server running in the caller's event loop, on a pre-bound socket.

aiosmtpd bounds a client's silence, not its deafness: a client that pipelines commands and
never reads their replies would hold its connection forever, since a reply waits for room
in the socket and the closing of a connection waits for its replies to leave. Here a reply
that cannot leave within `write_timeout` cuts the connection, so does a connection that has
not authenticated by `preauth_timeout`, and connections not yet authenticated are capped
per source address.

With ``dsn`` the server takes RFC 3461's parameters (`gateway.runtime.dsn`) off MAIL and
RCPT before aiosmtpd sees them, and keeps them on the envelope (`DsnEnvelope`) for the
handler: MAIL's in `dsn`, a RCPT's being decided in `next_rcpt`, those of the recipients
taken in `rcpt_dsn` (one per `rcpt_tos` entry). The handler's EHLO says ``DSN``
(`gateway.runtime.smtp_auth`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, Envelope, syntax

from gateway.runtime.dsn import (
    MAIL_LINE_EXTRA,
    RCPT_LINE_EXTRA,
    DsnSyntaxError,
    MailDsn,
    RecipientDsn,
    mail_parameters,
    rcpt_parameters,
)
from gateway.runtime.limits import Exemptions, Networks, SlotCounter, client_key
from gateway.runtime.logs import bound, new_id
from gateway.runtime.net import (
    FAIR_SHARE,
    HANG_UP_GRACE,
    WRITE_TIMEOUT,
    Peer,
)
from gateway.runtime.proxy_listener import HEADER_TIMEOUT, ProxyProtocolListener
from gateway.runtime.smtp_data import CRLF, DOT_LINE, has_line_over, unstuff

log = logging.getLogger(__name__)
_transcript = logging.getLogger("mail.log")  # aiosmtpd's

MAX_MESSAGE_SIZE = 25 * 1024 * 1024  # Mon Espace Santé's limit; an operator's choice
AUTH_LINE_LIMIT = 24 * 1024  # base64 of a 16 KiB SASL response, plus the command
TOO_MANY = b"421 4.3.2 Too many connections, try again later\r\n"
TOO_MANY_FROM_ADDRESS = b"421 4.7.0 Too many connections from your address\r\n"
LOGIN_TIMEOUT = b"421 4.4.2 Authentication took too long, closing connection\r\n"
TOO_CHATTY = b"421 4.7.0 Too many commands before authentication\r\n"
SHUTTING_DOWN = b"421 4.3.2 Service shutting down\r\n"  # RFC 5321 §3.8, RFC 3463 X.3.2
MAX_PREAUTH_REPLIES = 100  # EHLO, STARTTLS, EHLO and AUTH take about twenty reply lines
LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's words
TOO_MUCH_DATA = "552 Error: Too much mail data"
# `<local@domain>` with dot-atoms of letters, digits and RFC 5322's other atext, then
# spaces: the addresses clients send, which the stdlib's RFC 5322 parser (aiosmtpd's
# `_getaddr`) reads the same at a twentieth of the cost. Anything else goes to it.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(
    rf"[ \t]*<({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*"
)


class DsnEnvelope(Envelope):
    """aiosmtpd's envelope with the transaction's DSN parameters (RFC 3461)."""

    def __init__(self) -> None:
        super().__init__()
        self.dsn = MailDsn()
        self.next_rcpt = RecipientDsn()  # the RCPT being decided
        self.rcpt_dsn: list[RecipientDsn] = []  # one per rcpt_tos entry


def mail_dsn(envelope: Envelope) -> MailDsn:
    """MAIL's DSN parameters (none on a server without DSN)."""
    return envelope.dsn if isinstance(envelope, DsnEnvelope) else MailDsn()


def next_rcpt_dsn(envelope: Envelope) -> RecipientDsn:
    """The DSN parameters of the RCPT a handler is deciding."""
    return envelope.next_rcpt if isinstance(envelope, DsnEnvelope) else RecipientDsn()


def recipients_dsn(envelope: Envelope) -> list[RecipientDsn]:
    """Each taken recipient's DSN parameters, in `rcpt_tos` order."""
    if isinstance(envelope, DsnEnvelope) and len(envelope.rcpt_dsn) == len(envelope.rcpt_tos):
        return list(envelope.rcpt_dsn)
    return [RecipientDsn() for _ in envelope.rcpt_tos]


class TokenSMTP(SMTP):
    """aiosmtpd's protocol with room for a PSC token in AUTH's initial response: far longer
    than RFC 5321's 512-octet command line, so the reader's line limit grows with it."""

    line_length_limit = AUTH_LINE_LIMIT

    def __init__(
        self,
        handler: Any,
        *,
        tracker: set[TokenSMTP] | None = None,
        leaving: bool = False,
        on_lost: Callable[[], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
        max_connections: int = 10_000,
        preauth_slots: SlotCounter | None = None,
        exempt: Exemptions | None = None,
        preauth_timeout: float | None = None,
        write_timeout: float = WRITE_TIMEOUT,
        dsn: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.dsn = dsn  # RFC 3461's parameters taken, and DSN said in EHLO
        self._tracker = tracker
        self._leaving = leaving  # made as the node stops (accepted as its listener closed)
        self._on_lost = on_lost
        self._on_refused = on_refused
        self._max_connections = max_connections
        self._preauth = preauth_slots
        self._exempt = exempt or Exemptions()
        self._preauth_timeout = preauth_timeout
        self._write_timeout = write_timeout
        self._slot: str | None = None  # the source address's slot, held until AUTH
        self.peer = ""
        self.client: Peer | None = None  # who a trusted proxy said this connection serves
        self.local: Peer | None = None  # the address the client connected to
        self._replies = 0
        self._authenticated = False
        self.kicked: str | None = None  # why the session is ending, once it is
        self._farewell: bytes | None = None  # the 421 said once the message in flight is over
        self._login_deadline: asyncio.TimerHandle | None = None
        self._refused = False  # over a cap: hung up on arrival, never counted
        # aiosmtpd keeps these limits in a class-level dict: give each protocol its own.
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit, {"AUTH": AUTH_LINE_LIMIT}
        )
        if dsn:
            self.command_size_limits["MAIL"] += MAIL_LINE_EXTRA
            self.command_size_limits["RCPT"] += RCPT_LINE_EXTRA
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
        client = self.client or Peer.of(transport.get_extra_info("peername"))
        self.local = self.local or Peer.of(transport.get_extra_info("sockname"))
        if self.session is not None:  # a new one on STARTTLS too, with the TCP peer in it
            self.session.peer = client.peername  # type: ignore[assignment]  # a tuple, really
        if self.tls_context is not None:
            # AUTH is not even offered in plaintext, except on loopback: a client that sends
            # its token with the AUTH command (SASL-IR) must never do so in the clear.
            self._auth_require_tls = not client.loopback
        if fresh:
            handler = self._handler_coroutine
            if handler is not None:  # ends with ConnectionResetError when a client drops
                handler.add_done_callback(_retrieved)
            if self._leaving:
                self._refused = True
                self._cut(SHUTTING_DOWN)
                return
            if self._tracker is not None and len(self._tracker) >= self._max_connections:
                self._refuse("max_connections", TOO_MANY)
                return
            address = self.peer = client.address
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

    async def _handle_client(self) -> None:
        """aiosmtpd's client loop, its log lines bound to a session id of their own."""
        with bound(session=new_id()):
            await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            with contextlib.suppress(Exception):
                super().connection_lost(error)
            return
        self._preauth_over()
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
        the login deadline and the cap on commands before it are over."""
        self._authenticated = True
        self._preauth_over()

    def _preauth_over(self) -> None:
        """Give the address's slot back and end the login deadline (logged in, or gone)."""
        if self._login_deadline is not None:
            self._login_deadline.cancel()
            self._login_deadline = None
        if self._slot is not None and self._preauth is not None:
            self._preauth.release(self._slot)
            self._slot = None

    async def push(self, status: AnyStr) -> None:
        """aiosmtpd's reply, which waits for the client to read it: at most `write_timeout`
        (while the login deadline runs, that deadline bounds it instead), then the
        connection is cut. Past `MAX_PREAUTH_REPLIES` before AUTH, the client is cut. A
        reply the socket took whole has nothing to wait for: no timer, no drain."""
        self._replies += 1
        if not self._authenticated and self._replies > MAX_PREAUTH_REPLIES:
            log.info("smtp.too_many_commands_before_auth", extra={"peer": self.peer})
            self._cut(TOO_CHATTY)
            raise ConnectionResetError("too many commands before authentication")
        transport = self._writer.transport
        if (
            isinstance(transport, asyncio.WriteTransport)
            and not transport.is_closing()
            and not transport.get_write_buffer_size()
        ):
            said = status if isinstance(status, bytes) else status.encode(self._reply_encoding)
            transport.write(said + CRLF)
            if _transcript.isEnabledFor(logging.DEBUG):  # as aiosmtpd's push says it
                _transcript.debug("%r << %r", self.peer, said)
        else:
            await self._push_waiting(status)
        if self._farewell is not None and not self.in_transaction:
            # The message in flight got its answer first (a 421 already says goodbye).
            said = status if isinstance(status, bytes) else status.encode("ascii", "replace")
            self._cut(None if said.startswith(b"421") else self._farewell)
        if self._replies % FAIR_SHARE == 0:
            # A client that pipelines is served in turns with the others: its commands may
            # all be buffered already, and then nothing in aiosmtpd would wait.
            await asyncio.sleep(0)

    async def _push_waiting(self, status: AnyStr) -> None:
        deadline_runs = self._login_deadline is not None
        try:
            async with asyncio.timeout(None if deadline_runs else self._write_timeout):
                await super().push(status)
        except TimeoutError:
            self._abort()
            raise ConnectionResetError("client does not read its replies") from None

    @property
    def _reply_encoding(self) -> str:
        return "utf-8" if self.enable_SMTPUTF8 else "ascii"

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address and what follows it, plain addresses read by a pattern."""
        match = _PLAIN_ADDRESS.match(arg)
        if match is None or arg[match.end() : match.end() + 1] == "(":  # a comment: CFWS
            return super()._getaddr(arg)
        local, domain = match.groups()
        if self.local_part_limit and len(local) > self.local_part_limit:
            return None, None
        return f"{local}@{domain}", arg[match.end() :]

    def kick(self, reason: str) -> None:
        """End the session with `421 4.7.0 reason` (its PSC session ended...): at once, or,
        with a message on its way, once the handler refused its DATA (`kicked` says why),
        so that a message the backend may already hold is never cut from its answer."""
        if self.kicked is not None:
            return
        self.kicked = reason
        self._farewell = _reply(reason)
        if not self.in_transaction:
            self._cut(self._farewell)

    def leave(self) -> None:
        """The node stops: `421 4.3.2` at once between messages; a message on its way (DATA
        received or relayed) is carried and answered first, the 421 follows its reply."""
        if self._farewell is not None:
            return
        self._farewell = SHUTTING_DOWN
        if not self.in_transaction:
            self._cut(SHUTTING_DOWN)

    def _create_envelope(self) -> Envelope:
        """aiosmtpd's hook for the envelope class (one per transaction)."""
        return DsnEnvelope()

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        """RET and ENVID taken off, as written (ENVID is case-sensitive), then aiosmtpd's
        MAIL with the rest; a malformed value gets 501 5.5.4 and goes no further."""
        envelope = self.envelope
        if self._takes_dsn(arg) and isinstance(envelope, DsnEnvelope) and not envelope.mail_from:
            assert arg is not None
            if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
                return
            try:
                arg, envelope.dsn = mail_parameters(arg)
            except DsnSyntaxError as error:
                await self.push(error.reply)
                return
        await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        """NOTIFY and ORCPT taken off, then aiosmtpd's RCPT; a recipient the handler takes
        keeps them in `rcpt_dsn`."""
        envelope = self.envelope
        if not (self._takes_dsn(arg) and isinstance(envelope, DsnEnvelope)):
            await super().smtp_RCPT(arg)
            return
        assert arg is not None
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        if not envelope.mail_from:
            await super().smtp_RCPT(arg)  # aiosmtpd's 503
            return
        try:
            arg, envelope.next_rcpt = rcpt_parameters(arg)
        except DsnSyntaxError as error:
            await self.push(error.reply)
            return
        taken = len(envelope.rcpt_tos)
        try:
            await super().smtp_RCPT(arg)
        finally:
            if len(envelope.rcpt_tos) > taken:
                envelope.rcpt_dsn.append(envelope.next_rcpt)
            envelope.next_rcpt = RecipientDsn()

    def _takes_dsn(self, arg: str | None) -> bool:
        """Parameters are only for EHLO sessions (after HELO aiosmtpd refuses them all)."""
        session = self.session
        return self.dsn and arg is not None and session is not None and session.extended_smtp

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, with the message read in blocks rather than line by line
        (`_receive`): same checks, same replies, the same octets for the handler."""
        if self._decode_data or "DATA" not in self._handle_hooks:
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        received = await self._receive()
        if isinstance(received, str):
            await self.push(received)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = self.envelope.original_content = received
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _receive(self) -> bytes | str:
        """The message up to its lone dot, unstuffed, or the reply refusing it once it was
        read to its end (RFC 5321 §4.2.5): 552 past `data_size_limit` octets as received,
        500 for a line longer than `line_length_limit`. Past the size limit nothing more is
        kept.

        The stream is read up to each ".\r\n" with `StreamReader.readuntil`, in pieces
        of at most its limit (`LimitOverrunError` says how much can go): a ".\r\n"
        right after a CRLF (the DATA command's, for the first line) ends the message,
        any other is content. Text whose lines seldom end in a dot takes a few reads."""
        reader = self._reader
        limit = self.data_size_limit
        pieces: list[bytes] = []
        size = 0
        last = CRLF  # the last two octets read: the DATA command's CRLF to begin with
        refusal: str | None = None
        while True:
            try:
                piece = await self._read(reader.readuntil(DOT_LINE))
            except asyncio.LimitOverrunError as overrun:
                piece = await self._read(reader.readexactly(overrun.consumed))
                ended = False
            else:
                before = piece[-5:-3] if len(piece) >= 5 else (last + piece[:-3])[-2:]
                ended = before == CRLF
                if ended:
                    piece = piece[:-3]
            size += len(piece)
            if refusal is None and limit and size > limit:
                refusal = TOO_MUCH_DATA
            if refusal is None:
                pieces.append(piece)
            else:
                pieces.clear()  # read to the end, kept no more
            if ended:
                break
            last = piece[-2:] if len(piece) >= 2 else (last + piece)[-2:]
        if refusal is not None:
            return refusal
        stuffed = b"".join(pieces)
        if has_line_over(stuffed, self.line_length_limit):
            return LINE_TOO_LONG
        return unstuff(stuffed)

    async def _read(self, reading: Awaitable[bytes]) -> bytes:
        """One read of the message; a client gone before its end is a lost connection."""
        try:
            return await reading
        except asyncio.IncompleteReadError:
            log.info("smtp.connection_lost_in_data", extra={"peer": self.peer})
            raise ConnectionResetError("connection lost during DATA") from None

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str) -> None:
        """aiosmtpd says 221 and closes, and the close waits for unread replies to leave:
        the connection is cut if they have not within the grace."""
        self.loop.call_later(HANG_UP_GRACE, self._abort_if_open)
        await super().smtp_QUIT(arg)

    def _timeout_cb(self) -> None:
        """aiosmtpd's idle timeout closes the transport, which waits for unread replies to
        leave: for a client that does not read, that is forever."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size():
            self._abort()
            return
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _cut(self, last: bytes | None) -> None:
        """Say `last` (if any) if the client is reading, and hang up either way: a
        connection with replies unread (closing already or not) is aborted, as a closing
        one would wait for them."""
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport):
            return
        if transport.get_write_buffer_size():
            transport.abort()
            return
        if transport.is_closing():
            return
        if last is not None:
            transport.write(last)
        transport.close()
        self.loop.call_later(HANG_UP_GRACE, self._abort_if_open)  # `last` itself unread

    def _abort_if_open(self) -> None:
        if self.transport is not None:
            self._abort()

    def _abort(self) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()

    def _refuse(self, reason: str, reply: bytes) -> None:
        self._refused = True
        if self._on_refused is not None:
            self._on_refused(reason)
        self._cut(reply)

    @property
    def in_transaction(self) -> bool:
        """Between MAIL and the reply to DATA: a message is on its way."""
        return self.envelope is not None and bool(self.envelope.mail_from)

    def shut_down(self) -> None:
        """Tell the client the service is going away (RFC 5321 §3.8) and hang up."""
        self._cut(SHUTTING_DOWN)


def _reply(reason: str) -> bytes:
    return b"421 4.7.0 " + " ".join(reason.split())[:200].encode("ascii", "replace") + b"\r\n"


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _notify(handler: Any, name: str, server: SMTP) -> None:
    hook = getattr(handler, name, None)
    if hook is not None:
        hook(server)


class SmtpServer:
    protocol_type: type[TokenSMTP] = TokenSMTP  # a subclass may watch more (the mock's)

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
        write_timeout: float = WRITE_TIMEOUT,
        on_refused: Callable[[str], None] | None = None,
        dsn: bool = False,
        proxy_protocol_from: Networks | None = None,
        proxy_protocol_timeout: float = HEADER_TIMEOUT,
    ) -> None:
        """`timeout`: seconds a client may stay silent (it also bounds one DATA, reply
        included, since aiosmtpd restarts its clock per command only). `preauth_slots`
        (shared by a node's listeners) caps the connections not yet authenticated per
        source address, `preauth_timeout` the time to authenticate. `dsn`: take RFC 3461's
        parameters (the handler's EHLO then says DSN). `proxy_protocol_from`: peers whose
        connections start with a PROXY protocol header (`gateway.runtime.proxy_listener`)."""
        self.handler = handler
        self._socket = sock
        self._port: int = sock.getsockname()[1]  # still known once the listener is closed
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
        self._dsn = dsn
        self._proxies = proxy_protocol_from
        self._proxy_timeout = proxy_protocol_timeout
        self._server: asyncio.Server | ProxyProtocolListener | None = None
        self._open: set[TokenSMTP] = set()
        self._leaving = False  # stopping: a connection accepted as the listener closed hears 421
        self._changed = asyncio.Event()  # a session ended

    @property
    def port(self) -> int:
        return self._port

    def _protocol(self) -> TokenSMTP:
        return self.protocol_type(
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
            leaving=self._leaving,
            on_lost=self._changed.set,
            on_refused=self._on_refused,
            max_connections=self._max_connections,
            preauth_slots=self._preauth,
            exempt=self._exempt,
            preauth_timeout=self._preauth_timeout,
            write_timeout=self._write_timeout,
            dsn=self._dsn,
        )

    async def start(self) -> None:
        if self._proxies is not None and not self._proxies.empty:
            self._server = ProxyProtocolListener(
                self._socket,
                self._proxies,
                self._connect,
                timeout=self._proxy_timeout,
                name="smtp",
                on_refused=self._on_refused,
            )
            self._server.start()
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, sock=self._socket)

    async def _connect(self, sock: socket.socket, client: Peer, local: Peer) -> None:
        """Serve a connection whose PROXY header (if any) was read: `client` is who it is,
        `local` the address it connected to."""
        protocol = self._protocol()
        protocol.client, protocol.local = client, local
        await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock)

    @property
    def open_sessions(self) -> int:
        return len(self._open)

    @property
    def listener(self) -> socket.socket:
        return self._socket

    def connections(self) -> list[tuple[str, int]]:
        """Each open connection's peer address and the bytes written to it but not sent."""
        found = []
        for protocol in self._open:
            transport = protocol.transport
            if isinstance(transport, asyncio.WriteTransport):
                found.append((protocol.peer, transport.get_write_buffer_size()))
        return found

    def stop_accepting(self) -> None:
        """Close the listening socket: a balancer's next client goes to another node."""
        if self._server is not None:
            self._server.close()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; give open sessions `grace` seconds to finish their message (a
        421 follows its reply), then answer the rest 421 (they keep their messages and
        retry elsewhere or later)."""
        self.stop_accepting()
        self._leaving = True
        for protocol in list(self._open):
            protocol.leave()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self._open:
                    self._changed.clear()
                    await self._changed.wait()
        for protocol in list(self._open):
            protocol.shut_down()
        if self._server is not None:
            await self._server.wait_closed()
