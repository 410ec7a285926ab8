"""The legacy front's authentication against a running mock operator: PSC tokens, CPS
cards passed on by a trusted proxy, the historic platform's OTP passed through, and the
OTP answered by a PSC CIBA approval once the BAL has moved."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp

from gateway.legacy_front.auth import LegacyFrontAuth
from gateway.legacy_front.cookies import SessionBook
from gateway.legacy_front.otp import CibaOtp, HistoricOtp, OtpLogin
from gateway.mss.historic_ws import SESSION_COOKIE, AuthRefused, OtpRequired
from gateway.runtime.forwarded import ForwardedFor
from gateway.runtime.limits import LoginThrottle
from mock_operator.server import MockOperator
from psc_auth import TokenValidator
from psc_auth.config import ValidatorConfig
from tests.conftest import persona_token

MARTIN = "899700000001"  # Claire MARTIN (modern BAL)
DUPONT = "899700000002"  # Jean DUPONT (historic BAL)
SOFTWARE = "HOMOL-2019-0007"


class Front:
    """A tiny app answering who the legacy front says the caller is."""

    def __init__(
        self, mock: MockOperator, auth: LegacyFrontAuth, *, forwarded: list[str] | None = None
    ) -> None:
        self.mock = mock
        self.auth = auth
        app = FastAPI()

        @app.post("/who")
        async def who(request: Request) -> JSONResponse:
            try:
                found = await auth.authenticate(request)
            except AuthRefused as exc:
                return JSONResponse({"code": exc.code}, 403, {"X-ErrorCode": str(exc.code)})
            except OtpRequired as exc:
                return JSONResponse({"channel": exc.channel}, 401, {"X-OTP-Required": exc.channel})
            response = JSONResponse(
                {
                    "idnat": found.caller.idnat,
                    "means": found.caller.means,
                    "software": found.caller.software,
                }
            )
            if found.new_session is not None:
                response.set_cookie(SESSION_COOKIE, found.new_session.token)
            return response

        served: ASGIApp = app if forwarded is None else ForwardedFor(app, forwarded)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served, client=("127.0.0.1", 40000)),
            base_url="http://front",
        )

    async def who(self, **headers: str) -> httpx.Response:
        headers.setdefault("NUMHOMOLOGATION", SOFTWARE)
        return await self.client.post("/who", headers=headers)


@pytest.fixture
async def front(mock_op: MockOperator) -> AsyncIterator[Front]:
    validator = TokenValidator(ValidatorConfig(issuer=mock_op.issuer, accept_any_audience=True))
    psc = mock_op.psc
    assert psc is not None
    client = psc.clients.get("lps-gateway")
    assert client is not None
    http = httpx.AsyncClient(timeout=10)
    ciba = CibaOtp(
        validator,
        http,
        client_id=client.client_id,
        client_secret=client.client_secret,
        max_wait=20,
    )
    historic = HistoricOtp(f"{mock_op.http_url}/mss-msg-services/services", http)

    async def otp_for(idnat: str) -> OtpLogin:
        return historic if idnat == DUPONT else ciba

    authority = mock_op.historic_auth.authority if mock_op.historic_auth else None
    assert authority is not None

    auth = LegacyFrontAuth(
        validator,
        SessionBook(600),
        otp_for=otp_for,
        cards=authority.verifier,
        trusted_proxies=["127.0.0.0/8"],  # the test's client comes from loopback
    )
    made = Front(mock_op, auth)
    try:
        yield made
    finally:
        await made.client.aclose()
        await http.aclose()
        await validator.aclose()


async def test_bearer_token_names_the_person(front: Front) -> None:
    token = await persona_token(front.mock, "dr-martin")
    answer = await front.who(Authorization=f"Bearer {token}")
    assert answer.status_code == 200
    assert answer.json() == {"idnat": MARTIN, "means": "token", "software": SOFTWARE}
    refused = await front.who(Authorization="Bearer not-a-token")
    assert refused.status_code == 403
    assert refused.headers["X-ErrorCode"] == "17"
    basic = await front.who(Authorization="Basic bHBzLWdhdGV3YXk6c2VjcmV0")
    assert basic.headers["X-ErrorCode"] == "17"


async def test_card_from_a_trusted_proxy(front: Front) -> None:
    assert front.mock.historic_auth is not None
    assert front.mock.historic_auth.authority
    persona = front.mock.personas.get("dr-martin")
    assert persona is not None
    pem, _key = front.mock.historic_auth.authority.issue(persona)
    answer = await front.who(ssl_client_verify="SUCCESS", ssl_client_cert=quote(pem.decode()))
    assert answer.json()["idnat"] == MARTIN
    assert answer.json()["means"] == "card"
    failed = await front.who(ssl_client_verify="FAILED:expired", ssl_client_cert="x")
    assert failed.headers["X-ErrorCode"] == "17"
    authority = front.mock.historic_auth.authority
    authority.revoke(*authority.issued_to(MARTIN))
    revoked = await front.who(ssl_client_verify="SUCCESS", ssl_client_cert=quote(pem.decode()))
    assert revoked.status_code == 403
    assert revoked.headers["X-ErrorCode"] == "17"
    garbage = await front.who(ssl_client_verify="SUCCESS", ssl_client_cert="%%%")
    assert garbage.headers["X-ErrorCode"] == "8"


@dataclass
class MartinsCard:
    """Dr Martin's card certificate as a front proxy passes it, and what checks it."""

    validator: TokenValidator
    verifier: Any
    header: str  # ssl_client_cert: the URL-encoded PEM


