"""Hostile keywords on a historic BAL, whose keywords the gateway keeps in its own database:
too many per message (in one STORE, over several, from racing sessions), too many per
folder, too long, not atoms. Each is refused (NO [LIMIT], or BAD from the parser) before
anything is written: the table, the platform and the session are as they were."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.backends.legacy_ws.store import (
    MAX_FOLDER_KEYWORDS,
    MAX_KEYWORD_LENGTH,
    MAX_KEYWORDS,
)
from gateway.settings import MockSettings
from tests.conftest import quick_mock_settings
from tests.gateway.test_legacy_ws_imap import DUPONT, login
from tests.gateway.test_legacy_ws_keywords import kept_rows
from tests.historic import historic_messages, historic_send
from tests.imap_raw import Lit, Raw, Reply
from tests.support.stacks import (
    Stack,
    configure_with,
    gateway_settings,
    running_stack,
    start_stack,
)

DRAFTS_ID = 6
MESSAGE = b"From: jean.dupont@medecin.mssante.fr\r\nSubject: brouillon\r\n\r\nTexte.\r\n"


def keywords(count: int, prefix: str = "k") -> str:
    return " ".join(f"{prefix}{n}" for n in range(count))


async def fetch_flags(client: Raw, uid: int) -> bytes:
    """The message's kept flags (without \\Recent, the session's own)."""
    reply = await client.ok(f"UID FETCH {uid} (FLAGS)")
    line = reply.of(b"FETCH")[-1]  # after any update of the same message
    found = re.search(rb"FLAGS \(([^)]*)\)", line)
    assert found, line
    return b" ".join(f for f in found.group(1).split() if f != b"\\Recent")


async def selected(stack: Stack) -> tuple[Raw, list[int]]:
    client = await login(stack, "dr-dupont")
    await client.ok("SELECT INBOX")
    return client, (await client.ok("UID SEARCH ALL")).search()


def limit(reply: Reply) -> bool:
    return re.match(rb"\S+ NO \[LIMIT\]", reply.tagged) is not None


async def test_too_many_keywords_on_a_message_are_refused(legacy: Stack) -> None:
    url = legacy.gateway.settings.database()
    client, uids = await selected(legacy)
    uid = uids[1]
    before = await fetch_flags(client, uid)
    for change in ("+FLAGS", "FLAGS", "+FLAGS.SILENT"):
        refused = await client.command(f"UID STORE {uid} {change} ({keywords(MAX_KEYWORDS + 1)})")
        assert limit(refused), refused
    huge = await client.command(f"UID STORE {uid} +FLAGS ({keywords(4000, 'mot-cle-')})")
    assert limit(huge), huge
    assert await fetch_flags(client, uid) == before
    assert await kept_rows(url) == set()

    # the same keyword a thousand times, in any case, is one keyword
    repeated = " ".join(["$Same", "$SAME", "$same"] * 333)
    await client.ok(f"UID STORE {uid} +FLAGS ({repeated})")
    assert len(await kept_rows(url)) == 1

    await client.ok(f"UID STORE {uid} FLAGS ({keywords(MAX_KEYWORDS)})")
    one_more = await client.command(f"UID STORE {uid} +FLAGS (extra)")
    assert limit(one_more), one_more
    full = await fetch_flags(client, uid)
    assert len(full.split()) == MAX_KEYWORDS
    await client.ok(f"UID STORE {uid} +FLAGS (\\Answered)")  # a system flag: no keyword
    assert len(await kept_rows(url)) == MAX_KEYWORDS + 1

    drafts = await historic_messages(legacy.mock, DUPONT, DRAFTS_ID)
    appended = await client.command(
        f"APPEND Brouillons ({keywords(MAX_KEYWORDS + 1)}) ", Lit(MESSAGE)
    )
    assert limit(appended), appended
    assert await historic_messages(legacy.mock, DUPONT, DRAFTS_ID) == drafts  # no draft made
    await client.close()


async def test_long_keywords_are_refused(legacy: Stack) -> None:
    url = legacy.gateway.settings.database()
    client, uids = await selected(legacy)
    longest = "x" * MAX_KEYWORD_LENGTH
    for too_long in ("y" * (MAX_KEYWORD_LENGTH + 1), "z" * 30_000):
        refused = await client.command(f"UID STORE {uids[0]} +FLAGS ({too_long})")
        assert limit(refused), refused
        refused = await client.command(f"APPEND Brouillons ({too_long}) ", Lit(MESSAGE))
        assert limit(refused), refused
    assert await kept_rows(url) == set()
    await client.ok(f"UID STORE {uids[0]} +FLAGS ({longest})")
    assert {flag for _, _, flag in await kept_rows(url)} == {longest}
    await client.close()


NOT_ATOMS = [
    b'(a"b)',
    b"(a]b)",
    b"(a%b)",
    b"(a*)",
    b"(a{b)",
    b"(a(b))",
    b"(caf\xc3\xa9)",
    b"(\xff\xfe)",
    b"(a\x01b)",
    b"(a\x7fb)",
    b"(\\Unknown)",
    b"(\\)",
    b'("quoted")',
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def unwritten(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One historic stack for every probe that must write nothing (a stack each was most of
    the module's time): whatever one of them wrote, the next would see in the table too."""
    directory = tmp_path_factory.mktemp("not-atoms")
    async with running_stack(
        gateway_settings(directory / "gateway"),
        quick_mock_settings(),
        directory / "mock",
        configure_with(),
    ) as running:
        yield running


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("flags", NOT_ATOMS)
async def test_keywords_that_are_not_atoms_are_refused(unwritten: Stack, flags: bytes) -> None:
    url = unwritten.gateway.settings.database()
    client, uids = await selected(unwritten)
    before = await fetch_flags(client, uids[0])
    reply = await client.command(b"UID STORE %d +FLAGS " % uids[0] + flags)
    assert reply.status == "BAD", reply
    await client.ok("NOOP")  # the session goes on
    assert await fetch_flags(client, uids[0]) == before
    assert await kept_rows(url) == set()
    await client.close()


