"""The modern platform's delivery notices, on its own SMTP (no gateway): a recipient on the
historic platform is delivered there and the success notice says so; a message the delay
address still holds when the mock stops is let go without a trace."""

from __future__ import annotations

import asyncio
import smtplib
import time
from email.parser import BytesParser
from email.policy import default

import pytest

from gateway.settings import MockSettings
from mock_operator.modern.dsn import DELAY_ADDRESS
from mock_operator.server import MockOperator
from tests.conftest import persona_token, quick_mock_settings
from tests.support.sasl import xoauth2_blob
from tests.support.waiting import until

MARTIN = "claire.martin@medecin.mssante.fr"  # modern
DUPONT = "jean.dupont@medecin.mssante.fr"  # historic


@pytest.fixture
def mock_settings() -> MockSettings:
    """The delay address holds its messages for a minute: longer than any test here."""
    return quick_mock_settings().model_copy(update={"dsn_delay": 60})


def send(mock: MockOperator, token: str, recipient: str, envid: str) -> None:
    with smtplib.SMTP("127.0.0.1", mock.smtp_port, timeout=10) as smtp:
        smtp.ehlo("lps.test")
        assert smtp.has_extn("dsn")
        smtp.auth("XOAUTH2", lambda: xoauth2_blob(MARTIN, token).decode())
        smtp.sendmail(
            MARTIN,
            [recipient],
            b"Subject: dsn\r\nX-MSS-NIL: T\r\n\r\nBonjour.\r\n",
            [f"ENVID={envid}", "RET=HDRS"],
            ["NOTIFY=SUCCESS,DELAY"],
        )


async def notices(mock: MockOperator, envid: str) -> list[bytes]:
    assert mock.platform is not None
    store = mock.platform.store(MARTIN)
    state = await store.folder_state("INBOX")
    found = [await store.fetch_message("INBOX", meta.uid) for meta in state.messages]
    return [raw for raw in found if f"Original-Envelope-Id: {envid}".encode() in raw]


async def test_a_recipient_on_the_historic_platform_is_reported_delivered(
    mock_op: MockOperator,
) -> None:
    token = await persona_token(mock_op, "dr-martin")
    await asyncio.to_thread(send, mock_op, token, DUPONT, "HIST1")
    (raw,) = await notices(mock_op, "HIST1")  # written before the 250
    notice = BytesParser(policy=default).parsebytes(raw)
    (status,) = [p for p in notice.walk() if p.get_content_type() == "message/delivery-status"]
    block = status.get_payload()[1]
    assert block["Final-Recipient"] == f"rfc822; {DUPONT}"
    assert (block["Action"], block["Status"]) == ("delivered", "2.0.0")


async def test_stopping_lets_a_held_message_go(mock_op: MockOperator) -> None:
    token = await persona_token(mock_op, "dr-martin")
    await asyncio.to_thread(send, mock_op, token, DELAY_ADDRESS, "HELD1")
    assert len(await notices(mock_op, "HELD1")) == 1  # delayed; delivered in a minute
    submission = mock_op.submission
    assert submission is not None
    await until(lambda: submission.held == 1, "the delivery to come is pending")
    started = time.monotonic()
    await mock_op.stop()
    assert time.monotonic() - started < 30
    assert submission.held == 0
