"""Hostile PROXY protocol headers: a load balancer's address is trusted, so the header is
the gateway's first input from it, and a header from anyone else must change nothing.

127.0.0.1 is the trusted load balancer; 127.0.0.2 a client connecting directly. Each
probe ends by checking that the gateway still greets a good header: nothing it sent
wedged the listener."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from gateway.runtime.proxy_protocol import V2_SIGNATURE, v1_header, v2_header
from tests.conftest import quick_mock_settings
from tests.support.proxied import hung_up_silently, proxied_socket
from tests.support.stacks import Stack, gateway_settings, running_stack
from tests.support.waiting import until

TIMEOUT = 1.5  # seconds the load balancer has for its header, in this module
CLIENT = ("192.0.2.7", 50123)
DIRECT = "127.0.0.2"


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway for the module: no probe changes what it holds, and each checks after
    itself that the gateway still greets."""
    directory = tmp_path_factory.mktemp("proxy-probes")
    proxies = {"proxy_protocol_from": ["127.0.0.1/32"], "proxy_protocol_timeout": TIMEOUT}
    settings = gateway_settings(directory / "gateway", imap=proxies, smtp=proxies)
    async with running_stack(settings, quick_mock_settings(), directory / "mock") as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def stack(gateway: Stack) -> AsyncIterator[Stack]:
    yield gateway
    await asyncio.to_thread(still_greets, gateway)


def still_greets(stack: Stack) -> None:
    with proxied_socket(stack.imap_port, v2_header(CLIENT)) as sock:
        assert sock.makefile("rb").readline().startswith(b"* OK")
    with proxied_socket(stack.smtp_port, v1_header(CLIENT, ("127.0.0.1", 1587))) as sock:
        assert sock.makefile("rb").readline().startswith(b"220 ")


def refused(stack: Stack, service: str) -> float:
    return stack.gateway.metrics.sample(
        "lpsgw_refused_connections_total", protocol=service, reason="proxy_protocol"
    )


def hangs_up_at_once(port: int, header: bytes) -> float:
    """Send `header`, return how long the gateway took to hang up without a greeting."""
    began = time.monotonic()
    with proxied_socket(port, header) as sock:
        assert hung_up_silently(sock)
    return time.monotonic() - began


def v2_with(family_protocol: int, length: int, body: bytes = b"") -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family_protocol, length) + body


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"PROXY TCP4 192.0.2.7 " + b"9" * 200 + b"\r\n", id="v1-over-107"),
        pytest.param(v2_with(0x11, 0xFFFF), id="v2-absurd-length"),
        pytest.param(v2_with(0x11, 1025) + bytes(1025), id="v2-over-bound"),
        pytest.param(v2_with(0x41, 12, bytes(12)), id="v2-unknown-family"),
        pytest.param(v2_with(0x12, 12, bytes(12)), id="v2-datagram"),
        pytest.param(v2_with(0x11, 15, bytes(12) + b"\x05\x00\x09"), id="v2-tlv-past-end"),
        pytest.param(b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n", id="v1-bare-lf"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="tls-hello"),
        pytest.param(b"a1 CAPABILITY\r\n", id="no-header"),
        # naming no client: taken for the load balancer's own, on loopback here, it would
        # get plaintext AUTH and the exemptions from the caps
        pytest.param(b"PROXY UNKNOWN\r\n", id="v1-unknown"),
        pytest.param(b"PROXY UNKNOWN ::1 ::1 1 2\r\n", id="v1-unknown-with-addresses"),
        pytest.param(v2_with(0x01, 0), id="v2-proxy-unspec"),
        pytest.param(v2_with(0x31, 216, bytes(216)), id="v2-proxy-unix"),
        pytest.param(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", id="v1-scope-id"),
    ],
)
@pytest.mark.parametrize("service", ["imap", "smtp"])
async def test_a_broken_header_is_hung_up_on_without_waiting(
    stack: Stack, header: bytes, service: str
):
    """Refused as soon as it is known broken: an absurd length is not waited for."""
    port = stack.imap_port if service == "imap" else stack.smtp_port
    counted = refused(stack, service)
    took = await asyncio.to_thread(hangs_up_at_once, port, header)
    assert took < TIMEOUT
    await until(lambda: refused(stack, service) == counted + 1, "the refusal counted")


@pytest.mark.parametrize(
    "header",
    [v2_header(CLIENT)[:20], v2_header(CLIENT)[:11], b"PROXY TCP4 192.0.2.7 10.0.0.1"],
    ids=["v2-cut-in-addresses", "v2-cut-in-signature", "v1-cut"],
)
async def test_a_truncated_header_waits_no_longer_than_the_timeout(stack: Stack, header: bytes):
    took = await asyncio.to_thread(hangs_up_at_once, stack.imap_port, header)
    assert TIMEOUT * 0.8 < took < TIMEOUT * 4


