"""SASL decoders (XOAUTH2, OAUTHBEARER, PLAIN, LOGIN): what they accept, and that anything
else raises `SaslError` and nothing else."""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psc_auth.errors import SaslError
from psc_auth.sasl import (
    MAX_FIELD_LENGTH,
    MAX_SASL_BYTES,
    Mechanism,
    TokenCredentials,
    decode,
    decode_base64,
    decode_login,
    decode_oauthbearer,
    decode_plain,
    decode_xoauth2,
    encode_base64,
    error_challenge,
)

USER = "claire.martin@medecin.mssante.fr"
OIDC_CONF = (
    "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet/.well-known/openid-configuration"
)
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt() -> str:
    """A realistic (unsigned-for-real) JWT: three base64url parts joined by dots."""
    header = {"alg": "RS256", "typ": "JWT", "kid": "d0f8c1e2-5b7a-4c3e-9a1f-7e6d5c4b3a21"}
    claims = {
        "exp": 1_767_225_600,
        "iat": 1_767_222_000,
        "jti": "4c1f0c7e-8d8b-4a57-b7a0-2c8d6b6f9e11",
        "iss": "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet",
        "aud": "lps-gateway",
        "sub": "f:550dc1c8-d97b-4b1e-ac8c-8eb4471cf9dd:899700000001",
        "typ": "Bearer",
        "azp": "lps-gateway",
        "acr": "eidas1",
        "scope": "openid scope_all",
        "SubjectNameID": "899700000001",
        "preferred_username": "899700000001",
        "given_name": "Claire",
        "family_name": "MARTIN",
    }
    signature = bytes(range(256))  # 256 bytes, like an RS256 signature, all byte values
    return ".".join(
        (
            _b64url(json.dumps(header).encode()),
            _b64url(json.dumps(claims, ensure_ascii=False).encode()),
            _b64url(signature),
        )
    )


JWT = make_jwt()


def xoauth2(user: bytes = USER.encode(), token: bytes = JWT.encode()) -> bytes:
    return b"user=" + user + b"\x01auth=Bearer " + token + b"\x01\x01"


def oauthbearer(
    authzid: bytes = b"a=" + USER.encode(),
    token: bytes = JWT.encode(),
    *,
    cbind: bytes = b"n",
    extra: bytes = b"host=imap.lps.example.fr\x01port=143\x01",
) -> bytes:
    return cbind + b"," + authzid + b",\x01" + extra + b"auth=Bearer " + token + b"\x01\x01"


def plain(authzid: bytes, authcid: bytes, password: bytes = JWT.encode()) -> bytes:
    return authzid + b"\x00" + authcid + b"\x00" + password


def assert_credentials(creds: TokenCredentials) -> None:
    """Invariants of every successful decode."""
    assert isinstance(creds, TokenCredentials)
    assert isinstance(creds.mechanism, Mechanism)
    assert B64TOKEN.fullmatch(creds.token)
    for text in (creds.user, creds.authcid, creds.host):
        assert isinstance(text, str)
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
    assert creds.port is None or 0 <= creds.port <= 65535


# --------------------------------------------------------------------------------------
# XOAUTH2
# --------------------------------------------------------------------------------------


def test_xoauth2_valid() -> None:
    creds = decode_xoauth2(xoauth2())
    assert creds.mechanism is Mechanism.XOAUTH2
    assert creds.user == USER
    assert creds.token == JWT
    assert creds.authcid == ""
    assert creds.host == ""
    assert creds.port is None


def test_xoauth2_sessions_of_one_token_share_its_string() -> None:
    """An LPS opens a session per BAL with one token: they hold one copy of it."""
    first, second = decode_xoauth2(xoauth2()), decode_xoauth2(xoauth2())
    assert first.token == JWT
    assert first.token is second.token


def test_xoauth2_token_not_in_repr() -> None:
    assert JWT not in repr(decode_xoauth2(xoauth2()))


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"bEaReR"])
def test_xoauth2_bearer_scheme_case_insensitive(scheme: bytes) -> None:
    creds = decode_xoauth2(b"user=" + USER.encode() + b"\x01auth=" + scheme + b" tok\x01\x01")
    assert creds.token == "tok"


@pytest.mark.parametrize(
    ("message", "user"),
    [
        (b"user=\x01auth=Bearer tok\x01\x01", ""),
        (b"auth=Bearer tok\x01\x01", ""),  # no user key: "mine"
        (b"auth=Bearer tok\x01user=bal@x.mssante.fr\x01\x01", "bal@x.mssante.fr"),  # any order
        (b"user=a=b\x01auth=Bearer tok\x01\x01", "a=b"),  # value split on the first "="
        ("user=h\u00e9l\u00e8ne@x.fr\x01auth=Bearer tok\x01\x01".encode(), "h\u00e9l\u00e8ne@x.fr"),
        (b"user=x\x01auth=Bearer tok\x01other=ignored\x01\x01", "x"),  # unknown keys ignored
    ],
)
def test_xoauth2_users(message: bytes, user: str) -> None:
    creds = decode_xoauth2(message)
    assert creds.user == user
    assert creds.token == "tok"


