"""The header block of a submitted message, read line by line as strictly as it is written.

A checker and the platform that delivers the message must see the same header fields, or a
sender can hide a field from one of them: Python's compat32 parser drops a ``From :`` line
(an mbox separator to it), ends the header block at a line without a colon, and splits
lines on a bare CR or LF that a mail server may not split on, while the receiving platform
may read any of those as a ``From`` (RFC 5322 §4.5's obsolete syntax allows white space
before the colon). So before anything else reads the headers, every line of the block must
be an ordinary field (``name:`` with a printable ASCII name) or the folded continuation of
one; anything else is refused with the line named, never interpreted. Once the block passes,
every parser agrees on its fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_FIELDS = 1000
MAX_HEADER_BYTES = 1024 * 1024
_FIELD = re.compile(rb"([!-9;-~]+):")  # RFC 5322 ftext, then the colon at once
_SPACED_FIELD = re.compile(rb"[!-9;-~]+[ \t]+:")
_CONTROL = re.compile(rb"[\x01-\x08\x0a-\x1f\x7f]")  # HTAB is white space
_SHOWN = 60


@dataclass(frozen=True)
class HeaderField:
    """One field of the header block: its name as written, its unfolded value (bytes, as
    the message carries them), the line it starts on (1 = the first), and its value as
    written (`source`: folds and their line ends kept, as compat32 keeps them)."""

    name: str
    value: bytes
    line: int
    source: bytes = b""

    @property
    def key(self) -> str:
        return self.name.lower()


class UnreadableHeader(ValueError):
    """A line of the header block that is not an ordinary field nor its continuation."""

    def __init__(self, line: int, text: bytes, why: str) -> None:
        self.line = line
        self.text = text
        self.why = why
        super().__init__(f"header line {line}: {why}")

    @property
    def shown(self) -> str:
        """The line as a reply may quote it: printable ASCII, short."""
        raw = self.text.rstrip(b"\r\n")
        shown = "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in raw[:_SHOWN])
        return shown + ("..." if len(raw) > _SHOWN else "")


def header_fields(raw: bytes) -> list[HeaderField]:
    """The fields of `raw`'s header block, or `UnreadableHeader` for its first bad line.

    The block ends at the first empty line (or with the message). Its lines end as the
    first one does, all in CRLF or all in LF: a lone CR, a lone LF among CRLF lines (or a
    CR among LF ones) and NUL are refused, since servers differ on where such lines end."""
    eol, block = _block(raw)
    if not block:
        return []
    if len(block) > MAX_HEADER_BYTES:
        raise UnreadableHeader(0, b"", f"header block over {MAX_HEADER_BYTES} bytes")
    found: list[tuple[str, int, list[bytes]]] = []
    if _plain(block, eol):  # every line passes `_content`: split on the line end alone
        lines = block.split(eol)
        contents = lines[:-1] if not lines[-1] else lines
    else:
        contents = [
            _content(line, eol, number)
            for number, line in enumerate(block.splitlines(keepends=True), start=1)
        ]
    for number, content in enumerate(contents, start=1):
        if content[:1] in (b" ", b"\t"):
            if not found:
                raise UnreadableHeader(number, content, "continuation line without a field")
            if not content.strip(b" \t"):
                raise UnreadableHeader(number, content, "white-space-only line in the header")
            found[-1][2].append(content)
            continue
        match = _FIELD.match(content)
        if match is None:
            raise UnreadableHeader(number, content, _why_not_a_field(content))
        if len(found) >= MAX_FIELDS:
            raise UnreadableHeader(number, content, f"more than {MAX_FIELDS} header fields")
        found.append((match.group(1).decode("ascii"), number, [content[match.end() :]]))
    return [
        HeaderField(name, b"".join(parts), number, eol.join(parts)) for name, number, parts in found
    ]


_IN_LINE_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # not HTAB, CR, LF


def _plain(block: bytes, eol: bytes) -> bool:
    """Whether no line of `block` can fail `_content`: ASCII (no line-breaking character
    of another charset), no control but HTAB, every CR and LF in a line end `eol`."""
    if not block.isascii() or _IN_LINE_CONTROL.search(block):
        return False
    if eol == b"\n":
        return b"\r" not in block
    ends = block.count(eol)
    return block.count(b"\r") == ends and block.count(b"\n") == ends


def header_block(raw: bytes) -> bytes:
    """The octets of `raw`'s header block as `header_fields` reads it, with the empty line
    that ends it (empty: no header block)."""
    eol, block = _block(raw)
    return raw[: len(block) + len(eol)] if block else raw[: len(eol)]


def _block(raw: bytes) -> tuple[bytes, bytes]:
    """The line end of `raw` (its first line's) and its header block, ending with the last
    field's line end."""
    first_end = raw.find(b"\n")
    crlf = first_end < 0 or raw[first_end - 1 : first_end] == b"\r"
    eol = b"\r\n" if crlf else b"\n"
    if raw.startswith(eol):
        return eol, b""
    end = raw.find(eol + eol)
    return eol, raw if end < 0 else raw[: end + len(eol)]


def _why_not_a_field(content: bytes) -> str:
    if _SPACED_FIELD.match(content):
        return "white space before the colon (obsolete syntax)"
    if content.startswith(b"From "):
        return "mbox 'From ' line"
    return "not a header field (no colon)"


def _content(line: bytes, eol: bytes, number: int) -> bytes:
    """The line without its end; refused if it ends otherwise than `eol` or holds NUL."""
    if line.endswith(eol):
        body = line[: -len(eol)]
    elif line.endswith((b"\r", b"\n")):
        raise UnreadableHeader(number, line, "bare CR or LF in the header")
    else:
        body = line  # the message's last line, without an end
    if b"\r" in body or b"\n" in body:
        raise UnreadableHeader(number, line, "bare CR or LF in the header")
    if b"\x00" in body:
        raise UnreadableHeader(number, line, "NUL in the header")
    if _CONTROL.search(body) or _breaks_a_line(body):
        # A parser that splits on them (Python's str.splitlines: VT, FF, FS, GS, RS, NEL,
        # U+2028) would see a new field where this check saw a value.
        raise UnreadableHeader(number, line, "control character in the header")
    return body


def _breaks_a_line(body: bytes) -> bool:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False  # not UTF-8: Latin-1 at most, where no byte breaks a line
    return any(c in text for c in "\x85\u2028\u2029")
