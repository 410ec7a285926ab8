"""Slow, deaf and greedy clients: none may hold a connection past the timeouts, or take the
slots of others (per source address before login, per person after, failed logins
throttled per address).

Hostile clients connect from 127.0.0.2 and the well-behaved ones from 127.0.0.1: both are
loopback (plaintext logins allowed) yet distinct sources for the per-address caps."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import logging
import smtplib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.settings import MockSettings, Settings
from tests.gateway.test_imap_proxy import modern_settings, relays
from tests.gateway.test_imap_relay_bulk import big_fetch_answer, scripted_backend
from tests.gateway.test_smtp_front import metric
from tests.imap_raw import Raw
from tests.support.imap import login
from tests.support.sasl import xoauth2_b64
from tests.support.stacks import Stack, gateway_settings, running_stack
from tests.support.waiting import until

HOSTILE = "127.0.0.2"
MARTIN = "claire.martin@medecin.mssante.fr"
PREAUTH = 5.0  # seconds: the login deadline in this module's configuration
WRITE = 2.0  # seconds a reply may wait for a client that does not read
BOUND = 60.0  # what a test waits at most for the event it needs


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return gateway_settings(
        tmp_path / "gateway",
        imap={
            "preauth_timeout": PREAUTH,
            "write_timeout": WRITE,
            "max_preauth_per_address": 20,
            "max_sessions_per_person": 3,
        },
        smtp={
            "preauth_timeout": PREAUTH,
            "write_timeout": WRITE,
            "max_preauth_per_address": 20,
            "max_sessions_per_person": 3,
        },
        limits={"max_failed_logins": 3, "failed_login_window": 600},
    )


def connect(port: int, source: str = HOSTILE) -> socket.socket:
    """A client socket with the smallest receive window the kernel allows (it will not
    read anyway)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def pipeline_without_reading(sock: socket.socket, line: bytes) -> float:
    """Send `line` again and again, never read; return when the server cuts the connection
    (the seconds it took). Whatever the kernel accepts is sent, then we wait for room."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    chunk = line * (65536 // len(line))
    while True:
        try:
            await asyncio.wait_for(loop.sock_sendall(sock, chunk), BOUND)
        except (ConnectionError, BrokenPipeError):
            return loop.time() - began
        except TimeoutError:
            raise AssertionError("the server still holds a client that never reads") from None


def congested(listener: socket.socket) -> None:
    """The smallest send buffers the kernel allows on the connections the listener accepts
    (they inherit them), as on a slow link: a client that does not read blocks the server
    after a few KiB. (With 4 KiB ones, the 8 KiB of replies to 60 pipelined CAPABILITY
    could fit in the kernel's buffers when the server wrote them fast enough for the
    kernel to coalesce them.)"""
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)


def blocked_writes(stack: Stack) -> int:
    """How many of the IMAP front's connections have replies waiting for their client."""
    assert stack.gateway.imap is not None
    return sum(1 for _peer, unsent in stack.gateway.imap.connections() if unsent > 0)


def imap_login_and_select(port: int, token: str) -> int:
    with imaplib.IMAP4("127.0.0.1", port, timeout=30) as imap:
        imap.authenticate("XOAUTH2", lambda _: f"user={MARTIN}\1auth=Bearer {token}\1\1".encode())
        status, data = imap.select("INBOX")
        assert status == "OK"
        count = int(data[0] or 0)
        imap.logout()
        return count


def hostile_imap(stack: Stack) -> int:
    """The IMAP front's connections from the hostile address."""
    assert stack.gateway.imap is not None
    return sum(1 for peer, _unsent in stack.gateway.imap.connections() if peer == HOSTILE)


def hostile_smtp(stack: Stack) -> int:
    assert stack.gateway.smtp is not None
    return sum(1 for peer, _unsent in stack.gateway.smtp.connections() if peer == HOSTILE)


async def test_clients_that_pipeline_and_never_read_are_cut_at_the_login_deadline(
    stack: Stack,
) -> None:
    """Twenty clients pipeline CAPABILITY and never read: their replies stay unsent on the
    gateway's side (a congested link), and the login deadline still ends them, while other
    clients log in as usual."""
    assert stack.gateway.imap is not None
    congested(stack.gateway.imap.listener)
    loop = asyncio.get_running_loop()
    began = loop.time()  # before the connections: their deadlines run from their accept
    socks = [connect(stack.imap_port) for _ in range(20)]
    try:
        for sock in socks:
            await loop.sock_sendall(sock, b"a CAPABILITY\r\n" * 60)
        await until(lambda: blocked_writes(stack) == 20, "twenty connections with unread replies")
        token = await stack.token("dr-martin")
        logins = [
            asyncio.to_thread(imap_login_and_select, stack.imap_port, token) for _ in range(3)
        ]
        assert all(count > 0 for count in await asyncio.gather(*logins))
        if loop.time() - began < PREAUTH - 0.5:  # (a very slow machine passes the deadline)
            assert hostile_imap(stack) == 20  # the others logged in while these were held
        await until(lambda: hostile_imap(stack) == 0, "the twenty cut")
        lasted = loop.time() - began
    finally:
        for sock in socks:
            sock.close()
    assert PREAUTH - 0.5 <= lasted <= PREAUTH + 30


