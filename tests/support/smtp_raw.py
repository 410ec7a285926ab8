"""A raw SMTP test client: exact lines out, each reply read whole (continuation lines
included), for tests that watch a server between and within transactions."""

from __future__ import annotations

import asyncio

TIMEOUT = 30.0


class RawSmtp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawSmtp:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        assert (await client.reply()).startswith(b"220")
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
