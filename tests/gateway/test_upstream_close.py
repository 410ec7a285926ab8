"""A backend connection ends when its session does, even when the backend does not read:
an orderly close would wait for the bytes still queued for it, and the backend would go on
counting the connection (Dovecot's mail_max_userip_connections)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from gateway.backends.base import CLOSE_GRACE, Upstream
from tests.support.waiting import BOUND

QUEUED = 32 * 1024 * 1024  # far more than the socket buffers hold


async def test_close_cuts_a_connection_whose_backend_does_not_read():
    accepted: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(reader)  # reads nothing until the test says so

    server = await asyncio.start_server(deaf, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        backend = await accepted.get()
        writer.write(b"x" * QUEUED)  # an APPEND the backend is not taking
        upstream = Upstream("deaf", 10.0, reader, writer, frozenset())
        began = time.monotonic()
        await upstream.close()
        assert time.monotonic() - began < CLOSE_GRACE + 5
        assert writer.transport.is_closing()
        received = 0
        try:
            async with asyncio.timeout(BOUND):
                while chunk := await backend.read(1024 * 1024):
                    received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < QUEUED  # cut, not drained at the backend's pace


async def test_a_second_close_has_nothing_left_to_do_and_a_copy_starts_open() -> None:
    """The relay closes the connection as it ends, then the grant's on_close asks again:
    the second close neither closes nor waits; a copy (a warm session's) is open."""
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer)

    server = await asyncio.start_server(quiet, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await accepted.get()
        upstream = Upstream("quiet", 10.0, reader, writer, frozenset())
        copy = dataclasses.replace(upstream, leftover=b"")
        closes = 0
        close = writer.close

        def counted() -> None:
            nonlocal closes
            closes += 1
            close()

        writer.close = counted  # type: ignore[method-assign]
        await upstream.close()
        await upstream.close()
        assert closes == 1
        assert writer.transport.is_closing()
        await copy.close()  # the copy's own close still closes (idempotent on the socket)
        assert closes == 2
