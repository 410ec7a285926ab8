"""Keywords, \\Answered and \\Draft on a historic BAL (issue 12 §1), through imaplib: the
historic services cannot hold them, so the gateway keeps them in its database beside the
UID. Another session sees them, so does a session after a restart (a new gateway over the
same database, SQLite or PostgreSQL), they follow MOVE and COPY, APPEND to Drafts keeps
them, EXPUNGE and a message gone forget them, and what the platform says itself (REPLIED,
FORWARDED, UNREAD, FLAGGED) still wins. The bounds are probed in tests/security."""

from __future__ import annotations

import asyncio
import imaplib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from delegation.db import create_engine
from gateway.db import legacy_flags, legacy_folders
from gateway.server import Gateway
from gateway.settings import MockSettings, Settings
from tests.gateway.test_legacy_ws_imap import DUPONT, PETIT
from tests.historic import historic_call, historic_messages
from tests.mss.builders import letter
from tests.support.stacks import Stack, configure_with, gateway_settings, start_stack
from tests.support.waiting import eventually

HOST = "127.0.0.1"
TIMEOUT = 10.0
INBOX_ID, TRASH_ID, DRAFTS_ID = 2, 3, 6
TRASH, DRAFTS = "Corbeille", "Brouillons"


class Imap:
    """A blocking imaplib session on jean.dupont's BAL, driven from a thread."""

    def __init__(self, imap: imaplib.IMAP4) -> None:
        self.imap = imap

    @classmethod
    async def login(cls, stack: Stack) -> Imap:
        token = await stack.token("dr-dupont")

        def connect() -> imaplib.IMAP4:
            imap = imaplib.IMAP4(HOST, stack.imap_port, timeout=TIMEOUT)
            sasl = f"user={DUPONT}\x01auth=Bearer {token}\x01\x01".encode()
            status, _ = imap.authenticate("XOAUTH2", lambda _: sasl)
            assert status == "OK"
            return imap

        return cls(await asyncio.to_thread(connect))

    async def run(self, name: str, *args: Any) -> tuple[str, list[Any]]:
        status, data = await asyncio.to_thread(getattr(self.imap, name), *args)
        return str(status), list(data)

    async def select(self, folder: str) -> set[bytes]:
        """SELECT; the PERMANENTFLAGS it announced."""
        status, data = await self.run("select", f'"{folder}"')
        assert status == "OK", data
        _, permanent = self.imap.response("PERMANENTFLAGS")
        return set(imaplib.ParseFlags(b"FLAGS " + permanent[-1]))

    async def uids(self, *criteria: str) -> list[int]:
        status, data = await self.run("uid", "SEARCH", *(criteria or ("ALL",)))
        assert status == "OK", data
        return [int(n) for n in data[0].split()]

    async def store(self, uid: int, change: str, flags: str) -> tuple[str, list[Any]]:
        return await self.run("uid", "STORE", str(uid), change, flags)

    async def stored(self, uid: int, change: str, flags: str) -> set[bytes]:
        """STORE that must succeed; the flags it answered."""
        status, data = await self.store(uid, change, flags)
        assert status == "OK", data
        return flags_of(data, uid)

    async def flags(self, uid: int) -> set[bytes]:
        status, data = await self.run("uid", "FETCH", str(uid), "(FLAGS)")
        assert status == "OK", data
        return flags_of(data, uid)

    async def close(self) -> None:
        await self.run("logout")


def flags_of(data: list[Any], uid: int) -> set[bytes]:
    """The FLAGS of `uid` in the last FETCH response about it (without \\Recent, the
    session's own: tested in tests/imap)."""
    about = [
        item for item in data if isinstance(item, bytes) and re.search(rb"UID %d\b" % uid, item)
    ]
    assert about, data
    return set(imaplib.ParseFlags(about[-1])) - {b"\\Recent"}


def copyuid(client: Imap) -> tuple[int, int]:
    """(source, destination) UIDs of the last one-message COPY or MOVE."""
    _, codes = client.imap.response("COPYUID")
    _, source, destination = codes[-1].split()
    return int(source), int(destination)


async def kept_rows(url: str) -> set[tuple[int, str, str]]:
    """(historic folder id, messageId, flag): what the gateway's table holds for the BAL."""
    f, folders = legacy_flags.c, legacy_folders.c
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(folders.folder_id, f.message_id, f.flag)
                .join(legacy_folders, folders.id == f.folder)
                .where(folders.bal == DUPONT)
            )
            return {(folder, message, flag) for folder, message, flag in rows}
    finally:
        await engine.dispose()


async def inbox(stack: Stack) -> list[dict[str, Any]]:
    """INBOX on the platform, oldest first: the order of the gateway's UIDs."""
    return await historic_messages(stack.mock, DUPONT, INBOX_ID)


