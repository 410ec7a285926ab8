"""Run an ASGI app inside the caller's event loop, on a socket the caller bound.

Binding first lets tests use port 0 and learn the port before building the app (the mock
PSC's issuer contains its port). Signals stay with the caller, which runs several servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.runtime.asgi_tls import TlsScopeH11


class _EmbeddedServer(uvicorn.Server):
    """uvicorn's server inside the caller's loop: the caller keeps the signals, and a stop
    is acted on at once (uvicorn itself looks at `should_exit` every 0.1 s, which made
    every stop of the gateway and of the mock wait for it)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit_requested = asyncio.Event()

    def request_exit(self) -> None:
        self.should_exit = True
        self._exit_requested.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        """uvicorn's loop (a tick each 0.1 s: the Date header, the exit check), woken
        early by `request_exit`."""
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._exit_requested.wait()
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, less its fixed 0.1 s wait for connections to take their
        leave when no connection or request task is left to wait for."""
        for server in self.servers:
            server.close()  # no new connection from here on
        if self.server_state.connections or self.server_state.tasks:
            await super().shutdown(sockets)
            return
        for sock in sockets or []:
            sock.close()
        for server in self.servers:
            await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()


class CannotListen(OSError):
    """A listening socket could not be bound: the message names the address and the
    setting that chose it (`cannot listen on 127.0.0.1:1143 (imap.port): address already
    in use`), for a one-line error instead of a traceback."""


def bind_tcp(
    host: str, port: int, setting: str | None = None, *, reuse_port: bool = False
) -> socket.socket:
    """A listening TCP socket on `host`:`port`; `setting` names the key that chose the
    port, for the error (`CannotListen`) when it cannot be bound. `reuse_port`: other
    sockets of this user may listen on the same port (SO_REUSEPORT: the kernel spreads
    the connections over them), the workers of one node."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say they are
    # TCP, and without it a reply written in two parts waits 40 ms on delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _cannot_listen(host, port, setting, exc) from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


def ensure_free(host: str, port: int, setting: str | None = None) -> None:
    """`CannotListen` if anything listens on `host`:`port` already, before sockets are
    bound there with `reuse_port`: SO_REUSEPORT would otherwise share the port, silently,
    with another node of the same user. The probe binds without listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _cannot_listen(host, port, setting, exc) from exc


def _cannot_listen(host: str, port: int, setting: str | None, exc: OSError) -> CannotListen:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    named = f" ({setting})" if setting else ""
    reason = (exc.strerror or str(exc)).lower()
    error = CannotListen(f"cannot listen on {where}{named}: {reason}")
    error.errno = exc.errno
    return error


REQUEST_TIMEOUT = 30.0  # seconds a client may take to send a whole request
MAX_CONNECTIONS = 1000


class _GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 with a deadline for each request: uvicorn times out an idle
    keep-alive connection but not one that sends a request a byte at a time (slowloris),
    head or body. `request_timeout` is set on a subclass per server."""

    request_timeout = REQUEST_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.DONE or self.conn.their_state is h11.MUST_CLOSE:
            self._disarm()  # the whole request is in: the app answers in its own time
        elif self._deadline is None:
            self._arm()  # the next request of a kept-alive connection has begun

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.abort()


class _GuardedTlsH11(_GuardedH11, TlsScopeH11):
    """The guarded protocol of a TLS listener: the client certificate in the scope."""


class AsgiServer:
    """One uvicorn server on one pre-bound socket, started and stopped from async code;
    at most `max_connections` at once (503 beyond), each request whole within
    `request_timeout`. With `ssl_context`, HTTPS: the scope of each request carries the
    ASGI TLS extension, client certificate included (`gateway.runtime.asgi_tls`)."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        base = _GuardedH11 if ssl_context is None else _GuardedTlsH11
        protocol = type("GuardedH11", (base,), {"request_timeout": request_timeout})
        context = ssl_context
        config = uvicorn.Config(
            app,
            log_config=None,
            proxy_headers=False,  # loopback-only endpoints must see the real peer
            server_header=False,
            timeout_graceful_shutdown=5,
            lifespan="on",
            http=protocol,
            limit_concurrency=max_connections,
            ssl_context_factory=None if context is None else (lambda _config, _default: context),
        )
        self._server = _EmbeddedServer(config)
        self._socket = sock
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        port: int = self._socket.getsockname()[1]
        return port

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                await self._task
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.request_exit()
        if self._task is not None:
            await self._task
        self._socket.close()
