"""Who an HTTP request comes from, behind a reverse proxy.

`X-Forwarded-For` and `X-Forwarded-Proto` are anyone's to write: they count only on a
request whose TCP peer is in `http.forwarded_allow_ips` (uvicorn's middleware does the
reading: the right-most address not itself a trusted proxy is the client). The TCP peer
stays known (`tcp_peer`), for the checks that are about the proxy itself (the historic
web services' certificate headers, `legacy_front.trusted_proxies`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

TCP_PEER = "lps.tcp_peer"  # the scope key of the connection's own peer


class ForwardedFor:
    """ASGI middleware: the client of a request from a trusted proxy is the one its
    headers name; from anyone else, its headers change nothing."""

    def __init__(self, app: ASGIApp, trusted: Iterable[str]) -> None:
        self._forwarded: Any = ProxyHeadersMiddleware(app, trusted_hosts=list(trusted))  # type: ignore[arg-type]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[TCP_PEER] = scope.get("client")
        await self._forwarded(scope, receive, send)


def client_address(connection: HTTPConnection) -> str | None:
    """The request's client: the TCP peer, or the one a trusted proxy named."""
    return connection.client.host if connection.client else None


def tcp_peer(connection: HTTPConnection) -> str | None:
    """The address the request's connection comes from, whatever its headers say."""
    peer = connection.scope.get(TCP_PEER, connection.scope.get("client"))
    return str(peer[0]) if peer else None
