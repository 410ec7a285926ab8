"""Hostile probes of the conformance runner: its API and pages from afar, forged forms,
oversized or control-laden input, campaign ids that are not ids, tokens that must never
reach a report, and a client flooding commands to fill the mock's disk."""

from __future__ import annotations

import asyncio
import base64
import functools
import imaplib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from mock_operator.conformance import observatory
from mock_operator.conformance.routes import build_conformance_router
from mock_operator.server import MockOperator, create_app
from tests.conftest import client_tls, persona_token
from tests.support.sasl import xoauth2_blob

MARTIN = "claire.martin@medecin.mssante.fr"
API = "/_test/conformance/campaigns"


def app_for(mock: MockOperator, peer: str) -> httpx.AsyncClient:
    """The mock's HTTP app as a caller at `peer` reaches it."""
    assert mock.psc is not None
    router = build_conformance_router(
        lambda: mock.observatory, lambda: mock.runner, lambda: mock.psc
    )
    app = create_app(mock.psc, conformance=router)
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://mock", timeout=30)


@pytest_asyncio.fixture
async def http(mock_op: MockOperator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=mock_op.http_url, timeout=30, verify=client_tls(), follow_redirects=False
    ) as client:
        yield client


async def campaigns(mock: MockOperator) -> int:
    assert mock.observatory is not None
    return len(await mock.observatory.store.all())


async def test_api_and_pages_refuse_callers_from_afar(mock_op: MockOperator) -> None:
    assert mock_op.psc is not None
    async with app_for(mock_op, "127.0.0.1") as near:
        opened = await near.post(API, json={"software": "Mon LPS"})
        assert opened.status_code == 200
    campaign = opened.json()["id"]
    token = mock_op.psc.page_token
    async with app_for(mock_op, "192.0.2.7") as remote:
        answers = [
            await remote.post(API, json={"software": "Intrus"}),
            await remote.get(f"{API}/{campaign}/report"),
            await remote.post(f"{API}/{campaign}/close"),
            await remote.get("/conformance"),
            await remote.get(f"/conformance/{campaign}"),
            await remote.post("/conformance", data={"token": token, "software": "Intrus"}),
            await remote.post(f"/conformance/{campaign}/close", data={"token": token}),
        ]
    assert [a.status_code for a in answers] == [404] * len(answers)
    assert all("Mon LPS" not in a.text and token not in a.text for a in answers)
    assert await campaigns(mock_op) == 1
    assert mock_op.observatory is not None
    assert [c.id for c in mock_op.observatory.open_campaigns()] == [campaign], "not closed"


async def test_the_form_needs_the_page_token(
    mock_op: MockOperator, http: httpx.AsyncClient
) -> None:
    assert mock_op.psc is not None
    for form in ({"software": "Mon LPS"}, {"software": "Mon LPS", "token": "forged"}):
        answer = await http.post("/conformance", data=form)
        assert answer.status_code == 400
        assert "Formulaire expiré" in answer.text
    assert await campaigns(mock_op) == 0
    page = await http.get("/conformance")
    assert mock_op.psc.page_token in page.text
    good = await http.post(
        "/conformance",
        data={"software": "Mon LPS", "token": mock_op.psc.page_token, "persona_dr-martin": "on"},
    )
    assert good.status_code == 303
    assert good.headers["location"].startswith("/conformance/c")
    opened = await http.post(f"{good.headers['location']}/close", data={"token": "forged"})
    assert opened.status_code == 400
    assert mock_op.observatory is not None
    assert len(mock_op.observatory.open_campaigns()) == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"software": "x" * 201}, 422),
        ({"software": ""}, 422),
        ({"software": "Mon LPS", "version": "v" * 101}, 422),
        ({"software": "Mon LPS", "client_id": "c" * 129}, 422),
        ({"software": "Mon LPS", "personas": ["dr-martin"] * 21}, 422),
        ({"software": "Mon LPS", "personas": ["p" * 41]}, 422),
        ({"software": "Mon\x07LPS"}, 400),
        ({"software": "Mon LPS\r\nX-Injected: 1"}, 400),
        ({"software": "Mon LPS", "version": "2.1\x00"}, 400),
        ({"software": "Mon LPS", "personas": ["dr-nobody"]}, 400),
    ],
)
async def test_bad_campaign_requests_are_refused(
    mock_op: MockOperator, http: httpx.AsyncClient, body: dict[str, object], status: int
) -> None:
    answer = await http.post(API, json=body)
    assert answer.status_code == status
    assert await campaigns(mock_op) == 0


async def test_bad_form_fields_are_refused(mock_op: MockOperator, http: httpx.AsyncClient) -> None:
    assert mock_op.psc is not None
    token = mock_op.psc.page_token
    for software in ("x" * 201, "Mon\x1bLPS", "   "):
        answer = await http.post("/conformance", data={"token": token, "software": software})
        assert answer.status_code in (303, 400)
        assert not answer.headers.get("location", "").startswith("/conformance/c")
    many = {f"persona_p{n}": "on" for n in range(30)}
    answer = await http.post("/conformance", data={"token": token, "software": "X", **many})
    assert answer.status_code in (303, 400)
    assert not answer.headers.get("location", "").startswith("/conformance/c")
    assert await campaigns(mock_op) == 0


