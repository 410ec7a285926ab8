"""The asyncio glue of the IMAP server: sockets in, parser events to the session, bytes out.

Thin on purpose: framing and limits are the parser's, behaviour is the session's. This
module owns timeouts, STARTTLS (discarding any plaintext the client pipelined after it,
the classic injection), and an orderly shutdown that tells every client `* BYE`: at once
when it waits for its next command, after the tagged reply of the one it runs otherwise.

A client that never reads must not hold a connection forever: before login everything,
writes included, falls under the login deadline; after it, a write that waits longer than
`write_timeout` for the client to read ends the session (no BYE: it would not be read).
Connections not yet logged in are capped per source address.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import socket
import ssl
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field

from gateway.imap.codes import Code
from gateway.imap.commands import Command, CommandError, ContinuationNeeded, Idle, RawLine
from gateway.imap.engine import EngineConfig, ImapSession, Logout
from gateway.imap.limits import Limits
from gateway.imap.parser import CommandParser
from gateway.imap.response import continuation, tagged, untagged_status
from gateway.imap.session import Authenticator
from gateway.runtime.limits import Exemptions, Networks, SlotCounter, client_key
from gateway.runtime.login import ConnectionInfo
from gateway.runtime.logs import bound, new_id
from gateway.runtime.net import FAIR_SHARE, HANG_UP_GRACE, WRITE_TIMEOUT, Peer
from gateway.runtime.proxy_listener import HEADER_TIMEOUT, ProxyProtocolListener

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
PREAUTH_LITERAL_LIMIT = 16 * 1024  # before login, no client needs a bigger literal
MAX_PREAUTH_COMMANDS = 64  # a client needs a handful before login (CAPABILITY, ID, STARTTLS...)


SHUTTING_DOWN = "server shutting down"


def shutdown_bye(reason: str = SHUTTING_DOWN) -> bytes:
    """The last line of a session the node ends as it stops (RFC 5530's UNAVAILABLE: come
    back, to this node or another)."""
    return untagged_status("BYE", reason, Code.UNAVAILABLE)


class WriteTimeout(ConnectionError):
    """The client did not read what was written to it within the write timeout."""


@dataclass(frozen=True)
class ServerConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    limits: Limits = field(default_factory=Limits)
    preauth_timeout: float = 60.0  # for the whole of it, not per read (slowloris)
    idle_timeout: float = 30 * 60.0
    write_timeout: float = WRITE_TIMEOUT  # after login; before, the login deadline bounds writes
    implicit_tls: bool = False
    max_connections: int = 10_000
    proxy_protocol_from: tuple[str, ...] = ()  # networks whose connections start with one
    proxy_protocol_timeout: float = HEADER_TIMEOUT


@functools.lru_cache(maxsize=16)
def preauth_limits(limits: Limits) -> Limits:
    """`limits` with literals capped at PREAUTH_LITERAL_LIMIT: before login a client can
    make the server hold at most that much literal data, LITERAL+ included. Made once per
    server's limits, not per connection (the copy and its checks were a greeting's cost)."""
    return dataclasses.replace(
        limits,
        max_literal_size=min(limits.max_literal_size, PREAUTH_LITERAL_LIMIT),
        max_command_literal_size=min(limits.max_command_literal_size, PREAUTH_LITERAL_LIMIT),
    )


class StreamChannel:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: Limits,
        ssl_context: ssl.SSLContext | None,
        write_timeout: float = WRITE_TIMEOUT,
        peer: Peer | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.limits = limits
        self.ssl_context = ssl_context
        self.write_timeout = write_timeout
        self.authenticated = False
        self.parser = CommandParser(preauth_limits(limits))
        self.peer = peer or Peer.of(writer.get_extra_info("peername"))
        # waiting for the client's next command (or its DONE): a shutdown says BYE at once
        self.resting = False

    @contextlib.contextmanager
    def at_rest(self) -> Iterator[None]:
        self.resting = True
        try:
            yield
        finally:
            self.resting = False

    def logged_in(self) -> None:
        """The session authenticated: the full limits apply from the next byte parsed.

        Commands the client pipelined after LOGIN and that were already framed keep the
        pre-login limits (a LITERAL+ APPEND over 16 KiB sent in the same packet as LOGIN
        is refused)."""
        if not self.authenticated:
            self.authenticated = True
            self.parser.limits = self.limits

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.drain()

    def peer_certificate(self) -> bytes | None:
        """The client's certificate (DER), when the context asked for one and verified it."""
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        certificate: bytes | None = ssl_object.getpeercert(binary_form=True)
        return certificate

    @property
    def unsent(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    async def drain(self) -> None:
        """Wait until the client has read enough of what was written; after login,
        `WriteTimeout` if it does not within the write timeout (before, the login deadline
        that bounds the whole of it is the only limit).

        Most writes fit the socket: with the buffer at or below its low-water mark the
        protocol is not paused and `drain` returns at once, so no timer is armed (a timer
        a write was most of a small reply's cost)."""
        transport = self.writer.transport
        if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[0]:
            await self.writer.drain()  # raises if the connection was lost, never waits
            return
        try:
            async with asyncio.timeout(self.write_timeout if self.authenticated else None):
                await self.writer.drain()
        except TimeoutError:
            raise WriteTimeout("client does not read") from None

    async def fill(self) -> bool:
        """Read more client bytes into the parser; False at end of stream."""
        data = await self.reader.read(READ_SIZE)
        if not data:
            return False
        self.parser.receive_data(data)
        return True

    async def read_raw_line(self) -> bytes | None:
        self.parser.expect_raw_line()
        try:
            while True:
                event = self.parser.next_event()
                if isinstance(event, RawLine):
                    return event.data
                if isinstance(event, CommandError) and event.fatal:
                    await _quietly(self.write(untagged_status("BYE", event.message)))
                    return None
                if event is None and not await self.fill():
                    return None
        except asyncio.CancelledError:
            self.parser.cancel_raw_line()
            raise

    async def start_tls(self) -> None:
        """Upgrade to TLS. Whatever the client sent after STARTTLS before the handshake
        is plaintext it had no business sending (CVE-2011-0411 class injection): the
        parser holding it is replaced, and the stream's own buffer is emptied too."""
        assert self.ssl_context is not None
        await self.writer.drain()  # so that start_tls does not yield before the handshake
        injected = self.parser.pending_bytes + _drop_buffered(self.reader)
        await self.writer.start_tls(self.ssl_context)
        if injected:
            log.warning("imap.starttls_plaintext_dropped", extra={"bytes": injected})
        self.parser = CommandParser(
            self.limits if self.authenticated else preauth_limits(self.limits)
        )


def _drop_buffered(reader: asyncio.StreamReader) -> int:
    """Discard bytes the StreamReader received but nobody read yet; return their count.
    asyncio's StreamWriter.start_tls keeps them, and they would be read as if they had
    come through TLS. StreamReader has no public API for this."""
    buffer: bytearray | None = getattr(reader, "_buffer", None)
    if not buffer:
        return 0
    count = len(buffer)
    buffer.clear()
    return count


class ImapServer:
    """An IMAP listener serving sessions of `ImapSession` on a pre-bound socket.

    `preauth_slots` (shared by a node's listeners) caps the connections not yet logged in
    per source address; `exempt` addresses are never refused."""

    channel_type: type[StreamChannel] = StreamChannel

    def __init__(
        self,
        config: ServerConfig,
        authenticator: Authenticator,
        ssl_context: ssl.SSLContext | None,
        sock: socket.socket,
        *,
        preauth_slots: SlotCounter | None = None,
        exempt: Exemptions | None = None,
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self.ssl_context = ssl_context
        self._socket = sock
        self._port: int = sock.getsockname()[1]  # still known once the listener is closed
        self._server: asyncio.Server | ProxyProtocolListener | None = None
        self._sessions: dict[asyncio.Task[None], StreamChannel] = {}
        self._preauth = preauth_slots
        self._exempt = exempt or Exemptions()
        self._leaving: bytes | None = None  # the BYE of a node shutting down

    @property
    def port(self) -> int:
        return self._port

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    @property
    def listener(self) -> socket.socket:
        return self._socket

    def connections(self) -> list[tuple[str, int]]:
        """Each open connection's peer address and the bytes written to it but not yet
        sent (a client that does not read keeps them growing)."""
        return [(c.peer.address, c.unsent) for c in self._sessions.values()]

    async def start(self) -> None:
        if self.config.proxy_protocol_from:
            self._server = ProxyProtocolListener(
                self._socket,
                Networks(self.config.proxy_protocol_from),
                self._connect,
                timeout=self.config.proxy_protocol_timeout,
                name="imap",
                on_refused=self.refused,
            )
            self._server.start()
            return
        self._server = await asyncio.start_server(
            self._handle,
            sock=self._socket,
            ssl=self.ssl_context if self.config.implicit_tls else None,
            limit=READ_SIZE,
        )

    async def _connect(self, sock: socket.socket, client: Peer, local: Peer) -> None:
        """Serve a connection whose PROXY header (if any) was read: `client` is who it is,
        `local` the address it connected to."""
        reader = asyncio.StreamReader(limit=READ_SIZE)
        protocol = asyncio.StreamReaderProtocol(
            reader, functools.partial(self._handle, client=client, local=local)
        )
        await asyncio.get_running_loop().connect_accepted_socket(
            lambda: protocol, sock, ssl=self.ssl_context if self.config.implicit_tls else None
        )

    def stop_accepting(self) -> None:
        """Close the listening socket: a balancer's next client goes to another node."""
        if self._server is not None:
            self._server.close()

    async def drain(self, grace: float, reason: str = SHUTTING_DOWN) -> None:
        """Stop accepting and end every session with `* BYE [UNAVAILABLE] reason`: at once
        for those waiting for their next command, after the tagged reply of the one being
        run for the others; wait up to `grace` seconds for them to be over."""
        self.stop_accepting()
        self._leaving = shutdown_bye(reason)
        for task, channel in list(self._sessions.items()):
            self._ask_to_leave(task, channel, reason)
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=grace)

    def _ask_to_leave(self, task: asyncio.Task[None], channel: StreamChannel, reason: str) -> None:
        """A session waiting for its client hears BYE now; one running a command, once
        its reply is out (`_serve`). A subclass that carries sessions elsewhere (the relay)
        tells them its own way."""
        if channel.resting and self._leaving is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                channel.writer.write(self._leaving)
            task.cancel()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, end every session (BYE, its command in flight abandoned), wait
        up to `grace` seconds for them to be over (after a drain, a short while: the node's
        `shutdown_grace` is the whole wait)."""
        self.stop_accepting()
        self._leaving = self._leaving or shutdown_bye()
        for task, channel in list(self._sessions.items()):
            self._end_now(task, channel)
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=grace)
        if self._server is not None:
            await self._server.wait_closed()

    def _end_now(self, task: asyncio.Task[None], channel: StreamChannel) -> None:
        """End a session at once, whatever it is doing; a subclass that carries sessions
        elsewhere (the relay) ends them its own way, its audit trail saying so."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            channel.writer.write(shutdown_bye())
        task.cancel()

    def refused(self, reason: str) -> None:
        """A connection turned away at once (a cap); a subclass may count it."""

    # A subclass that watches sessions (the mock's conformance runner) overrides these.
    def opened(self, session: ImapSession) -> None:
        """A session starts, before its greeting."""

    def executing(self, session: ImapSession, command: Command) -> None:
        """`command` is about to be executed by `session`."""

    def ended(self, session: ImapSession) -> None:
        """The session is over (whoever ended it)."""

    async def _handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: Peer | None = None,
        local: Peer | None = None,
    ) -> None:
        """A connection's life; `client`: who a trusted proxy said it serves, `local`: the
        address that client connected to."""
        task = asyncio.current_task()
        assert task is not None
        peer = client or Peer.of(writer.get_extra_info("peername"))
        local = local or Peer.of(writer.get_extra_info("sockname"))
        address = peer.address
        if self._leaving is not None:
            # accepted as the listener closed (its TLS handshake, or its PROXY header,
            # still under way): it is told to go elsewhere like the others
            await _hang_up(writer, self._leaving)
            return
        if len(self._sessions) >= self.config.max_connections:
            log.warning("imap.too_many_connections", extra={"open": len(self._sessions)})
            self.refused("max_connections")
            await _hang_up(writer, untagged_status("BYE", "too many connections, try again later"))
            return
        key = client_key(address)
        if self._preauth is not None and not self._preauth.acquire(
            key, exempt=address in self._exempt
        ):
            log.warning("imap.too_many_from_address", extra={"peer": address})
            self.refused("per_address")
            await _hang_up(writer, untagged_status("BYE", "too many connections from your address"))
            return
        channel = self.channel_type(
            reader, writer, self.config.limits, self.ssl_context, self.config.write_timeout, peer
        )
        self._sessions[task] = channel
        secure = writer.get_extra_info("sslcontext") is not None
        info = ConnectionInfo(
            peer=address,
            port=peer.port,
            local_address=local.address,
            local_port=local.port,
            secure=secure,
            loopback=peer.loopback,
            tls_available=self.ssl_context is not None and not secure,
            session_id=new_id(),
        )
        session = ImapSession(self.config.engine, self.authenticator, channel, info)
        self.opened(session)
        bye: bytes | None = None
        patience = self.config.write_timeout  # for replies still unread at the end
        opened = asyncio.get_running_loop().time()
        with bound(session=info.session_id):
            try:
                await self._serve(session, channel, key)
            except (Logout, asyncio.CancelledError):
                pass
            except WriteTimeout:
                log.info("imap.client_not_reading")
                patience = 0.0  # it had write_timeout to read what it was sent: no more
            except _LoginTimeout:
                log.info("imap.login_timeout")
                bye = untagged_status("BYE", "login timeout")
                patience = 0.0  # what it did not read by the deadline, it will not read
            except TimeoutError:
                bye = untagged_status("BYE", "autologout: idle too long")
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
                log.info("imap.connection_lost", extra={"error": type(exc).__name__})
            except Exception:
                log.exception("imap.session_crashed")
                bye = untagged_status("BYE", "internal server error")
            finally:
                seconds = round(asyncio.get_running_loop().time() - opened, 3)
                log.info("imap.session_closed", extra={"seconds": seconds})
                self.ended(session)
                del self._sessions[task]
                if self._preauth is not None and not channel.authenticated:
                    self._preauth.release(key)
                try:
                    await _quietly(session.close())
                finally:
                    await _hang_up(channel.writer, bye, patience)

    async def _serve(self, session: ImapSession, channel: StreamChannel, key: str) -> None:
        """The connection's life. Until login everything, writes and the SASL exchange
        included, must end by the login deadline (`_LoginTimeout`)."""
        login_by = asyncio.get_running_loop().time() + self.config.preauth_timeout
        deadline = asyncio.timeout_at(login_by)
        try:
            async with deadline:
                await channel.write(session.greeting())
                for served in itertools.count(1):
                    answered = await self._step(session, channel, logged_in=False)
                    await self._leave_if_asked(channel, answered)
                    if session.grant is not None:
                        break
                    if served >= MAX_PREAUTH_COMMANDS:
                        log.info("imap.too_many_commands_before_login")
                        await channel.write(
                            untagged_status("BYE", "too many commands before login")
                        )
                        raise Logout
                    if served % FAIR_SHARE == 0:
                        await asyncio.sleep(0)
        except TimeoutError:
            if deadline.expired():
                raise _LoginTimeout from None
            raise
        channel.logged_in()
        if self._preauth is not None:
            self._preauth.release(key)
        for served in itertools.count(1):
            if await self._handover(session, channel):
                return
            answered = await self._step(session, channel, logged_in=True)
            await self._leave_if_asked(channel, answered)
            if served % FAIR_SHARE == 0:
                # A client that pipelines is served in turns with the others: what it
                # sent may all be buffered already, and then nothing here would wait.
                await asyncio.sleep(0)

    async def _leave_if_asked(self, channel: StreamChannel, answered: bool) -> None:
        """The node is shutting down and the command just run has had its reply: BYE."""
        if self._leaving is not None and answered:
            await channel.write(self._leaving)
            raise Logout

    async def _step(self, session: ImapSession, channel: StreamChannel, *, logged_in: bool) -> bool:
        """Read and answer what the client sent next (one event, or more bytes): False when
        that was the first part of a command, awaiting its literal. After login, a silence
        longer than the idle timeout ends the session; before, the login deadline around
        the caller bounds it."""
        while True:
            event = channel.parser.next_event()
            if event is None:
                resting = channel.at_rest() if not channel.parser.pending_bytes else None
                with resting or contextlib.nullcontext():
                    if logged_in:
                        deadline = asyncio.get_running_loop().time() + self.config.idle_timeout
                        async with asyncio.timeout_at(deadline):
                            if not await channel.fill():
                                raise Logout
                    elif not await channel.fill():
                        raise Logout
                continue
            if isinstance(event, ContinuationNeeded):
                if session.grant is None and event.size > PREAUTH_LITERAL_LIMIT:
                    channel.parser.reject_literal()
                    await channel.write(
                        tagged(event.tag or "*", "NO", "authenticate first", Code.LIMIT)
                    )
                else:
                    await channel.write(continuation("ready for literal data"))
                    return False
            elif isinstance(event, CommandError):
                if event.fatal:
                    await channel.write(untagged_status("BYE", event.message))
                    raise Logout
                if event.tag is None:
                    await channel.write(untagged_status("BAD", event.message))
                else:
                    await channel.write(tagged(event.tag, event.status, event.message))
            elif isinstance(event, Command):
                self.executing(session, event)
                # IDLE waits for the client's DONE: a shutdown's BYE may come then (RFC 2177)
                idling = channel.at_rest() if isinstance(event, Idle) else None
                with idling or contextlib.nullcontext():
                    await session.execute(event)
            return True

    async def _handover(self, session: ImapSession, channel: StreamChannel) -> bool:
        """After login: True when a subclass carried the session elsewhere to its end (the
        gateway's proxy relays it to a backend); False to go on serving it here."""
        return False


class _LoginTimeout(Exception):
    """The client did not log in by the login deadline."""


async def _hang_up(
    writer: asyncio.StreamWriter, last: bytes | None = None, patience: float = HANG_UP_GRACE
) -> None:
    """Say `last` if the client has read all it was sent, then close. Replies still unread
    get up to `patience` seconds to leave (a close waits for them), the rest the grace;
    then, or if this is cancelled, the connection is cut rather than held."""
    transport = writer.transport
    pending = transport.get_write_buffer_size()
    if pending and not patience:
        transport.abort()
        return
    with contextlib.suppress(Exception):
        if last is not None and not pending:
            writer.write(last)
        writer.close()
    try:
        async with asyncio.timeout(patience if pending else HANG_UP_GRACE):
            await writer.wait_closed()
    except BaseException as exc:
        transport.abort()
        if isinstance(exc, asyncio.CancelledError):
            raise


async def _quietly(awaitable: Awaitable[object]) -> None:
    """Best effort while tearing a connection down: the peer may already be gone."""
    with contextlib.suppress(Exception):
        await awaitable
