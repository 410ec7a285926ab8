"""A raw SMTP test client: exact lines out, each reply read whole (continuation lines
included), for tests that watch a server between and within transactions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

TIMEOUT = 30.0


class RawSmtp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawSmtp:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        assert (await client.reply()).startswith(b"220")
        return client

    @classmethod
    async def greeted(cls, port: int, name: bytes = b"test") -> RawSmtp:
        """`open`, then EHLO `name`."""
        client = await cls.open(port)
        await client.command(b"EHLO " + name, b"250")
        return client

    async def reply(self) -> bytes:
        """The next reply's last line, CRLF included (b"" once the server hung up)."""
        async with asyncio.timeout(TIMEOUT):
            while (line := await self.reader.readline())[3:4] == b"-":
                pass
        return line

    async def command(self, line: bytes, expect: bytes) -> None:
        self.writer.write(line + b"\r\n")
        answer = await self.reply()
        assert answer.startswith(expect), answer


@contextlib.asynccontextmanager
async def scripted_server(replies: list[bytes], *, hang_up: bool = False) -> AsyncIterator[int]:
    """A raw SMTP server on an ephemeral port: it writes `replies[0]` on connecting, and each
    following one after reading a line; then it waits for the client to hang up (or hangs
    up itself, with `hang_up`)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(replies[0])
            for reply in replies[1:]:
                await reader.readline()
                writer.write(reply)
            await writer.drain()
            if not hang_up:
                await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def backend_settings(port: int, **extra: Any) -> dict[str, Any]:
    """A plaintext submission backend on `port`, the gateway logging in as its master."""
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_tls": "none",
        "login": "master",
        "master_user": "lps-gateway",
        "master_password": "s3cret-master",
        "connect_timeout": 2,
        "reply_timeout": 1,
        **extra,
    }