@pytest.fixture
async def martins_card(mock_op: MockOperator) -> AsyncIterator[MartinsCard]:
    validator = TokenValidator(ValidatorConfig(issuer=mock_op.issuer, accept_any_audience=True))
    assert mock_op.historic_auth is not None
    authority = mock_op.historic_auth.authority
    assert authority is not None
    persona = mock_op.personas.get("dr-martin")
    assert persona is not None
    pem, _key = authority.issue(persona)
    yield MartinsCard(validator, authority.verifier, quote(pem.decode()))
    await validator.aclose()


async def test_card_headers_count_only_from_configured_proxies(
    mock_op: MockOperator, martins_card: MartinsCard
) -> None:
    """By default no proxy is trusted: anyone could send a public card certificate."""
    card = martins_card
    made = Front(mock_op, LegacyFrontAuth(card.validator, SessionBook(600), cards=card.verifier))
    try:
        answer = await made.who(ssl_client_verify="SUCCESS", ssl_client_cert=card.header)
        assert answer.status_code == 403
        assert answer.headers["X-ErrorCode"] == "8"  # no credentials at all
    finally:
        await made.client.aclose()


async def test_card_headers_from_a_trusted_proxy_that_also_forwards_the_client(
    mock_op: MockOperator, martins_card: MartinsCard
) -> None:
    """With http.forwarded_allow_ips the request's client is the one X-Forwarded-For names:
    the certificate headers still count by the proxy's own address (its TCP peer), and the
    throttle counts the client's."""
    card = martins_card
    throttle = LoginThrottle(1, 600)
    auth = LegacyFrontAuth(
        card.validator,
        SessionBook(600),
        cards=card.verifier,
        trusted_proxies=["127.0.0.1/32"],
        throttle=throttle,
    )
    made = Front(mock_op, auth, forwarded=["127.0.0.1/32"])
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    try:
        answer = await made.who(
            ssl_client_verify="SUCCESS", ssl_client_cert=card.header, **forwarded
        )
        assert answer.json()["idnat"] == MARTIN
        refused = await made.who(Authorization="Bearer bad", **forwarded)
        assert refused.status_code == 403
        assert throttle.retry_after("203.0.113.9") is not None
        assert throttle.retry_after("127.0.0.1") is None
    finally:
        await made.client.aclose()


async def test_no_credentials_and_bad_cookie(front: Front) -> None:
    nothing = await front.who()
    assert nothing.status_code == 403
    assert nothing.headers["X-ErrorCode"] == "8"
    front.client.cookies.set(SESSION_COOKIE, "forged")
    stale = await front.who()
    assert stale.headers["X-ErrorCode"] == "26"


async def test_historic_otp_is_passed_through(front: Front) -> None:
    """Jean DUPONT's BAL is on the historic platform: its password and its code."""
    auth = front.mock.historic_auth
    assert auth is not None
    first = await front.who(IDNAT=DUPONT, PASSWORD=auth.persona_password, IDCANAL="SMS")
    assert first.status_code == 401
    assert first.headers["X-OTP-Required"] == "SMS"
    code = auth.pending_otps[DUPONT].code
    wrong_password = await front.who(IDNAT=DUPONT, PASSWORD="nope", IDCANAL="SMS")
    assert wrong_password.headers["X-ErrorCode"] == "17"
    second = await front.who(IDNAT=DUPONT, OTP=code)
    assert second.status_code == 200, second.text
    assert second.json()["means"] == "otp"
    assert second.json()["idnat"] == DUPONT
    assert SESSION_COOKIE in second.cookies
    again = await front.who()  # the session cookie alone
    assert again.json()["idnat"] == DUPONT