@pytest.mark.parametrize(
    "campaign",
    [
        "c20990101-abcdef",
        "<img src=x onerror=alert(1)>" + "x" * 10_240,
        "c1%0d%0aSet-Cookie:%20a=b",
        "x" * 10_240,
    ],
)
async def test_unknown_campaigns_are_404_without_echo(
    mock_op: MockOperator, http: httpx.AsyncClient, campaign: str
) -> None:
    assert mock_op.psc is not None
    page_token = mock_op.psc.page_token
    for answer in (
        await http.get(f"{API}/{campaign}/report"),
        await http.post(f"{API}/{campaign}/close"),
        await http.get(f"/conformance/{campaign}"),
        await http.post(f"/conformance/{campaign}/close", data={"token": page_token}),
    ):
        assert answer.status_code == 404
        assert len(answer.text) < 4000
        assert "x" * 50 not in answer.text
        assert "onerror" not in answer.text
        assert "set-cookie" not in answer.headers
        assert "location" not in answer.headers


def _answer(blob: bytes, _challenge: bytes) -> bytes:
    return blob


def leaky_logins(mock: MockOperator, token: str) -> None:
    """An LPS that hands its token over every way: LOGIN's password (in plaintext, on
    loopback), AUTHENTICATE PLAIN and XOAUTH2, SMTP AUTH PLAIN."""
    client = imaplib.IMAP4("127.0.0.1", mock.imap_port, timeout=30)
    client.login(MARTIN, token)
    client.logout()
    for mechanism, blob in (
        ("PLAIN", f"\x00{MARTIN}\x00{token}".encode()),
        ("XOAUTH2", xoauth2_blob(MARTIN, token)),
    ):
        client = imaplib.IMAP4("127.0.0.1", mock.imap_port, timeout=30)
        client.authenticate(mechanism, functools.partial(_answer, blob))
        client.logout()


async def test_a_token_never_reaches_a_report(
    mock_op: MockOperator, http: httpx.AsyncClient
) -> None:
    opened = await http.post(API, json={"software": "Mon LPS"})
    campaign = opened.json()["id"]
    token = await persona_token(mock_op)
    await asyncio.to_thread(leaky_logins, mock_op, token)
    signature = token.rsplit(".", 1)[1]
    secrets = [
        signature,
        base64.b64encode(xoauth2_blob(MARTIN, token)).decode()[-40:],
        base64.b64encode(f"\x00{MARTIN}\x00{token}".encode()).decode()[-40:],
    ]
    report = await http.get(f"{API}/{campaign}/report", params={"format": "json"})
    statuses = {r["id"]: r["status"] for r in report.json()["results"]}
    assert statuses["sasl-token"] == "failed", "the logins were seen"
    for format in ("json", "junit", "html"):
        text = (await http.get(f"{API}/{campaign}/report", params={"format": format})).text
        assert not any(s in text for s in secrets), format
    page = await http.get(f"/conformance/{campaign}")
    assert page.status_code == 200
    assert signature not in page.text
    assert mock_op.observatory is not None
    stored = json.dumps([e.data for e in await mock_op.observatory.events(campaign)])
    assert signature not in stored, "not even in the database"


PREAUTH = 60  # the IMAP server itself cuts a client off past 64 commands before login


def flood(mock: MockOperator, token: str, commands: int) -> None:
    """CAPABILITY before the login, then NOOPs after it, pipelined."""
    client = imaplib.IMAP4("127.0.0.1", mock.imap_port, timeout=60)
    client.send(b"".join(b"p%d CAPABILITY\r\n" % n for n in range(PREAUTH)))
    _read_until(client, b"p%d " % (PREAUTH - 1))
    client.authenticate("XOAUTH2", lambda _: xoauth2_blob(MARTIN, token))
    client.send(b"".join(b"n%d NOOP\r\n" % n for n in range(commands)))
    _read_until(client, b"n%d " % (commands - 1))
    client.logout()


def _read_until(client: imaplib.IMAP4, tag: bytes) -> None:
    while not (line := client.readline()).startswith(tag):
        assert line, f"connection closed before {tag!r}"


async def test_a_flooding_client_cannot_grow_a_campaign_past_max_events(
    mock_op: MockOperator, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(observatory, "MAX_EVENTS", 300)
    opened = await http.post(API, json={"software": "Mon LPS"})
    campaign = opened.json()["id"]
    await asyncio.to_thread(flood, mock_op, await persona_token(mock_op), 1000)
    assert mock_op.observatory is not None
    events = await mock_op.observatory.events(campaign)
    assert len(events) == 301
    assert events[-1].kind == "truncated"
    held = [e for e in events if e.data.get("name") == "CAPABILITY"]
    assert len(held) == PREAUTH + 1  # imaplib's own, then the flood's, held until login
    report = await http.get(f"{API}/{campaign}/report", params={"format": "json"})
    assert report.status_code == 200
