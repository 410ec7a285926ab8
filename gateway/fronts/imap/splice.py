"""Moving a big literal from the backend's socket to the client's with splice(2).

Between two plaintext TCP sockets the relay need not see a literal's octets: splice moves
them socket → pipe → socket inside the kernel (page references, no copy to user space and
back), and those two copies are most of what a bulk FETCH costs the gateway. Linux only;
elsewhere, over TLS, or when the kernel refuses (EINVAL), the buffered path stays.

The event loop drives it: a reader on the backend's socket while the pipe has room, a
writer on the client's while the pipe holds bytes the socket did not take. Both watch
duplicates of the transports' descriptors (asyncio refuses a callback on a transport's
own), and the caller hands the sockets over only while the transports leave them alone:
the backend transport's reading paused, the client transport's write buffer empty.
Memory: one pipe per transfer, closed after it; the client not reading stops the reads
once the pipe is full (backpressure, as with the transport's high-water mark).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import sys
import termios
from collections.abc import Callable
from typing import Protocol

SPLICE_MIN = 64 * 1024  # below this, setting a transfer up costs more than the copy it saves
PIPE_SIZE = 1024 * 1024  # /proc/sys/fs/pipe-max-size's default: the most a user may ask
AVAILABLE = sys.platform == "linux" and hasattr(os, "splice")

_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
# what a descriptor the kernel cannot splice says, before a byte has moved
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})


class _Transport(Protocol):
    def get_extra_info(self, name: str, default: object = None) -> object: ...


def plain_socket(transport: _Transport) -> socket.socket | None:
    """The TCP socket under `transport` when its bytes are the connection's own (no TLS),
    else None."""
    if transport.get_extra_info("sslcontext") is not None:
        return None
    if transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or getattr(sock, "type", None) != socket.SOCK_STREAM:
        return None
    family = getattr(sock, "family", None)
    if family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return None
    return sock  # type: ignore[return-value]  # asyncio's TransportSocket: fileno() is all we use


class SplicePipe:
    """The pipe a response's literals go through, and the duplicates of both sockets the
    loop watches: set up once for all the big literals of a response (a FETCH of many
    messages), closed at its end, so that an idle session holds none of it."""

    def __init__(self, source: socket.socket, target: socket.socket) -> None:
        self.source = source.fileno()
        self.target = target.fileno()
        self.read = self.write = -1
        self.readable = self.writable = -1  # the duplicates
        self.capacity = 0  # in bytes
        self._fds: list[int] = []

    def open(self) -> bool:
        """False when no pipe worth splicing through can be had (nothing left open)."""
        try:
            self.read, self.write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._fds += [self.read, self.write]
            with contextlib.suppress(OSError):  # optional: the default works, in more calls
                fcntl.fcntl(self.write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            self.capacity = fcntl.fcntl(self.write, fcntl.F_GETPIPE_SZ)
            self.readable = os.dup(self.source)
            self._fds.append(self.readable)
            self.writable = os.dup(self.target)
            self._fds.append(self.writable)
        except OSError:
            self.close()
            return False
        # a spent pipe quota (pipe-user-pages-soft) gives page-sized pipes: more system
        # calls than the copies they save
        if self.capacity < SPLICE_MIN:
            self.close()
            return False
        return True

    def unread(self) -> int:
        """Bytes the source's socket holds, not yet taken (below its SO_RCVLOWAT they
        wake nobody, yet they show the backend alive)."""
        with contextlib.suppress(OSError):
            return int.from_bytes(fcntl.ioctl(self.source, termios.FIONREAD, bytes(4)), "little")
        return 0

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


class Splice:
    """Moves the next `size` bytes of the pipe's source to its target, in order.

    `start` returns False when this kernel cannot (nothing moved; the caller keeps its own
    path). `done` resolves once every byte taken from `source` reached `target`: all
    `size` of them, or fewer when `source` ended or failed (`source_ended`: its transport
    finds out for itself when reading again), or when `target` failed (`target_error`,
    and whatever the pipe held is lost with the connection). `taken` counts the bytes
    read from `source`, `moved` those written to `target`, `held` those in the pipe;
    `on_read(left)` is told before the first read and after each how many are still to
    come. `stalled_since` is the loop time since which the pipe waits for `target` to take
    more (None while it does not); waiting longer than `write_timeout` ends the transfer
    with `deaf` set."""

    def __init__(
        self,
        pipe: SplicePipe,
        size: int,
        on_read: Callable[[int], None],
        write_timeout: float,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._pipe = pipe
        self.left = size
        self._on_read = on_read
        self.taken = 0
        self.moved = 0
        self.source_ended = False
        self.target_error: OSError | None = None
        self.stalled_since: float | None = None
        self._write_timeout = write_timeout
        self._timer: asyncio.TimerHandle | None = None  # one at a time, only while stalled
        self.deaf = False
        self.done: asyncio.Future[None] = self._loop.create_future()
        self.held = 0  # bytes in the pipe

        self._pipe_full = False  # a read found no room: wait for a write to make some
        self._reading = self._writing = False  # the loop watches the duplicates

    def backend_unread(self) -> int:
        """Bytes the source's socket holds, not yet taken."""
        return self._pipe.unread()

    def start(self) -> bool:
        """Move what can be moved now and watch for the rest; False when splice cannot
        be used here (nothing moved)."""
        self._on_read(self.left)
        if self._read() is None:
            return False
        if self.held:
            self._write()
        self._settle()
        return True

    def close(self) -> None:
        """Stop watching (bytes left in the pipe are the caller's to drop with it: it
        ends the session when it stops a transfer half-way)."""
        self._watch(read=False, write=False)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.done.done():
            self.done.cancel()

    # -- the loop's callbacks ----------------------------------------------------------
    def _readable(self) -> None:
        if self._read() is None:
            self.source_ended = True  # refused after bytes moved (it never is): an end
        if not self._writing:
            self._write()  # at once: the client's socket usually takes it all
        self._settle()

    def _writable(self) -> None:
        self._write()
        self._settle()

    def _read(self) -> int | None:
        """Fill the pipe from `source`: bytes read (0 when there was nothing or no room),
        None when splice is refused before anything moved."""
        room = min(self.left, self._pipe.capacity - self.held)
        if room <= 0:
            return 0
        try:
            size = os.splice(self._pipe.source, self._pipe.write, room, flags=_FLAGS)
        except (BlockingIOError, InterruptedError):
            # no data, or no free slot in the pipe (it counts buffers, not bytes)
            self._pipe_full = self.held > 0
            return 0
        except OSError as exc:
            if exc.errno in _UNSUPPORTED and self.taken == 0:
                return None
            self.source_ended = True  # its transport reads the error again and reports it
            return 0
        if size == 0:
            self.source_ended = True
            return 0
        self.taken += size
        self.left -= size
        self.held += size
        self._on_read(self.left)
        return size

    def _write(self) -> None:
        try:
            size = os.splice(self._pipe.read, self._pipe.target, self.held, flags=_FLAGS)
        except (BlockingIOError, InterruptedError):
            size = 0
        except OSError as exc:
            self.target_error = exc
            return
        self.held -= size
        self.moved += size
        if size:
            self._pipe_full = False
        if self.held:
            if size or self.stalled_since is None:
                self.stalled_since = self._loop.time()
                if self._timer is None:
                    self._timer = self._loop.call_at(
                        self.stalled_since + self._write_timeout, self._stall_check
                    )
        else:
            self.stalled_since = None

    def _stall_check(self) -> None:
        self._timer = None
        if self.stalled_since is None or self.done.done():
            return  # the client read meanwhile: the next stall arms the timer again
        deadline = self.stalled_since + self._write_timeout
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._stall_check)
            return
        self.deaf = True
        self._watch(read=False, write=False)
        self.done.set_result(None)

    def _settle(self) -> None:
        """Done, or watch what is worth watching next."""
        if self.target_error is not None or (
            not self.held and (self.left == 0 or self.source_ended)
        ):
            self._watch(read=False, write=False)
            if not self.done.done():
                self.done.set_result(None)
            return
        self._watch(
            read=self.left > 0 and not self.source_ended and not self._pipe_full,
            write=self.held > 0,
        )

    def _watch(self, *, read: bool, write: bool) -> None:
        if read != self._reading:
            self._reading = read
            if read:
                self._loop.add_reader(self._pipe.readable, self._readable)
            else:
                self._loop.remove_reader(self._pipe.readable)
        if write != self._writing:
            self._writing = write
            if write:
                self._loop.add_writer(self._pipe.writable, self._writable)
            else:
                self._loop.remove_writer(self._pipe.writable)
