"""The historic operations served by the gateway (`GatewayHistoricOperations.call`) on a
running stack: Claire MARTIN's modern BAL, every effect checked over IMAP on the mock's
modern platform; Jean DUPONT's historic BAL passed through; a delegate with her rights; a
stranger refused with 24; ids kept across moves; sync tokens; sendMessage with an
IHE_XDM.ZIP reaching its recipient, and its copy in Sent."""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.legacy_front.operations import GatewayHistoricOperations
from gateway.mss.historic_ws import HistoricError
from gateway.settings import MockSettings, Settings
from mock_operator.seed import ihe_xdm_zip
from mock_operator.server import MockOperator
from tests.gateway.legacy_front_support import (
    DUPONT,
    DURAND,
    MARTIN,
    SOFTWARE,
    Accesses,
    ModernImap,
    call,
    legacy_operations,
)
from tests.support.stacks import Stack, configure_with, identity, mock_backend, running_stack

QUESTION = "Avis sur un patient commun"


@pytest.fixture
async def legacy(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
) -> AsyncIterator[tuple[Stack, GatewayHistoricOperations, Accesses]]:
    async with (
        running_stack(stack_settings, mock_settings, tmp_path / "mock", configure_with()) as stack,
        legacy_operations(stack) as (operations, hook),
    ):
        yield stack, operations, hook


async def search(
    operations: GatewayHistoricOperations, persona: str = "dr-martin", **query: Any
) -> list[dict[str, Any]]:
    criteria: dict[str, Any] = {"limit": 50, "query": query}
    found = await call(
        operations, persona, "Item", "searchMessages", {"email": MARTIN, "searchCriteria": criteria}
    )
    assert found["total"] >= len(found["messages"])
    return list(found["messages"])


def by_subject(messages: list[dict[str, Any]], subject: str) -> dict[str, Any]:
    return next(m for m in messages if m["subject"] == subject)


async def refused(code: int, work: Any) -> HistoricError:
    with pytest.raises(HistoricError) as caught:
        await work
    assert caught.value.code == code, caught.value.message
    return caught.value


async def test_folders_messages_and_attachments_come_from_imap(
    legacy: tuple[Stack, GatewayHistoricOperations, Accesses],
) -> None:
    stack, operations, hook = legacy
    imap = ModernImap(stack.mock, MARTIN)
    listed = await call(operations, "dr-martin", "Folder", "listFolders", {"email": MARTIN})
    top = {f["id"]: f for f in listed["folders"]}
    assert {2, 3, 5, 6} <= set(top)
    assert top[2]["name"].upper() == "INBOX"
    assert top[2]["parentId"] == 1
    inbox = await imap.messages("INBOX")
    assert top[2]["totalCount"] == len(inbox)
    assert top[2]["unreadCount"] == sum("\\Seen" not in flags for flags in inbox.values())

    messages = await search(operations, folderId=2)
    assert {m["subject"] for m in messages} == set(inbox)
    question = by_subject(messages, QUESTION)
    assert "FLAGGED" in question["flags"]
    assert question["folderId"] == 2
    assert "Petitjean" in question["body"]
    assert question["isHTML"] is False
    assert question["emails"][0] == {
        "address": "helene.roux@medecin.mssante.fr",
        "name": "Dr Hélène ROUX",
        "type": "FROM",
    }
    letter = next(m for m in messages if m["attachments"])
    assert "ATTACHMENT" in letter["flags"]
    assert "UNREAD" in letter["flags"]
    attachment = letter["attachments"][0]
    assert attachment["fileName"] == "IHE_XDM.ZIP"
    assert attachment["contentType"] == "application/zip"

    downloaded = await call(
        operations,
        "dr-martin",
        "Attachment",
        "downloadAttachment",
        {"email": MARTIN, "messageId": letter["messageId"], "part": attachment["part"]},
    )
    assert base64.b64decode(downloaded["file"]) == ihe_xdm_zip()
    assert downloaded["fileName"] == "IHE_XDM.ZIP"
    payload = {"email": MARTIN, "messageId": letter["messageId"], "part": "9"}
    await refused(46, call(operations, "dr-martin", "Attachment", "downloadAttachment", payload))
    payload = {"email": MARTIN, "messageId": "424242", "part": "2"}
    await refused(45, call(operations, "dr-martin", "Attachment", "downloadAttachment", payload))

    # no folderId: every folder but Trash and Junk, the Sent copy flagged SENT_BY_ME
    everywhere = await search(operations)
    assert any("SENT_BY_ME" in m["flags"] and m["folderId"] == 5 for m in everywhere)
    assert len({m["messageId"] for m in everywhere}) == len(everywhere)
    assert [
        m["subject"] for m in await search(operations, subject="patient commun", folderId=2)
    ] == [QUESTION]
    # the same ids on the next search (kept in the gateway's tables)
    again = await search(operations, folderId=2)
    assert {m["messageId"] for m in again} == {m["messageId"] for m in messages}
    assert ("listFolders", "899700000001", SOFTWARE, MARTIN, "modern", False, True) in hook.calls


