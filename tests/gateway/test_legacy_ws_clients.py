"""Real IMAP clients on a historic BAL through the gateway (issue 6 §3): imaplib, aioimaplib
(test-only) and curl talk to jean.dupont's BAL, which the gateway's IMAP engine serves over
the mock's historic web services; what they see and change is checked against the web
services themselves (`historic_call`), not against the gateway.

The byte-level checks with the raw client are in test_legacy_ws_imap.py; here every
operation goes through a client as a user's software would send it: LIST with special
use, SELECT against searchMessages, FETCH (BODY[] stable across fetches and clients,
RFC822.SIZE its length, BODYSTRUCTURE), SEARCH against the services' own search, STORE,
MOVE, EXPUNGE, APPEND and IDLE seeing mail delivered on the historic side.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import imaplib
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioimaplib
import pytest
import pytest_asyncio

from gateway.imap import mutf7
from gateway.settings import MockSettings, Settings
from tests.conftest import quick_mock_settings, require_peer
from tests.gateway.test_legacy_ws_imap import DUPONT
from tests.historic import historic_call, historic_messages, historic_send
from tests.support.stacks import Stack, configure_with, gateway_settings, running_stack

HOST = "127.0.0.1"
TIMEOUT = 10.0
IDLE_BOUND = 30.0
PETIT = "marie.petit@sage-femme.mssante.fr"
INBOX_ID, TRASH_ID, SENT_ID, DRAFTS_ID = 2, 3, 5, 6
SPECIAL_IDS = {b"\\Sent": SENT_ID, b"\\Drafts": DRAFTS_ID, b"\\Trash": TRASH_ID}
LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) "/" (?P<name>"(?:[^"\\]|\\.)*"|\S+)$')
SEARCH_LINE = re.compile(rb"^(?:\* )?SEARCH((?: \d+)*)$")
FETCH_HEAD = re.compile(rb"^\d+ (?:FETCH )?\(.*\{(\d+)\}$")


@pytest.fixture
async def historic(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
) -> AsyncIterator[Stack]:
    configure = configure_with(poll_interval=0.5)
    async with running_stack(
        stack_settings, mock_settings, tmp_path / "mock", configure
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def unchanged(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """`historic` once for the tests that only read (a stack each was most of their time):
    they fetch with BODY.PEEK[], EXAMINE and search, so the BAL stays as seeded (the fetch
    test checks that nothing was marked read). Tests that change it keep a stack each."""
    directory = tmp_path_factory.mktemp("legacy-ws-reading")
    async with running_stack(
        gateway_settings(directory / "gateway"),
        quick_mock_settings(),
        directory / "mock",
        configure_with(poll_interval=0.5),
    ) as running:
        yield running


# -- the historic side, as the oracle -------------------------------------------------------


async def on_the_mock(
    stack: Stack, folder_id: int | None = INBOX_ID, **query: Any
) -> list[dict[str, Any]]:
    return await historic_messages(stack.mock, DUPONT, folder_id, **query)


async def historic_folders(stack: Stack) -> dict[int, str]:
    found = await historic_call(stack.mock, "Folder", "listFolders", {"email": DUPONT})
    out: dict[int, str] = {}
    stack_: list[dict[str, Any]] = list(found["folders"])
    while stack_:
        folder = stack_.pop()
        out[folder["id"]] = folder["name"]
        stack_.extend(folder.get("children") or [])
    return out


async def historic_message(stack: Stack, message_id: str) -> dict[str, Any] | None:
    """The message wherever it is (any folder, Trash included), or None once deleted."""
    for folder_id in await historic_folders(stack):
        for message in await on_the_mock(stack, folder_id):
            if message["messageId"] == message_id:
                return message
    return None


def subject_of(raw: bytes) -> str:
    return str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"])


async def send_from_petit(stack: Stack, subject: str) -> None:
    """marie.petit (another historic BAL) writes to jean.dupont: delivered to his Inbox."""
    await historic_send(stack.mock, PETIT, DUPONT, subject, "Message remis côté historique.")


# -- two clients behind one interface ---------------------------------------------------------


def parse_select(lines: list[bytes]) -> dict[str, int]:
    text = b"\n".join(lines)
    out: dict[str, int] = {}
    exists = re.search(rb"(?m)^(?:\* )?(\d+) EXISTS", text)
    assert exists, text
    out["EXISTS"] = int(exists.group(1))
    for name in ("UIDVALIDITY", "UIDNEXT"):
        found = re.search(rb"\[" + name.encode() + rb" (\d+)\]", text)
        assert found, text
        out[name] = int(found.group(1))
    return out


def parse_bodies(items: list[Any]) -> dict[int, tuple[int, bytes]]:
    """uid → (RFC822.SIZE, BODY[]) from FETCH answers: a head ending in ``{n}``, then the
    literal (imaplib gives both as a tuple, aioimaplib as two lines)."""
    out: dict[int, tuple[int, bytes]] = {}
    flat: list[bytes] = []
    for item in items:
        if isinstance(item, tuple):
            flat.extend(bytes(part) for part in item)
        else:
            flat.append(bytes(item))
    for index, head in enumerate(flat):
        if not FETCH_HEAD.match(head) or b"BODY[]" not in head:
            continue
        uid = re.search(rb"UID (\d+)", head)
        size = re.search(rb"RFC822\.SIZE (\d+)", head)
        assert uid, head
        assert size, head
        literal = flat[index + 1]
        assert len(literal) == int(FETCH_HEAD.match(head).group(1))  # type: ignore[union-attr]
        out[int(uid.group(1))] = (int(size.group(1)), literal)
    return out


def parse_search(lines: list[bytes]) -> list[int]:
    for line in lines:
        found = SEARCH_LINE.match(line.rstrip(b"\r\n "))
        if found:
            return [int(n) for n in found.group(1).split()]
    return []


def flatten(items: list[Any]) -> bytes:
    parts: list[bytes] = []
    for item in items:
        if isinstance(item, tuple):
            parts.extend(bytes(part) for part in item)
        elif item is not None:
            parts.append(bytes(item))
    return b"".join(parts)


class Mua:
    """What a test needs of an IMAP client; (status, untagged and tagged text) answers."""

    name = ""

    async def list(self) -> list[bytes]:
        raise NotImplementedError

    async def select(self, folder: str) -> dict[str, int]:
        raise NotImplementedError

    async def uid_search(self, *criteria: str) -> list[int]:
        raise NotImplementedError

    async def bodies(self) -> dict[int, tuple[int, bytes]]:
        raise NotImplementedError

    async def bodystructure(self, uid: int) -> bytes:
        raise NotImplementedError

    async def uid_store(self, uid: int, change: str, flags: str) -> tuple[str, bytes]:
        raise NotImplementedError

    async def uid_move(self, uid: int, folder: str) -> tuple[str, bytes]:
        raise NotImplementedError

    async def expunge(self) -> tuple[str, bytes]:
        raise NotImplementedError

    async def append(self, folder: str, message: bytes) -> tuple[str, bytes]:
        raise NotImplementedError

    async def logout(self) -> None:
        raise NotImplementedError


class Imaplib(Mua):
    name = "imaplib"

    def __init__(self, imap: imaplib.IMAP4) -> None:
        self.imap = imap

    @classmethod
    async def login(cls, stack: Stack, persona: str = "dr-dupont") -> Imaplib:
        token = await stack.token(persona)

        def connect() -> imaplib.IMAP4:
            imap = imaplib.IMAP4(HOST, stack.imap_port, timeout=TIMEOUT)
            sasl = f"user={DUPONT}\x01auth=Bearer {token}\x01\x01".encode()
            status, _ = imap.authenticate("XOAUTH2", lambda _: sasl)
            assert status == "OK"
            return imap

        return cls(await asyncio.to_thread(connect))

    async def _run(self, name: str, *args: Any) -> tuple[str, list[Any]]:
        status, data = await asyncio.to_thread(getattr(self.imap, name), *args)
        return str(status), list(data)

    async def list(self) -> list[bytes]:
        status, data = await self._run("list", '""', "*")
        assert status == "OK"
        return [bytes(line) for line in data]

    async def select(self, folder: str) -> dict[str, int]:
        status, data = await self._run("select", f'"{folder}"')
        assert status == "OK", data
        lines = [b"%s EXISTS" % data[0]]
        for name in ("UIDVALIDITY", "UIDNEXT"):
            _, values = self.imap.response(name)
            lines.append(b"[%s %s]" % (name.encode(), values[0]))
        return parse_select(lines)

    async def uid_search(self, *criteria: str) -> list[int]:
        status, data = await self._run("uid", "SEARCH", *criteria)
        assert status == "OK", data
        return [int(n) for n in data[0].split()]

    async def bodies(self) -> dict[int, tuple[int, bytes]]:
        status, data = await self._run("uid", "FETCH", "1:*", "(UID RFC822.SIZE BODY.PEEK[])")
        assert status == "OK", data
        return parse_bodies(data)

    async def bodystructure(self, uid: int) -> bytes:
        status, data = await self._run("uid", "FETCH", str(uid), "(BODYSTRUCTURE)")
        assert status == "OK", data
        return flatten(data)

    async def uid_store(self, uid: int, change: str, flags: str) -> tuple[str, bytes]:
        status, data = await self._run("uid", "STORE", str(uid), change, flags)
        return status, flatten(data)

    async def uid_move(self, uid: int, folder: str) -> tuple[str, bytes]:
        status, data = await self._run("uid", "MOVE", str(uid), f'"{folder}"')
        return status, flatten(data)

    async def expunge(self) -> tuple[str, bytes]:
        status, data = await self._run("expunge")
        return status, b" ".join(b"%s EXPUNGE" % n for n in data if n)

    async def append(self, folder: str, message: bytes) -> tuple[str, bytes]:
        status, data = await self._run("append", f'"{folder}"', "(\\Draft)", None, message)
        return status, flatten(data)

    async def logout(self) -> None:
        await asyncio.to_thread(self.imap.logout)


class Aioimaplib(Mua):
    name = "aioimaplib"

    def __init__(self, client: aioimaplib.IMAP4) -> None:
        self.client = client

    @classmethod
    async def login(cls, stack: Stack, persona: str = "dr-dupont") -> Aioimaplib:
        client = aioimaplib.IMAP4(HOST, stack.imap_port, timeout=TIMEOUT)
        await client.wait_hello_from_server()
        assert (await client.xoauth2(DUPONT, await stack.token(persona))).result == "OK"
        await client.protocol.capability()  # as clients do: ask again once logged in
        assert client.has_capability("MOVE")
        return cls(client)

    @staticmethod
    def _answer(response: Any) -> tuple[str, bytes]:
        return str(response.result), b"\n".join(bytes(line) for line in response.lines)

    async def list(self) -> list[bytes]:
        response = await self.client.list('""', '"*"')
        assert response.result == "OK"
        return [bytes(line) for line in response.lines if bytes(line).startswith(b"(")]

    async def select(self, folder: str) -> dict[str, int]:
        response = await self.client.select(f'"{folder}"')
        assert response.result == "OK", response
        return parse_select([bytes(line) for line in response.lines])

    async def uid_search(self, *criteria: str) -> list[int]:
        response = await self.client.uid_search(*criteria, charset=None)
        assert response.result == "OK", response
        # aioimaplib drops the response name: ``* SEARCH 1 2`` comes as ``1 2``
        untagged = [bytes(line) for line in response.lines[:-1]]
        return parse_search([b"SEARCH " + line for line in untagged] or [b"SEARCH"])

    async def bodies(self) -> dict[int, tuple[int, bytes]]:
        response = await self.client.uid("fetch", "1:*", "(UID RFC822.SIZE BODY.PEEK[])")
        assert response.result == "OK", response
        return parse_bodies(list(response.lines))

    async def bodystructure(self, uid: int) -> bytes:
        response = await self.client.uid("fetch", str(uid), "(BODYSTRUCTURE)")
        assert response.result == "OK", response
        return b"".join(bytes(line) for line in response.lines[:-1])

    async def uid_store(self, uid: int, change: str, flags: str) -> tuple[str, bytes]:
        return self._answer(await self.client.uid("store", str(uid), change, flags))

    async def uid_move(self, uid: int, folder: str) -> tuple[str, bytes]:
        return self._answer(await self.client.uid("move", str(uid), f'"{folder}"'))

    async def expunge(self) -> tuple[str, bytes]:
        return self._answer(await self.client.expunge())

    async def append(self, folder: str, message: bytes) -> tuple[str, bytes]:
        return self._answer(await self.client.append(message, f'"{folder}"', "(\\Draft)"))

    async def logout(self) -> None:
        await self.client.logout()


MUAS: dict[str, type[Imaplib] | type[Aioimaplib]] = {"imaplib": Imaplib, "aioimaplib": Aioimaplib}


@contextlib.asynccontextmanager
async def logged_in(kind: str, stack: Stack) -> AsyncIterator[Mua]:
    client = await MUAS[kind].login(stack)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.logout(), TIMEOUT)


@pytest.fixture(params=sorted(MUAS))
async def mua(request: pytest.FixtureRequest, historic: Stack) -> AsyncIterator[Mua]:
    async with logged_in(request.param, historic) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module", params=sorted(MUAS))
async def reader(request: pytest.FixtureRequest, unchanged: Stack) -> AsyncIterator[Mua]:
    """`mua` on the shared stack of the reading tests."""
    async with logged_in(request.param, unchanged) as client:
        yield client


def listed(lines: list[bytes]) -> dict[str, bytes]:
    """LIST answers: decoded mailbox name → its attributes."""
    out: dict[str, bytes] = {}
    for line in lines:
        found = LIST_LINE.match(line.removeprefix(b"* LIST "))
        assert found, line
        name = found.group("name").decode("ascii").strip('"')
        out[mutf7.decode(name)] = found.group("flags")
    return out


def special(folders: dict[str, bytes], use: bytes) -> str:
    (name,) = [name for name, flags in folders.items() if use in flags.split()]
    return name


async def uids_by_id(mua: Mua, stack: Stack, folder_id: int = INBOX_ID) -> dict[str, int]:
    """historic messageId → UID in the selected folder, matched on the subject."""
    messages = await on_the_mock(stack, folder_id)
    by_subject = {m["subject"]: m["messageId"] for m in messages}
    assert len(by_subject) == len(messages), "subjects are not unique in this folder"
    out = {by_subject[subject_of(body)]: uid for uid, (_, body) in (await mua.bodies()).items()}
    assert len(out) == len(messages)
    return out


# -- reading ----------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_list_shows_inbox_and_the_special_folders_of_the_services(
    reader: Mua, unchanged: Stack
):
    mua, historic = reader, unchanged
    folders = listed(await mua.list())
    names = await historic_folders(historic)
    assert "INBOX" in folders
    assert len(folders) == len(names) - (1 if 1 in names else 0)
    for use, folder_id in SPECIAL_IDS.items():
        assert special(folders, use) == names[folder_id], (use, folders)


@pytest.mark.asyncio(loop_scope="module")
async def test_select_agrees_with_search_messages(reader: Mua, unchanged: Stack):
    mua, historic = reader, unchanged
    inbox = await on_the_mock(historic, INBOX_ID)
    unread = await on_the_mock(historic, INBOX_ID, seen=False)
    selected = await mua.select("INBOX")
    assert selected["EXISTS"] == len(inbox) >= 3
    assert selected["UIDVALIDITY"] > 0
    uids = await mua.uid_search("ALL")
    assert len(uids) == len(inbox)
    assert selected["UIDNEXT"] > max(uids)
    assert len(await mua.uid_search("UNSEEN")) == len(unread) > 0
    # another folder: the same figures for Sent
    sent = await on_the_mock(historic, SENT_ID)
    sent_name = special(listed(await mua.list()), b"\\Sent")
    assert (await mua.select(mutf7.encode(sent_name)))["EXISTS"] == len(sent)


@pytest.mark.asyncio(loop_scope="module")
async def test_fetch_is_stable_sized_and_structured(reader: Mua, unchanged: Stack):
    mua, historic = reader, unchanged
    inbox = {m["messageId"]: m for m in await on_the_mock(historic, INBOX_ID)}
    await mua.select("INBOX")
    first = await mua.bodies()
    second = await mua.bodies()
    assert len(first) == len(inbox)
    assert first == second
    for size, body in first.values():
        assert size == len(body)
    by_id = await uids_by_id(mua, historic)
    for message_id, message in inbox.items():
        structure = await mua.bodystructure(by_id[message_id])
        assert b"BODYSTRUCTURE (" in structure
        attachments = message.get("attachments") or []
        assert (b'"MIXED"' in structure.upper()) == bool(attachments), structure
        for attachment in attachments:
            assert attachment["fileName"].encode() in structure
    # nothing was marked read by these BODY.PEEK[] fetches
    assert len(await on_the_mock(historic, INBOX_ID, seen=False)) == len(
        [m for m in inbox.values() if "UNREAD" in m["flags"]]
    )


@pytest.mark.asyncio(loop_scope="module")
async def test_bodies_are_identical_across_clients(unchanged: Stack):
    historic = unchanged
    first = await Imaplib.login(historic)
    second = await Aioimaplib.login(historic)
    try:
        await first.select("INBOX")
        await second.select("INBOX")
        ours, theirs = await first.bodies(), await second.bodies()
        assert ours == theirs
        assert len(ours) == len(await on_the_mock(historic, INBOX_ID))
    finally:
        await first.logout()
        await second.logout()


@pytest.mark.asyncio(loop_scope="module")
async def test_search_agrees_with_the_services(reader: Mua, unchanged: Stack):
    mua, historic = reader, unchanged
    await mua.select("INBOX")
    by_id = await uids_by_id(mua, historic)
    cases: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (("SUBJECT", '"patient commun"'), {"subject": "patient commun"}),
        (("FROM", '"labo-biomed"'), {"from": "labo-biomed"}),
        (("UNSEEN",), {"seen": False}),
        (("SEEN",), {"seen": True}),
        (("FLAGGED",), {"flagged": True}),
    ]
    for criteria, query in cases:
        expected = sorted(by_id[m["messageId"]] for m in await on_the_mock(historic, **query))
        assert expected, criteria  # every case matches something, so it can fail
        assert await mua.uid_search(*criteria) == expected, criteria
    assert await mua.uid_search("SUBJECT", '"aucun message ainsi"') == []


# -- changing ---------------------------------------------------------------------------------


async def test_store_reaches_the_services(mua: Mua, historic: Stack):
    await mua.select("INBOX")
    by_id = await uids_by_id(mua, historic)
    plain = next(m for m in await on_the_mock(historic, flagged=False))
    status, text = await mua.uid_store(by_id[plain["messageId"]], "+FLAGS", "(\\Flagged)")
    assert status == "OK", text
    assert b"\\Flagged" in text
    flagged = await historic_message(historic, plain["messageId"])
    assert flagged is not None
    assert "FLAGGED" in flagged["flags"]
    status, text = await mua.uid_store(by_id[plain["messageId"]], "-FLAGS", "(\\Flagged)")
    assert status == "OK", text
    unflagged = await historic_message(historic, plain["messageId"])
    assert unflagged is not None
    assert "FLAGGED" not in unflagged["flags"]

    unread = next(m for m in await on_the_mock(historic, seen=False))
    status, text = await mua.uid_store(by_id[unread["messageId"]], "+FLAGS", "(\\Seen)")
    assert status == "OK", text
    read = await historic_message(historic, unread["messageId"])
    assert read is not None
    assert "UNREAD" not in read["flags"]
    status, _ = await mua.uid_store(by_id[unread["messageId"]], "-FLAGS", "(\\Seen)")
    assert status == "OK"
    again = await historic_message(historic, unread["messageId"])
    assert again is not None
    assert "UNREAD" in again["flags"]


async def test_move_to_trash_lands_in_folder_3(mua: Mua, historic: Stack):
    trash = special(listed(await mua.list()), b"\\Trash")
    await mua.select("INBOX")
    by_id = await uids_by_id(mua, historic)
    message_id, uid = sorted(by_id.items())[0]
    status, text = await mua.uid_move(uid, mutf7.encode(trash))
    assert status == "OK", text
    moved = await historic_message(historic, message_id)
    assert moved is not None
    assert moved["folderId"] == TRASH_ID
    assert uid not in await mua.uid_search("ALL")
    assert (await mua.select(mutf7.encode(trash)))["EXISTS"] == 1


async def test_deleted_then_expunge_deletes_on_the_services(mua: Mua, historic: Stack):
    await mua.select("INBOX")
    by_id = await uids_by_id(mua, historic)
    message_id, uid = max(by_id.items(), key=lambda item: item[1])
    status, text = await mua.uid_store(uid, "+FLAGS", "(\\Deleted)")
    assert status == "OK", text
    assert await historic_message(historic, message_id) is not None  # only marked so far
    status, text = await mua.expunge()
    assert status == "OK", text
    assert b"EXPUNGE" in text
    assert await historic_message(historic, message_id) is None
    assert len(await on_the_mock(historic, INBOX_ID)) == len(by_id) - 1
    assert uid not in await mua.uid_search("ALL")


def draft(subject: str) -> bytes:
    return (
        f"From: Jean DUPONT <{DUPONT}>\r\nTo: claire.martin@medecin.mssante.fr\r\n"
        f"Subject: {subject}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nA terminer.\r\n"
    ).encode()


async def test_append_to_drafts_only(mua: Mua, historic: Stack):
    drafts = special(listed(await mua.list()), b"\\Drafts")
    subject = f"Brouillon via {mua.name}"
    inbox_before = len(await on_the_mock(historic, INBOX_ID))
    status, text = await mua.append(mutf7.encode(drafts), draft(subject))
    assert status == "OK", text
    assert b"APPENDUID" in text
    saved = await on_the_mock(historic, DRAFTS_ID)
    assert [m["subject"] for m in saved] == [subject]
    assert "DRAFT" in saved[0]["flags"]
    status, text = await mua.append("INBOX", draft("Pas ici"))
    assert status == "NO"
    assert b"[CANNOT]" in text
    assert len(await on_the_mock(historic, INBOX_ID)) == inbox_before


async def test_idle_sees_mail_delivered_on_the_historic_side(historic: Stack):
    session = await Aioimaplib.login(historic)
    client = session.client
    try:
        exists = (await session.select("INBOX"))["EXISTS"]
        idle = await client.idle_start(timeout=IDLE_BOUND + 5)
        started = time.monotonic()
        await send_from_petit(historic, "Naissance prévue la semaine prochaine")
        wanted = b"%d EXISTS" % (exists + 1)
        seen: list[bytes] = []
        async with asyncio.timeout(IDLE_BOUND):
            while wanted not in seen:
                seen += [bytes(line) for line in await client.wait_server_push(IDLE_BOUND)]
        assert time.monotonic() - started < IDLE_BOUND
        client.idle_done()
        done = await asyncio.wait_for(idle, TIMEOUT)
        assert done.result == "OK"
        bodies = await session.bodies()
        newest = bodies[max(bodies)][1]
        assert subject_of(newest) == "Naissance prévue la semaine prochaine"
        assert PETIT.encode() in newest
    finally:
        await session.logout()


# -- curl -------------------------------------------------------------------------------------


async def curl(stack: Stack, path: str, *extra: str, persona: str = "dr-dupont") -> bytes:
    """curl through the gateway (XOAUTH2, user=the BAL); its output (asserts success)."""
    code, out, err = await curl_run(stack, path, *extra, persona=persona)
    assert code == 0, err
    return out


async def curl_run(
    stack: Stack, path: str, *extra: str, persona: str = "dr-dupont"
) -> tuple[int, bytes, bytes]:
    require_peer(shutil.which("curl") is not None, "curl not installed")
    token = await stack.token(persona)
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--oauth2-bearer",
        token,
        "--login-options",
        "AUTH=XOAUTH2",
        "--user",
        f"{DUPONT}:",
        f"imap://{HOST}:{stack.imap_port}{path}",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out, err


@pytest.mark.asyncio(loop_scope="module")
async def test_curl_lists_and_examines(unchanged: Stack):
    historic = unchanged
    folders = listed([line for line in (await curl(historic, "/")).splitlines() if line])
    names = await historic_folders(historic)
    assert "INBOX" in folders
    for use, folder_id in SPECIAL_IDS.items():
        assert special(folders, use) == names[folder_id]
    examined = await curl(historic, "/INBOX", "-X", "EXAMINE INBOX")
    state = parse_select(examined.splitlines())
    assert state["EXISTS"] == len(await on_the_mock(historic, INBOX_ID))
    reference = await Imaplib.login(historic)
    try:
        selected = await reference.select("INBOX")
    finally:
        await reference.logout()
    assert state == selected


async def test_curl_fetches_by_uid_the_same_bytes_and_marks_seen(historic: Stack):
    reference = await Imaplib.login(historic)
    try:
        await reference.select("INBOX")
        bodies = await reference.bodies()
        by_id = await uids_by_id(reference, historic)
    finally:
        await reference.logout()
    for uid, (size, body) in bodies.items():
        fetched = await curl(historic, f"/INBOX;UID={uid}")
        assert fetched == body
        assert len(fetched) == size
    # curl fetches BODY[] (not PEEK): every message is now read on the services too
    assert await on_the_mock(historic, INBOX_ID, seen=False) == []
    assert len(by_id) == len(bodies)


@pytest.mark.asyncio(loop_scope="module")
async def test_curl_searches(unchanged: Stack):
    historic = unchanged
    reference = await Imaplib.login(historic)
    try:
        await reference.select("INBOX")
        by_id = await uids_by_id(reference, historic)
    finally:
        await reference.logout()
    for query, criteria in (
        ("SUBJECT%20%22patient%20commun%22", {"subject": "patient commun"}),
        ("UNSEEN", {"seen": False}),
        ("FROM%20labo-biomed", {"from": "labo-biomed"}),
    ):
        expected = sorted(by_id[m["messageId"]] for m in await on_the_mock(historic, **criteria))
        assert expected
        found = parse_search((await curl(historic, f"/INBOX?{query}")).splitlines())
        assert found == expected, query


async def test_curl_stores_flags(historic: Stack):
    reference = await Imaplib.login(historic)
    try:
        await reference.select("INBOX")
        by_id = await uids_by_id(reference, historic)
    finally:
        await reference.logout()
    plain = next(m for m in await on_the_mock(historic, flagged=False))
    uid = by_id[plain["messageId"]]
    out = await curl(historic, "/INBOX", "-X", f"UID STORE {uid} +FLAGS (\\Flagged)")
    assert b"\\Flagged" in out
    stored = await historic_message(historic, plain["messageId"])
    assert stored is not None
    assert "FLAGGED" in stored["flags"]
    unread = next(m for m in await on_the_mock(historic, seen=False))
    await curl(historic, "/INBOX", "-X", f"UID STORE {by_id[unread['messageId']]} +FLAGS \\Seen")
    read = await historic_message(historic, unread["messageId"])
    assert read is not None
    assert "UNREAD" not in read["flags"]


async def test_curl_appends_to_drafts_only(historic: Stack, tmp_path: Path):
    folders = listed([line for line in (await curl(historic, "/")).splitlines() if line])
    drafts = mutf7.encode(special(folders, b"\\Drafts"))
    upload = tmp_path / "draft.eml"
    upload.write_bytes(draft("Brouillon via curl"))
    await curl(historic, f"/{drafts}", "-T", str(upload))
    assert [m["subject"] for m in await on_the_mock(historic, DRAFTS_ID)] == ["Brouillon via curl"]
    inbox_before = len(await on_the_mock(historic, INBOX_ID))
    code, _, err = await curl_run(historic, "/INBOX", "-T", str(upload), "-v")
    assert code != 0
    assert b"[CANNOT]" in err
    assert len(await on_the_mock(historic, INBOX_ID)) == inbox_before
