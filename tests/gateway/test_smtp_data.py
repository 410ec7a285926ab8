"""DATA transparency on whole buffers (`gateway.runtime.smtp_data`) and the submission
server's block reader (`TokenSMTP.smtp_DATA`): the same octets as the line-by-line reader
(aiosmtpd's) and writer (aiosmtplib's) they replace, over real sockets, whatever the
octets and however they are split."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from gateway.runtime.asgi_server import bind_tcp
from gateway.runtime.smtp_data import has_line_over, stuff, unstuff
from gateway.runtime.smtp_server import SmtpServer, TokenSMTP
from tests.support.smtp_raw import RawSmtp

LIMIT = 4096  # the server's data_size_limit in these tests
OCTETS = st.binary().map(bytes) | st.lists(
    st.sampled_from([b".", b"..", b"\r\n", b"\r", b"\n", b"a", b"\x80", b".\r\n", b"\r\n."])
).map(b"".join)


def reference_lines(stuffed: bytes) -> list[bytes]:
    """CRLF-ended lines as aiosmtpd reads them: bare CR and LF stay inside a line."""
    return [line + b"\r\n" for line in stuffed[:-2].split(b"\r\n")] if stuffed else []


def reference_unstuff(stuffed: bytes) -> bytes:
    """aiosmtpd 1.4's DATA reader, line by line: the first dot of a line starting with one
    is dropped."""
    return b"".join(
        line[1:] if line.startswith(b".") else line for line in reference_lines(stuffed)
    )


def reference_stuff(message: bytes) -> bytes:
    """aiosmtplib 5's DATA writer."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


def client_data(octets: bytes) -> bytes:
    """`octets` made into what a client may send between DATA and its lone dot: CRLF-ended
    lines, none of them a lone dot."""
    text = octets if octets.endswith(b"\r\n") or not octets else octets + b"\r\n"
    return b"".join(b"..\r\n" if line == b".\r\n" else line for line in reference_lines(text))


# -- the functions -------------------------------------------------------------------------


@given(OCTETS)
def test_stuff_sends_what_aiosmtplib_sent(message: bytes) -> None:
    assert stuff(message) == reference_stuff(message)


@given(OCTETS)
def test_unstuff_reads_what_aiosmtpd_read(octets: bytes) -> None:
    stuffed = client_data(octets)
    assert unstuff(stuffed) == reference_unstuff(stuffed)


@given(OCTETS)
def test_what_the_backend_gets_is_what_the_client_meant(message: bytes) -> None:
    """Client's stuffing, our unstuffing, our stuffing again, the backend's unstuffing."""
    meant = normalize_message_line_endings(message)
    received = unstuff(stuff(message)[:-3])
    assert received == meant
    assert unstuff(stuff(received)[:-3]) == meant


@given(OCTETS | st.binary(), st.integers(0, 12))
def test_has_line_over(octets: bytes, limit: int) -> None:
    """Against the longest line as a split reads it (a last line without CRLF as is)."""
    *ended, last = octets.split(b"\r\n")
    longest = max([len(line) + 2 for line in ended] + [len(last)])
    assert has_line_over(octets, limit) == (longest > limit)
    stuffed = client_data(octets)
    longest = max(map(len, reference_lines(stuffed)), default=0)
    assert has_line_over(stuffed, limit) == (longest > limit)


def test_unstuff_edge_cases() -> None:
    assert unstuff(b"") == b""
    assert unstuff(b".a\r\n") == b"a\r\n"
    assert unstuff(b"..\r\n") == b".\r\n"
    assert unstuff(b"a\r\n.b\r\n..c\r\n") == b"a\r\nb\r\n.c\r\n"
    assert unstuff(b"a\n.b\r\n") == b"a\n.b\r\n"  # a bare LF ends no line
    assert unstuff(b"a\r.b\r\n") == b"a\r.b\r\n"


# -- the server ----------------------------------------------------------------------------


@dataclass
class Recorder:
    """A handler that takes every message and keeps its octets."""

    messages: list[bytes] = field(default_factory=list)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, said: list[str]
    ) -> list[str]:
        """No AUTH here: the session counts as logged in (no cap on its commands)."""
        assert isinstance(server, TokenSMTP)
        server.logged_in()
        session.host_name = hostname
        return said

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content
        assert isinstance(content, bytes)
        self.messages.append(content)
        return "250 2.0.0 taken"


@contextlib.asynccontextmanager
async def serving(limit: int) -> AsyncIterator[tuple[SmtpServer, Recorder]]:
    recorder = Recorder()
    server = SmtpServer(recorder, bind_tcp("127.0.0.1", 0, "test"), None, data_size_limit=limit)
    await server.start()
    try:
        yield server, recorder
    finally:
        await server.stop(grace=0)


@pytest.fixture
async def served() -> AsyncIterator[tuple[SmtpServer, Recorder]]:
    async with serving(LIMIT) as both:
        yield both


