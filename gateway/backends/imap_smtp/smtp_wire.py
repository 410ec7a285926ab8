"""SMTP replies as a client reads them (RFC 5321 §4.2), sans I/O: lines in, replies out.

The gateway's backend submission sessions write several commands at once (RFC 2920
pipelining) and read their replies in order; aiosmtplib reads one reply per command and
drops what arrives before it is asked for, so the reading is ours. A backend is trusted
no further than its replies' shape: lines and replies are bounded, and a line that is
not ``ddd``, ``ddd text`` or ``ddd-text`` ends the session.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE = 2048  # RFC 5321 §4.5.3.1.5 says 512; servers' EHLO lines are longer at times
MAX_LINES = 128  # an EHLO reply has about twenty


class ReplyError(ValueError):
    """A reply the session cannot go on after: malformed, or over the limits."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply: its code and its lines' text (as aiosmtplib gave it, joined by LF)."""

    code: int
    text: str

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400


class ReplyReader:
    """Feed it each line (CRLF or LF ended) as read; it gives a `Reply` on the last one."""

    def __init__(self) -> None:
        self._texts: list[str] = []

    def line(self, raw: bytes) -> Reply | None:
        if len(raw) > MAX_LINE:
            raise ReplyError(f"reply line over {MAX_LINE} octets")
        line = raw.rstrip(b"\r\n")
        head, separator = line[:3], line[3:4]
        if len(head) != 3 or not head.isdigit() or separator not in (b"", b" ", b"-"):
            raise ReplyError(f"malformed reply line: {line[:40]!r}")
        if not b"2" <= head[:1] <= b"5":
            raise ReplyError(f"reply code out of range: {head!r}")
        if len(self._texts) >= MAX_LINES:
            raise ReplyError(f"reply over {MAX_LINES} lines")
        self._texts.append(line[4:].strip(b" \t").decode("utf-8", "surrogateescape"))
        if separator == b"-":
            return None
        texts, self._texts = self._texts, []
        return Reply(int(head), "\n".join(texts))

    @property
    def midway(self) -> bool:
        """Lines of a reply read, not its last: EOF now is a cut reply."""
        return bool(self._texts)


def extensions(ehlo: Reply) -> dict[str, str]:
    """The service extensions an EHLO reply names (RFC 5321 §4.1.1.1): each keyword,
    lower-cased, with its parameters; the first line is the server's greeting."""
    found: dict[str, str] = {}
    for text in ehlo.text.split("\n")[1:]:
        keyword, _, parameters = text.partition(" ")
        if keyword:
            found.setdefault(keyword.lower(), parameters.strip())
    return found