async def test_slowloris_on_the_header_is_cut_at_the_timeout(stack: Stack):
    """A byte every 0.2 s keeps a read going, not the connection: the timeout bounds the
    whole header."""
    line = v1_header(CLIENT, ("127.0.0.1", 1143))
    loop = asyncio.get_running_loop()
    sock = proxied_socket(stack.imap_port)
    sock.setblocking(False)
    began = loop.time()
    try:
        for byte in line[:-2]:
            try:
                await loop.sock_sendall(sock, bytes([byte]))
            except (ConnectionError, BrokenPipeError):
                break
            await asyncio.sleep(0.2)  # the attacker's pace, not a wait for the server
        else:
            raise AssertionError("the whole header trickled in without a hang-up")
    finally:
        sock.close()
    assert loop.time() - began < TIMEOUT * 4


async def test_byte_by_byte_header_is_read(stack: Stack):
    header = v2_header(CLIENT) + b"a1 NOOP\r\n"

    def run() -> list[bytes]:
        with proxied_socket(stack.imap_port) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for index in range(len(header)):
                sock.sendall(header[index : index + 1])
            stream = sock.makefile("rb")
            return [stream.readline(), stream.readline()]

    greeting, answer = await asyncio.to_thread(run)
    assert greeting.startswith(b"* OK")
    assert answer.startswith(b"a1 OK")


async def test_header_and_pipelined_command_in_one_packet_keep_the_command(stack: Stack):
    """What follows the header in the same segment is the client's: IMAP's parser and
    SMTP's reader get it after the greeting."""

    def run() -> tuple[list[bytes], list[bytes]]:
        with proxied_socket(stack.imap_port, v2_header(CLIENT) + b"a1 CAPABILITY\r\n") as sock:
            stream = sock.makefile("rb")
            imap = [stream.readline() for _ in range(3)]
        smtp_header = v1_header(CLIENT, ("127.0.0.1", 1587))
        with proxied_socket(stack.smtp_port, smtp_header + b"NOOP\r\n") as sock:
            stream = sock.makefile("rb")
            smtp = [stream.readline() for _ in range(2)]
        return imap, smtp

    imap, smtp = await asyncio.to_thread(run)
    assert imap[0].startswith(b"* OK")
    assert imap[1].startswith(b"* CAPABILITY")
    assert imap[2].startswith(b"a1 OK")
    assert smtp[0].startswith(b"220 ")
    assert smtp[1].startswith(b"250 ")


async def test_a_header_from_an_untrusted_peer_is_not_honoured(stack: Stack):
    """127.0.0.2 is not the load balancer: it is greeted at once, and its header is a bad
    command to the protocol."""

    def run() -> tuple[bytes, bytes, bytes]:
        with proxied_socket(stack.imap_port, source=DIRECT) as sock:
            stream = sock.makefile("rb")
            greeting = stream.readline()
            sock.sendall(v1_header(CLIENT, ("127.0.0.1", 1143)))
            imap_answer = stream.readline()
        with proxied_socket(stack.smtp_port, source=DIRECT) as sock:
            stream = sock.makefile("rb")
            stream.readline()
            sock.sendall(v1_header(CLIENT, ("127.0.0.1", 1587)))
            smtp_answer = stream.readline()
        return greeting, imap_answer, smtp_answer

    greeting, imap_answer, smtp_answer = await asyncio.to_thread(run)
    assert greeting.startswith(b"* OK")
    assert b" BAD " in imap_answer
    assert smtp_answer.startswith(b"500 ")


async def test_a_header_from_an_untrusted_peer_counts_under_its_own_address(stack: Stack):
    """Its connection holds a slot of 127.0.0.2's, none of the address its header names."""
    slots = stack.gateway.limits.imap_preauth

    named, direct = ("192.0.2.70", 1), "127.0.0.70"  # this test's own

    def run() -> socket.socket:
        sock = proxied_socket(stack.imap_port, v2_header(named), source=direct)
        sock.makefile("rb").readline()
        return sock

    sock = await asyncio.to_thread(run)
    try:
        assert slots.held(direct) == 1
        assert slots.held(named[0]) == 0
    finally:
        sock.close()


async def test_a_trusted_header_counts_under_the_client(stack: Stack):
    slots = stack.gateway.limits.imap_preauth

    named = ("192.0.2.71", 1)  # this test's own

    def run() -> socket.socket:
        sock = proxied_socket(stack.imap_port, v2_header(named))
        sock.makefile("rb").readline()
        return sock

    sock = await asyncio.to_thread(run)
    try:
        assert slots.held(named[0]) == 1
        assert slots.held("127.0.0.1") == 0
    finally:
        sock.close()


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(v2_header(None), id="v2-local-unspec"),
        pytest.param(V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x11, 0), id="v2-local-inet-empty"),
        pytest.param(
            V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x11, 4) + bytes(4), id="v2-local-inet-short"
        ),
    ],
)
async def test_a_local_health_check_is_served_whatever_its_family(stack: Stack, header: bytes):
    def greeting() -> bytes:
        with proxied_socket(stack.imap_port, header) as sock:
            return sock.makefile("rb").readline()

    assert (await asyncio.to_thread(greeting)).startswith(b"* OK")
