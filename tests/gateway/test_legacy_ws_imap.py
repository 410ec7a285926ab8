"""A historic BAL through the gateway's IMAP front, on real sockets: the engine serves a
`LegacyWsStore` over the mock's historic web services (LIST, SELECT, FETCH, SEARCH, STORE,
MOVE, COPY refused, APPEND to Drafts keeping every part or refused, UID stability across a
restart, the services down)."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import re
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import pytest

from gateway.backends.legacy_ws.client import LegacyTooLarge, LegacyWsClient
from gateway.backends.legacy_ws.store import translated
from gateway.backends.legacy_ws.watch import BalWatch
from gateway.imap.mailstore import StoreError, StoreUnavailable
from gateway.server import Gateway
from gateway.settings import MockSettings, Settings
from mock_operator.seed import ihe_xdm_zip
from tests.gateway.test_smtp_front import NIL
from tests.historic import (
    historic_attachment,
    historic_call,
    historic_messages,
    historic_send,
)
from tests.imap_raw import Lit, Raw
from tests.mss.builders import letter
from tests.support.imap import login as imap_login
from tests.support.net import closed_port
from tests.support.sasl import xoauth2
from tests.support.stacks import (
    Stack,
    configure_with,
    gateway_settings,
    running_stack,
    start_stack,
)
from tests.support.waiting import until

DUPONT = "jean.dupont@medecin.mssante.fr"
PETIT = "marie.petit@sage-femme.mssante.fr"
DRAFTS = 6
BERNARD = "899700000003"
SUBJECT = "Avis sur un patient commun"


@pytest.fixture
async def legacy(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
) -> AsyncIterator[Stack]:
    async with running_stack(
        stack_settings, mock_settings, tmp_path / "mock", configure_with()
    ) as running:
        yield running


async def login(stack: Stack, persona: str, bal: str = DUPONT) -> Raw:
    """A session on the historic BAL of the module (jean.dupont) unless told otherwise."""
    return await imap_login(stack, persona, bal)


def watch(stack: Stack, bal: str = DUPONT) -> BalWatch | None:
    """The gateway's watch of a historic BAL, while sessions use it."""
    backends = stack.gateway.backends
    assert backends is not None
    assert backends.historic is not None
    return backends.historic.watches.current(bal)


def synced(stack: Stack, bal: str = DUPONT) -> bool:
    """Whether the BAL's watch holds a syncMessages token (its first sync is done)."""
    found = watch(stack, bal)
    return found is not None and found.token is not None


def code(reply: Any, name: bytes) -> int:
    found = re.search(rb"\[" + name + rb" (\d+)\]", b"\n".join([*reply.untagged, reply.tagged]))
    assert found, reply
    return int(found.group(1))


def trash_name(reply: Any) -> str:
    (line,) = [line for line in reply.of(b"LIST") if b"\\Trash" in line]
    return line.rsplit(b" ", 1)[1].decode().strip('"')


# -- reading ---------------------------------------------------------------------------------