async def test_flags_moves_and_deletion_reach_imap_and_ids_stay(
    legacy: tuple[Stack, GatewayHistoricOperations, Accesses],
) -> None:
    stack, operations, _ = legacy
    imap = ModernImap(stack.mock, MARTIN)
    messages = await search(operations, folderId=2)
    letter = next(m for m in messages if m["attachments"])
    question = by_subject(messages, QUESTION)

    async def update(ids: list[str], operation: str) -> None:
        payload = {"email": MARTIN, "messageIds": ids, "operation": operation}
        assert await call(operations, "dr-martin", "Item", "updateMessages", payload) == {}

    await update([letter["messageId"]], "READ")
    assert "\\Seen" in (await imap.messages("INBOX"))[letter["subject"]]
    await update([letter["messageId"]], "FLAGGED")
    await update([question["messageId"]], "UNFLAGGED")
    inbox = await imap.messages("INBOX")
    assert "\\Flagged" in inbox[letter["subject"]]
    assert "\\Flagged" not in inbox[QUESTION]

    created = await call(
        operations, "dr-martin", "Folder", "createFolder", {"email": MARTIN, "name": "Patients"}
    )
    folder_id = created["folder"]["id"]
    assert folder_id >= 257
    assert created["folder"]["parentId"] == 1
    payload = {
        "email": MARTIN,
        "messageIds": [question["messageId"]],
        "destinationFolderId": folder_id,
    }
    await call(operations, "dr-martin", "Item", "moveMessages", payload)
    assert QUESTION in await imap.messages("Patients")
    assert QUESTION not in await imap.messages("INBOX")
    moved = await search(operations, folderId=folder_id)
    assert [(m["messageId"], m["folderId"]) for m in moved] == [(question["messageId"], folder_id)]

    await update([question["messageId"]], "TRASH")
    trash = await search(operations, folderId=3)
    assert question["messageId"] in {m["messageId"] for m in trash}
    await update([question["messageId"]], "DELETE")
    assert all(m["subject"] != QUESTION for m in await search(operations, folderId=3))
    for folder in ("INBOX", "Patients", await imap.special("\\Trash")):
        assert QUESTION not in await imap.messages(folder)
    await refused(45, update([question["messageId"]], "READ"))
    await refused(36, update([letter["messageId"]], "EXPLODE"))


