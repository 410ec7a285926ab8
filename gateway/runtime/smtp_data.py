"""SMTP DATA transparency (RFC 5321 §4.5.2) on whole buffers, both ways.

The submission front receives a message as one dot-stuffed block ending in CRLF.CRLF and
relays it the same way; doing so line by line in Python was most of the gateway's CPU per
message. Here each direction is a few `bytes` operations over the whole message, with the
same results as the line-by-line readers and writers they replace (aiosmtpd's DATA reader,
aiosmtplib's DATA writer): property tests hold them to that.

Lines are what SMTP calls lines: ended by CRLF. A bare LF or CR is part of its line both
when the message comes in and when its dots are counted; on the way out, as aiosmtplib
did, a bare LF or CR becomes CRLF (the backend must not have to guess).
"""

from __future__ import annotations

import re

CRLF = b"\r\n"
DOT_LINE = b".\r\n"  # after a CRLF (or first): the end of the message
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")


def unstuff(stuffed: bytes) -> bytes:
    """The message's octets from its dot-stuffed lines (terminator removed, the last line's
    CRLF kept): the first dot of each line starting with one is dropped."""
    content = stuffed.replace(b"\r\n.", CRLF)  # the same object when no line has a dot
    return content[1:] if content.startswith(b".") else content


def has_line_over(stuffed: bytes, limit: int) -> bool:
    """Whether a line is over `limit` octets, its CRLF included (a last line without one
    counts as is). Read in windows of `limit` octets from each one's last CRLF backwards:
    a few dozen steps over a letter, where splitting it made a list of every line."""
    size = len(stuffed)
    start = 0
    while size - start > limit:
        end = stuffed.rfind(CRLF, start, start + limit)
        if end < 0:
            return True
        start = end + 2
    return False


def crlf_lines(message: bytes) -> bytes:
    """`message` with its line ends made CRLF (bare LF or CR too) and a CRLF added to an
    unended last line: the octets a backend takes, by DATA (unstuffed) or BDAT."""
    crlf = message.count(CRLF)
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LINE_ENDINGS.sub(CRLF, message)
    return message if message.endswith(CRLF) else message + CRLF


def stuff(message: bytes) -> bytes:
    """What follows DATA's 354 for `message`: `crlf_lines`, a dot doubled at the start of
    a line, and the terminating lone dot."""
    stuffed = crlf_lines(message).replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + DOT_LINE
