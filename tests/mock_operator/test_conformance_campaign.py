"""A conformance campaign end to end: an LPS (imaplib, smtplib, httpx) works against the
mock's PSC, IMAP and SMTP, and the report judges what it did."""

from __future__ import annotations

import asyncio
import email
import imaplib
import json
import smtplib
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, make_msgid
from typing import Any

import httpx

from mock_operator.seed import cda_document
from mock_operator.server import MockOperator
from mock_operator.xdm import build_xdm
from tests.conftest import client_tls
from tests.support.conformance import campaign_results, open_campaign
from tests.support.sasl import xoauth2_blob
from tests.support.waiting import eventually

MARTIN = "claire.martin@medecin.mssante.fr"
MOREAU = "eve.moreau@medecin.mssante.fr"
NIL = "LPS-TEST-0001"


async def ciba_tokens(mock: MockOperator, idnat: str = "899700000001") -> dict[str, Any]:
    """Tokens as an LPS gets them: CIBA (approved at once here), then the token endpoint."""
    assert mock.psc is not None
    mock.psc.ciba._auto_approve_after = 0.0
    client = mock.psc.clients.get("lps-demo")
    assert client is not None
    auth = ("lps-demo", client.client_secret)
    oidc = f"{mock.issuer}/protocol/openid-connect"
    async with httpx.AsyncClient(timeout=10, verify=client_tls(), auth=auth) as http:
        started = await http.post(
            f"{oidc}/ext/ciba/auth",
            data={"scope": "openid scope_all", "login_hint": idnat, "channel": "MOBILE"},
        )
        started.raise_for_status()
        grant = "urn:openid:params:grant-type:ciba"
        answer = await http.post(
            f"{oidc}/token",
            data={"grant_type": grant, "auth_req_id": started.json()["auth_req_id"]},
        )
        answer.raise_for_status()
        refreshed = await http.post(
            f"{oidc}/token",
            data={"grant_type": "refresh_token", "refresh_token": answer.json()["refresh_token"]},
        )
        refreshed.raise_for_status()
    tokens: dict[str, Any] = refreshed.json()
    return tokens


def tls(mock: MockOperator) -> ssl.SSLContext:
    assert mock.tls_cert is not None
    return ssl.create_default_context(cafile=str(mock.tls_cert))


def imap_session(mock: MockOperator, token: str, work: Callable[[imaplib.IMAP4], Any]) -> Any:
    client = imaplib.IMAP4("localhost", mock.imap_port, timeout=30)
    try:
        client.starttls(tls(mock))
        client.xatom("ID", '("name" "Mon LPS" "version" "2.1")')
        client.authenticate("XOAUTH2", lambda _: xoauth2_blob(MARTIN, token))
        return work(client)
    finally:
        client.logout()


def xdm_report() -> EmailMessage:
    built = build_xdm(cda_document())
    message = EmailMessage()
    message["From"] = MARTIN
    message["To"] = MOREAU
    message["Subject"] = built.subject
    message["Date"] = format_datetime(email.utils.localtime())
    message["Message-ID"] = make_msgid(domain="medecin.mssante.fr")
    message["X-MSS-NIL"] = NIL
    message["Disposition-Notification-To"] = MARTIN
    for name, value in built.headers():
        message[name] = value
    message.set_content("Compte rendu ci-joint.\n")
    message.add_attachment(
        built.archive, maintype="application", subtype="zip", filename="IHE_XDM.ZIP"
    )
    return message


def smtp_session(mock: MockOperator, token: str, messages: list[email.message.Message]) -> None:
    with smtplib.SMTP("localhost", mock.smtp_port, timeout=30) as smtp:
        smtp.ehlo("mon-lps.example")
        smtp.starttls(context=tls(mock))
        smtp.ehlo("mon-lps.example")
        smtp.auth(
            "XOAUTH2",
            lambda challenge=None: xoauth2_blob(MARTIN, token).decode(),
            initial_response_ok=True,
        )
        for message in messages:  # a delivery notice asked for (RFC 3461), as ECO.2.3.1 wants
            smtp.send_message(message, mail_options=["RET=HDRS"], rcpt_options=["NOTIFY=SUCCESS"])