@pytest.mark.parametrize(
    "token",
    [b"tok", b"abc==", b"a-b.c_d~e+f/g", b"vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="],
)
def test_xoauth2_b64token_alphabet_accepted(token: bytes) -> None:
    assert decode_xoauth2(xoauth2(token=token)).token == token.decode()


def test_xoauth2_extra_spaces_around_token_tolerated() -> None:
    assert decode_xoauth2(xoauth2(token=b"  tok ")).token == "tok"


BAD_TOKENS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"a b", id="inner-space"),
    pytest.param(b"a\tb", id="tab"),
    pytest.param(b"a\x00b", id="nul"),
    pytest.param(b"a\x7fb", id="del"),
    pytest.param(b"a\nb", id="lf"),
    pytest.param(b"tok\n", id="trailing-lf"),
    pytest.param(b"tok\r", id="trailing-cr"),
    pytest.param("t\u00e9k".encode(), id="non-ascii-utf8"),
    pytest.param(b"t\xffk", id="non-utf8"),
    pytest.param(b"=abc", id="leading-equals"),
    pytest.param(b"ab=cd", id="inner-equals"),
    pytest.param(b"a,b", id="comma"),
    pytest.param(b'a"b', id="quote"),
    pytest.param(b"a;b", id="semicolon"),
]


@pytest.mark.parametrize("token", BAD_TOKENS)
def test_xoauth2_bad_tokens_refused(token: bytes) -> None:
    with pytest.raises(SaslError):
        decode_xoauth2(xoauth2(token=token))


BAD_USERS = [
    pytest.param(b"a\x00b", id="nul"),
    pytest.param(b"a\tb", id="tab"),
    pytest.param(b"a\rb", id="cr"),
    pytest.param(b"a\nb", id="lf"),
    pytest.param(b"a\x1bb", id="esc"),
    pytest.param(b"a\x7fb", id="del"),
    pytest.param(b"a\xffb", id="invalid-utf8"),
    pytest.param(b"a\xc3", id="truncated-utf8"),
    pytest.param(b"\xc0\xaf", id="overlong-utf8"),
    pytest.param(b"\xed\xa0\x80", id="utf8-surrogate"),
    pytest.param(b"\xe9l\xe8ne", id="latin-1"),
    pytest.param(b"u" * (MAX_FIELD_LENGTH + 1), id="too-long"),
]


@pytest.mark.parametrize("user", BAD_USERS)
def test_xoauth2_bad_users_refused(user: bytes) -> None:
    with pytest.raises(SaslError):
        decode_xoauth2(xoauth2(user=user))


def test_xoauth2_user_at_max_field_length_accepted() -> None:
    assert decode_xoauth2(xoauth2(user=b"u" * MAX_FIELD_LENGTH)).user == "u" * MAX_FIELD_LENGTH


@pytest.mark.parametrize("char", ["\u0085", "\u009b"])
def test_xoauth2_user_with_c1_control_refused(char: str) -> None:
    with pytest.raises(SaslError):
        decode_xoauth2(xoauth2(user=f"a{char}b".encode()))


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x01\x01", id="no-pairs"),
        pytest.param(b"user=x\x01\x01", id="no-auth"),
        pytest.param(b"user=x\x01auth=Basic dXNlcjpwYXNz\x01\x01", id="basic-scheme"),
        pytest.param(b"user=x\x01auth=Bearer\x01\x01", id="scheme-without-space"),
        pytest.param(b"user=x\x01auth=Bearertok\x01\x01", id="scheme-glued-to-token"),
        pytest.param(b"user=x\x01auth=Bearer \x01\x01", id="empty-token"),
        pytest.param(b"user=x\x01auth=Bearer tok", id="no-final-separators"),
        pytest.param(b"user=x\x01auth=Bearer tok\x01", id="single-final-separator"),
        pytest.param(b"user=x\x01auth=Bearer tok\x01\x01\x00", id="data-after-end"),
        pytest.param(b"user=x\x01auth=Bearer tok\x01\x01\r\n", id="crlf-after-end"),
        pytest.param(b"user=x\x01\x01auth=Bearer tok\x01\x01", id="empty-pair-in-middle"),
        pytest.param(b"user=x\x01junk\x01auth=Bearer tok\x01\x01", id="pair-without-equals"),
        pytest.param(b"=x\x01auth=Bearer tok\x01\x01", id="empty-key"),
        pytest.param(b"us3r=x\x01auth=Bearer tok\x01\x01", id="digit-in-key"),
        pytest.param(b"us er=x\x01auth=Bearer tok\x01\x01", id="space-in-key"),
        pytest.param(b"user=x\x00auth=Bearer tok\x00\x00", id="nul-separators"),
        pytest.param(b"user=x\x01auth=Bearer a\x01auth=Bearer b\x01\x01", id="duplicate-auth"),
        pytest.param(b"user=x\x01user=y\x01auth=Bearer tok\x01\x01", id="duplicate-user"),
    ],
)
def test_xoauth2_malformed_refused(message: bytes) -> None:
    with pytest.raises(SaslError):
        decode_xoauth2(message)


