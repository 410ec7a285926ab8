"""Forged tokens and address tricks against the running gateway's IMAP and SMTP fronts.

Every forgery is an AUTHENTICATIONFAILED (a 535 on SMTP), never a login and never a
traceback; every spelling of a BAL one may not open is refused, whatever the case,
padding, look-alike or list trick."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import smtplib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from tests.conftest import quick_mock_settings
from tests.gateway.test_smtp_front import smtplib_session
from tests.imap_raw import Raw
from tests.security.test_slow_clients import refused_login
from tests.support.sasl import xoauth2_b64
from tests.support.stacks import Stack, gateway_settings, running_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLAIRE = "claire.martin@medecin.mssante.fr"  # sec-bernard: read, write, send
EVE = "eve.moreau@medecin.mssante.fr"  # nobody's but dr-moreau's


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway for every probe (a stack each would cost ~40 starts): each probe only fails to
    log in or to send, which changes nothing the next one sees. Many failures from one
    address on purpose: the throttle is tested elsewhere."""
    directory = tmp_path_factory.mktemp("tokens-and-addresses")
    settings = gateway_settings(directory / "gateway", limits={"max_failed_logins": 10_000})
    async with running_stack(settings, quick_mock_settings(), directory / "mock") as running:
        yield running


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


def resigned(stack: Stack, token: str, **changes: Any) -> str:
    """The token's claims changed and signed again with the mock's own key: a valid
    signature on claims the gateway must refuse."""
    assert stack.mock.psc is not None
    claims = {**payload(token), **changes}
    return stack.mock.psc.keys.sign({k: v for k, v in claims.items() if v is not None})


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


def kid(token: str) -> str:
    header: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    return str(header["kid"])


def unsigned(token: str, header: dict[str, Any], key: bytes = b"") -> str:
    head = b64(json.dumps(header).encode())
    body = token.split(".")[1]
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest() if key else b""
    return f"{head}.{body}.{b64(signature)}"