async def test_a_client_pipelining_endlessly_before_login_is_cut_at_once(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """No client needs more than a handful of commands before login: past 64 the gateway
    says BYE, long before the deadline, and spends no more time on it."""
    caplog.set_level(logging.INFO)
    async with raw_from(stack.imap_port, HOSTILE) as client:
        await client.send(b"a NOOP\r\n" * 10_000)
        answers = await client.until_closed()
    assert answers.count(b"a OK NOOP completed") == 64
    assert answers.endswith(b"* BYE too many commands before login\r\n")

    sock = connect(stack.smtp_port)
    try:
        await pipeline_without_reading(sock, b"NOOP\r\n")
    finally:
        sock.close()
    said = [r.getMessage() for r in caplog.records]
    assert "smtp.too_many_commands_before_auth" in said  # cut by the cap, not the deadline
    assert "imap.too_many_commands_before_login" in said


async def test_a_logged_in_client_that_never_reads_is_cut_after_the_write_timeout(
    stack: Stack,
) -> None:
    """After login the relay stops reading the client's commands while their answers pile
    up unread, and ends the session once a reply waits `write_timeout`."""
    assert stack.gateway.imap is not None
    congested(stack.gateway.imap.listener)
    token = await stack.token("dr-martin")
    sock = connect(stack.imap_port)
    loop = asyncio.get_running_loop()
    try:
        blob = xoauth2_b64(MARTIN, token)
        await loop.sock_sendall(sock, b"a AUTHENTICATE XOAUTH2 " + blob + b"\r\nb SELECT INBOX\r\n")
        await until(
            lambda: metric(stack, "lpsgw_open_sessions", protocol="imap") == 1, "the relay running"
        )
        lasted = await pipeline_without_reading(sock, b"c FETCH 1:* (BODY.PEEK[] FLAGS)\r\n")
    finally:
        sock.close()
    assert lasted < BOUND
    sent = metric(stack, "lpsgw_relayed_bytes_total", protocol="imap", direction="to_backend")
    assert sent < 4 * 1024 * 1024  # the relay stopped forwarding what the client pipelined
    assert stack.gateway.imap is not None
    await until(lambda: stack.gateway.imap.open_sessions == 0, "the session ended")


async def test_a_client_that_never_reads_a_big_literal_is_cut_as_deaf_not_as_backend_loss(
    stack: Stack,
) -> None:
    """The backend task meets the write timeout first when a big FETCH fills the client's
    buffers: the session is cut then (no BYE, no wait), and the backend is not counted
    as lost (a WriteTimeout is a ConnectionError: it was)."""
    async with scripted_backend(big_fetch_answer(256 * 1024 * 1024)) as (port, _writers):
        backend = modern_settings(stack)
        backend.imap_port, backend.imap_tls = port, "none"
        client = await login(stack, "dr-martin", MARTIN)
        transport = client.writer.transport
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # never reads again
        await client.send(b"big FETCH 1 BODY[]\r\n")
        (relay,) = relays(stack)
        await until(lambda: relay._lagging.done(), "the relay waiting for the client")
        loop = asyncio.get_running_loop()
        lagging = loop.time()
        imap = stack.gateway.imap
        assert imap is not None
        await until(lambda: imap.open_sessions == 0, "the session cut", bound=BOUND)
        assert loop.time() - lagging < WRITE + 1.0
        client.writer.close()
    died = metric(
        stack, "lpsgw_backend_errors_total", backend="modern", protocol="imap", kind="died"
    )
    assert died == 0


async def test_smtp_clients_that_never_read_are_cut_before_and_after_auth(stack: Stack) -> None:
    """Before AUTH, the login deadline ends a client that says EHLO and no more (and never
    reads); after it, one that pipelines and never reads is cut at the write timeout."""
    assert stack.gateway.smtp is not None
    congested(stack.gateway.smtp.listener)
    before = connect(stack.smtp_port)
    after = connect(stack.smtp_port)
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        await loop.sock_sendall(before, b"EHLO lps\r\n" * 5)
        token = await stack.token("dr-martin")
        await loop.sock_sendall(
            after, b"EHLO lps\r\nAUTH XOAUTH2 " + xoauth2_b64(MARTIN, token) + b"\r\n"
        )
        lasted_after = await pipeline_without_reading(after, b"NOOP\r\n")
        await until(lambda: hostile_smtp(stack) == 0, "the silent one cut at the deadline")
        lasted_before = loop.time() - began
    finally:
        before.close()
        after.close()
    assert PREAUTH - 0.5 <= lasted_before < BOUND
    assert lasted_after < BOUND
    await until(lambda: stack.gateway.smtp.open_sessions == 0, "no SMTP connection left")


async def test_a_deaf_smtp_client_that_quits_is_cut_after_the_grace(stack: Stack) -> None:
    """aiosmtpd closes after QUIT, and a close waits for unread replies to leave: a client
    that pipelined and never reads must not keep its connection until the idle timeout."""
    assert stack.gateway.smtp is not None
    congested(stack.gateway.smtp.listener)
    sock = connect(stack.smtp_port)
    loop = asyncio.get_running_loop()
    try:
        token = await stack.token("dr-martin")
        auth = b"EHLO lps\r\nAUTH XOAUTH2 " + xoauth2_b64(MARTIN, token) + b"\r\n"
        await loop.sock_sendall(sock, auth + b"NOOP\r\n" * 6000 + b"QUIT\r\n")
        await until(lambda: hostile_smtp(stack) == 0, "the deaf client cut after QUIT")
    finally:
        sock.close()


def authenticate(bal: str, token: str) -> str:
    return f"AUTHENTICATE XOAUTH2 {xoauth2_b64(bal, token).decode()}"


async def refused_login(client: Raw, bal: str, token: str) -> bytes:
    """The tagged answer to a login meant to fail (the RFC 7628 challenge answered)."""
    tag = client.tag()
    await client.send(f"{tag} {authenticate(bal, token)}\r\n".encode())
    while True:
        line = await client.line()
        if line.startswith(b"+"):
            await client.send(b"\r\n")
        elif line.startswith(tag.encode() + b" "):
            return line


@contextlib.asynccontextmanager
async def raw_from(port: int, source: str) -> AsyncIterator[Raw]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    client = Raw(reader, writer)
    client.greeting = await client.line()
    try:
        yield client
    finally:
        await client.close()


async def test_connections_not_logged_in_are_capped_per_source_address(stack: Stack) -> None:
    async with contextlib.AsyncExitStack() as held:
        first = [
            await held.enter_async_context(raw_from(stack.imap_port, HOSTILE)) for _ in range(20)
        ]
        assert all(c.greeting.startswith(b"* OK") for c in first)
        async with raw_from(stack.imap_port, HOSTILE) as extra:
            assert extra.greeting.startswith(b"* BYE")
            assert b"too many connections from your address" in extra.greeting
        async with raw_from(stack.imap_port, "127.0.0.1") as other:
            assert other.greeting.startswith(b"* OK")  # another address is not concerned
        # A connection that logs in gives its slot back.
        token = await stack.token("dr-martin")
        await first[0].ok(authenticate(MARTIN, token))
        async with raw_from(stack.imap_port, HOSTILE) as again:
            assert again.greeting.startswith(b"* OK")
    assert (
        metric(stack, "lpsgw_refused_connections_total", protocol="imap", reason="per_address") == 1
    )

    socks = [connect(stack.smtp_port) for _ in range(20)]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", stack.smtp_port, local_addr=(HOSTILE, 0)
        )
        greeting = await asyncio.wait_for(reader.readline(), BOUND)
        writer.close()
    finally:
        for sock in socks:
            sock.close()
    assert greeting.startswith(b"421 4.7.0")
    assert (
        metric(stack, "lpsgw_refused_connections_total", protocol="smtp", reason="per_address") == 1
    )


