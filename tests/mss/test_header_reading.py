"""The header block read once (`header_fields`) serves every rule: its fast path reads what
the line-by-line checks read, and `head_message` is what compat32's parser makes of the
block, without running the parser again."""

from __future__ import annotations

import email.parser
from email.policy import compat32
from unittest import mock

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.mss import headers
from gateway.mss.headers import UnreadableHeader, header_block, header_fields
from gateway.mss.rules import head_message

LINES = st.sampled_from(
    [
        b"From: Claire MARTIN <claire.martin@medecin.mssante.fr>",
        b"To: a@b.c,",
        b" d@e.f",
        b"\tfolded",
        b"Subject: =?utf-8?q?Compte_rendu?=",
        b"Subject:",
        b"X-MSS-NIL:  NIL-1 ",
        b"Content-Type: multipart/mixed; boundary=x",
        b"Content-Type: text/plain",
        b"X-Empty:",
        b"Caf\xc3\xa9: latin",
        b"X-Latin: caf\xe9",
        b"X-Utf8: caf\xc3\xa9 \xe2\x80\xa8",
        b"X-Control: a\x0bb",
        b"X-Cr: a\rb",
        b"X-Nul: a\x00b",
        b"From : spaced",
        b"no colon here",
        b" ",
        b"From mbox line",
    ]
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    lines = draw(st.lists(LINES, min_size=0, max_size=8))
    body = draw(st.sampled_from([b"", eol + b"body" + eol, eol]))
    tail = draw(st.sampled_from([b"", eol]))
    return eol.join(lines) + tail + body


def read(raw: bytes) -> list[headers.HeaderField] | str:
    try:
        return header_fields(raw)
    except UnreadableHeader as bad:
        return f"{bad.line}: {bad.why}"


@given(messages())
@example(b"From: a\r\nTo: b\r\n c\r\n\r\nbody")
@example(b"From: a\nX: \n y\n\n")
def test_the_fast_path_reads_what_the_line_checks_read(raw: bytes) -> None:
    fast = read(raw)
    with mock.patch.object(headers, "_plain", return_value=False):
        slow = read(raw)
    assert fast == slow


@given(messages())
@example(b"X: \r\n y\r\n\r\n")
@example(b"Subject:   \r\n\tfolded\r\n")
def test_head_message_is_what_the_parser_makes_of_the_block(raw: bytes) -> None:
    try:
        fields = header_fields(raw)
    except UnreadableHeader:
        return
    parsed = email.parser.BytesParser(policy=compat32).parsebytes(header_block(raw))
    made = head_message(fields)
    assert made._headers == parsed._headers  # type: ignore[attr-defined]
    assert made.get_content_type() == parsed.get_content_type()
    assert made.get_unixfrom() is parsed.get_unixfrom() is None
    if parsed.get_content_maintype() not in ("multipart", "message"):  # else not used alone
        assert made.get_payload() == parsed.get_payload()
        assert made.defects == parsed.defects == []


def test_a_plain_letter_takes_the_fast_path() -> None:
    raw = b"From: a@b.c\r\nTo: d@e.f\r\n g@h.i\r\nSubject: s\r\n\r\nbody\r\n"
    eol, block = headers._block(raw)
    assert headers._plain(block, eol)
    assert not headers._plain(block.replace(b"s\r\n", b"s\n"), eol)
    assert not headers._plain(block.replace(b"s\r\n", b"\xc3\xa9\r\n"), eol)
