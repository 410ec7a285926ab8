"""Hostile DATA against the submission server's block reader (`TokenSMTP._receive`) and
the backend writer (`smtp_data.stuff`): no end of data but CRLF.CRLF (SMTP smuggling:
a bare LF or CR next to the dot ends nothing, here or at the backend), and limits that
hold whatever the client sends."""

from __future__ import annotations

import pytest

from gateway.runtime.smtp_data import stuff
from gateway.runtime.smtp_server import TokenSMTP
from tests.gateway.test_smtp_data import (
    LIMIT,
    reference_unstuff,
    send_in_pieces,
    serving,
    transaction,
)
from tests.support.smtp_raw import RawSmtp

SMUGGLED = b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nevil\r\n"
FAKE_ENDS = [b"\n.\r\n", b"\r\n.\n", b"\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r", b"\n..\r\n"]


@pytest.mark.parametrize("fake", FAKE_ENDS)
async def test_a_fake_end_of_data_smuggles_no_second_message(fake: bytes) -> None:
    async with serving(LIMIT) as (server, recorder):
        client = await RawSmtp.greeted(server.port, b"probe")
        await transaction(client)
        stuffed = b"hello\r\nx" + fake + SMUGGLED
        assert (await send_in_pieces(client, stuffed, [9, 10])).startswith(b"250 2.0.0")
        await client.command(b"NOOP", b"250")  # nothing smuggled is waiting for an answer
        assert recorder.messages == [reference_unstuff(stuffed)]  # one message, all of it
        relayed = stuff(recorder.messages[0])
        assert relayed.count(b"\r\n.\r\n") == 1
        assert relayed.endswith(b"\r\n.\r\n")


async def test_a_line_that_never_ends_is_refused_and_the_session_goes_on() -> None:
    limit = TokenSMTP.line_length_limit
    async with serving(limit * 8) as (server, recorder):
        client = await RawSmtp.greeted(server.port, b"probe")
        await transaction(client)
        endless = b"a" * (limit * 3) + b"\r\n"
        assert (await send_in_pieces(client, endless, [1, limit, limit * 2])).startswith(b"500")
        await transaction(client)
        assert (await send_in_pieces(client, b"ok\r\n", [])).startswith(b"250 2.0.0")
        assert recorder.messages == [b"ok\r\n"]


async def test_many_dot_ended_lines_past_the_limit_are_read_and_refused() -> None:
    """The reader's slowest input (a read per dot-ended line) meets the size limit too."""
    async with serving(LIMIT) as (server, recorder):
        client = await RawSmtp.greeted(server.port, b"probe")
        await transaction(client)
        assert (await send_in_pieces(client, b"a.\r\n" * LIMIT, [LIMIT])).startswith(b"552")
        await transaction(client)
        assert (await send_in_pieces(client, b"a.\r\n", [])).startswith(b"250 2.0.0")
        assert recorder.messages == [b"a.\r\n"]
