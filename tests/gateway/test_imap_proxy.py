"""The gateway's IMAP front over the mock operator's modern platform, on real sockets:
login decisions, the relay, rights, audit, IDLE, revocation, backend failures."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import base64
import dataclasses
import datetime as dt
import imaplib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.backends.imap_smtp.backend import ImapSmtpBackend
from gateway.fronts.imap.relay import Relay
from gateway.runtime.tls import TLS_READ_SIZE
from gateway.server import Gateway
from gateway.settings import BackendSettings, MockSettings, Settings
from tests.conftest import quick_mock_settings
from tests.imap_raw import Lit, Raw
from tests.support.imap import login
from tests.support.sasl import xoauth2
from tests.support.stacks import Stack, gateway_settings, identity, running_stack, start_stack
from tests.support.waiting import until

MARTIN = "claire.martin@medecin.mssante.fr"
MOREAU = "eve.moreau@medecin.mssante.fr"
DUPONT = "jean.dupont@medecin.mssante.fr"
BERNARD = "899700000003"


def modern_settings(stack: Stack) -> BackendSettings:
    """The settings the "modern" backend reads at each login (tests point them elsewhere)."""
    assert stack.gateway.router is not None
    backend = stack.gateway.router.backends["modern"]
    assert isinstance(backend, ImapSmtpBackend)
    return backend.settings


def relays(stack: Stack) -> list[Relay]:
    assert stack.gateway.imap is not None
    return [r for group in stack.gateway.imap.live._relays.values() for r in group]


async def audit(stack: Stack, mailbox: str) -> list[Any]:
    assert stack.gateway.audit is not None
    assert stack.gateway.delegations is not None
    await stack.gateway.audit.flush()
    return await stack.gateway.delegations.audit_for(mailbox)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def untouched(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway (this module's settings) for the login and command checks that change
    nothing (a stack each was most of their time): they select and read, or are refused,
    so the seeded BAL stays as it was. Tests that append, revoke, count or break keep a
    gateway each."""
    directory = tmp_path_factory.mktemp("imap-proxy")
    settings = gateway_settings(directory / "gateway", imap={"implicit_tls_port": 0})
    async with running_stack(settings, quick_mock_settings(), directory / "mock") as running:
        yield running


# -- login -----------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_holder_opens_own_bal_with_empty_user_and_sees_the_backend(untouched: Stack):
    stack = untouched
    client = await Raw.open(stack.imap_port)
    assert b"AUTH=XOAUTH2" in client.greeting
    assert b"STARTTLS" in client.greeting
    token = await stack.token("dr-martin")
    reply = await client.ok("AUTHENTICATE XOAUTH2 ", xoauth2("", token))
    caps = reply.tagged.split(b"[CAPABILITY ", 1)[1].split(b"]")[0].split()
    assert b"IDLE" in caps
    assert b"UIDPLUS" in caps
    assert b"MOVE" in caps
    assert not any(c.startswith(b"AUTH=") for c in caps)
    assert b"STARTTLS" not in caps
    selected = await client.ok("SELECT INBOX")
    assert b"* 3 EXISTS" in selected.untagged
    assert selected.tagged.endswith(b"[READ-WRITE] SELECT completed")
    fetched = await client.ok("UID FETCH 1:* (UID FLAGS ENVELOPE)")
    assert len(fetched.of(b"FETCH")) == 3
    capability = await client.ok("CAPABILITY")
    assert capability.untagged == [b"* CAPABILITY " + b" ".join(caps)]
    await client.ok("LOGOUT")
    await client.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_delegate_opens_delegated_bal_and_is_refused_elsewhere(untouched: Stack):
    stack = untouched
    client = await login(stack, "sec-bernard", MARTIN)
    assert b"* 3 EXISTS" in (await client.ok("SELECT INBOX")).untagged
    await client.close()

    other = await Raw.open(stack.imap_port)
    token = await stack.token("sec-bernard")
    refused = await other.command("AUTHENTICATE XOAUTH2 ", xoauth2(MOREAU, token))
    assert refused.tagged.split(b" ", 2)[1:2] == [b"NO"]
    assert b"[AUTHORIZATIONFAILED]" in refused.tagged
    # She has no BAL of her own: an empty user is refused the same way.
    again = await other.command("AUTHENTICATE XOAUTH2 ", xoauth2("", token))
    assert b"[AUTHORIZATIONFAILED]" in again.tagged
    await other.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_bad_token_gets_authenticationfailed_with_rfc7628_challenge(untouched: Stack):
    stack = untouched
    client = await Raw.open(stack.imap_port)
    await client.send(
        b"A1 AUTHENTICATE XOAUTH2 " + xoauth2(MARTIN, "not.a.token").encode() + b"\r\n"
    )
    challenge = await client.line()
    assert challenge.startswith(b"+ ")
    body = base64.b64decode(challenge[2:])
    assert b'"status":"invalid_token"' in body
    assert b"openid-configuration" in body
    await client.send(b"\r\n")
    done = await client.line()
    assert done.startswith(b"A1 NO [AUTHENTICATIONFAILED]")
    await client.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_login_with_token_as_password_and_plain(untouched: Stack):
    stack = untouched
    token = await stack.token("dr-martin")

    def run() -> tuple[str, str]:
        with imaplib.IMAP4("127.0.0.1", stack.imap_port) as m:
            typ, _ = m.login(MARTIN, token)
            status = m.select("INBOX")[0]
            m.logout()
        with imaplib.IMAP4("127.0.0.1", stack.imap_port) as m:
            plain = m.authenticate("PLAIN", lambda _: f"\0{MARTIN}\0{token}".encode())[0]
            m.logout()
        return typ + status, plain

    assert await asyncio.to_thread(run) == ("OKOK", "OK")


