"""A backend connection lives as long as its client's session, no longer: with Dovecot's
default limits (``mail_max_userip_connections = 10``) ten LPS of one practice, each with
its cycles of login, SELECT, FETCH and LOGOUT (or a dropped connection), never see
``NO [UNAVAILABLE]``, and once they are gone Dovecot counts no connection for the BAL
(with warm sessions, once their `keep_warm` is over: they are reused meanwhile, never
opened beside the ones in use).

And Dovecot sees the LPS, not the gateway: the gateway is in its
``login_trusted_networks`` and says who the client is with ID ``x-originating-ip`` before
logging in, as Dovecot's own proxy does.
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from tests.dovecot import DovecotServer
from tests.support.proxied import ProxiedIMAP4
from tests.support.sasl import xoauth2
from tests.support.stacks import Stack, dovecot_stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

MARTIN = "claire.martin@medecin.mssante.fr"
MARTIN_PW = "martin-dovecot-pw"
MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody\r\n"
CLIENTS = 10  # Dovecot's default mail_max_userip_connections


@dataclass
class Env:
    dovecot: DovecotServer
    stack: Stack

    def martin_connections(self) -> list[str]:
        """The addresses Dovecot counts a connection of Martin's BAL from."""
        return [ip for user, ip in self.dovecot.who() if user == MARTIN]


@pytest_asyncio.fixture(
    scope="module", loop_scope="module", params=[0.0, 1.0], ids=["cold", "warm"]
)
async def env(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Env]:
    """Without warm sessions, and with (kept a second: Dovecot counts them meanwhile, and
    the checks that none is left wait for their end)."""
    async with dovecot_stack(
        tmp_path_factory.mktemp("dovecot-connections"),
        MARTIN,
        MARTIN_PW,
        [MESSAGE],
        keep_warm=request.param,
        imap={"max_preauth_per_address": 100},
    ) as (dovecot, stack):
        yield Env(dovecot, stack)


async def no_connection_left(env: Env) -> None:
    async def gone() -> bool:
        return not await asyncio.to_thread(env.martin_connections)

    await eventually(gone, "every Dovecot connection of the BAL closed", bound=30)


def login(port: int, token: str, source: str = "127.0.0.1") -> imaplib.IMAP4:
    client = ProxiedIMAP4(port, b"", source=source)
    typ, data = client.authenticate("XOAUTH2", lambda _: base64.b64decode(xoauth2(MARTIN, token)))
    assert typ == "OK", data
    return client


def cycle(port: int, token: str, ending: str = "logout") -> None:
    """Login, SELECT, FETCH, then LOGOUT, or a dropped connection in one of the ways an
    LPS drops it: after a command, in the middle of one, in IDLE."""
    client = login(port, token)
    typ, data = client.select("INBOX")
    assert typ == "OK", data
    typ, data = client.fetch("1", "(FLAGS BODY.PEEK[])")
    assert typ == "OK", data
    if ending == "logout":
        client.logout()
        return
    sock = client.socket()
    if ending == "logout-and-close":  # LOGOUT, without waiting for its answer
        sock.sendall(b"a9 LOGOUT\r\n")
    elif ending == "mid-command":
        sock.sendall(b"a9 FETCH 1:* (BODY.PEEK[])\r\n")
    elif ending == "idle":
        sock.sendall(b"a9 IDLE\r\n")
        assert client.readline().startswith(b"+")
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


async def test_thirty_sequential_and_ten_parallel_cycles_never_hit_the_limit(env: Env):
    token = await env.stack.token("dr-martin")
    port = env.stack.imap_port
    for _ in range(30):
        await asyncio.to_thread(cycle, port, token)
    for _ in range(3):
        await asyncio.gather(*(asyncio.to_thread(cycle, port, token) for _ in range(CLIENTS)))
    await no_connection_left(env)


async def test_dropped_clients_leave_no_backend_connection(env: Env):
    token = await env.stack.token("dr-martin")
    port = env.stack.imap_port
    endings = ["drop", "mid-command", "idle"]
    for _ in range(2):
        await asyncio.gather(
            *(
                asyncio.to_thread(cycle, port, token, endings[index % len(endings)])
                for index in range(CLIENTS)
            )
        )
        await no_connection_left(env)


async def test_ten_clients_in_tight_loops_of_mixed_endings(env: Env):
    """Each LPS starts its next session as soon as the last one ended, whichever way."""
    token = await env.stack.token("dr-martin")
    port = env.stack.imap_port
    endings = ["logout", "drop", "logout-and-close", "mid-command", "idle"]

    def loop(first: int) -> None:
        for turn in range(10):
            cycle(port, token, endings[(first + turn) % len(endings)])

    await asyncio.gather(*(asyncio.to_thread(loop, index) for index in range(CLIENTS)))
    await no_connection_left(env)


async def test_dovecot_sees_the_lps_address_not_the_gateway(env: Env):
    """The LPS connects from 127.0.0.2; the gateway reaches Dovecot from 127.0.0.1 and
    names the LPS with ID before login: Dovecot counts the session under 127.0.0.2."""
    token = await env.stack.token("dr-martin")
    client = await asyncio.to_thread(login, env.stack.imap_port, token, "127.0.0.2")
    try:
        assert await asyncio.to_thread(env.martin_connections) == ["127.0.0.2"]
    finally:
        await asyncio.to_thread(client.logout)
    await no_connection_left(env)
    assert "rip=127.0.0.2" in env.dovecot.log
