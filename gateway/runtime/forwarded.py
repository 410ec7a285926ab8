"""Who an HTTP request comes from, behind a reverse proxy.

`X-Forwarded-For` and `X-Forwarded-Proto` are anyone's to write: they count only on a
request whose TCP peer is in `http.forwarded_allow_ips` (the right-most address not itself
a trusted proxy is the client). The TCP peer stays known (`tcp_peer`), for the checks that
are about the proxy itself (the historic web services' certificate headers,
`legacy_front.trusted_proxies`).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.runtime.limits import Networks, ip_address_of

TCP_PEER = "lps.tcp_peer"  # the scope key of the connection's own peer
SCHEMES = frozenset({"http", "https"})
MAX_HOPS = 32  # addresses of X-Forwarded-For looked at, from the right


class ForwardedFor:
    """ASGI middleware: the client of a request from a trusted proxy is the one its
    headers name; from anyone else, its headers change nothing. Trust is decided as for
    `proxy_protocol_from` (`Networks`: CIDR read leniently, an IPv4-mapped peer as IPv4),
    not by uvicorn's middleware, which reads `10.0.0.1/8` as a literal never matched."""

    def __init__(self, app: ASGIApp, trusted: Iterable[str]) -> None:
        self._app = app
        self._trusted = Networks(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            scope[TCP_PEER] = peer
            if peer and peer[0] in self._trusted:
                self._forwarded(scope)
        await self._app(scope, receive, send)

    def _forwarded(self, scope: Scope) -> None:
        """Take the scheme and the client a trusted proxy's headers name: the right-most
        address of X-Forwarded-For that is not itself a trusted proxy."""
        proto: str | None = None
        hops: list[str] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-proto":
                proto = value.decode("latin-1").strip().lower()
            elif name == b"x-forwarded-for":
                hops.extend(h.strip() for h in value.decode("latin-1").split(","))
        if proto in SCHEMES:
            scope["scheme"] = proto.replace("http", "ws") if scope["type"] == "websocket" else proto
        named = [_host_port(hop) for hop in hops[-MAX_HOPS:] if hop]
        named = [(host, port) for host, port in named if host is not None]
        if not named:
            return
        client = next((hop for hop in reversed(named) if hop[0] not in self._trusted), named[0])
        scope["client"] = client


def _host_port(hop: str) -> tuple[str | None, int]:
    """An X-Forwarded-For entry (`1.2.3.4`, `1.2.3.4:5`, `2001:db8::1`, `[2001:db8::1]:5`)
    as an address (IPv4-mapped ones as IPv4) and a port (0 if none); None if not one."""
    host, port = hop, "0"
    if hop.startswith("["):
        host, _, rest = hop[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "0"
    elif hop.count(":") == 1:
        host, port = hop.split(":")
    ip = ip_address_of(host)
    if ip is None or "%" in host:
        return None, 0
    return str(ip), int(port) if port.isdigit() and int(port) < 65536 else 0


def client_address(connection: HTTPConnection) -> str | None:
    """The request's client: the TCP peer, or the one a trusted proxy named."""
    return connection.client.host if connection.client else None


def tcp_peer(connection: HTTPConnection) -> str | None:
    """The address the request's connection comes from, whatever its headers say."""
    peer = connection.scope.get(TCP_PEER, connection.scope.get("client"))
    return str(peer[0]) if peer else None
