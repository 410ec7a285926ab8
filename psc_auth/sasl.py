"""SASL client responses that carry a PSC access token, decoded with strict limits.

Mechanisms: XOAUTH2 (what the API LPS names), OAUTHBEARER (RFC 7628, its standard twin),
and PLAIN / LOGIN where the password is the access token (for clients that know nothing
else). Every decoder takes the bytes *after* base64 decoding; `decode_base64` does that
step with the same limits. Anything wrong raises `SaslError`, and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
import sys
from dataclasses import dataclass, field

from psc_auth.errors import SaslError

MAX_SASL_BYTES = 16 * 1024
MAX_FIELD_LENGTH = 1024  # user names, authzid, host: far below any token

# RFC 6750 b64token: what a bearer token may look like.
_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1
_KEY = re.compile(rb"[A-Za-z]+")


class Mechanism(enum.Enum):
    XOAUTH2 = "XOAUTH2"
    OAUTHBEARER = "OAUTHBEARER"
    PLAIN = "PLAIN"
    LOGIN = "LOGIN"


@dataclass(frozen=True, slots=True)
class TokenCredentials:
    """What a client presented: the mailbox it names (if any) and the access token.

    `user` is the SASL user for XOAUTH2, the authzid for OAUTHBEARER, and for PLAIN the
    authzid when given, else the authcid. It names the BAL to open; empty means "mine".
    """

    mechanism: Mechanism
    user: str
    token: str = field(repr=False)
    authcid: str = ""
    host: str = ""
    port: int | None = None


def decode_base64(data: bytes | str) -> bytes:
    """Strictly decode a base64 SASL response ("=" alone is the empty response, RFC 4959)."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    raw = raw.strip(b"\r\n")
    if len(raw) > (MAX_SASL_BYTES * 4) // 3 + 4:
        raise SaslError("SASL response too large")
    if raw == b"=":
        return b""
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("SASL response is not valid base64") from None
    if base64.b64encode(decoded) != raw:  # stray padding, non-canonical trailing bits
        raise SaslError("SASL response is not canonical base64")
    if len(decoded) > MAX_SASL_BYTES:
        raise SaslError("SASL response too large")
    return decoded


def encode_base64(data: bytes) -> bytes:
    return base64.b64encode(data)


def decode(mechanism: Mechanism | str, response: bytes) -> TokenCredentials:
    """Decode a one-step response for `mechanism` (LOGIN is two-step: see `decode_login`)."""
    try:
        mech = Mechanism(mechanism.upper()) if isinstance(mechanism, str) else mechanism
    except ValueError:
        raise SaslError("unsupported SASL mechanism") from None
    if mech is Mechanism.XOAUTH2:
        return decode_xoauth2(response)
    if mech is Mechanism.OAUTHBEARER:
        return decode_oauthbearer(response)
    if mech is Mechanism.PLAIN:
        return decode_plain(response)
    raise SaslError("LOGIN takes two responses")


def decode_xoauth2(response: bytes) -> TokenCredentials:
    """``user=<user>^Aauth=Bearer <token>^A^A``."""
    pairs = _kvpairs(_check_size(response))
    token = _bearer(pairs)
    return TokenCredentials(Mechanism.XOAUTH2, _field(pairs.get(b"user", b""), "user"), token)


def decode_oauthbearer(response: bytes) -> TokenCredentials:
    """RFC 7628: ``n,a=<authzid>,^Ahost=..^Aport=..^Aauth=Bearer <token>^A^A``."""
    data = _check_size(response)
    header, sep, rest = data.partition(b"\x01")
    if not sep:
        raise SaslError("OAUTHBEARER: missing key/value section")
    parts = header.split(b",")
    if len(parts) != 3 or parts[2] != b"":
        raise SaslError("OAUTHBEARER: malformed GS2 header")
    cbind, authzid = parts[0], parts[1]
    if cbind not in (b"n", b"y"):
        raise SaslError("OAUTHBEARER: channel binding is not supported")
    user = ""
    if authzid:
        if not authzid.startswith(b"a="):
            raise SaslError("OAUTHBEARER: malformed authzid")
        user = _saslname(authzid[2:])
    pairs = _kvpairs(b"\x01" + rest)
    port: int | None = None
    if b"port" in pairs:
        raw_port = pairs[b"port"]
        if not raw_port.isdigit() or len(raw_port) > 5 or int(raw_port) > 65535:
            raise SaslError("OAUTHBEARER: bad port")
        port = int(raw_port)
    return TokenCredentials(
        Mechanism.OAUTHBEARER,
        user,
        _bearer(pairs),
        host=_field(pairs.get(b"host", b""), "host"),
        port=port,
    )