async def test_a_campaign_judges_what_the_lps_did(mock_op: MockOperator) -> None:
    started = await open_campaign(mock_op, client_id="lps-demo", personas=["dr-martin"])
    campaign = started["id"]
    tokens = await ciba_tokens(mock_op)
    token = tokens["access_token"]

    def read(client: imaplib.IMAP4) -> list[bytes]:
        client.select("INBOX")
        client.uid("SEARCH", "ALL")
        _, fetched = client.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
        return [part[1] for part in fetched if isinstance(part, tuple)]

    await asyncio.to_thread(imap_session, mock_op, token, lambda c: None)  # first login: samples
    await eventually(lambda: _delivered(mock_op, campaign), "the runner's test messages delivered")
    bodies = await asyncio.to_thread(imap_session, mock_op, token, read)
    asked = next(email.message_from_bytes(b) for b in bodies if b"Disposition-Notification-To" in b)
    await asyncio.to_thread(smtp_session, mock_op, token, [xdm_report(), mdn_for(asked)])

    results = await campaign_results(mock_op, campaign)
    passed = {k for k, r in results.items() if r["status"] == "passed"}
    assert {
        "starttls-imap",
        "starttls-smtp",
        "tls-version",
        "sni",
        "sasl-token",
        "token-client",
        "token-expired",
        "imap-id",
        "imap-uid",
        "imap-peek",
        "imap-logout",
        "from-bal",
        "message-id",
        "date",
        "header-encoding",
        "x-mss-nil",
        "xdm-archive",
        "x-mss-codecda",
        "x-mss-ins",
        "xdm-subject",
        "mdn-request",
        "mdn-send",
        "dsn-request",
        "reception-xdm",
        "reception-non-ascii",
        "reception-large",
    } <= passed, json.dumps(
        {k: (r["status"], r["detail"]) for k, r in results.items()}, ensure_ascii=False, indent=1
    )
    assert results["sni"]["detail"] == "SNI : localhost."


async def _delivered(mock: MockOperator, campaign: str) -> bool:
    assert mock.observatory is not None
    events = await mock.observatory.events(campaign)
    return sum(1 for e in events if e.kind == "delivered") == 4


def mdn_for(original: email.message.Message) -> MIMEMultipart:
    """A read receipt as RFC 8098 writes it: multipart/report, a human part, the fields."""
    report = MIMEMultipart("report", report_type="disposition-notification")
    report["From"] = MARTIN
    report["To"] = str(original["Disposition-Notification-To"])
    report["Subject"] = "Accusé de lecture"
    report["Date"] = format_datetime(email.utils.localtime())
    report["Message-ID"] = make_msgid(domain="medecin.mssante.fr")
    report["X-MSS-NIL"] = NIL
    report.attach(MIMEText("Votre message a été lu.\n", "plain", "utf-8"))
    original_id = "".join(str(original["Message-ID"]).split())
    fields = MIMEBase("message", "disposition-notification")
    fields.set_payload(
        "Reporting-UA: mon-lps.example; Mon LPS 2.1\r\n"
        f"Final-Recipient: rfc822;{MARTIN}\r\n"
        f"Original-Message-ID: {original_id}\r\n"
        "Disposition: manual-action/MDN-sent-manually; displayed\r\n"
    )
    report.attach(fields)
    return report


async def test_a_logout_at_psc_is_attributed_to_the_campaign(mock_op: MockOperator) -> None:
    """The software logging its user out of PSC (RP-initiated logout with the id token) is
    part of what a campaign records, under the software's client id and the person."""
    started = await open_campaign(mock_op, client_id="lps-demo", personas=["dr-martin"])
    campaign = started["id"]
    tokens = await ciba_tokens(mock_op)
    async with httpx.AsyncClient(timeout=10, verify=client_tls()) as http:
        answer = await http.get(
            f"{mock_op.issuer}/protocol/openid-connect/logout",
            params={"id_token_hint": tokens["id_token"]},
        )
    assert answer.status_code == 200
    assert mock_op.observatory is not None
    events = await mock_op.observatory.events(campaign)
    (logout,) = [e for e in events if e.kind == "logout"]
    assert logout.interface == "psc"
    assert (logout.data["client_id"], logout.data["idnat"]) == ("lps-demo", "899700000001")
    grants = [e.data["grant"] for e in events if e.kind == "token"]
    assert grants == ["urn:openid:params:grant-type:ciba", "refresh_token"]
