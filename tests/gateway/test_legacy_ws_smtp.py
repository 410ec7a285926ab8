"""SMTP submission from a historic BAL, end to end on real sockets: the gateway's SMTP front
turns the message into one ``sendMessage`` on the mock's historic web services and answers
250 only once the platform took it (recipients on both platforms, attachments, every text
part kept, priority, read receipt, envelope BCC, refusals and the services down)."""

from __future__ import annotations

import asyncio
import os
import smtplib
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP as SMTP_POLICY
from email.policy import default
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest

from gateway.settings import MockSettings, Settings
from tests.gateway.test_legacy_ws_imap import closed_port, holds_both_texts, legacy, side_by_side
from tests.gateway.test_smtp_front import (
    NIL,
    client,
    message,
    metric,
    received,
    smtplib_session,
    subject,
)
from tests.historic import historic_attachment, historic_call, historic_messages
from tests.mss.builders import letter
from tests.support.stacks import Stack, configure_with, start_stack

__all__ = ["legacy"]  # the fixture, shared with the IMAP tests

DUPONT = "jean.dupont@medecin.mssante.fr"  # historic; dr-leroy: send; sec-bernard: read only
PETIT = "marie.petit@sage-femme.mssante.fr"  # historic
CLAIRE = "claire.martin@medecin.mssante.fr"  # modern
LUC = "luc.durand@infirmier.mssante.fr"  # modern
LEROY = "paul.leroy@medecin.mssante.fr"  # dr-leroy's own BAL (modern)
INBOX, SENT = 2, 5


async def titled(stack: Stack, bal: str, folder_id: int, title: str) -> list[Any]:
    """The messages of a historic folder with this exact subject."""
    return [m for m in await historic_messages(stack.mock, bal, folder_id) if m["subject"] == title]


def addresses(found: dict[str, Any], kind: str) -> set[str]:
    return {e["address"] for e in found["emails"] if e["type"] == kind}


def rich_message(title: str, attachment: bytes, **headers: str) -> bytes:
    msg = letter(DUPONT, PETIT, title, NIL)
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Bonjour,\n\nCi-joint le compte rendu.\n")
    msg.add_attachment(
        attachment, maintype="application", subtype="pdf", filename="compte-rendu.pdf"
    )
    return msg.as_bytes(policy=SMTP_POLICY)


def smtplib_send(stack: Stack, token: str, raw: bytes, recipients: list[str]) -> Any:
    """One message with smtplib, XOAUTH2 over loopback plaintext; sendmail's result."""
    with smtplib_session(stack.smtp_port, "", token) as smtp:
        return smtp.sendmail(DUPONT, recipients, raw)


async def stack_with(
    tmp_path: Path, settings: Settings, mock_settings: MockSettings, **backend: Any
) -> Stack:
    return await start_stack(settings, mock_settings, tmp_path / "mock", configure_with(**backend))


# -- sending -------------------------------------------------------------------------------


async def test_delegate_sends_to_both_platforms_with_a_copy_in_sent(legacy: Stack):
    title = subject()
    raw = message(DUPONT, f"{CLAIRE}, {PETIT}", title)
    async with client(legacy, "dr-leroy") as smtp:
        await smtp.mail(DUPONT)
        await smtp.rcpt(CLAIRE)
        await smtp.rcpt(PETIT)
        reply = await smtp.data(raw)
    assert reply.code == 250
    assert "historic message" in reply.message

    (modern,) = await received(legacy, CLAIRE, title)
    assert DUPONT.encode() in modern
    (historic,) = await titled(legacy, PETIT, INBOX, title)
    assert addresses(historic, "FROM") == {DUPONT}
    assert addresses(historic, "TO") == {CLAIRE, PETIT}
    (copy,) = await titled(legacy, DUPONT, SENT, title)
    assert "SENT_BY_ME" in copy["flags"]
    assert reply.message.endswith(copy["messageId"])
    assert metric(legacy, "lpsgw_messages_total", result="accepted") == 1

    # the historic message cannot carry Sender: the audit trail names the delegate
    assert legacy.gateway.audit is not None
    assert legacy.gateway.delegations is not None
    await legacy.gateway.audit.flush()
    events = await legacy.gateway.delegations.audit_for(DUPONT)
    (sent,) = [e for e in events if e.action == "sent"]
    assert sent.actor_idnat == "899700000006"
    assert f"sender={LEROY}" in (sent.detail or "")
    assert copy["messageId"] in (sent.detail or "")


