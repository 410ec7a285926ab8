"""Moves that keep UIDs: a real Dovecot copied to the mock's modern platform through its
import API keeps each folder's UIDVALIDITY and every UID (through a cancellation mid-import
too), falls back to new UIDs once the target has mail of its own, and an LPS that cached
its BAL through the gateway finds nothing new to fetch after the switch; the historic ids
of the legacy front follow (`carry_historic_ids`). From the historic platform, whose
IMAP's UIDs are not those LPS saw, the copies get new UIDVALIDITY."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from delegation.db import create_engine
from gateway.backends.base import Backend, MailboxAccess
from gateway.bal_migration.carry import carry_historic_ids
from gateway.bal_migration.checkpoint import Checkpoints
from gateway.bal_migration.copy import copy_bal, verify_bal
from gateway.db import migrate_gateway
from gateway.mss.historic_ws import INBOX
from gateway.runtime.tls import client_context
from gateway.settings import MockSettings, Settings
from mock_operator.server import MockOperator
from tests.bal_migration.test_copy import KEYWORDS, WHEN
from tests.conftest import require_peer
from tests.dovecot import (
    MASTER,
    MASTER_PW,
    DovecotServer,
    dovecot_available,
    dovecot_backend,
    start_dovecot,
)
from tests.gateway.test_backend_tools import letter
from tests.support.cards import authority_of, issue_card, with_cards
from tests.support.historic_contract import HistoricClient, Target
from tests.support.sasl import xoauth2_blob
from tests.support.stacks import (
    Stack,
    gateway_settings,
    historic_backend,
    mock_backend,
    running_stack,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

DUPONT = "jean.dupont@medecin.mssante.fr"  # dr-dupont's BAL: on the Dovecot for these tests
DUPONT_IDNAT = "899700000002"
ELSEWHERE = "nouvelle.bal@medecin.mssante.fr"  # an empty BAL of the modern platform
FOLDER = "Résultats"


@dataclass
class Platforms:
    stack: Stack
    server: DovecotServer
    checkpoints: Checkpoints
    cards: Path

    def backend(self, name: str) -> Backend:
        assert self.stack.gateway.router is not None
        return self.stack.gateway.router.backends[name]

    @contextlib.asynccontextmanager
    async def accesses(
        self, source: tuple[str, str], target: tuple[str, str]
    ) -> AsyncIterator[tuple[MailboxAccess, MailboxAccess]]:
        read = await self.backend(source[0]).tools(source[1])
        write = await self.backend(target[0]).tools(target[1])
        try:
            yield read, write
        finally:
            await read.aclose()
            await write.aclose()


@pytest.fixture
async def platforms(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Platforms]:
    require_peer(dovecot_available(), "Dovecot (dovecot-imapd) not installed or not root")
    server = await asyncio.to_thread(
        start_dovecot,
        user=DUPONT,
        password="user-pw-42",
        master_user=MASTER,
        master_password=MASTER_PW,
    )
    try:

        def configure(settings: Settings, mock: MockOperator) -> None:
            settings.backends = {
                "modern": mock_backend(mock),
                "dovecot": dovecot_backend(server),
                "historic": historic_backend(
                    mock,
                    historic_imap=True,
                    imap_port=mock.historic_imap_port,
                    imap_tls="starttls",
                    ca_file=mock.tls_cert,
                ),
                # the historic platform through its web services alone (no own IMAP)
                "historic-ws": historic_backend(mock),
            }
            settings.routing.default = "modern"

        settings = gateway_settings(tmp_path / "gateway", legacy_front={"https_port": 0})
        async with running_stack(
            settings, mock_settings, tmp_path / "mock", with_cards(configure)
        ) as stack:
            registry = stack.gateway.delegations
            assert registry is not None
            await registry.upsert_mailbox(DUPONT, holder_idnat=DUPONT_IDNAT, backend="dovecot")
            await stack.mock.platform.ensure_mailbox(ELSEWHERE, "899700000007", "Eve MOREAU")
            url = f"sqlite+aiosqlite:///{tmp_path / 'checkpoints.db'}"
            await migrate_gateway(url)
            engine = create_engine(url)
            try:
                yield Platforms(stack, server, Checkpoints(engine), tmp_path / "cards")
            finally:
                await engine.dispose()
    finally:
        await asyncio.to_thread(server.stop)


async def seed(access: MailboxAccess, count: int = 6) -> None:
    """`FOLDER` with `count` messages, every other one expunged (UIDs with gaps), and one
    in INBOX."""
    await access.create_folder(FOLDER)
    uids = [await access.append(FOLDER, letter(f"bilan {n}"), KEYWORDS, WHEN) for n in range(count)]
    await access.delete(FOLDER, uids[1::2])
    await access.append("INBOX", letter("arrivé"), {"\\Flagged"}, WHEN)


async def state(access: Any, folder: str) -> tuple[int, list[int]]:
    return await access.uidvalidity(folder), [m.uid for m in await access.messages(folder)]


class Killed(BaseException):
    pass


class KilledAfter:
    """A target whose import is killed after `count` messages, between the import and
    its checkpoint (as `kill -9` would)."""

    def __init__(self, target: Any, count: int) -> None:
        self._target = target
        self.left = count
        self.uid_import = self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    async def import_folder(self, folder: str, uidvalidity: int) -> bool:
        return bool(await self._target.import_folder(folder, uidvalidity))

    async def import_message(
        self, folder: str, uid: int, message: bytes, flags: Collection[str], date: Any
    ) -> int | None:
        stored = await self._target.import_message(folder, uid, message, flags, date)
        self.left -= 1
        if self.left <= 0:
            raise Killed
        return stored  # type: ignore[no-any-return]


async def test_dovecot_to_modern_keeps_uids_through_a_kill(platforms: Platforms) -> None:
    async with platforms.accesses(("dovecot", DUPONT), ("modern", ELSEWHERE)) as (read, write):
        await seed(read)
        journal = await platforms.checkpoints.journal(DUPONT, "dovecot", "modern")
        with pytest.raises(Killed):
            await copy_bal(DUPONT, read, KilledAfter(write, 2), journal)  # type: ignore[arg-type]
        report = await copy_bal(DUPONT, read, write, journal)
        assert report.adopted == 1  # the import whose checkpoint was lost
        assert sorted(report.uids_kept) == sorted(report.folders)
        for folder in (FOLDER, "INBOX"):
            assert await state(write, folder) == await state(read, folder)
        assert (await state(write, FOLDER))[1] == [1, 3, 5]
        assert (await verify_bal(DUPONT, read, write)).identical
        again = await copy_bal(DUPONT, read, write, journal)
        assert (again.appended, again.adopted) == (0, 0)


async def test_mail_of_the_target_s_own_turns_later_copies_to_new_uids(
    platforms: Platforms,
) -> None:
    async with platforms.accesses(("dovecot", DUPONT), ("modern", ELSEWHERE)) as (read, write):
        await seed(read)
        journal = await platforms.checkpoints.journal(DUPONT, "dovecot", "modern")
        await copy_bal(DUPONT, read, write, journal)
        # after a cut-over, mail lands on the target (UIDs 6, 7): past the source's next
        for subject in ("direct", "direct aussi"):
            await platforms.stack.mock.platform.deliver(ELSEWHERE, letter(subject), folder=FOLDER)
        await read.append(FOLDER, letter("en retard"), (), WHEN)  # 7 on the Dovecot
        await read.append("INBOX", letter("aussi"), (), WHEN)
        report = await copy_bal(DUPONT, read, write, journal)
        assert report.appended == 2
        assert report.uids_kept == ["INBOX"]
        assert (await state(read, FOLDER))[1] == [1, 3, 5, 7]
        validity, target_uids = await state(write, FOLDER)
        assert validity == await read.uidvalidity(FOLDER)  # kept from the first copy
        assert target_uids == [1, 3, 5, 6, 7, 8]  # the late one appended, as 8
        assert await state(write, "INBOX") == await state(read, "INBOX")


def lps_cache(port: int, token: str) -> tuple[int, set[int]]:
    """What an LPS keeps of its INBOX through the gateway: UIDVALIDITY and the UIDs."""
    with imaplib.IMAP4("127.0.0.1", port) as imap:
        imap.authenticate("XOAUTH2", lambda _: xoauth2_blob(DUPONT, token))
        imap.select("INBOX", readonly=True)
        validity = int(imap.response("UIDVALIDITY")[1][0])
        _, found = imap.uid("SEARCH", "ALL")
        return validity, {int(u) for u in found[0].split()}


async def test_an_lps_finds_nothing_new_after_the_move(platforms: Platforms) -> None:
    stack = platforms.stack
    async with platforms.accesses(("dovecot", DUPONT), ("dovecot", DUPONT)) as (read, _):
        await seed(read)
    before = await asyncio.to_thread(lps_cache, stack.imap_port, await stack.token("dr-dupont"))
    assert len(before[1]) == 1
    async with soap(platforms) as client:
        listed = await ids(client)
        token = (await client.ok("Item", "syncMessages", client.mine()))["token"]
    await stack.mock.platform.ensure_mailbox(DUPONT, DUPONT_IDNAT, "Jean DUPONT")
    async with platforms.accesses(("dovecot", DUPONT), ("modern", DUPONT)) as (read, write):
        journal = await platforms.checkpoints.journal(DUPONT, "dovecot", "modern")
        report = await copy_bal(DUPONT, read, write, journal)
        assert "INBOX" in report.uids_kept
        # the cut-over: the final delta done, the ids follow, then the record switches
        assert stack.gateway.engine is not None
        carried = await carry_historic_ids(stack.gateway.engine, DUPONT, journal, write)
    assert carried == len(listed)
    registry = stack.gateway.delegations
    assert registry is not None
    # as a cut-over does: every node hears it, sessions on the Dovecot (warm ones too) end
    await registry.move_mailbox(DUPONT, "modern")
    await asyncio.to_thread(platforms.server.stop)  # only the modern platform is left

    async def reconnected() -> bool:
        try:
            token = await stack.token("dr-dupont")
            after = await asyncio.to_thread(lps_cache, stack.imap_port, token)
        except imaplib.IMAP4.error:
            return False
        assert after == before  # same UIDVALIDITY, no UID to fetch
        return True

    await eventually(reconnected, "the LPS reconnects on the modern platform")
    async with soap(platforms) as client:
        assert await ids(client) == listed
        synced = await client.ok("Item", "syncMessages", client.mine(token=token))
    # nothing changed for the LPS: its next syncMessages is empty
    assert (synced.get("modifiedMessages", []), synced.get("deletedMessageIds", [])) == ([], [])


@contextlib.asynccontextmanager
async def soap(platforms: Platforms) -> AsyncIterator[HistoricClient]:
    """The historic web services of the gateway, SOAP with Dr DUPONT's CPS card."""
    stack = platforms.stack
    card = issue_card(authority_of(stack.mock), stack.mock, "dr-dupont", platforms.cards)
    port = stack.gateway.legacy_https_port
    assert port is not None
    target = Target("gateway-tls", f"https://127.0.0.1:{port}", {}, DUPONT, DUPONT_IDNAT, DUPONT)
    tls = client_context(stack.gateway.settings.data_dir / "dev-cert.pem")
    tls.load_cert_chain(card.certificate, card.key)
    async with httpx.AsyncClient(timeout=60, verify=tls) as http:
        yield HistoricClient(target, http, "soap")


