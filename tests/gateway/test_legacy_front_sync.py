"""syncMessages of the gateway's legacy front with mod-sequences (CONDSTORE/QRESYNC) over a
REAL Dovecot backend, and with snapshots over the mock's modern platform (no CONDSTORE):
one scenario, the same answers.

Another IMAP client (imaplib, directly on the platform) changes flags, expunges, appends,
changes a flag and back, deletes and re-creates a folder (a new UIDVALIDITY) between
syncs; the gateway changes a flag too. Every sync's modified and deleted ids are checked
exactly. What the gateway sent to the backend (`ImapBal.sent`) shows the no-change fast
path (STATUS only: no folder selected, nothing fetched), the catch-up of just the folder
that moved (FETCH CHANGEDSINCE, VANISHED with QRESYNC, UID SEARCH ALL without) and the
snapshot of a folder whose UIDVALIDITY changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.legacy_front.operations import GatewayHistoricOperations
from gateway.legacy_front.sessions import ImapBal, SessionPool
from gateway.mss.historic_ws import HistoricError
from gateway.settings import MockSettings, Settings
from mock_operator.server import MockOperator
from tests.conftest import require_peer
from tests.dovecot import (
    MASTER,
    MASTER_PW,
    dovecot_available,
    dovecot_backend,
    start_dovecot,
)
from tests.gateway.legacy_front_support import MARTIN, ModernImap, call, legacy_operations
from tests.support.stacks import configure_with, running_stack

T = TypeVar("T")
MARTIN_PW = "martin-dovecot-pw"
FOLLOW_UP, ARCHIVES = "Suivi", "Archives"


def check(answer: tuple[str, Any]) -> Any:
    assert answer[0] == "OK", answer
    return answer[1]


def message(subject: str) -> bytes:
    return (
        f"From: Dr Paul LEROY <paul.leroy@medecin.mssante.fr>\r\n"
        f"To: {MARTIN}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test>\r\n"
        f"Date: Mon, 04 Mar 2024 09:15:00 +0100\r\n\r\nCorps de {subject}.\r\n"
    ).encode()


@dataclass
class Platform:
    """Where the BAL lives, reached by another IMAP client; and the gateway's operations."""

    name: str  # the backend's name in the gateway
    open: Callable[[], imaplib.IMAP4]
    operations: GatewayHistoricOperations

    async def run(self, work: Callable[[imaplib.IMAP4], T]) -> T:
        def session() -> T:
            client = self.open()
            try:
                return work(client)
            finally:
                with contextlib.suppress(imaplib.IMAP4.error, OSError):
                    client.logout()

        return await asyncio.to_thread(session)

    async def append(self, folder: str, *subjects: str, flags: str | None = None) -> None:
        def work(client: imaplib.IMAP4) -> None:
            for subject in subjects:
                check(client.append(f'"{folder}"', flags, None, message(subject)))

        await self.run(work)

    async def store(self, folder: str, subject: str, change: str, flags: str) -> None:
        def work(client: imaplib.IMAP4) -> None:
            check(client.select(f'"{folder}"'))
            (uids,) = check(client.uid("SEARCH", "HEADER", "Message-ID", f"<{subject}@test>"))
            assert uids.split(), subject
            for uid in uids.split():
                check(client.uid("STORE", uid, change, flags))
            if "Deleted" in flags:
                check(client.expunge())

        await self.run(work)

    async def uidvalidity(self, folder: str) -> int:
        def work(client: imaplib.IMAP4) -> int:
            (line,) = check(client.status(f'"{folder}"', "(UIDVALIDITY)"))
            return int(line.decode().rsplit("UIDVALIDITY", 1)[1].strip(" )"))

        return await self.run(work)

    async def recreate(self, folder: str) -> None:
        def work(client: imaplib.IMAP4) -> None:
            check(client.delete(f'"{folder}"'))
            check(client.create(f'"{folder}"'))

        await self.run(work)

    def session(self) -> ImapBal:
        (only,) = self.operations.pool.idle_of(self.name, MARTIN)
        return only

    async def sync(self, token: str | None = None) -> tuple[dict[str, Any], list[bytes]]:
        """syncMessages, and the commands the gateway sent the backend for it."""
        with contextlib.suppress(ValueError):
            self.session().sent.clear()
        payload = {"email": MARTIN, **({"token": token} if token else {})}
        answer = await call(self.operations, "dr-martin", "Item", "syncMessages", payload)
        return answer, list(self.session().sent)


def subjects(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["subject"]: m for m in answer["modifiedMessages"]}


