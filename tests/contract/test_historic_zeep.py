"""A schema-driven SOAP client, as historic LPS use (JAX-WS, WCF): zeep, generated from
each service's live WSDL, calls every operation of every service on each target. Its
strict parser refuses any element out of the schema's order ("Unexpected element"), and
faults must come back as zeep `Fault`s carrying the historic code in their detail."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import requests
from zeep import Client, Settings
from zeep.exceptions import Fault
from zeep.helpers import serialize_object
from zeep.transports import Transport

from gateway.mss.historic_ws import (
    DRAFTS,
    FOLDER_MISSING,
    INBOX,
    MESSAGE_MISSING,
    NAMESPACE,
    OPERATIONS,
    SENT,
)
from tests.support.historic_contract import Target, soap_address
from tests.support.waiting import BOUND

pytestmark = pytest.mark.asyncio(loop_scope="module")

FILE = b"%PDF-1.4 compte rendu\r\n\x00\xff"


def zeep_clients(target: Target) -> dict[str, Client]:
    """One client per service, built from the WSDL fetched over HTTP with the target's
    authentication headers on every request."""
    session = requests.Session()
    session.headers.update(target.request_headers())
    transport = Transport(session=session, timeout=30, operation_timeout=30)
    settings = Settings(strict=True, xml_huge_tree=False)
    return {
        service: Client(
            target.endpoint(service, "soap") + "?wsdl", transport=transport, settings=settings
        )
        for service in OPERATIONS
    }


def plain(result: Any, name: str | None = None) -> Any:
    """A zeep answer as dicts and lists; `name`: the output's field (zeep unwraps an
    output element of a single field into that field's value)."""
    value = serialize_object(result, dict)
    if name is not None and isinstance(value, dict) and name in value:
        return value[name]
    return value


def fault_code(call: Callable[[], Any]) -> int:
    with pytest.raises(Fault) as raised:
        call()
    detail = raised.value.detail
    assert detail is not None
    code = detail.findtext(f"{{{NAMESPACE}}}ErreurFonctionnelle/code")
    assert code is not None, raised.value
    return int(code)


def every_operation(target: Target) -> set[str]:
    """Run every operation once (and some refusals); the operations called."""
    clients = zeep_clients(target)
    called: set[str] = set()

    def op(service: str, operation: str) -> Any:
        called.add(operation)
        return getattr(clients[service].service, operation)

    bal = target.bal
    mark = f"zeep-{uuid.uuid4().hex[:8]}"
    # Annuaire
    emails = plain(op("Annuaire", "listEmails")(email=bal), "emails")
    assert bal in [e.lower() for e in emails]
    search, address = target.recipient_search
    found = plain(op("Annuaire", "searchRecipient")(email=bal, searchString=search), "recipients")
    assert address in [a for r in found for a in r["addresses"]]
    # Folder
    folders = plain(op("Folder", "listFolders")(email=bal), "folders")
    assert {INBOX, SENT, DRAFTS} <= {f["id"] for f in folders}
    created = plain(op("Folder", "createFolder")(email=bal, name=mark), "folder")
    child = op("Folder", "createFolder")(email=bal, name="sous", parentId=created["id"])
    child_id = plain(child, "folder")["id"]
    op("Folder", "renameFolder")(email=bal, folderId=child_id, name="renommé")
    op("Folder", "moveFolder")(email=bal, folderId=child_id, parentId=INBOX)
    assert fault_code(lambda: op("Folder", "listFolders")(email=bal, folderId=987654)) == (
        FOLDER_MISSING
    )
    # Item: send to the BAL itself with a file, find it, read it, change it.
    sent = plain(
        op("Item", "sendMessage")(
            email=bal,
            message={
                "subject": mark,
                "body": "Bonjour",
                "priority": "HAUTE",
                "addresses": [{"address": bal, "type": "TO"}],
                "attachments": [
                    {"fileName": "cr.pdf", "contentType": "application/pdf", "file": FILE}
                ],
            },
        ),
        "message",
    )
    assert sent["folderId"] == SENT
    token = plain(op("Item", "syncMessages")(email=bal))["token"]
    criteria = {"limit": 10, "sortBy": "DATEDESC", "query": {"folderId": INBOX, "subject": mark}}
    deadline = time.monotonic() + BOUND
    while True:  # delivery may be asynchronous: poll the contract, as `eventually` does
        answer = plain(op("Item", "searchMessages")(email=bal, searchCriteria=criteria))
        messages: list[dict[str, Any]] = answer["messages"]
        if messages or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(messages) == 1, messages
    message = messages[0]
    assert message["priority"] == "HAUTE"
    part = message["attachments"][0]["part"]
    download = plain(
        op("Attachment", "downloadAttachment")(email=bal, messageId=message["messageId"], part=part)
    )
    assert download["file"] == FILE
    assert fault_code(
        lambda: op("Attachment", "downloadAttachment")(email=bal, messageId="2147480001", part="2")
    ) == (MESSAGE_MISSING)
    ids = [message["messageId"]]
    op("Item", "updateMessages")(email=bal, messageIds=ids, operation="FLAGGED")
    changes = plain(op("Item", "syncMessages")(email=bal, token=token))
    assert message["messageId"] in [m["messageId"] for m in changes["modifiedMessages"]]
    op("Item", "moveMessages")(email=bal, messageIds=ids, destinationFolderId=child_id)
    draft = plain(
        op("Item", "draftMessage")(email=bal, message={"subject": mark, "body": "brouillon"}),
        "message",
    )
    assert draft["folderId"] == DRAFTS
    # Clean up through the remaining operations.
    op("Folder", "emptyFolder")(email=bal, folderId=child_id)
    op("Folder", "trashFolder")(email=bal, folderId=child_id)
    op("Folder", "deleteFolder")(email=bal, folderId=child_id)
    op("Folder", "deleteFolder")(email=bal, folderId=created["id"])
    op("Item", "updateMessages")(
        email=bal, messageIds=[draft["messageId"], sent["messageId"]], operation="DELETE"
    )
    return called


async def test_zeep_calls_every_operation(target: Target) -> None:
    called = await asyncio.to_thread(every_operation, target)
    assert called == {op for ops in OPERATIONS.values() for op in ops}


@pytest.mark.parametrize("service", sorted(OPERATIONS))
async def test_wsdl_addresses_the_serving_url(target: Target, service: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(target.endpoint(service, "soap") + "?wsdl")
    assert answer.status_code == 200
    assert soap_address(answer.content) == target.endpoint(service, "soap")
