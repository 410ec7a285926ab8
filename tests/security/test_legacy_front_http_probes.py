"""Hostile clients on the gateway's own historic web services (``/mss-msg-services`` on its
HTTP listener): oversized and chunked bodies, JSON and XML bombs, forged cards, cookies and
one-time passwords, BAL that are not the caller's. Each probe checks the exact refusal
(status, ``X-ErrorCode``, fault code) and that nothing leaked or changed: the BAL seen over
IMAP (or on the historic platform), no session opened, no secret in the logs, an audit
event for each refused access to a BAL.

The mock's own historic HTTP face has its probes in tests/mock_operator/test_historic_http.py
and the IMAP side of the legacy front in test_legacy_front_probes.py."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from cryptography import x509
from defusedxml.ElementTree import fromstring

from gateway.legacy_front.front import LegacyFront
from gateway.mss.historic_ws import NAMESPACE, SESSION_COOKIE
from gateway.settings import Settings
from mock_operator.historic.auth import CpsAuthority
from mock_operator.personas import default_personas
from mock_operator.server import MockOperator
from tests.conftest import client_tls, quick_mock_settings
from tests.gateway.legacy_front_support import DUPONT, MARTIN, ModernImap
from tests.historic import historic_messages
from tests.mock_operator.test_historic_http import (
    BILLION_LAUGHS,
    DEEP,
    EXTERNAL_ENTITY,
    PLAIN_DTD,
)
from tests.support.cards import authority_of, with_cards
from tests.support.stacks import Stack, configure_with, gateway_settings, running_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_BODY = 4 * 1024 * 1024  # [legacy_front] max_body of the probed gateway
SOFTWARE = "PROBE-LPS-1"
SERVICES = "/mss-msg-services/services"
ENVELOPE_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PERSONAS = default_personas()


def bal_of(persona: str) -> str:
    found = PERSONAS.get(persona)
    assert found is not None
    assert found.bal is not None
    return found.bal


def idnat_of(persona: str) -> str:
    found = PERSONAS.get(persona)
    assert found is not None
    return found.idnat


MOREAU = bal_of("dr-moreau")


def demo_like(settings: Settings, mock: MockOperator) -> None:
    """As `lps-gateway demo`: the modern and historic backends, the mock's card CA, and
    the gateway's own PSC client (for CIBA) with the mock's secret."""
    with_cards(configure_with())(settings, mock)
    assert mock.psc is not None
    client = mock.psc.clients.get(settings.ui.client_id)
    assert client is not None
    settings.ui.client_secret = client.client_secret


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway (cards trusted from loopback proxies, a 4 MiB legacy body cap) in front
    of the mock operator, for the whole module."""
    directory = tmp_path_factory.mktemp("legacy-http-probes")
    settings = gateway_settings(
        directory / "gateway",
        legacy_front={"max_body": MAX_BODY, "trusted_proxies": ["127.0.0.0/8"]},
        # every probe comes from loopback: the per-address throttle (tested on its own in
        # tests/legacy_front/test_auth.py) would end the module after ten refusals
        limits={"exempt_networks": ["127.0.0.0/8"]},
    )
    async with running_stack(
        settings, quick_mock_settings(), directory / "mock", demo_like
    ) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, trust_env=False, verify=client_tls()) as client:
        yield client


def legacy(stack: Stack) -> LegacyFront:
    assert stack.gateway.legacy is not None
    return stack.gateway.legacy


def url(stack: Stack, service: str, face: str, operation: str | None = None) -> str:
    tail = f"/{operation}" if operation else ""
    return f"{stack.gateway.http_url}{SERVICES}/{service}/{face}/v1{tail}"


def pem_headers(certificate: bytes, verify: str = "SUCCESS") -> dict[str, str]:
    """A certificate as a trusted front proxy passes it on."""
    return {"ssl_client_verify": verify, "ssl_client_cert": quote(certificate.decode("ascii"))}