async def test_logins_are_audited_with_the_client_software(stack: Stack):
    client = await login(stack, "sec-bernard", MARTIN, client_id="LPS Cabinet")
    await client.ok("SELECT INBOX")
    await client.ok("LOGOUT")
    events = await audit(stack, MARTIN)
    login_event = next(e for e in events if e.action == "login" and e.actor_idnat == BERNARD)
    assert login_event.software == "LPS Cabinet 1.0"
    assert login_event.interface == "imap"
    assert login_event.delegation_id is not None
    select = next(e for e in events if e.action == "select" and e.actor_idnat == BERNARD)
    assert select.result == "ok"
    assert select.detail == "INBOX"
    assert select.delegation_id == login_event.delegation_id
    assert select.software == "LPS Cabinet 1.0"


async def test_a_login_is_audited_when_its_backend_session_is_open(stack: Stack) -> None:
    """The login's event is dated when the session opened (or failed), not when the
    registry decided: a backend slow to greet comes between the two."""
    connected, greet = asyncio.Event(), asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await greet.wait()
        writer.write(b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] slow\r\n")
        line = await reader.readline()  # the master login
        writer.write(line.split(b" ", 1)[0] + b" OK [CAPABILITY IMAP4rev1 LITERAL+] in\r\n")
        while line := await reader.readline():
            writer.write(line.split(b" ", 1)[0] + b" OK done\r\n")

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        backend = modern_settings(stack)
        backend.imap_port, backend.imap_tls = server.sockets[0].getsockname()[1], "none"
        logging_in = asyncio.create_task(login(stack, "dr-martin", MARTIN))
        await connected.wait()  # decided, routed: the backend is being opened
        opening = dt.datetime.now(dt.UTC)
        greet.set()
        client = await logging_in
        await client.ok("LOGOUT")
    events = await audit(stack, MARTIN)
    login_event = next(e for e in events if e.action == "login" and e.result == "ok")
    assert login_event.at >= opening


# -- the relay -------------------------------------------------------------------------------


