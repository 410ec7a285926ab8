"""SMTP replies as the backend submission client reads them (`smtp_wire`), and the client
over a real socket: several commands in one write, their replies in order."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager as AsyncContextManager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.backends.imap_smtp.smtp_client import SmtpClient, SmtpLost
from gateway.backends.imap_smtp.smtp_wire import (
    MAX_LINE,
    MAX_LINES,
    Reply,
    ReplyError,
    ReplyReader,
    extensions,
)
from tests.support.smtp_raw import scripted_server
from tests.support.waiting import until


def read(*lines: bytes) -> list[Reply]:
    reader = ReplyReader()
    return [reply for line in lines if (reply := reader.line(line)) is not None]


def test_one_line_several_lines_and_a_bare_code() -> None:
    assert read(b"250 2.1.0 Ok\r\n") == [Reply(250, "2.1.0 Ok")]
    assert read(b"250-first\r\n", b"250-second\r\n", b"250 last\r\n") == [
        Reply(250, "first\nsecond\nlast")
    ]
    assert read(b"354\r\n", b"221 bye\n") == [Reply(354, ""), Reply(221, "bye")]
    assert Reply(354, "").positive
    assert not Reply(452, "").positive


@pytest.mark.parametrize(
    "line", [b"25 short\r\n", b"2500 four digits\r\n", b"abc text\r\n", b"650 out\r\n", b""]
)
def test_malformed_lines_end_the_session(line: bytes) -> None:
    with pytest.raises(ReplyError):
        ReplyReader().line(line)


def test_limits() -> None:
    with pytest.raises(ReplyError):
        ReplyReader().line(b"250 " + b"x" * MAX_LINE + b"\r\n")
    reader = ReplyReader()
    for _ in range(MAX_LINES):
        assert reader.line(b"250-more\r\n") is None
    with pytest.raises(ReplyError):
        reader.line(b"250-more\r\n")


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_any_octets_give_replies_or_reply_error(lines: list[bytes]) -> None:
    reader = ReplyReader()
    try:
        for line in lines:
            reply = reader.line(line)
            assert reply is None or 200 <= reply.code <= 599
    except ReplyError:
        pass


def test_extensions_of_an_ehlo_reply() -> None:
    ehlo = read(
        b"250-mx.example greets you\r\n",
        b"250-PIPELINING\r\n",
        b"250-SIZE 10240000\r\n",
        b"250-xclient NAME ADDR\r\n",
        b"250 CHUNKING\r\n",
    )[0]
    assert extensions(ehlo) == {
        "pipelining": "",
        "size": "10240000",
        "xclient": "NAME ADDR",
        "chunking": "",
    }


# -- the client, over a socket -------------------------------------------------------------


def serve(script: bytes, *, hang_up: bool = False) -> AsyncContextManager[int]:
    """A server that greets, answers EHLO (PIPELINING), then writes `script` whatever it
    is sent (and hangs up then, with `hang_up`)."""
    greeting = [b"220 test ESMTP\r\n", b"250-test\r\n250 PIPELINING\r\n"]
    return scripted_server([*greeting, script], hang_up=hang_up)


async def connect(port: int, reply_timeout: float = 10) -> SmtpClient:
    return await SmtpClient.connect(
        "127.0.0.1",
        port,
        tls="none",
        context=None,
        local_hostname="test",
        connect_timeout=10,
        reply_timeout=reply_timeout,
    )


async def test_two_commands_in_one_write_two_replies_in_order() -> None:
    async with serve(b"250 2.1.0 sender\r\n250-2.1.5 one\r\n250 2.1.5 two\r\n") as port:
        client = await connect(port)
        assert client.supports("pipelining")
        replies = await client.exchange([b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>"])
        assert replies == [Reply(250, "2.1.0 sender"), Reply(250, "2.1.5 one\n2.1.5 two")]
        client.abort()


async def test_a_command_line_with_cr_lf_or_nul_is_never_written() -> None:
    async with serve(b"") as port:
        client = await connect(port)
        for bad in (b"MAIL FROM:<a@b>\r\nRSET", b"RCPT TO:<a\nb>", b"NOOP\0"):
            with pytest.raises(ValueError, match="CR, LF or NUL"):
                await client.exchange([bad])
        client.abort()


async def test_a_reply_cut_by_eof_is_a_lost_session() -> None:
    async with serve(b"250-first line\r\n", hang_up=True) as port:
        client = await connect(port)
        with pytest.raises(SmtpLost) as lost:
            await client.exchange([b"NOOP"])
        assert lost.value.kind == "disconnected"
        assert not client.connected


async def test_no_reply_within_the_timeout() -> None:
    async with serve(b"") as port:
        client = await connect(port, reply_timeout=0.2)
        with pytest.raises(SmtpLost) as lost:
            await client.exchange([b"NOOP"])
        assert lost.value.kind == "timeout"
        assert not client.connected


async def test_a_server_that_hung_up_is_not_connected() -> None:
    async with serve(b"221 bye\r\n", hang_up=True) as port:
        client = await connect(port)
        (reply,) = await client.exchange([b"QUIT"])
        assert reply.code == 221
        await until(lambda: not client.connected, "the server's EOF seen")
        client.abort()
