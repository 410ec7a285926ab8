"""Sessions end when the PSC session ends: a PSC logout (here `mock-operator end-session`)
ends the person's open IMAP and SMTP sessions within `psc.revalidate_interval`, on relayed
and on served (historic) BAL; a session outlives its token by at most
`psc.session_max_after_token_expiry`; other people's sessions go on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import MockSettings, Settings
from mock_operator.server import MockOperator
from tests.gateway.conftest import Stack, gateway_settings, mock_backend, running_stack
from tests.gateway.test_legacy_ws_imap import historic_backend
from tests.gateway.test_smtp_front import xoauth2
from tests.imap_raw import Raw

REVALIDATE = 2.0  # seconds, as in the Done-when
AFTER_EXPIRY = 1.0
BOUND = 30.0
CLAIRE = "claire.martin@medecin.mssante.fr"
DUPONT = "jean.dupont@medecin.mssante.fr"


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return gateway_settings(
        tmp_path / "gateway",
        psc={
            "client_ids": ["lps-demo"],
            "revalidate_interval": REVALIDATE,
            "session_max_after_token_expiry": AFTER_EXPIRY,
        },
    )


def revalidating(settings: Settings, mock: MockOperator) -> None:
    """Both platforms as backends; the gateway introspects as the mock's `lps-gateway`."""
    assert mock.psc is not None
    client = mock.psc.clients.get("lps-gateway")
    assert client is not None
    settings.psc.introspection_client_id = client.client_id
    settings.psc.introspection_client_secret = client.client_secret
    settings.backends = {"modern": mock_backend(mock), "historic": historic_backend(mock)}
    settings.routing.default = "modern"


@pytest.fixture
async def watched(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
) -> AsyncIterator[Stack]:
    async with running_stack(
        stack_settings, mock_settings, tmp_path / "mock", revalidating
    ) as running:
        yield running


async def imap_session(stack: Stack, token: str, bal: str) -> Raw:
    client = await Raw.open(stack.imap_port)
    await client.ok(f"AUTHENTICATE XOAUTH2 {xoauth2(bal, token).decode()}")
    await client.ok("SELECT INBOX")
    return client


async def smtp_session(stack: Stack, token: str, bal: str) -> tuple[Any, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.smtp_port)
    assert (await reader.readline()).startswith(b"220")
    writer.write(b"EHLO lps\r\nAUTH XOAUTH2 " + xoauth2(bal, token) + b"\r\n")
    while not (line := await reader.readline()).startswith(b"250 "):
        assert line.startswith(b"250-"), line
    assert (await reader.readline()).startswith(b"235")
    return reader, writer


async def end_psc_sessions(mock: MockOperator, persona: str) -> int:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(f"{mock.http_url}/_test/end-session", json={"persona": persona})
    answer.raise_for_status()
    ended: int = answer.json()["ended"]
    return ended


async def test_ending_the_psc_session_ends_the_open_sessions(watched: Stack) -> None:
    sophie = await watched.token("sec-bernard")
    claire = await watched.token("dr-martin")
    hers = await imap_session(watched, sophie, CLAIRE)
    historic = await imap_session(watched, sophie, DUPONT)  # served by the engine
    other = await imap_session(watched, claire, CLAIRE)
    reader, writer = await smtp_session(watched, sophie, CLAIRE)
    try:
        assert await end_psc_sessions(watched.mock, "sec-bernard") >= 1
        began = time.monotonic()
        bye = await hers.line(wait=BOUND)
        assert bye == b"* BYE PSC session ended, log in again"
        assert await historic.line(wait=BOUND) == bye
        smtp = await asyncio.wait_for(reader.readline(), BOUND)
        assert smtp == b"421 4.7.0 PSC session ended, log in again\r\n"
        assert time.monotonic() - began <= REVALIDATE + 5
        assert await hers.until_closed() == b""
        await other.ok("NOOP")  # Dr MARTIN's PSC session goes on
        # The same token no longer opens anything, whatever its signature says.
        again = await Raw.open(watched.imap_port)
        tag = again.tag()
        await again.send(
            f"{tag} AUTHENTICATE XOAUTH2 {xoauth2(CLAIRE, sophie).decode()}\r\n".encode()
        )
        challenge = await again.line()
        assert challenge.startswith(b"+ ")
        await again.send(b"\r\n")
        assert b"NO [AUTHENTICATIONFAILED]" in await again.line()
        await again.close()
    finally:
        writer.close()
        for client in (hers, historic, other):
            await client.close()
    assert watched.gateway.audit is not None
    assert watched.gateway.delegations is not None
    await watched.gateway.audit.flush()
    events = await watched.gateway.delegations.audit_for(CLAIRE)
    ended = [e for e in events if e.action == "session-end" and e.actor_idnat == "899700000003"]
    assert {e.interface for e in ended} == {"imap", "smtp"}
    assert all(e.detail == "PSC session ended, log in again" for e in ended)


async def test_a_session_outlives_its_token_by_a_bounded_time(watched: Stack) -> None:
    token = await watched.token("dr-martin", lifetime=2)
    client = await imap_session(watched, token, CLAIRE)
    try:
        bye = await client.line(wait=BOUND)
    finally:
        await client.close()
    assert bye == b"* BYE access token expired, log in again with a fresh token"


async def test_without_introspection_credentials_only_the_expiry_bound_applies(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
) -> None:
    def modern_only(settings: Settings, mock: MockOperator) -> None:
        settings.backends = {"modern": mock_backend(mock)}
        settings.routing.default = "modern"

    async with running_stack(
        stack_settings, mock_settings, tmp_path / "mock", modern_only
    ) as stack:
        assert stack.gateway.psc_sessions is not None
        assert not stack.gateway.psc_sessions.revalidate
        token = await stack.token("sec-bernard")
        client = await imap_session(stack, token, CLAIRE)
        try:
            await end_psc_sessions(stack.mock, "sec-bernard")
            rounds = stack.gateway.psc_sessions.rounds
            await client.ok("NOOP")  # nobody asked PSC: the session goes on
            assert stack.gateway.psc_sessions.rounds == rounds == 0
        finally:
            await client.close()