async def ids(client: HistoricClient) -> dict[str, str]:
    """messageId → subject of every message of the BAL, as the legacy front lists them."""
    found = await client.search(folderId=INBOX, includeSubfolders=False, limit=100)
    folders = (await client.ok("Folder", "listFolders", client.mine()))["folders"]
    listed = {m["messageId"]: m["subject"] for m in found["messages"]}
    for folder in folders:
        if folder["name"] == FOLDER:
            more = await client.search(folderId=folder["id"], limit=100)
            listed |= {m["messageId"]: m["subject"] for m in more["messages"]}
    return listed


async def test_from_the_historic_platform_the_folders_get_new_uidvalidity(
    platforms: Platforms,
) -> None:
    source = ("historic", "marie.petit@sage-femme.mssante.fr")
    async with platforms.accesses(source, ("modern", ELSEWHERE)) as (read, write):
        journal = await platforms.checkpoints.journal(source[1], "historic", "modern")
        before = await write.uidvalidity("INBOX")  # type: ignore[attr-defined]
        report = await copy_bal(source[1], read, write, journal)
        assert report.appended >= 1
        assert report.uids_kept == []
        assert (await verify_bal(source[1], read, write)).identical
        assert await write.uidvalidity("INBOX") == before  # type: ignore[attr-defined]


async def test_through_the_historic_web_services_alone_the_gateway_s_uids_are_kept(
    platforms: Platforms,
) -> None:
    """Without the historic IMAP, the copy reads the store the gateway's IMAP front serves:
    its UIDs and UIDVALIDITY are those LPS saw (the gateway's table), and they are kept
    (the bytes are the web services' rebuilds)."""
    source = ("historic-ws", "marie.petit@sage-femme.mssante.fr")
    async with platforms.accesses(source, ("modern", ELSEWHERE)) as (read, write):
        journal = await platforms.checkpoints.journal(source[1], source[0], "modern")
        report = await copy_bal(source[1], read, write, journal)
        assert report.appended >= 1
        assert sorted(report.uids_kept) == sorted(report.folders)
        assert await state(write, "INBOX") == await state(read, "INBOX")
        assert (await verify_bal(source[1], read, write)).identical