async def test_relay_carries_literals_both_ways_and_pipelined_commands(stack: Stack):
    client = await login(stack, "dr-martin", MARTIN)
    await client.ok("SELECT INBOX")
    message = b"From: claire.martin@medecin.mssante.fr\r\nSubject: test\r\n\r\n" + b"x" * 70_000
    appended = await client.ok("APPEND INBOX (\\Flagged) ", Lit(message))
    assert b"[APPENDUID " in appended.tagged
    uid = int(appended.tagged.split(b"[APPENDUID ")[1].split(b"]")[0].split()[1])
    await client.ok("APPEND INBOX ", Lit(message), plus=True)
    body = await client.ok(f"UID FETCH {uid} (BODY.PEEK[] FLAGS)")
    assert message in body.of(b"FETCH")[0]
    # Three commands in one packet: three tagged answers, in order.
    await client.send(b"p1 NOOP\r\np2 UID SEARCH FLAGGED\r\np3 NOOP\r\n")
    lines = [await client.line()]
    while not lines[-1].startswith(b"p3 "):
        lines.append(await client.line())
    tagged = [line.split(b" ")[:2] for line in lines if not line.startswith(b"*")]
    assert tagged == [[b"p1", b"OK"], [b"p2", b"OK"], [b"p3", b"OK"]]
    assert any(line.startswith(b"* SEARCH") and str(uid).encode() in line for line in lines)
    await client.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_commands_the_gateway_cannot_carry_are_answered_here(untouched: Stack):
    stack = untouched
    client = await login(stack, "dr-martin", MARTIN)
    assert (await client.command("STARTTLS")).status == "BAD"
    assert (await client.command("LOGIN a b")).status == "BAD"
    enabled = await client.ok("ENABLE CONDSTORE")
    assert enabled.untagged == [b"* ENABLED"]
    assert (await client.command("COMPRESS DEFLATE")).status == "BAD"
    assert (await client.command("GETQUOTAROOT INBOX")).status == "BAD"
    await client.ok("NOOP")  # the session goes on
    await client.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_names_with_any_atom_char_go_through_without_a_drop(untouched: Stack):
    stack = untouched
    """The relay parses commands with the engine's parser: an atom holding every ATOM-CHAR
    class is a name to refuse (NO), with wildcards a pattern to relay (OK), never BAD."""
    client = await login(stack, "dr-martin", MARTIN)
    atoms = "!#$&'+,-.0123456789:;<=>?@^_`|[}"
    refused = await client.command(f"SELECT {atoms}")
    assert refused.tagged.endswith(b" NO Mailbox name is not valid mUTF-7"), refused
    assert (await client.ok(f'LIST "" {atoms}%*')).untagged == []
    assert (await client.ok('LIST "" a]*')).status == "OK"
    await client.ok("NOOP")  # the session goes on
    await client.close()


async def test_idle_through_the_gateway_sees_a_delivery(stack: Stack):
    client = await login(stack, "dr-martin", MARTIN)
    await client.ok("SELECT INBOX")
    await client.send(b"i1 IDLE\r\n")
    assert (await client.line()).startswith(b"+ ")
    await stack.mock.platform.deliver(MARTIN, b"Subject: new\r\n\r\nhello\r\n")
    assert await client.line(wait=10) == b"* 4 EXISTS"
    await client.send(b"DONE\r\n")
    reply = await client.collect("i1")
    assert reply.status == "OK"
    await client.ok("NOOP")
    await client.close()


# -- rights ----------------------------------------------------------------------------------


async def read_only_delegate(stack: Stack) -> None:
    """Dr Moreau gives Sophie Bernard read access to her BAL."""
    registry = stack.gateway.delegations
    assert registry is not None
    await registry.grant(await identity(stack, "dr-moreau"), MOREAU, BERNARD, ["read"])


