"""The relay's bulk path against a scripted backend on real sockets: what the client
receives is byte for byte what the backend sent, however the backend's writes are cut;
a client that stops reading holds the backend back instead of filling the gateway."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import itertools
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace

from gateway.fronts.imap.pump import BULK_STEP, PUMP_READ, REST_READ, BackendPump
from gateway.fronts.imap.relay import CLIENT_HIGH_WATER
from gateway.imap.framing import MAX_LITERAL
from tests.gateway.test_imap_proxy import MARTIN, modern_settings, relays
from tests.support.imap import login
from tests.support.stacks import Stack
from tests.support.waiting import until

# literals holding what looks like framing, nested ones (ENVELOPE, BODYSTRUCTURE), literal8
RESPONSE = (
    b"* 1 FETCH (UID 1 BODY[] {28}\r\n* 9 FETCH {99}\r\nf1 OK fake\r\n)\r\n"
    b'* 2 FETCH (ENVELOPE ({5}\r\nd\r\nte "s" NIL) BODYSTRUCTURE ("text" "plain" '
    b'("name" {6}\r\na{3}\r\n) NIL NIL "7bit" 5 1))\r\n'
    b"* 3 FETCH (BINARY[1] ~{4}\r\n\x00\r\n\x01)\r\n"
)
BIG = (
    b"* 4 FETCH (BODY[] {%d}\r\n" % (3 * PUMP_READ + 7)
    + bytes(range(256)) * (3 * PUMP_READ // 256)
    + b"x\r\nyz{1}\r\n"
    + b")\r\n"
)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@asynccontextmanager
async def scripted_backend(
    answer: Callable[[bytes], list[bytes]],
) -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """An IMAP server that lets the gateway log in, then answers each command with the
    writes `answer(tag)` gives, each flushed on its own (TCP_NODELAY, drained)."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] scripted\r\n")
        line = await reader.readline()
        writer.write(line.split(b" ", 1)[0] + b" OK [CAPABILITY IMAP4rev1 LITERAL+] in\r\n")
        while line := await reader.readline():
            for chunk in answer(line.split(b" ", 1)[0]):
                writer.write(chunk)
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    backend_port = server.sockets[0].getsockname()[1]
    async with server:
        yield backend_port, writers


async def test_client_gets_the_backends_bytes_for_any_cutting(stack: Stack) -> None:
    rounds: list[tuple[bytes, list[bytes]]] = []
    rng = random.Random(17)
    for at in range(1, len(RESPONSE)):  # one cut, at every offset
        rounds.append((RESPONSE, pieces(RESPONSE, [at])))
    for _ in range(30):  # many cuts, small and big responses
        data = RESPONSE + BIG + RESPONSE
        cuts = [rng.randrange(1, len(data)) for _ in range(rng.randrange(1, 40))]
        cuts += [rng.randrange(1, 80) for _ in range(5)]  # the first lines cut finely too
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
        for number, (data, _chunks) in enumerate(rounds):
            tag = b"f%d" % number
            await client.send(tag + b" UID FETCH 1:* (BODY.PEEK[] ENVELOPE BODYSTRUCTURE)\r\n")
            expected = data + tag + b" OK FETCH done\r\n"
            received = await client.reader.readexactly(len(expected))
            assert received == expected, f"round {number}"
        await client.ok("NOOP")  # framing back at a boundary: the session goes on