def node_settings(data_dir: Path, url: str, stack: Stack) -> Settings:
    settings = gateway_settings(data_dir, database_url=url)
    settings.psc.issuer = stack.mock.issuer
    configure_with()(settings, stack.mock)
    return settings


@pytest.fixture
async def historic_db(
    migrated_db_url: str, tmp_path: Path, mock_settings: MockSettings
) -> AsyncIterator[tuple[Stack, str]]:
    """The stack on a database of its own (SQLite, and PostgreSQL when there is one)."""
    stack = await start_stack(
        gateway_settings(tmp_path / "gateway", database_url=migrated_db_url),
        mock_settings,
        tmp_path / "mock",
        configure_with(),
    )
    try:
        yield stack, migrated_db_url
    finally:
        await stack.gateway.stop()
        await stack.mock.stop()


async def test_keywords_are_shared_and_survive_a_restart(
    historic_db: tuple[Stack, str], tmp_path: Path
) -> None:
    stack, url = historic_db
    first, second = await Imap.login(stack), await Imap.login(stack)
    permanent = await first.select("INBOX")
    assert {b"\\Answered", b"\\Draft", b"\\Deleted", b"\\Seen", b"\\Flagged", b"\\*"} <= permanent
    await second.select("INBOX")
    uids = await first.uids()
    target = uids[1]  # the letter: unread, not flagged, nothing else on the platform
    message = (await inbox(stack))[1]
    assert set(message["flags"]) <= {"UNREAD", "ATTACHMENT"}

    kept = {b"\\Answered", b"$MDNSent", b"$Forwarded"}
    assert await first.stored(target, "+FLAGS", "($MDNSent $Forwarded \\Answered)") == kept
    assert await first.flags(target) == kept
    assert await second.flags(target) == kept  # another session, at once
    assert await second.uids("KEYWORD", "$mdnsent") == [target]
    assert await second.uids("ANSWERED") == [target]
    # the platform was told nothing it cannot hold
    assert (await inbox(stack))[1]["flags"] == message["flags"]
    assert {(INBOX_ID, message["messageId"], f.decode()) for f in kept} == await kept_rows(url)
    # a new SELECT lists the keywords in use among the permanent flags
    third = await Imap.login(stack)
    assert {b"$MDNSent", b"$Forwarded", b"\\*"} <= await third.select("INBOX")

    assert await second.stored(target, "-FLAGS", "($FORWARDED)") == kept - {b"$Forwarded"}
    await eventually(
        lambda: _has(first, target, kept - {b"$Forwarded"}), "the move seen", bound=TIMEOUT
    )
    for client in (first, second, third):
        await client.close()

    await stack.gateway.stop()
    stack.gateway = Gateway(node_settings(tmp_path / "restarted", url, stack))
    await stack.gateway.start()
    after = await Imap.login(stack)
    await after.select("INBOX")
    assert await after.uids() == uids
    assert await after.flags(target) == {b"\\Answered", b"$MDNSent"}
    assert await after.uids("KEYWORD", "$MDNSent") == [target]
    # FLAGS replaces what the gateway keeps as well as what the platform holds
    replaced = await after.stored(target, "FLAGS", "(\\Seen $Label1)")
    assert replaced == {b"\\Seen", b"$Label1"}
    assert "UNREAD" not in (await inbox(stack))[1]["flags"]
    assert await kept_rows(url) == {(INBOX_ID, message["messageId"], "$Label1")}
    await after.close()


async def _has(client: Imap, uid: int, flags: set[bytes]) -> bool:
    await client.run("noop")
    return await client.flags(uid) == flags


async def test_a_keyword_set_on_another_node_is_seen(
    historic_db: tuple[Stack, str], tmp_path: Path
) -> None:
    """Two gateway nodes on one database: the keywords live there, with no change on the
    platform to tell the other node; its watch compares the marks each interval."""
    stack, url = historic_db
    other = Gateway(node_settings(tmp_path / "other", url, stack))
    await other.start()
    try:
        first = await Imap.login(stack)
        second = await Imap.login(Stack(other, stack.mock))
        await first.select("INBOX")
        await second.select("INBOX")
        (uid, *_) = await first.uids()
        before = await second.flags(uid)
        await first.stored(uid, "+FLAGS", "($Rappel)")
        await eventually(
            lambda: _has(second, uid, before | {b"$Rappel"}), "set on the other node", bound=TIMEOUT
        )
        await first.stored(uid, "-FLAGS", "($rappel)")
        await eventually(
            lambda: _has(second, uid, before), "removed on the other node", bound=TIMEOUT
        )
        await first.close()
        await second.close()
    finally:
        await other.stop()


