"""Probes of warm backend sessions: a backend session left in an unknown state is never
handed on (dropped in IDLE, in the middle of a command or of a literal, a LOGOUT behind a
command in flight); what a client ENABLEs never reaches the backend, so never leaks into
the next session; a login from another address never gets the session (the backend was
told the first address), nor a login on another BAL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.imap_raw import Raw
from tests.support.imap import login, scripted
from tests.support.sasl import xoauth2
from tests.support.stacks import Stack
from tests.support.waiting import until
from tests.support.warm import backend_connections, parked, warm

MARTIN = "claire.martin@medecin.mssante.fr"


@pytest.fixture
def backend_overrides() -> dict[str, Any]:
    return {"keep_warm": 30}


async def left_unknown(stack: Stack, client: Raw) -> None:
    """`client` drops its connection: the backend's must close, never be kept."""
    await client.close()
    await until(lambda: backend_connections(stack) == 0, "the backend connection closed")
    assert warm(stack, "kept") == 0


async def test_a_session_dropped_in_idle_is_not_kept(stack: Stack):
    client = await login(stack, "dr-martin", MARTIN)
    await client.ok("SELECT INBOX")
    await client.send(b"I1 IDLE\r\n")
    assert (await client.line()).startswith(b"+")
    await left_unknown(stack, client)


async def test_a_session_dropped_mid_command_is_not_kept(stack: Stack):
    client = await login(stack, "dr-martin", MARTIN)
    await client.ok("SELECT INBOX")
    await client.send(b"F1 FETCH 1:* (BODY.PEEK[])\r\n")
    await left_unknown(stack, client)


async def test_a_session_dropped_mid_literal_is_not_kept(stack: Stack):
    client = await login(stack, "dr-martin", MARTIN)
    await client.send(b"A1 APPEND INBOX {40}\r\n")
    assert (await client.line()).startswith(b"+")
    await client.send(b"Subject: half a message\r\n")
    await left_unknown(stack, client)


async def test_a_logout_behind_a_command_in_flight_goes_to_the_backend(stack: Stack):
    client = await login(stack, "dr-martin", MARTIN)
    await client.ok("SELECT INBOX")
    await client.send(b"F1 FETCH 1:* (FLAGS)\r\nL1 LOGOUT\r\n")
    fetched = await client.collect("F1")
    assert fetched.status == "OK"
    bye = await client.collect("L1")
    assert bye.status == "OK"
    assert bye.untagged[0].startswith(b"* BYE")
    await client.until_closed()
    await until(lambda: backend_connections(stack) == 0, "the backend logged out")
    assert warm(stack, "kept") == 0


async def test_enable_never_reaches_the_backend_nor_the_next_session(stack: Stack):
    await scripted(stack, "dr-martin", MARTIN)  # takes the messages' \\Recent
    await until(lambda: warm(stack, "kept") == 1, "kept warm")
    before = await scripted(stack, "dr-martin", MARTIN)
    await until(lambda: warm(stack, "kept") == 2, "kept warm")
    client = await login(stack, "dr-martin", MARTIN)
    enabled = await client.ok("ENABLE CONDSTORE QRESYNC UTF8=ACCEPT")
    assert enabled.untagged == [b"* ENABLED"]  # nothing enabled: answered by the gateway
    await client.ok("SELECT INBOX")
    await client.ok("LOGOUT")
    await until(lambda: warm(stack, "kept") == 3, "kept warm")
    after = await scripted(stack, "dr-martin", MARTIN)
    assert warm(stack, "hit") == 3
    assert after == before
    assert not any(b"HIGHESTMODSEQ" in line for line in after)


async def test_another_address_or_bal_never_gets_the_session(stack: Stack):
    client = await login(stack, "dr-martin", MARTIN)
    await client.ok("LOGOUT")
    await until(lambda: warm(stack, "kept") == 1, "kept warm")

    reader, writer = await asyncio.open_connection(
        "127.0.0.1", stack.imap_port, local_addr=("127.0.0.2", 0)
    )
    elsewhere = Raw(reader, writer)
    elsewhere.greeting = await elsewhere.line()
    token = await stack.token("dr-martin")
    await elsewhere.ok("AUTHENTICATE XOAUTH2 ", xoauth2(MARTIN, token))
    assert warm(stack, "hit") == 0
    assert parked(stack) == 1  # untouched
    await elsewhere.close()

    moreau = await login(stack, "dr-moreau", "eve.moreau@medecin.mssante.fr")
    assert warm(stack, "hit") == 0
    selected = await moreau.ok("SELECT INBOX")
    assert selected.tagged.endswith(b"SELECT completed")
    await moreau.close()
