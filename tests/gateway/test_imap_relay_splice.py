"""Big literals between plaintext sockets go by splice(2): the client still gets the
backend's bytes in order, a slow client holds the backend back (the pipe bounded), a
client that never reads is cut after the write timeout, a kick mid-literal still ends
the session with its BYE, and a TLS client keeps the buffered path."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import ssl
from pathlib import Path

import pytest

from gateway.fronts.imap import relay as relay_module
from gateway.fronts.imap import splice as splice_module
from gateway.fronts.imap.splice import PIPE_SIZE, SPLICE_MIN, Splice, SplicePipe
from gateway.imap.codes import Code
from gateway.settings import Settings
from tests.gateway.test_imap_proxy import MARTIN, modern_settings, relays
from tests.gateway.test_imap_relay_bulk import BIG, RESPONSE, pieces, scripted_backend
from tests.imap_raw import Raw
from tests.support.imap import login
from tests.support.sasl import xoauth2
from tests.support.stacks import Stack, gateway_settings
from tests.support.waiting import until

pytestmark = pytest.mark.skipif(not splice_module.AVAILABLE, reason="splice(2) is Linux's")

WRITE = 2.0  # seconds a reply may wait for a client that does not read
BOUND = 60.0


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return gateway_settings(tmp_path / "gateway", imap={"write_timeout": WRITE})


@pytest.fixture
def splices(monkeypatch: pytest.MonkeyPatch) -> list[Splice]:
    """Every transfer the relay makes by splice, recorded."""
    made: list[Splice] = []

    class Recorded(Splice):
        def start(self) -> bool:
            made.append(self)
            return super().start()

    monkeypatch.setattr(relay_module, "Splice", Recorded)
    return made


def big_fetch(size: int, byte: bytes = b"m") -> list[bytes]:
    block = byte * (1024 * 1024)
    body = [block] * (size // len(block)) + [byte * (size % len(block))]
    return [b"* 1 FETCH (BODY[] {%d}\r\n" % size, *[b for b in body if b], b")\r\n"]


async def test_big_literals_go_by_splice_byte_for_byte(stack: Stack, splices: list[Splice]) -> None:
    rng = random.Random(5)
    rounds = []
    for _ in range(8):
        data = RESPONSE + BIG + RESPONSE + BIG
        cuts = [rng.randrange(1, len(data)) for _ in range(rng.randrange(1, 20))]
        rounds.append((data, pieces(data, cuts)))
    script = iter(rounds)

    def answer(tag: bytes) -> list[bytes]:
        if not tag.startswith(b"f"):
            return [tag + b" OK done\r\n"]
        _data, chunks = next(script)
        return [*chunks, tag + b" OK FETCH done\r\n"]

    async with scripted_backend(answer) as (port, _writers):
        backend = modern_settings(stack)
        backend.imap_port, backend.imap_tls = port, "none"
        client = await login(stack, "dr-martin", MARTIN)
        before = stack.gateway.metrics.sample(
            "lpsgw_relayed_bytes_total", protocol="imap", direction="to_client"
        )
        total = 0
        for number, (data, _chunks) in enumerate(rounds):
            tag = b"f%d" % number
            await client.send(tag + b" UID FETCH 1:* BODY.PEEK[]\r\n")
            expected = data + tag + b" OK FETCH done\r\n"
            total += len(expected)
            received = await client.reader.readexactly(len(expected))
            assert received == expected, f"round {number}"
        await client.ok("NOOP")  # framing back at a boundary: the session goes on
        (relay,) = relays(stack)
        assert relay._splice_pair is not None
    spliced = sum(s.moved for s in splices)
    assert spliced > len(rounds) * len(BIG)  # most of both big literals of each round
    assert all(s.moved == s.taken for s in splices)
    after = stack.gateway.metrics.sample(
        "lpsgw_relayed_bytes_total", protocol="imap", direction="to_client"
    )
    assert after - before >= total  # spliced bytes counted (NOOP's reply too)


async def test_a_slow_client_holds_the_backend_back_through_the_pipe(
    stack: Stack, splices: list[Splice]
) -> None:
    size = 48 * 1024 * 1024

    def answer(tag: bytes) -> list[bytes]:
        if not tag.startswith(b"big"):
            return [tag + b" OK done\r\n"]
        return [*big_fetch(size), tag + b" OK done\r\n"]

    async with scripted_backend(answer) as (port, writers):
        backend = modern_settings(stack)
        backend.imap_port, backend.imap_tls = port, "none"
        client = await login(stack, "dr-martin", MARTIN)
        await client.send(b"big FETCH 1 BODY[]\r\n")
        (backend_writer,) = writers
        await until(
            lambda: (
                bool(splices)
                and splices[-1].stalled_since is not None
                and backend_writer.transport.get_write_buffer_size() > 0
            ),
            "the pipe waiting for the client, the backend held back",
        )
        assert stack.gateway.imap is not None
        (unsent,) = [unsent for _peer, unsent in stack.gateway.imap.connections()]
        assert unsent == 0  # nothing in asyncio's buffers: the pipe holds it
        assert 0 < splices[-1].held <= PIPE_SIZE
        head = await client.reader.readuntil(b"}\r\n")
        assert head == b"* 1 FETCH (BODY[] {%d}\r\n" % size
        left = size
        while left:  # the client catches up, slowly: the relay goes on to the end
            chunk = await client.reader.read(min(left, 256 * 1024))
            assert chunk == b"m" * len(chunk)
            left -= len(chunk)
        assert await client.reader.readexactly(3) == b")\r\n"
        assert (await client.reader.readline()) == b"big OK done\r\n"
        await client.ok("NOOP")
    assert sum(s.moved for s in splices) > size - 2 * PIPE_SIZE


@pytest.mark.parametrize("spliced", [True, False])
async def test_a_client_that_never_reads_a_big_literal_is_cut(
    stack: Stack, splices: list[Splice], monkeypatch: pytest.MonkeyPatch, spliced: bool
) -> None:
    if not spliced:
        monkeypatch.setattr(relay_module, "SPLICE_AVAILABLE", False)
    size = 256 * 1024 * 1024

    def answer(tag: bytes) -> list[bytes]:
        if not tag.startswith(b"big"):
            return [tag + b" OK done\r\n"]
        return [*big_fetch(size), tag + b" OK done\r\n"]

    async with scripted_backend(answer) as (port, _writers):
        backend = modern_settings(stack)
        backend.imap_port, backend.imap_tls = port, "none"
        client = await login(stack, "dr-martin", MARTIN)
        transport = client.writer.transport
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # never reads again
        await client.send(b"big FETCH 1 BODY[]\r\n")
        (relay,) = relays(stack)
        await until(
            lambda: (
                (bool(splices) and splices[-1].stalled_since is not None) or relay._lagging.done()
            ),
            "the relay waiting for the client",
        )
        stalled = asyncio.get_running_loop().time()
        imap = stack.gateway.imap
        assert imap is not None
        await until(lambda: imap.open_sessions == 0, "the session cut", bound=BOUND)
        assert asyncio.get_running_loop().time() - stalled < WRITE + 1.0
        assert bool(splices) is spliced
        assert all(s.moved < size for s in splices)
        client.writer.close()


async def test_a_kick_mid_splice_ends_the_session_with_its_bye(
    stack: Stack, splices: list[Splice]
) -> None:
    size = 64 * 1024 * 1024

    def answer(tag: bytes) -> list[bytes]:
        if not tag.startswith(b"big"):
            return [tag + b" OK done\r\n"]
        return [*big_fetch(size), tag + b" OK done\r\n"]

    async with scripted_backend(answer) as (port, _writers):
        backend = modern_settings(stack)
        backend.imap_port, backend.imap_tls = port, "none"
        client = await login(stack, "dr-martin", MARTIN)
        await client.send(b"big FETCH 1 BODY[]\r\n")
        await until(lambda: bool(splices) and splices[-1].stalled_since is not None, "stalled")
        (relay,) = relays(stack)
        relay.kick("delegation revoked", Code.UNAVAILABLE)
        received = bytearray()
        async with asyncio.timeout(BOUND):
            while chunk := await client.reader.read(1 << 20):
                received += chunk
        assert received.startswith(b"* 1 FETCH (BODY[] {%d}\r\n" % size)
        assert received.endswith(b"* BYE [UNAVAILABLE] delegation revoked\r\n")
        body = received[received.index(b"}\r\n") + 3 : received.rindex(b"* BYE")]
        assert 0 < len(body) < size
        assert body == b"m" * len(body)  # cut, in order


async def test_a_backend_dying_mid_splice_ends_the_session(
    stack: Stack, splices: list[Splice]
) -> None:
    sent = 3 * 1024 * 1024

    def answer(tag: bytes) -> list[bytes]:
        if not tag.startswith(b"big"):
            return [tag + b" OK done\r\n"]
        return [*big_fetch(64 * 1024 * 1024)[:1], b"d" * sent]

    async with scripted_backend(answer) as (port, writers):
        backend = modern_settings(stack)
        backend.imap_port, backend.imap_tls = port, "none"
        client = await login(stack, "dr-martin", MARTIN)
        await client.send(b"big FETCH 1 BODY[]\r\n")
        head = await client.reader.readuntil(b"}\r\n")
        await until(lambda: bool(splices), "splicing")
        writers[0].close()  # mid-literal, all it sent still to be relayed
        body = await client.reader.readexactly(sent)
        assert body == b"d" * sent
        bye = await client.line()
        assert bye == b"* BYE connection to the mailbox server lost"
        assert await client.until_closed() == b""
    assert head.startswith(b"* 1 FETCH")
    assert splices
    assert splices[-1].source_ended


async def test_a_refused_splice_falls_back_to_the_buffered_path(
    stack: Stack, splices: list[Splice], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> int:
        raise OSError(errno.EINVAL, "splice refused")

    monkeypatch.setattr(os, "splice", refuse)
    data = RESPONSE + BIG

    def answer(tag: bytes) -> list[bytes]:
        return [data, tag + b" OK done\r\n"] if tag.startswith(b"f") else [tag + b" OK done\r\n"]

    async with scripted_backend(answer) as (port, _writers):
        backend = modern_settings(stack)
        backend.imap_port, backend.imap_tls = port, "none"
        client = await login(stack, "dr-martin", MARTIN)
        for tag in (b"f1", b"f2"):
            await client.send(tag + b" FETCH 1:* BODY[]\r\n")
            expected = data + tag + b" OK done\r\n"
            assert await client.reader.readexactly(len(expected)) == expected
        (relay,) = relays(stack)
        assert relay._splice_pair is None  # refused once: not tried again
    assert len(splices) == 1
    assert splices[0].taken == 0


async def test_a_tls_client_keeps_the_buffered_path(stack: Stack, splices: list[Splice]) -> None:
    cert = stack.gateway.settings.data_dir / "dev-cert.pem"
    context = ssl.create_default_context(cafile=str(cert))
    data = RESPONSE + BIG + BIG

    def answer(tag: bytes) -> list[bytes]:
        return [data, tag + b" OK done\r\n"] if tag.startswith(b"f") else [tag + b" OK done\r\n"]

    async with scripted_backend(answer) as (port, _writers):
        backend = modern_settings(stack)
        backend.imap_port, backend.imap_tls = port, "none"
        client = await Raw.open(stack.imap_port)
        await client.ok("STARTTLS")
        await client.writer.start_tls(context, server_hostname="127.0.0.1")
        token = await stack.token("dr-martin")
        await client.ok("AUTHENTICATE XOAUTH2 ", xoauth2(MARTIN, token))
        await client.send(b"f1 FETCH 1:* BODY[]\r\n")
        expected = data + b"f1 OK done\r\n"
        assert await client.reader.readexactly(len(expected)) == expected
        (relay,) = relays(stack)
        assert relay._splice_pair is None
    assert splices == []


async def test_a_tls_backend_keeps_the_buffered_path(stack: Stack) -> None:
    client = await login(stack, "dr-martin", MARTIN)  # the mock's platform, over STARTTLS
    await client.ok("SELECT INBOX")
    (relay,) = relays(stack)
    assert relay._pump is not None
    assert relay._pump.plain_socket is None
    assert relay._splice_pair is None


# -- the transfer alone, on socket pairs ---------------------------------------------------


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def test_a_transfer_moves_exactly_its_size_and_stops() -> None:
    loop = asyncio.get_running_loop()
    backend, source = pair()
    target, client = pair()
    size = 5 * SPLICE_MIN + 3
    payload = random.Random(1).randbytes(size) + b"AFTERMORE"
    lefts: list[int] = []
    try:
        writing = asyncio.ensure_future(loop.sock_sendall(backend, payload))
        pipe = SplicePipe(source, target)
        assert pipe.open()
        splice = Splice(pipe, size, lefts.append, BOUND)
        assert splice.start()
        received = bytearray()
        while len(received) < size:  # a slow reader: small reads, the pipe waits meanwhile
            received += await loop.sock_recv(client, 4096)
        await splice.done
        splice.close()
        assert splice.held == 0
        again = Splice(pipe, 5, lefts.append, BOUND)  # the next literal, the same pipe
        assert again.start()
        await again.done
        again.close()
        pipe.close()
        assert await loop.sock_recv(client, 100) == b"AFTER"
        await writing
        assert bytes(received) == payload[:size]
        assert splice.taken == splice.moved == size
        assert lefts[-1] == 0
        assert again.moved == 5
        assert source.recv(100) == b"MORE"  # not a byte past the literals taken
    finally:
        for sock in (backend, source, target, client):
            sock.close()


async def test_a_transfer_whose_target_fails_says_so() -> None:
    backend, source = pair()
    target, client = pair()
    try:
        backend.send(b"x" * SPLICE_MIN)
        client.close()
        pipe = SplicePipe(source, target)
        assert pipe.open()
        splice = Splice(pipe, 10 * SPLICE_MIN, lambda _left: None, BOUND)
        assert splice.start()
        await splice.done
        splice.close()
        pipe.close()
        assert splice.target_error is not None
        assert splice.moved == 0
    finally:
        for sock in (backend, source, target):
            sock.close()
