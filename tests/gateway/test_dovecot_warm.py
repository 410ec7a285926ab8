"""Warm backend sessions against a real Dovecot: a reused session shows the client exactly
what a fresh one does, Dovecot sees one login for both, and counts no connection once the
warm session is over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from tests.dovecot import DovecotServer
from tests.support.imap import login, scripted
from tests.support.stacks import Stack, dovecot_stack
from tests.support.waiting import eventually, until

pytestmark = pytest.mark.asyncio(loop_scope="module")

MARTIN = "claire.martin@medecin.mssante.fr"
MARTIN_PW = "martin-dovecot-pw"
MESSAGES = [
    b"From: a@example.org\r\nSubject: first\r\n\r\none\r\n",
    b"From: b@example.org\r\nSubject: second\r\n\r\ntwo\r\n",
]


@dataclass
class Env:
    dovecot: DovecotServer
    stack: Stack

    def metric(self, result: str) -> float:
        metrics = self.stack.gateway.metrics
        return metrics.sample("lpsgw_warm_sessions_total", backend="dovecot", result=result)

    def parked(self) -> float:
        return self.stack.gateway.metrics.sample("lpsgw_warm_open", backend="dovecot")

    def logins(self) -> int:
        """Dovecot's logins to Martin's BAL so far (imap-login's log lines)."""
        return self.dovecot.log.count(f"Login: user=<{MARTIN}>")

    async def connections(self) -> int:
        return len([u for u, _ in await asyncio.to_thread(self.dovecot.who) if u == MARTIN])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    base = tmp_path_factory.mktemp("dovecot-warm")
    async with dovecot_stack(base, MARTIN, MARTIN_PW, MESSAGES, keep_warm=30) as (dovecot, stack):
        yield Env(dovecot, stack)


async def pool_emptied(env: Env) -> None:
    assert env.stack.gateway.imap is not None
    await env.stack.gateway.imap.warm.drop_all()

    async def none() -> bool:
        return await env.connections() == 0

    await eventually(none, "Dovecot counts no connection of the BAL", bound=30)


async def test_a_reused_session_shows_what_a_fresh_one_does(env: Env):
    """The first session takes the messages' \\Recent; the second (reused) and the third
    (fresh: the pool emptied first) must look the same, line for line."""
    await scripted(env.stack, "dr-martin", MARTIN)
    await until(lambda: env.parked() == 1, "the session is kept warm")
    assert await env.connections() == 1
    logins = env.logins()

    reused = await scripted(env.stack, "dr-martin", MARTIN)
    assert env.metric("hit") == 1
    assert env.logins() == logins  # Dovecot saw no second login
    await until(lambda: env.parked() == 1, "kept again")
    await pool_emptied(env)

    fresh = await scripted(env.stack, "dr-martin", MARTIN)
    assert env.metric("miss") == 2
    assert reused == fresh
    assert b"* 2 EXISTS" in fresh
    await until(lambda: env.parked() == 1, "kept")
    await pool_emptied(env)


async def test_a_delegate_from_the_same_address_does_not_hit_dovecots_limit(env: Env):
    """Martin's warm session is not Bernard's: his login closes it first, since Dovecot
    counts both under the BAL and the LPS's address (mail_max_userip_connections)."""
    client = await login(env.stack, "dr-martin", MARTIN)
    await client.ok("SELECT INBOX")
    await client.ok("LOGOUT")
    await until(lambda: env.parked() == 1, "the session is kept warm")
    hits = env.metric("hit")
    other = await login(env.stack, "sec-bernard", MARTIN)
    assert env.metric("hit") == hits
    selected = await other.ok("SELECT INBOX")
    assert b"* 2 EXISTS" in selected.untagged
    assert await env.connections() == 1  # Martin's went before Bernard's was opened
    await other.ok("LOGOUT")
    await until(lambda: env.parked() == 1, "Bernard's is kept")
    await pool_emptied(env)


async def test_shutdown_logs_out_of_dovecot(env: Env):
    client = await login(env.stack, "dr-martin", MARTIN)
    await client.ok("LOGOUT")
    await until(lambda: env.parked() == 1, "the session is kept warm")
    assert env.stack.gateway.imap is not None
    logged_out = env.dovecot.log.count("Logged out")
    await env.stack.gateway.imap.stop(grace=1)

    async def none() -> bool:
        return await env.connections() == 0

    await eventually(none, "Dovecot counts no connection after the gateway stopped", bound=30)
    await until(
        lambda: env.dovecot.log.count("Logged out") == logged_out + 1,
        "the warm session said LOGOUT (not a cut connection)",
    )