async def test_the_platform_still_wins_for_what_it_says(historic_db: tuple[Stack, str]) -> None:
    """REPLIED and FORWARDED show \\Answered and $Forwarded, whatever a client removes;
    \\Seen and \\Flagged still go to updateMessages."""
    stack, url = historic_db
    messages = await inbox(stack)
    for message, reply_type in ((messages[2], "REPLY"), (messages[1], "FORWARD")):
        await historic_call(
            stack.mock,
            "Item",
            "sendMessage",
            {
                "email": DUPONT,
                "message": {
                    "messageId": message["messageId"],
                    "replyType": reply_type,
                    "addresses": [{"address": PETIT, "type": "TO"}],
                    "subject": "Re: avis",
                    "body": "Réponse.",
                },
            },
        )
    client = await Imap.login(stack)
    await client.select("INBOX")
    _, forwarded, answered = await client.uids()
    assert await client.flags(answered) == {b"\\Answered", b"\\Flagged"}
    assert await client.flags(forwarded) == {b"$Forwarded"}
    assert await client.stored(answered, "-FLAGS", "(\\Answered \\Flagged)") == {b"\\Answered"}
    assert await client.stored(forwarded, "FLAGS", "($Label2)") == {b"$Forwarded", b"$Label2"}
    on_platform = await inbox(stack)
    assert "FLAGGED" not in on_platform[2]["flags"]
    assert "REPLIED" in on_platform[2]["flags"]
    assert "FORWARDED" in on_platform[1]["flags"]
    # nothing kept for what the platform says itself
    assert await kept_rows(url) == {(INBOX_ID, messages[1]["messageId"], "$Label2")}
    await client.close()


async def test_keywords_follow_move_and_copy_and_go_with_the_message(
    historic_db: tuple[Stack, str],
) -> None:
    stack, url = historic_db
    messages = await inbox(stack)
    client = await Imap.login(stack)
    await client.select("INBOX")
    first, second, third = await client.uids()
    await client.stored(first, "+FLAGS", "($Label1 \\Answered)")
    await client.stored(second, "+FLAGS", "($Label2)")
    await client.stored(third, "+FLAGS", "($Label3)")

    status, data = await client.run("uid", "MOVE", str(first), TRASH)
    assert status == "OK", data
    source, moved = copyuid(client)
    assert source == first
    status, data = await client.run("uid", "COPY", str(second), TRASH)
    assert status == "OK", data
    _, copied = copyuid(client)
    assert await client.flags(second) == {b"$Label2"}  # the original, until expunged
    assert await kept_rows(url) == {
        (TRASH_ID, messages[0]["messageId"], "$Label1"),
        (TRASH_ID, messages[0]["messageId"], "\\Answered"),
        (INBOX_ID, messages[1]["messageId"], "$Label2"),
        (TRASH_ID, messages[1]["messageId"], "$Label2"),
        (INBOX_ID, messages[2]["messageId"], "$Label3"),
    }

    # gone from the platform (deleted elsewhere): its flags are forgotten with its UID
    await historic_call(
        stack.mock,
        "Item",
        "updateMessages",
        {"email": DUPONT, "messageIds": [messages[2]["messageId"]], "operation": "DELETE"},
    )

    async def third_gone() -> bool:
        await client.run("noop")
        return third not in await client.uids()

    await eventually(third_gone, "the expunged message forgotten", bound=TIMEOUT)
    assert (INBOX_ID, messages[2]["messageId"], "$Label3") not in await kept_rows(url)

    await client.select(TRASH)
    assert await client.flags(moved) == {b"\\Seen", b"\\Answered", b"$Label1"}
    assert await client.flags(copied) == {b"$Label2"}
    await client.stored(moved, "+FLAGS", "(\\Deleted)")
    status, data = await client.run("expunge")
    assert status == "OK", data
    assert await client.uids() == [copied]
    assert await kept_rows(url) == {
        (INBOX_ID, messages[1]["messageId"], "$Label2"),
        (TRASH_ID, messages[1]["messageId"], "$Label2"),
    }
    await client.close()


async def test_append_to_drafts_keeps_its_keywords(historic_db: tuple[Stack, str]) -> None:
    stack, url = historic_db
    client = await Imap.login(stack)
    draft = letter(DUPONT, "helene.roux@medecin.mssante.fr", "Brouillon", None)
    draft.set_content("Premier jet.")
    status, data = await client.run(
        "append", DRAFTS, "($Pending \\Answered \\Draft)", None, draft.as_bytes()
    )
    assert status == "OK", data
    found = re.search(rb"APPENDUID \d+ (\d+)", data[0])
    assert found, data
    uid = int(found[1])
    await client.select(DRAFTS)
    assert await client.flags(uid) == {b"$Pending", b"\\Answered", b"\\Draft", b"\\Seen"}
    (saved,) = await historic_messages(stack.mock, DUPONT, DRAFTS_ID)
    assert await kept_rows(url) == {
        (DRAFTS_ID, saved["messageId"], "$Pending"),
        (DRAFTS_ID, saved["messageId"], "\\Answered"),
    }
    await client.close()