async def transaction(client: RawSmtp) -> None:
    await client.command(b"MAIL FROM:<a@example.org>", b"250")
    await client.command(b"RCPT TO:<b@example.org>", b"250")
    await client.command(b"DATA", b"354")


async def send_in_pieces(client: RawSmtp, stuffed: bytes, cuts: list[int]) -> bytes:
    """Write `stuffed` and its lone dot cut at `cuts`, letting each piece leave; the reply."""
    wire = stuffed + b".\r\n"
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        client.writer.write(wire[start:end])
        await client.writer.drain()
        await asyncio.sleep(0)
    return await client.reply()


CASES = {
    "empty": b"",
    "one empty line": b"\r\n",
    "dots": b".\r\n..\r\n...x\r\nx.\r\n",
    "bare LF before a dot line": b"a\n.\r\nb\r\n",
    "bare CR before a dot line": b"a\r.\r\nb\r\n",
    "8-bit": "Objet: résumé\r\n\r\nÉtat: stationnaire.\r\n".encode(),
    "dot lines at the end": b"x\r\n..\r\n",
}


@pytest.mark.parametrize("name", CASES)
async def test_each_cut_of_the_lone_dot_gives_the_same_message(
    served: tuple[SmtpServer, Recorder], name: str
) -> None:
    server, recorder = served
    meant = CASES[name]
    stuffed = b"".join(b"." + line if line[:1] == b"." else line for line in reference_lines(meant))
    client = await RawSmtp.greeted(server.port)
    wire_end = len(stuffed) + 3
    cut_sets = [[], *([cut] for cut in range(1, wire_end)), [1, 2, wire_end - 2, wire_end - 1]]
    for cuts in cut_sets:
        cuts = sorted({cut for cut in cuts if 0 < cut < wire_end})
        await transaction(client)
        assert (await send_in_pieces(client, stuffed, cuts)).startswith(b"250 2.0.0")
        assert recorder.messages.pop() == meant, cuts
    await client.command(b"QUIT", b"221")


async def test_size_limit_at_the_boundary_and_after(served: tuple[SmtpServer, Recorder]) -> None:
    """`data_size_limit` octets as received pass, one more is 552 once the message is read
    to its end, and the session goes on in step."""
    server, recorder = served
    line = b"." + b"x" * 61 + b"\r\n"  # stuffed: 64 octets, 63 meant
    client = await RawSmtp.greeted(server.port)
    await transaction(client)
    assert (await send_in_pieces(client, line * (LIMIT // 64), [100, 2000])).startswith(b"250")
    assert recorder.messages.pop() == line[1:] * (LIMIT // 64)
    await transaction(client)
    over = line * (LIMIT // 64) + b"y\r\n"
    assert (await send_in_pieces(client, over + b"z" * LIMIT * 3 + b"\r\n", [5])).startswith(b"552")
    assert recorder.messages == []
    await transaction(client)
    assert (await send_in_pieces(client, b"after\r\n", [])).startswith(b"250")
    assert recorder.messages.pop() == b"after\r\n"


async def test_line_length_limit() -> None:
    """A line of `line_length_limit` octets (CRLF included) passes, one more is 500."""
    limit = TokenSMTP.line_length_limit
    async with serving(limit * 4) as (server, recorder):
        client = await RawSmtp.greeted(server.port)
        await transaction(client)
        longest = b"a" * (limit - 2) + b"\r\n"
        assert (await send_in_pieces(client, b"x\r\n" + longest, [7, 5000])).startswith(b"250")
        assert recorder.messages.pop() == b"x\r\n" + longest
        await transaction(client)
        too_long = b"a" * (limit - 1) + b"\r\n"
        assert (await send_in_pieces(client, b"x\r\n" + too_long, [])).startswith(b"500")
        assert recorder.messages == []
        await transaction(client)
        assert (await send_in_pieces(client, b"after\r\n", [])).startswith(b"250")
        assert recorder.messages == [b"after\r\n"]


async def test_commands_pipelined_after_the_lone_dot_are_served(
    served: tuple[SmtpServer, Recorder],
) -> None:
    """Nothing past the lone dot is taken for the message (RFC 2920)."""
    server, recorder = served
    client = await RawSmtp.greeted(server.port)
    await transaction(client)
    client.writer.write(b"one\r\n.\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
    for expected in (b"250 2.0.0", b"250", b"250"):
        assert (await client.reply()).startswith(expected)
    await client.command(b"DATA", b"354")
    assert (await send_in_pieces(client, b"two\r\n", [])).startswith(b"250 2.0.0")
    assert recorder.messages == [b"one\r\n", b"two\r\n"]


async def test_a_client_gone_within_data_delivers_nothing(
    served: tuple[SmtpServer, Recorder],
) -> None:
    server, recorder = served
    client = await RawSmtp.greeted(server.port)
    await transaction(client)
    client.writer.write(b"half a message\r\n.")
    client.writer.close()
    await client.writer.wait_closed()
    assert await client.reader.read() == b""
    assert recorder.messages == []
