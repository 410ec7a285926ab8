"""Delivery status notifications as messages (`gateway.mss.dsn_report`), on bytes: the
RFC 3464 structure a mail reader parses, what RET returns and within which size, and no
field that could break out of its line."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import default

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mss.dsn_report import (
    MAX_HEADERS,
    RecipientStatus,
    delivery_report,
    header_block,
)

ARRIVAL = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC)
LETTER = (
    b"From: claire.martin@medecin.mssante.fr\r\nTo: eve.moreau@medecin.mssante.fr\r\n"
    b"Subject: Compte rendu\r\nX-MSS-NIL: LPS-1\r\n\r\nBonjour,\r\nCi-joint.\r\n"
)


def report(message: bytes = LETTER, **changes: object) -> bytes:
    values: dict[str, object] = {
        "reporting_mta": "smtp.example.fr",
        "sender": "claire.martin@medecin.mssante.fr",
        "recipients": [
            RecipientStatus("eve.moreau@medecin.mssante.fr", "relayed", "2.0.0"),
        ],
        "message": message,
        "arrival": ARRIVAL,
        "now": ARRIVAL + dt.timedelta(seconds=1),
    }
    values.update(changes)
    return delivery_report(**values)  # type: ignore[arg-type]


def parsed(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def parts(raw: bytes) -> list[Message]:
    notice = parsed(raw)
    assert notice.get_content_type() == "multipart/report"
    assert notice.get_param("report-type") == "delivery-status"
    found = list(notice.iter_parts())
    assert [p.get_content_type() for p in found[:2]] == ["text/plain", "message/delivery-status"]
    assert len(found) == 3
    return found


def test_a_relayed_notice_has_every_field_rfc_3464_asks() -> None:
    raw = report(
        recipients=[
            RecipientStatus(
                "eve.moreau@medecin.mssante.fr",
                "relayed",
                "2.0.0",
                original=("rfc822", "Eve.Moreau@medecin.mssante.fr"),
            ),
            RecipientStatus("luc.durand@infirmier.mssante.fr", "relayed", "2.0.0"),
        ],
        envid="QQ+314",
    )
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    text, status, headers = parts(raw)
    notice = parsed(raw)
    assert notice["Subject"] == "Avis de remise : message transmis"
    assert notice["Auto-Submitted"] == "auto-replied"
    assert notice["From"].addresses[0].addr_spec == "MAILER-DAEMON@smtp.example.fr"
    assert "transmis" in text.get_content()
    per_message, eve, luc = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; smtp.example.fr"
    assert per_message["Original-Envelope-Id"] == "QQ+314"
    assert per_message["Arrival-Date"] == "Mon, 07 Dec 2026 10:00:00 +0000"
    assert eve["Original-Recipient"] == "rfc822;Eve.Moreau@medecin.mssante.fr"
    assert eve["Final-Recipient"] == "rfc822; eve.moreau@medecin.mssante.fr"
    assert (eve["Action"], eve["Status"]) == ("relayed", "2.0.0")
    assert luc["Original-Recipient"] is None
    assert headers.get_content_type() == "text/rfc822-headers"  # RET absent: headers
    assert headers.get_content() == LETTER.split(b"\r\n\r\n")[0].decode() + "\r\n"


def test_ret_full_returns_the_message_as_itself() -> None:
    _, _, whole = parts(report(ret="FULL"))
    assert whole.get_content_type() == "message/rfc822"
    (returned,) = whole.get_payload()
    assert returned["Subject"] == "Compte rendu"
    assert "Ci-joint." in returned.get_content()
    assert b"Content-Transfer-Encoding: base64" not in report(ret="FULL")


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(LETTER + b"x" * 300_000 + b"\r\n", id="too-large"),
        pytest.param(LETTER + b"a\x00b\r\n", id="nul"),
        pytest.param(LETTER + b"y" * 2000 + b"\r\n", id="line-over-998"),
    ],
)
def test_ret_full_of_what_cannot_go_whole_returns_headers(message: bytes) -> None:
    raw = report(message, ret="FULL")
    text, _, headers = parts(raw)
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "en-têtes" in text.get_content()
    assert len(raw) < 8_000


def test_a_huge_header_block_is_cut_at_a_line_end() -> None:
    head = b"".join(b"X-Filler-%06d: %s\r\n" % (n, b"z" * 60) for n in range(5_000))
    block = header_block(head + b"\r\nbody\r\n")
    assert len(block) <= MAX_HEADERS
    assert block.endswith(b"\r\n")
    assert block.split(b"\r\n")[-2].startswith(b"X-Filler-")


def test_a_header_block_that_cannot_travel_as_text_is_base64() -> None:
    _, _, headers = parts(report(b"X-Odd: a\x00b\r\nSubject: s\r\n\r\nbody\r\n"))
    assert headers["Content-Transfer-Encoding"] == "base64"
    assert headers.get_content_type() == "text/rfc822-headers"


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"envid": "a\r\nSubject: forged"}, id="envid-crlf"),
        pytest.param({"envid": "a\x00"}, id="envid-nul"),
        pytest.param({"reporting_mta": "mta\nX: y"}, id="mta-lf"),
        pytest.param({"sender": "a@b.fr>\r\nBcc: c@d.fr"}, id="sender-crlf"),
        pytest.param(
            {
                "recipients": [
                    RecipientStatus("a@b.fr", "failed", "5.0.0", original=("rfc822", "x\ry"))
                ]
            },
            id="orcpt-cr",
        ),
        pytest.param(
            {"recipients": [RecipientStatus("a@b.fr", "failed", "5.0.0", diagnostic="s\n5")]},
            id="diagnostic-lf",
        ),
    ],
)
def test_a_control_character_never_reaches_a_field(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="control character"):
        report(**changes)


def test_a_final_recipient_out_of_printable_ascii_is_utf8_typed() -> None:
    raw = report(recipients=[RecipientStatus('"a\tb"@x.fr', "delivered", "2.0.0")])
    _, status, _ = parts(raw)
    assert status.get_payload()[1]["Final-Recipient"] == 'utf-8; "a\\x{9}b"@x.fr'
    raw = report(recipients=[RecipientStatus("zoé@x.fr", "delivered", "2.0.0")])
    assert b"Final-Recipient: utf-8; zo\\x{E9}@x.fr\r\n" in raw


def test_delay_and_failure_fields() -> None:
    retry = ARRIVAL + dt.timedelta(days=5)
    raw = report(
        recipients=[
            RecipientStatus(
                "a@b.fr",
                "delayed",
                "4.4.1",
                diagnostic="smtp; 451 4.4.1 Later",
                will_retry_until=retry,
            )
        ]
    )
    _, status, _ = parts(raw)
    block = status.get_payload()[1]
    assert block["Will-Retry-Until"] == "Sat, 12 Dec 2026 10:00:00 +0000"
    assert block["Diagnostic-Code"] == "smtp; 451 4.4.1 Later"
    assert parsed(raw)["Subject"] == "Avis de remise : remise retardée"


def test_no_recipient_no_report() -> None:
    with pytest.raises(ValueError, match="at least one"):
        report(recipients=[])


@given(st.binary(max_size=2_000), st.sampled_from([None, "FULL", "HDRS"]))
def test_any_message_gives_a_report_that_parses_in_three_parts(
    message: bytes, ret: str | None
) -> None:
    """Whatever the message held (a boundary of our own making, NUL, bare CR or LF), the
    report keeps its three parts."""
    message = b"X-B: =_dsn_00\r\n" + message
    parts(report(message, ret=ret))