async def test_folder_operations_are_imap_mailbox_operations(
    legacy: tuple[Stack, GatewayHistoricOperations, Accesses],
) -> None:
    stack, operations, _ = legacy
    imap = ModernImap(stack.mock, MARTIN)

    async def folder_call(operation: str, **payload: Any) -> dict[str, Any]:
        return await call(
            operations, "dr-martin", "Folder", operation, {"email": MARTIN, **payload}
        )

    parent = (await folder_call("createFolder", name="Cabinet"))["folder"]["id"]
    child = (await folder_call("createFolder", name="Urgences", parentId=parent))["folder"]
    assert child["parentId"] == parent
    assert "Cabinet/Urgences" in await imap.folders()
    await refused(30, folder_call("createFolder", name="cabinet"))
    await refused(41, folder_call("createFolder", name="X", parentId=999))

    await folder_call("renameFolder", folderId=parent, name="Cabinet médical")
    names = await imap.folders()
    assert "Cabinet médical/Urgences" in names
    listed = await folder_call("listFolders", folderId=parent)
    assert listed["folders"][0]["name"] == "Cabinet médical"
    assert [c["id"] for c in listed["folders"][0]["children"]] == [child["id"]]

    await folder_call("moveFolder", folderId=child["id"], parentId=1)
    assert "Urgences" in await imap.folders()
    await folder_call("trashFolder", folderId=child["id"])
    trash_name = next(n for n in await imap.folders() if n.endswith("/Urgences"))
    assert trash_name.rpartition("/")[0] not in ("", "INBOX")
    await refused(36, folder_call("renameFolder", folderId=2, name="Boite"))
    await folder_call("emptyFolder", folderId=3)
    assert not any(n.endswith("/Urgences") for n in await imap.folders())
    await folder_call("deleteFolder", folderId=parent)
    assert not any(n.startswith("Cabinet") for n in await imap.folders())
    await refused(41, folder_call("deleteFolder", folderId=parent))


async def test_draft_then_send_with_an_xdm_attachment(
    legacy: tuple[Stack, GatewayHistoricOperations, Accesses],
) -> None:
    stack, operations, _ = legacy
    mine, theirs = ModernImap(stack.mock, MARTIN), ModernImap(stack.mock, DURAND)
    message: dict[str, Any] = {
        "addresses": [{"address": DURAND, "name": "Luc DURAND", "type": "TO"}],
        "subject": "Compte rendu de consultation",
        "body": "Bonjour,\nci-joint le compte rendu.\n",
        "attachments": [
            {
                "file": base64.b64encode(ihe_xdm_zip()).decode(),
                "fileName": "IHE_XDM.ZIP",
                "contentType": "application/zip",
            }
        ],
    }
    draft = await call(
        operations, "dr-martin", "Item", "draftMessage", {"email": MARTIN, "message": message}
    )
    draft_id = draft["message"]["messageId"]
    assert draft["message"]["folderId"] == 6
    assert "DRAFT" in draft["message"]["flags"]
    drafts, sent_folder = await mine.special("\\Drafts"), await mine.special("\\Sent")
    assert "\\Draft" in (await mine.messages(drafts))["Compte rendu de consultation"]
    message["subject"] = "Compte rendu de consultation (2)"
    replaced = await call(
        operations,
        "dr-martin",
        "Item",
        "draftMessage",
        {"email": MARTIN, "message": {**message, "messageId": draft_id}},
    )
    assert replaced["message"]["messageId"] == draft_id
    assert list(await mine.messages(drafts)) == ["Compte rendu de consultation (2)"]

    sent = await call(
        operations,
        "dr-martin",
        "Item",
        "sendMessage",
        {"email": MARTIN, "message": {**message, "messageId": draft_id}},
    )
    assert sent["message"]["folderId"] == 5
    assert "SENT_BY_ME" in sent["message"]["flags"]
    assert sent["message"]["attachments"][0]["fileName"] == "IHE_XDM.ZIP"
    received = await theirs.fetch_raw("INBOX", "Compte rendu de consultation (2)")
    assert f"X-MSS-NIL: {SOFTWARE}".encode() in received
    assert b"IHE_XDM.ZIP" in received
    assert "\\Seen" in (await mine.messages(sent_folder))["Compte rendu de consultation (2)"]
    assert await mine.messages(drafts) == {}

    # a reply marks the original \Answered
    question = by_subject(await search(operations, folderId=2), QUESTION)
    reply = {
        "addresses": [DURAND],
        "subject": "Re: " + QUESTION,
        "body": "Je vous rappelle.",
        "replyType": "REPLY",
        "messageId": question["messageId"],
    }
    await call(operations, "dr-martin", "Item", "sendMessage", {"email": MARTIN, "message": reply})
    assert "\\Answered" in (await mine.messages("INBOX"))[QUESTION]


