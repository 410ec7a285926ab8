"""The historic platform's operations (DOMAIN.md §4) over a real SQLite store: every
operation, every functional code and limit, authorisation, sync tokens, delivery."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP, default
from pathlib import Path
from typing import Any

import pytest

from gateway.mss.historic_shapes import JUNK
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
    MESSAGE_MISSING,
    NO_ADDRESS,
    SENT,
    TRASH,
    Caller,
    HistoricError,
)
from mock_operator.historic.operations import TECHNICAL_ERROR, HistoricService
from mock_operator.historic.seed import seed_historic
from mock_operator.historic.store import HistoricStore
from mock_operator.personas import default_personas
from mock_operator.seed import ihe_xdm_zip
from mock_operator.server import sqlite_engine

DUPONT = "jean.dupont@medecin.mssante.fr"
PETIT = "marie.petit@sage-femme.mssante.fr"
OUTSIDE = "claire.martin@medecin.mssante.fr"
DUPONT_ID, PETIT_ID, BERNARD_ID, LEROY_ID, MOREAU_ID = (
    "899700000002",
    "899700000005",
    "899700000003",
    "899700000006",
    "899700000007",
)
dupont = Caller(DUPONT_ID, "LPS-TEST-1")
petit = Caller(PETIT_ID, "LPS-TEST-2")
bernard = Caller(BERNARD_ID, "LPS-TEST-3")
leroy = Caller(LEROY_ID, "LPS-TEST-4")
moreau = Caller(MOREAU_ID, "LPS-TEST-5")
gateway = Caller(None, "LPS-GATEWAY", trusted_gateway=True)


@dataclass
class World:
    store: HistoricStore
    service: HistoricService
    rights: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    elsewhere: list[tuple[str, bytes]] = field(default_factory=list)
    fail_elsewhere: bool = False

    async def call(self, service: str, name: str, caller: Caller, /, **payload: Any) -> Any:
        return await self.service.call(service, name, caller, payload)

    async def refused(
        self, code: int, service: str, name: str, caller: Caller, /, **payload: Any
    ) -> HistoricError:
        with pytest.raises(HistoricError) as caught:
            await self.service.call(service, name, caller, payload)
        assert caught.value.code == code, caught.value.message
        return caught.value

    async def search(self, caller: Caller = dupont, email: str = DUPONT, **criteria: Any) -> Any:
        return await self.call(
            "Item", "searchMessages", caller, email=email, searchCriteria=criteria
        )

    async def ids(self, folder_id: int, email: str = DUPONT) -> list[str]:
        found = await self.search(email=email, caller=gateway, query={"folderId": folder_id})
        return [m["messageId"] for m in found["messages"]]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    engine = sqlite_engine(tmp_path / "historic.db")
    store = HistoricStore(engine)
    await store.create_schema()
    rights: dict[tuple[str, str], frozenset[str]] = {
        (BERNARD_ID, DUPONT): frozenset({"read"}),
        (LEROY_ID, DUPONT): frozenset({"read", "write", "send"}),
    }
    holder = World(store, HistoricService(store), rights)

    async def resolver(idnat: str, bal: str) -> frozenset[str] | None:
        return rights.get((idnat, bal))

    async def mailboxes_of(idnat: str) -> list[str]:
        return [bal for who, bal in rights if who == idnat] + [OUTSIDE]

    async def deliver_elsewhere(rcpt: str, raw: bytes) -> None:
        if holder.fail_elsewhere:
            raise ConnectionError("modern platform down")
        holder.elsewhere.append((rcpt, raw))

    holder.service = HistoricService(
        store,
        resolver=resolver,
        mailboxes_of=mailboxes_of,
        deliver_elsewhere=deliver_elsewhere,
        max_attachments_bytes=64 * 1024,
    )
    assert await seed_historic(holder.service, default_personas()) == [DUPONT, PETIT]
    yield holder
    await engine.dispose()


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- seeding ----------------------------------------------------------------------------


async def test_seed_is_idempotent_and_maps_folders_and_flags(world: World) -> None:
    before = await world.search(limit=100)
    assert await seed_historic(world.store, default_personas()) == []
    assert await world.search(limit=100) == before
    by_subject = {m["subject"]: m for m in before["messages"]}
    assert before["total"] == 4
    assert by_subject["Résultats d'analyses — Mme GARNIER Louise"]["flags"] == []
    assert by_subject["Avis sur un patient commun"]["flags"] == ["UNREAD", "FLAGGED"]
    sent = by_subject["Re: Avis sur un patient commun"]
    assert sent["folderId"] == SENT
    assert sent["flags"] == ["SENT_BY_ME"]
    assert sent["conversationId"] == by_subject["Avis sur un patient commun"]["messageId"]
    assert sent["date"] == "05/11/2026 15:15:00"  # Paris time, dd/MM/yyyy HH:mm:ss


async def test_seeded_xdm_attachment_is_byte_identical(world: World) -> None:
    found = await world.search(query={"subject": "XDM/1.0/DDM"})
    (letter,) = found["messages"]
    assert "ATTACHMENT" in letter["flags"]
    assert letter["attachments"] == [
        {
            "part": "2",
            "fileName": "IHE_XDM.ZIP",
            "contentType": "application/zip",
            "size": len(ihe_xdm_zip()),
        }
    ]
    answer = await world.call(
        "Attachment",
        "downloadAttachment",
        dupont,
        email=DUPONT,
        messageId=letter["messageId"],
        part="2",
    )
    assert base64.b64decode(answer["file"]) == ihe_xdm_zip()
    assert answer["fileName"] == "IHE_XDM.ZIP"


async def test_download_attachment_errors(world: World) -> None:
    (letter,) = (await world.search(query={"subject": "XDM"}))["messages"]
    mid = letter["messageId"]
    await world.refused(
        ATTACHMENT_MISSING,
        "Attachment",
        "downloadAttachment",
        dupont,
        email=DUPONT,
        messageId=mid,
        part="3",
    )
    await world.refused(
        MESSAGE_MISSING,
        "Attachment",
        "downloadAttachment",
        dupont,
        email=DUPONT,
        messageId="99999",
        part="2",
    )
    await world.refused(
        FIELD_MISSING, "Attachment", "downloadAttachment", dupont, email=DUPONT, messageId=mid
    )


# -- input validation and authorisation ---------------------------------------------------


async def test_unknown_operation_and_malformed_input(world: World) -> None:
    await world.refused(INVALID_FORMAT, "Item", "explode", dupont, email=DUPONT)
    await world.refused(INVALID_FORMAT, "Folder", "searchMessages", dupont, email=DUPONT)
    with pytest.raises(HistoricError) as caught:
        await world.service.call("Folder", "listFolders", dupont, ["not", "a", "dict"])  # type: ignore[arg-type]
    assert caught.value.code == INVALID_FORMAT
    await world.refused(INVALID_FORMAT, "Folder", "listFolders", dupont, email=DUPONT, folderId="x")
    await world.refused(
        INVALID_FORMAT, "Item", "searchMessages", dupont, email=DUPONT, searchCriteria="all"
    )


async def test_email_missing_invalid_or_not_accessible(world: World) -> None:
    await world.refused(EMAIL_MISSING, "Folder", "listFolders", dupont)
    await world.refused(EMAIL_MISSING, "Folder", "listFolders", dupont, email="  ")
    await world.refused(EMAIL_INVALID, "Folder", "listFolders", dupont, email="not-an-address")
    await world.refused(EMAIL_INVALID, "Folder", "listFolders", dupont, email=42)
    await world.refused(EMAIL_INVALID, "Folder", "listFolders", dupont, email="x" * 250 + "@a.fr")
    error = await world.refused(EMAIL_INVALID, "Folder", "listFolders", moreau, email=DUPONT)
    assert "non accessible" in error.message
    await world.refused(EMAIL_INVALID, "Folder", "listFolders", dupont, email=OUTSIDE)
    await world.refused(NO_ADDRESS, "Folder", "listFolders", Caller(None), email=DUPONT)


async def test_holder_and_trusted_gateway(world: World) -> None:
    assert (await world.call("Folder", "listFolders", dupont, email=DUPONT.upper()))["folders"]
    for bal in (DUPONT, PETIT):
        assert (await world.call("Folder", "listFolders", gateway, email=bal))["folders"]
    await world.refused(EMAIL_INVALID, "Folder", "listFolders", gateway, email=OUTSIDE)


async def test_read_only_delegate_may_read_but_not_write_or_send(world: World) -> None:
    ids = await world.ids(INBOX)
    assert (await world.search(caller=bernard))["total"] == 4
    await world.call("Item", "syncMessages", bernard, email=DUPONT)
    await world.call(
        "Item", "updateMessages", bernard, email=DUPONT, messageIds=ids, operation="READ"
    )
    error = await world.refused(
        EMAIL_INVALID,
        "Item",
        "updateMessages",
        bernard,
        email=DUPONT,
        messageIds=ids,
        operation="FLAGGED",
    )
    assert "write" in error.message
    await world.refused(
        EMAIL_INVALID,
        "Item",
        "moveMessages",
        bernard,
        email=DUPONT,
        messageIds=ids,
        destinationFolderId=TRASH,
    )
    await world.refused(EMAIL_INVALID, "Folder", "createFolder", bernard, email=DUPONT, name="X")
    message = {"addresses": [{"address": PETIT}], "subject": "s", "body": "b"}
    await world.refused(
        EMAIL_INVALID, "Item", "draftMessage", bernard, email=DUPONT, message=message
    )
    error = await world.refused(
        EMAIL_INVALID, "Item", "sendMessage", bernard, email=DUPONT, message=message
    )
    assert "send" in error.message
    await world.refused(EMAIL_INVALID, "Folder", "listFolders", bernard, email=PETIT)


async def test_full_delegate_may_send_as_the_bal(world: World) -> None:
    message = {"addresses": [{"address": PETIT, "type": "TO"}], "subject": "Remplacement"}
    sent = (await world.call("Item", "sendMessage", leroy, email=DUPONT, message=message))[
        "message"
    ]
    assert sent["emails"][0] == {"address": DUPONT, "name": "Jean DUPONT", "type": "FROM"}
    assert (await world.search(caller=petit, email=PETIT, query={"subject": "Remplacement"}))[
        "total"
    ] == 1


async def test_calls_are_recorded_with_the_software(world: World) -> None:
    await world.call("Folder", "listFolders", dupont, email=DUPONT)
    await world.refused(EMAIL_INVALID, "Folder", "listFolders", moreau, email=DUPONT)
    first, second = world.service.calls[-2:]
    assert (first.idnat, first.software, first.service, first.operation, first.email) == (
        DUPONT_ID,
        "LPS-TEST-1",
        "Folder",
        "listFolders",
        DUPONT,
    )
    assert first.result == "ok"
    assert second.software == "LPS-TEST-5"
    assert second.result == f"FONCTIONNELLE {EMAIL_INVALID}"


# -- Annuaire -----------------------------------------------------------------------------


async def test_list_emails(world: World) -> None:
    assert await world.call("Annuaire", "listEmails", dupont) == {"emails": [DUPONT]}
    # Delegated BAL on this platform only: OUTSIDE lives on the modern platform.
    assert await world.call("Annuaire", "listEmails", leroy) == {"emails": [DUPONT]}
    await world.refused(NO_ADDRESS, "Annuaire", "listEmails", moreau)
    await world.refused(NO_ADDRESS, "Annuaire", "listEmails", Caller(None))
    assert await world.call("Annuaire", "listEmails", gateway) == {"emails": [DUPONT, PETIT]}


async def test_search_recipient(world: World) -> None:
    found = await world.call("Annuaire", "searchRecipient", dupont, searchString="pétit")
    assert [r["addresses"] for r in found["recipients"]] == [[PETIT]]
    assert found["recipients"][0]["lastName"] == "PETIT"
    assert found["recipients"][0]["idNat"] == PETIT_ID
    assert (await world.call("Annuaire", "searchRecipient", dupont, searchString="zzz")) == {
        "recipients": []
    }
    await world.refused(FIELD_MISSING, "Annuaire", "searchRecipient", dupont)
    await world.refused(FIELD_MISSING, "Annuaire", "searchRecipient", dupont, searchString=" ")
    await world.refused(
        CONTENT_TOO_LARGE, "Annuaire", "searchRecipient", dupont, searchString="x" * 31
    )
    assert await world.call("Annuaire", "searchRecipient", dupont, searchString="x" * 30)


async def test_search_recipient_uses_the_directory_callable(world: World) -> None:
    asked: list[str] = []

    async def directory(search: str) -> list[dict[str, Any]]:
        asked.append(search)
        return [{"lastName": f"N{i}", "addresses": []} for i in range(80)]

    service = HistoricService(world.store, directory=directory)
    found = await service.call("Annuaire", "searchRecipient", dupont, {"searchString": "roux"})
    assert asked == ["roux"]
    assert len(found["recipients"]) == 50


# -- Folder -------------------------------------------------------------------------------


async def test_list_folders(world: World) -> None:
    folders = (await world.call("Folder", "listFolders", dupont, email=DUPONT))["folders"]
    assert [(f["id"], f["parentId"]) for f in folders] == [
        (INBOX, 1),
        (TRASH, 1),
        (JUNK, 1),
        (SENT, 1),
        (DRAFTS, 1),
    ]
    inbox = folders[0]
    assert (inbox["unreadCount"], inbox["totalCount"], inbox["children"]) == (2, 3, [])
    await world.refused(FOLDER_MISSING, "Folder", "listFolders", dupont, email=DUPONT, folderId=999)


async def test_folder_lifecycle(world: World) -> None:
    def op(operation: str, /, **payload: Any) -> Any:
        return world.call("Folder", operation, dupont, email=DUPONT, **payload)

    patients = (await op("createFolder", name="Patients"))["folder"]
    assert patients["parentId"] == 1
    assert patients["id"] >= 257
    garnier = (await op("createFolder", name="Garnier", parentId=str(patients["id"])))["folder"]
    tree = (await op("listFolders", folderId=patients["id"]))["folders"]
    assert [c["name"] for c in tree[0]["children"]] == ["Garnier"]

    await world.refused(
        FOLDER_DUPLICATE, "Folder", "createFolder", dupont, email=DUPONT, name="patients"
    )
    await world.refused(
        FOLDER_MISSING, "Folder", "createFolder", dupont, email=DUPONT, name="X", parentId=999
    )
    await world.refused(FIELD_MISSING, "Folder", "createFolder", dupont, email=DUPONT)
    await world.refused(INVALID_FORMAT, "Folder", "createFolder", dupont, email=DUPONT, name="a/b")
    await world.refused(
        CONTENT_TOO_LARGE, "Folder", "createFolder", dupont, email=DUPONT, name="x" * 129
    )

    await op("renameFolder", folderId=garnier["id"], name="Mme Garnier")
    await world.refused(
        FOLDER_MISSING, "Folder", "renameFolder", dupont, email=DUPONT, folderId=999, name="Y"
    )
    await world.refused(
        INVALID_FORMAT, "Folder", "renameFolder", dupont, email=DUPONT, folderId=INBOX, name="Y"
    )
    await world.refused(
        FIELD_MISSING, "Folder", "renameFolder", dupont, email=DUPONT, folderId=garnier["id"]
    )

    await op("moveFolder", folderId=garnier["id"], parentId=1)
    await world.refused(
        FOLDER_DUPLICATE,
        "Folder",
        "renameFolder",
        dupont,
        email=DUPONT,
        folderId=garnier["id"],
        name="Patients",
    )
    await op("moveFolder", folderId=garnier["id"], destinationFolderId=patients["id"])
    await world.refused(
        INVALID_FORMAT,
        "Folder",
        "moveFolder",
        dupont,
        email=DUPONT,
        folderId=patients["id"],
        parentId=garnier["id"],
    )
    await world.refused(
        INVALID_FORMAT,
        "Folder",
        "moveFolder",
        dupont,
        email=DUPONT,
        folderId=SENT,
        parentId=patients["id"],
    )
    await world.refused(
        FOLDER_MISSING,
        "Folder",
        "moveFolder",
        dupont,
        email=DUPONT,
        folderId=patients["id"],
        parentId=999,
    )

    inbox_ids = await world.ids(INBOX)
    await world.call(
        "Item",
        "moveMessages",
        dupont,
        email=DUPONT,
        messageIds=inbox_ids[:1],
        destinationFolderId=garnier["id"],
    )
    await op("emptyFolder", folderId=garnier["id"])
    assert await world.ids(garnier["id"]) == []
    await world.refused(FOLDER_MISSING, "Folder", "emptyFolder", dupont, email=DUPONT, folderId=999)

    await op("trashFolder", folderId=patients["id"])
    trash = (await op("listFolders", folderId=TRASH))["folders"][0]
    assert [c["name"] for c in trash["children"]] == ["Patients"]
    await world.refused(
        INVALID_FORMAT, "Folder", "trashFolder", dupont, email=DUPONT, folderId=INBOX
    )
    await op("emptyFolder", folderId=TRASH)  # Trash empties with the folders in it
    assert (await op("listFolders", folderId=TRASH))["folders"][0]["children"] == []

    doomed = (await op("createFolder", name="Temporaire"))["folder"]
    await world.call(
        "Item",
        "moveMessages",
        dupont,
        email=DUPONT,
        messageIds=inbox_ids[1:2],
        destinationFolderId=doomed["id"],
    )
    await op("deleteFolder", folderId=doomed["id"])
    await world.refused(
        FOLDER_MISSING, "Folder", "deleteFolder", dupont, email=DUPONT, folderId=doomed["id"]
    )
    await world.refused(
        INVALID_FORMAT, "Folder", "deleteFolder", dupont, email=DUPONT, folderId=DRAFTS
    )
    await world.refused(
        MESSAGE_MISSING,
        "Item",
        "updateMessages",
        dupont,
        email=DUPONT,
        messageIds=inbox_ids[1:2],
        operation="READ",
    )


async def test_folder_depth_is_limited(world: World) -> None:
    parent = 1
    for level in range(10):
        parent = (
            await world.call(
                "Folder", "createFolder", dupont, email=DUPONT, name=f"n{level}", parentId=parent
            )
        )["folder"]["id"]
    await world.refused(
        INVALID_FORMAT,
        "Folder",
        "createFolder",
        dupont,
        email=DUPONT,
        name="too deep",
        parentId=parent,
    )


# -- Item: search and sync ----------------------------------------------------------------


async def test_search_filters(world: World) -> None:
    async def subjects(**query: Any) -> list[str]:
        found = await world.search(query=query, sortBy="DATE_ASC")
        return [m["subject"] for m in found["messages"]]

    assert await subjects(subject="resultats d'ANALYSES") == [
        "Résultats d'analyses — Mme GARNIER Louise"
    ]
    assert await subjects(**{"from": "labo-biomed"}) == [
        "Résultats d'analyses — Mme GARNIER Louise"
    ]
    assert await subjects(to="roux") == ["Re: Avis sur un patient commun"]
    assert await subjects(content="anticoagulant") == ["Avis sur un patient commun"]
    assert await subjects(folderId=INBOX, seen=True) == [
        "Résultats d'analyses — Mme GARNIER Louise"
    ]
    assert await subjects(flagged="true") == ["Avis sur un patient commun"]
    assert await subjects(isSent=True) == ["Re: Avis sur un patient commun"]
    assert len(await subjects(isSent=False, answered=False, draft=False, deleted=False)) == 3
    assert await subjects(after="05/11/2026 14:30:00") == ["Re: Avis sur un patient commun"]
    assert len(await subjects(before="03/11/2026")) == 1
    assert await subjects(larger=2000) == ["XDM/1.0/DDM+Lettre de liaison à la sortie"]
    assert len(await subjects(smaller=2000)) == 3
    assert await subjects(bcc="x") == []
    await world.refused(
        INVALID_FORMAT,
        "Item",
        "searchMessages",
        dupont,
        email=DUPONT,
        searchCriteria={"query": {"before": "2026-11-03"}},
    )
    await world.refused(
        CONTENT_TOO_LARGE,
        "Item",
        "searchMessages",
        dupont,
        email=DUPONT,
        searchCriteria={"query": {"content": "x" * 257}},
    )
    await world.refused(
        FOLDER_MISSING,
        "Item",
        "searchMessages",
        dupont,
        email=DUPONT,
        searchCriteria={"query": {"folderId": 999}},
    )
    await world.refused(
        INVALID_FORMAT,
        "Item",
        "searchMessages",
        dupont,
        email=DUPONT,
        searchCriteria={"sortBy": "RANDOM"},
    )
    await world.refused(
        INVALID_FORMAT, "Item", "searchMessages", dupont, email=DUPONT, searchCriteria={"limit": 0}
    )
    await world.refused(
        INVALID_FORMAT,
        "Item",
        "searchMessages",
        dupont,
        email=DUPONT,
        searchCriteria={"limit": 1001},
    )


async def test_search_paging_sorting_and_subfolders(world: World) -> None:
    sub = (
        await world.call("Folder", "createFolder", dupont, email=DUPONT, name="Sub", parentId=INBOX)
    )["folder"]
    for index in range(7):
        raw = _plain(f"Message {index}", f"Mon, 0{index + 1} Dec 2026 10:00:00 +0100")
        folder = sub["id"] if index % 2 else INBOX
        await world.store.deliver_mime(DUPONT, raw, folder)
    seen: list[str] = []
    for offset in range(0, 20, 3):
        page = await world.search(
            limit=3,
            offset=offset,
            sortBy="DATE_DESC",
            query={"folderId": INBOX, "includeSubfolders": True},
        )
        assert page["total"] == 10
        seen += [m["subject"] for m in page["messages"]]
    assert seen[:3] == ["Message 6", "Message 5", "Message 4"]
    assert len(seen) == len(set(seen)) == 10
    only_inbox = await world.search(query={"folderId": INBOX})
    assert only_inbox["total"] == 3 + 4
    ascending = await world.search(sortBy="subjAsc", limit=2)
    assert [m["subject"] for m in ascending["messages"]] == [
        "Avis sur un patient commun",
        "Message 0",
    ]
    biggest = await world.search(sortBy="SIZE_DESC", limit=1)
    assert biggest["messages"][0]["attachments"]
    # Trash and Junk are left out unless asked for.
    await world.call(
        "Item",
        "updateMessages",
        dupont,
        email=DUPONT,
        messageIds=await world.ids(sub["id"]),
        operation="TRASH",
    )
    assert (await world.search())["total"] == 4 + 7 - 3
    assert (await world.search(query={"folderId": TRASH}))["total"] == 3


def _plain(subject: str, date: str, body: str = "Bonjour.\n", sender: str = OUTSIDE) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = DUPONT
    message["Subject"] = subject
    message["Date"] = date
    message["Message-ID"] = f"<{abs(hash(subject))}@test>"
    message.set_content(body)
    return message.as_bytes(policy=SMTP)


async def test_sync_tokens(world: World) -> None:
    everything = await world.call("Item", "syncMessages", dupont, email=DUPONT, token="")
    assert len(everything["modifiedMessages"]) == 4
    assert everything["deletedMessageIds"] == []
    token = everything["token"]
    quiet = await world.call("Item", "syncMessages", dupont, email=DUPONT, token=token)
    assert (quiet["modifiedMessages"], quiet["deletedMessageIds"]) == ([], [])
    assert quiet["token"] == token

    first, second, third = await world.ids(INBOX)
    await world.call(
        "Item", "updateMessages", dupont, email=DUPONT, messageIds=[first], operation="READ"
    )
    await world.call(
        "Item", "updateMessages", dupont, email=DUPONT, messageIds=[second], operation="DELETE"
    )
    await world.call(
        "Item", "moveMessages", dupont, email=DUPONT, messageIds=[third], destinationFolderId=TRASH
    )
    # Changes in another BAL do not show.
    await world.call(
        "Item",
        "updateMessages",
        petit,
        email=PETIT,
        messageIds=await world.ids(INBOX, PETIT),
        operation="READ",
    )
    changed = await world.call("Item", "syncMessages", dupont, email=DUPONT, token=token)
    assert sorted(m["messageId"] for m in changed["modifiedMessages"]) == sorted([first, third])
    assert changed["deletedMessageIds"] == [second]
    moved = next(m for m in changed["modifiedMessages"] if m["messageId"] == third)
    assert moved["folderId"] == TRASH
    again = await world.call("Item", "syncMessages", dupont, email=DUPONT, token=changed["token"])
    assert (again["modifiedMessages"], again["deletedMessageIds"]) == ([], [])

    await world.refused(INVALID_FORMAT, "Item", "syncMessages", dupont, email=DUPONT, token="abc")
    await world.refused(
        INVALID_FORMAT,
        "Item",
        "syncMessages",
        dupont,
        email=DUPONT,
        token=str(int(changed["token"]) + 100),
    )
    await world.refused(
        CONTENT_TOO_LARGE, "Item", "syncMessages", dupont, email=DUPONT, token="1" * 21
    )


# -- Item: changes ------------------------------------------------------------------------


async def test_update_messages_operations(world: World) -> None:
    ids = await world.ids(INBOX)
    target = ids[0]

    async def flags() -> list[str]:
        found = await world.call("Item", "syncMessages", dupont, email=DUPONT)
        message = next(m for m in found["modifiedMessages"] if m["messageId"] == target)
        return list(message["flags"])

    async def update(operation: str) -> None:
        await world.call(
            "Item", "updateMessages", dupont, email=DUPONT, messageIds=target, operation=operation
        )

    await update("UNREAD")
    assert "UNREAD" in await flags()
    await update("read")
    assert "UNREAD" not in await flags()
    await update("FLAGGED")
    assert "FLAGGED" in await flags()
    await update("UNFLAGGED")
    assert "FLAGGED" not in await flags()
    await update("SPAM")
    assert target in await world.ids(JUNK)
    await update("UNSPAM")
    assert target in await world.ids(INBOX)
    await update("TRASH")
    assert target in await world.ids(TRASH)
    await update("DELETE")
    assert target not in await world.ids(TRASH)
    await world.refused(
        MESSAGE_MISSING,
        "Item",
        "updateMessages",
        dupont,
        email=DUPONT,
        messageIds=[ids[1], target],
        operation="READ",
    )
    await world.refused(
        INVALID_FORMAT,
        "Item",
        "updateMessages",
        dupont,
        email=DUPONT,
        messageIds=[ids[1]],
        operation="BURN",
    )
    await world.refused(
        FIELD_MISSING, "Item", "updateMessages", dupont, email=DUPONT, operation="READ"
    )
    await world.refused(
        FIELD_MISSING, "Item", "updateMessages", dupont, email=DUPONT, messageIds=[ids[1]]
    )
    await world.refused(
        CONTENT_TOO_LARGE,
        "Item",
        "updateMessages",
        dupont,
        email=DUPONT,
        messageIds=[str(i) for i in range(1001)],
        operation="READ",
    )


async def test_move_messages(world: World) -> None:
    ids = await world.ids(INBOX)
    await world.call(
        "Item",
        "moveMessages",
        dupont,
        email=DUPONT,
        messageIds=ids,
        destinationFolderId=str(DRAFTS),
    )
    assert sorted(await world.ids(DRAFTS)) == sorted(ids)
    await world.refused(
        FOLDER_MISSING,
        "Item",
        "moveMessages",
        dupont,
        email=DUPONT,
        messageIds=ids,
        destinationFolderId=999,
    )
    await world.refused(
        MESSAGE_MISSING,
        "Item",
        "moveMessages",
        dupont,
        email=DUPONT,
        messageIds=["424242"],
        destinationFolderId=INBOX,
    )
    await world.refused(FIELD_MISSING, "Item", "moveMessages", dupont, email=DUPONT, messageIds=ids)


# -- Item: send and drafts ----------------------------------------------------------------


async def test_send_between_historic_accounts(world: World) -> None:
    pdf = b"%PDF-1.4 compte rendu\n" * 10
    message = {
        "addresses": [
            {"address": PETIT, "name": "Marie PETIT", "type": "TO"},
            {"address": "secretariat@ch-villeneuve.mssante.fr", "type": "BCC"},
        ],
        "subject": "Compte rendu — Mme GARNIER",
        "body": "<p>Bonjour,</p><p>Ci-joint le compte rendu.</p>",
        "isHTML": True,
        "priority": "HAUTE",
        "isAccuse": "true",
        "attachments": [{"file": b64(pdf), "fileName": "CR.pdf", "contentType": "application/pdf"}],
    }
    sent = (await world.call("Item", "sendMessage", dupont, email=DUPONT, message=message))[
        "message"
    ]
    assert sent["folderId"] == SENT
    assert sent["flags"] == ["ATTACHMENT", "SENT_BY_ME", "URGENT"]
    assert (sent["priority"], sent["isAccuse"], sent["isHTML"]) == ("HAUTE", True, True)
    assert {"address": "secretariat@ch-villeneuve.mssante.fr", "name": "", "type": "BCC"} in sent[
        "emails"
    ]
    assert sent["attachments"][0]["fileName"] == "CR.pdf"

    found = await world.search(
        caller=petit, email=PETIT, html=True, query={"subject": "compte rendu"}
    )
    (received,) = found["messages"]
    assert received["folderId"] == INBOX
    assert received["flags"] == ["UNREAD", "ATTACHMENT", "URGENT"]
    assert received["isAccuse"] is True
    assert "<p>Ci-joint le compte rendu.</p>" in received["body"]
    assert all(e["type"] != "BCC" for e in received["emails"])
    text_view = await world.search(caller=petit, email=PETIT, query={"subject": "compte rendu"})
    assert text_view["messages"][0]["isHTML"] is False
    assert "Ci-joint le compte rendu." in text_view["messages"][0]["body"]
    assert "<p>" not in text_view["messages"][0]["body"]
    part = received["attachments"][0]["part"]
    download = await world.call(
        "Attachment",
        "downloadAttachment",
        petit,
        email=PETIT,
        messageId=received["messageId"],
        part=part,
    )
    assert base64.b64decode(download["file"]) == pdf
    # The BCC recipient is outside this platform.
    assert [rcpt for rcpt, _ in world.elsewhere] == ["secretariat@ch-villeneuve.mssante.fr"]


async def test_send_to_outside_recipient_hands_over_parseable_mime(world: World) -> None:
    (letter,) = (await world.search(query={"subject": "XDM"}))["messages"]
    message = {
        "addresses": [{"address": OUTSIDE, "name": "Claire MARTIN"}],
        "subject": "TR: Lettre de liaison",
        "body": "Pour information.",
        "replyType": "FORWARD",
        "messageId": letter["messageId"],
        "attachments": [{"part": "2", "messageId": letter["messageId"]}],
    }
    sent = (await world.call("Item", "sendMessage", dupont, email=DUPONT, message=message))[
        "message"
    ]
    ((rcpt, raw),) = world.elsewhere
    assert rcpt == OUTSIDE
    mime = parse(raw)
    assert mime["From"].addresses[0].addr_spec == DUPONT
    assert mime["To"].addresses[0].addr_spec == OUTSIDE
    assert mime["Subject"] == "TR: Lettre de liaison"
    assert mime["Bcc"] is None
    assert mime["Message-ID"]
    (attachment,) = list(mime.iter_attachments())
    assert attachment.get_filename() == "IHE_XDM.ZIP"
    assert attachment.get_content() == ihe_xdm_zip()
    body = mime.get_body(("plain",))
    assert body is not None
    assert body.get_content().strip() == "Pour information."
    assert sent["conversationId"] == letter["conversationId"]
    after = await world.call("Item", "syncMessages", dupont, email=DUPONT)
    original = next(m for m in after["modifiedMessages"] if m["messageId"] == letter["messageId"])
    assert "FORWARDED" in original["flags"]


async def test_reply_marks_the_original_and_joins_its_conversation(world: World) -> None:
    (question,) = (
        await world.search(
            caller=petit, email=PETIT, query={"subject": "Avis sur", "isSent": False}
        )
    )["messages"]
    message = {
        "addresses": [{"address": DUPONT}],
        "subject": "Re: Avis",
        "body": "Entendu.",
        "replyType": "REPLY",
        "messageId": question["messageId"],
    }
    sent = (await world.call("Item", "sendMessage", petit, email=PETIT, message=message))["message"]
    assert sent["conversationId"] == question["conversationId"]
    refreshed = (
        await world.search(
            caller=petit, email=PETIT, query={"subject": "Avis sur", "isSent": False}
        )
    )["messages"]
    assert "REPLIED" in refreshed[0]["flags"]
    await world.refused(
        MESSAGE_MISSING,
        "Item",
        "sendMessage",
        petit,
        email=PETIT,
        message={**message, "messageId": "999999"},
    )


async def test_send_limits_and_errors(world: World) -> None:
    ok = {"addresses": [{"address": PETIT}], "subject": "s", "body": "b"}

    async def refused(code: int, **change: Any) -> HistoricError:
        return await world.refused(
            code, "Item", "sendMessage", dupont, email=DUPONT, message={**ok, **change}
        )

    await refused(CONTENT_TOO_LARGE, subject="x" * 251)
    await refused(CONTENT_TOO_LARGE, body="x" * 50_001)
    await refused(FIELD_MISSING, addresses=[])
    await refused(FIELD_MISSING, addresses=[{"address": DUPONT, "type": "FROM"}])
    await refused(EMAIL_INVALID, addresses=[{"address": "pas une adresse"}])
    await refused(INVALID_FORMAT, addresses=[{"address": PETIT, "type": "XX"}])
    await refused(INVALID_FORMAT, priority="BASSE")
    await refused(INVALID_FORMAT, replyType="SOMETIMES")
    await refused(INVALID_FORMAT, subject="a\r\nBcc: everyone@x.fr")
    await refused(CONTENT_TOO_LARGE, addresses=[{"address": f"p{i}@x.fr"} for i in range(101)])
    big = b64(b"x" * (64 * 1024 + 1))
    await refused(ATTACHMENTS_TOO_LARGE, attachments=[{"file": big, "fileName": "big.bin"}])
    half = b64(b"x" * (40 * 1024))
    await refused(
        ATTACHMENTS_TOO_LARGE,
        attachments=[{"file": half, "fileName": "a.bin"}, {"file": half, "fileName": "b.bin"}],
    )
    await refused(INVALID_FORMAT, attachments=[{"file": "!!notbase64!!", "fileName": "a"}])
    await refused(FIELD_MISSING, attachments=[{"file": b64(b"x")}])
    await refused(
        INVALID_FORMAT,
        attachments=[{"file": b64(b"x"), "fileName": "a", "contentType": "bad type"}],
    )
    await refused(MESSAGE_MISSING, attachments=[{"part": "2", "messageId": "999999"}])
    await world.refused(FIELD_MISSING, "Item", "sendMessage", dupont, email=DUPONT)
    assert await world.call(
        "Item",
        "sendMessage",
        dupont,
        email=DUPONT,
        message={**ok, "subject": "x" * 250, "body": "y" * 50_000},
    )

    world.fail_elsewhere = True
    error = await refused(TECHNICAL_ERROR, addresses=[{"address": OUTSIDE}])
    assert error.kind == "TECHNIQUE"


async def test_drafts_are_saved_replaced_and_sent(world: World) -> None:
    def draft(**fields: Any) -> Any:
        return world.call("Item", "draftMessage", dupont, email=DUPONT, message=fields)

    first = (await draft(subject="Brouillon", body="v1"))["message"]
    assert (first["folderId"], first["flags"]) == (DRAFTS, ["DRAFT"])
    second = (
        await draft(
            messageId=first["messageId"],
            subject="Brouillon",
            body="v2",
            addresses=[{"address": PETIT}],
            attachments=[
                {"file": b64(b"note"), "fileName": "note.txt", "contentType": "text/plain"}
            ],
        )
    )["message"]
    assert second["messageId"] == first["messageId"]
    assert second["body"] == "v2\n"  # "\n" line ends, never CRLF
    assert await world.ids(DRAFTS) == [first["messageId"]]
    (inbox_message, *_) = await world.ids(INBOX)
    await world.refused(
        MESSAGE_MISSING,
        "Item",
        "draftMessage",
        dupont,
        email=DUPONT,
        message={"messageId": inbox_message},
    )
    await world.refused(
        CONTENT_TOO_LARGE,
        "Item",
        "draftMessage",
        dupont,
        email=DUPONT,
        message={"subject": "x" * 251},
    )

    token = (await world.call("Item", "syncMessages", dupont, email=DUPONT))["token"]
    sent = (
        await world.call(
            "Item",
            "sendMessage",
            dupont,
            email=DUPONT,
            message={
                "messageId": first["messageId"],
                "subject": "Brouillon",
                "body": "v2",
                "addresses": [{"address": PETIT}],
                "attachments": [
                    {"part": second["attachments"][0]["part"], "messageId": first["messageId"]}
                ],
            },
        )
    )["message"]
    assert sent["attachments"][0]["fileName"] == "note.txt"
    assert await world.ids(DRAFTS) == []
    changes = await world.call("Item", "syncMessages", dupont, email=DUPONT, token=token)
    assert changes["deletedMessageIds"] == [first["messageId"]]
    assert [m["messageId"] for m in changes["modifiedMessages"]] == [sent["messageId"]]


# -- MIME delivery ------------------------------------------------------------------------


async def test_deliver_mime_numbers_parts_and_decodes(world: World) -> None:
    message = EmailMessage()
    message["From"] = "Labo <labo@x.mssante.fr>"
    message["To"] = DUPONT
    message["Subject"] = "Résultats"
    message.set_content("Texte")
    message.add_alternative("<b>HTML</b>", subtype="html")
    message.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="a.pdf")
    inner = EmailMessage()
    inner["Subject"] = "transféré"
    inner.set_content("dedans")
    message.add_attachment(inner)
    stored = await world.store.deliver_mime(DUPONT, message.as_bytes(policy=SMTP))
    assert [(a.part, a.file_name, a.content_type) for a in stored.attachments] == [
        ("2", "a.pdf", "application/pdf"),
        ("3", "message.eml", "message/rfc822"),
    ]
    assert stored.body_text.strip() == "Texte"
    assert stored.body_html is not None
    assert stored.body_html.strip() == "<b>HTML</b>"
    _info, data = await world.store.attachment(DUPONT, stored.message_id, "3")
    assert b"dedans" in data

    nested = EmailMessage()
    nested["Subject"] = "Imbriqué"
    nested.set_content("corps")
    nested.add_attachment(b"one", maintype="application", subtype="octet-stream", filename="1.bin")
    inner_mixed = EmailMessage()
    inner_mixed.add_attachment(b"two", maintype="image", subtype="png", filename="2.png")
    inner_mixed.add_attachment(b"three", maintype="image", subtype="png", filename="3.png")
    nested.attach(inner_mixed)
    stored = await world.store.deliver_mime(DUPONT, nested.as_bytes(policy=SMTP))
    assert [a.part for a in stored.attachments] == ["2", "3.1", "3.2"]
    assert stored.body_text.strip() == "corps"
    assert stored.stored_flags == {"UNREAD"}

    html_only = EmailMessage()
    html_only["Subject"] = "HTML"
    html_only.set_content("<p>Un</p><p>Deux &amp; trois</p>", subtype="html")
    stored = await world.store.deliver_mime(
        DUPONT, html_only.as_bytes(policy=SMTP), SENT, {"SENT_BY_ME"}
    )
    assert stored.body_text.split() == ["Un", "Deux", "&", "trois"]


async def test_deliver_mime_refuses_oversized_and_unknown_targets(world: World) -> None:
    small = HistoricStore(world.store.engine, max_message_bytes=1_000)
    with pytest.raises(HistoricError) as caught:
        await small.deliver_mime(
            DUPONT, _plain("gros", "Mon, 07 Dec 2026 10:00:00 +0100", body="x" * 2_000)
        )
    assert caught.value.code == CONTENT_TOO_LARGE
    with pytest.raises(HistoricError) as caught:
        await world.store.deliver_mime(DUPONT, _plain("s", "Mon, 07 Dec 2026 10:00:00 +0100"), 999)
    assert caught.value.code == FOLDER_MISSING
    with pytest.raises(HistoricError) as caught:
        await world.store.deliver_mime(
            DUPONT, _plain("s", "Mon, 07 Dec 2026 10:00:00 +0100"), INBOX, {"SEEN"}
        )
    assert caught.value.code == INVALID_FORMAT


async def test_soap_shaped_input_is_accepted(world: World) -> None:
    """SOAP gives strings and single elements where JSON gives numbers and lists."""
    oldest = (await world.ids(INBOX))[-1]
    await world.call(
        "Item", "updateMessages", dupont, email=DUPONT, messageIds=oldest, operation="FLAGGED"
    )
    found = await world.search(
        limit="10", offset="0", html="false", query={"folderId": str(INBOX), "flagged": "true"}
    )
    assert found["total"] == 2
    assert oldest in [m["messageId"] for m in found["messages"]]


async def test_deliver_mime_survives_garbage_and_refuses_deep_nesting(world: World) -> None:
    stored = await world.store.deliver_mime(DUPONT, b"\x00\xff garbage without headers\r\n")
    assert stored.subject == ""
    assert stored.emails == ()
    deep = b"Content-Type: text/plain\r\n\r\nfond\r\n"
    for level in range(20):
        deep = (
            f'Content-Type: multipart/mixed; boundary="b{level}"\r\n\r\n--b{level}\r\n'.encode()
            + deep
            + f"\r\n--b{level}--\r\n".encode()
        )
    with pytest.raises(HistoricError) as caught:
        await world.store.deliver_mime(DUPONT, deep)
    assert caught.value.code == INVALID_FORMAT
