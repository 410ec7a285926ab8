"""Calling a running mock operator's historic web services as the trusted gateway does."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from mock_operator.server import MockOperator
from tests.conftest import client_tls


async def historic_call(
    mock: MockOperator, service: str, operation: str, payload: dict[str, Any]
) -> Any:
    """One REST call with the master credentials; the `<op>Output` content (asserts 200)."""
    assert mock.master is not None
    basic = base64.b64encode(f"{mock.master.user}:{mock.master.password}".encode()).decode()
    async with httpx.AsyncClient(timeout=10, verify=client_tls()) as http:
        answer = await http.post(
            f"{mock.http_url}/mss-msg-services/services/{service}/rest/v1/{operation}",
            json={f"{operation}Input": payload},
            headers={"Authorization": f"Basic {basic}", "NUMHOMOLOGATION": "LPS-TEST-1"},
        )
    assert answer.status_code == 200, answer.text
    return answer.json()[f"{operation}Output"]


async def historic_messages(
    mock: MockOperator, bal: str, folder_id: int | None = None, **query: Any
) -> list[dict[str, Any]]:
    """searchMessages on the mock, oldest first: every message of the folder (or of the
    BAL), as the web services answer it."""
    if folder_id is not None:
        query["folderId"] = folder_id
    criteria = {"limit": 1000, "sortBy": "DATE_ASC", "query": query}
    found = await historic_call(
        mock, "Item", "searchMessages", {"email": bal, "searchCriteria": criteria}
    )
    messages: list[dict[str, Any]] = found["messages"]
    assert found["total"] == len(messages)
    return messages


async def historic_send(
    mock: MockOperator, sender: str, to: str, subject: str, body: str = "Rappel."
) -> dict[str, Any]:
    """sendMessage from a historic BAL: the copy in its Sent folder."""
    sent = await historic_call(
        mock,
        "Item",
        "sendMessage",
        {
            "email": sender,
            "message": {
                "addresses": [{"address": to, "type": "TO"}],
                "subject": subject,
                "body": body,
            },
        },
    )
    message: dict[str, Any] = sent["message"]
    return message


async def historic_attachment(
    mock: MockOperator, bal: str, message: dict[str, Any], attachment: dict[str, Any]
) -> bytes:
    """downloadAttachment on the mock: the attachment's bytes, decoded."""
    found = await historic_call(
        mock,
        "Attachment",
        "downloadAttachment",
        {"email": bal, "messageId": message["messageId"], "part": attachment["part"]},
    )
    return base64.b64decode(found["file"])