@pytest.mark.parametrize("value", ["user=x\x01auth=Bearer tok\x01\x01", 42, None])
def test_decoders_refuse_non_bytes(value: object) -> None:
    for decoder in (decode_xoauth2, decode_oauthbearer, decode_plain):
        with pytest.raises(SaslError):
            decoder(value)  # type: ignore[arg-type]
    with pytest.raises(SaslError):
        decode_login(value, b"tok")  # type: ignore[arg-type]
    with pytest.raises(SaslError):
        decode_login(b"user", value)  # type: ignore[arg-type]


@pytest.mark.parametrize("wrap", [bytearray, memoryview])
def test_decoders_accept_bytes_like(wrap: Callable[[bytes], object]) -> None:
    assert decode_xoauth2(wrap(xoauth2())).token == JWT  # type: ignore[arg-type]
    assert decode_plain(wrap(plain(b"", b"claire"))).user == "claire"  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# OAUTHBEARER (RFC 7628)
# --------------------------------------------------------------------------------------


def test_oauthbearer_valid() -> None:
    creds = decode_oauthbearer(oauthbearer())
    assert creds.mechanism is Mechanism.OAUTHBEARER
    assert creds.user == USER
    assert creds.token == JWT
    assert creds.host == "imap.lps.example.fr"
    assert creds.port == 143
    assert creds.authcid == ""


def test_oauthbearer_rfc7628_example() -> None:
    # RFC 7628 section 4.1, with "^A" written as \x01.
    message = (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )
    creds = decode_oauthbearer(message)
    assert (creds.user, creds.host, creds.port) == ("user@example.com", "server.example.com", 143)
    assert creds.token == "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="


@pytest.mark.parametrize(
    ("authzid", "user"),
    [
        (b"a=claire=2Cmartin@x.fr", "claire,martin@x.fr"),
        (b"a=a=3Db", "a=b"),
        (b"a==2C=3D", ",="),
        (b"a==3D2C", "=2C"),  # escaped "=" followed by a literal "2C": no double unescaping
        (b"a==3D3D", "=3D"),
        (b"a==3D=2C", "=,"),
        ("a=h\u00e9l\u00e8ne@x.fr".encode(), "h\u00e9l\u00e8ne@x.fr"),
        (b"", ""),  # no authzid
    ],
)
def test_oauthbearer_authzid(authzid: bytes, user: str) -> None:
    assert decode_oauthbearer(oauthbearer(authzid)).user == user


def test_oauthbearer_without_authzid_host_or_port() -> None:
    creds = decode_oauthbearer(b"n,,\x01auth=Bearer tok\x01\x01")
    assert (creds.user, creds.host, creds.port, creds.token) == ("", "", None, "tok")


def test_oauthbearer_y_flag_accepted() -> None:
    assert decode_oauthbearer(oauthbearer(cbind=b"y")).user == USER


@pytest.mark.parametrize("port", [0, 1, 143, 993, 65535])
def test_oauthbearer_ports(port: int) -> None:
    extra = b"port=" + str(port).encode() + b"\x01"
    assert decode_oauthbearer(oauthbearer(extra=extra)).port == port


@pytest.mark.parametrize(
    "port",
    [
        b"",
        b"abc",
        b"14a",
        b"0x8f",
        b"-1",
        b"+143",
        b" 143",
        b"143 ",
        b"1.5",
        b"65536",
        b"99999",
        b"123456",
        b"0000143",
        "\uff11\uff14\uff13".encode(),  # fullwidth digits
        "\u0661\u0664\u0663".encode(),  # Arabic-Indic digits
    ],
)
def test_oauthbearer_bad_port_refused(port: bytes) -> None:
    with pytest.raises(SaslError):
        decode_oauthbearer(oauthbearer(extra=b"port=" + port + b"\x01"))


@pytest.mark.parametrize(
    "authzid",
    [
        pytest.param(b"a=claire=2Dx", id="unknown-escape"),
        pytest.param(b"a=claire=", id="trailing-equals"),
        pytest.param(b"a=claire=2", id="short-escape"),
        pytest.param(b"a=claire=2c", id="lowercase-escape"),
        pytest.param(b"a=a==b", id="double-equals"),
        pytest.param(b"u=claire", id="not-a="),
        pytest.param(b"claire", id="no-a="),
        pytest.param(b"a=cl\x00aire", id="nul"),
        pytest.param(b"a=cl\x7faire", id="del"),
        pytest.param(b"a=cl\xffaire", id="invalid-utf8"),
        pytest.param(b"a=" + b"u" * (MAX_FIELD_LENGTH + 1), id="too-long"),
    ],
)
def test_oauthbearer_bad_authzid_refused(authzid: bytes) -> None:
    with pytest.raises(SaslError):
        decode_oauthbearer(oauthbearer(authzid))