async def test_attachment_priority_and_read_receipt(legacy: Stack):
    title = subject()
    data = os.urandom(3000) + b"\r\n\x00\xff"
    raw = rich_message(title, data, X_Priority="1 (Highest)", Disposition_Notification_To=DUPONT)
    token = await legacy.token("dr-dupont")
    refused = await asyncio.to_thread(smtplib_send, legacy, token, raw, [PETIT])
    assert refused == {}

    (found,) = await titled(legacy, PETIT, INBOX, title)
    assert found["priority"] == "HAUTE"
    assert found["isAccuse"] is True
    (attachment,) = found["attachments"]
    assert (attachment["fileName"], attachment["contentType"]) == (
        "compte-rendu.pdf",
        "application/pdf",
    )
    downloaded = await historic_attachment(legacy.mock, PETIT, found, attachment)
    assert downloaded == data


async def test_plain_message_is_normal_priority_without_receipt(legacy: Stack):
    title = subject()
    token = await legacy.token("dr-dupont")
    await asyncio.to_thread(smtplib_send, legacy, token, message(DUPONT, PETIT, title), [PETIT])
    (found,) = await titled(legacy, PETIT, INBOX, title)
    assert (found["priority"], found["isAccuse"], found["attachments"]) == ("NORMAL", False, [])


async def test_plain_and_html_side_by_side_both_reach_the_platform(legacy: Stack):
    """The text/plain part and a separate text/html part of a multipart/mixed both arrive:
    the first as the body, the other as an attachment. Before, the client got 250 and the
    plain text was lost."""
    title = subject()
    token = await legacy.token("dr-dupont")
    refused = await asyncio.to_thread(smtplib_send, legacy, token, side_by_side(title), [PETIT])
    assert refused == {}
    await holds_both_texts(legacy, PETIT, INBOX, title)
    await holds_both_texts(legacy, DUPONT, SENT, title)


async def test_a_forwarded_message_stays_readable_on_the_platform(legacy: Stack):
    """An attached message (message/rfc822) is kept whole, in the recipient's copy and in
    Sent. Before, the platform wrapped it in base64 like a file and read that back as a
    message made of base64 text."""
    forwarded = EmailMessage()
    forwarded["From"] = "labo@labo.mssante.fr"
    forwarded["Subject"] = "Résultats transmis"
    forwarded.set_content("Hémoglobine : 12,8 g/dL.\n")
    title = subject()
    msg = letter(DUPONT, PETIT, title, NIL)
    msg.set_content("Je vous transmets les résultats.\n")
    msg.add_attachment(forwarded)
    token = await legacy.token("dr-dupont")
    raw = msg.as_bytes(policy=SMTP_POLICY)
    assert await asyncio.to_thread(smtplib_send, legacy, token, raw, [PETIT]) == {}
    for bal, folder_id in ((PETIT, INBOX), (DUPONT, SENT)):
        (found,) = await titled(legacy, bal, folder_id, title)
        (attachment,) = found["attachments"]
        assert (attachment["fileName"], attachment["contentType"]) == (
            "message.eml",
            "message/rfc822",
        )
        downloaded = await historic_attachment(legacy.mock, bal, found, attachment)
        inner = BytesParser(policy=default).parsebytes(downloaded)
        assert inner["Subject"] == "Résultats transmis"
        assert inner.get_content().replace("\r\n", "\n") == "Hémoglobine : 12,8 g/dL.\n"


def read_receipt(title: str) -> bytes:
    """An RFC 8098 MDN as an LPS sends it when its user reads a message that asked for
    one: multipart/report of a text for people and the machine-readable report."""
    return (
        f"From: {DUPONT}\r\nTo: {PETIT}\r\nSubject: {title}\r\n"
        "Date: Mon, 07 Dec 2026 10:00:00 +0100\r\nMessage-ID: <mdn.1@medecin.mssante.fr>\r\n"
        f"X-MSS-NIL: {NIL}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=disposition-notification; boundary="R"\r\n'
        "\r\n--R\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Le message « Demande d'accusé de lecture » a été lu.\r\n"
        "\r\n--R\r\nContent-Type: message/disposition-notification\r\n\r\n"
        "Reporting-UA: lps.example; Mon LPS 4.2\r\n"
        f"Original-Recipient: rfc822;{DUPONT}\r\nFinal-Recipient: rfc822;{DUPONT}\r\n"
        "Original-Message-ID: <demande.7@sage-femme.mssante.fr>\r\n"
        "Disposition: manual-action/MDN-sent-manually; displayed\r\n"
        "\r\n--R--\r\n"
    ).encode()