def card(stack: Stack, persona: str, **issue: Any) -> dict[str, str]:
    someone = PERSONAS.get(persona)
    assert someone is not None
    certificate, _key = authority_of(stack.mock).issue(someone, **issue)
    return {**pem_headers(certificate), "NUMHOMOLOGATION": SOFTWARE}


def rest_json(operation: str, payload: Mapping[str, Any]) -> bytes:
    return json.dumps({f"{operation}Input": payload}).encode()


def envelope(element: str, inner: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{ENVELOPE_NS}"'
        f' xmlns:m="{NAMESPACE}"><soap:Body><m:{element}>{inner}</m:{element}>'
        "</soap:Body></soap:Envelope>"
    ).encode()


def rest_refusal(answer: httpx.Response) -> tuple[int, str, int]:
    error = answer.json()["error"]
    return answer.status_code, error["type"], error["code"]


def fault(answer: httpx.Response) -> tuple[int, str, int]:
    """(status, faultcode, code of the detail) of a SOAP fault."""
    root = fromstring(answer.content)
    found = root.find(f"{{{ENVELOPE_NS}}}Body/{{{ENVELOPE_NS}}}Fault")
    assert found is not None, answer.text
    codes = [e.text for e in found.iter() if str(e.tag).rsplit("}", 1)[-1] == "code"]
    assert len(codes) == 1, answer.text
    return answer.status_code, found.findtext("faultcode") or "", int(codes[0] or "0")


async def bal_state(stack: Stack, bal: str = MARTIN) -> tuple[list[str], Any, Any]:
    """What an IMAP client sees of a modern BAL: its folders, Inbox and Drafts."""
    imap = ModernImap(stack.mock, bal)
    drafts = await imap.special("\\Drafts")
    return sorted(await imap.folders()), await imap.messages("INBOX"), await imap.messages(drafts)


async def historic_state(stack: Stack, bal: str = DUPONT) -> list[Any]:
    """What the historic platform holds of `bal`: Inbox, Sent and Drafts with their flags."""
    return [
        sorted((m["messageId"], m["subject"], sorted(m["flags"])) for m in found)
        for found in [await historic_messages(stack.mock, bal, f) for f in (2, 5, 6)]
    ]


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the captured records hold: messages and structured extras."""
    return "\n".join(f"{r.getMessage()} {vars(r)!r}" for r in caplog.records)


def assert_not_logged(caplog: pytest.LogCaptureFixture, *secrets_: str) -> None:
    text = logged(caplog)
    assert "historic_ws" in text or "legacy_front" in text, "nothing captured: probe is blind"
    for secret in secrets_:
        assert secret
        assert secret not in text, "a secret reached the logs"


async def audited(stack: Stack, bal: str) -> list[Any]:
    assert stack.gateway.audit is not None
    assert stack.gateway.delegations is not None
    await stack.gateway.audit.flush()
    return list(await stack.gateway.delegations.audit_for(bal, limit=200))


# -- bodies ------------------------------------------------------------------------------


async def raw_exchange(stack: Stack, head: str, body: bytes = b"") -> bytes:
    """Send a request head (and the start of a body) on a raw socket; what comes back
    before the server closes, without sending more."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.http_port)
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 16), 10)
    finally:
        writer.close()


