"""Clients that arrive as a load balancer would bring them: from a chosen loopback address
(the TCP peer the gateway sees), writing a PROXY protocol header before the protocol."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import ssl
from typing import Any


def proxied_socket(
    port: int, header: bytes = b"", *, source: str = "127.0.0.1", timeout: float = 10
) -> socket.socket:
    """A connection to 127.0.0.1:`port` from `source` that has sent `header`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout, source_address=(source, 0))
    if header:
        sock.sendall(header)
    return sock


class ProxiedIMAP4(imaplib.IMAP4):
    """imaplib's client whose connection starts with `header`, from `source`."""

    def __init__(
        self, port: int, header: bytes, *, source: str = "127.0.0.1", timeout: float = 10
    ) -> None:
        self._header = header
        self._source = source
        super().__init__("127.0.0.1", port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return proxied_socket(self.port, self._header, source=self._source, timeout=timeout or 10)


class ProxiedIMAP4_SSL(imaplib.IMAP4_SSL):
    """imaplib's implicit TLS client whose TCP connection starts with `header`."""

    def __init__(
        self, port: int, header: bytes, context: ssl.SSLContext, *, source: str = "127.0.0.1"
    ) -> None:
        self._header = header
        self._source = source
        super().__init__("127.0.0.1", port, ssl_context=context, timeout=10)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = proxied_socket(self.port, self._header, source=self._source, timeout=timeout or 10)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


class ProxiedSMTP(smtplib.SMTP):
    """smtplib's client whose connection starts with `header`, from `source`."""

    def __init__(self, port: int, header: bytes, *, source: str = "127.0.0.1") -> None:
        self._header = header
        self._source = source
        super().__init__("127.0.0.1", port, timeout=10)

    def _get_socket(self, host: str, port: int, timeout: Any) -> socket.socket:
        return proxied_socket(port, self._header, source=self._source, timeout=timeout)


def hung_up_silently(sock: socket.socket) -> bool:
    """Whether the server closed `sock` without a word (reset, when it closed with the
    client's bytes unread)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