@pytest.mark.parametrize("cbind", [b"p=tls-unique", b"p=tls-server-end-point", b"N", b"Y", b""])
def test_oauthbearer_channel_binding_refused(cbind: bytes) -> None:
    with pytest.raises(SaslError):
        decode_oauthbearer(oauthbearer(cbind=cbind))


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"n,,", id="header-only"),
        pytest.param(b"n,,auth=Bearer tok", id="no-kv-section"),
        pytest.param(b"n,,\x01", id="empty-kv-unterminated"),
        pytest.param(b"n,,\x01\x01", id="no-auth"),
        pytest.param(b"n,\x01auth=Bearer tok\x01\x01", id="two-part-header"),
        pytest.param(b"n,a=x\x01auth=Bearer tok\x01\x01", id="header-missing-comma"),
        pytest.param(b"n,a=x,y,\x01auth=Bearer tok\x01\x01", id="raw-comma-in-authzid"),
        pytest.param(b"n,,x\x01auth=Bearer tok\x01\x01", id="junk-after-header"),
        pytest.param(b"n,,\x01auth=Bearer tok\x01", id="missing-final-separator"),
        pytest.param(b"n,,\x01auth=Bearer tok", id="missing-both-separators"),
        pytest.param(b"n,,\x01auth=Bearer a\x01auth=Bearer b\x01\x01", id="duplicate-auth"),
        pytest.param(b"n,,\x01port=1\x01port=2\x01auth=Bearer tok\x01\x01", id="duplicate-port"),
        pytest.param(b"n,,\x01host=a\x01host=b\x01auth=Bearer tok\x01\x01", id="duplicate-host"),
        pytest.param(b"n,,\x01host=a\x02b\x01auth=Bearer tok\x01\x01", id="host-control"),
        pytest.param(b"n,,\x01host=a\xffb\x01auth=Bearer tok\x01\x01", id="host-invalid-utf8"),
        pytest.param(b"n,,\x01auth=Basic dXNlcg==\x01\x01", id="basic-scheme"),
        pytest.param(b"n,,\x01auth=Bearer a b\x01\x01", id="token-with-space"),
        pytest.param("n,,\x01auth=Bearer t\u00e9k\x01\x01".encode(), id="token-non-ascii"),
        pytest.param(b"n,,\x01bad pair\x01auth=Bearer tok\x01\x01", id="malformed-pair"),
    ],
)
def test_oauthbearer_malformed_refused(message: bytes) -> None:
    with pytest.raises(SaslError):
        decode_oauthbearer(message)


# --------------------------------------------------------------------------------------
# PLAIN (RFC 4616)
# --------------------------------------------------------------------------------------


def test_plain_without_authzid_user_is_authcid() -> None:
    creds = decode_plain(plain(b"", USER.encode()))
    assert creds.mechanism is Mechanism.PLAIN
    assert (creds.user, creds.authcid, creds.token) == (USER, USER, JWT)


def test_plain_with_authzid_user_is_authzid() -> None:
    bal = "secretariat.cardio@hopital-exemple.mssante.fr"
    creds = decode_plain(plain(bal.encode(), USER.encode()))
    assert (creds.user, creds.authcid, creds.token) == (bal, USER, JWT)


def test_plain_utf8_identities() -> None:
    creds = decode_plain(plain("bal-h\u00f4pital".encode(), "h\u00e9l\u00e8ne".encode(), b"tok"))
    assert (creds.user, creds.authcid) == ("bal-h\u00f4pital", "h\u00e9l\u00e8ne")


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"claire\x00tok", id="two-parts"),
        pytest.param(b"tok", id="one-part"),
        pytest.param(b"a\x00b\x00c\x00tok", id="four-parts"),
        pytest.param(b"\x00claire\x00tok\x00", id="trailing-nul"),
        pytest.param(b"\x00claire\x00", id="empty-password"),
        pytest.param(b"\x00claire\x00a b", id="password-with-space"),
        pytest.param(b"\x00claire\x00tok\r\n", id="password-with-crlf"),
        pytest.param("\x00claire\x00t\u00e9k".encode(), id="password-non-ascii"),
        pytest.param(b"\x00clai\x01re\x00tok", id="authcid-control"),
        pytest.param(b"\x00clai\xffre\x00tok", id="authcid-invalid-utf8"),
        pytest.param(b"ba\x1bl\x00claire\x00tok", id="authzid-control"),
        pytest.param(b"ba\xc3l\x00claire\x00tok", id="authzid-invalid-utf8"),
        pytest.param(b"u" * (MAX_FIELD_LENGTH + 1) + b"\x00claire\x00tok", id="authzid-too-long"),
        pytest.param(b"\x00" + b"u" * (MAX_FIELD_LENGTH + 1) + b"\x00tok", id="authcid-too-long"),
    ],
)
def test_plain_malformed_refused(message: bytes) -> None:
    with pytest.raises(SaslError):
        decode_plain(message)


@pytest.mark.parametrize("message", [b"\x00\x00tok", b"bal@x.fr\x00\x00tok"])
def test_plain_empty_authcid_refused(message: bytes) -> None:
    with pytest.raises(SaslError):
        decode_plain(message)


