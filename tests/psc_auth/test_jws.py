"""The fast compact-JWS path refuses what joserfc refuses, for the same reason, and never
raises anything but `TokenError` on hostile input."""

from __future__ import annotations

import base64
import json
import string
import warnings
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws as jose_jws
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode as jose_b64decode

from psc_auth import TokenError, TokenFailure
from psc_auth.jws import (
    MAX_HEADER_SEGMENT,
    MAX_PAYLOAD_SEGMENT,
    MAX_SIGNATURE_SEGMENT,
    _ec_verifier,
    b64url_decode,
    make_verifier,
    parse_compact,
)
from tests.psc_auth.conftest import MakeValidator
from tests.psc_auth.fake_provider import Clock, FakeProvider
from tests.psc_auth.test_validator import b64, b64json, refused

B64URL = string.ascii_letters + string.digits + "-_"


def signed_raw(provider: FakeProvider, payload: bytes, **header: Any) -> str:
    """`payload` signed as is by the provider's key: valid signature, any content."""
    protected = {"alg": "RS256", "kid": "k1", **header}
    return jose_jws.serialize_compact(protected, payload, provider.key)


def resign_header(provider: FakeProvider, header_json: bytes, claims: dict[str, Any]) -> str:
    """A token whose header is the raw `header_json`, validly signed by the provider."""
    signing_input = f"{b64(header_json)}.{b64json(claims)}"
    private = provider.key.get_op_key("sign")
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


# -- refusals on the validator's fast path ------------------------------------------------


async def test_a_signature_of_another_key_with_a_known_kid(
    provider: FakeProvider, make_validator: MakeValidator
):
    impostor = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
    assert (
        await refused(make_validator(), provider.token(key=impostor)) is TokenFailure.BAD_SIGNATURE
    )


async def test_a_kid_the_provider_does_not_publish(
    provider: FakeProvider, make_validator: MakeValidator
):
    validator = make_validator()
    await validator.validate(provider.token())
    token = provider.token(header={"kid": "k-unknown"})
    assert await refused(validator, token) is TokenFailure.BAD_SIGNATURE
    assert provider.requests["certs"] == 1, "no refetch before the interval has passed"


async def test_a_token_without_kid(provider: FakeProvider, make_validator: MakeValidator):
    header = b64json({"alg": "RS256", "typ": "JWT"})
    _, payload, signature = provider.token().split(".")
    token = f"{header}.{payload}.{signature}"
    assert await refused(make_validator(), token) is TokenFailure.BAD_SIGNATURE


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512", "RS384", "EdDSA", "ES256"])
async def test_an_alg_not_accepted_or_not_the_keys(
    provider: FakeProvider, make_validator: MakeValidator, alg: str
):
    """Whatever the signature says, an alg the configuration or the key refuses."""
    _, payload, signature = provider.token().split(".")
    forged = f"{b64json({'alg': alg, 'kid': 'k1', 'typ': 'JWT'})}.{payload}.{signature}"
    assert await refused(make_validator(), forged) is TokenFailure.BAD_SIGNATURE


async def test_an_es256_token_for_an_rsa_kid(provider: FakeProvider, make_validator: MakeValidator):
    ec_key = ECKey.generate_key("P-256", parameters={"kid": "k1"}, private=True)
    token = jwt.encode({"alg": "ES256", "kid": "k1"}, provider.claims(), ec_key)
    assert await refused(make_validator(), token) is TokenFailure.BAD_SIGNATURE


async def test_an_es256_signature_of_the_wrong_length(
    provider: FakeProvider, make_validator: MakeValidator
):
    ec_key = ECKey.generate_key("P-256", parameters={"kid": "ec1"}, private=True)
    provider.published.append(ec_key)
    provider.algs["ec1"] = "ES256"
    token = jwt.encode({"alg": "ES256", "kid": "ec1"}, provider.claims(), ec_key)
    validator = make_validator()
    assert str((await validator.validate(token)).idnat) == "899700000001"
    head, body, signature = token.split(".")
    short = b64(base64.urlsafe_b64decode(signature + "==")[:-1])
    assert await refused(validator, f"{head}.{body}.{short}") is TokenFailure.BAD_SIGNATURE