async def test_exempt_networks_are_not_capped(
    tmp_path: Path, mock_settings: MockSettings, stack_settings: Settings
) -> None:
    stack_settings.limits.exempt_networks = ["127.0.0.2/32"]
    stack_settings.imap.max_preauth_per_address = 2
    async with (
        running_stack(stack_settings, mock_settings, tmp_path / "mock") as stack,
        contextlib.AsyncExitStack() as held,
    ):
        for _ in range(5):
            client = await held.enter_async_context(raw_from(stack.imap_port, HOSTILE))
            assert client.greeting.startswith(b"* OK")
        for expected in (b"* OK", b"* OK", b"* BYE"):
            client = await held.enter_async_context(raw_from(stack.imap_port, "127.0.0.1"))
            assert client.greeting.startswith(expected)


async def test_sessions_are_capped_per_person_not_per_address(stack: Stack) -> None:
    """One person, three sessions at most (here); another person behind the same address
    is not concerned, and a session that ends gives its slot back."""
    martin = await stack.token("dr-martin")
    bernard = await stack.token("sec-bernard")
    async with contextlib.AsyncExitStack() as held:
        sessions = []
        for _ in range(3):
            client = await held.enter_async_context(raw_from(stack.imap_port, "127.0.0.1"))
            await client.ok(authenticate(MARTIN, martin))
            sessions.append(client)
        async with raw_from(stack.imap_port, "127.0.0.1") as fourth:
            refused = await refused_login(fourth, MARTIN, martin)
            assert refused.startswith(b"T1 NO [LIMIT]")
            async with raw_from(stack.imap_port, "127.0.0.1") as sophie:
                await sophie.ok(authenticate(MARTIN, bernard))
            await sessions[0].ok("LOGOUT")
            await until(
                lambda: stack.gateway.limits.sessions_per_person.held("899700000001") == 2,
                "the slot given back",
            )
            await fourth.ok(authenticate(MARTIN, martin))
    assert metric(stack, "lpsgw_logins_total", protocol="imap", result="limit") == 1
    # The trail says what happened: four logins, one refused (none written as ok first).
    assert stack.gateway.audit is not None
    assert stack.gateway.delegations is not None
    await stack.gateway.audit.flush()
    logins = [
        e.result
        for e in await stack.gateway.delegations.audit_for(MARTIN, limit=100)
        if e.action == "login" and e.actor_idnat == "899700000001"
    ]
    assert sorted(logins) == ["ok"] * 4 + ["refused:too-many-sessions"]