async def test_read_only_delegate_gets_noperm_for_every_change(stack: Stack):
    await read_only_delegate(stack)
    client = await login(stack, "sec-bernard", MOREAU)
    selected = await client.ok("SELECT INBOX")
    assert any(line.startswith(b"* OK [PERMANENTFLAGS (\\Seen)] ") for line in selected.untagged)
    assert b" OK [READ-ONLY] " in selected.tagged  # what she may do: \\Seen aside, nothing
    refused = [
        "SUBSCRIBE Corbeille",
        "STORE 1 +FLAGS (\\Flagged)",
        "UID STORE 1 FLAGS (\\Seen)",
        "STORE 1 -FLAGS (\\Seen \\Deleted)",
        "EXPUNGE",
        "UID EXPUNGE 1",
        "COPY 1 Corbeille",
        "MOVE 1 Corbeille",
        "CREATE Nouveau",
        "DELETE Corbeille",
        "RENAME Corbeille Poubelle",
    ]
    for command in refused:
        reply = await client.command(command)
        assert reply.tagged.split(b" ", 3)[1:3] == [b"NO", b"[NOPERM]"], (command, reply)
    # Refused before the upload: no "+" for the message literal.
    await client.send(b"ap APPEND INBOX {18}\r\n")
    assert (await client.line()).startswith(b"ap NO [NOPERM]")
    append = await client.command("APPEND INBOX ", Lit(b"Subject: x\r\n\r\ny\r\n"), plus=True)
    assert b"NO [NOPERM]" in append.tagged
    stored = await client.ok("STORE 1 +FLAGS (\\Seen)")
    assert b"\\Seen" in stored.of(b"FETCH")[0]
    await client.ok("STORE 1 -FLAGS (\\Seen)")
    # The mailbox is as it was: three messages, Corbeille untouched, no new folder.
    store = stack.mock.platform.store(MOREAU)
    assert len((await store.folder_state("INBOX")).messages) == 3
    assert "Nouveau" not in {f.name for f in await store.list_folders()}
    events = await audit(stack, MOREAU)
    assert any(e.action == "move" and e.result == "refused:noperm" for e in events)
    metrics = stack.gateway.metrics.sample(
        "lpsgw_rights_refusals_total", protocol="imap", right="write"
    )
    assert metrics >= len(refused) + 1
    await client.close()


async def test_read_only_close_does_not_expunge(stack: Stack):
    holder = await login(stack, "dr-moreau", MOREAU)
    await holder.ok("SELECT INBOX")
    await holder.ok("STORE 2 +FLAGS (\\Deleted)")
    await holder.ok("UNSELECT")
    await read_only_delegate(stack)
    delegate = await login(stack, "sec-bernard", MOREAU)
    await delegate.ok("SELECT INBOX")
    await delegate.ok("CLOSE")
    state = await stack.mock.platform.store(MOREAU).folder_state("INBOX")
    assert len(state.messages) == 3
    await delegate.close()
    await holder.close()


# -- live sessions -----------------------------------------------------------------------------


async def test_revocation_closes_the_open_session(stack: Stack):
    registry = stack.gateway.delegations
    assert registry is not None
    client = await login(stack, "sec-bernard", MARTIN)
    await client.ok("SELECT INBOX")
    holder = await identity(stack, "dr-martin")
    (delegation,) = [
        d for d in await registry.delegations_of(holder, MARTIN) if d.delegate_idnat == BERNARD
    ]
    await registry.revoke(holder, MARTIN, delegation.id)
    bye = await client.line(wait=30.0)  # the bus's event ends it: the bound is for failures
    assert bye.startswith(b"* BYE")
    assert b"revoked" in bye
    assert await client.until_closed() == b""
    # And at once no new login (the gateway's remembered decisions forgot hers).
    again = await Raw.open(stack.imap_port)
    token = await stack.token("sec-bernard")
    refused = await again.command("AUTHENTICATE XOAUTH2 ", xoauth2(MARTIN, token))
    assert b"[AUTHORIZATIONFAILED]" in refused.tagged
    await until(lambda: not relays(stack), "the ended relay is no longer tracked")


async def test_expiry_closes_the_session(stack: Stack):
    registry = stack.gateway.delegations
    assert registry is not None
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
    await registry.grant(await identity(stack, "dr-moreau"), MOREAU, BERNARD, ["read"], soon)
    client = await login(stack, "sec-bernard", MOREAU)
    await client.ok("SELECT INBOX")
    bye = await client.line(wait=4.0)
    assert bye.startswith(b"* BYE")
    assert b"expired" in bye