def decode_plain(response: bytes) -> TokenCredentials:
    """RFC 4616 ``authzid NUL authcid NUL passwd``, the password being the access token."""
    parts = _check_size(response).split(b"\x00")
    if len(parts) != 3:
        raise SaslError("PLAIN: expected authzid, authcid and password")
    authzid = _field(parts[0], "authzid")
    authcid = _field(parts[1], "authcid")
    if not authcid:
        raise SaslError("PLAIN: empty authcid")
    token = _token(parts[2])
    return TokenCredentials(Mechanism.PLAIN, authzid or authcid, token, authcid=authcid)


def decode_login(username: bytes, password: bytes) -> TokenCredentials:
    """LOGIN (two steps) or IMAP LOGIN: the user name names the BAL, the password is the token."""
    user = _field(_check_size(username), "user name")
    token = _token(_check_size(password))
    return TokenCredentials(Mechanism.LOGIN, user, token, authcid=user)


def error_challenge(openid_configuration: str, scope: str = "openid scope_all") -> bytes:
    """RFC 7628 §3.2.2 server challenge sent before a failed OAUTHBEARER / XOAUTH2 exchange."""
    body = {"status": "invalid_token", "scope": scope, "openid-configuration": openid_configuration}
    return json.dumps(body, separators=(",", ":")).encode()


def _check_size(data: bytes) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SaslError("SASL response must be bytes")
    if len(data) > MAX_SASL_BYTES:
        raise SaslError("SASL response too large")
    return bytes(data)


def _kvpairs(data: bytes) -> dict[bytes, bytes]:
    """Parse ``(kvpair ^A)* ^A`` (RFC 7628 §3.1), tolerating a leading separator."""
    if not data.endswith(b"\x01\x01"):
        raise SaslError("key/value section must end with ^A^A")
    body = data[:-2].lstrip(b"\x01")
    pairs: dict[bytes, bytes] = {}
    for item in body.split(b"\x01") if body else []:
        key, sep, value = item.partition(b"=")
        if not sep or not _KEY.fullmatch(key):
            raise SaslError("malformed key/value pair")
        if key in pairs:
            raise SaslError("duplicate key in key/value section")
        pairs[key] = value
    return pairs


def _bearer(pairs: dict[bytes, bytes]) -> str:
    auth = pairs.get(b"auth")
    if auth is None:
        raise SaslError("no auth=Bearer value")
    scheme, sep, token = auth.partition(b" ")
    if not sep or scheme.lower() != b"bearer":
        raise SaslError("auth value is not a Bearer token")
    return _token(token.strip(b" "))


def _token(raw: bytes) -> str:
    if not raw:
        raise SaslError("empty access token")
    if not _B64TOKEN.fullmatch(raw):
        raise SaslError("access token has characters a bearer token cannot have")
    # Interned: the sessions of one LPS (a BAL each, or reconnecting) share its token's
    # string instead of holding a copy each for their lifetime (~1 KiB a PSC token)
    return sys.intern(raw.decode("ascii"))


def _field(raw: bytes, name: str) -> str:
    if len(raw) > MAX_FIELD_LENGTH:
        raise SaslError(f"{name} too long")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError(f"{name} is not UTF-8") from None
    if _CONTROL.search(text):
        raise SaslError(f"{name} has control characters")
    return text


def _saslname(raw: bytes) -> str:
    """RFC 5801 saslname: "," is "=2C" and "=" is "=3D"; any other "=" is an error."""
    if re.search(rb"=(?!2C|3D)", raw):
        raise SaslError("malformed saslname escape")
    return _field(raw.replace(b"=2C", b",").replace(b"=3D", b"="), "authzid")