FORGERIES: dict[str, Callable[[Stack, str], str]] = {
    "alg none": lambda s, t: unsigned(t, {"alg": "none", "typ": "JWT"}),
    "HS256 with the public key as secret": lambda s, t: unsigned(
        t,
        {
            "alg": "HS256",
            "kid": json.loads(base64.urlsafe_b64decode(t.split(".")[0] + "=="))["kid"],
        },
        key=b"-----BEGIN PUBLIC KEY-----",
    ),
    "payload swapped": lambda s, t: ".".join(
        [
            t.split(".")[0],
            b64(json.dumps({**payload(t), "SubjectNameID": "899700000007"}).encode()),
            t.split(".")[2],
        ]
    ),
    "signature stripped": lambda s, t: t.rsplit(".", 1)[0] + ".",
    "expired": lambda s, t: resigned(s, t, exp=payload(t)["iat"] - 3600),
    "not yet valid": lambda s, t: resigned(s, t, nbf=payload(t)["iat"] + 3600),
    "another issuer": lambda s, t: resigned(
        s, t, iss="https://evil.example/auth/realms/esante-wallet"
    ),
    "another audience": lambda s, t: resigned(s, t, aud="evil-client", azp="evil-client"),
    "no acr": lambda s, t: resigned(s, t, acr=None),
    "an ID token": lambda s, t: resigned(s, t, typ="ID"),
    "exp NaN": lambda s, t: resigned(s, t, exp=float("nan")),
    "exp 1e308": lambda s, t: resigned(s, t, exp=1e308),
    "exp 10**400": lambda s, t: resigned(s, t, exp=10**400),
    "exp a string": lambda s, t: resigned(s, t, exp="2099-01-01"),
    "idNat of another kind": lambda s, t: resigned(s, t, SubjectNameID="0" * 40),
    "duplicate alg in the header": lambda s, t: ".".join(
        [
            b64(b'{"alg":"RS256","kid":%s,"alg":"none"}' % json.dumps(kid(t)).encode()),
            *t.split(".")[1:],
        ]
    ),
    "a header parameter no one registered": lambda s, t: ".".join(
        [b64json({"alg": "RS256", "kid": kid(t), "jku": "file:///x"}), *t.split(".")[1:]]
    ),
    "a header nested 380 deep": lambda s, t: ".".join([b64(b"[" * 380), *t.split(".")[1:]]),
    "a kid no key has": lambda s, t: unsigned(t, {"alg": "RS256", "kid": "no-such-key"}),
    "a non-canonical signature": lambda s, t: t[:-1] + chr(ord(t[-1]) + 1),
    "a padded signature": lambda s, t: t + "==",
    "a non-ASCII character": lambda s, t: t[:20] + "é" + t[21:],
    "truncated": lambda s, t: t[: len(t) // 2],
    "garbage": lambda s, t: "not.a.token",
    "oversized": lambda s, t: t + "A" * 20_000,
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_a_forged_token_opens_nothing(
    stack: Stack, forgery: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    token = FORGERIES[forgery](stack, await stack.token("sec-bernard"))
    client = await Raw.open(stack.imap_port)
    try:
        answer = await refused_login(client, CLAIRE, token)
    finally:
        await client.close()
    # an unreadable SASL response is a BAD, a readable one with a bad token a NO
    assert b"NO [AUTHENTICATIONFAILED]" in answer or b"BAD malformed SASL" in answer, answer

    def smtp() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as client:
            client.ehlo("lps")
            code, text = client.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(CLAIRE, token).decode())
            if code == 334:  # the RFC 7628 error challenge: the client answers ^A
                code, text = client.docmd("AQ==")
            return code, text

    code, _ = await asyncio.to_thread(smtp)
    assert 500 <= code < 600  # 535; 501 or 500 for a response too large to read
    assert not [r for r in caplog.records if r.exc_info], "a forged token made a traceback"
    assert token not in caplog.text


@pytest.mark.parametrize(
    "user",
    [
        EVE,
        EVE.upper(),
        f" {EVE} ",
        f"{EVE},{CLAIRE}",
        f"{CLAIRE},{EVE}",
        f"<{EVE}>",
        f"{EVE}\tclaire",
        "eve.moreau@medecin.mssante.fr.",
        "\u0435ve.moreau@medecin.mssante.fr",  # a Cyrillic e
        "899700000007",  # another person's idNat
        f"{CLAIRE}.evil.example",
        f"claire.martin%medecin.mssante.fr@{EVE.split('@')[1]}",
        "@medecin.mssante.fr",
        "*",
    ],
)
async def test_no_spelling_opens_a_bal_one_may_not_open(stack: Stack, user: str) -> None:
    token = await stack.token("sec-bernard")
    client = await Raw.open(stack.imap_port)
    try:
        answer = await refused_login(client, user, token)
    finally:
        await client.close()
    refusals = (b"T1 NO [AUTHORIZATIONFAILED]", b"T1 NO [AUTHENTICATIONFAILED]", b"T1 BAD ")
    assert answer.startswith(refusals), answer


@pytest.mark.parametrize(
    "sender",
    [EVE, EVE.upper(), f"{CLAIRE}.evil.example", f"{EVE} ", "<>"],
)
async def test_no_envelope_sender_trick_sends_from_another_bal(stack: Stack, sender: str) -> None:
    token = await stack.token("sec-bernard")

    def mail_from() -> int:
        with smtplib_session(stack.smtp_port, CLAIRE, token) as client:
            code, _ = client.docmd("MAIL", f"FROM:<{sender.strip('<>')}>")
            return code

    assert await asyncio.to_thread(mail_from) in (550, 553, 501)


async def test_plaintext_after_starttls_leaves_no_traceback(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that says STARTTLS and then speaks in clear breaks its own handshake: the
    connection ends, the log says so in one line, and nothing is called an internal error."""
    caplog.set_level(logging.INFO)
    for port, starttls, ready in (
        (stack.smtp_port, b"EHLO x\r\nSTARTTLS\r\n", b"220 "),
        (stack.imap_port, b"a STARTTLS\r\n", b"a OK"),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await reader.readline()
            writer.write(starttls)
            while not (await asyncio.wait_for(reader.readline(), 30)).startswith(ready):
                pass
            writer.write(b"hello\r\n" * 3)
            assert await asyncio.wait_for(reader.read(), 30) is not None  # ends, one way or another
        finally:
            writer.close()
    assert not [r for r in caplog.records if r.exc_info]
    assert not [r for r in caplog.records if r.getMessage() == "smtp.internal_error"]