async def test_a_folder_keeps_a_bounded_number_of_keywords(legacy: Stack) -> None:
    """Every SELECT lists the folder's keywords in FLAGS: their number is bounded too."""
    per_message = MAX_KEYWORDS
    needed = MAX_FOLDER_KEYWORDS // per_message + 1
    client, uids = await selected(legacy)
    for n in range(needed - len(uids)):
        await historic_send(legacy.mock, DUPONT, DUPONT, f"Rappel {n}")
    async with asyncio.timeout(10):
        while len(uids) < needed:
            await client.ok("NOOP")
            uids = (await client.ok("UID SEARCH ALL")).search()
    for index, uid in enumerate(uids[: needed - 1]):
        await client.ok(f"UID STORE {uid} +FLAGS ({keywords(per_message, f'm{index}-')})")
    last = uids[needed - 1]
    refused = await client.command(f"UID STORE {last} +FLAGS (nouveau)")
    assert limit(refused), refused
    await client.ok(f"UID STORE {last} +FLAGS (M0-0)")  # one in use already: fine
    again = await client.ok("SELECT INBOX")
    (flags_line,) = [line for line in again.untagged if line.startswith(b"* FLAGS")]
    assert len(flags_line.split()) - 2 - 5 == MAX_FOLDER_KEYWORDS  # "* FLAGS", 5 system flags
    await client.close()


@pytest.fixture
async def historic_db(
    migrated_db_url: str, tmp_path: Path, mock_settings: MockSettings
) -> AsyncIterator[Stack]:
    stack = await start_stack(
        gateway_settings(tmp_path / "gateway", database_url=migrated_db_url),
        mock_settings,
        tmp_path / "mock",
        configure_with(),
    )
    try:
        yield stack
    finally:
        await stack.stop()


async def test_racing_sessions_cannot_pass_the_bound(historic_db: Stack) -> None:
    """Sessions adding keywords to one message at once each check what they know; the
    database's transaction checks again under the folder's lock."""
    url = historic_db.gateway.settings.database()
    sessions = [await selected(historic_db) for _ in range(4)]
    uid = sessions[0][1][0]
    step = MAX_KEYWORDS // 4
    await sessions[0][0].ok(f"UID STORE {uid} +FLAGS ({keywords(step, 'base-')})")
    replies = await asyncio.gather(
        *(
            client.command(f"UID STORE {uid} +FLAGS ({keywords(step, f's{n}-')})")
            for n, (client, _) in enumerate(sessions)
        )
    )
    accepted = [r for r in replies if r.status == "OK"]
    assert all(r.status == "OK" or limit(r) for r in replies), replies
    assert len(accepted) == 3
    assert len(await kept_rows(url)) == MAX_KEYWORDS
    # every session comes to see what the table holds (the last to write, at once)
    async with asyncio.timeout(10):
        for client, _ in sessions:
            while len(_keywords(await fetch_flags(client, uid))) != MAX_KEYWORDS:
                await client.ok("NOOP")
            await client.close()


def _keywords(flags: bytes) -> list[bytes]:
    return [flag for flag in flags.split() if not flag.startswith(b"\\")]
