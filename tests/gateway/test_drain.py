"""A gateway node draining (`Gateway.drain`, what SIGTERM runs) in front of a backend that
holds a command: the relayed session gets that command's tagged reply first, then `* BYE
[UNAVAILABLE]`; a session at rest hears the BYE at once, an SMTP session between messages
its 421 4.3.2; no new connection is taken and /readyz says 503 meanwhile."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from gateway.imap.transport import shutdown_bye
from gateway.runtime.net import Peer
from tests.gateway.test_imap_proxy import modern_settings
from tests.support.imap import login
from tests.support.sasl import xoauth2_b64
from tests.support.smtp_raw import RawSmtp
from tests.support.stacks import Stack

MARTIN = "claire.martin@medecin.mssante.fr"
BYE = shutdown_bye().rstrip(b"\r\n")


class HeldBackend:
    """An IMAP server that lets the gateway log in, then answers the first command only
    once `release` is set."""

    def __init__(self) -> None:
        self.received = asyncio.Event()
        self.release = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] held\r\n")
        tag = (await reader.readline()).split(b" ", 1)[0]
        writer.write(tag + b" OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] in\r\n")
        command = await reader.readline()
        self.received.set()
        await self.release.wait()
        writer.write(command.split(b" ", 1)[0] + b" OK NOOP completed\r\n")
        await reader.read()


async def test_drain_waits_for_the_relayed_reply_then_says_bye(stack: Stack):
    held = HeldBackend()
    server = await asyncio.start_server(held.serve, "127.0.0.1", 0)
    backend = modern_settings(stack)
    backend.imap_port, backend.imap_tls = server.sockets[0].getsockname()[1], "none"
    stack.gateway.settings.ops.shutdown_grace = 60
    async with server:
        busy = await login(stack, "dr-martin", MARTIN)
        resting = await login(stack, "dr-martin", MARTIN)
        sender = await RawSmtp.open(stack.smtp_port)
        await sender.command(b"EHLO lps.example", b"250")
        token = await stack.token("dr-martin")
        await sender.command(b"AUTH XOAUTH2 " + xoauth2_b64(MARTIN, token), b"235")
        await busy.send(b"t1 NOOP\r\n")
        await held.received.wait()

        draining = asyncio.create_task(stack.gateway.drain())
        assert await resting.line(wait=30) == BYE
        assert await sender.reply() == b"421 4.3.2 Service shutting down\r\n"
        assert await sender.reply() == b"", "and it hangs up"
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", stack.imap_port)
        async with httpx.AsyncClient(timeout=10) as http:
            ready = await http.get(f"{stack.gateway.http_url}/readyz")
        assert ready.status_code == 503
        assert not draining.done(), "the command in flight is waited for"

        held.release.set()
        assert await busy.line(wait=30) == b"t1 OK NOOP completed"
        assert await busy.line(wait=30) == BYE
        await asyncio.wait_for(draining, 30)


async def test_shutdown_grace_bounds_the_whole_stop_and_the_audit_is_written(stack: Stack):
    """A command the backend never answers and an SMTP client silent after MAIL FROM:
    draining then stopping the node (what SIGTERM runs) takes `shutdown_grace`, not that
    plus each front's own grace one after the other (an orchestrator's kill would come
    first); the audit of the sessions cut is written before the node is gone."""
    held = HeldBackend()
    server = await asyncio.start_server(held.serve, "127.0.0.1", 0)
    backend = modern_settings(stack)
    backend.imap_port, backend.imap_tls = server.sockets[0].getsockname()[1], "none"
    grace = stack.gateway.settings.ops.shutdown_grace = 1
    registry = stack.gateway.delegations
    assert registry is not None
    async with server:
        busy = await login(stack, "dr-martin", MARTIN)
        sender = await RawSmtp.open(stack.smtp_port)
        await sender.command(b"EHLO lps.example", b"250")
        token = await stack.token("dr-martin")
        await sender.command(b"AUTH XOAUTH2 " + xoauth2_b64(MARTIN, token), b"235")
        await sender.command(f"MAIL FROM:<{MARTIN}>".encode(), b"250")
        await busy.send(b"t1 NOOP\r\n")
        await held.received.wait()

        loop = asyncio.get_running_loop()
        began = loop.time()
        await stack.gateway.drain()
        await stack.gateway.stop()
        took = loop.time() - began
        assert took < grace + 2, f"stopped after {took:.1f} s"
        assert await sender.reply() == b"421 4.3.2 Service shutting down\r\n"
        assert await busy.line(wait=30) == BYE
        ends = [e for e in await registry.audit_for(MARTIN) if e.action == "session-end"]
        assert [e.detail for e in ends] == ["server shutting down"], "the session cut"


async def test_an_smtp_connection_accepted_as_the_listener_closes_hears_421(stack: Stack):
    """Accepted (its PROXY header read) just before the node began to stop, handed to
    the SMTP server after: 421 4.3.2 at once, not a greeting."""
    smtp = stack.gateway.smtp
    assert smtp is not None
    await smtp.stop(grace=1)
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        accepted, peer = listener.accept()
    accepted.setblocking(False)
    await smtp._connect(accepted, Peer.of(peer), Peer.of(accepted.getsockname()))
    async with asyncio.timeout(30):
        assert await reader.readline() == b"421 4.3.2 Service shutting down\r\n"
        assert await reader.read() == b"", "and it hangs up"
    writer.close()
