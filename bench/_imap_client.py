"""A minimal blocking IMAP client for benchmarks: exact bytes, literal-aware, no parsing cost.

imaplib's per-line Python parsing would dominate the timings; this client only frames
responses (lines and literals) so that what is measured is the server.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class RawImap:
    def __init__(self, host: str, port: int, timeout: float = 120.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.counter = 0
        self.greeting = self._line()

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buffer[: end + 2])
        del self.buffer[: end + 2]
        return line

    def _exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def tag(self) -> str:
        self.counter += 1
        return f"B{self.counter:05d}"

    def command(
        self,
        text: str | bytes,
        literals: list[bytes] | None = None,
        heads: list[bytes] | None = None,
    ) -> tuple[bytes, int]:
        """Send one command; return the tagged completion line and the bytes received
        (the literals of the answer appended to `literals` when given, and the line
        announcing each of them to `heads`)."""
        tag = self.tag()
        raw = text.encode() if isinstance(text, str) else text
        self.sock.sendall(tag.encode() + b" " + raw + b"\r\n")
        return self.wait(tag, literals, heads)

    def wait(
        self, tag: str, literals: list[bytes] | None = None, heads: list[bytes] | None = None
    ) -> tuple[bytes, int]:
        received = 0
        prefix = tag.encode() + b" "
        while True:
            line = self._line()
            received += len(line)
            literal = _LITERAL.search(line)
            while literal:
                if heads is not None:
                    heads.append(line)
                received += int(literal.group(1))
                data = self._exact(int(literal.group(1)))
                if literals is not None:
                    literals.append(data)
                line = self._line()
                received += len(line)
                literal = _LITERAL.search(line)
            if line.startswith(prefix):
                if not line[len(prefix) :].startswith(b"OK"):
                    raise RuntimeError(f"{tag} failed: {line!r}")
                return line, received

    def login_plain(self, authzid: str, authcid: str, password: str) -> None:
        blob = base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()
        self.command(f"AUTHENTICATE PLAIN {blob}")

    def append_many(self, folder: str, messages: list[bytes]) -> None:
        """Pipelined APPENDs with LITERAL+ (both servers announce it), then all replies."""
        tags = []
        for message in messages:
            tag = self.tag()
            tags.append(tag)
            self.sock.sendall(
                f'{tag} APPEND "{folder}" (\\Seen) {{{len(message)}+}}\r\n'.encode()
                + message
                + b"\r\n"
            )
        for tag in tags:
            self.wait(tag)

    def append_entries(
        self, folder: str, entries: list[tuple[bytes, str, str]], window: int = 100
    ) -> None:
        """Pipelined APPENDs (LITERAL+) of (message, flag list, quoted date or "") to one
        folder, `window` at a time (so neither side blocks on a full socket buffer)."""
        for start in range(0, len(entries), window):
            tags = []
            for message, flags, date in entries[start : start + window]:
                tag = self.tag()
                tags.append(tag)
                when = f" {date}" if date else ""
                self.sock.sendall(
                    f'{tag} APPEND "{folder}" ({flags}){when} {{{len(message)}+}}\r\n'.encode()
                    + message
                    + b"\r\n"
                )
            for tag in tags:
                self.wait(tag)

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.command("LOGOUT")
        self.sock.close()
