"""Modified UTF-7 (RFC 3501 §5.1.3), the 7-bit encoding of IMAP mailbox names.

Printable ASCII stands for itself ("&" is written "&-"); anything else is UTF-16BE in a
base64 variant (","  instead of "/", no padding) between "&" and "-". Decoding is strict:
every name has exactly one encoding, so two spellings can never reach the same mailbox.
"""

from __future__ import annotations

import base64
import re

_B64_CHUNK = re.compile(r"[A-Za-z0-9+,]+")


def _printable(code: int) -> bool:
    return 0x20 <= code <= 0x7E


def encode(name: str) -> str:
    """Encode `name`; raises ValueError (UnicodeEncodeError) on a lone surrogate."""
    out: list[str] = []
    pending: list[str] = []  # a run of characters that need base64

    def flush() -> None:
        data = "".join(pending).encode("utf-16-be")
        out.append("&" + base64.b64encode(data).rstrip(b"=").decode("ascii").replace("/", ","))
        out.append("-")
        pending.clear()

    for char in name:
        if _printable(ord(char)):
            if pending:
                flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    if pending:
        flush()
    return "".join(out)


def decode(text: str) -> str:
    """Decode a modified UTF-7 name; ValueError unless `text` is its canonical encoding."""
    out: list[str] = []
    index = 0
    after_shift = False  # "-&" right after base64 is a null shift: not canonical
    length = len(text)
    while index < length:
        char = text[index]
        if not _printable(ord(char)):
            raise ValueError(f"character {char!r} not allowed in modified UTF-7")
        if char != "&":
            out.append(char)
            index += 1
            after_shift = False
            continue
        end = text.find("-", index + 1)
        if end < 0:
            raise ValueError("unterminated '&' shift in modified UTF-7")
        chunk = text[index + 1 : end]
        index = end + 1
        if not chunk:
            out.append("&")
            after_shift = False
            continue
        if after_shift:
            raise ValueError("adjacent base64 runs in modified UTF-7")
        out.append(_decode_chunk(chunk))
        after_shift = True
    return "".join(out)


def _decode_chunk(chunk: str) -> str:
    if not _B64_CHUNK.fullmatch(chunk):
        raise ValueError(f"invalid modified base64 {chunk!r}")
    data = base64.b64decode(chunk.replace(",", "/") + "=" * (-len(chunk) % 4))
    canonical = base64.b64encode(data).rstrip(b"=").decode("ascii").replace("/", ",")
    if canonical != chunk or len(data) % 2:
        raise ValueError(f"non-canonical modified base64 {chunk!r}")
    decoded = data.decode("utf-16-be")  # strict: a lone surrogate raises (a ValueError)
    if any(_printable(ord(char)) for char in decoded):
        raise ValueError("printable ASCII must not be base64-encoded in modified UTF-7")
    return decoded