async def test_smtp_sessions_are_capped_per_person(stack: Stack) -> None:
    token = await stack.token("sec-bernard")
    held: list[smtplib.SMTP] = []

    def log_in() -> tuple[int, bytes]:
        smtp = smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30)
        smtp.ehlo("lps")
        code, text = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(MARTIN, token).decode())
        if code == 235:
            held.append(smtp)
        else:
            smtp.close()
        return code, text

    try:
        answers = [await asyncio.to_thread(log_in) for _ in range(4)]
        assert [code for code, _ in answers] == [235, 235, 235, 454]
        assert b"sessions open already" in answers[3][1]
        await asyncio.to_thread(held.pop().quit)
        await until(
            lambda: stack.gateway.limits.smtp_sessions_per_person.held("899700000003") == 2,
            "the slot given back",
        )
        assert (await asyncio.to_thread(log_in))[0] == 235
    finally:
        for smtp in held:
            smtp.close()
    assert metric(stack, "lpsgw_logins_total", protocol="smtp", result="limit") == 1


async def test_bad_tokens_are_throttled_per_source_address(stack: Stack) -> None:
    """Three bad tokens from one address: the next login from it is refused at once, even
    with a good token, and costs no validation; another address logs in as usual."""
    good = await stack.token("dr-martin")
    async with raw_from(stack.imap_port, HOSTILE) as client:
        for _ in range(2):
            bad = await refused_login(client, MARTIN, "forged")
            assert b"[AUTHENTICATIONFAILED]" in bad
    async with raw_from(stack.imap_port, HOSTILE) as client:
        bad = await refused_login(client, MARTIN, "forged-again")
        assert b"[AUTHENTICATIONFAILED]" in bad
        throttled = await refused_login(client, MARTIN, good)
        assert b"NO [UNAVAILABLE]" in throttled
        assert b"too many failed logins from your address" in throttled
    async with raw_from(stack.imap_port, "127.0.0.1") as client:
        await client.ok(authenticate(MARTIN, good))
    assert metric(stack, "lpsgw_logins_total", protocol="imap", result="throttled") == 1

    def smtp_auth() -> tuple[int, bytes]:
        with smtplib.SMTP(timeout=30, source_address=(HOSTILE, 0)) as smtp:
            smtp.connect("127.0.0.1", stack.smtp_port)
            smtp.ehlo("lps")
            return smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(MARTIN, good).decode())

    code, text = await asyncio.to_thread(smtp_auth)
    assert code == 454
    assert b"too many failed logins" in text


async def test_forbidden_bal_are_throttled_per_person_not_per_address(stack: Stack) -> None:
    """A person whose software keeps asking for a BAL they may not open is throttled
    themselves: their neighbours behind the same address log in as usual."""
    eve = "eve.moreau@medecin.mssante.fr"
    sophie = await stack.token("sec-bernard")
    martin = await stack.token("dr-martin")
    for _ in range(3):
        async with raw_from(stack.imap_port, HOSTILE) as client:
            assert b"[AUTHORIZATIONFAILED]" in await refused_login(client, eve, sophie)
    async with raw_from(stack.imap_port, HOSTILE) as client:
        throttled = await refused_login(client, MARTIN, sophie)  # a BAL she may open
        assert b"too many failed logins for this person" in throttled
        await client.ok(authenticate(MARTIN, martin))  # Dr MARTIN, same address