def selected(sent: list[bytes]) -> list[bytes]:
    """The folders the gateway selected (EXAMINE/SELECT), as sent."""
    return [c.split(b" ", 1)[1] for c in sent if c.startswith((b"EXAMINE ", b"SELECT "))]


async def scenario(platform: Platform, kind: str) -> None:
    """The same steps and answers on every platform; `kind` says what the gateway must
    have sent: "qresync", "condstore" or "snapshot"."""
    await platform.run(lambda c: [check(c.create(f'"{f}"')) for f in (FOLLOW_UP, ARCHIVES)])
    await platform.append(FOLLOW_UP, "s1", flags="(\\Seen)")
    await platform.append(FOLLOW_UP, "s2", "s3")
    await platform.append(ARCHIVES, "a1", "a2")

    first, _ = await platform.sync()
    assert first["deletedMessageIds"] == []
    ids = {s: m["messageId"] for s, m in subjects(first).items()}
    assert {"s1", "s2", "s3", "a1", "a2"} <= set(ids)
    assert "UNREAD" not in subjects(first)["s1"]["flags"]
    assert "UNREAD" in subjects(first)["s2"]["flags"]
    start = first["token"]

    # nothing changed: the same token, nothing reported; with CONDSTORE nothing selected
    quiet, sent = await platform.sync(start)
    assert quiet == {"token": start, "modifiedMessages": [], "deletedMessageIds": []}
    if kind == "snapshot":
        assert b"UID FETCH 1:* (UID FLAGS)" in sent
    else:
        assert selected(sent) == [], sent
        assert not any(b"FETCH" in c for c in sent), sent
        assert any(c.startswith(b"STATUS ") and b"HIGHESTMODSEQ" in c for c in sent), sent

    # another client flags s2, expunges s3, appends s4 in Suivi; Archives untouched
    await platform.store(FOLLOW_UP, "s2", "+FLAGS", "(\\Flagged)")
    await platform.store(FOLLOW_UP, "s3", "+FLAGS", "(\\Deleted)")
    await platform.append(FOLLOW_UP, "s4")
    changed, sent = await platform.sync(start)
    assert sorted(subjects(changed)) == ["s2", "s4"], sent
    assert subjects(changed)["s2"]["messageId"] == ids["s2"]
    assert "FLAGGED" in subjects(changed)["s2"]["flags"]
    assert subjects(changed)["s4"]["messageId"] not in ids.values()
    assert changed["deletedMessageIds"] == [ids["s3"]]
    ids["s4"] = subjects(changed)["s4"]["messageId"]
    if kind != "snapshot":
        # only Suivi was looked into (then the changed messages described, in Suivi too)
        assert set(selected(sent)) == {b'"Suivi"'}, sent
        catch_up = [c for c in sent if b"CHANGEDSINCE" in c]
        assert len(catch_up) == 1, sent
        assert catch_up[0].startswith(b"UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE ")
        assert catch_up[0].endswith(b" VANISHED)" if kind == "qresync" else b")"), catch_up
        assert (b"UID SEARCH ALL" in sent) == (kind == "condstore"), sent
        assert b"UID FETCH 1:* (UID FLAGS)" not in sent  # no snapshot

    # the same question again gives the same answer, and the next one nothing
    again, sent = await platform.sync(start)
    assert again == changed
    if kind != "snapshot":
        assert not any(b"CHANGEDSINCE" in c for c in sent), sent
    after = changed["token"]
    assert (await platform.sync(after))[0] == {
        "token": after,
        "modifiedMessages": [],
        "deletedMessageIds": [],
    }

    # a flag set and cleared again elsewhere: the mod-sequence moved, the message did not
    await platform.store(ARCHIVES, "a1", "+FLAGS", "(\\Flagged)")
    await platform.store(ARCHIVES, "a1", "-FLAGS", "(\\Flagged)")
    same, sent = await platform.sync(after)
    assert same == {"token": after, "modifiedMessages": [], "deletedMessageIds": []}
    if kind != "snapshot":
        assert selected(sent) == [b'"Archives"'], sent

    # the gateway flags s1 itself (updateMessages): the next sync reports it
    payload = {"email": MARTIN, "messageIds": [ids["s1"]], "operation": "FLAGGED"}
    await call(platform.operations, "dr-martin", "Item", "updateMessages", payload)
    flagged, _ = await platform.sync(after)
    assert sorted(subjects(flagged)) == ["s1"]
    assert "FLAGGED" in subjects(flagged)["s1"]["flags"]
    assert flagged["deletedMessageIds"] == []

    # Archives deleted and made again: a new UIDVALIDITY, its old messages gone
    before = await platform.uidvalidity(ARCHIVES)
    await platform.recreate(ARCHIVES)
    await platform.append(ARCHIVES, "a3")
    assert await platform.uidvalidity(ARCHIVES) != before
    renewed, sent = await platform.sync(flagged["token"])
    assert sorted(subjects(renewed)) == ["a3"]
    assert subjects(renewed)["a3"]["messageId"] not in ids.values()
    assert sorted(renewed["deletedMessageIds"], key=int) == sorted([ids["a1"], ids["a2"]], key=int)
    if kind != "snapshot":
        assert selected(sent).count(b'"Archives"') >= 1, sent
        assert b"UID FETCH 1:* (UID FLAGS)" in sent  # the snapshot of that folder
        assert not any(b"CHANGEDSINCE" in c for c in sent), sent

    # from the first token: everything since, once each
    since_start, _ = await platform.sync(start)
    assert sorted(subjects(since_start)) == ["a3", "s1", "s2", "s4"]
    assert sorted(since_start["deletedMessageIds"], key=int) == sorted(
        [ids["s3"], ids["a1"], ids["a2"]], key=int
    )
    assert since_start["token"] == renewed["token"]


