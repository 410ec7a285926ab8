"""The historic web services' contract (DOMAIN.md §4), over HTTP, for every target of
`conftest.TARGETS` and both faces (REST and SOAP twins). Content-agnostic: each test makes
its own messages and folders (names carry a fresh tag), never relies on seeded contents,
and cleans what it leaves where it matters. Every SOAP answer and fault is validated
against the schema of the service's own WSDL (`HistoricClient.post`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.mss.historic_ws import (
    ATTACHMENT_MISSING,
    ATTACHMENTS_TOO_LARGE,
    CONTENT_TOO_LARGE,
    DRAFTS,
    EMAIL_INVALID,
    EMAIL_MISSING,
    FIELD_MISSING,
    FOLDER_DUPLICATE,
    FOLDER_MISSING,
    INBOX,
    INVALID_FORMAT,
    MAX_BODY,
    MAX_RECIPIENT_SEARCH,
    MAX_SUBJECT,
    MESSAGE_MISSING,
    SENT,
    TRASH,
)
from tests.conftest import client_tls
from tests.support.historic_contract import Face, HistoricClient, Target, attachment
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = 1
NO_SUCH_ID = "2147480001"
BINARY = bytes(range(256)) * 3 + b"\r\n\x00fin"


@pytest_asyncio.fixture(loop_scope="module", params=["rest", "soap"])
async def client(target: Target, request: pytest.FixtureRequest) -> AsyncIterator[HistoricClient]:
    face: Face = request.param
    async with httpx.AsyncClient(timeout=30, verify=client_tls()) as http:
        yield HistoricClient(target, http, face)


def tag() -> str:
    return f"ct-{uuid.uuid4().hex[:10]}"


async def to_self(client: HistoricClient, subject: str, **message: Any) -> dict[str, Any]:
    """Send a message to the BAL itself; its copy in the Inbox once delivered."""
    await client.send(
        {"addresses": [{"address": client.target.bal, "type": "TO"}], "subject": subject, **message}
    )
    return await arrived(client, subject)


async def arrived(client: HistoricClient, subject: str, folder: int = INBOX) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def there() -> bool:
        found[:] = (await client.search(folderId=folder, subject=subject))["messages"]
        return bool(found)

    await eventually(there, f"{subject} in folder {folder}")
    assert len(found) == 1, found
    return found[0]


async def in_folder(client: HistoricClient, subject: str, folder: int) -> list[str]:
    return [
        m["messageId"] for m in (await client.search(folderId=folder, subject=subject))["messages"]
    ]


async def delete(client: HistoricClient, *message_ids: str) -> None:
    await client.ok(
        "Item", "updateMessages", client.mine(messageIds=list(message_ids), operation="DELETE")
    )


# -- Annuaire -------------------------------------------------------------------------------


async def test_list_emails_names_the_bal(client: HistoricClient) -> None:
    emails = (await client.ok("Annuaire", "listEmails", client.mine()))["emails"]
    assert client.target.bal in [e.lower() for e in emails]


async def test_search_recipient(client: HistoricClient) -> None:
    search, address = client.target.recipient_search
    found = await client.ok("Annuaire", "searchRecipient", client.mine(searchString=search))
    addresses = [a for r in found["recipients"] for a in r.get("addresses", [])]
    assert address in addresses
    longest = "z" * MAX_RECIPIENT_SEARCH
    assert (await client.call("Annuaire", "searchRecipient", client.mine(searchString=longest)))[
        0
    ] == "ok"
    too_long = client.mine(searchString=longest + "z")
    assert await client.code("Annuaire", "searchRecipient", too_long) == CONTENT_TOO_LARGE


# -- Folder ---------------------------------------------------------------------------------


async def test_well_known_folders(client: HistoricClient) -> None:
    folders = (await client.ok("Folder", "listFolders", client.mine()))["folders"]
    ids = {f["id"] for f in folders}
    assert {INBOX, TRASH, SENT, DRAFTS} <= ids
    assert all(f["parentId"] == ROOT for f in folders)
    inbox = (await client.ok("Folder", "listFolders", client.mine(folderId=INBOX)))["folders"]
    assert [f["id"] for f in inbox] == [INBOX]
    assert {"name", "unreadCount", "totalCount"} <= set(inbox[0]) | {"unreadCount", "totalCount"}
    missing = client.mine(folderId=987654)
    assert await client.code("Folder", "listFolders", missing) == FOLDER_MISSING


async def test_folder_lifecycle(client: HistoricClient) -> None:
    name = tag()
    created = (await client.ok("Folder", "createFolder", client.mine(name=name)))["folder"]
    folder = created["id"]
    assert created["name"] == name
    assert created["parentId"] == ROOT
    assert await client.code("Folder", "createFolder", client.mine(name=name)) == FOLDER_DUPLICATE
    child = (await client.ok("Folder", "createFolder", client.mine(name="sous", parentId=folder)))[
        "folder"
    ]
    assert child["parentId"] == folder
    await client.ok("Folder", "renameFolder", client.mine(folderId=child["id"], name="renommé"))
    tree = (await client.ok("Folder", "listFolders", client.mine(folderId=folder)))["folders"]
    assert [c["name"] for c in tree[0]["children"]] == ["renommé"]
    # moveFolder: the child goes under the Inbox.
    await client.ok("Folder", "moveFolder", client.mine(folderId=child["id"], parentId=INBOX))
    inbox = (await client.ok("Folder", "listFolders", client.mine(folderId=INBOX)))["folders"]
    assert child["id"] in [c["id"] for c in inbox[0].get("children", [])]
    # A message moved in, then emptyFolder.
    subject = tag()
    message = await to_self(client, subject)
    moved = client.mine(messageIds=[message["messageId"]], destinationFolderId=child["id"])
    await client.ok("Item", "moveMessages", moved)
    assert await in_folder(client, subject, child["id"]) == [message["messageId"]]
    await client.ok("Folder", "emptyFolder", client.mine(folderId=child["id"]))
    assert await in_folder(client, subject, child["id"]) == []
    # trashFolder puts it under the Trash; deleteFolder removes it.
    await client.ok("Folder", "trashFolder", client.mine(folderId=child["id"]))
    trash = (await client.ok("Folder", "listFolders", client.mine(folderId=TRASH)))["folders"]
    assert child["id"] in [c["id"] for c in trash[0].get("children", [])]
    for gone in (child["id"], folder):
        await client.ok("Folder", "deleteFolder", client.mine(folderId=gone))
        assert await client.code("Folder", "listFolders", client.mine(folderId=gone)) == (
            FOLDER_MISSING
        )
    assert await client.code("Folder", "renameFolder", client.mine(folderId=folder, name="x")) == (
        FOLDER_MISSING
    )
    assert await client.code("Folder", "renameFolder", client.mine(folderId=INBOX)) == (
        FIELD_MISSING
    )


# -- Item: search and read ------------------------------------------------------------------


async def test_search_filters_paging_sorting_total(client: HistoricClient) -> None:
    mark = tag()
    bodies = {"A": "court", "B": "moyen " * 20, "C": f"long {mark}-needle " + "x" * 400}
    for letter, body in bodies.items():
        await client.send(
            {"addresses": [client.target.bal], "subject": f"{mark} {letter}", "body": body}
        )
    found: dict[str, Any] = {}

    async def all_there() -> bool:
        found.update(await client.search(folderId=INBOX, subject=mark))
        return int(found["total"]) == 3

    await eventually(all_there, "three messages in the Inbox")
    ascending = await client.search(folderId=INBOX, subject=mark, sortBy="SUBJECTASC")
    assert [m["subject"] for m in ascending["messages"]] == [f"{mark} {c}" for c in "ABC"]
    descending = await client.search(folderId=INBOX, subject=mark, sortBy="SUBJECTDESC")
    assert [m["subject"] for m in descending["messages"]] == [f"{mark} {c}" for c in "CBA"]
    page = await client.search(folderId=INBOX, subject=mark, sortBy="SUBJECTASC", limit=2, offset=1)
    assert [m["subject"] for m in page["messages"]] == [f"{mark} B", f"{mark} C"]
    assert page["total"] == 3
    by_size = await client.search(folderId=INBOX, subject=mark, sortBy="SIZEDESC")
    assert by_size["messages"][0]["subject"] == f"{mark} C"
    content = await client.search(folderId=INBOX, content=f"{mark}-needle")
    assert [m["subject"] for m in content["messages"]] == [f"{mark} C"]
    # Sent copies: isSent, and the Sent folder; without a folder, both.
    sent = await client.search(folderId=SENT, subject=mark)
    assert sent["total"] == 3
    assert all("SENT_BY_ME" in m.get("flags", []) for m in sent["messages"])
    assert (await client.search(subject=mark, isSent=True))["total"] == 3
    assert (await client.search(subject=mark))["total"] == 6
    # seen / flagged follow updateMessages.
    first = ascending["messages"][0]
    await client.ok(
        "Item", "updateMessages", client.mine(messageIds=[first["messageId"]], operation="READ")
    )
    unseen = await client.search(folderId=INBOX, subject=mark, seen=False)
    assert unseen["total"] == 2
    await client.ok(
        "Item", "updateMessages", client.mine(messageIds=[first["messageId"]], operation="FLAGGED")
    )
    flagged = await client.search(folderId=INBOX, subject=mark, flagged=True)
    assert [m["messageId"] for m in flagged["messages"]] == [first["messageId"]]
    ids = [m["messageId"] for m in ascending["messages"] + sent["messages"]]
    await delete(client, *ids)
    assert (await client.search(subject=mark))["total"] == 0


async def test_read_with_attachments_and_download(client: HistoricClient) -> None:
    subject = tag()
    text_file = b"Compte rendu\r\nligne 2\r\n"
    message = await to_self(
        client,
        subject,
        body="Voir pièces jointes.",
        attachments=[
            attachment("cr.txt", text_file, "text/plain"),
            attachment("image.bin", BINARY),
        ],
    )
    assert message["folderId"] == INBOX
    assert "ATTACHMENT" in message.get("flags", [])
    assert message["body"].strip().startswith("Voir pièces jointes.")
    for field in ("messageId", "conversationId", "size", "date"):
        assert field in message
    by_name = {a["fileName"]: a for a in message["attachments"]}
    assert set(by_name) == {"cr.txt", "image.bin"}
    assert by_name["cr.txt"]["contentType"].startswith("text/plain")
    downloaded = await client.download(message["messageId"], by_name["image.bin"]["part"])
    assert downloaded == BINARY
    assert await client.download(message["messageId"], by_name["cr.txt"]["part"]) == text_file
    missing_part = client.mine(messageId=message["messageId"], part="9.9")
    assert await client.code("Attachment", "downloadAttachment", missing_part) == (
        ATTACHMENT_MISSING
    )
    missing_message = client.mine(messageId=NO_SUCH_ID, part="2")
    assert await client.code("Attachment", "downloadAttachment", missing_message) == (
        MESSAGE_MISSING
    )
    await delete(client, message["messageId"])


# -- Item: changes --------------------------------------------------------------------------


async def flags_of(client: HistoricClient, subject: str, folder: int = INBOX) -> list[str]:
    flags: list[str] = (await arrived(client, subject, folder)).get("flags", [])
    return flags


async def test_update_operations(client: HistoricClient) -> None:
    subject = tag()
    message = await to_self(client, subject)
    ids = [message["messageId"]]

    async def update(operation: str) -> None:
        await client.ok("Item", "updateMessages", client.mine(messageIds=ids, operation=operation))

    assert "UNREAD" in message.get("flags", [])
    await update("READ")
    assert "UNREAD" not in await flags_of(client, subject)
    await update("UNREAD")
    assert "UNREAD" in await flags_of(client, subject)
    await update("FLAGGED")
    assert "FLAGGED" in await flags_of(client, subject)
    await update("UNFLAGGED")
    assert "FLAGGED" not in await flags_of(client, subject)
    await update("SPAM")
    assert await in_folder(client, subject, INBOX) == []
    await update("UNSPAM")
    assert await in_folder(client, subject, INBOX) == ids
    await update("TRASH")
    assert await in_folder(client, subject, TRASH) == ids
    assert await in_folder(client, subject, INBOX) == []
    await update("DELETE")
    assert await in_folder(client, subject, TRASH) == []
    burn = client.mine(messageIds=ids, operation="BURN")
    assert await client.code("Item", "updateMessages", burn) == INVALID_FORMAT
    no_ids = client.mine(operation="READ")
    assert await client.code("Item", "updateMessages", no_ids) == FIELD_MISSING


async def test_move_messages_keeps_the_id(client: HistoricClient) -> None:
    folder = (await client.ok("Folder", "createFolder", client.mine(name=tag())))["folder"]["id"]
    subject = tag()
    message = await to_self(client, subject)
    moved = client.mine(messageIds=[message["messageId"]], destinationFolderId=folder)
    await client.ok("Item", "moveMessages", moved)
    there = await arrived(client, subject, folder)
    assert there["messageId"] == message["messageId"]
    assert there["folderId"] == folder
    nowhere = client.mine(messageIds=[message["messageId"]], destinationFolderId=987654)
    assert await client.code("Item", "moveMessages", nowhere) == FOLDER_MISSING
    await client.ok("Folder", "deleteFolder", client.mine(folderId=folder))


async def test_draft_replace_keeps_id_then_send(client: HistoricClient) -> None:
    subject = tag()
    to = [{"address": client.target.bal, "type": "TO"}]
    first = await client.draft({"addresses": to, "subject": subject, "body": "v1"})
    assert first["folderId"] == DRAFTS
    assert "DRAFT" in first.get("flags", [])
    second = await client.draft(
        {"addresses": to, "subject": subject, "body": "v2", "messageId": first["messageId"]}
    )
    assert second["messageId"] == first["messageId"]
    drafts = (await client.search(folderId=DRAFTS, subject=subject))["messages"]
    assert [(d["messageId"], d["body"].strip()) for d in drafts] == [(first["messageId"], "v2")]
    # Sending the draft removes it from Drafts.
    await client.send({"addresses": to, "subject": subject, "messageId": first["messageId"]})
    received = await arrived(client, subject)
    assert await in_folder(client, subject, DRAFTS) == []
    not_a_draft = {"subject": subject, "messageId": received["messageId"]}
    assert await client.code("Item", "draftMessage", client.mine(message=not_a_draft)) == (
        MESSAGE_MISSING
    )
    await delete(client, received["messageId"], *await in_folder(client, subject, SENT))


async def test_send_with_attachment_reaches_the_recipient(client: HistoricClient) -> None:
    subject = tag()
    sent = await client.send(
        {
            "addresses": [
                {"address": client.target.other_bal, "type": "TO"},
                {"address": client.target.bal, "type": "CC"},
            ],
            "subject": subject,
            "body": "Bonjour,\r\nci-joint le compte rendu.",
            "priority": "HAUTE",
            "attachments": [attachment("cr.bin", BINARY)],
        }
    )
    assert sent["folderId"] == SENT
    assert "SENT_BY_ME" in sent.get("flags", [])
    assert [a["fileName"] for a in sent["attachments"]] == ["cr.bin"]
    types = {(e["address"].lower(), e["type"]) for e in sent["emails"]}
    assert {(client.target.other_bal, "TO"), (client.target.bal, "CC")} <= types
    copy = await arrived(client, subject)
    assert copy["priority"] == "HAUTE"
    assert await client.download(copy["messageId"], copy["attachments"][0]["part"]) == BINARY
    received = client.target.received
    if received is not None:
        got: dict[str, bytes] = {}

        async def delivered() -> bool:
            got.update(await received(client.target.other_bal, subject) or {})
            return bool(got)

        await eventually(delivered, f"{subject} delivered to {client.target.other_bal}")
        assert got == {"cr.bin": BINARY}
    await delete(client, copy["messageId"], sent["messageId"])


async def test_sync_tokens(client: HistoricClient) -> None:
    start = (await client.ok("Item", "syncMessages", client.mine()))["token"]
    subject = tag()
    message = await to_self(client, subject)
    changed = await client.ok("Item", "syncMessages", client.mine(token=start))
    modified = {m["messageId"]: m for m in changed.get("modifiedMessages", [])}
    assert message["messageId"] in modified
    assert modified[message["messageId"]]["subject"] == subject
    after = changed["token"]
    await delete(client, message["messageId"], *await in_folder(client, subject, SENT))
    gone = await client.ok("Item", "syncMessages", client.mine(token=after))
    assert message["messageId"] in gone.get("deletedMessageIds", [])
    assert message["messageId"] not in {m["messageId"] for m in gone.get("modifiedMessages", [])}
    assert await client.code("Item", "syncMessages", client.mine(token="abc")) == INVALID_FORMAT


# -- refusals -------------------------------------------------------------------------------


async def test_email_missing_and_invalid(client: HistoricClient) -> None:
    assert await client.code("Folder", "listFolders", {}) == EMAIL_MISSING
    assert await client.code("Folder", "listFolders", {"email": "pas une adresse"}) == (
        EMAIL_INVALID
    )


async def test_mandatory_fields_and_formats(client: HistoricClient) -> None:
    assert await client.code("Folder", "createFolder", client.mine()) == FIELD_MISSING
    no_recipient = client.mine(message={"subject": tag()})
    assert await client.code("Item", "sendMessage", no_recipient) == FIELD_MISSING
    bad_limit = client.mine(searchCriteria={"limit": "many"})
    assert await client.code("Item", "searchMessages", bad_limit) == INVALID_FORMAT
    bad_sort = client.mine(searchCriteria={"sortBy": "SIDEWAYS"})
    assert await client.code("Item", "searchMessages", bad_sort) == INVALID_FORMAT
    bad_priority = client.mine(message={"subject": tag(), "priority": "URGENTISSIME"})
    assert await client.code("Item", "draftMessage", bad_priority) == INVALID_FORMAT
    bad_file = client.mine(
        message={"subject": tag(), "attachments": [{"file": "%%%", "fileName": "a"}]}
    )
    assert await client.code("Item", "draftMessage", bad_file) == INVALID_FORMAT


async def test_subject_and_body_limits(client: HistoricClient) -> None:
    subject = tag()
    longest = (subject + " " + "s" * MAX_SUBJECT)[:MAX_SUBJECT]
    draft = await client.draft({"subject": longest, "body": "b" * MAX_BODY})
    assert draft["subject"] == longest
    await delete(client, draft["messageId"])
    too_long = client.mine(message={"subject": longest + "s", "body": "b"})
    assert await client.code("Item", "draftMessage", too_long) == CONTENT_TOO_LARGE
    too_big = client.mine(message={"subject": subject, "body": "b" * (MAX_BODY + 1)})
    assert await client.code("Item", "draftMessage", too_big) == CONTENT_TOO_LARGE
    to_other = {"addresses": [client.target.other_bal], "subject": longest + "s"}
    assert await client.code("Item", "sendMessage", client.mine(message=to_other)) == (
        CONTENT_TOO_LARGE
    )


async def test_attachments_too_large_is_32(client: HistoricClient) -> None:
    big = attachment("gros.bin", b"\0" * (client.target.attachments_limit + 1))
    message = {"subject": tag(), "attachments": [big]}
    assert await client.code("Item", "draftMessage", client.mine(message=message)) == (
        ATTACHMENTS_TOO_LARGE
    )


@pytest.mark.parametrize(
    ("rest", "soap"),
    [
        (b"{not json", b"<not xml"),
        (b"[1, 2]", b"<a/>"),
        (
            b'{"listFoldersInput": 7}',
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
            b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
            b"<soap:Body>&a;</soap:Body></soap:Envelope>",
        ),
        (b"[" * 100 + b"]" * 100, b"<a>" * 100 + b"</a>" * 100),
    ],
)
async def test_malformed_bodies_are_36(client: HistoricClient, rest: bytes, soap: bytes) -> None:
    answer = await client.post("Folder", "listFolders", rest if client.face == "rest" else soap)
    assert client.outcome(answer, "listFolders") == ("error", ("FONCTIONNELLE", INVALID_FORMAT))


async def test_body_cap_is_39(client: HistoricClient) -> None:
    cap = client.target.max_body
    padded = client.encode("listFolders", client.mine())
    padded = padded.rstrip() + b" " * (cap + 1 - len(padded.rstrip()))
    answer = await client.post("Folder", "listFolders", padded)
    assert client.outcome(answer, "listFolders") == ("error", ("FONCTIONNELLE", CONTENT_TOO_LARGE))


async def test_no_credentials_is_403_with_a_code(client: HistoricClient) -> None:
    answer = await client.post(
        "Annuaire", "listEmails", client.encode("listEmails", client.mine()), headers={}
    )
    assert answer.status_code == 403
    assert answer.headers["X-ErrorCode"].isdigit()
    _kind, code = client.outcome(answer, "listEmails")[1]
    assert code == int(answer.headers["X-ErrorCode"])


async def test_content_search_finds_accented_words(client: HistoricClient) -> None:
    """A French body is searched as typed: accents and case as a person types them."""
    mark = tag()
    word = f"échographie{mark[-6:]}"
    message = await to_self(client, f"{mark} accents", body=f"Résultat de l'{word} : normal.")
    for needle in (word, word.upper(), f"Résultat de l'{word}"):
        found = await client.search(folderId=INBOX, content=needle)
        assert [m["messageId"] for m in found["messages"]] == [message["messageId"]], needle
    await delete(client, message["messageId"])


async def test_every_call_names_its_software(client: HistoricClient) -> None:
    """NUMHOMOLOGATION is required, as on the historic platform: 28 without it, 36 when
    it is not a short printable label; the caller's credentials alone change nothing."""
    payload = client.encode("listFolders", client.mine())
    bare = dict(client.target.headers)
    for headers, code in (
        (bare, FIELD_MISSING),
        ({**bare, "NUMHOMOLOGATION": ""}, FIELD_MISSING),
        ({**bare, "NUMHOMOLOGATION": "H" * 65}, INVALID_FORMAT),
    ):
        answer = await client.post("Folder", "listFolders", payload, headers=headers)
        outcome = client.outcome(answer, "listFolders")
        assert outcome == ("error", ("FONCTIONNELLE", code)), outcome
    await client.ok("Folder", "listFolders", client.mine())


async def test_soap_answers_were_validated(client: HistoricClient) -> None:
    await client.ok("Folder", "listFolders", client.mine())
    await client.code("Folder", "listFolders", {})
    assert client.validated == (2 if client.face == "soap" else 0)