async def test_narrowed_rights_apply_to_the_open_session(stack: Stack):
    registry = stack.gateway.delegations
    assert registry is not None
    client = await login(stack, "sec-bernard", MARTIN)
    await client.ok("SELECT INBOX")
    await client.ok("STORE 1 +FLAGS (\\Flagged)")
    await registry.grant(await identity(stack, "dr-martin"), MARTIN, BERNARD, ["read"])
    await until(
        lambda: all(r.rights == frozenset({"read"}) for r in relays(stack)),
        "the relay has the narrowed rights",
    )
    reply = await client.command("STORE 1 -FLAGS (\\Flagged)")
    assert b"NO [NOPERM]" in reply.tagged
    await client.ok("NOOP")
    await client.close()


async def test_open_sessions_metric_and_cleanup(stack: Stack):
    metrics = stack.gateway.metrics
    client = await login(stack, "dr-martin", MARTIN)
    assert metrics.sample("lpsgw_open_sessions", protocol="imap") == 1
    await client.ok("LOGOUT")
    await client.until_closed()
    await until(
        lambda: metrics.sample("lpsgw_open_sessions", protocol="imap") == 0, "session closed"
    )
    assert stack.gateway.metrics.sample("lpsgw_logins_total", protocol="imap", result="ok") == 1


# -- backend failures ------------------------------------------------------------------------


async def test_backend_dying_mid_session_gives_bye(stack: Stack):
    client = await login(stack, "dr-martin", MARTIN)
    await client.ok("SELECT INBOX")
    (relay,) = relays(stack)
    relay.up.writer.transport.abort()
    bye = await client.line(wait=3.0)
    assert bye.startswith(b"* BYE")
    assert b"lost" in bye
    assert await client.until_closed() == b""
    errors = stack.gateway.metrics.sample(
        "lpsgw_backend_errors_total", backend="modern", protocol="imap", kind="died"
    )
    assert errors == 1


async def test_backend_down_at_login_is_unavailable(stack: Stack):
    assert stack.mock.imap is not None
    await stack.mock.imap.stop()
    client = await Raw.open(stack.imap_port)
    token = await stack.token("dr-martin")
    reply = await client.command("AUTHENTICATE XOAUTH2 ", xoauth2(MARTIN, token))
    assert b"NO [UNAVAILABLE]" in reply.tagged
    assert (
        stack.gateway.metrics.sample("lpsgw_logins_total", protocol="imap", result="unavailable")
        == 1
    )
    await client.close()


async def mute_backend() -> tuple[asyncio.Server, int]:
    """An IMAP server that lets the gateway log in, then never answers again."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] mute\r\n")
        line = await reader.readline()
        tag = line.split(b" ", 1)[0]
        writer.write(tag + b" OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] in\r\n")
        await reader.read()  # then silence until the gateway hangs up

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_silent_backend_times_out_with_bye(stack: Stack):
    server, port = await mute_backend()
    backend = modern_settings(stack)
    backend.imap_port, backend.imap_tls, backend.reply_timeout = port, "none", 0.5
    async with server:
        client = await login(stack, "dr-martin", MARTIN)
        started = time.monotonic()
        await client.send(b"t1 NOOP\r\n")
        bye = await client.line(wait=5.0)
        assert bye.startswith(b"* BYE")
        assert b"not responding" in bye
        assert time.monotonic() - started < 3.0
        timeouts = stack.gateway.metrics.sample(
            "lpsgw_backend_errors_total", backend="modern", protocol="imap", kind="timeout"
        )
        assert timeouts == 1


async def test_idle_client_is_logged_out(stack: Stack):
    assert stack.gateway.imap is not None
    stack.gateway.imap.config = dataclasses.replace(stack.gateway.imap.config, idle_timeout=0.5)
    client = await login(stack, "dr-martin", MARTIN)
    bye = await client.line(wait=3.0)
    assert bye.startswith(b"* BYE")
    assert b"autologout" in bye


# -- transports and login modes ----------------------------------------------------------------


@pytest.mark.parametrize("backend_overrides", [{"login": "token", "imap_tls": "none"}])
async def test_token_mode_forwards_the_users_token(stack: Stack):
    """The backend (the mock, sharing the registry) decides on the person's own token."""
    client = await login(stack, "sec-bernard", MARTIN)
    assert b"* 3 EXISTS" in (await client.ok("SELECT INBOX")).untagged
    await client.ok("LOGOUT")
    events = await audit(stack, MARTIN)
    # The gateway and the mock both checked the delegation: two imap logins of hers.
    assert sum(e.action == "login" and e.actor_idnat == BERNARD for e in events) == 2


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return gateway_settings(tmp_path / "gateway", imap={"implicit_tls_port": 0})