async def test_ciba_answers_the_otp_once_the_bal_has_moved(front: Front) -> None:
    psc = front.mock.psc
    assert psc is not None
    first = await front.who(IDNAT=MARTIN, PASSWORD="anything", IDCANAL="SMS")
    assert first.status_code == 401
    assert first.headers["X-OTP-Required"] == "SMS"
    (request,) = psc.ciba.pending()  # started before the 401 was answered
    assert request.persona == "dr-martin"
    code = request.binding_message
    assert code.isdigit()
    assert len(code) == 6
    # asking again does not start a second approval on the phone
    await front.who(IDNAT=MARTIN, IDCANAL="SMS")
    assert len(psc.ciba.pending()) == 1
    wrong = await front.who(IDNAT=MARTIN, OTP="000000" if code != "000000" else "111111")
    assert wrong.headers["X-ErrorCode"] == "17"
    assert psc.ciba.decide(request.auth_req_id, approve=True)
    second = await front.who(IDNAT=MARTIN, OTP=code)
    assert second.status_code == 200, second.text
    assert second.json() == {"idnat": MARTIN, "means": "ciba", "software": SOFTWARE}
    again = await front.who()
    assert again.json()["means"] == "ciba"


async def test_ciba_refusals(front: Front) -> None:
    psc = front.mock.psc
    assert psc is not None
    await front.who(IDNAT=MARTIN, IDCANAL="SMS")
    (request,) = psc.ciba.pending()
    for _ in range(2):
        assert (await front.who(IDNAT=MARTIN, OTP="x")).headers["X-ErrorCode"] == "17"
    assert (await front.who(IDNAT=MARTIN, OTP="x")).headers["X-ErrorCode"] == "44"
    assert (await front.who(IDNAT=MARTIN, OTP=request.binding_message)).headers[
        "X-ErrorCode"
    ] == "44"
    # someone who denies on the phone
    await front.who(IDNAT="899700000003", IDCANAL="MAIL")
    other = [r for r in psc.ciba.pending() if r.persona != "dr-martin"]
    assert psc.ciba.decide(other[0].auth_req_id, approve=False)
    denied = await front.who(IDNAT="899700000003", OTP=other[0].binding_message)
    assert denied.headers["X-ErrorCode"] == "17"
    unknown = await front.who(IDNAT="not-an-idnat", IDCANAL="SMS")
    assert unknown.headers["X-ErrorCode"] == "17"
    no_channel = await front.who(IDNAT=MARTIN.replace("1", "4", 1)[:-1] + "4", IDCANAL="FAX")
    assert no_channel.status_code == 403


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (400, b"<html>Request Header Or Cookie Too Large</html>", {}),  # a proxy's 400
        (429, b"slow down", {}),
        (404, b"not found", {}),
        (302, b"", {"location": "http://elsewhere/"}),
        (401, b"{}", {}),  # 401 without X-OTP-Required
        (200, b'{"somethingElse": {}}', {}),
        (503, b"", {}),
    ],
)
async def test_historic_otp_opens_nothing_on_an_unexpected_answer(
    status: int, body: bytes, headers: dict[str, str]
) -> None:
    """Only the probe's own answer proves the credentials: whatever stands between the
    gateway and the historic platform cannot open a session by failing oddly."""

    def platform(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(platform)) as http:
        otp = HistoricOtp("http://historic.invalid/mss-msg-services/services", http)
        with pytest.raises(AuthRefused) as refused:
            await otp.verify(DUPONT, {"idnat": DUPONT, "otp": "123456"})
        assert refused.value.code == 8
        with pytest.raises(AuthRefused) as long_password:
            await otp.verify(DUPONT, {"idnat": DUPONT, "password": "x" * 300})
        assert long_password.value.code == 17


async def test_historic_otp_takes_a_functional_error_as_proof() -> None:
    """A person with no BAL left there still proved the code: 34 is the operation's."""

    def platform(request: httpx.Request) -> httpx.Response:
        error = {"error": {"type": "FONCTIONNELLE", "code": 34, "message": "aucune BAL"}}
        return httpx.Response(400, json=error)

    async with httpx.AsyncClient(transport=httpx.MockTransport(platform)) as http:
        otp = HistoricOtp("http://historic.invalid/mss-msg-services/services", http)
        assert await otp.verify(DUPONT, {"idnat": DUPONT, "otp": "123456"}) == "otp"


async def test_failed_logins_throttle_the_address(mock_op: MockOperator) -> None:
    """Past the node's count of failed logins from one address, refused at once (8), a
    good token included, until the window passes; asking for a code is no failure."""
    validator = TokenValidator(ValidatorConfig(issuer=mock_op.issuer, accept_any_audience=True))
    now = [1000.0]
    throttle = LoginThrottle(3, 60.0, clock=lambda: now[0])
    made = Front(mock_op, LegacyFrontAuth(validator, SessionBook(600), throttle=throttle))
    try:
        for _ in range(3):
            wrong = await made.who(Authorization="Bearer not-a-token")
            assert wrong.headers["X-ErrorCode"] == "17"
        token = await persona_token(mock_op, "dr-martin")
        throttled = await made.who(Authorization=f"Bearer {token}")
        assert throttled.status_code == 403
        assert throttled.headers["X-ErrorCode"] == "8"
        now[0] += 61
        assert (await made.who(Authorization=f"Bearer {token}")).status_code == 200
    finally:
        await made.client.aclose()
        await validator.aclose()