async def test_sync_tokens_report_exactly_what_changed(
    legacy: tuple[Stack, GatewayHistoricOperations, Accesses],
) -> None:
    stack, operations, _ = legacy
    imap = ModernImap(stack.mock, MARTIN)

    async def sync(token: str | None = None) -> dict[str, Any]:
        payload = {"email": MARTIN, **({"token": token} if token else {})}
        return await call(operations, "dr-martin", "Item", "syncMessages", payload)

    first = await sync()
    assert len(first["modifiedMessages"]) >= 4
    assert first["deletedMessageIds"] == []
    token = first["token"]
    quiet = await sync(token)
    assert quiet == {"token": token, "modifiedMessages": [], "deletedMessageIds": []}

    question = by_subject(first["modifiedMessages"], QUESTION)
    await imap.store("INBOX", QUESTION, "+FLAGS", "(\\Seen)")  # a change made elsewhere
    changed = await sync(token)
    assert [m["messageId"] for m in changed["modifiedMessages"]] == [question["messageId"]]
    assert "UNREAD" not in changed["modifiedMessages"][0]["flags"]
    await imap.store("INBOX", QUESTION, "+FLAGS", "(\\Deleted)")
    gone = await sync(changed["token"])
    assert gone["modifiedMessages"] == []
    assert gone["deletedMessageIds"] == [question["messageId"]]
    await refused(36, sync(str(int(gone["token"]) + 100)))


async def test_delegates_strangers_and_the_historic_platform(
    legacy: tuple[Stack, GatewayHistoricOperations, Accesses],
) -> None:
    stack, operations, hook = legacy
    emails = await call(operations, "sec-bernard", "Annuaire", "listEmails", {})
    assert emails == {"emails": [MARTIN, DUPONT]}
    listed = await call(operations, "sec-bernard", "Folder", "listFolders", {"email": MARTIN})
    assert any(f["id"] == 2 for f in listed["folders"])
    assert ("listFolders", "899700000003", SOFTWARE, MARTIN, "modern", True, True) in hook.calls

    # jean.dupont lives on the historic platform: passed through, with Sophie's read right only
    historic = await call(operations, "sec-bernard", "Folder", "listFolders", {"email": DUPONT})
    assert any(f["id"] == 2 for f in historic["folders"])
    found = await call(
        operations,
        "dr-dupont",
        "Item",
        "searchMessages",
        {"email": DUPONT, "searchCriteria": {"query": {"folderId": 2}}},
    )
    assert found["total"] >= 1
    assert found["messages"][0]["folderId"] == 2
    payload = {
        "email": DUPONT,
        "messageIds": [found["messages"][0]["messageId"]],
        "operation": "FLAGGED",
    }
    error = await refused(24, call(operations, "sec-bernard", "Item", "updateMessages", payload))
    assert "droit « write »" in error.message
    await call(operations, "dr-dupont", "Item", "updateMessages", payload)
    again = await call(
        operations,
        "dr-dupont",
        "Item",
        "searchMessages",
        {"email": DUPONT, "searchCriteria": {"query": {"folderId": 2}}},
    )
    assert "FLAGGED" in by_id(again["messages"], found["messages"][0]["messageId"])["flags"]
    # the historic platform's own refusals come back as they are
    payload = {"email": DUPONT, "messageId": "999999", "part": "2"}
    await refused(45, call(operations, "dr-dupont", "Attachment", "downloadAttachment", payload))

    # a stranger: 24 with the mock's message, audited
    error = await refused(
        24, call(operations, "dr-moreau", "Folder", "listFolders", {"email": MARTIN})
    )
    assert error.message == f"{MARTIN}: BAL non accessible à cet utilisateur"
    await refused(23, call(operations, "dr-martin", "Folder", "listFolders", {}))
    assert stack.gateway.audit is not None
    assert stack.gateway.delegations is not None
    await stack.gateway.audit.flush()
    trail = await stack.gateway.delegations.audit_for(MARTIN)
    assert any(e.actor_idnat == "899700000007" and e.result.startswith("refused") for e in trail)
    assert any(e.actor_idnat == "899700000003" and e.software == SOFTWARE for e in trail)
    assert ("listFolders", "899700000007", SOFTWARE, MARTIN, None, False, False) in hook.calls

    recipients = await call(
        operations, "dr-martin", "Annuaire", "searchRecipient", {"searchString": "durand"}
    )
    assert any(DURAND in r["addresses"] for r in recipients["recipients"])


