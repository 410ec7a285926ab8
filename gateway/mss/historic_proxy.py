"""The CPS card as the historic platform received it: mutual TLS terminated at a front
proxy that passes the certificate on (DOMAIN.md §4): ``ssl_client_verify`` (``SUCCESS``,
``NONE`` or a failure) and ``ssl_client_cert`` (URL-encoded PEM, nginx's
``$ssl_client_escaped_cert``). Headers anyone can send: they count only from the
configured proxies. Shared by the mock's historic platform and the gateway's legacy front.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.mss.historic_ws import AUTH_IMPOSSIBLE, AUTH_INVALID_CREDENTIALS, AuthRefused

MAX_CERT_HEADER = 16 * 1024
DEFAULT_TRUSTED_PROXIES = ("127.0.0.0/8", "::1/128")


class TrustedProxies:
    """The addresses whose certificate headers count."""

    def __init__(self, networks: Iterable[str] = DEFAULT_TRUSTED_PROXIES) -> None:
        self.networks = tuple(ipaddress.ip_network(n) for n in networks)

    def trusts(self, peer: str | None) -> bool:
        if peer is None:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def proxied_certificate(headers: Mapping[str, str]) -> x509.Certificate | None:
    """The certificate the proxy verified (None when it passed none); `AuthRefused` with
    17 when the proxy refused it, 8 when the header is missing, oversized or unreadable."""
    verify = headers.get("ssl_client_verify", "")
    if verify == "NONE":
        return None
    if verify != "SUCCESS":
        raise AuthRefused(AUTH_INVALID_CREDENTIALS, "the front proxy refused the certificate")
    raw = headers.get("ssl_client_cert", "")
    if not raw or len(raw) > MAX_CERT_HEADER:
        raise AuthRefused(AUTH_IMPOSSIBLE, "no usable client certificate")
    try:
        return x509.load_pem_x509_certificate(unquote(raw).encode())
    except ValueError:
        raise AuthRefused(AUTH_IMPOSSIBLE, "unreadable client certificate") from None


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)