# --------------------------------------------------------------------------------------
# LOGIN
# --------------------------------------------------------------------------------------


def test_login_valid() -> None:
    creds = decode_login(USER.encode(), JWT.encode())
    assert creds.mechanism is Mechanism.LOGIN
    assert (creds.user, creds.authcid, creds.token) == (USER, USER, JWT)
    assert (creds.host, creds.port) == ("", None)


def test_login_empty_username_is_mine() -> None:
    creds = decode_login(b"", b"tok")
    assert (creds.user, creds.token) == ("", "tok")


@pytest.mark.parametrize(
    ("username", "password"),
    [
        pytest.param(USER.encode(), b"", id="empty-password"),
        pytest.param(USER.encode(), b"a b", id="password-with-space"),
        pytest.param(USER.encode(), b"tok\x00", id="password-with-nul"),
        pytest.param(USER.encode(), "t\u00e9k".encode(), id="password-non-ascii"),
        pytest.param(b"clai\x00re", b"tok", id="username-nul"),
        pytest.param(b"claire\r\n", b"tok", id="username-crlf"),
        pytest.param(b"clai\xffre", b"tok", id="username-invalid-utf8"),
        pytest.param(b"u" * (MAX_FIELD_LENGTH + 1), b"tok", id="username-too-long"),
    ],
)
def test_login_malformed_refused(username: bytes, password: bytes) -> None:
    with pytest.raises(SaslError):
        decode_login(username, password)


# --------------------------------------------------------------------------------------
# decode(): mechanism dispatch
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mechanism", "message", "expected"),
    [
        ("XOAUTH2", xoauth2(), Mechanism.XOAUTH2),
        ("xoauth2", xoauth2(), Mechanism.XOAUTH2),
        ("XOAuth2", xoauth2(), Mechanism.XOAUTH2),
        (Mechanism.XOAUTH2, xoauth2(), Mechanism.XOAUTH2),
        ("OAUTHBEARER", oauthbearer(), Mechanism.OAUTHBEARER),
        ("oauthbearer", oauthbearer(), Mechanism.OAUTHBEARER),
        (Mechanism.OAUTHBEARER, oauthbearer(), Mechanism.OAUTHBEARER),
        ("PLAIN", plain(b"", USER.encode()), Mechanism.PLAIN),
        ("plain", plain(b"", USER.encode()), Mechanism.PLAIN),
        (Mechanism.PLAIN, plain(b"", USER.encode()), Mechanism.PLAIN),
    ],
)
def test_decode_dispatch(mechanism: Mechanism | str, message: bytes, expected: Mechanism) -> None:
    creds = decode(mechanism, message)
    assert creds.mechanism is expected
    assert creds.user == USER
    assert creds.token == JWT


@pytest.mark.parametrize(
    "mechanism",
    ["CRAM-MD5", "SCRAM-SHA-256", "GSSAPI", "EXTERNAL", "", "XOAUTH", "PLAIN ", " plain"],
)
def test_decode_unknown_mechanism_refused(mechanism: str) -> None:
    with pytest.raises(SaslError, match="unsupported"):
        decode(mechanism, plain(b"", USER.encode()))


@pytest.mark.parametrize("mechanism", ["LOGIN", "login", Mechanism.LOGIN])
def test_decode_login_refused(mechanism: Mechanism | str) -> None:
    with pytest.raises(SaslError, match="LOGIN"):
        decode(mechanism, b"")


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER", "PLAIN"])
def test_decode_wrong_format_for_mechanism_refused(mechanism: str) -> None:
    others = {"XOAUTH2": plain(b"", b"c"), "OAUTHBEARER": xoauth2(), "PLAIN": oauthbearer()}
    with pytest.raises(SaslError):
        decode(mechanism, others[mechanism])


# --------------------------------------------------------------------------------------
# Size limits
# --------------------------------------------------------------------------------------


def _pad_token(build: Callable[[bytes], bytes], total: int) -> bytes:
    """The message `build(token)` whose total length is exactly `total` bytes."""
    overhead = len(build(b""))
    message = build(b"t" * (total - overhead))
    assert len(message) == total
    return message


SIZED_BUILDERS: list[tuple[str, Callable[[bytes], bytes], Callable[[bytes], TokenCredentials]]] = [
    ("xoauth2", lambda t: xoauth2(token=t), decode_xoauth2),
    ("oauthbearer", lambda t: oauthbearer(token=t), decode_oauthbearer),
    ("plain", lambda t: plain(b"", USER.encode(), t), decode_plain),
    ("login", lambda t: t, lambda m: decode_login(USER.encode(), m)),
]


@pytest.mark.parametrize(
    ("build", "decoder"), [pytest.param(b, d, id=n) for n, b, d in SIZED_BUILDERS]
)
def test_message_of_exactly_max_size_accepted(
    build: Callable[[bytes], bytes], decoder: Callable[[bytes], TokenCredentials]
) -> None:
    creds = decoder(_pad_token(build, MAX_SASL_BYTES))
    assert creds.token.startswith("ttt")
    assert len(creds.token) > MAX_SASL_BYTES - 100


