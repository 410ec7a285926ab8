"""While a BAL is held for its cut-over, every front makes its changes wait and lets the
reads through; past the bound a change is refused with a retry (IMAP `NO [UNAVAILABLE]`,
SMTP `451 4.3.0`, the historic services' technical error), never half done."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from gateway.bal_migration.gate import BalGate
from gateway.mss.historic_http import TECHNICAL_ERROR
from gateway.settings import MockSettings
from tests.gateway.test_smtp_front import message, smtplib_session
from tests.support.historic_contract import HistoricClient, Target
from tests.support.imap import login
from tests.support.stacks import Stack, gateway_settings
from tests.support.stacks import running_stack as run_stack
from tests.support.waiting import eventually

MARTIN = "claire.martin@medecin.mssante.fr"
MARTIN_IDNAT = "899700000001"
DURAND = "luc.durand@infirmier.mssante.fr"


@pytest.fixture
async def stack(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Stack]:
    settings = gateway_settings(tmp_path / "gateway", migration={"hold_max": 30})
    async with run_stack(settings, mock_settings, tmp_path / "mock") as running:
        yield running


async def waiting_for(gate: BalGate, count: int) -> None:
    async def there() -> bool:
        return gate.waiting(MARTIN) == count

    await eventually(there, f"{count} change(s) waiting for the hold")


async def test_imap_changes_wait_for_the_hold_reads_do_not(stack: Stack) -> None:
    gate = stack.gateway.gate
    client = await login(stack, "dr-martin", MARTIN)
    await client.ok("SELECT INBOX")
    async with gate.hold(MARTIN):
        await client.ok("UID SEARCH ALL")  # a read goes through
        store = asyncio.create_task(client.command("STORE 1 +FLAGS (\\Flagged)"))
        await waiting_for(gate, 1)
        assert not store.done()
    reply = await store
    assert reply.status == "OK"  # done once the hold ended

    gate.max_wait = 0.05
    async with gate.hold(MARTIN):
        refused = await client.command("STORE 1 -FLAGS (\\Flagged)")
    assert refused.status == "NO"
    assert b"[UNAVAILABLE]" in refused.tagged
    fetched = await client.ok("FETCH 1 (FLAGS)")
    assert b"\\Flagged" in b"".join(fetched.untagged)  # the refused change never ran
    await client.ok("LOGOUT")


async def test_smtp_data_waits_then_is_refused_with_a_retry(stack: Stack) -> None:
    gate = stack.gateway.gate
    token = await stack.token("dr-martin")
    raw = message(MARTIN, DURAND, "pendant la bascule")
    loop = asyncio.get_running_loop()

    async def logged_in_then(during_hold: Callable[[], Awaitable[None]]) -> tuple[int, bytes]:
        """Log in, then (the BAL held by `during_hold`) send: the reply to DATA, or the
        first refusal before it (MAIL asks the registry again, and waits as DATA does)."""
        ready, go = loop.create_future(), threading.Event()

        def send() -> tuple[int, bytes]:
            with smtplib_session(stack.smtp_port, MARTIN, token) as smtp:
                loop.call_soon_threadsafe(ready.set_result, None)
                go.wait(60)
                for step in (lambda: smtp.mail(MARTIN), lambda: smtp.rcpt(DURAND)):
                    code, text = step()
                    if code >= 300:
                        return code, text  # refused before DATA: the first 4xx
                return smtp.data(raw)

        sending = loop.run_in_executor(None, send)
        await ready
        async with gate.hold(MARTIN):
            go.set()
            await during_hold()
        return await sending

    async def until_waiting() -> None:
        await waiting_for(gate, 1)

    code, _ = await logged_in_then(until_waiting)
    assert code == 250  # it waited, then went

    async def refused_soon() -> None:
        async def none_waiting() -> bool:
            return gate.waiting(MARTIN) == 0

        gate.max_wait = 0.05
        await waiting_for(gate, 1)
        await eventually(none_waiting, "the change refused")

    code, text = await logged_in_then(refused_soon)
    assert 400 <= code < 500  # temporary: the LPS sends it again
    assert b"retry" in text or text.startswith(b"4.3.0")


async def test_historic_services_writes_wait_and_are_refused_past_the_bound(
    stack: Stack,
) -> None:
    gate = stack.gateway.gate
    token = await stack.token("dr-martin")
    target = Target(
        "gateway",
        stack.gateway.http_url,
        {"Authorization": f"Bearer {token}"},
        MARTIN,
        MARTIN_IDNAT,
        DURAND,
    )
    async with httpx.AsyncClient(timeout=60) as http:
        client = HistoricClient(target, http, "rest")
        async with gate.hold(MARTIN):
            listed = await client.ok("Folder", "listFolders", client.mine())  # a read
            assert listed["folders"]
        gate.max_wait = 0.05
        async with gate.hold(MARTIN):
            outcome = await client.call(
                "Folder", "createFolder", client.mine(folderName="Bascule", parentFolderId=1)
            )
        assert outcome == ("error", ("TECHNIQUE", TECHNICAL_ERROR))  # retried later
        names = [
            f.get("folderName")
            for f in (await client.ok("Folder", "listFolders", client.mine()))["folders"]
        ]
        assert "Bascule" not in names