async def test_list_select_and_deterministic_fetch(legacy: Stack):
    client = await login(legacy, "dr-dupont")
    listed = await client.ok('LIST "" "*"')
    text = b"\n".join(listed.of(b"LIST"))
    assert b'"/" "INBOX"' in text
    for special in (b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk"):
        assert special in text, text
    selected = await client.ok("SELECT INBOX")
    assert any(line.endswith(b" EXISTS") for line in selected.untagged)
    exists = int(next(line for line in selected.untagged if line.endswith(b"EXISTS")).split()[1])
    assert exists >= 3
    assert code(selected, b"UIDVALIDITY") > 0
    assert code(selected, b"UIDNEXT") > exists
    first = await client.ok("FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE RFC822.SIZE)")
    second = await client.ok("FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE RFC822.SIZE)")
    assert len(first.of(b"FETCH")) == exists
    assert first.untagged == second.untagged
    bodies = await client.ok("FETCH 1:* (RFC822.SIZE BODY.PEEK[])")
    assert SUBJECT.encode() in b"\n".join(bodies.untagged)
    for line in bodies.of(b"FETCH"):  # RFC822.SIZE is the length of what BODY[] returns
        size = int(re.search(rb"RFC822\.SIZE (\d+)", line).group(1))  # type: ignore[union-attr]
        literal = int(re.search(rb"BODY\[\] \{(\d+)\}", line).group(1))  # type: ignore[union-attr]
        assert size == literal
    await client.ok("LOGOUT")
    await client.close()


async def test_the_xdm_attachment_comes_back_byte_for_byte(legacy: Stack):
    token = await legacy.token("dr-dupont")

    def read() -> bytes:
        with imaplib.IMAP4("127.0.0.1", legacy.imap_port) as imap:
            imap.authenticate("XOAUTH2", lambda _: f"user={DUPONT}\x01auth=Bearer {token}\x01\x01")
            imap.select("INBOX")
            _, found = imap.search(None, "SUBJECT", '"XDM"')
            (number,) = found[0].split()
            _, structure = imap.fetch(number, "(BODYSTRUCTURE)")
            assert b"IHE_XDM.ZIP" in structure[0]  # type: ignore[operator]
            _, data = imap.fetch(number, "(BODY.PEEK[2])")
            part = data[0]
            assert isinstance(part, tuple)
            return base64.b64decode(part[1])

    assert await asyncio.to_thread(read) == ihe_xdm_zip()


async def test_search_unseen_and_seen_reaches_the_web_services(legacy: Stack):
    client = await login(legacy, "dr-dupont")
    await client.ok("SELECT INBOX")
    unseen = (await client.ok("UID SEARCH UNSEEN")).search()
    assert unseen
    uid = unseen[0]
    stored = await client.ok(f"UID STORE {uid} +FLAGS (\\Seen)")
    assert b"\\Seen" in b"".join(stored.untagged)
    assert uid not in (await client.ok("UID SEARCH UNSEEN")).search()
    found = await historic_call(
        legacy.mock, "Item", "searchMessages", {"email": DUPONT, "searchCriteria": {"limit": 50}}
    )
    unread = [m for m in found["messages"] if "UNREAD" in (m.get("flags") or [])]
    assert len(unread) == len(unseen) - 1
    await client.close()


async def test_read_only_delegate_may_mark_seen_only(legacy: Stack):
    client = await login(legacy, "sec-bernard")
    selected = await client.ok("SELECT INBOX")
    assert b" OK [READ-ONLY] " in selected.tagged
    refused = await client.command("STORE 1 +FLAGS (\\Flagged)")
    assert refused.status == "NO"
    assert b"[NOPERM]" in refused.tagged
    await client.ok("STORE 1 +FLAGS (\\Seen)")
    await client.close()


# -- moving ----------------------------------------------------------------------------------


async def test_move_to_trash(legacy: Stack):
    client = await login(legacy, "dr-dupont")
    trash = trash_name(await client.ok('LIST "" "*"'))
    await client.ok("SELECT INBOX")
    uids = (await client.ok("UID SEARCH ALL")).search()
    moved = await client.ok(f'UID MOVE {uids[0]} "{trash}"')
    assert b"COPYUID" in b"\n".join([*moved.untagged, moved.tagged])
    assert uids[0] not in (await client.ok("UID SEARCH ALL")).search()
    in_trash = await client.ok(f'SELECT "{trash}"')
    assert b"* 1 EXISTS" in in_trash.untagged
    await client.close()


async def test_copy_then_expunge_is_a_move(legacy: Stack):
    """Clients without MOVE copy, mark \\Deleted and expunge: the original lands in the
    destination, under the UID the COPY announced, and nothing is deleted."""
    client = await login(legacy, "dr-dupont")
    trash = trash_name(await client.ok('LIST "" "*"'))
    await client.ok("SELECT INBOX")
    uids = (await client.ok("UID SEARCH ALL")).search()
    subject = await client.ok(f"UID FETCH {uids[0]} (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    copied = await client.ok(f'UID COPY {uids[0]} "{trash}"')
    match = re.search(rb"\[COPYUID \d+ (\d+) (\d+)\]", copied.tagged)
    assert match is not None
    assert int(match[1]) == uids[0]
    landed = int(match[2])
    await client.ok(f"UID STORE {uids[0]} +FLAGS.SILENT (\\Deleted)")
    expunged = await client.ok("EXPUNGE")
    assert len(expunged.of(b"EXPUNGE")) == 1
    found = await historic_messages(legacy.mock, DUPONT, 3)
    assert len(found) == 1  # moved, not deleted
    await client.ok(f'SELECT "{trash}"')
    assert (await client.ok("UID SEARCH ALL")).search() == [landed]
    again = await client.ok(f"UID FETCH {landed} (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert again.untagged[-1] == subject.untagged[-1]
    await client.close()


async def test_a_copy_arrives_at_once_above_the_uids_already_seen(legacy: Stack):
    watcher = await login(legacy, "dr-dupont")
    copier = await login(legacy, "dr-dupont")
    trash = trash_name(await watcher.ok('LIST "" "*"'))
    before = await watcher.ok(f'SELECT "{trash}"')
    uidnext = code(before, b"UIDNEXT")
    await copier.ok("SELECT INBOX")
    uids = (await copier.ok("UID SEARCH ALL")).search()
    await copier.ok(f'UID MOVE {uids[1]} "{trash}"')
    copied = await copier.ok(f'UID COPY {uids[0]} "{trash}"')
    match = re.search(rb"\[COPYUID \d+ (\d+) (\d+)\]", copied.tagged)
    assert match is not None
    assert await until_untagged(watcher, b"* 2 EXISTS", 5)
    seen = (await watcher.ok(f"UID SEARCH UID {uidnext}:*")).search()
    assert int(match[2]) == max(seen)  # the copy came last, so it has the highest UID
    # a second copy of the same message cannot be held by the platform
    listed = await copier.ok('LIST "" "*"')
    junk = next(
        line.rsplit(b" ", 1)[1].decode().strip('"')
        for line in listed.of(b"LIST")
        if b"\\Junk" in line
    )
    refused = await copier.command(f'UID COPY {uids[0]} "{junk}"')
    assert refused.status == "NO"
    assert b"[CANNOT]" in refused.tagged
    await watcher.close()
    await copier.close()


async def test_a_copied_message_is_never_deleted_by_expunging_its_original(legacy: Stack):
    """COPY, \\Deleted, then the session leaves without expunging: whoever expunges later
    (after the original is no longer shown) deletes nothing; the message is in Trash."""
    client = await login(legacy, "dr-dupont")
    trash = trash_name(await client.ok('LIST "" "*"'))
    await client.ok("SELECT INBOX")
    uids = (await client.ok("UID SEARCH ALL")).search()
    await client.ok(f'UID COPY {uids[0]} "{trash}"')
    await client.ok(f"UID STORE {uids[0]} +FLAGS.SILENT (\\Deleted)")
    await client.ok("LOGOUT")
    await client.close()
    await until(lambda: watch(legacy) is None, "the BAL's watch ended with its last session")
    later = await login(legacy, "dr-dupont")
    await later.ok("SELECT INBOX")
    await later.ok("EXPUNGE")
    assert len(await historic_messages(legacy.mock, DUPONT, 3)) == 1
    assert len(await historic_messages(legacy.mock, DUPONT, 2)) == len(uids) - 1
    await later.close()


async def test_a_folder_deleted_on_the_historic_side_ends_its_selection(legacy: Stack):
    """No sync change tells of an empty folder deleted elsewhere: the watch re-reads the
    folder list every few intervals, and the selecting session ends as with Dovecot."""
    created = await historic_call(
        legacy.mock, "Folder", "createFolder", {"email": DUPONT, "name": "Dossier vide"}
    )
    client = await login(legacy, "dr-dupont")
    await client.ok('SELECT "Dossier vide"')
    folder_id = created["folder"]["id"]
    await historic_call(
        legacy.mock, "Folder", "deleteFolder", {"email": DUPONT, "folderId": folder_id}
    )
    async with asyncio.timeout(5):
        while True:
            tag = client.tag()
            await client.send(f"{tag} NOOP\r\n".encode())
            line = await client.line()
            if line.startswith(b"* BYE"):
                break
            assert line.startswith(tag.encode() + b" OK"), line
            await asyncio.sleep(0.1)
    await client.close()


async def test_a_move_heard_while_the_folder_is_read_is_not_left_behind(
    legacy: Stack, monkeypatch: pytest.MonkeyPatch
):
    """A message moved elsewhere while INBOX is searched is reported under its new folder;
    the INBOX read that still lists it must not be kept, and expunging that stale copy
    must not delete the message from where it went."""
    search = LegacyWsClient.search_messages
    slow_once = {"INBOX": True}
    moved = asyncio.Event()

    async def slow_search(self: LegacyWsClient, bal: str, folder_id: Any = None, **kw: Any):
        found = await search(self, bal, folder_id, **kw)
        if folder_id == 2 and slow_once["INBOX"]:
            slow_once["INBOX"] = False
            async with asyncio.timeout(10):
                await moved.wait()  # the move happens meanwhile
        return found

    client = await login(legacy, "dr-dupont")
    await client.ok('LIST "" "*"')
    await until(lambda: synced(legacy), "the BAL's watch has its first token")
    monkeypatch.setattr(LegacyWsClient, "search_messages", slow_search)
    victim = (await historic_messages(legacy.mock, DUPONT, 2))[0]["messageId"]
    selecting = asyncio.create_task(client.ok("SELECT INBOX"))
    await until(lambda: not slow_once["INBOX"], "the INBOX read is under way")
    await historic_call(
        legacy.mock,
        "Item",
        "moveMessages",
        {"email": DUPONT, "messageIds": [victim], "destinationFolderId": 3},
    )
    moved.set()
    await selecting
    assert await until_untagged(client, b"EXPUNGE", 5)
    in_inbox = len(await historic_messages(legacy.mock, DUPONT, 2))
    assert len((await client.ok("UID SEARCH ALL")).search()) == in_inbox
    trash = await historic_messages(legacy.mock, DUPONT, 3)
    assert [m["messageId"] for m in trash] == [victim]
    await client.close()


async def test_expunge_hears_the_latest_moves_before_deleting(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    """\\Deleted set, then the message moved elsewhere (the webmail, another client)
    long before the next sync: EXPUNGE asks for the changes first and deletes nothing."""
    slow = configure_with(poll_interval=60)
    running = await start_stack(stack_settings, mock_settings, tmp_path / "mock", slow)
    try:
        client = await login(running, "dr-dupont")
        await client.ok("SELECT INBOX")
        await until(lambda: synced(running), "the first sync (at login) has given its token")
        uids = (await client.ok("UID SEARCH ALL")).search()
        await client.ok(f"UID STORE {uids[0]} +FLAGS.SILENT (\\Deleted)")
        victim = (await historic_messages(running.mock, DUPONT, 2))[0]["messageId"]
        await historic_call(
            running.mock,
            "Item",
            "moveMessages",
            {"email": DUPONT, "messageIds": [victim], "destinationFolderId": 3},
        )
        expunged = await client.ok("EXPUNGE")
        assert expunged.of(b"EXPUNGE")  # gone from INBOX, as it is
        trash = await historic_messages(running.mock, DUPONT, 3)
        assert [m["messageId"] for m in trash] == [victim]  # and not deleted
        await client.close()
    finally:
        await running.gateway.stop()
        await running.mock.stop()


async def test_a_deleted_mark_set_on_another_node_is_seen(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    """Two gateway nodes on one database: the mark lives there, with no change on the
    platform to tell the other node; its watch compares the marks each interval."""
    running = await start_stack(stack_settings, mock_settings, tmp_path / "mock", configure_with())
    settings = gateway_settings(tmp_path / "gateway")
    settings.psc.issuer = running.mock.issuer
    configure_with()(settings, running.mock)
    other = Gateway(settings)
    await other.start()
    try:
        first = await login(running, "dr-dupont")
        assert other.imap is not None
        second = await Raw.open(other.imap.port)
        token = await running.token("dr-dupont")
        await second.ok("AUTHENTICATE XOAUTH2 ", xoauth2(DUPONT, token))
        await first.ok("SELECT INBOX")
        await second.ok("SELECT INBOX")
        uids = (await first.ok("UID SEARCH ALL")).search()
        await first.ok(f"UID STORE {uids[0]} +FLAGS.SILENT (\\Deleted)")
        assert await until_untagged(second, b"\\Deleted", 5)
        await first.ok(f"UID STORE {uids[0]} -FLAGS.SILENT (\\Deleted)")
        async with asyncio.timeout(5):
            while (await second.ok("UID SEARCH DELETED")).search():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        await first.close()
        await second.close()
    finally:
        await other.stop()
        await running.gateway.stop()
        await running.mock.stop()


# -- restarts and failures -------------------------------------------------------------------


async def test_uids_survive_a_gateway_restart(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    stack = await start_stack(stack_settings, mock_settings, tmp_path / "mock", configure_with())
    second: Gateway | None = None
    try:
        client = await login(stack, "dr-dupont")
        before = await client.ok("SELECT INBOX")
        uids_before = (await client.ok("UID SEARCH ALL")).search()
        await client.close()
        await stack.gateway.stop()

        settings = gateway_settings(tmp_path / "gateway")
        settings.psc.issuer = stack.mock.issuer
        configure_with()(settings, stack.mock)
        second = Gateway(settings)
        await second.start()
        assert second.imap is not None
        client = await Raw.open(second.imap.port)
        token = await stack.token("dr-dupont")
        await client.ok("AUTHENTICATE XOAUTH2 ", xoauth2(DUPONT, token))
        after = await client.ok("SELECT INBOX")
        assert code(after, b"UIDVALIDITY") == code(before, b"UIDVALIDITY")
        assert (await client.ok("UID SEARCH ALL")).search() == uids_before
        await client.close()
    finally:
        if second is not None:
            await second.stop()
        await stack.gateway.stop()
        await stack.mock.stop()


async def test_historic_services_down_is_a_clean_no(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    down = f"http://127.0.0.1:{closed_port()}/mss-msg-services/services"
    configure = configure_with(ws_url=down)
    stack = await start_stack(stack_settings, mock_settings, tmp_path / "mock", configure)
    try:
        client = await login(stack, "dr-dupont")
        selected = await asyncio.wait_for(client.command("SELECT INBOX"), 10)
        assert selected.status == "NO"
        assert b"[UNAVAILABLE]" in selected.tagged
        listed = await asyncio.wait_for(client.command('LIST "" "*"'), 10)
        assert listed.status == "NO"
        await client.ok("LOGOUT")
        await client.close()
    finally:
        await stack.gateway.stop()
        await stack.mock.stop()


# -- deleting, drafts, changes from elsewhere -----------------------------------------------


async def test_deleted_then_expunge_deletes_on_the_historic_side(legacy: Stack):
    client = await login(legacy, "dr-dupont")
    await client.ok("SELECT INBOX")
    uids = (await client.ok("UID SEARCH ALL")).search()
    stored = await client.ok(f"UID STORE {uids[-1]} +FLAGS (\\Deleted)")
    assert b"\\Deleted" in b"".join(stored.untagged)
    assert (await client.ok("UID SEARCH DELETED")).search() == [uids[-1]]
    expunged = await client.ok("EXPUNGE")
    assert expunged.of(b"EXPUNGE")
    assert (await client.ok("UID SEARCH ALL")).search() == uids[:-1]
    found = await historic_messages(legacy.mock, DUPONT, 2)
    assert len(found) == len(uids) - 1
    await client.close()


async def drafts_folder(client: Raw) -> str:
    """The name of the \\Drafts folder."""
    listed = await client.ok('LIST "" "*"')
    (line,) = [line for line in listed.of(b"LIST") if b"\\Drafts" in line]
    return line.rsplit(b" ", 1)[1].decode().strip('"')


async def append_draft(client: Raw, subject: str, text: str) -> tuple[str, bytes, Any]:
    """APPEND a draft to the \\Drafts folder: its name, the message, the reply."""
    drafts = await drafts_folder(client)
    message = (
        f"From: {DUPONT}\r\nTo: claire.martin@medecin.mssante.fr\r\n"
        f"Subject: {subject}\r\n\r\n{text}\r\n"
    ).encode()
    return drafts, message, await client.ok(f'APPEND "{drafts}" (\\Draft)', " ", Lit(message))


async def test_append_to_drafts_only(legacy: Stack):
    client = await login(legacy, "dr-dupont")
    drafts, message, appended = await append_draft(client, "Brouillon de test", "A finir.")
    assert b"APPENDUID" in appended.tagged
    refused = await client.command("APPEND INBOX", " ", Lit(message))
    assert refused.status == "NO"
    assert b"[CANNOT]" in refused.tagged
    await client.ok(f'SELECT "{drafts}"')
    assert (await client.ok('UID SEARCH SUBJECT "Brouillon de test"')).search()
    await client.close()


PLAIN = "Bonjour,\n\nCompte rendu en texte : hémoglobine 12,8 g/dL.\n"
HTML = "<p>Annexe <b>HTML</b> : courbe de température</p>\n"


def side_by_side(title: str, *, garbled: bool = False) -> bytes:
    """A multipart/mixed with a text/plain part and a separate text/html part (not an
    alternative of it); `garbled`: the HTML part's base64 decodes to nothing."""
    msg = letter(DUPONT, PETIT, title, NIL)
    msg.set_content(PLAIN)
    msg.add_attachment(HTML, subtype="html", disposition="inline", cte="base64")
    if garbled:
        html = msg.get_payload()[1]
        assert isinstance(html, EmailMessage)
        html.set_payload("!!!!\n")
    return msg.as_bytes(policy=SMTP_POLICY)


async def holds_both_texts(stack: Stack, bal: str, folder_id: int, title: str) -> None:
    """The historic platform's copy of `side_by_side(title)`: the plain text as its body,
    the HTML as an attachment (read back through searchMessages and downloadAttachment)."""
    (found,) = [
        m for m in await historic_messages(stack.mock, bal, folder_id) if m["subject"] == title
    ]
    assert (found["body"].strip(), found["isHTML"]) == (PLAIN.strip(), False)
    (attachment,) = found["attachments"]
    assert (attachment["fileName"], attachment["contentType"]) == ("part-2.html", "text/html")
    downloaded = await historic_attachment(stack.mock, bal, found, attachment)
    assert downloaded.decode() == HTML


async def test_append_keeps_a_plain_and_a_separate_html_part(legacy: Stack):
    """Before, the draft kept the HTML part as its body and lost the plain text."""
    client = await login(legacy, "dr-dupont")
    drafts = await drafts_folder(client)
    title = "Brouillon texte et HTML"
    await client.ok(f'APPEND "{drafts}" (\\Draft)', " ", Lit(side_by_side(title)))
    await holds_both_texts(legacy, DUPONT, DRAFTS, title)
    await client.close()


async def test_append_of_a_part_that_cannot_be_read_is_refused(legacy: Stack):
    """NO [CANNOT] saying why, rather than a draft without its HTML part."""
    client = await login(legacy, "dr-dupont")
    drafts = await drafts_folder(client)
    title = "Brouillon illisible"
    refused = await client.command(
        f'APPEND "{drafts}" (\\Draft)', " ", Lit(side_by_side(title, garbled=True))
    )
    assert refused.status == "NO"
    assert b"[CANNOT]" in refused.tagged
    assert b"part 2: its base64 content cannot be decoded" in refused.tagged
    assert not [
        m for m in await historic_messages(legacy.mock, DUPONT, DRAFTS) if m["subject"] == title
    ]
    await client.close()


async def test_noop_sees_mail_arriving_on_the_historic_side(legacy: Stack):
    client = await login(legacy, "dr-dupont")
    selected = await client.ok("SELECT INBOX")
    exists = int(next(line for line in selected.untagged if line.endswith(b"EXISTS")).split()[1])
    await send_to_dupont(legacy, "Note pour moi-même")
    noop = await until_untagged(client, f"* {exists + 1} EXISTS".encode())
    assert noop
    await client.close()


async def until_untagged(client: Raw, wanted: bytes, seconds: float = 10.0) -> bool:
    """NOOP until `wanted` comes (the changes arrive with the next sync, 0.2 s here)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if any(wanted in line for line in (await client.ok("NOOP")).untagged):
            return True
        await asyncio.sleep(0.05)
    return False


async def send_to_dupont(stack: Stack, subject: str) -> None:
    await historic_send(stack.mock, DUPONT, DUPONT, subject)


async def test_idle_hears_mail_arriving_on_the_historic_side(legacy: Stack):
    client = await login(legacy, "dr-dupont")
    selected = await client.ok("SELECT INBOX")
    exists = int(next(line for line in selected.untagged if line.endswith(b"EXISTS")).split()[1])
    client.writer.write(b"I1 IDLE\r\n")
    assert (await asyncio.wait_for(client.reader.readline(), 5)).startswith(b"+ ")
    await send_to_dupont(legacy, "Pendant l'IDLE")
    line = await asyncio.wait_for(client.reader.readline(), 10)
    assert line == f"* {exists + 1} EXISTS\r\n".encode()
    client.writer.write(b"DONE\r\n")
    await client.close()


async def test_a_quiet_mailbox_costs_syncs_not_searches(legacy: Stack):
    """The watch replays syncMessages; folder states are read again only on a change."""
    assert legacy.mock.historic is not None
    calls = legacy.mock.historic.calls
    first = await login(legacy, "dr-dupont")
    second = await login(legacy, "dr-dupont")
    await first.ok("SELECT INBOX")
    await second.ok("SELECT INBOX")
    mark = len(calls)
    for _ in range(8):  # 1.6 s: eight poll intervals
        await first.ok("NOOP")
        await second.ok("NOOP")
        await asyncio.sleep(0.2)
    since = [c.operation for c in calls[mark:] if c.email == DUPONT]
    assert "searchMessages" not in since
    assert 4 <= since.count("syncMessages") <= 12  # one poller for both sessions
    await send_to_dupont(legacy, "Un changement")
    assert await until_untagged(first, b"EXISTS", 5)
    assert await until_untagged(second, b"EXISTS", 5)
    searches = [c for c in calls[mark:] if c.operation == "searchMessages"]
    assert len(searches) == 1  # read once, shared by both sessions
    await first.close()
    await second.close()


async def test_a_replaced_draft_gets_a_new_uid(legacy: Stack):
    """A draft saved again keeps its messageId but not its content: an IMAP message never
    changes under its UID, so the old UID goes and a new one comes."""
    client = await login(legacy, "dr-dupont")
    drafts, _, appended = await append_draft(client, "Brouillon", "Premier jet.")
    match = re.search(rb"\[APPENDUID \d+ (\d+)\]", appended.tagged)
    assert match is not None
    first_uid = int(match[1])
    await client.ok(f'SELECT "{drafts}"')
    (draft,) = await historic_messages(legacy.mock, DUPONT, 6)
    await historic_call(
        legacy.mock,
        "Item",
        "draftMessage",
        {
            "email": DUPONT,
            "message": {
                "messageId": draft["messageId"],
                "addresses": [{"address": "claire.martin@medecin.mssante.fr", "type": "TO"}],
                "subject": "Brouillon",
                "body": "Second jet, plus long.",
            },
        },
    )
    assert await until_untagged(client, b"* 1 EXPUNGE")
    uids = (await client.ok("UID SEARCH ALL")).search()
    assert len(uids) == 1
    assert uids[0] > first_uid
    body = await client.ok(f"UID FETCH {uids[0]} (BODY.PEEK[TEXT])")
    assert b"Second jet" in b"".join(body.untagged)
    await client.close()


async def test_deleted_marks_are_shared_and_kept(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    """The historic services cannot hold \\Deleted: the gateway keeps it in its database,
    so another session sees it, and so does a session after a restart."""
    running = await start_stack(stack_settings, mock_settings, tmp_path / "mock", configure_with())
    try:
        first = await login(running, "dr-dupont")
        second = await login(running, "dr-dupont")
        await first.ok("SELECT INBOX")
        await second.ok("SELECT INBOX")
        uids = (await first.ok("UID SEARCH ALL")).search()
        await first.ok(f"UID STORE {uids[0]} +FLAGS.SILENT (\\Deleted)")
        assert await until_untagged(second, b"\\Deleted", 5)
        assert (await second.ok("UID SEARCH DELETED")).search() == [uids[0]]
        await first.close()
        await second.close()
        await running.gateway.stop()
        settings = gateway_settings(tmp_path / "gateway")
        settings.psc.issuer = running.mock.issuer
        configure_with()(settings, running.mock)
        running.gateway = Gateway(settings)
        await running.gateway.start()
        third = await login(running, "dr-dupont")
        await third.ok("SELECT INBOX")
        assert (await third.ok("UID SEARCH DELETED")).search() == [uids[0]]
        await third.close()
    finally:
        await running.gateway.stop()
        await running.mock.stop()


async def test_revocation_ends_an_open_historic_session(legacy: Stack):
    """Sessions the engine serves are tracked like relays: revoked, they end with BYE."""
    registry = legacy.gateway.delegations
    validator = legacy.gateway.validator
    assert registry is not None
    assert validator is not None
    client = await login(legacy, "sec-bernard")
    await client.ok("SELECT INBOX")
    holder = await validator.validate(await legacy.token("dr-dupont"))
    (delegation,) = [
        d for d in await registry.delegations_of(holder, DUPONT) if d.delegate_idnat == BERNARD
    ]
    await registry.revoke(holder, DUPONT, delegation.id)
    bye = await client.line(wait=2.0)
    assert bye.startswith(b"* BYE")
    assert b"revoked" in bye
    assert await client.until_closed() == b""


async def test_changes_on_a_historic_bal_are_audited(legacy: Stack):
    client = await login(legacy, "dr-dupont")
    await client.ok("SELECT INBOX")
    await client.ok("UID FETCH 1:* (BODY.PEEK[])")
    await client.ok("STORE 1 +FLAGS (\\Flagged)")
    await client.ok("LOGOUT")
    await client.until_closed()
    assert legacy.gateway.audit is not None
    assert legacy.gateway.delegations is not None
    await legacy.gateway.audit.flush()
    events = await legacy.gateway.delegations.audit_for(DUPONT)
    store = [e for e in events if e.action == "store"]
    assert store
    assert store[0].result == "ok"
    assert store[0].detail is not None
    assert "\\Flagged" in store[0].detail
    assert any(e.action == "read" for e in events)


def test_a_folder_too_large_is_a_limit_not_an_outage() -> None:
    """Asking again would give the same: NO [LIMIT], not [UNAVAILABLE] "try again"."""
    with pytest.raises(StoreError) as refused, translated("Archives"):
        raise LegacyTooLarge("searchMessages: more than 200000 messages")
    assert refused.value.code == "LIMIT"
    assert not isinstance(refused.value, StoreUnavailable)