async def test_a_read_receipt_keeps_its_report(legacy: Stack):
    """An MDN sent from a historic BAL (ECO.3.1.6, RFC 8098) is not flattened: the platform
    gets the text for people as the body and the report part whole, with its content type,
    in the recipient's copy and in Sent."""
    title = subject()
    token = await legacy.token("dr-dupont")
    assert await asyncio.to_thread(smtplib_send, legacy, token, read_receipt(title), [PETIT]) == {}
    for bal, folder_id in ((PETIT, INBOX), (DUPONT, SENT)):
        (found,) = await titled(legacy, bal, folder_id, title)
        assert "a été lu" in found["body"]
        (report,) = found["attachments"]
        assert report["contentType"] == "message/disposition-notification"
        fields = await historic_attachment(legacy.mock, bal, found, report)
        assert b"Disposition: manual-action/MDN-sent-manually; displayed" in fields
        assert b"Original-Message-ID: <demande.7@sage-femme.mssante.fr>" in fields
        assert f"Final-Recipient: rfc822;{DUPONT}".encode() in fields


async def test_the_envelope_decides_who_receives(legacy: Stack):
    """Bcc only in the envelope reaches its recipient unseen by the others; an address only
    in the headers receives nothing."""
    title = subject()
    raw = message(DUPONT, f"{PETIT}, {LUC}", title)
    async with client(legacy, "dr-dupont") as smtp:
        await smtp.mail(DUPONT)
        await smtp.rcpt(PETIT)
        await smtp.rcpt(CLAIRE)  # Bcc
        reply = await smtp.data(raw)
    assert reply.code == 250

    (hidden,) = await received(legacy, CLAIRE, title)
    assert CLAIRE.encode() not in hidden.split(b"\r\n\r\n", 1)[0]
    (visible,) = await titled(legacy, PETIT, INBOX, title)
    assert CLAIRE not in {e["address"] for e in visible["emails"]}
    assert await received(legacy, LUC, title) == []
    (copy,) = await titled(legacy, DUPONT, SENT, title)
    assert addresses(copy, "BCC") == {CLAIRE}
    assert LUC not in {e["address"] for e in copy["emails"]}


async def test_recipients_are_checked_locally(legacy: Stack):
    async with client(legacy, "dr-dupont") as smtp:
        await smtp.mail(DUPONT)
        bad = await smtp.execute_command(b"RCPT", b"TO:<someone@[192.0.2.1]>")
        assert bad.code == 553
        assert "5.1.3" in bad.message
        good = await smtp.execute_command(b"RCPT", f"TO:<{PETIT}>".encode())
        assert good.code == 250


# -- refusals ------------------------------------------------------------------------------


async def test_read_only_delegate_is_refused_at_mail_from(legacy: Stack):
    async with client(legacy, "sec-bernard", DUPONT) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.mail(DUPONT)
    assert refused.value.code == 550
    assert "5.7.1" in refused.value.message


async def test_mss_rules_apply_as_on_the_modern_path(legacy: Stack):
    title = subject()
    async with client(legacy, "dr-leroy") as smtp:
        await smtp.mail(DUPONT)
        await smtp.rcpt(PETIT)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.data(message(LEROY, PETIT, title))  # From: not the BAL sent from
    assert refused.value.code == 550
    assert "5.7.1" in refused.value.message
    assert await titled(legacy, DUPONT, SENT, title) == []


async def test_a_message_the_platform_cannot_hold_gets_its_status(legacy: Stack):
    title = subject() + " " + "x" * 250  # the historic subject limit is 250 characters
    async with client(legacy, "dr-dupont") as smtp:
        await smtp.mail(DUPONT)
        await smtp.rcpt(PETIT)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.data(message(DUPONT, PETIT, title))
    assert refused.value.code == 554
    assert refused.value.message.startswith("5.6.0")
    assert "subject" in refused.value.message
    assert metric(legacy, "lpsgw_messages_total", result="rejected") == 1
    sent = await historic_call(
        legacy.mock,
        "Item",
        "searchMessages",
        {"email": DUPONT, "searchCriteria": {"limit": 200, "query": {"folderId": SENT}}},
    )
    assert all(not m["subject"].startswith(title[:30]) for m in sent["messages"])


async def test_a_part_that_cannot_be_read_whole_is_refused_not_dropped(legacy: Stack):
    title = subject()
    async with client(legacy, "dr-dupont") as smtp:
        await smtp.mail(DUPONT)
        await smtp.rcpt(PETIT)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.data(side_by_side(title, garbled=True))
    assert refused.value.code == 554
    assert refused.value.message == "5.6.0 part 2: its base64 content cannot be decoded"
    assert await titled(legacy, PETIT, INBOX, title) == []
    assert await titled(legacy, DUPONT, SENT, title) == []


