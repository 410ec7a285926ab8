"""A listener behind a load balancer: the PROXY protocol header first, from trusted peers.

asyncio's own server hands a connection to its protocol at once (and, with TLS, only
after the handshake), too late to read a header the load balancer writes before anything
else. This listener accepts itself: from a peer in `trusted` it reads the header
(`gateway.runtime.proxy_protocol`) within `timeout`, a byte never past it, so that what
the client pipelined stays in the socket for the protocol; then it hands the socket,
with the client's address, to `connect` (which starts TLS there for an implicit TLS
port). A missing or malformed header closes the connection, logged, without a greeting;
so does one that names no client (v1 UNKNOWN, v2 PROXY for UNSPEC or UNIX addresses):
taken for the proxy's own, such a client would pass for the proxy, on loopback even.
Only v2 LOCAL (a health check) is served as the proxy's own connection.
From any other peer no header is expected: the connection is served at once, and a
``PROXY`` line it sends is just a bad command.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from gateway.runtime.limits import Networks
from gateway.runtime.net import Peer
from gateway.runtime.proxy_protocol import HeaderParser, Malformed, NeedMore, ProxyHeader

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 5.0  # seconds a trusted proxy has to send its header: it sends it at once
ACCEPT_PAUSE = 0.5  # seconds accepting pauses when the process is out of file descriptors

# the accepted socket, the client, and the address it connected to
Connect = Callable[[socket.socket, Peer, Peer], Awaitable[None]]


async def read_header(sock: socket.socket) -> ProxyHeader | Malformed:
    """The PROXY header at the start of `sock` (non-blocking), read exactly."""
    loop = asyncio.get_running_loop()
    parser = HeaderParser()
    result = parser.feed(b"")
    while isinstance(result, NeedMore):
        data = await loop.sock_recv(sock, result.at_least)
        if not data:
            return Malformed("connection closed within the header")
        result = parser.feed(data)
    return result


class ProxyProtocolListener:
    """Accepts on `sock` (bound, listening) and hands each connection to `connect`; the
    interface `ImapServer` and `SmtpServer` use of asyncio's server (close, wait_closed)."""

    def __init__(
        self,
        sock: socket.socket,
        trusted: Networks,
        connect: Connect,
        *,
        timeout: float = HEADER_TIMEOUT,
        name: str = "tcp",
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """`on_refused("proxy_protocol")` for each connection closed for its header."""
        self._socket = sock
        self._trusted = trusted
        self._connect = connect
        self._timeout = timeout
        self._name = name
        self._on_refused = on_refused
        self._accepting: asyncio.Task[None] | None = None
        self._arriving: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._socket.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    def close(self) -> None:
        """Stop accepting; connections still in their header are dropped."""
        if self._accepting is not None:
            self._accepting.cancel()
        for task in list(self._arriving):
            task.cancel()
        self._socket.close()

    async def wait_closed(self) -> None:
        tasks = [t for t in (self._accepting, *self._arriving) if t is not None]
        if tasks:
            await asyncio.wait(tasks)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peername = await loop.sock_accept(self._socket)
            except OSError as error:  # out of descriptors, or an aborted connection
                log.warning("listener.accept_failed", extra={"error": str(error)})
                await asyncio.sleep(ACCEPT_PAUSE)
                continue
            task = loop.create_task(self._arrive(conn, Peer.of(peername)))
            self._arriving.add(task)
            task.add_done_callback(self._arriving.discard)

    async def _arrive(self, conn: socket.socket, peer: Peer) -> None:
        try:
            found = await self._client(conn, peer)
            if found is None:
                conn.close()
                return
            await self._connect(conn, *found)
        except BaseException as error:
            conn.close()
            if isinstance(error, asyncio.CancelledError):
                raise
            if not isinstance(error, OSError):  # a TLS handshake that failed is one
                log.exception("listener.connection_failed")

    async def _client(self, conn: socket.socket, peer: Peer) -> tuple[Peer, Peer] | None:
        """The client of a connection from `peer` and the address it connected to: the
        header's, from a trusted proxy (None when it sent none that reads), else the
        connection's own."""
        local = Peer.of(conn.getsockname())
        if peer.address not in self._trusted:
            return peer, local
        try:
            async with asyncio.timeout(self._timeout):
                header = await read_header(conn)
        except TimeoutError:
            header = Malformed(f"no header within {self._timeout:g} s")
        except OSError as error:
            header = Malformed(f"connection failed: {error}")
        if isinstance(header, ProxyHeader):
            if header.local:
                return peer, local  # a health check: the proxy's own connection
            if header.source is not None and header.destination is not None:
                return Peer(*header.source), Peer(*header.destination)
        reason = header.reason if isinstance(header, Malformed) else "names no client"
        log.warning(
            "proxy_protocol.refused",
            extra={"listener": self._name, "peer": peer.address, "reason": reason},
        )
        if self._on_refused is not None:
            self._on_refused("proxy_protocol")
        return None
