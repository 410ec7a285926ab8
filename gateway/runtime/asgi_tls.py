"""The client certificate of an HTTPS connection, handed to the ASGI app.

uvicorn terminates TLS but puts nothing of it in the scope; the legacy front needs the
CPS card a historic client presented. `TlsScopeH11` is the HTTP protocol of a TLS
listener (`AsgiServer(..., ssl_context=...)`): it adds the ASGI TLS extension
(https://asgi.readthedocs.io/en/latest/specs/tls.html) to each request's scope,
``scope["extensions"]["tls"]["client_cert_chain"]`` = the client's certificate as a list
of PEM strings (empty without one), and `client_certificate(scope)` reads it back as DER.
The listener's context decides what is asked for and trusted
(`gateway.runtime.tls.request_client_certificates`); the app re-checks the certificate
(`psc_auth.certificates.CardVerifier`), revocation included.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

Scope = MutableMapping[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, Any]:
    """The ASGI TLS extension's fields for a connection's `ssl_object`."""
    if ssl_object is None:
        return {}
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version or ""),
        "cipher_suite": None,
        "cipher_name": cipher[0] if cipher else None,
    }


_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def client_certificate(scope: Scope) -> bytes | None:
    """The client certificate (DER) of the request's TLS connection; None without one."""
    tls = scope.get("extensions", {}).get("tls")
    chain = tls.get("client_cert_chain") if isinstance(tls, dict) else None
    if not chain or not isinstance(chain[0], str):
        return None
    try:
        return ssl.PEM_cert_to_DER_cert(chain[0])
    except ValueError:
        return None


class TlsScopeH11(H11Protocol):
    """uvicorn's HTTP/1.1 with the connection's TLS facts in every scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        extension = tls_extension(transport.get_extra_info("ssl_object"))
        if extension:
            self.app = _with_tls(self.app, extension)


def _with_tls(app: App, extension: dict[str, Any]) -> App:
    async def with_tls(scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            extensions = dict(scope.get("extensions") or {})
            extensions["tls"] = extension
            scope = {**scope, "extensions": extensions}
        await app(scope, receive, send)

    return with_tls