def by_id(messages: list[dict[str, Any]], message_id: str) -> dict[str, Any]:
    return next(m for m in messages if m["messageId"] == message_id)


async def test_a_platform_that_keeps_its_sent_copy_gets_no_second_one(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
) -> None:
    def configure(settings: Settings, mock: MockOperator) -> None:
        configure_with()(settings, mock)
        settings.backends["modern"] = mock_backend(mock, keeps_sent_copy=True)

    async with (
        running_stack(stack_settings, mock_settings, tmp_path / "mock", configure) as stack,
        legacy_operations(stack) as (operations, _),
    ):
        mine, theirs = ModernImap(stack.mock, MARTIN), ModernImap(stack.mock, DURAND)
        sent_folder = await mine.special("\\Sent")
        message = {"addresses": [DURAND], "subject": "Sans copie", "body": "Bonjour"}
        sent = await call(
            operations, "dr-martin", "Item", "sendMessage", {"email": MARTIN, "message": message}
        )
        assert sent["message"]["subject"] == "Sans copie"
        assert sent["message"]["folderId"] == 5
        assert b"Sans copie" in await theirs.fetch_raw("INBOX", "Sans copie")
        # the platform's own copy, once, and the answer is that copy with its id
        assert await mine.count(sent_folder, "Sans copie") == 1
        assert sent["message"]["messageId"] != "0"
        found = await search(operations, folderId=5, subject="Sans copie")
        assert [m["messageId"] for m in found] == [sent["message"]["messageId"]]


async def test_paging_asks_the_backend_for_each_message_s_metadata_once(
    legacy: tuple[Stack, GatewayHistoricOperations, Accesses],
) -> None:
    """A date, a size and an envelope never change for a UID: the second page fetches
    nothing but the page's own message."""
    _stack, operations, _hook = legacy
    criteria = {"limit": 1, "sortBy": "DATE_DESC", "query": {"folderId": 2}}
    first = await call(
        operations,
        "dr-martin",
        "Item",
        "searchMessages",
        {"email": MARTIN, "searchCriteria": criteria},
    )
    assert first["total"] >= 2
    (session,) = operations.pool.idle_of("modern", MARTIN)
    session.sent.clear()
    second = await call(
        operations,
        "dr-martin",
        "Item",
        "searchMessages",
        {"email": MARTIN, "searchCriteria": {**criteria, "offset": 1}},
    )
    assert second["total"] == first["total"]
    assert second["messages"][0]["messageId"] != first["messages"][0]["messageId"]
    fetches = [c.split() for c in session.sent if c.upper().startswith(b"UID FETCH ")]
    assert fetches, list(session.sent)
    # one message asked for each time: the page's (its UID set is one number)
    assert all(words[2].isdigit() for words in fetches), list(session.sent)
    assert len(session.described) >= first["total"]


