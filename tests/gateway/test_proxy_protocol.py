"""The gateway behind a load balancer: the PROXY protocol header (v1 and v2) on the IMAP,
IMAPS and SMTP listeners, from trusted peers only, and the client it names is the one the
audit, the per-address caps and the loopback rule see.

The load balancer is 127.0.0.1 (trusted); 127.0.0.2 plays a client connecting directly.
The header names 192.0.2.7 (TEST-NET-1), an address no socket here could have."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import smtplib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.runtime.proxy_protocol import v1_header, v2_header
from tests.conftest import quick_mock_settings
from tests.support.haproxy import Route, running_haproxy
from tests.support.proxied import (
    ProxiedIMAP4,
    ProxiedIMAP4_SSL,
    ProxiedSMTP,
    hung_up_silently,
    proxied_socket,
)
from tests.support.sasl import xoauth2, xoauth2_b64
from tests.support.stacks import Stack, gateway_settings, running_stack

MARTIN = "claire.martin@medecin.mssante.fr"
CLIENT = ("192.0.2.7", 50123)
DIRECT = "127.0.0.2"  # a client not behind the load balancer


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway for the module: each test looks at the logins it made (`Logins`), and
    the cap test uses addresses of its own."""
    directory = tmp_path_factory.mktemp("proxy-protocol")
    settings = gateway_settings(
        directory / "gateway",
        imap={
            "proxy_protocol_from": ["127.0.0.1/32"],
            "proxy_protocol_timeout": 1.0,
            "implicit_tls_port": 0,
            "max_preauth_per_address": 2,
        },
        smtp={"proxy_protocol_from": ["127.0.0.1"], "proxy_protocol_timeout": 1.0},
    )
    async with running_stack(settings, quick_mock_settings(), directory / "mock") as running:
        yield running


def tls(stack: Stack) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=stack.gateway.settings.data_dir / "dev-cert.pem")
    context.check_hostname = False
    return context


@dataclass
class Logins:
    """The logins to MARTIN's BAL audited since the test began, oldest first."""

    stack: Stack
    after: int = 0

    async def __call__(self) -> list[Any]:
        audit, delegations = self.stack.gateway.audit, self.stack.gateway.delegations
        assert audit is not None
        assert delegations is not None
        await audit.flush()
        events = reversed(await delegations.audit_for(MARTIN))
        return [e for e in events if e.action == "login" and e.id > self.after]


@pytest_asyncio.fixture(loop_scope="module")
async def logins(stack: Stack) -> Logins:
    before = await Logins(stack)()
    return Logins(stack, max((e.id for e in before), default=0))


def imap_login(client: imaplib.IMAP4, token: str, context: ssl.SSLContext | None) -> str:
    if context is not None:
        client.starttls(context)
    client.authenticate("XOAUTH2", lambda _: base64.b64decode(xoauth2(MARTIN, token)))
    status, _ = client.select("INBOX", readonly=True)
    client.logout()
    return status


@pytest.mark.parametrize("version", [1, 2])
async def test_imap_audit_sees_the_client_the_header_names(
    stack: Stack, version: int, logins: Logins
):
    token = await stack.token()
    header = v1_header(CLIENT, ("127.0.0.1", 1143)) if version == 1 else v2_header(CLIENT)

    def run() -> str:
        # 192.0.2.7 is not on loopback: the gateway asks for TLS before a token travels
        client = ProxiedIMAP4(stack.imap_port, header)
        assert "STARTTLS" in client.capabilities
        assert "LOGINDISABLED" in client.capabilities
        return imap_login(client, token, tls(stack))

    assert await asyncio.to_thread(run) == "OK"
    assert [e.remote for e in await logins()] == ["192.0.2.7"]


@pytest.mark.parametrize(
    ("source", "header", "seen"),
    [("127.0.0.1", v2_header(CLIENT), "192.0.2.7"), (DIRECT, b"", DIRECT)],
    ids=["through-the-load-balancer", "direct"],
)
async def test_imaps_reads_the_header_before_the_tls_handshake(
    stack: Stack, logins: Logins, source: str, header: bytes, seen: str
):
    assert stack.gateway.imaps is not None
    token = await stack.token()

    def run() -> str:
        port = stack.gateway.imaps.port
        return imap_login(ProxiedIMAP4_SSL(port, header, tls(stack), source=source), token, None)

    assert await asyncio.to_thread(run) == "OK"
    assert [e.remote for e in await logins()] == [seen]


async def test_a_header_naming_a_loopback_client_allows_plaintext_login(
    stack: Stack, logins: Logins
):
    """The loopback rule follows the header both ways: 127.0.0.2 announced by the load
    balancer may log in without TLS, as a direct loopback client may."""
    token = await stack.token()

    def run() -> str:
        client = ProxiedIMAP4(stack.imap_port, v2_header(("127.0.0.2", 4242)))
        assert "LOGINDISABLED" not in client.capabilities
        return imap_login(client, token, None)

    assert await asyncio.to_thread(run) == "OK"
    assert [e.remote for e in await logins()] == ["127.0.0.2"]


