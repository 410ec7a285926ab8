"""A BAL leaving the historic platform keeps, on the legacy front, every messageId and
folder id its LPS knew: read through the platform's own IMAP (messages paired with their
ids by what both sides show) and through the web services alone (ids known exactly). The
BAL holds what makes pairing hard: exact copies of one letter, letters alike but for
their size, a letter without a Date header, an encoded subject, a message moved between
folders (a new UID, the same id), messages the web services composed (Sent, Drafts), and
folders with accents under one another."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.mss.historic_ws import INBOX
from gateway.settings import MockSettings, Settings
from mock_operator.server import MockOperator
from tests.bal_migration.test_cutover import MARTIN, dupont_through_gateway, legacy_view
from tests.bal_migration.test_migrate_command import ADMIN
from tests.gateway.test_backend_tools import DUPONT
from tests.support.historic_contract import HistoricClient
from tests.support.stacks import Stack, gateway_settings, historic_backend, mock_backend
from tests.support.stacks import running_stack as run_stack
from tests.support.waiting import until


def _letter(
    subject: str, body: str, *, date: str | None = "Mon, 02 Nov 2026 10:00:00 +0100"
) -> bytes:
    dated = f"Date: {date}\r\n" if date is not None else ""
    return (
        f"From: Claire Martin <{MARTIN}>\r\nTo: {DUPONT}\r\nSubject: {subject}\r\n{dated}"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n"
    ).encode()


def backends(historic_imap: bool):  # type: ignore[no-untyped-def]
    def configure(settings: Settings, mock: MockOperator) -> None:
        imap = (
            {
                "historic_imap": True,
                "imap_port": mock.historic_imap_port,
                "imap_tls": "starttls",
                "ca_file": mock.tls_cert,
            }
            if historic_imap
            else {}
        )
        settings.backends = {
            "modern": mock_backend(mock),
            "historic": historic_backend(mock, **imap),
        }
        settings.routing.default = "modern"

    return configure


@pytest.fixture(params=["historic IMAP", "web services"])
async def stack(
    request: pytest.FixtureRequest, tmp_path: Path, mock_settings: MockSettings
) -> AsyncIterator[Stack]:
    settings = gateway_settings(
        tmp_path / "gateway", admin={"idnats": [ADMIN]}, migration={"trailing_interval": 3600}
    )
    configure = backends(request.param == "historic IMAP")
    async with run_stack(settings, mock_settings, tmp_path / "mock", configure) as running:
        yield running


async def seed(stack: Stack) -> None:
    historic = stack.mock.historic
    assert historic is not None
    store = historic.store
    results = await store.create_folder(DUPONT, 1, "Résultats")
    biology = await store.create_folder(DUPONT, results.id, "Biologie d'été")
    same = _letter("Résultats de Mme Durand", "Hémoglobine 13,5 g/dl")
    for _ in range(3):  # exact copies: one key, one size
        await store.deliver_mime(DUPONT, same, INBOX)
    await store.deliver_mime(DUPONT, _letter("Résultats de Mme Durand", "Ferritine 80"), INBOX)
    await store.deliver_mime(DUPONT, _letter("=?utf-8?q?Compte_rendu_=C3=A9cho?=", "RAS"), INBOX)
    await store.deliver_mime(
        DUPONT,
        _letter("Sans date", "pas de Date:", date=None),
        biology.id,
        received_at=dt.datetime(2026, 11, 3, 8, 30, tzinfo=dt.UTC),
    )
    moving = await store.deliver_mime(DUPONT, _letter("À classer", "dossier 42"), INBOX)
    await store.move_messages(DUPONT, [moving.message_id], biology.id)
    # composed by the web services: a sent copy and a draft (rebuilt on the IMAP side)
    target = await dupont_through_gateway(stack)
    async with httpx.AsyncClient(timeout=60) as http:
        client = HistoricClient(target, http, "rest")
        message = {
            "addresses": [{"address": MARTIN, "type": "TO"}],
            "subject": "Avis sur le dossier",
            "body": "Bonjour, voici mon avis.",
            "isHTML": False,
        }
        await client.send(message)
        await client.draft({**message, "subject": "Brouillon d'avis"})


async def run(stack: Stack, action: str) -> dict[str, object]:
    migrations = stack.gateway.migrations
    assert migrations is not None
    [job] = await migrations.start([DUPONT], "modern", action, actor="local-admin")  # type: ignore[arg-type]
    await until(lambda: job.state in ("done", "failed"), f"the {action}'s end", bound=120)
    assert job.state == "done", (job.error, job.differences)
    return job.result


async def test_every_id_stays_when_the_bal_leaves_the_historic_platform(stack: Stack) -> None:
    await seed(stack)
    known, folders, _ = await legacy_view(stack)
    assert len(known) >= 10
    await run(stack, "copy")
    result = await run(stack, "cutover")
    assert result["historic_ids"] == {"kept": len(known), "new": 0}
    registry = stack.gateway.delegations
    assert registry is not None
    record = await registry.mailbox(DUPONT)
    assert record is not None
    assert record.backend == "modern"
    now, now_folders, _ = await legacy_view(stack)
    assert now == known  # every id, in its folder, with its subject and date
    assert now_folders == folders
