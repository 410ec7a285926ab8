"""A warm backend session's reset before reuse (`refreshed`: UNSELECT and NOOP in one round
trip) and its close (`log_out`), against a scripted IMAP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.backends.base import Upstream
from gateway.backends.errors import BackendUnavailable
from gateway.backends.imap_smtp.upstream import log_out, refreshed


@dataclass
class Scripted:
    """Answers UNSELECT with OK, NOOP with `noop` (None: never), LOGOUT with BYE and a
    close; records the lines and how many reads brought them."""

    noop: bytes | None = b"OK NOOP completed"
    lines: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                self.lines.append(line.rstrip(b"\r\n"))
                tag, _, verb = line.rstrip(b"\r\n").partition(b" ")
                if verb == b"UNSELECT":
                    writer.write(tag + b" OK UNSELECT completed\r\n")
                elif verb == b"NOOP" and self.noop is not None:
                    writer.write(b"* 3 EXISTS\r\n" + tag + b" " + self.noop + b"\r\n")
                elif verb == b"LOGOUT":
                    writer.write(b"* BYE Logging out\r\n" + tag + b" OK Logout completed.\r\n")
                    break
                await writer.drain()
        finally:
            writer.close()
            self.closed.set()


@pytest.fixture
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Scripted, Upstream]]:
    server = Scripted(**getattr(request, "param", {}))
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    async with listening:
        port = listening.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        up = Upstream("fake", 0.3, reader, writer, frozenset({"UNSELECT"}))
        try:
            yield server, up
        finally:
            await up.close()


async def test_unselect_and_noop_go_together_and_their_answers_are_consumed(
    upstream: tuple[Scripted, Upstream],
):
    server, up = upstream
    fresh = await refreshed(up, selected=True)
    assert [line.split(b" ", 1)[1] for line in server.lines] == [b"UNSELECT", b"NOOP"]
    assert fresh.leftover == b""  # the untagged EXISTS went with the NOOP, not to a client
    assert fresh.reader is up.reader


async def test_nothing_selected_is_a_noop_alone(upstream: tuple[Scripted, Upstream]):
    server, up = upstream
    await refreshed(up, selected=False)
    assert [line.split(b" ", 1)[1] for line in server.lines] == [b"NOOP"]


@pytest.mark.parametrize("upstream", [{"noop": b"NO not now"}], indirect=True)
async def test_a_refused_noop_is_a_dead_session(upstream: tuple[Scripted, Upstream]):
    with pytest.raises(BackendUnavailable) as raised:
        await refreshed(upstream[1], selected=False)
    assert raised.value.kind == "protocol"


@pytest.mark.parametrize("upstream", [{"noop": None}], indirect=True)
async def test_a_silent_backend_is_a_dead_session(upstream: tuple[Scripted, Upstream]):
    with pytest.raises(BackendUnavailable) as raised:
        await refreshed(upstream[1], selected=False)
    assert raised.value.kind == "timeout"


async def test_log_out_waits_for_the_backend_to_close(upstream: tuple[Scripted, Upstream]):
    server, up = upstream
    await log_out(up)
    assert server.lines[-1].endswith(b" LOGOUT")
    assert server.closed.is_set()
    assert up.writer.is_closing()


async def test_a_handed_on_upstream_is_not_closed_by_its_old_owner(
    upstream: tuple[Scripted, Upstream],
):
    server, up = upstream
    up.handed_on = True
    await up.close()
    assert not up.writer.is_closing()
    await refreshed(up, selected=False)  # still usable by its new owner
    assert server.lines[-1].endswith(b" NOOP")
