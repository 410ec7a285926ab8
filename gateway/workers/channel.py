"""The local channel between a node's supervisor and one of its workers: JSON lines over
a socket pair. A worker says when it is ready; on SQLite (no LISTEN/NOTIFY) the registry's
change events and the failed logins a worker saw go through the supervisor to the other
workers, and a migration's write hold is asked of them and answered the same way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

from delegation.events import ChangeBus, ChangeEvent

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024  # bytes of one message: an event, a BAL's hold
MAX_BUFFER = 16 * 1024 * 1024  # bytes waiting for a peer that stopped reading: it is ended

Message = dict[str, Any]


class Channel:
    """One end of the channel. `send` never waits (the peer reads all the time: one that
    lets `MAX_BUFFER` bytes pile up is stuck, and the channel is closed, which ends a
    worker, started again, or makes a worker stop); `receive` returns None once the
    other end has gone, and skips a line it cannot read (the ones after it are read)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
        return cls(reader, writer)

    def send(self, message: Message) -> None:
        if self._writer.is_closing():
            return
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_LINE:  # the peer would not read it
            log.warning("workers.message_too_long", extra={"kind": message.get("t")})
            return
        if self._writer.transport.get_write_buffer_size() > MAX_BUFFER:
            log.error("workers.peer_stuck", extra={"waiting": MAX_BUFFER})
            self._writer.transport.abort()
            return
        self._writer.write(line)

    async def receive(self) -> Message | None:
        while True:
            try:
                line = await self._reader.readline()
            except ConnectionError:
                return None
            except ValueError:  # a line over MAX_LINE, dropped (its tail is no JSON)
                log.warning("workers.bad_message", extra={"over": MAX_LINE})
                continue
            if not line:
                return None
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("workers.bad_message")
                continue
            if isinstance(message, dict):
                return message

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


class RelayBus(ChangeBus):
    """The registry's bus of one process of a node on SQLite: an event published here
    reaches this process's subscribers at once and, through `send`, the other processes'
    (the supervisor passes it on); `received` delivers theirs."""

    def __init__(self, send: Callable[[Message], None]) -> None:
        super().__init__()
        self._send = send

    async def publish(self, event: ChangeEvent) -> None:
        self._deliver_local(event)
        self._send({"t": "event", "event": event.to_json()})

    def gap(self) -> None:
        """A worker died: events it published may be lost (as when a `PostgresBus` loses
        its LISTEN connection), so every subscriber re-checks what it holds."""
        for subscription in list(self._subscriptions):
            subscription.mark_gap()

    def received(self, data: object) -> None:
        try:
            event = ChangeEvent.from_json(data)
        except ValueError:
            log.warning("workers.bad_event")
            return
        self._deliver_local(event)