async def test_starttls_and_implicit_tls_listeners(stack: Stack):
    cert = stack.gateway.settings.data_dir / "dev-cert.pem"
    context = ssl.create_default_context(cafile=str(cert))
    token = await stack.token("dr-martin")
    assert stack.gateway.imaps is not None
    implicit_port = stack.gateway.imaps.port

    def run() -> tuple[str, str]:
        with imaplib.IMAP4("127.0.0.1", stack.imap_port) as plain:
            plain.starttls(context)
            assert "STARTTLS" not in plain.capabilities
            first = plain.authenticate("XOAUTH2", lambda _: base64.b64decode(xoauth2("", token)))
        with imaplib.IMAP4_SSL("127.0.0.1", implicit_port, ssl_context=context) as tls:
            assert "STARTTLS" not in tls.capabilities
            second = tls.authenticate("XOAUTH2", lambda _: base64.b64decode(xoauth2("", token)))
            tls.select("INBOX")
        return first[0], second[0]

    assert await asyncio.to_thread(run) == ("OK", "OK")


async def test_tls_sessions_read_into_bounded_buffers_and_carry_big_messages(stack: Stack):
    """A running gateway's TLS connections read into `TLS_READ_SIZE` bytes, not asyncio's
    256 KiB held by every idle session; a message several times that size still goes
    both ways whole over implicit TLS."""
    assert asyncio.sslproto.SSLProtocol.max_size == TLS_READ_SIZE
    cert = stack.gateway.settings.data_dir / "dev-cert.pem"
    context = ssl.create_default_context(cafile=str(cert))
    token = await stack.token("dr-martin")
    assert stack.gateway.imaps is not None
    port = stack.gateway.imaps.port
    body = b"".join(b"line %06d of a big report\r\n" % n for n in range(12_000))  # ~340 KiB
    message = b"Subject: big over TLS\r\n\r\n" + body

    def run() -> bytes:
        with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context) as tls:
            tls.authenticate("XOAUTH2", lambda _: base64.b64decode(xoauth2("", token)))
            assert tls.append("INBOX", None, None, message)[0] == "OK"
            tls.select("INBOX")
            _, found = tls.search(None, "SUBJECT", '"big over TLS"')
            _, data = tls.fetch(found[0].split()[-1], "(BODY.PEEK[])")
            first = data[0]
            assert isinstance(first, tuple)
            return first[1]

    assert len(message) > 4 * TLS_READ_SIZE
    assert await asyncio.to_thread(run) == message


@pytest.mark.parametrize("migrated_db_url", ["postgresql"], indirect=True)
async def test_revocation_on_another_node_closes_the_session(
    migrated_db_url: str, tmp_path: Path, mock_settings: MockSettings
):
    """Two gateways on one PostgreSQL: revoking through node B ends the session on node A
    (LISTEN/NOTIFY)."""
    node_a = await start_stack(
        gateway_settings(tmp_path / "a", database_url=migrated_db_url),
        mock_settings,
        tmp_path / "m",
    )
    node_b = Gateway(gateway_settings(tmp_path / "b", database_url=migrated_db_url))
    try:
        registry_b = await node_b.open_registry()
        await registry_b.bus.start()
        client = await login(node_a, "sec-bernard", MARTIN)
        await client.ok("SELECT INBOX")
        holder = await identity(node_a, "dr-martin")
        (delegation,) = [
            d
            for d in await registry_b.delegations_of(holder, MARTIN)
            if d.delegate_idnat == BERNARD
        ]
        started = time.monotonic()
        await registry_b.revoke(holder, MARTIN, delegation.id)
        bye = await client.line(wait=2.0)
        assert bye.startswith(b"* BYE")
        assert b"revoked" in bye
        assert time.monotonic() - started < 2.0
    finally:
        await node_b.stop()
        await node_a.gateway.stop()
        await node_a.mock.stop()