async def test_a_key_replaced_under_the_same_kid(
    provider: FakeProvider, make_validator: MakeValidator, clock: Clock
):
    """The verifier made for a kid follows the JWKS: once the provider publishes another key
    under that kid, the old key's tokens are refused and the new key's accepted."""
    validator = make_validator(jwks_refetch_interval_seconds=60)
    old_token = provider.token()
    await validator.validate(old_token)
    replacement = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
    provider.published = [replacement, RSAKey.generate_key(2048, parameters={"kid": "k2"})]
    clock.now += 61
    await validator.validate(provider.token(key=provider.published[1]))  # unknown kid: refetch
    assert await refused(validator, provider.token()) is TokenFailure.BAD_SIGNATURE
    assert str((await validator.validate(provider.token(key=replacement))).idnat)


async def test_a_non_canonical_signature_encoding(
    provider: FakeProvider, make_validator: MakeValidator
):
    """RSA-2048 signatures end in a character with unused bits: setting them gives the same
    bytes to a lax decoder, and must not give a second valid spelling of the token."""
    header, payload, signature = provider.token().split(".")
    assert signature[-1] in "AQgw"
    twin = signature[:-1] + chr(ord(signature[-1]) + 1)
    validator = make_validator()
    assert await refused(validator, f"{header}.{payload}.{twin}") is TokenFailure.BAD_SIGNATURE
    padded = f"{header}.{payload}.{signature}=="
    assert await refused(validator, padded) is TokenFailure.BAD_SIGNATURE


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"RS256","kid":"k1","alg":"none"}',  # duplicate member names
        b'{"alg":"RS256","kid":"k1","x-extra":1}',  # a parameter joserfc does not register
        b'{"alg":"RS256","kid":"k1","b64":false,"crit":["b64"]}',  # RFC 7797
        b'{"alg":"RS256","kid":"k1","jku":"file:///etc/passwd"}',
        b'{"alg":"RS256","kid":"k1","typ":7}',
        b'{"kid":"k1"}',
        b'"RS256"',
        b"\xff\xfe{}",
    ],
)
async def test_a_validly_signed_token_with_a_refused_header(
    provider: FakeProvider, make_validator: MakeValidator, header: bytes
):
    token = resign_header(provider, header, provider.claims())
    assert await refused(make_validator(), token) is TokenFailure.MALFORMED


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'"a string"',
        b'{"iss": "x", "iss": "y"}',
        b"\xc3\x28",  # not UTF-8
        b"[" * 5000,
    ],
)
async def test_a_validly_signed_payload_that_is_not_a_claims_object(
    provider: FakeProvider, make_validator: MakeValidator, payload: bytes
):
    validator = make_validator(max_token_bytes=64 * 1024)
    assert await refused(validator, signed_raw(provider, payload)) is TokenFailure.MALFORMED


async def test_duplicate_claims_are_refused(provider: FakeProvider, make_validator: MakeValidator):
    """Two `SubjectNameID`: a parser taking the first and one taking the last disagree."""
    claims = json.dumps(provider.claims())[:-1] + ', "SubjectNameID": "899700000007"}'
    token = signed_raw(provider, claims.encode())
    assert await refused(make_validator(), token) is TokenFailure.MALFORMED


@pytest.mark.parametrize(
    "make",
    [
        lambda t: b64(b"{}" + b" " * MAX_HEADER_SEGMENT) + "." + t.split(".", 1)[1],
        lambda t: t.replace(".", "..", 1),
        lambda t: t + ".",
        lambda t: "é" + t,
        lambda t: t[:10] + "\x00" + t[10:],
        lambda t: t[:10] + "+" + t[11:],
    ],
)
async def test_ill_formed_segments_fetch_nothing(
    provider: FakeProvider, make_validator: MakeValidator, make: Any
):
    validator = make_validator(max_token_bytes=256 * 1024)
    await validator.validate(provider.token())
    assert await refused(validator, make(provider.token())) in (
        TokenFailure.MALFORMED,
        TokenFailure.BAD_SIGNATURE,
    )
    assert provider.requests["certs"] == 1, "no JWKS fetch for an unreadable token"


