"""The asyncio glue of the IMAP server: sockets in, parser events to the session, bytes out.

Thin on purpose: framing and limits are the parser's, behaviour is the session's. This
module owns timeouts, STARTTLS (discarding any plaintext the client pipelined after it,
the classic injection), and an orderly shutdown that tells every client `* BYE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field

from gateway.imap.commands import Command, CommandError, ContinuationNeeded, RawLine
from gateway.imap.engine import EngineConfig, ImapSession, Logout
from gateway.imap.limits import Limits
from gateway.imap.parser import CommandParser
from gateway.imap.response import continuation, tagged, untagged_status
from gateway.imap.session import Authenticator, ConnectionInfo
from gateway.logs import bound, new_id
from gateway.net import is_loopback

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
PREAUTH_LITERAL_LIMIT = 16 * 1024  # before login, no client needs a bigger literal


@dataclass(frozen=True)
class ServerConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    limits: Limits = field(default_factory=Limits)
    preauth_timeout: float = 60.0  # for the whole of it, not per read (slowloris)
    idle_timeout: float = 30 * 60.0
    implicit_tls: bool = False
    max_connections: int = 10_000


def preauth_limits(limits: Limits) -> Limits:
    """`limits` with literals capped at PREAUTH_LITERAL_LIMIT: before login a client can
    make the server hold at most that much literal data, LITERAL+ included."""
    return dataclasses.replace(
        limits,
        max_literal_size=min(limits.max_literal_size, PREAUTH_LITERAL_LIMIT),
        max_command_literal_size=min(limits.max_command_literal_size, PREAUTH_LITERAL_LIMIT),
    )


class _StreamChannel:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: Limits,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.limits = limits
        self.ssl_context = ssl_context
        self.authenticated = False
        self.parser = CommandParser(preauth_limits(limits))

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
        await self.writer.drain()

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
    """An IMAP listener serving sessions of `ImapSession` on a pre-bound socket."""

    def __init__(
        self,
        config: ServerConfig,
        authenticator: Authenticator,
        ssl_context: ssl.SSLContext | None,
        sock: socket.socket,
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self.ssl_context = ssl_context
        self._socket = sock
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], _StreamChannel] = {}

    @property
    def port(self) -> int:
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle,
            sock=self._socket,
            ssl=self.ssl_context if self.config.implicit_tls else None,
            limit=READ_SIZE,
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, tell every client BYE, wait a little, then cut what is left."""
        if self._server is not None:
            self._server.close()
        for task, channel in list(self._sessions.items()):
            with contextlib.suppress(ConnectionError, RuntimeError):
                channel.writer.write(untagged_status("BYE", "server shutting down"))
            task.cancel()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=grace)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._sessions) >= self.config.max_connections:
            log.warning("imap.too_many_connections", extra={"open": len(self._sessions)})
            writer.write(untagged_status("BYE", "too many connections, try again later"))
            writer.close()
            await _quietly(writer.wait_closed())
            return
        channel = _StreamChannel(reader, writer, self.config.limits, self.ssl_context)
        self._sessions[task] = channel
        peer = writer.get_extra_info("peername") or ("?", 0)
        secure = writer.get_extra_info("sslcontext") is not None
        info = ConnectionInfo(
            peer=str(peer[0]),
            secure=secure,
            loopback=is_loopback(peer),
            tls_available=self.ssl_context is not None and not secure,
            session_id=new_id(),
        )
        session = ImapSession(self.config.engine, self.authenticator, channel, info)
        with bound(session=info.session_id):
            try:
                await channel.write(session.greeting())
                await self._serve(session, channel)
            except (Logout, asyncio.CancelledError):
                pass
            except TimeoutError:
                await _quietly(channel.write(untagged_status("BYE", "autologout: idle too long")))
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
                log.info("imap.connection_lost", extra={"error": type(exc).__name__})
            except Exception:
                log.exception("imap.session_crashed")
                await _quietly(channel.write(untagged_status("BYE", "internal server error")))
            finally:
                del self._sessions[task]
                await _quietly(session.close())
                channel.writer.close()
                await _quietly(channel.writer.wait_closed())

    async def _serve(self, session: ImapSession, channel: _StreamChannel) -> None:
        login_by = asyncio.get_running_loop().time() + self.config.preauth_timeout
        while True:
            event = channel.parser.next_event()
            if event is None:
                if session.grant is None:
                    deadline = login_by
                else:
                    deadline = asyncio.get_running_loop().time() + self.config.idle_timeout
                async with asyncio.timeout_at(deadline):
                    if not await channel.fill():
                        return
                continue
            if isinstance(event, ContinuationNeeded):
                if session.grant is None and event.size > PREAUTH_LITERAL_LIMIT:
                    channel.parser.reject_literal()
                    await channel.write(
                        tagged(event.tag or "*", "NO", "authenticate first", "LIMIT")
                    )
                else:
                    await channel.write(continuation("ready for literal data"))
            elif isinstance(event, CommandError):
                if event.fatal:
                    await channel.write(untagged_status("BYE", event.message))
                    return
                if event.tag is None:
                    await channel.write(untagged_status("BAD", event.message))
                else:
                    await channel.write(tagged(event.tag, "BAD", event.message))
            elif isinstance(event, Command):
                await session.execute(event)
                if session.grant is not None:
                    channel.logged_in()
                    if await self._handover(session, channel):
                        return

    async def _handover(self, session: ImapSession, channel: _StreamChannel) -> bool:
        """After login: True when a subclass carried the session elsewhere to its end (the
        gateway's proxy relays it to a backend); False to go on serving it here."""
        return False


async def _quietly(awaitable: Awaitable[object]) -> None:
    """Best effort while tearing a connection down: the peer may already be gone."""
    with contextlib.suppress(Exception):
        await awaitable