async def test_mail_arriving_between_two_requests_is_seen(
    legacy: tuple[Stack, GatewayHistoricOperations, Accesses],
) -> None:
    """A pooled session keeps its connection, not its counts: a message another client
    filed since the last request, in a folder that was empty then, is in the next search;
    once expunged elsewhere, it is gone from the one after."""
    stack, operations, _hook = legacy
    imap = ModernImap(stack.mock, MARTIN)
    created = await call(
        operations, "dr-martin", "Folder", "createFolder", {"email": MARTIN, "name": "Arrivages"}
    )
    folder = created["folder"]
    assert await search(operations, folderId=folder["id"]) == []
    subject = "Arrivé entre deux appels"
    raw = (
        f"From: luc.durand@infirmier.mssante.fr\r\nTo: {MARTIN}\r\nSubject: {subject}\r\n\r\nx\r\n"
    )

    def deliver(client: Any) -> None:
        client.append(f'"{folder["name"]}"', None, None, raw.encode())

    await imap.run(deliver)
    (arrived,) = await search(operations, folderId=folder["id"])
    assert arrived["subject"] == subject

    def expunge(client: Any) -> None:
        client.select(f'"{folder["name"]}"')
        client.store("1:*", "+FLAGS", "(\\Deleted)")
        client.expunge()

    await imap.run(expunge)
    assert await search(operations, folderId=folder["id"]) == []


async def test_a_send_only_delegate_cannot_read_by_forwarding_a_stored_part(
    legacy: tuple[Stack, GatewayHistoricOperations, Accesses],
) -> None:
    """Attaching a part of a stored message reads that message: with the right to send
    alone, it is refused (24); a message of one's own making still goes."""
    stack, operations, _hook = legacy
    assert stack.gateway.delegations is not None
    holder = await identity(stack, "dr-martin")
    await stack.gateway.delegations.grant(holder, MARTIN, "899700000007", ["send"])
    letter = next(
        m for m in await search(operations, folderId=2) if m["attachments"]
    )  # read as the holder, to know an id worth stealing
    part = letter["attachments"][0]["part"]
    forwarded = {"messageId": letter["messageId"], "part": part}

    def message(**extra: Any) -> dict[str, Any]:
        return {
            "email": MARTIN,
            "message": {
                "addresses": [{"address": DURAND, "type": "TO"}],
                "subject": "Pour Luc",
                "body": "Bonjour.",
                **extra,
            },
        }

    async def refused_send() -> None:
        await call(operations, "dr-moreau", "Item", "sendMessage", message(attachments=[forwarded]))

    await refused(24, refused_send())
    sent = await call(operations, "dr-moreau", "Item", "sendMessage", message())
    assert sent["message"]["subject"] == "Pour Luc"
    # the delegate is named in Sender:, with her own BAL, as the SMTP front names her
    luc = ModernImap(stack.mock, DURAND)

    def header(client: Any) -> bytes:
        client.select("INBOX", readonly=True)
        _, found = client.uid("SEARCH", "SUBJECT", '"Pour Luc"')
        _, data = client.uid("FETCH", found[0].split()[-1], "(BODY.PEEK[HEADER])")
        return bytes(next(part[1] for part in data if isinstance(part, tuple)))

    received = email.message_from_bytes(await luc.run(header), policy=email.policy.default)
    assert received["From"].addresses[0].addr_spec == MARTIN
    assert str(received["Sender"]) == "Eve MOREAU <eve.moreau@medecin.mssante.fr>"


async def test_a_huge_body_is_read_only_in_its_beginning(
    legacy: tuple[Stack, GatewayHistoricOperations, Accesses],
) -> None:
    """Anyone can mail a BAL a 600 kB body: a page shows its first 256 kB, not more is
    read from the platform (a page of such messages must not fill the gateway's memory)."""
    stack, operations, _hook = legacy
    imap = ModernImap(stack.mock, MARTIN)
    line = "Ligne de compte rendu très longue, répétée encore et encore. " * 2 + "\r\n"
    text = line * (600_000 // len(line))
    raw = (
        f"From: luc.durand@infirmier.mssante.fr\r\nTo: {MARTIN}\r\nSubject: Très long\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + base64.encodebytes(text.encode())

    def deliver(client: Any) -> None:
        client.append("INBOX", None, None, raw)

    await imap.run(deliver)
    (found,) = [m for m in await search(operations, folderId=2) if m["subject"] == "Très long"]
    assert found["body"].startswith(line.rstrip("\r\n"))
    assert 100_000 < len(found["body"].encode()) <= 256 * 1024
