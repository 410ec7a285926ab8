"""A raw IMAP test client: exact command bytes out, responses in (literals inlined), for
tests that check a server byte for byte (the engine, the gateway's proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass

TIMEOUT = 5.0
_LITERAL_END = re.compile(rb"\{(\d+)\}\r\n$")


@dataclass(frozen=True)
class Lit:
    """A literal argument: sent as ``{n}`` (waiting for ``+``) or ``{n+}``."""

    data: bytes


@dataclass
class Reply:
    untagged: list[bytes]  # every response before the tagged one, CRLF removed
    tagged: bytes

    @property
    def status(self) -> str:
        return self.tagged.split(b" ", 2)[1].decode()

    def of(self, kind: bytes) -> list[bytes]:
        """Untagged responses of one kind: b"EXPUNGE", b"FETCH", b"SEARCH", b"LIST"..."""
        pattern = re.compile(rb"\* (?:\d+ )?" + re.escape(kind) + rb"(?: |$)", re.IGNORECASE)
        return [line for line in self.untagged if pattern.match(line)]

    def search(self) -> list[int]:
        (line,) = self.of(b"SEARCH")
        return [int(n) for n in line.split()[2:]]

    def fetched(self) -> dict[int, bytes]:
        return {int(line.split()[1]): line for line in self.of(b"FETCH")}


class Raw:
    """Exact bytes out, responses in (literals inlined into their logical line)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.counter = itertools.count(1)
        self.observer: Callable[[bytes], None] | None = None
        self.greeting = b""

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.greeting = await client.line()
        return client

    def tag(self) -> str:
        return f"T{next(self.counter)}"

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self, wait: float = TIMEOUT) -> bytes:
        async with asyncio.timeout(wait):
            data = await self.reader.readuntil(b"\r\n")
            out = bytearray()
            while (match := _LITERAL_END.search(data)) is not None:
                out += data + await self.reader.readexactly(int(match.group(1)))
                data = await self.reader.readuntil(b"\r\n")
            out += data
        line = bytes(out[:-2])
        if self.observer is not None:
            self.observer(line)
        return line

    async def collect(self, tag: str, untagged: list[bytes] | None = None) -> Reply:
        lines = [] if untagged is None else untagged
        prefix = tag.encode() + b" "
        while True:
            line = await self.line()
            if line.startswith(prefix):
                return Reply(lines, line)
            assert line.startswith((b"* ", b"+ ")), line
            lines.append(line)

    async def command(self, *parts: str | bytes | Lit, plus: bool = False) -> Reply:
        """Send ``tag part part...``: text parts as they are, `Lit` parts as literals."""
        tag = self.tag()
        pending = tag.encode() + b" "
        untagged: list[bytes] = []
        for part in parts:
            if isinstance(part, Lit):
                if plus:
                    pending += b"{%d+}\r\n" % len(part.data) + part.data
                    continue
                await self.send(pending + b"{%d}\r\n" % len(part.data))
                while True:
                    line = await self.line()
                    if line.startswith(b"+"):
                        break
                    if line.startswith(tag.encode() + b" "):
                        return Reply(untagged, line)  # literal refused
                    untagged.append(line)
                pending = part.data
            else:
                pending += part.encode() if isinstance(part, str) else part
        await self.send(pending + b"\r\n")
        return await self.collect(tag, untagged)

    async def ok(self, *parts: str | bytes | Lit, plus: bool = False) -> Reply:
        reply = await self.command(*parts, plus=plus)
        assert reply.status == "OK", reply
        return reply

    async def quiet(self, seconds: float = 0.2) -> bytes:
        """What arrives within `seconds` (b"" when the server says nothing)."""
        try:
            async with asyncio.timeout(seconds):
                return await self.reader.read(65536)
        except TimeoutError:
            return b""

    async def until_closed(self) -> bytes:
        async with asyncio.timeout(TIMEOUT):
            data = bytearray()
            while chunk := await self.reader.read(65536):
                data += chunk
            return bytes(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