def big_fetch_answer(size: int) -> Callable[[bytes], list[bytes]]:
    """A backend's answers: to a command tagged ``big...`` one FETCH of a `size`-octet
    literal (in 1 MiB writes), to any other a plain OK."""
    block = b"m" * (1024 * 1024)

    def answer(tag: bytes) -> list[bytes]:
        if not tag.startswith(b"big"):
            return [tag + b" OK done\r\n"]
        head = b"* 1 FETCH (BODY[] {%d}\r\n" % size
        return [head, *[block] * (size // len(block)), b")\r\n", tag + b" OK done\r\n"]

    return answer


async def test_a_client_that_stops_reading_holds_the_backend_back(stack: Stack) -> None:
    size = 64 * 1024 * 1024
    async with scripted_backend(big_fetch_answer(size)) as (port, writers):
        backend = modern_settings(stack)
        backend.imap_port, backend.imap_tls = port, "none"
        client = await login(stack, "dr-martin", MARTIN)
        await client.send(b"big FETCH 1 BODY[]\r\n")
        (relay,) = relays(stack)
        (backend_writer,) = writers
        # the gateway stops reading the backend once the client is behind: the backend's
        # own buffer fills while the gateway holds at most its high-water mark and a read
        await until(
            lambda: relay._lagging.done() and backend_writer.transport.get_write_buffer_size() > 0,
            "the backend held back",
        )
        assert stack.gateway.imap is not None
        (unsent,) = [unsent for _peer, unsent in stack.gateway.imap.connections()]
        assert CLIENT_HIGH_WATER < unsent <= CLIENT_HIGH_WATER + PUMP_READ
        head = await client.reader.readuntil(b"}\r\n")
        assert head == b"* 1 FETCH (BODY[] {%d}\r\n" % size
        left = size
        while left:  # the client catches up: the relay goes on to the end
            chunk = await client.reader.read(min(left, 1 << 20))
            assert chunk == b"m" * len(chunk)
            left -= len(chunk)
        assert await client.reader.readexactly(3) == b")\r\n"
        assert (await client.reader.readline()) == b"big OK done\r\n"
        await client.ok("NOOP")


async def test_a_backend_announcing_an_oversized_literal_ends_the_session(stack: Stack) -> None:
    def answer(tag: bytes) -> list[bytes]:
        return [b"* 1 FETCH (BODY[] {%d}\r\n" % (MAX_LITERAL + 1), b"x" * 1000]

    async with scripted_backend(answer) as (port, _writers):
        backend = modern_settings(stack)
        backend.imap_port, backend.imap_tls = port, "none"
        client = await login(stack, "dr-martin", MARTIN)
        await client.send(b"f1 FETCH 1 BODY[]\r\n")
        bye = await client.line()
        assert bye.startswith(b"* BYE")
        assert b"invalid data" in bye
        assert await client.until_closed() == b""  # nothing of the literal reached it
        errors = stack.gateway.metrics.sample(
            "lpsgw_backend_errors_total", backend="modern", protocol="imap", kind="protocol"
        )
        assert errors == 1


async def test_a_bulk_read_buffer_is_no_bigger_than_what_is_owed() -> None:
    """Reads are big while a literal is owed, but a 100 kB attachment does not get a
    whole PUMP_READ of buffer: what is owed, rounded up."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    received: list[bytes] = []
    pump = BackendPump(reader, writer, lambda data, size: received.append(bytes(data[:size])))
    try:
        pump.start(b"")
        pump.expect(100_000)
        small = len(pump.get_buffer(-1))
        assert 100_000 + REST_READ <= small <= 100_000 + REST_READ + BULK_STEP
        pump.expect(5 * PUMP_READ)
        assert len(pump.get_buffer(-1)) == PUMP_READ
        pump.expect(10)  # the end of a literal: back to small reads
        theirs.sendall(b"tail)\r\n")
        await until(lambda: received, "the tail relayed")
        assert received == [b"tail)\r\n"]
        assert len(pump.get_buffer(-1)) == REST_READ
    finally:
        pump.stop()
        writer.close()
        await writer.wait_closed()
        theirs.close()


class _TlsTransport(asyncio.Transport):
    """What the pump asks of a TLS connection's transport (its reads are never made)."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sslcontext": ssl.create_default_context()}.get(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return asyncio.Protocol()


async def test_a_bulk_read_over_tls_is_no_bigger_than_what_one_read_decrypts() -> None:
    """Under TLS each read hands over what asyncio decrypted from one socket read of
    `SSLProtocol.max_size` (64 KiB in the gateway): a bigger buffer would lie mostly idle."""
    writer = SimpleNamespace(transport=_TlsTransport())
    pump = BackendPump(asyncio.StreamReader(), writer, lambda data, size: None)  # type: ignore[arg-type]
    pump.expect(5 * PUMP_READ)
    size = len(pump.get_buffer(-1))
    assert size == max(BULK_STEP, asyncio.sslproto.SSLProtocol.max_size) < PUMP_READ