async def test_oversized_segments_are_malformed(
    provider: FakeProvider, make_validator: MakeValidator
):
    validator = make_validator(max_token_bytes=256 * 1024)
    header, payload, signature = provider.token().split(".")
    big_header = b64json({"alg": "RS256", "kid": "k1", "typ": "J" * MAX_HEADER_SEGMENT})
    for token in (
        f"{big_header}.{payload}.{signature}",
        f"{header}.{'A' * (MAX_PAYLOAD_SEGMENT + 4)}.{signature}",
        f"{header}.{payload}.{'A' * (MAX_SIGNATURE_SEGMENT + 4)}",
    ):
        assert await refused(validator, token) is TokenFailure.MALFORMED


@pytest.mark.parametrize("skew", [0, 30])
async def test_time_claims_at_their_edges(
    provider: FakeProvider, make_validator: MakeValidator, clock: Clock, skew: int
):
    """exp is exclusive, nbf and iat inclusive, each widened by the configured skew."""
    clock.now = 1_800_000_000.0
    now = int(clock.now)
    validator = make_validator(clock_skew_seconds=skew)
    assert await refused(validator, provider.token(exp=now - skew)) is TokenFailure.EXPIRED
    await validator.validate(provider.token(exp=now - skew + 1))
    await validator.validate(provider.token(nbf=now + skew, iat=now + skew))
    for name in ("nbf", "iat"):
        token = provider.token(**{name: now + skew + 1})
        assert await refused(validator, token) is TokenFailure.NOT_YET_VALID


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": [{"not": "hashable"}], "azp": None},
        {"aud": None, "azp": ["lps-demo"]},
        {"aud": 7, "azp": 8},
    ],
)
async def test_audiences_of_the_wrong_type(
    provider: FakeProvider, make_validator: MakeValidator, claims: dict[str, Any]
):
    assert await refused(make_validator(), provider.token(**claims)) is TokenFailure.WRONG_AUDIENCE


# -- the parser alone ---------------------------------------------------------------------


@given(st.binary(min_size=1, max_size=200))
def test_b64url_round_trip(data: bytes) -> None:
    assert b64url_decode(b64(data)) == data


@given(st.text(alphabet=B64URL + "+/=. \n\x00é", max_size=40))
def test_b64url_accepts_exactly_what_joserfc_accepts(segment: str):
    try:
        expected: bytes | None = jose_b64decode(segment.encode())
    except (ValueError, TypeError, UnicodeEncodeError):
        expected = None
    if not segment:
        expected = None  # an empty segment is never a valid one here
    got: bytes | TokenFailure
    try:
        got = b64url_decode(segment)
    except TokenError as exc:
        got = exc.failure
    assert got == (TokenFailure.MALFORMED if expected is None else expected)


_HEADER_NAMES = st.sampled_from([*JWSRegistry.default_header_registry, "x-custom", "Alg", "exp"])
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.just("https://x"),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300)
@given(st.dictionaries(_HEADER_NAMES, _JSON_VALUES, max_size=5))
def test_headers_accepted_exactly_as_joserfc_with_no_extension(header: dict[str, Any]):
    """A header passes iff joserfc's strict registry takes it, it names an alg, and it asks for
    no extension (`crit` empty, no `b64: false`)."""
    try:
        JWSRegistry().check_header(header)
    except (JoseError, TypeError):
        expected = False
    else:
        no_extension = header.get("crit", []) == [] and header.get("b64", True) is True
        expected = "alg" in header and no_extension
    token = f"{b64json(header)}.e30.AAAA"
    if not expected:
        with pytest.raises(TokenError) as caught:
            parse_compact(token)
        assert caught.value.failure is TokenFailure.MALFORMED
        return
    parsed = parse_compact(token)
    assert dict(parsed.header) == header
    assert parsed.signing_input == token.rsplit(".", 1)[0].encode()


