"""Delivery status notifications (RFC 3461/3464) through the gateway, end to end: smtplib
asks for them with RET, ENVID, NOTIFY and ORCPT; the notices are read back with imaplib
through the gateway's IMAP and parsed with `email`.

* the mock's modern platform offers DSN: the gateway carries the parameters, the platform
  sends the notices (delivered, and its delay and failure test addresses);
* the historic platform (web services) and an SMTP platform without DSN cannot: the
  gateway writes the "relayed" notice itself into the sender BAL's INBOX.
"""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import ssl
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.settings import MockSettings, Settings
from mock_operator.modern.dsn import DELAY_ADDRESS, FAIL_ADDRESS
from mock_operator.server import MockOperator
from tests.conftest import quick_mock_settings
from tests.gateway.test_smtp_front import message, smtplib_session, subject
from tests.support.sasl import xoauth2_blob
from tests.support.stacks import (
    Stack,
    configure_with,
    gateway_settings,
    historic_backend,
    running_stack,
)
from tests.support.waiting import eventually

CLAIRE = "claire.martin@medecin.mssante.fr"  # dr-martin's, modern
EVE = "eve.moreau@medecin.mssante.fr"  # modern
LUC = "luc.durand@infirmier.mssante.fr"  # modern
DUPONT = "jean.dupont@medecin.mssante.fr"  # dr-dupont's, historic
PETIT = "marie.petit@sage-femme.mssante.fr"  # historic
Report = tuple[EmailMessage, list[Message]]  # the notice, its delivery-status blocks


pytestmark = pytest.mark.asyncio(loop_scope="module")


def quick_delay() -> MockSettings:
    """The delay test address delivers after a fifth of a second."""
    return quick_mock_settings().model_copy(update={"dsn_delay": 0.2})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway in front of the mock for the module: every test has an ENVID of its
    own and looks for notices about it only."""
    directory = tmp_path_factory.mktemp("dsn")
    async with running_stack(
        gateway_settings(directory / "gateway"), quick_delay(), directory / "mock"
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def legacy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """The same with the historic backend as the demo has it (`with_historic_imap`)."""
    directory = tmp_path_factory.mktemp("dsn-historic")
    async with running_stack(
        gateway_settings(directory / "gateway"),
        quick_delay(),
        directory / "mock",
        with_historic_imap,
    ) as running:
        yield running


def with_historic_imap(settings: Settings, mock: MockOperator) -> None:
    """As the demo: the historic backend's tools go through the platform's own IMAP, which
    can append to INBOX (the web services alone append to Drafts only)."""
    configure_with()(settings, mock)
    settings.backends["historic"] = historic_backend(
        mock,
        historic_imap=True,
        imap_port=mock.historic_imap_port,
        imap_tls="starttls",
        ca_file=mock.tls_cert,
    )


def envelope_id() -> str:
    return f"LPS+{uuid.uuid4().hex[:16]}"  # a "+" to be encoded as xtext


def xtext(text: str) -> str:
    return text.replace("+", "+2B")


def send(
    stack: Stack,
    token: str,
    sender: str,
    recipients: list[str],
    raw: bytes,
    mail_options: list[str],
    rcpt_options: list[str],
) -> dict[str, Any]:
    """smtplib's sendmail through the gateway (blocking: run it in a thread)."""
    with smtplib_session(stack.smtp_port, sender, token) as smtp:
        refused: dict[str, Any] = smtp.sendmail(sender, recipients, raw, mail_options, rcpt_options)
        return refused


async def submit(
    stack: Stack,
    persona: str,
    sender: str,
    recipients: list[str],
    *,
    mail_options: list[str],
    rcpt_options: list[str],
    raw: bytes | None = None,
) -> None:
    token = await stack.token(persona)
    raw = raw or message(sender, ", ".join(recipients), subject())
    refused = await asyncio.to_thread(
        send, stack, token, sender, recipients, raw, mail_options, rcpt_options
    )
    assert refused == {}


