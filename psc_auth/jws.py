"""Compact JWS on the hot path: a strict parser and per-key verifiers using `cryptography`.

joserfc's `jwt.decode` costs about as much again as the RSA verification itself (registry
construction, key guessing, header checks through generic tables on every call). Here the
decisions that only depend on the key and the algorithm (key type, curve, `use`, `alg`
binding, `key_ops`) are taken once per (kid, alg) with joserfc's own checks, and each call
does only what depends on the token: split, bounded base64url and JSON, one signature check.
The limits and the header rules are joserfc's (the library path stays for other algorithms).
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc.errors import (
    BadSignatureError,
    InvalidKeyTypeError,
    JoseError,
    UnsupportedAlgorithmError,
    UnsupportedKeyAlgorithmError,
)
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry

from psc_auth.errors import TokenError, TokenFailure

# joserfc's JWSRegistry limits, on the base64url segments.
MAX_HEADER_SEGMENT = JWSRegistry.max_header_length  # 512
MAX_PAYLOAD_SEGMENT = JWSRegistry.max_payload_length  # 128,000
MAX_SIGNATURE_SEGMENT = JWSRegistry.max_signature_length  # 1,024
# The key cannot have made this signature: a wrong key type or a key bound to another alg.
SIGNATURE_ERRORS = (
    BadSignatureError,
    InvalidKeyTypeError,
    UnsupportedAlgorithmError,
    UnsupportedKeyAlgorithmError,
)

# base64url to base64, and `+`, `/`, `=` to a byte the strict decoder refuses.
_B64_TO_STD = bytes.maketrans(b"-_+/=", b"+/!!!")
# Last character of a segment whose length is 2 or 3 mod 4: its unused low bits are zero.
# Anything else decodes to the same bytes as a canonical segment (a malleable signature).
_CANONICAL_LAST = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _is_list_of_str(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# joserfc's JWS header registry, strict: any other header parameter is refused. `crit` may
# only be empty (no extension is understood), `b64` only true (RFC 7797 is not accepted).
_HEADER_CHECKS: dict[str, Callable[[object], bool]] = {
    "alg": _is_str,
    "jku": _is_url,
    "jwk": lambda value: isinstance(value, dict),
    "kid": _is_str,
    "x5u": _is_url,
    "x5c": _is_list_of_str,
    "x5t": _is_str,
    "x5t#S256": _is_str,
    "typ": _is_str,
    "cty": _is_str,
    "crit": lambda value: value == [],
    "b64": lambda value: value is True,
}


def _malformed(detail: str) -> TokenError:
    return TokenError(TokenFailure.MALFORMED, detail)


def b64url_decode(segment: str) -> bytes:
    """Strict, canonical, unpadded base64url (RFC 7515 §2): `MALFORMED` for anything else,
    an empty segment included."""
    rest = len(segment) % 4
    if not segment or rest == 1 or (rest and segment[-1] not in _CANONICAL_LAST[rest]):
        raise _malformed("not canonical base64url")
    try:
        data = segment.encode("ascii").translate(_B64_TO_STD)
        return binascii.a2b_base64(data + b"=" * (-rest % 4), strict_mode=True)
    except (ValueError, binascii.Error):  # UnicodeEncodeError is a ValueError
        raise _malformed("not base64url") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def load_object(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes; duplicate member names are refused (RFC 7515 §5.2:
    two parsers must not read two different `alg`, `kid` or claims out of one token)."""
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _malformed(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise _malformed(f"{what} is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class CompactJws:
    """A compact JWS split and its header checked; payload and signature not yet trusted."""

    header: Mapping[str, Any]
    signing_input: bytes
    payload_segment: str
    signature_segment: str


# An issuer signs every token with one of a few headers (alg, typ, kid): the last ones seen
# are kept checked, read-only, so that most tokens skip decoding theirs.
MAX_REMEMBERED_HEADERS = 32
_HEADERS: dict[str, Mapping[str, Any]] = {}


def _checked_header(segment: str) -> Mapping[str, Any]:
    header = load_object(b64url_decode(segment), "JOSE header")
    for name, value in header.items():
        check = _HEADER_CHECKS.get(name)
        if check is None or not check(value):
            raise _malformed(f"JOSE header parameter {name!r} is not accepted")
    if "alg" not in header:
        raise _malformed("JOSE header has no alg")
    return MappingProxyType(header)


def parse_compact(token: str) -> CompactJws:
    """Split `token`, decode and check its JOSE header (`MALFORMED` on any defect)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts) or not token.isascii():
        raise _malformed("not a compact JWS")
    header_segment, payload_segment, signature_segment = parts
    if len(header_segment) > MAX_HEADER_SEGMENT:
        raise _malformed("JOSE header too large")
    if len(payload_segment) > MAX_PAYLOAD_SEGMENT:
        raise _malformed("payload too large")
    if len(signature_segment) > MAX_SIGNATURE_SEGMENT:
        raise _malformed("signature too large")
    header = _HEADERS.get(header_segment)
    if header is None:
        header = _checked_header(header_segment)
        if len(_HEADERS) >= MAX_REMEMBERED_HEADERS:
            _HEADERS.clear()
        _HEADERS[header_segment] = header
    signing_input = token[: len(header_segment) + 1 + len(payload_segment)]
    return CompactJws(header, signing_input.encode("ascii"), payload_segment, signature_segment)


Verify = Callable[[bytes, bytes], bool]  # (signing input, signature) -> valid


def _rsa_verifier(
    public: rsa.RSAPublicKey, pad: padding.AsymmetricPadding, hash_alg: hashes.HashAlgorithm
) -> Verify:
    def verify(message: bytes, signature: bytes) -> bool:
        try:
            public.verify(signature, message, pad, hash_alg)
        except (InvalidSignature, ValueError):  # ValueError: "Digest too large" for the key
            return False
        return True

    return verify


def _ec_verifier(public: ec.EllipticCurvePublicKey, hash_alg: hashes.HashAlgorithm) -> Verify:
    size = (public.curve.key_size + 7) // 8
    algorithm = ec.ECDSA(hash_alg)

    def verify(message: bytes, signature: bytes) -> bool:
        if len(signature) != 2 * size:  # JWS: R || S, each of the curve's size (RFC 7518 §3.4)
            return False
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        try:
            public.verify(encode_dss_signature(r, s), message, algorithm)
        except (InvalidSignature, ValueError):  # cryptography refuses, never raises out
            return False
        return True

    return verify


_HASHES: dict[str, hashes.HashAlgorithm] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}
FAST_ALGORITHMS = frozenset(
    f"{family}{bits}" for family in ("RS", "PS", "ES") for bits in ("256", "384", "512")
)


def make_verifier(key: Key, alg: str) -> Verify:
    """The verifier of `alg` signatures by `key`, after joserfc's key checks for `alg` (use,
    key type, curve, `alg` binding, `key_ops`): `TokenError` when the key may not verify
    `alg` (`BAD_SIGNATURE` as joserfc's signature errors, `MALFORMED` for its other ones)."""
    if alg not in FAST_ALGORITHMS:
        raise ValueError(f"{alg} has no fast verifier")
    try:
        JWSRegistry.algorithms[alg].check_key(key)
        public = key.get_op_key("verify")
    except SIGNATURE_ERRORS:
        raise TokenError(TokenFailure.BAD_SIGNATURE, "signature does not verify") from None
    except (JoseError, ValueError, TypeError) as exc:
        raise _malformed(type(exc).__name__) from None
    hash_alg = _HASHES[alg[2:]]
    if alg.startswith("ES"):
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise TokenError(TokenFailure.BAD_SIGNATURE, "not an EC key")
        return _ec_verifier(public, hash_alg)
    if not isinstance(public, rsa.RSAPublicKey):
        raise TokenError(TokenFailure.BAD_SIGNATURE, "not an RSA key")
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
        return _rsa_verifier(public, pss, hash_alg)
    return _rsa_verifier(public, padding.PKCS1v15(), hash_alg)