@pytest.mark.parametrize(
    ("build", "decoder"), [pytest.param(b, d, id=n) for n, b, d in SIZED_BUILDERS]
)
@pytest.mark.parametrize("extra", [1, 2, 1024, 1024 * 1024])
def test_oversized_message_refused(
    build: Callable[[bytes], bytes], decoder: Callable[[bytes], TokenCredentials], extra: int
) -> None:
    with pytest.raises(SaslError, match="too large"):
        decoder(_pad_token(build, MAX_SASL_BYTES + extra))


def test_login_oversized_username_refused() -> None:
    with pytest.raises(SaslError, match="too large"):
        decode_login(b"u" * (MAX_SASL_BYTES + 1), b"tok")


# --------------------------------------------------------------------------------------
# decode_base64
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"=", b""),
        ("=", b""),
        (b"=\r\n", b""),
        (b"", b""),
        (b"dXNlcg==", b"user"),
        ("dXNlcg==", b"user"),
        (b"dXNlcg==\r\n", b"user"),
        (b"dXNlcg==\n", b"user"),
        (bytearray(b"dXNlcg=="), b"user"),
        (b"AAEC/w==", b"\x00\x01\x02\xff"),
    ],
)
def test_decode_base64_valid(data: bytes | str, expected: bytes) -> None:
    assert decode_base64(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"==", id="double-equals"),
        pytest.param(b"dXNlcg", id="missing-padding"),
        pytest.param(b"dXNlcg=", id="short-padding"),
        pytest.param(b"dXNlcg===", id="extra-padding"),
        pytest.param(b"dXNl cg==", id="inner-space"),
        pytest.param(b" dXNlcg==", id="leading-space"),
        pytest.param(b"dXNlcg==\t", id="trailing-tab"),
        pytest.param(b"dXNl\r\ncg==", id="inner-crlf"),
        pytest.param(b"dXNlcg-_", id="base64url-alphabet"),
        pytest.param(b"dXNlcg==dXNlcg==", id="padding-in-middle"),
        pytest.param(b"dXN!cg==", id="bang"),
        pytest.param(b"*", id="cancel"),
        pytest.param("dXNlcg\u00e9=", id="non-ascii-str"),
        pytest.param(b"dXNlcg\xc3\xa9", id="non-ascii-bytes"),
        pytest.param(b"A", id="one-char"),
    ],
)
def test_decode_base64_invalid_refused(data: bytes | str) -> None:
    with pytest.raises(SaslError):
        decode_base64(data)


@pytest.mark.parametrize("data", [b"AAAA=", b"AAAA==", b"dXNlcgAA="])
def test_decode_base64_padding_after_complete_group_refused(data: bytes) -> None:
    with pytest.raises(SaslError):
        decode_base64(data)