def read_inbox(port: int, bal: str, token: str) -> list[EmailMessage]:
    """Every message of the BAL's INBOX, read with imaplib through the gateway."""
    with imaplib.IMAP4("127.0.0.1", port, timeout=30) as imap:
        status, _ = imap.authenticate("XOAUTH2", lambda _: xoauth2_blob(bal, token))
        assert status == "OK"
        imap.select("INBOX", readonly=True)
        status, fetched = imap.fetch("1:*", "(BODY.PEEK[])")
        assert status == "OK"
        parser = BytesParser(policy=default)
        found = []
        for item in fetched:
            if isinstance(item, tuple):
                parsed = parser.parsebytes(item[1])
                assert isinstance(parsed, EmailMessage)
                found.append(parsed)
        return found


async def reports(stack: Stack, persona: str, bal: str, envid: str) -> list[Report]:
    """The delivery status notices in the BAL's INBOX about the transaction `envid`."""
    token = await stack.token(persona)
    found = []
    for notice in await asyncio.to_thread(read_inbox, stack.imap_port, bal, token):
        for part in notice.walk():
            if part.get_content_type() != "message/delivery-status":
                continue
            blocks = part.get_payload()
            assert isinstance(blocks, list)
            if blocks and blocks[0]["Original-Envelope-Id"] == envid:
                found.append((notice, blocks))
    return found


async def until_reports(
    stack: Stack, persona: str, bal: str, envid: str, count: int
) -> list[Report]:
    found: list[Report] = []

    async def arrived() -> bool:
        found[:] = await reports(stack, persona, bal, envid)
        return len(found) >= count

    await eventually(arrived, f"{count} notice(s) about {envid} in {bal}'s INBOX")
    return found


def recipient_blocks(report: Report) -> dict[str, Message]:
    """Each recipient's block by Final-Recipient address (a rebuilt historic message may
    end its fields with an empty block)."""
    blocks = [b for b in report[1][1:] if b["Final-Recipient"] is not None]
    return {str(b["Final-Recipient"]).split(";", 1)[1].strip(): b for b in blocks}


def returned_part(notice: EmailMessage) -> EmailMessage:
    types = ("text/rfc822-headers", "message/rfc822")
    (part,) = [p for p in notice.walk() if p.get_content_type() in types]
    assert isinstance(part, EmailMessage)
    return part


# -- what the gateway says ------------------------------------------------------------------


async def test_ehlo_says_dsn_before_and_after_starttls(stack: Stack) -> None:
    def features() -> tuple[bool, bool, bool]:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as smtp:
            smtp.ehlo("lps-test")
            before = smtp.has_extn("dsn")
            smtp.starttls(context=context)
            smtp.ehlo("lps-test")
            after = smtp.has_extn("dsn")
        with smtplib.SMTP("127.0.0.1", stack.mock.smtp_port, timeout=30) as platform:
            platform.ehlo("lps-gateway")
            return before, after, platform.has_extn("dsn")

    assert await asyncio.to_thread(features) == (True, True, True)


# -- carried to the modern platform, which sends the notices -------------------------------