async def test_a_direct_client_sends_no_header_and_its_proxy_line_is_a_bad_command(
    stack: Stack, logins: Logins
):
    token = await stack.token()
    forged = v1_header(CLIENT, ("127.0.0.1", stack.imap_port))

    def run() -> tuple[bytes, str]:
        with proxied_socket(stack.imap_port, source=DIRECT) as sock:
            stream = sock.makefile("rb")
            greeting = stream.readline()
            sock.sendall(forged)
            answer = stream.readline()
        assert greeting.startswith(b"* OK"), greeting
        client = ProxiedIMAP4(stack.imap_port, b"", source=DIRECT)
        return answer, imap_login(client, token, None)

    answer, status = await asyncio.to_thread(run)
    assert answer.split(b" ")[1] == b"BAD", answer  # tagged "PROXY" or untagged
    assert status == "OK"
    assert [e.remote for e in await logins()] == [DIRECT]


async def test_a_health_check_local_header_leaves_the_proxy_address(stack: Stack, logins: Logins):
    token = await stack.token()

    def run() -> str:
        return imap_login(ProxiedIMAP4(stack.imap_port, v2_header(None)), token, None)

    assert await asyncio.to_thread(run) == "OK"
    assert [e.remote for e in await logins()] == ["127.0.0.1"]


@pytest.mark.parametrize(
    "header", [b"", b"HELLO\r\n", b"PROXY TCP4 192.0.2.7\r\n"], ids=["none", "garbage", "short"]
)
async def test_a_trusted_peer_without_a_good_header_gets_no_greeting(stack: Stack, header: bytes):
    def run() -> bool:
        with proxied_socket(stack.imap_port, header) as sock:
            return hung_up_silently(sock)

    assert await asyncio.to_thread(run)


async def test_the_per_address_cap_counts_the_header_client(stack: Stack):
    """Two connections not logged in per address: a third from 192.0.2.80 is refused while
    192.0.2.81, through the same load balancer, is served."""

    capped, free = ("192.0.2.80", 1), ("192.0.2.81", 2)  # this test's own

    def greeting(client: tuple[str, int]) -> tuple[Any, bytes]:
        sock = proxied_socket(stack.imap_port, v2_header(client))
        return sock, sock.makefile("rb").readline()

    def run() -> list[bytes]:
        held = [greeting(capped), greeting(capped)]
        third, other = greeting(capped), greeting(free)
        for sock, _ in [*held, third, other]:
            sock.close()
        return [line for _, line in [*held, third, other]]

    first, second, third, fourth = await asyncio.to_thread(run)
    assert first.startswith(b"* OK")
    assert second.startswith(b"* OK")
    assert b"too many connections from your address" in third
    assert fourth.startswith(b"* OK")


@pytest.mark.parametrize("version", [1, 2])
async def test_smtp_audit_sees_the_client_the_header_names(
    stack: Stack, version: int, logins: Logins
):
    token = await stack.token()
    header = v1_header(CLIENT, ("127.0.0.1", 1587)) if version == 1 else v2_header(CLIENT)

    def run() -> tuple[bool, int]:
        with ProxiedSMTP(stack.smtp_port, header) as smtp:
            smtp.ehlo("lps.example")
            plaintext_auth = smtp.has_extn("auth")
            smtp.starttls(context=tls(stack))
            smtp.ehlo("lps.example")
            code, _ = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(MARTIN, token).decode())
            return plaintext_auth, code

    plaintext_auth, code = await asyncio.to_thread(run)
    assert not plaintext_auth  # 192.0.2.7 is not on loopback
    assert code == 235
    events = [e for e in await logins() if e.interface == "smtp"]
    assert [e.remote for e in events] == ["192.0.2.7"]


async def test_smtp_direct_client_is_served_without_header(stack: Stack, logins: Logins):
    token = await stack.token()

    def run() -> int:
        with ProxiedSMTP(stack.smtp_port, b"", source=DIRECT) as smtp:
            smtp.ehlo("lps.example")
            code, _ = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(MARTIN, token).decode())
            return code

    assert await asyncio.to_thread(run) == 235
    assert [e.remote for e in await logins()] == [DIRECT]


async def test_smtp_trusted_peer_without_header_gets_no_greeting(stack: Stack):
    def run() -> bool:
        with proxied_socket(stack.smtp_port, b"EHLO lps.example\r\n") as sock:
            return hung_up_silently(sock)

    assert await asyncio.to_thread(run)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        await asyncio.to_thread(ProxiedSMTP, stack.smtp_port, b"")


async def test_behind_a_real_haproxy_the_audit_sees_the_client(
    stack: Stack, tmp_path: Path, logins: Logins
):
    """Debian's HAProxy, send-proxy-v2 to IMAP and send-proxy (v1) to SMTP; the client
    connects to it from 127.0.0.2, HAProxy to the gateway from 127.0.0.1."""
    token = await stack.token()
    routes = [Route(stack.imap_port, "send-proxy-v2"), Route(stack.smtp_port, "send-proxy")]
    async with running_haproxy(tmp_path / "haproxy", routes) as (imap, smtp):

        def run() -> tuple[str, int]:
            status = imap_login(ProxiedIMAP4(imap.port, b"", source=DIRECT), token, None)
            with ProxiedSMTP(smtp.port, b"", source=DIRECT) as client:
                client.ehlo("lps.example")
                code, _ = client.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(MARTIN, token).decode())
            return status, code

        assert await asyncio.to_thread(run) == ("OK", 235)
    events = await logins()
    assert sorted((e.interface, e.remote) for e in events) == [("imap", DIRECT), ("smtp", DIRECT)]
