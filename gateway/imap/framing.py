"""Where a backend's responses begin and end, found without parsing them (sans-I/O).

The proxy relays a backend's bytes to its client as they come; it only needs to know the
response boundaries, to slip its own replies in between (NOPERM, BYE) and to look at the
first line of each response (tagged completions, CAPABILITY, continuations). Literal
octets are passed through in bulk, as views of the bytes received: a 1 MiB FETCH costs one
scan of its first line, not a parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MAX_LINE: Final = 16 * 1024 * 1024  # SEARCH results of a huge folder fit; a stream of junk does not
MAX_LITERAL: Final = 1024 * 1024 * 1024

_LITERAL_AT_END = re.compile(rb"~?\{([0-9]{1,10})\+?\}\r?\n\Z")
_UNTAGGED_STATUS = re.compile(rb"\* (?:OK|NO|BAD|BYE|PREAUTH)(?:[ \r\n]|\Z)", re.IGNORECASE)


class FramingError(Exception):
    """The backend's stream is not IMAP (a line or a literal beyond every sane limit)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """Bytes to forward. `line` is True for a protocol line (a literal's octets are not),
    `head` for the first line of a response: the one worth looking at."""

    data: bytes | memoryview
    line: bool
    head: bool


class ResponseFramer:
    def __init__(self, max_line: int = MAX_LINE, max_literal: int = MAX_LITERAL) -> None:
        self._max_line = max_line
        self._max_literal = max_literal
        self._partial = bytearray()
        self._literal_left = 0
        self._at_start = True
        self.exact = True

    @property
    def at_boundary(self) -> bool:
        """True between two responses: nothing of a response is half-forwarded."""
        return self._at_start and not self._partial and not self._literal_left

    @property
    def literal_left(self) -> int:
        """Octets of the literal being passed through still to come."""
        return self._literal_left

    def feed(self, data: bytes | bytearray, end: int | None = None) -> list[Segment]:
        """Split `data[:end]` (the next bytes from the backend) into segments to forward.

        A line is only ever returned whole: a line cut by the read is held until its end
        arrives. `exact` then tells whether the segments are `data[:end]` itself (nothing
        held over from before, nothing held back now), so a caller may forward it as is.
        Literal segments are views of `data`: a caller reusing its read buffer forwards
        them before the next read."""
        self.exact = not self._partial
        out: list[Segment] = []
        view = memoryview(data)
        pos = 0
        end = len(data) if end is None else end
        while pos < end:
            if self._literal_left:
                take = min(self._literal_left, end - pos)
                out.append(Segment(view[pos : pos + take], line=False, head=False))
                pos += take
                self._literal_left -= take
                continue
            newline = data.find(b"\n", pos, end)
            if newline < 0:
                if len(self._partial) + end - pos > self._max_line:
                    raise FramingError("backend response line too long")
                self._partial += view[pos:end]
                break
            if self._partial:
                self._partial += view[pos : newline + 1]
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = bytes(view[pos : newline + 1])
            if len(line) > self._max_line:
                raise FramingError("backend response line too long")
            pos = newline + 1
            head = self._at_start
            out.append(Segment(line, line=True, head=head))
            if head and _is_status(line):
                continue  # resp-text may end in "{5}" (an echoed name): never a literal
            match = _LITERAL_AT_END.search(line, max(0, len(line) - 16))
            if match is not None:
                size = int(match.group(1))
                if size > self._max_literal:
                    raise FramingError("backend literal too large")
                self._literal_left = size
                self._at_start = False
            else:
                self._at_start = True
        if self._partial:
            self.exact = False
        return out


def _is_status(line: bytes) -> bool:
    """Tagged completions, continuations and untagged statuses carry text, not literals."""
    return not line.startswith(b"* ") or _UNTAGGED_STATUS.match(line) is not None
