"""`copy_bal` between a real Dovecot and the mock's modern platform, both ways: folders
(Dovecot separates levels with "."), exact bytes, keywords, internal dates; `verify_bal`
clean; a second run copies nothing."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from delegation.db import create_engine
from gateway.backends.base import Backend, MailboxAccess
from gateway.bal_migration.checkpoint import Checkpoints
from gateway.bal_migration.copy import copy_bal, verify_bal
from gateway.db import migrate_gateway
from gateway.settings import MockSettings, Settings
from mock_operator.server import MockOperator
from tests.bal_migration.test_copy import KEYWORDS, WHEN, digests
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
from tests.support.stacks import Stack, gateway_settings, mock_backend, running_stack

DOVECOT_BAL = "claire.martin@medecin.mssante.fr"
MODERN_BAL = "nouvelle.bal@medecin.mssante.fr"  # provisioned on the mock's modern platform
USER_PW = "user-secret-42"


@dataclass
class Platforms:
    stack: Stack
    server: DovecotServer
    checkpoints: Checkpoints

    def backend(self, name: str) -> Backend:
        assert self.stack.gateway.router is not None
        return self.stack.gateway.router.backends[name]


@pytest.fixture
async def platforms(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Platforms]:
    require_peer(dovecot_available(), "Dovecot (dovecot-imapd) not installed or not root")
    server = await asyncio.to_thread(
        start_dovecot,
        user=DOVECOT_BAL,
        password=USER_PW,
        master_user=MASTER,
        master_password=MASTER_PW,
    )
    try:

        def configure(settings: Settings, mock: MockOperator) -> None:
            settings.backends = {
                "modern": mock_backend(mock),
                "dovecot": dovecot_backend(server),
            }
            settings.routing.default = "modern"

        async with running_stack(
            gateway_settings(tmp_path / "gateway"), mock_settings, tmp_path / "mock", configure
        ) as stack:
            await stack.mock.platform.ensure_mailbox(MODERN_BAL, "899700000007", "Eve MOREAU")
            url = f"sqlite+aiosqlite:///{tmp_path / 'checkpoints.db'}"
            await migrate_gateway(url)
            engine = create_engine(url)
            try:
                yield Platforms(stack, server, Checkpoints(engine))
            finally:
                await engine.dispose()
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def accesses(
    platforms: Platforms, source: tuple[str, str], target: tuple[str, str]
) -> AsyncIterator[tuple[MailboxAccess, MailboxAccess]]:
    read = await platforms.backend(source[0]).tools(source[1])
    write = await platforms.backend(target[0]).tools(target[1])
    try:
        yield read, write
    finally:
        await read.aclose()
        await write.aclose()


async def seed(access: MailboxAccess) -> str:
    folder = f"Résultats {uuid.uuid4().hex[:4]}"
    await access.create_folder(folder)
    await access.create_folder(f"Vide {uuid.uuid4().hex[:4]}")
    for number in range(5):
        await access.append(folder, letter(f"bilan {number}"), KEYWORDS, WHEN)
    await access.append("INBOX", letter("arrivé"), {"\\Flagged"}, WHEN)
    return folder


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (("modern", MODERN_BAL), ("dovecot", DOVECOT_BAL)),
        (("dovecot", DOVECOT_BAL), ("modern", MODERN_BAL)),
    ],
    ids=["modern-to-dovecot", "dovecot-to-modern"],
)
async def test_copy_between_dovecot_and_the_mock(
    platforms: Platforms, source: tuple[str, str], target: tuple[str, str]
) -> None:
    async with accesses(platforms, source, target) as (read, write):
        folder = await seed(read)
        journal = await platforms.checkpoints.journal(source[1], source[0], target[0])
        first = await copy_bal(source[1], read, write, journal)
        assert first.appended >= 6
        report = await verify_bal(source[1], read, write, journal)
        assert report.identical, report.differences
        names = {f.name for f in await write.folders()}
        assert folder in names
        copied = [m for m in await write.messages(folder)]
        assert len(copied) == 5
        assert all(set(m.flags) >= KEYWORDS for m in copied)
        assert all(m.internal_date == WHEN for m in copied)
        before = await digests(write)
        again = await copy_bal(source[1], read, write, journal)
        assert again.appended == 0
        assert again.flag_changes == 0
        assert await digests(write) == before