def test_decode_base64_of_max_size_accepted() -> None:
    data = bytes(range(256)) * (MAX_SASL_BYTES // 256)
    assert len(data) == MAX_SASL_BYTES
    assert decode_base64(encode_base64(data)) == data
    assert decode_base64(encode_base64(data).decode() + "\r\n") == data


@pytest.mark.parametrize("size", [MAX_SASL_BYTES + 3, MAX_SASL_BYTES * 2, 1024 * 1024])
def test_decode_base64_oversized_refused(size: int) -> None:
    with pytest.raises(SaslError, match="too large"):
        decode_base64(encode_base64(b"x" * size))


def test_decode_base64_oversized_garbage_refused_before_decoding() -> None:
    with pytest.raises(SaslError, match="too large"):
        decode_base64(b"!" * (MAX_SASL_BYTES * 2))


@pytest.mark.parametrize("size", [MAX_SASL_BYTES + 1, MAX_SASL_BYTES + 2])
def test_decode_base64_just_over_max_refused(size: int) -> None:
    with pytest.raises(SaslError):
        decode_base64(encode_base64(b"x" * size))


def test_encode_base64_round_trip() -> None:
    assert encode_base64(b"\x00\xff") == b"AP8="
    assert decode_base64(encode_base64(xoauth2())) == xoauth2()


# --------------------------------------------------------------------------------------
# Full round trip: base64 on the wire, a realistic JWT as the token
# --------------------------------------------------------------------------------------


def test_jwt_fixture_is_realistic() -> None:
    parts = JWT.split(".")
    assert len(parts) == 3
    for part in parts:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", part)
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    assert header["alg"] == "RS256"
    assert "-" in JWT or "_" in JWT  # the base64url-only characters are exercised


@pytest.mark.parametrize(
    ("mechanism", "message"),
    [
        ("XOAUTH2", xoauth2()),
        ("OAUTHBEARER", oauthbearer()),
        ("PLAIN", plain(b"", USER.encode())),
    ],
)
def test_jwt_survives_base64_wire_round_trip(mechanism: str, message: bytes) -> None:
    wire = encode_base64(message).decode("ascii") + "\r\n"
    creds = decode(mechanism, decode_base64(wire))
    assert creds.token == JWT
    assert creds.user == USER


def test_jwt_survives_login_round_trip() -> None:
    user = decode_base64(encode_base64(USER.encode()))
    password = decode_base64(encode_base64(JWT.encode()))
    assert decode_login(user, password).token == JWT


# --------------------------------------------------------------------------------------
# error_challenge
# --------------------------------------------------------------------------------------


def test_error_challenge_exact_bytes() -> None:
    challenge = error_challenge(OIDC_CONF)
    assert isinstance(challenge, bytes)
    assert challenge == (
        b'{"status":"invalid_token","scope":"openid scope_all",'
        b'"openid-configuration":"' + OIDC_CONF.encode() + b'"}'
    )
    assert json.loads(challenge) == {
        "status": "invalid_token",
        "scope": "openid scope_all",
        "openid-configuration": OIDC_CONF,
    }


def test_error_challenge_custom_scope_and_compact() -> None:
    challenge = error_challenge("https://x.example/.well-known/openid-configuration", "openid")
    assert json.loads(challenge)["scope"] == "openid"
    assert b", " not in challenge
    assert b": " not in challenge
    assert b"\n" not in challenge


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

PROPERTY = settings(max_examples=200, deadline=None)
LARGE = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

# Random bytes rarely reach the deep branches: also mix in the protocol's own fragments.
FRAGMENTS = st.sampled_from(
    [
        b"\x01",
        b"\x00",
        b",",
        b"=",
        b"n",
        b"y",
        b"p=tls-unique",
        b"a=",
        b"=2C",
        b"=3D",
        b"user=",
        b"auth=",
        b"host=",
        b"port=",
        b"Bearer ",
        b"bearer",
        b" ",
        b"143",
        b"99999",
        b"tok",
        b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        b"claire@x.fr",
        b"\xc3\xa9",
        b"\xff",
        b"\x7f",
        b"\r\n",
    ]
)
SOUP = st.lists(st.one_of(FRAGMENTS, st.binary(max_size=4)), max_size=30).map(b"".join)
SMALL_BYTES = st.one_of(st.binary(max_size=512), SOUP)


def sized_bytes(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    """Random bytes of a size in [min_size, max_size], even above Hypothesis's own limit.

    ``st.binary(min_size=16 * 1024 - 2, ...)`` cannot be used: every such example exceeds
    Hypothesis's maximum example size and the test ends "Unsatisfiable". So the bulk comes
    from a `random.Random` seeded by Hypothesis, which also controls a small spliced-in part.
    """

    def build(seed: int, size: int, splice: bytes, where: int) -> bytes:
        bulk = random.Random(seed).randbytes(size)
        where %= size + 1
        return (bulk[:where] + splice + bulk[where:])[:size]

    return st.builds(
        build,
        st.integers(0, 2**64),
        st.integers(min_size, max_size),
        SOUP,
        st.integers(0, max_size),
    )


AROUND_MAX = sized_bytes(MAX_SASL_BYTES - 2, MAX_SASL_BYTES + 2)

DECODERS: list[Callable[[bytes], TokenCredentials]] = [
    decode_xoauth2,
    decode_oauthbearer,
    decode_plain,
    lambda data: decode_login(data, data),
    lambda data: decode_login(b"claire", data),
    lambda data: decode_login(data, b"tok"),
]
DECODER_IDS = ["xoauth2", "oauthbearer", "plain", "login-both", "login-pw", "login-user"]


def _only_sasl_error(decoder: Callable[[bytes], TokenCredentials], data: bytes) -> None:
    try:
        creds = decoder(data)
    except SaslError:
        return
    assert_credentials(creds)
    assert len(data) <= MAX_SASL_BYTES


@pytest.mark.parametrize("decoder", DECODERS, ids=DECODER_IDS)
@PROPERTY
@given(data=SMALL_BYTES)
def test_property_random_bytes_only_sasl_error(
    decoder: Callable[[bytes], TokenCredentials], data: bytes
) -> None:
    _only_sasl_error(decoder, data)


@pytest.mark.parametrize("decoder", DECODERS, ids=DECODER_IDS)
@LARGE
@given(data=AROUND_MAX)
def test_property_random_bytes_around_max_only_sasl_error(
    decoder: Callable[[bytes], TokenCredentials], data: bytes
) -> None:
    _only_sasl_error(decoder, data)


@LARGE
@given(prefix=SOUP, size=st.integers(MAX_SASL_BYTES - 64, MAX_SASL_BYTES + 64))
def test_property_valid_looking_around_max_only_sasl_error(prefix: bytes, size: int) -> None:
    builders: list[tuple[Callable[[bytes], bytes], Callable[[bytes], TokenCredentials]]] = [
        (lambda t: xoauth2(token=t), decode_xoauth2),
        (lambda t: oauthbearer(token=t), decode_oauthbearer),
    ]
    for build, decoder in builders:
        token = b"t" * max(1, size - len(build(b"")))
        message = build(token)
        try:
            creds = decoder(message)
        except SaslError:
            assert len(message) > MAX_SASL_BYTES
        else:
            assert len(message) <= MAX_SASL_BYTES
            assert creds.token == token.decode()
        _only_sasl_error(decoder, prefix + message)


@PROPERTY
@given(data=st.one_of(st.binary(max_size=512), st.text(max_size=512), SOUP))
def test_property_decode_base64_only_sasl_error(data: bytes | str) -> None:
    try:
        decoded = decode_base64(data)
    except SaslError:
        return
    assert isinstance(decoded, bytes)


B64_CHARS = st.sampled_from(list(b"ABCXYZabcxyz0189+/=\r\n-_ !"))
B64_SOUP = st.lists(B64_CHARS, max_size=64).map(bytes)


@PROPERTY
@given(data=B64_SOUP)
def test_property_decode_base64_alphabet_soup_only_sasl_error(data: bytes) -> None:
    try:
        decoded = decode_base64(data)
    except SaslError:
        return
    stripped = data.strip(b"\r\n")
    assert re.fullmatch(rb"[A-Za-z0-9+/]*={0,2}", stripped)
    assert len(decoded) == len(stripped.rstrip(b"=")) * 3 // 4
    assert decode_base64(encode_base64(decoded)) == decoded


@LARGE
@given(
    data=st.one_of(
        AROUND_MAX,
        AROUND_MAX.map(encode_base64),
        AROUND_MAX.map(encode_base64).map(lambda b: b + b"\r\n"),
        st.integers(21840, 21860).map(lambda n: b"A" * n),
    )
)
def test_property_decode_base64_around_max_only_sasl_error(data: bytes) -> None:
    try:
        decoded = decode_base64(data)
    except SaslError:
        return
    assert len(decoded) <= MAX_SASL_BYTES + 2  # see test_decode_base64_just_over_max_refused


@PROPERTY
@given(data=st.binary(max_size=MAX_SASL_BYTES // 8))
def test_property_base64_round_trip(data: bytes) -> None:
    assert decode_base64(encode_base64(data)) == data


# Valid messages decode back to what was put in.

SAFE_TEXT = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs")),
    max_size=200,
)
B64TOKENS = st.from_regex(r"[A-Za-z0-9\-._~+/]+=*", fullmatch=True)


def _escape_saslname(name: str) -> bytes:
    return name.replace("=", "=3D").replace(",", "=2C").encode()


@PROPERTY
@given(user=SAFE_TEXT, token=B64TOKENS)
def test_property_xoauth2_round_trip(user: str, token: str) -> None:
    creds = decode_xoauth2(xoauth2(user.encode(), token.encode()))
    assert (creds.user, creds.token) == (user, token)
    wire = encode_base64(xoauth2(user.encode(), token.encode()))
    assert decode("xoauth2", decode_base64(wire)) == creds


@PROPERTY
@given(
    authzid=SAFE_TEXT | st.text(alphabet=st.sampled_from(",=23CDa@"), max_size=20),
    token=B64TOKENS,
    host=SAFE_TEXT,
    port=st.none() | st.integers(0, 65535),
    cbind=st.sampled_from([b"n", b"y"]),
)
def test_property_oauthbearer_round_trip(
    authzid: str, token: str, host: str, port: int | None, cbind: bytes
) -> None:
    extra = b"host=" + host.encode() + b"\x01"
    if port is not None:
        extra += b"port=" + str(port).encode() + b"\x01"
    gs2_authzid = b"a=" + _escape_saslname(authzid) if authzid else b""
    creds = decode_oauthbearer(oauthbearer(gs2_authzid, token.encode(), cbind=cbind, extra=extra))
    assert (creds.user, creds.token, creds.host, creds.port) == (authzid, token, host, port)


@PROPERTY
@given(authzid=SAFE_TEXT, authcid=SAFE_TEXT.filter(bool), token=B64TOKENS)
def test_property_plain_round_trip(authzid: str, authcid: str, token: str) -> None:
    creds = decode_plain(plain(authzid.encode(), authcid.encode(), token.encode()))
    assert (creds.user, creds.authcid, creds.token) == (authzid or authcid, authcid, token)


@PROPERTY
@given(user=SAFE_TEXT, token=B64TOKENS)
def test_property_login_round_trip(user: str, token: str) -> None:
    creds = decode_login(user.encode(), token.encode())
    assert (creds.user, creds.authcid, creds.token) == (user, user, token)


@PROPERTY
@given(
    user=SAFE_TEXT,
    token=B64TOKENS,
    bad=st.characters(
        exclude_characters="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        "0123456789-._~+/= \x01"
    ),
    where=st.integers(0, 1000),
)
def test_property_token_with_foreign_char_refused(
    user: str, token: str, bad: str, where: int
) -> None:
    where %= len(token) + 1
    bad_token = (token[:where] + bad + token[where:]).encode("utf-8", "surrogatepass")
    with pytest.raises(SaslError):
        decode_xoauth2(xoauth2(user.encode(), bad_token))
    with pytest.raises(SaslError):
        decode_login(user.encode(), bad_token)
