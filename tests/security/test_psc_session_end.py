"""Sessions end when the PSC session ends: a PSC logout (here `mock-operator end-session`)
ends the person's open IMAP and SMTP sessions within `psc.revalidate_interval`, on relayed
and on served (historic) BAL; a session outlives its token by at most
`psc.session_max_after_token_expiry`; other people's sessions go on."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import MockSettings, Settings
from mock_operator.server import MockOperator
from tests.imap_raw import Raw
from tests.security.test_slow_clients import until
from tests.support.sasl import xoauth2_b64
from tests.support.stacks import (
    Stack,
    gateway_settings,
    historic_backend,
    mock_backend,
    running_stack,
)

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
    await client.ok(f"AUTHENTICATE XOAUTH2 {xoauth2_b64(bal, token).decode()}")
    await client.ok("SELECT INBOX")
    return client


async def smtp_session(stack: Stack, token: str, bal: str) -> tuple[Any, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.smtp_port)
    assert (await reader.readline()).startswith(b"220")
    writer.write(b"EHLO lps\r\nAUTH XOAUTH2 " + xoauth2_b64(bal, token) + b"\r\n")
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
    assert watched.gateway.psc_sessions is not None
    rounds = watched.gateway.psc_sessions.rounds
    try:
        assert await end_psc_sessions(watched.mock, "sec-bernard") >= 1
        bye = await hers.line(wait=BOUND)
        assert bye == b"* BYE PSC session ended, log in again"
        assert await historic.line(wait=BOUND) == bye
        smtp = await asyncio.wait_for(reader.readline(), BOUND)
        assert smtp == b"421 4.7.0 PSC session ended, log in again\r\n"
        # at the first revalidation after the logout, or the one after (it may have begun)
        assert watched.gateway.psc_sessions.rounds - rounds <= 2
        assert await hers.until_closed() == b""
        await other.ok("NOOP")  # Dr MARTIN's PSC session goes on
        # The same token no longer opens anything, whatever its signature says.
        again = await Raw.open(watched.imap_port)
        tag = again.tag()
        await again.send(
            f"{tag} AUTHENTICATE XOAUTH2 {xoauth2_b64(CLAIRE, sophie).decode()}\r\n".encode()
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


async def line_after_expiry(stack: Stack, persona: str) -> bytes:
    """What an IMAP session opened with a 2-second token hears next, within BOUND."""
    token = await stack.token(persona, lifetime=2)
    client = await imap_session(stack, token, CLAIRE)
    try:
        return await client.line(wait=BOUND)
    finally:
        await client.close()


async def test_a_session_outlives_its_token_by_a_bounded_time(watched: Stack) -> None:
    bye = await line_after_expiry(watched, "dr-martin")
    assert bye == b"* BYE access token expired, log in again with a fresh token"


async def test_a_message_on_its_way_gets_its_answer_before_the_session_ends(
    watched: Stack,
) -> None:
    """A PSC logout during a transaction: the session is not cut under the message (the
    backend may already hold it); its DATA is refused with 421 and nothing leaves, then
    the session ends."""
    assert watched.gateway.psc_sessions is not None
    sophie = await watched.token("sec-bernard")
    reader, writer = await smtp_session(watched, sophie, CLAIRE)
    try:
        writer.write(f"MAIL FROM:<{CLAIRE}>\r\nRCPT TO:<{CLAIRE}>\r\nDATA\r\n".encode())
        for expected in (b"250", b"250", b"354"):
            assert (await reader.readline()).startswith(expected)
        watch = watched.gateway.psc_sessions
        before = watch.sessions
        await end_psc_sessions(watched.mock, "sec-bernard")
        await until(lambda: watch.sessions < before, "the PSC logout heard")
        writer.write(b"From: " + CLAIRE.encode() + b"\r\nSubject: late\r\nX-MSS-NIL: N\r\n")
        writer.write(b"\r\nTexte.\r\n.\r\n")
        answer = await asyncio.wait_for(reader.readline(), BOUND)
        assert answer == b"421 4.7.0 PSC session ended, log in again\r\n"
        assert await asyncio.wait_for(reader.read(), BOUND) == b""  # then it ends
    finally:
        writer.close()
    assert watched.mock.platform is not None
    inbox = await watched.mock.platform.store(CLAIRE).folder_state("INBOX")
    delivered = [
        await watched.mock.platform.store(CLAIRE).fetch_message("INBOX", m.uid)
        for m in inbox.messages
    ]
    assert not [m for m in delivered if b"Subject: late" in m]


async def test_a_relay_that_ended_has_nothing_left_to_end(watched: Stack) -> None:
    """A revocation or a PSC logout reaching a relay whose session is over (between its
    end and its removal from the watches) records no session end and arms no timer."""
    assert watched.gateway.imap is not None
    token = await watched.token("sec-bernard")
    client = await imap_session(watched, token, CLAIRE)
    [relay] = [r for group in watched.gateway.imap.live._relays.values() for r in group]
    await client.ok("LOGOUT")
    await client.close()
    await until(lambda: watched.gateway.imap.open_sessions == 0, "the relay's end")
    relay.update(frozenset({"read"}), dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    relay.kick("PSC session ended, log in again")
    assert relay._expiry is None or relay._expiry.cancelled()
    assert watched.gateway.audit is not None
    assert watched.gateway.delegations is not None
    await watched.gateway.audit.flush()
    events = await watched.gateway.delegations.audit_for(CLAIRE)
    assert not [e for e in events if e.action == "session-end"]


async def test_without_introspection_credentials_only_the_expiry_bound_applies(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
) -> None:
    def modern_only(settings: Settings, mock: MockOperator) -> None:
        settings.backends = {"modern": mock_backend(mock)}
        settings.routing.default = "modern"

    async with running_stack(
        stack_settings, mock_settings, tmp_path / "mock", modern_only
    ) as stack:
        watch = stack.gateway.psc_sessions
        assert watch is not None
        assert not watch.revalidate  # nobody to ask PSC: no revalidation task runs
        bye = await line_after_expiry(stack, "sec-bernard")  # ... but the bound holds
        assert bye == b"* BYE access token expired, log in again with a fresh token"
        assert watch.rounds == 0