async def test_success_notice_of_the_platform_names_envid_and_orcpt(stack: Stack) -> None:
    envid = envelope_id()
    title = subject()
    await submit(
        stack,
        "dr-martin",
        CLAIRE,
        [EVE, LUC],
        raw=message(CLAIRE, f"{EVE}, {LUC}", title),
        mail_options=["RET=HDRS", f"ENVID={xtext(envid)}"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Eve.Moreau+2Bdsn@medecin.mssante.fr"],
    )
    (report,) = await until_reports(stack, "dr-martin", CLAIRE, envid, 1)
    notice, blocks = report
    assert notice.get_content_type() == "multipart/report"
    assert notice.get_param("report-type") == "delivery-status"
    assert notice["To"].addresses[0].addr_spec == CLAIRE
    assert notice["Auto-Submitted"] == "auto-replied"
    assert str(blocks[0]["Reporting-MTA"]).startswith("dns;")
    by_recipient = recipient_blocks(report)
    assert set(by_recipient) == {EVE, LUC}  # both asked, in one notice
    for block in by_recipient.values():
        assert (block["Action"], block["Status"]) == ("delivered", "2.0.0")
        # ORCPT decoded from xtext, as the client gave it (case kept)
        assert block["Original-Recipient"] == "rfc822;Eve.Moreau+dsn@medecin.mssante.fr"
    headers = returned_part(notice)  # RET=HDRS: the header block only
    assert headers.get_content_type() == "text/rfc822-headers"
    assert title in headers.get_content()
    assert "Ci-joint" not in headers.get_content()


async def test_without_notify_a_delivery_gives_no_notice(stack: Stack) -> None:
    """NOTIFY absent: failures and delays only (RFC 3461 §4.1). The success notice of a
    second message shows the first one's would have come by then."""
    quiet, loud = envelope_id(), envelope_id()
    for envid, rcpt_options in ((quiet, []), (loud, ["NOTIFY=SUCCESS"])):
        await submit(
            stack,
            "dr-martin",
            CLAIRE,
            [EVE],
            mail_options=[f"ENVID={xtext(envid)}"],
            rcpt_options=rcpt_options,
        )
    await until_reports(stack, "dr-martin", CLAIRE, loud, 1)
    assert await reports(stack, "dr-martin", CLAIRE, quiet) == []


async def test_delay_address_says_delayed_then_delivered(stack: Stack) -> None:
    envid = envelope_id()
    await submit(
        stack,
        "dr-martin",
        CLAIRE,
        [DELAY_ADDRESS],
        mail_options=[f"ENVID={xtext(envid)}"],
        rcpt_options=["NOTIFY=DELAY,SUCCESS"],
    )
    found = await until_reports(stack, "dr-martin", CLAIRE, envid, 2)
    actions = {}
    for report in found:
        (block,) = recipient_blocks(report).values()
        actions[block["Action"]] = block
    assert set(actions) == {"delayed", "delivered"}
    delayed = actions["delayed"]
    assert delayed["Status"] == "4.4.1"
    assert delayed["Will-Retry-Until"]
    assert str(delayed["Diagnostic-Code"]).startswith("smtp;")
    assert actions["delivered"]["Status"] == "2.0.0"


async def test_failure_address_fails_after_acceptance_with_the_message(stack: Stack) -> None:
    """Accepted at RCPT, then not delivered: a failure notice with NOTIFY absent (the
    default), and with RET=FULL the whole message returned."""
    envid = envelope_id()
    title = subject()
    await submit(
        stack,
        "dr-martin",
        CLAIRE,
        [FAIL_ADDRESS],
        raw=message(CLAIRE, FAIL_ADDRESS, title),
        mail_options=["RET=FULL", f"ENVID={xtext(envid)}"],
        rcpt_options=[],
    )
    (report,) = await until_reports(stack, "dr-martin", CLAIRE, envid, 1)
    (block,) = recipient_blocks(report).values()
    assert (block["Action"], block["Status"]) == ("failed", "5.2.2")
    assert "Original-Recipient" not in block  # no ORCPT given
    whole = returned_part(report[0])
    assert whole.get_content_type() == "message/rfc822"
    (returned,) = whole.iter_parts()
    assert returned["Subject"] == title
    assert "Ci-joint le compte rendu" in returned.get_content()


async def test_notify_never_produces_nothing(stack: Stack) -> None:
    """NEVER: not a word, whatever happens. A second message asking for everything shows
    when the first one's notices would all have come (its delayed delivery is later)."""
    never, loud = envelope_id(), envelope_id()
    for envid, notify in ((never, "NOTIFY=NEVER"), (loud, "NOTIFY=FAILURE,DELAY,SUCCESS")):
        await submit(
            stack,
            "dr-martin",
            CLAIRE,
            [FAIL_ADDRESS, DELAY_ADDRESS, EVE],
            mail_options=[f"ENVID={xtext(envid)}"],
            rcpt_options=[notify],
        )
    # delivered (Eve), failed, delayed, then delivered late
    await until_reports(stack, "dr-martin", CLAIRE, loud, 4)
    assert await reports(stack, "dr-martin", CLAIRE, never) == []


# -- platforms without DSN: the gateway's "relayed" notice ---------------------------------


async def test_historic_bal_gets_the_gateways_relayed_notice(legacy: Stack) -> None:
    envid = envelope_id()
    title = subject()
    await submit(
        legacy,
        "dr-dupont",
        DUPONT,
        [PETIT, CLAIRE],
        raw=message(DUPONT, f"{PETIT}, {CLAIRE}", title),
        mail_options=["RET=HDRS", f"ENVID={xtext(envid)}"],
        rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Marie.Petit@sage-femme.mssante.fr"],
    )
    # written before the 250: there already, in the sender's INBOX on the historic
    # platform, read through the gateway as any historic message
    (report,) = await reports(legacy, "dr-dupont", DUPONT, envid)
    by_recipient = recipient_blocks(report)
    assert set(by_recipient) == {PETIT, CLAIRE}
    for block in by_recipient.values():
        assert (block["Action"], block["Status"]) == ("relayed", "2.0.0")
    # the gateway reports it, under its `[smtp] hostname` (the machine's name by default)
    assert str(report[1][0]["Reporting-MTA"]) == f"dns; {legacy.gateway.settings.smtp.name()}"
    assert report[0]["Subject"] == "Avis de remise : message transmis"
    # kept by the platform as a body and files, it comes back a report (RFC 6522), its
    # returned headers readable as themselves, so that the LPS shows it as a notice
    notice = report[0]
    assert notice.get_content_type() == "multipart/report"
    assert notice.get_param("report-type") == "delivery-status"
    parts = notice.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert parts[2]["Content-Transfer-Encoding"] in ("7bit", "8bit")
    assert f"Subject: {title}".encode() in parts[2].get_payload(decode=True)
    assert legacy.gateway.audit is not None
    assert legacy.gateway.delegations is not None
    await legacy.gateway.audit.flush()
    events = await legacy.gateway.delegations.audit_for(DUPONT)  # newest first
    written = next(e for e in events if e.action == "append")
    assert written.actor_idnat == "899700000002"
    assert written.result == "ok"
    assert "relayed, 2 recipient(s)" in (written.detail or "")


async def test_smtp_platform_without_dsn_gets_the_params_kept_and_a_relayed_notice(
    tmp_path: Path,
) -> None:
    """The modern platform playing a server without DSN: the parameters are not passed on
    (it would answer 555), the message goes, and the gateway says "relayed"."""
    envid = envelope_id()
    plain = quick_mock_settings().model_copy(update={"smtp_dsn": False})
    async with running_stack(
        gateway_settings(tmp_path / "gateway"), plain, tmp_path / "mock"
    ) as stack:
        await submit(
            stack,
            "dr-martin",
            CLAIRE,
            [EVE, LUC],
            mail_options=["RET=FULL", f"ENVID={xtext(envid)}"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE"],
        )
        (report,) = await reports(stack, "dr-martin", CLAIRE, envid)
        by_recipient = recipient_blocks(report)
        assert set(by_recipient) == {EVE, LUC}
        assert {b["Action"] for b in by_recipient.values()} == {"relayed"}
        assert returned_part(report[0]).get_content_type() == "message/rfc822"


async def test_historic_notify_never_or_absent_writes_nothing(legacy: Stack) -> None:
    quiet, loud = envelope_id(), envelope_id()
    for envid, options in ((quiet, ["NOTIFY=NEVER"]), (quiet, []), (loud, ["NOTIFY=SUCCESS"])):
        await submit(
            legacy,
            "dr-dupont",
            DUPONT,
            [PETIT],
            mail_options=[f"ENVID={xtext(envid)}"],
            rcpt_options=options,
        )
    assert len(await reports(legacy, "dr-dupont", DUPONT, loud)) == 1
    assert await reports(legacy, "dr-dupont", DUPONT, quiet) == []


async def test_a_notice_that_cannot_be_written_costs_the_message_nothing(tmp_path: Path) -> None:
    """The historic web services alone append to Drafts only: the message is sent (250),
    the notice is not, and the audit trail says so."""
    envid = envelope_id()
    async with running_stack(
        gateway_settings(tmp_path / "gateway"), quick_delay(), tmp_path / "mock", configure_with()
    ) as legacy:
        await submit(
            legacy,
            "dr-dupont",
            DUPONT,
            [PETIT],
            mail_options=[f"ENVID={xtext(envid)}"],
            rcpt_options=["NOTIFY=SUCCESS"],
        )
        assert legacy.gateway.audit is not None
        assert legacy.gateway.delegations is not None
        await legacy.gateway.audit.flush()
        events = await legacy.gateway.delegations.audit_for(DUPONT)
        (written,) = [e for e in events if e.action == "append"]
        assert written.result.startswith("failed:")
        assert [e for e in events if e.action == "sent"]
        assert await reports(legacy, "dr-dupont", DUPONT, envid) == []
