"""What the probe presents to a server: SASL responses carrying a PSC token, and bad tokens
that look right (a JWT with the real token's claims signed by another key, and one that
expired an hour ago) so that only a server that checks signatures and expiry refuses them."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

TokenSource = Callable[[], Awaitable[str]]
"""A fresh access token for the persona at each call (PSC tokens live two minutes)."""

MAX_CLAIMS_BYTES = 16 * 1024


@dataclass(frozen=True)
class LoginPlan:
    """Who logs in and where: `bal` is opened with `tokens`, `other_bal` must be refused."""

    persona: str
    bal: str
    other_bal: str
    tokens: TokenSource = field(repr=False)
    foreign: str = field(repr=False)  # signed by another key
    expired: str = field(repr=False)  # expired an hour ago

    @classmethod
    async def prepare(
        cls, persona: str, bal: str, other_bal: str, tokens: TokenSource
    ) -> LoginPlan:
        """Ask one token first: its claims make the bad tokens look like the persona's."""
        sample = await tokens()
        claims, kid = token_claims(sample)
        return cls(
            persona, bal, other_bal, tokens, forge_foreign(claims, kid), forge_expired(claims, kid)
        )

    @property
    def bad(self) -> tuple[str, str]:
        return self.foreign, self.expired


def xoauth2(user: str, token: str) -> bytes:
    """``user=<BAL>^Aauth=Bearer <token>^A^A`` (DOMAIN.md, ECO.1.2.1)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer(user: str, token: str, host: str, port: int) -> bytes:
    """RFC 7628 §3.1: GS2 header naming the BAL as authzid, then host, port and token."""
    authzid = user.replace("=", "=3D").replace(",", "=2C")
    return f"n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


def token_claims(token: str) -> tuple[dict[str, Any], str | None]:
    """The claims and key id of a JWT, read without checking it (only to imitate it); an
    opaque token gives empty claims."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > MAX_CLAIMS_BYTES:
        return {}, None
    header, claims = _json_part(parts[0]), _json_part(parts[1])
    kid = header.get("kid")
    return claims, kid if isinstance(kid, str) else None


def forge_foreign(claims: dict[str, Any], kid: str | None) -> str:
    """The same claims, valid for ten minutes, signed RS256 by a key of our own under the
    real key's id: only the signature is wrong."""
    now = int(time.time())
    forged = {**claims, "iat": now, "exp": now + 600, "jti": secrets.token_hex(16)}
    header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    return jwt.encode(header, forged, RSAKey.generate_key(2048))


def forge_expired(claims: dict[str, Any], kid: str | None) -> str:
    """The same claims, expired an hour ago, with a signature of random bytes."""
    now = int(time.time())
    expired = {**claims, "iat": now - 7200, "exp": now - 3600, "jti": secrets.token_hex(16)}
    header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signature = secrets.token_bytes(256)
    return ".".join(_b64url(json.dumps(p).encode()) for p in (header, expired)) + (
        "." + _b64url(signature)
    )


def _json_part(part: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