# -- the platforms ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def on_dovecot(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings, avoid: frozenset[str]
) -> AsyncIterator[Platform]:
    require_peer(dovecot_available(), "Dovecot (dovecot-imapd) not installed or not root")
    server = await asyncio.to_thread(
        start_dovecot,
        user=MARTIN,
        password=MARTIN_PW,
        master_user=MASTER,
        master_password=MASTER_PW,
    )
    try:

        def configure(settings: Settings, mock: MockOperator) -> None:
            settings.backends = {"dovecot": dovecot_backend(server)}
            settings.routing.default = "dovecot"

        def direct() -> imaplib.IMAP4:
            client = imaplib.IMAP4(server.host, server.port, timeout=10)
            check(client.login(MARTIN, MARTIN_PW))
            return client

        async with (
            running_stack(stack_settings, mock_settings, tmp_path / "mock", configure) as stack,
            legacy_operations(stack, pool=SessionPool(avoid=avoid)) as (operations, _),
        ):
            yield Platform("dovecot", direct, operations)
    finally:
        await asyncio.to_thread(server.stop)


async def test_sync_with_qresync_on_dovecot(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
) -> None:
    async with on_dovecot(tmp_path, stack_settings, mock_settings, frozenset()) as platform:
        await scenario(platform, "qresync")
        session = platform.session()
        assert session.condstore
        assert session.qresync


async def test_sync_with_condstore_only_on_dovecot(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
) -> None:
    avoid = frozenset({"QRESYNC"})
    async with on_dovecot(tmp_path, stack_settings, mock_settings, avoid) as platform:
        await scenario(platform, "condstore")
        session = platform.session()
        assert session.condstore
        assert not session.qresync


async def test_sync_by_snapshot_on_the_mock_gives_the_same_answers(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
) -> None:
    async with (
        running_stack(stack_settings, mock_settings, tmp_path / "mock", configure_with()) as stack,
        legacy_operations(stack) as (operations, _),
    ):
        modern = ModernImap(stack.mock, MARTIN)
        platform = Platform("modern", modern._open, operations)
        await scenario(platform, "snapshot")
        assert not platform.session().condstore


async def test_a_folder_name_holding_the_servers_delimiter_is_refused_on_dovecot(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
) -> None:
    """Dovecot's maildir separates levels with ".": "a.b" would be b inside a, where the
    client asked for one folder named "a.b". Refused (36), and nothing is created."""
    async with on_dovecot(tmp_path, stack_settings, mock_settings, frozenset()) as platform:
        operations = platform.operations

        def listed(client: imaplib.IMAP4) -> list[bytes]:
            return [line for line in check(client.list()) if isinstance(line, bytes)]

        separator = (await platform.run(listed))[0].split(b'"')[1]
        assert separator == b"."
        with pytest.raises(HistoricError) as refused:
            await call(
                operations, "dr-martin", "Folder", "createFolder", {"email": MARTIN, "name": "a.b"}
            )
        assert refused.value.code == 36
        made = await call(
            operations, "dr-martin", "Folder", "createFolder", {"email": MARTIN, "name": "a-b"}
        )
        assert made["folder"]["name"] == "a-b"
        with pytest.raises(HistoricError) as renamed:
            await call(
                operations,
                "dr-martin",
                "Folder",
                "renameFolder",
                {"email": MARTIN, "folderId": made["folder"]["id"], "name": "c.d"},
            )
        assert renamed.value.code == 36
        names = b"\n".join(await platform.run(listed))
        assert b"a.b" not in names
        assert b"c.d" not in names
