"""Reading a backend connection for the relay without a StreamReader in the way.

The login dialogue reads the backend through asyncio streams; the relay then takes the
transport over with a buffered protocol: the kernel copies each read straight into one
reused buffer and the relay forwards it from the callback, with no task wake-up, no
buffer-to-buffer copy and no await per chunk. When the relay stops, the streams get their
transport back (a connection lost meanwhile is passed on to them), so closing the
upstream works as before.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import socket
from collections.abc import Callable

# A bulk read: each costs a wake-up and a system call on both sides of the relay (the
# backend too, Dovecot included, spends less per GiB read in big ones); its buffer is no
# bigger than what is owed when a shorter literal is all that comes
PUMP_READ = 1024 * 1024
BULK_STEP = 64 * 1024  # a bulk buffer's size is a multiple of this
REST_READ = 16 * 1024  # a read between bulk transfers (into a buffer made for it)
MIN_LOWAT = 32 * 1024  # below this, waking once more costs less than the system call


_NONE = bytearray()


class BackendPump(asyncio.BufferedProtocol):
    """Hands each read of `writer`'s transport to `deliver(buffer, size)`, synchronously.

    `deliver` forwards `buffer[:size]` at once; it sets `reusable` to False when what it
    wrote still refers to the buffer (the client's transport kept it unsent), and the next
    read then goes into a fresh one. Reads are of `size` while a bulk transfer runs (a big
    literal is owed, or the last read filled its buffer), of REST_READ otherwise. `done`
    is resolved at end of stream (None) or with the exception `deliver` raised."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        deliver: Callable[[bytearray, int], None],
        size: int = PUMP_READ,
    ) -> None:
        self._reader = reader
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)  # a stream's: reads and writes
        self._transport = transport
        self._original = self._transport.get_protocol()
        self._deliver = deliver
        tls = transport.get_extra_info("sslcontext") is not None
        if tls:  # a read hands over the plaintext of one socket read of at most this much
            size = min(size, max(BULK_STEP, asyncio.sslproto.SSLProtocol.max_size))
        self._size = size
        self._big: bytearray | None = None
        self._buffer = _NONE  # the one the last read went into
        self._bulk = False
        self._owed = 0  # the literal's bytes still due, as the last `expect` said
        self.reusable = True
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lost: tuple[Exception | None] | None = None
        self._installed = False
        # plain TCP only: under TLS the bytes on the socket are not those announced
        self._socket = None if tls else transport.get_extra_info("socket")
        self._lowat = 1

    def start(self, leftover: bytes) -> None:
        """Take the transport over; `leftover` and whatever the stream buffered are
        delivered first."""
        buffered: bytearray = self._reader._buffer  # type: ignore[attr-defined]
        pending = leftover + bytes(buffered)
        buffered.clear()
        ended = self._reader._eof  # type: ignore[attr-defined]
        self._transport.set_protocol(self)
        self._installed = True
        if not ended:
            self._transport.resume_reading()  # the stream may have paused it, full
        if pending:
            self._call(bytearray(pending), len(pending))
            self.reusable = True
        if ended:
            self._finish()

    def pause(self) -> None:
        if self._installed and not self.done.done():
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._installed and not self.done.done():
            self._transport.resume_reading()

    def expect(self, size: int) -> None:
        """At least `size` more bytes are due (the rest of a literal): wake for them when
        they are all there or a buffer is full (SO_RCVLOWAT), not for each segment.
        Nothing is late for it: those bytes are owed, and an end of stream still wakes."""
        lowat = min(size, self._size) if size >= MIN_LOWAT else 1
        self._bulk = self._bulk or lowat > 1
        self._owed = size
        if lowat != self._lowat and self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                self._lowat = lowat

    def stop(self) -> None:
        """Give the transport back to its streams."""
        if not self._installed:
            return
        self._installed = False
        self.expect(0)
        if self._lost is not None:
            self._original.connection_lost(self._lost[0])
            return
        self._transport.pause_reading()
        self._transport.set_protocol(self._original)
        self._transport.resume_reading()

    def _call(self, buffer: bytearray, size: int) -> None:
        if self.done.done():
            return
        try:
            self._deliver(buffer, size)
        except Exception as exc:
            self._transport.pause_reading()
            self.done.set_exception(exc)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    # -- protocol --------------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        if not self.reusable:
            self._big = None
            self.reusable = True
        if self._bulk:
            wanted = self._size
            if self._owed:  # the rest of a literal, and what may follow it in the read
                wanted = min(self._size, -(-(self._owed + REST_READ) // BULK_STEP) * BULK_STEP)
            if self._big is None or len(self._big) < wanted:
                self._big = bytearray(wanted)
            self._buffer = self._big
        else:
            self._big = None
            self._buffer = bytearray(REST_READ)
        # a view, not the bytearray: the TLS transport fills it in slices (a slice of a
        # bytearray would be a copy)
        return memoryview(self._buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self._bulk = nbytes == len(self._buffer)  # more may be waiting: read big
        self._call(self._buffer, nbytes)
        if not self._bulk:
            # between transfers the session holds no buffer at all: 16 KiB each would be
            # most of an idle session's memory (10,000 IDLE sessions: 160 MiB), and a
            # fresh small buffer per read costs less than the read's system call
            self._buffer = _NONE

    def eof_received(self) -> bool | None:
        self._finish()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = (exc,)
        self._finish()
        if not self._installed:
            self._original.connection_lost(exc)

    def pause_writing(self) -> None:  # writes to the backend: the streams' flow control
        self._original.pause_writing()

    def resume_writing(self) -> None:
        self._original.resume_writing()
