"""Naming the LPS to a backend (`gateway.backends.origin`): the IMAP ID before login and
Postfix's XCLIENT, here against a small SMTP server on a real socket that records what it
was told (Postfix semantics: XCLIENT answered 220, EHLO said again)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from pydantic import SecretStr

from gateway.backends.imap_smtp.submission import SmtpSubmission
from gateway.backends.origin import imap_id, xclient_arguments
from gateway.runtime.login import ConnectionInfo
from gateway.settings import BackendSettings

LPS = ConnectionInfo(
    peer="192.0.2.7",
    port=50123,
    local_address="10.0.0.1",
    local_port=1143,
    secure=True,
    loopback=False,
    tls_available=False,
    session_id="a1b2c3d4e5f6",
)


def test_imap_id_names_the_client_as_dovecots_proxy_does():
    assert imap_id(LPS) == (
        b'ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "50123" '
        b'"x-connected-ip" "10.0.0.1" "x-connected-port" "1143" '
        b'"x-session-ext-id" "a1b2c3d4e5f6")'
    )


def test_imap_id_takes_only_what_reads():
    mapped = ConnectionInfo("::ffff:192.0.2.7", True, False, False, session_id='x" "y', port=1)
    assert imap_id(mapped) == b'ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "1")'
    assert imap_id(ConnectionInfo("?", True, False, False)) is None


def test_xclient_arguments_follow_what_the_server_offers():
    assert xclient_arguments(LPS, ["NAME", "ADDR", "PORT"]) == ["ADDR=192.0.2.7", "PORT=50123"]
    six = ConnectionInfo("2001:db8::7", True, False, False, port=2)
    assert xclient_arguments(six, ["addr"]) == ["ADDR=IPV6:2001:db8::7"]
    assert xclient_arguments(LPS, ["HELO"]) is None


@dataclass
class FakeSmtp:
    """Greets, offers XCLIENT or not, takes any AUTH; records every line."""

    offers_xclient: bool
    lines: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake ESMTP\r\n")
        while line := await reader.readline():
            self.lines.append(line.rstrip(b"\r\n"))
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"EHLO":
                offer = b"250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN\r\n"
                writer.write(b"250-fake\r\n" + (offer if self.offers_xclient else b""))
                writer.write(b"250 AUTH PLAIN\r\n")
            elif verb == b"XCLIENT":
                writer.write(b"220 fake ESMTP\r\n")
            elif verb == b"AUTH":
                writer.write(b"235 2.7.0 ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


@pytest.fixture(params=[True, False], ids=["offers-xclient", "no-xclient"])
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FakeSmtp, int]]:
    server = FakeSmtp(request.param)
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    async with listening:
        yield server, listening.sockets[0].getsockname()[1]


async def test_submission_says_xclient_when_offered_then_ehlo_again(fake: tuple[FakeSmtp, int]):
    server, port = fake
    backend = BackendSettings(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_tls="none",
        login="master",
        master_user="gw",
        master_password=SecretStr("pw"),
    )
    submission = SmtpSubmission("fake", backend, "bal@example.org", None, client=LPS)
    await submission.open()
    await submission.close()
    verbs = [line.split(b" ", 1)[0].upper() for line in server.lines]
    if server.offers_xclient:
        assert b"XCLIENT ADDR=192.0.2.7 PORT=50123" in server.lines
        assert verbs[:4] == [b"EHLO", b"XCLIENT", b"EHLO", b"AUTH"]
    else:
        assert verbs[:2] == [b"EHLO", b"AUTH"]
        assert b"XCLIENT" not in verbs