async def test_a_functional_error_of_the_platform_is_permanent(legacy: Stack):
    assert legacy.mock.historic is not None
    legacy.mock.historic.max_attachments_bytes = 100  # → code 32, attachments too large
    title = subject()
    token = await legacy.token("dr-dupont")
    raw = rich_message(title, os.urandom(1000))
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(smtplib_send, legacy, token, raw, [PETIT])
    assert refused.value.smtp_code == 552
    text = refused.value.smtp_error.decode()
    assert text.startswith("5.3.4")
    assert "(32)" in text
    assert await titled(legacy, DUPONT, SENT, title) == []
    assert metric(legacy, "lpsgw_messages_total", result="refused") == 1


async def test_historic_services_down_is_451_and_nothing_is_sent(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    down = f"http://127.0.0.1:{closed_port()}/mss-msg-services/services"
    stack = await stack_with(tmp_path, stack_settings, mock_settings, ws_url=down)
    try:
        title = subject()
        token = await stack.token("dr-dupont")
        raw = message(DUPONT, PETIT, title)
        with pytest.raises(smtplib.SMTPDataError) as deferred:
            await asyncio.to_thread(smtplib_send, stack, token, raw, [PETIT])
        assert deferred.value.smtp_code == 451
        assert deferred.value.smtp_error.startswith(b"4.4.1")
        assert await titled(stack, PETIT, INBOX, title) == []
        assert metric(stack, "lpsgw_messages_total", result="deferred") == 1
        errors = metric(
            stack,
            "lpsgw_backend_errors_total",
            backend="historic",
            protocol="smtp",
            kind="unavailable",
        )
        assert errors == 1
    finally:
        await stack.stop()


async def test_gateway_credentials_refused_is_451(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    stack = await stack_with(tmp_path, stack_settings, mock_settings, master_password="wrong")
    try:
        title = subject()
        async with client(stack, "dr-dupont") as smtp:
            await smtp.mail(DUPONT)
            await smtp.rcpt(PETIT)
            with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
                await smtp.data(message(DUPONT, PETIT, title))
        assert deferred.value.code == 451
        assert deferred.value.message.startswith("4.7.0")
        assert await titled(stack, PETIT, INBOX, title) == []
    finally:
        await stack.stop()


class LostAnswer:
    """An HTTP hop in front of the mock that loses the answer to sendMessage: it hangs up
    once the platform has answered (the message was sent, the gateway never hears so), or
    without forwarding the call at all (nothing was sent). Either way the gateway has no
    usable answer, and its look into Sent comes after the platform's work is done: the
    outcome depends on events, not on how fast a busy machine runs."""

    def __init__(self, forward: bool) -> None:
        self.forward = forward
        self.target = ""
        self.url = ""
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, path, _ = head[0].split(" ", 2)
                headers = dict(line.split(": ", 1) for line in head[1:] if line)
                length = int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))
                body = await reader.readexactly(length)
                lost = path.endswith("/sendMessage")
                if lost and not self.forward:
                    return  # hang up: nothing sent
                passed = {
                    k: v
                    for k, v in headers.items()
                    if k.lower() not in {"host", "content-length", "connection"}
                }
                async with httpx.AsyncClient() as http:
                    answer = await http.request(
                        method, self.target + path, content=body, headers=passed
                    )
                if lost:
                    return  # hang up once the platform has done it: the answer is lost
                writer.write(
                    f"HTTP/1.1 {answer.status_code} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(answer.content)}\r\n\r\n".encode()
                    + answer.content
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("forward", [True, False], ids=["sent-late", "never-sent"])
async def test_an_unanswered_send_is_looked_for_in_sent_before_451(
    forward: bool, tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    """The platform sent the message but its answer was lost: 250, not a 451 that would
    make the client send it twice. It never got it: 451, and the client keeps it."""
    hop = LostAnswer(forward)
    await hop.start()

    def configure(settings: Settings, mock: Any) -> None:
        hop.target = mock.http_url
        ws_url = f"{hop.url}/mss-msg-services/services"
        configure_with(ws_url=ws_url)(settings, mock)

    stack = await start_stack(stack_settings, mock_settings, tmp_path / "mock", configure)
    try:
        title = subject()
        async with client(stack, "dr-dupont") as smtp:
            await smtp.mail(DUPONT)
            await smtp.rcpt(PETIT)
            if forward:
                code, _ = await smtp.data(message(DUPONT, PETIT, title))
                assert code == 250
            else:
                with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
                    await smtp.data(message(DUPONT, PETIT, title))
                assert deferred.value.code == 451
        assert len(await titled(stack, PETIT, INBOX, title)) == (1 if forward else 0)
        assert len(await titled(stack, DUPONT, SENT, title)) == (1 if forward else 0)
    finally:
        await stack.stop()
        await hop.stop()
