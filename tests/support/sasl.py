"""SASL initial responses as LPS send them."""

from __future__ import annotations

import base64


def xoauth2_blob(user: str, token: str) -> bytes:
    """The XOAUTH2 response before base64 (RFC-less but universal: Google's format)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def xoauth2(user: str, token: str) -> str:
    """The XOAUTH2 response, base64, as it goes after ``AUTHENTICATE XOAUTH2 ``."""
    return base64.b64encode(xoauth2_blob(user, token)).decode()


def xoauth2_b64(user: str, token: str) -> bytes:
    """The XOAUTH2 response, base64, as bytes (for raw sockets and SMTP clients)."""
    return base64.b64encode(xoauth2_blob(user, token))