async def test_backend_starttls_injection_is_refused(stack: Stack):
    """Whatever a backend (or a man in the middle) sends after its STARTTLS OK and before
    the handshake is never taken as the TLS side's word."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LITERAL+] ready\r\n")
        tag = (await reader.readline()).split(b" ", 1)[0]
        writer.write(tag + b" OK begin TLS\r\n* OK [ALERT] injected before TLS\r\n")
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    backend = modern_settings(stack)
    backend.imap_port, backend.imap_tls = server.sockets[0].getsockname()[1], "starttls"
    async with server:
        client = await Raw.open(stack.imap_port)
        token = await stack.token("dr-martin")
        reply = await client.command("AUTHENTICATE XOAUTH2 ", xoauth2(MARTIN, token))
        assert b"NO [UNAVAILABLE]" in reply.tagged
        errors = stack.gateway.metrics.sample(
            "lpsgw_backend_errors_total", backend="modern", protocol="imap", kind="tls"
        )
        assert errors == 1
        await client.close()


async def test_a_tag_in_flight_cannot_be_reused(stack: Stack):
    """Completions are matched by tag: a second command under a busy tag is refused, so a
    change cannot hide behind another command's completion in the audit."""
    client = await login(stack, "sec-bernard", MARTIN)
    await client.ok("SELECT INBOX")
    await client.send(b"X STORE 1 +FLAGS.SILENT (\\Deleted)\r\nX NOOP\r\n")
    first, second = await client.line(), await client.line()
    assert {first[:5], second[:5]} == {b"X OK ", b"X BAD"}
    await client.ok("CLOSE")
    events = await audit(stack, MARTIN)
    actions = [(e.action, e.result) for e in events if e.actor_idnat == BERNARD]
    assert ("store", "ok") in actions
    assert ("close", "ok") in actions
    await client.close()


async def test_revocation_during_the_backend_login_still_ends_the_session(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    registry = stack.gateway.delegations
    assert registry is not None
    holder = await identity(stack, "dr-martin")
    (delegation,) = [
        d for d in await registry.delegations_of(holder, MARTIN) if d.delegate_idnat == BERNARD
    ]
    assert stack.gateway.router is not None
    modern = stack.gateway.router.backends["modern"]
    real_open = modern.open_imap

    async def slow_open(*args: Any, **kwargs: Any) -> Any:
        upstream = await real_open(*args, **kwargs)
        await registry.revoke(holder, MARTIN, delegation.id)  # while the login is running
        await asyncio.sleep(0.1)
        return upstream

    monkeypatch.setattr(modern, "open_imap", slow_open)
    client = await Raw.open(stack.imap_port)
    token = await stack.token("sec-bernard")
    await client.send(b"A1 AUTHENTICATE XOAUTH2 " + xoauth2(MARTIN, token).encode() + b"\r\n")
    lines = [await client.line(wait=3.0)]
    while not lines[-1].startswith(b"* BYE"):
        lines.append(await client.line(wait=3.0))
    assert b"revoked" in lines[-1]


async def test_login_deadline_is_total_not_per_read(stack: Stack):
    """A client dribbling a byte at a time cannot stay unauthenticated past the deadline."""
    assert stack.gateway.imap is not None
    imap = stack.gateway.imap
    imap.config = dataclasses.replace(imap.config, preauth_timeout=1.0)
    client = await Raw.open(stack.imap_port)
    started = time.monotonic()
    closed = b""
    for byte in b"a1 NOOP and more and more":
        await client.send(bytes([byte]))
        closed = await client.quiet(0.2)
        if closed:
            break
    assert closed.startswith(b"* BYE")
    assert time.monotonic() - started < 2.5


async def test_connections_beyond_the_cap_get_bye(stack: Stack):
    assert stack.gateway.imap is not None
    imap = stack.gateway.imap
    imap.config = dataclasses.replace(imap.config, max_connections=1)
    first = await Raw.open(stack.imap_port)
    assert first.greeting.startswith(b"* OK")
    second = await Raw.open(stack.imap_port)
    assert second.greeting.startswith(b"* BYE")
    await first.close()
    await second.close()