async def test_declared_length_past_the_cap_is_answered_at_once(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    headers = card(stack, "dr-martin")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    for face, operation in (("rest", "listFolders"), ("soap", "listFolders")):
        answer = await raw_exchange(
            stack,
            f"POST {SERVICES}/Folder/{face}/v1/{operation} HTTP/1.1\r\nHost: probe\r\n{head}"
            f"Content-Type: application/json\r\nContent-Length: {1 << 30}\r\n\r\n",
            b"{",  # a 1 GiB body announced, one byte sent: the answer cannot wait for it
        )
        status, _, rest = answer.partition(b"\r\n")
        if face == "rest":
            assert status == b"HTTP/1.1 400 Bad Request", answer[:200]
            assert b'"code":39' in rest
        else:
            assert status == b"HTTP/1.1 500 Internal Server Error", answer[:200]
            assert b"<code>39</code>" in rest
        assert b"connection: close" in rest.lower()
    # no credentials: refused before any body is read, whatever its size
    answer = await raw_exchange(
        stack,
        f"POST {SERVICES}/Folder/rest/v1/listFolders HTTP/1.1\r\nHost: probe\r\n"
        f"Content-Length: {1 << 40}\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"x-errorcode: 8" in answer.lower()


async def test_bodies_over_the_cap_are_39_and_not_kept(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    headers = card(stack, "dr-martin")
    before = await bal_state(stack)
    name = "x" * (MAX_BODY + 1024)  # an input that would create a folder, past the cap
    big = rest_json("createFolder", {"email": MARTIN, "name": name})
    answer = await http.post(
        url(stack, "Folder", "rest", "createFolder"), content=big, headers=headers
    )
    assert rest_refusal(answer) == (400, "FONCTIONNELLE", 39)
    assert answer.headers["connection"] == "close"

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the cap still applies
        yield b'{"createFolderInput": {"email": "' + MARTIN.encode() + b'", "name": "'
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"y" * 65536
        yield b'"}}'

    answer = await http.post(
        url(stack, "Folder", "soap", "createFolder"), content=chunked(), headers=headers
    )
    assert fault(answer) == (500, "soap:Client", 39)
    assert await bal_state(stack) == before
    # the front still serves (a new connection)
    listed = await http.post(
        url(stack, "Folder", "rest", "listFolders"),
        json={"listFoldersInput": {"email": MARTIN}},
        headers=headers,
    )
    assert listed.status_code == 200, listed.text


async def test_the_api_cap_stays_on_v1_but_a_1_mib_attachment_reaches_the_bal(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    token = await stack.token("dr-martin")
    filler = {"grantee_idnat": "899700000003", "rights": ["read"], "note": "z" * (1 << 20)}
    api = await http.post(
        f"{stack.gateway.http_url}/v1/mailboxes/{MARTIN}/delegations",
        json=filler,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert api.status_code == 413, api.text

    data = secrets.token_bytes(1 << 20)
    subject = f"probe 1 MiB {secrets.token_hex(4)}"
    message = {
        "subject": subject,
        "body": "pièce jointe d'un mégaoctet",
        "addresses": [{"address": MOREAU, "type": "TO"}],
        "attachments": [
            {
                "file": base64.b64encode(data).decode(),
                "fileName": "scan.bin",
                "contentType": "application/octet-stream",
            }
        ],
    }
    answer = await http.post(
        url(stack, "Item", "rest", "draftMessage"),
        json={"draftMessageInput": {"email": MARTIN, "message": message}},
        headers={"Authorization": f"Bearer {token}", "NUMHOMOLOGATION": SOFTWARE},
    )
    assert answer.status_code == 200, answer.text[:500]
    saved = answer.json()["draftMessageOutput"]["message"]
    fetched = await http.post(
        url(stack, "Attachment", "rest", "downloadAttachment"),
        json={
            "downloadAttachmentInput": {
                "email": MARTIN,
                "messageId": saved["messageId"],
                "part": saved["attachments"][0]["part"],
            }
        },
        headers={"Authorization": f"Bearer {token}", "NUMHOMOLOGATION": SOFTWARE},
    )
    assert base64.b64decode(fetched.json()["downloadAttachmentOutput"]["file"]) == data
    _, _, drafts = await bal_state(stack)
    assert subject in drafts


# -- JSON and XML -------------------------------------------------------------------------

NESTED = b'{"updateMessagesInput": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 36),
        (NESTED, 36),
        (b'{"updateMessagesInput": []}', 28),  # empty: as {}
        (b'{"listFoldersInput": {"email": "' + MARTIN.encode() + b'"}}', 36),  # another op
        (
            rest_json(
                "updateMessages",
                {"email": MARTIN, "messageIds": ["1"] * 1001, "operation": "DELETE"},
            ),
            39,
        ),
        (
            rest_json(
                "updateMessages", {"email": MARTIN, "messageIds": [{"a": 1}], "operation": "DELETE"}
            ),
            36,
        ),
        (rest_json("updateMessages", {"email": 5, "messageIds": ["1"], "operation": "DELETE"}), 24),
        (
            rest_json(
                "updateMessages", {"email": [MARTIN], "messageIds": ["1"], "operation": "DELETE"}
            ),
            24,
        ),
        (rest_json("updateMessages", {"email": MARTIN, "messageIds": ["1"], "operation": 7}), 36),
        (
            rest_json(
                "updateMessages", {"email": MARTIN, "messageIds": True, "operation": "DELETE"}
            ),
            36,
        ),
    ],
    ids=[
        "array-bomb",
        "object-nesting",
        "input-not-object",
        "other-operation",
        "1001-ids",
        "id-object",
        "email-number",
        "email-list",
        "operation-number",
        "ids-bool",
    ],
)
async def test_hostile_json_is_refused_and_changes_nothing(
    stack: Stack, http: httpx.AsyncClient, body: bytes, code: int
) -> None:
    before = await bal_state(stack)
    answer = await http.post(
        url(stack, "Item", "rest", "updateMessages"),
        content=body,
        headers={**card(stack, "dr-martin"), "Content-Type": "application/json"},
    )
    assert rest_refusal(answer) == (400, "FONCTIONNELLE", code), answer.text[:300]
    assert await bal_state(stack) == before


def with_listfolders_body(document: bytes) -> bytes:
    """The mock's hostile documents, aimed at listFolders on Claire's BAL."""
    return document.replace(b"listEmailsInput", b"listFoldersInput")


OVERSIZED = envelope("createFolderInput", f"<email>{MARTIN}</email><name>{'n' * 200_000}</name>")


@pytest.mark.parametrize(
    ("service", "operation", "body", "code"),
    [
        ("Folder", "listFolders", with_listfolders_body(BILLION_LAUGHS), 36),
        ("Folder", "listFolders", with_listfolders_body(EXTERNAL_ENTITY), 36),
        ("Folder", "listFolders", with_listfolders_body(PLAIN_DTD), 36),
        ("Folder", "listFolders", with_listfolders_body(DEEP), 36),
        ("Folder", None, OVERSIZED, 39),
        # a body element naming another service's operation, on the service address
        (
            "Folder",
            None,
            envelope(
                "updateMessagesInput",
                f"<email>{MARTIN}</email><messageIds>1</messageIds><operation>DELETE</operation>",
            ),
            36,
        ),
        # ... or another operation than the URL's
        (
            "Folder",
            "listFolders",
            envelope("createFolderInput", f"<email>{MARTIN}</email><name>evil</name>"),
            36,
        ),
        (
            "Annuaire",
            None,
            envelope("createFolderInput", f"<email>{MARTIN}</email><name>evil</name>"),
            36,
        ),
    ],
    ids=[
        "billion-laughs",
        "xxe",
        "dtd",
        "deep",
        "oversized-element",
        "other-service",
        "other-operation",
        "folder-op-on-annuaire",
    ],
)
async def test_hostile_soap_is_refused_and_changes_nothing(
    stack: Stack,
    http: httpx.AsyncClient,
    service: str,
    operation: str | None,
    body: bytes,
    code: int,
) -> None:
    before = await bal_state(stack)
    answer = await http.post(
        url(stack, service, "soap", operation),
        content=body,
        headers={**card(stack, "dr-martin"), "Content-Type": "text/xml; charset=utf-8"},
    )
    assert fault(answer) == (500, "soap:Client", code), answer.text[:300]
    assert b"root:" not in answer.content
    assert await bal_state(stack) == before


# -- authentication -------------------------------------------------------------------------


async def code_of(http: httpx.AsyncClient, stack: Stack, headers: Mapping[str, str]) -> str:
    """The X-ErrorCode of a refused listFolders on Claire's BAL (403 expected)."""
    answer = await http.post(
        url(stack, "Folder", "rest", "listFolders"),
        json={"listFoldersInput": {"email": MARTIN}},
        headers={"NUMHOMOLOGATION": SOFTWARE, **headers},
    )
    assert answer.status_code == 403, answer.text
    assert "set-cookie" not in answer.headers
    assert answer.json()["error"]["code"] == int(answer.headers["x-errorcode"])
    return answer.headers["x-errorcode"]


async def test_cards_of_another_ca_revoked_or_expired_are_17(
    stack: Stack, http: httpx.AsyncClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    martin = PERSONAS.get("dr-martin")
    assert martin is not None
    stranger = CpsAuthority.load_or_create(tmp_path / "stranger")  # same subject, other key
    forged, _ = stranger.issue(martin)
    expired, _ = authority_of(stack.mock).issue(martin, lifetime=-dt.timedelta(minutes=1))
    revoked, _ = authority_of(stack.mock).issue(martin)
    works = await http.post(
        url(stack, "Folder", "rest", "listFolders"),
        json={"listFoldersInput": {"email": MARTIN}},
        headers={**pem_headers(revoked), "NUMHOMOLOGATION": SOFTWARE},
    )
    assert works.status_code == 200, works.text  # until it is revoked
    authority_of(stack.mock).revoke(x509.load_pem_x509_certificate(revoked))
    for certificate in (forged, expired, revoked):
        assert await code_of(http, stack, pem_headers(certificate)) == "17"
    good, _ = authority_of(stack.mock).issue(martin)
    assert await code_of(http, stack, pem_headers(good, "FAILED:unable to verify")) == "17"
    assert await code_of(http, stack, pem_headers(b"not a certificate")) == "8"
    assert await code_of(http, stack, pem_headers(b"A" * 20_000)) == "8"
    assert (
        await code_of(
            http,
            stack,
            {"Authorization": "Basic " + base64.b64encode(b"lps-gateway:secret").decode()},
        )
        == "17"
    )
    assert await code_of(http, stack, {"Authorization": "Bearer not.a.token"}) == "17"
    assert await code_of(http, stack, {}) == "8"
    assert_not_logged(caplog, quote(good.decode()), "not.a.token")


async def test_card_headers_from_an_untrusted_peer_are_no_credentials(
    tmp_path: Path, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway whose trusted proxies exclude loopback: the headers of a perfectly good
    card count for nothing (8), the request is not served, and the card is not logged."""
    caplog.set_level(logging.INFO)
    settings = gateway_settings(
        tmp_path / "gateway", legacy_front={"trusted_proxies": ["10.0.0.0/8", "fd00::/8"]}
    )
    async with running_stack(
        settings, quick_mock_settings(), tmp_path / "mock", with_cards(configure_with())
    ) as untrusting:
        headers = card(untrusting, "dr-martin")
        for face in ("rest", "soap"):
            answer = await http.post(
                url(untrusting, "Folder", face, "listFolders"),
                content=rest_json("listFolders", {"email": MARTIN})
                if face == "rest"
                else envelope("listFoldersInput", f"<email>{MARTIN}</email>"),
                headers=headers,
            )
            assert answer.status_code == 403, answer.text
            assert answer.headers["x-errorcode"] == "8"
        assert any(r.getMessage() == "legacy_front.untrusted_cert_headers" for r in caplog.records)
        assert_not_logged(caplog, headers["ssl_client_cert"][:200])


async def test_huge_idnat_and_forged_cookies_open_nothing(
    stack: Stack, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    psc = stack.mock.psc
    assert psc is not None
    sessions = legacy(stack).sessions
    opened, pending = len(sessions), len(psc.ciba.pending())
    for idnat in ("8" * 4000, "899700000001\r\nX: y", "../../etc"):
        try:
            code = await code_of(http, stack, {"IDNAT": idnat, "PASSWORD": "x", "IDCANAL": "SMS"})
        except httpx.LocalProtocolError:  # a header httpx itself will not send
            continue
        assert code == "17"
    forged = [secrets.token_urlsafe(32), "A" * 129, "A" * 6000, "", "%00", "' OR 1=1 --"]
    for value in forged:
        assert await code_of(http, stack, {"Cookie": f"{SESSION_COOKIE}={value}"}) in (
            ("26",) if value else ("26", "8")
        ), value
    assert len(sessions) == opened
    assert len(psc.ciba.pending()) == pending
    assert_not_logged(caplog, forged[0], "A" * 129)


async def otp_call(
    http: httpx.AsyncClient, stack: Stack, idnat: str, **headers: str
) -> httpx.Response:
    return await http.post(
        url(stack, "Annuaire", "rest", "listEmails"),
        json={"listEmailsInput": {}},
        headers={"NUMHOMOLOGATION": SOFTWARE, "IDNAT": idnat, **headers},
    )


def pending_of(stack: Stack, persona: str) -> list[Any]:
    """The CIBA requests waiting for `persona`'s approval: what their phone shows."""
    assert stack.mock.psc is not None
    return [r for r in stack.mock.psc.ciba.pending() if r.persona == persona]


async def test_repeated_first_otp_requests_start_one_ciba_request(
    stack: Stack, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten LPS windows asking at once put one approval on Claire's phone, not ten; the code
    it shows opens one session, and neither the code nor the cookie is logged."""
    caplog.set_level(logging.INFO)  # what production logs
    idnat = idnat_of("dr-martin")
    first = await asyncio.gather(
        *(otp_call(http, stack, idnat, PASSWORD="x", IDCANAL="SMS") for _ in range(10))
    )
    assert {a.status_code for a in first} == {401}, first[0].text
    assert {a.headers["x-otp-required"] for a in first} == {"SMS"}
    (request,) = pending_of(stack, "dr-martin")
    again = await otp_call(http, stack, idnat, PASSWORD="x", IDCANAL="MAIL")
    assert again.status_code == 401
    assert pending_of(stack, "dr-martin") == [request]
    assert stack.mock.psc is not None
    assert stack.mock.psc.ciba.decide(request.auth_req_id, approve=True)
    opened = await otp_call(http, stack, idnat, OTP=request.binding_message)
    assert opened.status_code == 200, opened.text
    cookie = opened.cookies[SESSION_COOKIE]
    assert "httponly" in opened.headers["set-cookie"].lower()
    listed = await http.post(
        url(stack, "Annuaire", "rest", "listEmails"),
        json={"listEmailsInput": {}},
        headers={"NUMHOMOLOGATION": SOFTWARE, "Cookie": f"{SESSION_COOKIE}={cookie}"},
    )
    assert MARTIN in listed.json()["listEmailsOutput"]["emails"]
    assert_not_logged(caplog, request.binding_message, cookie, request.auth_req_id)


async def test_otp_brute_force_blocks_the_channel(
    stack: Stack, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # what production logs
    idnat = idnat_of("dr-moreau")
    sessions = legacy(stack).sessions
    opened = len(sessions)
    asked = await otp_call(http, stack, idnat, PASSWORD="x", IDCANAL="SMS")
    assert asked.status_code == 401
    (request,) = pending_of(stack, "dr-moreau")
    failures = stack.gateway.settings.legacy_front.otp_max_failures
    wrong = [f"{(int(request.binding_message) + n) % 10**6:06d}" for n in range(1, failures + 1)]
    codes = []
    for guess in wrong:
        answer = await otp_call(http, stack, idnat, OTP=guess)
        assert answer.status_code == 403
        assert "set-cookie" not in answer.headers
        codes.append(answer.headers["x-errorcode"])
    assert codes == ["17"] * (failures - 1) + ["44"]
    right = await otp_call(http, stack, idnat, OTP=request.binding_message)
    assert (right.status_code, right.headers["x-errorcode"]) == (403, "44")
    assert "set-cookie" not in right.headers
    # a new first request does not reopen the channel, nor ring the phone again
    blocked = await otp_call(http, stack, idnat, PASSWORD="x", IDCANAL="SMS")
    assert (blocked.status_code, blocked.headers["x-errorcode"]) == (403, "44")
    assert pending_of(stack, "dr-moreau") == [request]
    assert len(sessions) == opened
    assert_not_logged(caplog, request.binding_message, *wrong)
    # each refused login is audited under the person it named, no code in the trail
    trail = [e for e in await audited(stack, "") if e.actor_idnat == idnat]
    results = [e.result for e in trail if e.interface == "historic" and e.action == "login"]
    assert results.count("refused:17") == failures - 1
    assert results.count("refused:44") >= 3
    assert all(e.software for e in trail)
    assert not [e for e in trail if any(code in (e.detail or "") for code in wrong)]


# -- authorisation and audit ------------------------------------------------------------------


async def test_a_bal_not_yours_is_24_whether_it_exists_or_not_and_audited(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    headers = card(stack, "dr-martin")
    ghost = "personne.inconnue@medecin.mssante.fr"
    before = await bal_state(stack, MOREAU)
    answers: dict[str, Any] = {}
    for bal in (MOREAU, ghost):
        for face in ("rest", "soap"):
            answer = await http.post(
                url(stack, "Folder", face, "createFolder"),
                content=rest_json("createFolder", {"email": bal, "name": "intrus"})
                if face == "rest"
                else envelope("createFolderInput", f"<email>{bal}</email><name>intrus</name>"),
                headers=headers,
            )
            if face == "rest":
                assert rest_refusal(answer) == (400, "FONCTIONNELLE", 24)
                message = answer.json()["error"]["message"]
            else:
                assert fault(answer) == (500, "soap:Client", 24)
                message = fromstring(answer.content).findtext(".//message") or answer.text
            answers[f"{face}-{'real' if bal == MOREAU else 'ghost'}"] = message.replace(bal, "BAL")
    assert answers["rest-real"] == answers["rest-ghost"]
    assert answers["soap-real"] == answers["soap-ghost"]
    assert await bal_state(stack, MOREAU) == before
    trail = await audited(stack, MOREAU)
    refused = [e for e in trail if e.actor_idnat == idnat_of("dr-martin")]
    assert refused, trail
    assert all(e.result == "refused:FONCTIONNELLE 24" for e in refused)
    assert {e.software for e in refused} == {SOFTWARE}


async def test_a_read_only_delegate_cannot_write_or_send(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """Sophie BERNARD reads Jean DUPONT's historic BAL (passed through) and nothing more."""
    headers = card(stack, "sec-bernard")
    before = await historic_state(stack)
    found = await http.post(
        url(stack, "Item", "rest", "searchMessages"),
        json={
            "searchMessagesInput": {"email": DUPONT, "searchCriteria": {"query": {"folderId": 2}}}
        },
        headers=headers,
    )
    assert found.status_code == 200, found.text
    some = found.json()["searchMessagesOutput"]["messages"][0]["messageId"]
    message = {
        "subject": "au nom de Jean",
        "body": "b",
        "addresses": [{"address": MOREAU, "type": "TO"}],
    }
    writes = [
        ("Item", "updateMessages", {"messageIds": [some], "operation": "FLAGGED"}),
        ("Item", "updateMessages", {"messageIds": [some], "operation": "DELETE"}),
        ("Item", "moveMessages", {"messageIds": [some], "destinationFolderId": 3}),
        ("Item", "draftMessage", {"message": message}),
        ("Item", "sendMessage", {"message": message}),
        ("Folder", "createFolder", {"name": "intrus"}),
        ("Folder", "emptyFolder", {"folderId": 2}),
    ]
    for service, operation, payload in writes:
        answer = await http.post(
            url(stack, service, "rest", operation),
            json={f"{operation}Input": {"email": DUPONT, **payload}},
            headers=headers,
        )
        assert rest_refusal(answer) == (400, "FONCTIONNELLE", 24), (operation, answer.text)
    assert await historic_state(stack) == before
    trail = await audited(stack, DUPONT)
    refused = [
        e
        for e in trail
        if e.actor_idnat == idnat_of("sec-bernard") and e.result.startswith("refused")
    ]
    assert len(refused) >= len(writes)
    assert {e.software for e in refused} == {SOFTWARE}
    assert {e.detail.split(" ")[0] for e in refused} >= {f"{s}/{o}" for s, o, _ in writes}
