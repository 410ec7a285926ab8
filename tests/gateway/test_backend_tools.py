"""One contract for the operator's tool access (`Backend.tools`), run against every kind
of backend on real sockets: the mock's modern platform over IMAP with the master login,
the historic platform through its own IMAP (`historic_imap`), and the historic web
services alone (whose store cannot append outside Drafts nor give a message's original
bytes: what the contract allows them to refuse is said per kind)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from gateway.backends.base import Backend, MailboxAccess, digest
from gateway.backends.errors import BackendCannot, BackendError, BackendNotFound
from gateway.settings import Settings
from mock_operator.server import MockOperator
from tests.conftest import quick_mock_settings
from tests.support.stacks import (
    Stack,
    configure_with,
    gateway_settings,
    historic_backend,
    running_stack,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MARTIN = "claire.martin@medecin.mssante.fr"
DUPONT = "jean.dupont@medecin.mssante.fr"


@dataclass(frozen=True)
class Kind:
    backend: str
    bal: str
    folder: str  # where the tools may append: a name, or a special use
    keeps_bytes: bool  # fetch gives back exactly what was appended
    keeps_date: bool  # the internal date given to append is kept
    keeps_keywords: bool


KINDS = [
    Kind("modern", MARTIN, "INBOX", True, True, True),
    Kind("historic-imap", DUPONT, "INBOX", True, True, True),
    Kind("historic", DUPONT, "\\Drafts", False, False, True),
]


def with_historic_imap(settings: Settings, mock: MockOperator) -> None:
    """The demo's backends, and the historic platform once more through its own IMAP."""
    configure_with()(settings, mock)
    settings.backends["historic-imap"] = historic_backend(
        mock,
        historic_imap=True,
        imap_port=mock.historic_imap_port,
        imap_tls="starttls",
        ca_file=mock.tls_cert,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def both(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One stack for the module (a stack per test was nearly all its time): each test works on
    messages of its own (fresh subjects, UIDs it appended) and compares with what it saw
    before, so what another test left in a folder changes nothing."""
    directory = tmp_path_factory.mktemp("backend-tools")
    async with running_stack(
        gateway_settings(directory / "gateway"),
        quick_mock_settings(),
        directory / "mock",
        with_historic_imap,
    ) as running:
        yield running


@pytest.fixture(params=KINDS, ids=[k.backend for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    param: Kind = request.param
    return param


def backend(stack: Stack, name: str) -> Backend:
    assert stack.gateway.router is not None
    return stack.gateway.router.backends[name]


@pytest_asyncio.fixture(loop_scope="module")
async def tools(both: Stack, kind: Kind) -> AsyncIterator[MailboxAccess]:
    access = await backend(both, kind.backend).tools(kind.bal)
    try:
        yield access
    finally:
        await access.aclose()


def letter(subject: str) -> bytes:
    return (
        f"From: {MARTIN}\r\nTo: {DUPONT}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@test>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0100\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Bonjour,\r\nvoici le compte rendu.\r\n"
    ).encode()


async def test_folders_with_special_use(tools: MailboxAccess):
    folders = {f.name: f.special_use for f in await tools.folders()}
    assert "INBOX" in folders
    assert {"\\Sent", "\\Drafts", "\\Trash"} <= set(folders.values())


async def named(tools: MailboxAccess, folder: str) -> str:
    """`folder`, or the name of the folder of that special use."""
    if not folder.startswith("\\"):
        return folder
    (name,) = [f.name for f in await tools.folders() if f.special_use == folder]
    return name


async def test_append_list_fetch_flags_delete(tools: MailboxAccess, kind: Kind):
    folder = await named(tools, kind.folder)
    subject = f"outil {uuid.uuid4().hex[:8]}"
    raw = letter(subject)
    when = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    before = {m.uid for m in await tools.messages(folder)}
    uid = await tools.append(folder, raw, ["\\Seen"], when)
    assert uid not in before

    listed = {m.uid: m for m in await tools.messages(folder)}
    assert set(listed) == before | {uid}
    message = listed[uid]
    assert "\\Seen" in message.flags
    body = await tools.fetch(folder, uid)
    assert message.digest == digest(body)
    assert message.size == len(body)
    assert subject.encode() in body
    if kind.keeps_bytes:
        assert body == raw
    if kind.keeps_date:
        assert message.internal_date == when

    wanted = {"\\Seen", "\\Flagged"} | ({"$Forwarded"} if kind.keeps_keywords else set())
    await tools.set_flags(folder, uid, wanted)
    again = {m.uid: m for m in await tools.messages(folder)}
    assert again[uid].flags >= wanted
    assert again[uid].digest == message.digest, "the digest is stable"

    await tools.delete(folder, [uid])
    assert uid not in {m.uid for m in await tools.messages(folder)}
    with pytest.raises(BackendNotFound):
        await tools.fetch(folder, uid)


async def test_digests_are_stable_across_sessions(both: Stack, tools: MailboxAccess, kind: Kind):
    first = {m.uid: m.digest for m in await tools.messages("INBOX")}
    assert first, "the seeded BAL has messages"
    second_access = await backend(both, kind.backend).tools(kind.bal)
    try:
        second = {m.uid: m.digest for m in await second_access.messages("INBOX")}
        uid = min(first)
        assert digest(await second_access.fetch("INBOX", uid)) == first[uid]
    finally:
        await second_access.aclose()
    assert second == first


async def test_unknown_folder_is_not_found(tools: MailboxAccess):
    with pytest.raises(BackendNotFound):
        await tools.messages("Nowhere/At all")


async def test_the_historic_web_services_append_only_to_drafts(both: Stack):
    access = await backend(both, "historic").tools(DUPONT)
    try:
        with pytest.raises(BackendCannot):
            await access.append("INBOX", letter("pas ici"), ())
    finally:
        await access.aclose()


async def test_fetch_many_reads_a_batch_in_one_request(tools: MailboxAccess, kind: Kind):
    """The IMAP accesses read several messages per UID FETCH (a migration's copy); an
    expunged UID is absent from the answer, not an error."""
    many = getattr(tools, "fetch_many", None)
    if many is None:
        pytest.skip(f"{kind.backend}: fetches one message at a time")
    folder = await named(tools, kind.folder)
    await tools.messages(folder)  # selected: appending must still work and be seen
    raws = [letter(f"lot {uuid.uuid4().hex[:8]}") for _ in range(3)]
    uids = [await tools.append(folder, raw, ["\\Seen"]) for raw in raws]
    await tools.delete(folder, [uids[1]])
    found = await many(folder, [*uids, max(uids) + 1000])
    assert found == {uids[0]: raws[0], uids[2]: raws[2]}
    assert {uids[0], uids[2]} <= {m.uid for m in await tools.messages(folder)}


async def test_append_many_pipelines_a_batch(tools: MailboxAccess, kind: Kind):
    """The IMAP accesses APPEND a batch at once (LITERAL+), each message with its flags and
    date, the new UIDs in order; a refusal in the batch is raised, not skipped."""
    many = getattr(tools, "append_many", None)
    if many is None:
        pytest.skip(f"{kind.backend}: appends one message at a time")
    folder = await named(tools, kind.folder)
    await tools.messages(folder)  # selected: appending must still work and be seen
    when = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    raws = [letter(f"pipeline {uuid.uuid4().hex[:8]}") for _ in range(5)]
    flags = [frozenset({"\\Seen"}), frozenset({"$MDNSent"}), frozenset(), frozenset(), frozenset()]
    uids = await many(folder, [(raw, f, when) for raw, f in zip(raws, flags, strict=True)])
    assert uids == sorted(uids)
    assert len(set(uids)) == 5
    listed = {m.uid: m for m in await tools.messages(folder)}
    for uid, raw, flag in zip(uids, raws, flags, strict=True):
        assert listed[uid].digest == digest(raw)
        assert flag <= listed[uid].flags
        assert listed[uid].internal_date == when
    with pytest.raises(BackendError):
        await many("Nulle part " + uuid.uuid4().hex[:6], [(raws[0], (), None)] * 2)
