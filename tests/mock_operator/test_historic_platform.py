"""The historic platform inside a running mock operator: its web services on the mock's
HTTP port, the seeded historic BAL, and mail between the two platforms."""

from __future__ import annotations

import asyncio
import base64
import smtplib

from mock_operator.server import MockOperator
from tests.conftest import persona_token
from tests.historic import historic_call

DUPONT = "jean.dupont@medecin.mssante.fr"
MARTIN = "claire.martin@medecin.mssante.fr"


async def test_seeded_historic_bal_served_on_the_mock_http_port(mock_op: MockOperator):
    folders = await historic_call(mock_op, "Folder", "listFolders", {"email": DUPONT})
    ids = {f["id"] for f in folders["folders"]}
    assert {2, 3, 5, 6} <= ids
    found = await historic_call(
        mock_op, "Item", "searchMessages", {"email": DUPONT, "searchCriteria": {"limit": 50}}
    )
    assert found["total"] >= 3
    assert any(m["attachments"] for m in found["messages"])
    assert mock_op.historic is not None
    assert mock_op.historic.calls[-1].software == "LPS-TEST-1"
    assert await mock_op.platform.has_mailbox(DUPONT) is False  # type: ignore[union-attr]


async def test_modern_smtp_delivers_to_a_historic_bal(mock_op: MockOperator):
    token = await persona_token(mock_op, "dr-martin")
    message = (
        f"From: {MARTIN}\r\nTo: {DUPONT}\r\nSubject: Vers l'historique\r\n"
        "X-MSS-NIL: TEST\r\n\r\nBonjour Jean.\r\n"
    )

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", mock_op.smtp_port) as smtp:
            smtp.ehlo()
            blob = f"user={MARTIN}\x01auth=Bearer {token}\x01\x01".encode()
            smtp.docmd("AUTH", "XOAUTH2 " + base64.b64encode(blob).decode())
            smtp.sendmail(MARTIN, [DUPONT], message)

    await asyncio.to_thread(send)
    found = await historic_call(
        mock_op,
        "Item",
        "searchMessages",
        {"email": DUPONT, "searchCriteria": {"query": {"subject": "historique"}}},
    )
    (arrived,) = found["messages"]
    assert "Bonjour Jean." in arrived["body"]


async def test_historic_send_reaches_a_modern_bal(mock_op: MockOperator):
    await historic_call(
        mock_op,
        "Item",
        "sendMessage",
        {
            "email": DUPONT,
            "message": {
                "addresses": [{"address": MARTIN, "type": "TO"}],
                "subject": "Depuis l'historique",
                "body": "Bonjour Claire.",
            },
        },
    )
    assert mock_op.platform is not None
    store = mock_op.platform.store(MARTIN)
    state = await store.folder_state("INBOX")
    last = await store.fetch_message("INBOX", state.messages[-1].uid)
    assert b"Depuis l'historique" in last
    assert b"Bonjour Claire." in last
