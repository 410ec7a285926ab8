"""Server replies as bytes: tagged and untagged responses, continuations, and data values.

Data values are plain Python: None is NIL, int a number, `Atom` an unquoted atom, `str` or
`bytes` a string (quoted when it can be, a literal otherwise), list or tuple a
parenthesised list, `Literal` a forced literal, `Raw` bytes inserted as they are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal as TypingLiteral
from typing import TypeAlias

Status = TypingLiteral["OK", "NO", "BAD", "BYE", "PREAUTH"]


@dataclass(frozen=True, slots=True)
class Atom:
    value: str


@dataclass(frozen=True, slots=True)
class Literal:
    value: bytes


@dataclass(frozen=True, slots=True)
class Raw:
    value: bytes


Value: TypeAlias = "int | str | bytes | Atom | Literal | Raw | Sequence[Value] | None"

_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
MAX_QUOTED = 1024
NIL = b"NIL"


def encode(value: Value) -> bytes:
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _encode(value: Value, out: bytearray) -> None:
    if value is None:
        out += NIL
    elif isinstance(value, bool):
        raise TypeError("booleans are not IMAP values")
    elif isinstance(value, int):
        out += str(value).encode()
    elif isinstance(value, Atom):
        out += value.value.encode("ascii")
    elif isinstance(value, Raw):
        out += value.value
    elif isinstance(value, Literal):
        out += b"{%d}\r\n" % len(value.value) + value.value
    elif isinstance(value, str | bytes):
        data = value.encode("utf-8") if isinstance(value, str) else value
        if len(data) <= MAX_QUOTED and _QUOTABLE.fullmatch(data):
            out += b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        else:
            out += b"{%d}\r\n" % len(data) + data
    else:
        out += b"("
        for index, item in enumerate(value):
            if index:
                out += b" "
            _encode(item, out)
        out += b")"


def tagged(tag: str, status: Status, text: str, code: str | None = None) -> bytes:
    """``tag OK [CODE] text``. `code` is the text inside the brackets, e.g. ``UIDNEXT 4``."""
    return _status_line(tag.encode(), status, text, code)


def untagged_status(status: Status, text: str, code: str | None = None) -> bytes:
    return _status_line(b"*", status, text, code)


def _status_line(prefix: bytes, status: str, text: str, code: str | None) -> bytes:
    parts = [prefix, status.encode()]
    if code:
        parts.append(b"[" + code.encode("utf-8") + b"]")
    parts.append(_text(text))
    return b" ".join(parts) + b"\r\n"


def untagged(*items: Value) -> bytes:
    """``* item item ...``: e.g. ``untagged(3, Atom("EXISTS"))``."""
    return b"* " + b" ".join(encode(i) for i in items) + b"\r\n"


def continuation(text: str | bytes = "") -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return b"+ " + _text(data.decode("utf-8", "replace")) + b"\r\n" if data else b"+ \r\n"


def _text(text: str) -> bytes:
    """Human-readable text: one line, no CR/LF, never empty (RFC 3501 `text` is 1*TEXT-CHAR)."""
    cleaned = text.replace("\r", " ").replace("\n", " ").strip() or "."
    return cleaned.encode("utf-8")
