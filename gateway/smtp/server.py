"""An aiosmtpd server running in the caller's event loop, on a pre-bound socket."""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP

MAX_MESSAGE_SIZE = 25 * 1024 * 1024  # Mon Espace Santé's limit; an operator's choice
AUTH_LINE_LIMIT = 24 * 1024  # base64 of a 16 KiB SASL response, plus the command


class TokenSMTP(SMTP):
    """aiosmtpd's protocol with room for a PSC token in AUTH's initial response: far longer
    than RFC 5321's 512-octet command line, so the reader's line limit grows with it."""

    line_length_limit = AUTH_LINE_LIMIT

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
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
        if fresh:
            _notify(self.event_handler, "connection_opened", self)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            _notify(self.event_handler, "connection_closed", self)


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
    ) -> None:
        """`timeout`: seconds a client may stay silent (it also bounds one DATA, reply
        included, since aiosmtpd restarts its clock per command only)."""
        self.handler = handler
        self._socket = sock
        self._tls = tls
        self._hostname = hostname
        self._limit = data_size_limit
        self._ident = ident
        self._timeout = timeout
        self._server: asyncio.Server | None = None

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
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, sock=self._socket)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