@given(st.text(alphabet=B64URL + '.=+/ \x00é{}"', max_size=300))
def test_any_text_parses_or_is_malformed(token: str) -> None:
    assert _parsed_or_failure(token) in ("parsed", TokenFailure.MALFORMED)


def _parsed_or_failure(token: str) -> str | TokenFailure:
    try:
        parsed = parse_compact(token)
    except TokenError as exc:
        return exc.failure
    assert isinstance(parsed.header.get("alg"), str)
    return "parsed"


@given(st.binary(max_size=120), st.binary(max_size=120))
def test_any_decoded_segments_parse_or_are_malformed(header: bytes, payload: bytes) -> None:
    token = f"{b64(header)}.{b64(payload)}.AAAA"
    assert _parsed_or_failure(token) in ("parsed", TokenFailure.MALFORMED)


def test_a_verifier_refuses_keys_bound_elsewhere() -> None:
    rsa_key = RSAKey.generate_key(2048, parameters={"kid": "r", "alg": "RS256"}, private=False)
    with pytest.raises(TokenError) as caught:
        make_verifier(rsa_key, "PS256")
    assert caught.value.failure is TokenFailure.BAD_SIGNATURE
    enc = RSAKey.generate_key(2048, parameters={"kid": "r", "use": "enc"}, private=False)
    with pytest.raises(TokenError) as caught:
        make_verifier(enc, "RS256")
    assert caught.value.failure is TokenFailure.MALFORMED
    ec_key = ECKey.generate_key("P-384", parameters={"kid": "e"}, private=False)
    with pytest.raises(TokenError):
        make_verifier(ec_key, "ES256")


def _public_rsa_key(bits: int, kid: str) -> RSAKey:
    """An RSA public key of exactly `bits` bits (not a real key pair: nothing is signed)."""
    numbers = rsa.RSAPublicNumbers(65537, (1 << (bits - 1)) | 1)
    with warnings.catch_warnings():  # joserfc warns on keys under 2048 bits
        warnings.simplefilter("ignore")
        return RSAKey.import_key(numbers.public_key(), parameters={"kid": kid})


def test_a_verifier_never_raises_what_cryptography_raises() -> None:
    """Review 17: PS512 on a 512-bit key made cryptography raise ValueError("Digest too
    large"), which escaped as a 500 instead of a refused signature."""
    verify = make_verifier(_public_rsa_key(512, "weak"), "PS512")
    assert verify(b"signing input", b"x" * 64) is False

    class Refusing:
        curve = ec.SECP256R1()

        def verify(self, signature: bytes, data: bytes, algorithm: object) -> None:
            raise ValueError("refused by the backend")

    ec_verify = _ec_verifier(cast(ec.EllipticCurvePublicKey, Refusing()), hashes.SHA256())
    assert ec_verify(b"signing input", b"\x01" * 64) is False


async def test_rsa_keys_under_2048_bits_are_left_out_of_the_jwks(
    provider: FakeProvider,
    make_validator: MakeValidator,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING", logger="psc_auth.provider")
    provider.published += [_public_rsa_key(512, "weak"), _public_rsa_key(2047, "short")]
    provider.algs.update(weak="PS512", short="PS512")
    validator = make_validator(algorithms=["RS256", "PS512"], jwks_max_age_seconds=300)
    payload = b64json(provider.claims())
    for kid in ("weak", "short"):
        token = f"{b64json({'alg': 'PS512', 'kid': kid})}.{payload}.{b64(b'x' * 64)}"
        assert await refused(validator, token) is TokenFailure.BAD_SIGNATURE
    await validator.validate(provider.token())  # the 2048-bit key of the same JWKS serves
    clock.now += 300
    await validator.validate(provider.token())
    assert provider.requests["certs"] == 2
    skipped = [r for r in caplog.records if r.message == "psc.jwks_weak_key_skipped"]
    assert sorted((vars(r)["kid"], vars(r)["bits"]) for r in skipped) == [
        ("short", 2047),
        ("weak", 512),
    ]
