"""What an IMAP4rev1 server sends for a message: ENVELOPE, BODY/BODYSTRUCTURE, BODY[section].

Everything is computed from the raw RFC 5322 octets and follows Dovecot 2.3 (the reference
that strict IMAP testers compare with) rule for rule, so a client sees the same answer
through the gateway as from a real Dovecot holding the same octets:

* headers are split like Dovecot's header parser: a line without ``:`` is a field of
  its own, not the end of the header; values are unfolded, never decoded (RFC 2047 words
  stay encoded); the first ``Content-*`` field of each kind wins; a repeated address
  field (From, To, ...) adds its addresses, a repeated Subject/Date/... replaces;
* addresses are parsed like Dovecot (groups, routes, comments as names, and the
  MISSING_MAILBOX / MISSING_DOMAIN / SYNTAX_ERROR placeholders for broken ones);
* the MIME tree is found by scanning for ``--boundary`` lines against every open
  multipart (longest prefix wins, the CRLF before a boundary belongs to it), so broken
  messages (missing close delimiter, boundary inside a header, ...) get Dovecot's tree;
* strings are returned quoted or as literals exactly when Dovecot does (literal for
  8-bit, CR/LF, more than four quote characters, or a subject/name that had to be
  cleaned up).

Body sections are slices of the original octets (never re-serialised). Dovecot stores
LF-only messages and serves them with CRLF: call `to_crlf` before parsing to match it.
The standard `email` package is not used: its header/body split, address parser and
MIME walker diverge from Dovecot on exactly the malformed messages where it matters.

Parsing is lazy: the top header is read on first use (ENVELOPE needs nothing else), the
MIME tree only when BODYSTRUCTURE or a section asks for it. It never raises on any input;
the tree is capped at `MAX_PARTS` parts and `MAX_DEPTH` levels, the rest stays opaque.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.imap.response import Literal, Raw, Value, encode
from gateway.imap.syntax import Section

MAX_PARTS = 1000
MAX_DEPTH = 50
MAX_BOUNDARY = 80
DEFAULT_CHARSET = b"us-ascii"

_LWSP = b" \t"
_NUL_REPLACEMENT = "\ufffd".encode()
_BARE_LF = re.compile(rb"(?<!\r)\n")


def to_crlf(raw: bytes) -> bytes:
    """Turn lone LFs into CRLF, as Dovecot serves a message stored with LF line ends."""
    return _BARE_LF.sub(b"\r\n", raw)


def apply_partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    """``BODY[...]<offset.length>``: at most `length` octets from `offset` ("" past the end)."""
    if partial is None:
        return data
    offset, length = partial
    return data[offset : offset + length]


# --------------------------------------------------------------------------- strings


def _quote_or_literal(value: bytes) -> Value:
    """Dovecot's ``imap_append_nstring``: a literal for CR, LF, 8-bit or more than four
    quoted-specials, a quoted string otherwise."""
    escapes = value.count(b'"') + value.count(b"\\")
    if escapes > 4 or b"\r" in value or b"\n" in value or not value.isascii():
        return Literal(value)
    return value


def _nstring(value: bytes | None) -> Value:
    return None if value is None else _quote_or_literal(value)


def _nstring_nolf(value: bytes | None) -> Value:
    """Dovecot's ``imap_append_nstring_nolf``: CR/LF dropped, a space kept between lines."""
    if value is None or (b"\r" not in value and b"\n" not in value):
        return _nstring(value)
    out = bytearray()
    for index, char in enumerate(value):
        if char not in (0x0D, 0x0A):
            out.append(char)
        elif index + 1 < len(value) and value[index + 1] not in b" \t\r\n":
            out.append(0x20)
    return _quote_or_literal(bytes(out))


_HUMAN_SPACE = re.compile(rb"[ \t\r\n]+")
_HUMAN_MODIFY = re.compile(rb'[\x00\t\r\n"\\\x80-\xff]|  |^ | $')


def _for_humans(value: bytes) -> Value:
    """Dovecot's ``imap_append_string_for_humans`` (subjects, display names): whitespace
    runs become one space, no leading/trailing space, NUL becomes 0x80; any change makes
    it a literal (an empty result is ``""``)."""
    if not _HUMAN_MODIFY.search(value):
        return value
    cleaned = _HUMAN_SPACE.sub(b" ", value).strip(b" ").replace(b"\0", b"\x80")
    return Literal(cleaned) if cleaned else b""


# --------------------------------------------------------------------------- header


@dataclass(slots=True)
class _Field:
    """One header field. `name` is what precedes ``:`` (trailing blanks removed; the
    whole line when there is no colon); `value` is Dovecot's unfolded ``full_value``:
    leading blanks skipped, continuation lines appended after a LF."""

    name: bytes
    value: bytes
    start: int
    end: int
    colon: bool = True  # without one, only HEADER.FIELDS.NOT shows the line


def _line_content(raw: bytes, start: int, end: int) -> bytes:
    """A line without its LF / CRLF."""
    if end > start and raw[end - 1] == 0x0A:
        end -= 2 if end - 1 > start and raw[end - 2] == 0x0D else 1
    return raw[start:end]


def _newline_len(raw: bytes, start: int, end: int) -> int:
    if end > start and raw[end - 1] == 0x0A:
        return 2 if end - 1 > start and raw[end - 2] == 0x0D else 1
    return 0


def _new_field(raw: bytes, start: int, end: int) -> _Field:
    line = _line_content(raw, start, end)
    colon = line.find(b":")
    if colon < 0:
        return _Field(line, b"", start, end, colon=False)
    value = line[colon + 1 :]
    skip = len(value) - len(value.lstrip(_LWSP))
    if skip == len(value) and skip > 0:
        skip = 1  # only blanks: Dovecot skips just the first one
    return _Field(line[:colon].rstrip(_LWSP), value[skip:], start, end)


@dataclass(slots=True)
class _Header:
    fields: list[_Field]
    end: int  # offset just after the header (blank line included when present)
    eoh: bool  # a blank line ended it
    interrupted_at: int = -1  # offset of a boundary line that cut the header short


def _parse_header(
    raw: bytes,
    start: int,
    check: Callable[[int], bool] | None = None,
    on_eoh: Callable[[list[_Field]], None] | None = None,
) -> _Header:
    """Split a header like Dovecot's message parser does. `check(offset)` says whether
    the line at `offset` is a boundary of an enclosing multipart: the header then stops
    there, and the newline before that line belongs to the boundary. `on_eoh` runs at
    the blank line, before the line after it is checked."""
    fields: list[_Field] = []
    folded: list[bytes] = []  # continuation lines of the last field

    def unfold() -> None:
        if folded:
            fields[-1].value = b"\n".join([fields[-1].value, *folded])
            folded.clear()

    size = len(raw)
    cur = start
    last_nl = 0
    eoh = False
    while True:
        if check is not None and cur < size and check(cur):
            unfold()
            return _Header(fields, cur - last_nl, eoh, cur)
        if eoh or cur >= size:
            unfold()
            return _Header(fields, cur, eoh)
        lf = raw.find(b"\n", cur)
        end = size if lf < 0 else lf + 1
        nl = _newline_len(raw, cur, end)
        if end - cur == nl and nl:
            eoh = True
            unfold()
            if on_eoh is not None:
                on_eoh(fields)
        elif fields and raw[cur] in _LWSP:
            folded.append(_line_content(raw, cur, end))
            fields[-1].end = end
        else:
            unfold()
            fields.append(_new_field(raw, cur, end))
        last_nl = nl
        cur = end


def _c_string(value: bytes) -> bytes:
    """What a C string keeps of `value`: up to the first NUL."""
    nul = value.find(b"\0")
    return value if nul < 0 else value[:nul]


def _clean(value: bytes) -> bytes:
    """Dovecot keeps header values as C strings: NULs become U+FFFD."""
    return value.replace(b"\0", _NUL_REPLACEMENT) if b"\0" in value else value


# --------------------------------------------------------------------------- RFC 822 lexer

# Dovecot's rfc822_atext_chars: 1 = atext, 2 = alnum / 8-bit, 4 = atext but MIME tspecial.
_ATEXT = bytearray(256)
for _c in b"!#$%&'*+-^_`{|}~":
    _ATEXT[_c] = 1
for _c in b"/=?":
    _ATEXT[_c] = 4
for _c in range(256):
    if (chr(_c).isalnum() and _c < 128) or _c >= 128:
        _ATEXT[_c] = 2
del _c


def _is_atext(char: int) -> bool:
    return _ATEXT[char] != 0


def _run_of(chars: bytes) -> re.Pattern[bytes]:
    return re.compile(b"[" + b"".join(re.escape(bytes([c])) for c in chars) + b"]*")


_ATEXT_RUN = _run_of(bytes(c for c in range(256) if _ATEXT[c]))
_ATEXT_DOT_RUN = _run_of(bytes(c for c in range(256) if _ATEXT[c] or c == 0x2E))
_TOKEN_RUN = _run_of(bytes(c for c in range(256) if _ATEXT[c] & 3 or c == 0x2E))


class _Lexer:
    """A port of Dovecot's rfc822-parser: methods return -1 (error), 0 (end of input
    reached) or 1 (more input follows), and append what they read to `out`."""

    __slots__ = ("data", "end", "last_comment", "nul", "pos")

    def __init__(self, data: bytes, keep_comments: bool = False) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.last_comment: bytearray | None = bytearray() if keep_comments else None
        # the address parser turns NULs in quoted strings, comments and domain literals
        # into U+FFFD; elsewhere a NUL simply ends C strings
        self.nul: bytes | None = _NUL_REPLACEMENT if keep_comments else None

    def more(self) -> int:
        return 1 if self.pos < self.end else 0

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < self.end else -1

    def skip_comment(self) -> int:
        """Skip a (nested) comment, keeping its text (unescaped, unfolded) when asked."""
        data, comment = self.data, self.last_comment
        if comment is not None:
            del comment[:]
        self.pos += 1
        start = self.pos
        level = 1
        while self.pos < self.end:
            char = data[self.pos]
            if char == 0x00:
                if comment is not None and self.nul is not None:
                    comment += data[start : self.pos] + self.nul
                    start = self.pos + 1
            elif char == 0x28:
                level += 1
            elif char == 0x29:
                level -= 1
                if level == 0:
                    if comment is not None:
                        comment += data[start : self.pos]
                    self.pos += 1
                    return self.more()
            elif char == 0x0A:
                if comment is not None:
                    stop = (
                        self.pos - 1
                        if self.pos > start and data[self.pos - 1] == 0x0D
                        else self.pos
                    )
                    comment += data[start:stop]
                    start = self.pos + 1
            elif char == 0x5C:
                self.pos += 1
                if self.pos >= self.end:
                    return -1
                if data[self.pos] in (0x0D, 0x0A, 0x00):
                    self.pos -= 1  # a lone backslash stays
                else:
                    if comment is not None:
                        comment += data[start : self.pos - 1]
                    start = self.pos
            self.pos += 1
        return -1

    def skip_lwsp(self) -> int:
        data = self.data
        while self.pos < self.end:
            char = data[self.pos]
            if char in (0x20, 0x09, 0x0D, 0x0A):
                self.pos += 1
            elif char == 0x28:
                if self.skip_comment() < 0:
                    return -1
            else:
                break
        return self.more()

    def _take(self, run: re.Pattern[bytes], out: bytearray) -> int:
        """Append the run of characters matching `run`, then skip blanks and comments."""
        start = self.pos
        match = run.match(self.data, start)
        self.pos = match.end() if match else start
        out += self.data[start : self.pos]
        return self.skip_lwsp() if self.pos < self.end else 0

    def atom(self, out: bytearray) -> int:
        if self.pos >= self.end or not _is_atext(self.data[self.pos]):
            return -1
        return self._take(_ATEXT_RUN, out)

    def dot_atom(self, out: bytearray) -> int:
        """A domain: blanks are allowed around the dots, but an atom must follow each."""
        data = self.data
        while True:
            if self.pos >= self.end or not _is_atext(data[self.pos]):
                return -1
            ret = self._take(_ATEXT_RUN, out)
            if ret <= 0:
                return ret
            if data[self.pos] != 0x2E:
                return 1
            self.pos += 1
            out.append(0x2E)
            if self.skip_lwsp() <= 0:
                return -1

    def local_dot_atom(self, out: bytearray) -> int:
        """A local part with Dovecot's lenient dots (".a", "a..b", "a." are accepted, but
        no blank may follow a dot)."""
        data = self.data
        ret = -1
        while True:
            while data[self.pos] == 0x2E:
                out.append(0x2E)
                self.pos += 1
                if self.pos >= self.end:
                    return 0
                ret = 1
            if data[self.pos] == 0x40:
                return ret
            ret = self.atom(out)
            if ret <= 0 or data[self.pos] != 0x2E:
                return ret

    def mime_token(self, out: bytearray) -> int:
        return self._take(_TOKEN_RUN, out)

    def quoted_string(self, out: bytearray) -> int:
        data = self.data
        self.pos += 1
        start = self.pos
        while self.pos < self.end:
            char = data[self.pos]
            if char == 0x00:
                if self.nul is not None:
                    out += data[start : self.pos] + self.nul
                    start = self.pos + 1
            elif char == 0x22:
                out += data[start : self.pos]
                self.pos += 1
                return self.skip_lwsp()
            elif char == 0x0A:  # folding: the (CR)LF goes
                stop = self.pos - 1 if self.pos > start and data[self.pos - 1] == 0x0D else self.pos
                out += data[start:stop]
                start = self.pos + 1
            elif char == 0x5C:
                self.pos += 1
                if self.pos >= self.end:
                    return -1
                if data[self.pos] in (0x0D, 0x0A, 0x00):
                    self.pos -= 1  # a lone backslash stays
                else:
                    out += data[start : self.pos - 1]
                    start = self.pos
            self.pos += 1
        return -1

    def phrase(self, out: bytearray) -> int:
        if self.pos >= self.end:
            return 0
        if self.data[self.pos] == 0x2E:
            return -1
        while True:
            if self.data[self.pos] == 0x22:
                ret = self.quoted_string(out)
            else:
                ret = self._take(_ATEXT_DOT_RUN, out)
            if ret <= 0:
                return ret
            char = self.data[self.pos]
            if not _is_atext(char) and char not in (0x22, 0x2E):
                break
            out.append(0x20)
        return self.skip_lwsp()

    def domain(self, out: bytearray) -> int:
        self.pos += 1  # "@"
        if self.skip_lwsp() <= 0:
            return -1
        if self.data[self.pos] != 0x5B:
            return self.dot_atom(out)
        # domain literal, kept with its brackets and backslashes
        data = self.data
        start = self.pos
        self.pos += 1
        while self.pos < self.end:
            char = data[self.pos]
            if char == 0x00:
                if self.nul is not None:
                    out += data[start : self.pos] + self.nul
                    start = self.pos + 1
            elif char == 0x5B:
                return -1
            elif char == 0x5D:
                self.pos += 1
                out += data[start : self.pos]
                return self.skip_lwsp()
            elif char == 0x0A:
                stop = self.pos - 1 if self.pos > start and data[self.pos - 1] == 0x0D else self.pos
                out += data[start:stop]
                start = self.pos + 1
            elif char == 0x5C:
                self.pos += 1
                if self.pos >= self.end:
                    return -1
                if data[self.pos] in (0x0D, 0x0A, 0x00):
                    out += data[start : self.pos]
                    start = self.pos
                    self.pos -= 1
            self.pos += 1
        return -1

    def content_type(self, out: bytearray) -> int:
        """``type/subtype``; a broken one leaves `out` empty, except a lone ``type``."""
        if self.skip_lwsp() <= 0:
            return -1
        start = len(out)
        if self.mime_token(out) <= 0 or len(out) == start:
            return -1
        if self.data[self.pos] != 0x2F:
            del out[start:]
            return -1
        self.pos += 1
        if self.skip_lwsp() <= 0:
            del out[start:]
            return -1
        out.append(0x2F)
        subtype = len(out)
        ret = self.mime_token(out)
        if ret < 0 or len(out) == subtype or (ret > 0 and self.data[self.pos] != 0x3B):
            del out[start:]
            return -1
        return ret

    def content_param(self) -> tuple[int, bytes, bytes]:
        """``; key=value`` -> (1, key, value), (0, ...) at the end, (-1, ...) when broken."""
        if self.pos >= self.end:
            return 0, b"", b""
        if self.data[self.pos] != 0x3B:
            return -1, b"", b""
        self.pos += 1
        if self.skip_lwsp() <= 0:
            return -1, b"", b""
        key = bytearray()
        if self.mime_token(key) <= 0 or self.data[self.pos] != 0x3D:
            return -1, b"", b""
        self.pos += 1
        value = bytearray()
        ret = self.skip_lwsp()
        if ret <= 0:
            pass  # broken / no value
        elif self.data[self.pos] == 0x22:
            ret = self.quoted_string(value)
        elif self.data[self.pos] == 0x3D:
            # broken input: name==?utf-8?b?...?=
            data = self.data
            start = self.pos
            while self.pos < self.end and data[self.pos] not in b"; \t\r\n":
                self.pos += 1
            value += data[start : self.pos]
        else:
            ret = self.mime_token(value)
        return (-1 if ret < 0 else 1), bytes(key), bytes(value)


def _rfc2231_params(lexer: _Lexer) -> list[tuple[bytes, bytes]]:
    """Dovecot's rfc2231_parse: parameters in order, then the RFC 2231 ``name*N[*]``
    pieces merged (still encoded, e.g. ``filename*`` = ``utf-8''x.zip``)."""
    result: list[tuple[bytes, bytes]] = []
    pieces: list[tuple[bytes, int, bool, bytes]] = []
    index = 0
    while True:
        ret, key, value = lexer.content_param()
        if ret == 0:
            break
        key, value = _c_string(key), _c_string(value)
        if ret < 0:
            if lexer.pos >= lexer.end:
                break
            lexer.pos += 1
            continue
        star = key.find(b"*")
        if star < 0:
            result.append((key, value))
            continue
        cursor = star
        if cursor + 1 < len(key):  # "name*N": Dovecot keeps the previous N for "name*"
            cursor += 1
            digits = len(key) - cursor - len(key[cursor:].lstrip(b"0123456789"))
            index = int(key[cursor : cursor + digits]) if digits else 0
            cursor += digits
        extended = key[cursor : cursor + 1] == b"*"
        if extended:
            cursor += 1
        if cursor != len(key):
            result.append((key, value))
        else:
            pieces.append((key[:star], index, extended, value))
    if not pieces:
        return result
    pieces.sort(key=lambda p: (p[0], p[1]))
    i = 0
    while i < len(pieces):
        j = i
        ok = True
        have_extended = False
        while j < len(pieces) and pieces[j][0].lower() == pieces[i][0].lower():
            if pieces[j][1] != j - i:
                ok = False
            have_extended = have_extended or pieces[j][2]
            j += 1
        if not ok:
            for name, idx, ext, value in pieces[i:j]:
                suffix = b"*%d*" % idx if ext else b"*%d" % idx
                result.append((name + suffix, value))
        else:
            merged = bytearray(b"''" if not pieces[i][2] and have_extended else b"")
            for _, _, ext, value in pieces[i:j]:
                merged += value.replace(b"%", b"%25") if not ext and have_extended else value
            name = pieces[i][0] + (b"*" if have_extended else b"")
            result.append((name, bytes(merged)))
        i = j
    return result


# --------------------------------------------------------------------------- addresses


@dataclass(slots=True)
class _Address:
    name: bytes | None = None
    route: bytes | None = None
    mailbox: bytes | None = None
    domain: bytes | None = None
    invalid: bool = False


class _AddressParser:
    """A port of Dovecot's message_address_parse with "fill missing" (MISSING_MAILBOX,
    MISSING_DOMAIN, SYNTAX_ERROR, INVALID_ROUTE placeholders), groups included."""

    def __init__(self, data: bytes) -> None:
        self.lex = _Lexer(data, keep_comments=True)
        self.addr = _Address()
        self.out: list[_Address] = []
        self.buf = bytearray()

    def parse(self) -> list[_Address]:
        if self.lex.skip_lwsp() > 0:
            self._address_list()
        return self.out

    def _add(self) -> None:
        self.out.append(self.addr)
        self.addr = _Address()

    def _add_fixed(self) -> None:
        if self.addr.mailbox is None:
            self.addr.mailbox = b"MISSING_MAILBOX"
            self.addr.invalid = True
        if not self.addr.domain:
            self.addr.domain = b"MISSING_DOMAIN"
            self.addr.invalid = True
        self._add()

    def _local_part(self) -> int:
        del self.buf[:]
        lex = self.lex
        ret = lex.quoted_string(self.buf) if lex.peek() == 0x22 else lex.local_dot_atom(self.buf)
        if ret < 0:
            return -1
        self.addr.mailbox = bytes(self.buf)
        return ret

    def _domain(self) -> int:
        del self.buf[:]
        ret = self.lex.domain(self.buf)
        if ret < 0:
            return -1
        self.addr.domain = bytes(self.buf)
        return ret

    def _domain_list(self) -> int:
        lex = self.lex
        del self.buf[:]
        while True:
            if lex.pos >= lex.end:
                return 0
            if lex.peek() != 0x40:
                break
            if self.buf:
                self.buf.append(0x2C)
            self.buf.append(0x40)
            ret = lex.domain(self.buf)
            if ret <= 0:
                return ret
            while lex.skip_lwsp() > 0 and lex.peek() == 0x2C:
                lex.pos += 1
        self.addr.route = bytes(self.buf)
        return 1

    def _angle_addr(self) -> int:
        lex = self.lex
        lex.pos += 1  # "<"
        if lex.skip_lwsp() <= 0:
            return -1
        if lex.peek() == 0x40:
            if self._domain_list() > 0 and lex.peek() == 0x3A:
                lex.pos += 1
            else:
                self.addr.route = b"INVALID_ROUTE"
                if lex.pos >= lex.end:
                    return -1
            if lex.skip_lwsp() <= 0:
                return -1
        if lex.peek() != 0x3E:
            if self._local_part() <= 0:
                return -1
            if lex.peek() == 0x40 and self._domain() <= 0:
                return -1
        if lex.peek() != 0x3E:
            return -1
        lex.pos += 1
        return lex.skip_lwsp()

    def _name_addr(self) -> int:
        lex = self.lex
        del self.buf[:]
        if lex.phrase(self.buf) <= 0 or lex.peek() != 0x3C:
            return -1
        self.addr.name = bytes(self.buf) or None
        if self._angle_addr() < 0:
            self.addr.domain = b"SYNTAX_ERROR"
            self.addr.invalid = True
        return lex.more()

    def _addr_spec(self) -> int:
        lex = self.lex
        assert lex.last_comment is not None
        del lex.last_comment[:]
        quoted = lex.peek() == 0x22
        ret = self._local_part()
        ret2 = -2
        if ret <= 0:
            self.addr.invalid = True
        if ret != 0 and lex.pos < lex.end and lex.peek() == 0x40:
            ret2 = self._domain()
            if ret2 <= 0:
                ret = ret2
        if lex.last_comment:
            self.addr.name = bytes(lex.last_comment)
        elif ret2 == -2:
            # "user" alone is a mailbox; "user more words" is a display name
            self.buf.append(0x20)
            before = len(self.buf)
            lex.phrase(self.buf)
            if len(self.buf) != before:
                self.addr.mailbox = None
                self.addr.name = bytes(self.buf)
            elif not quoted:
                self.addr.domain = b""
            self.addr.invalid = True
            ret = -1
        return ret

    def _mailbox(self) -> int:
        start = self.lex.pos
        ret = self._name_addr()
        if ret < 0:
            self.lex.pos = start
            ret = self._addr_spec()
            addr = self.addr
            lone_word = addr.mailbox is not None and addr.domain is None
            if addr.invalid and addr.name is None and lone_word:
                addr.name, addr.mailbox = addr.mailbox, None
        if ret < 0:
            self.addr.invalid = True
        self._add_fixed()
        return ret

    def _group(self) -> int:
        lex = self.lex
        del self.buf[:]
        if lex.phrase(self.buf) <= 0 or lex.peek() != 0x3A:
            return -1
        lex.pos += 1
        ret = lex.skip_lwsp()
        self.addr.mailbox = bytes(self.buf)
        self._add()
        if ret > 0 and lex.peek() != 0x3B:
            while True:
                self._mailbox()  # a broken mailbox: go on anyway
                if lex.pos >= lex.end or lex.peek() != 0x2C:
                    break
                lex.pos += 1
                if lex.skip_lwsp() <= 0:
                    ret = -1
                    break
        if ret >= 0:
            if lex.pos >= lex.end or lex.peek() != 0x3B:
                ret = -1
            else:
                lex.pos += 1
                ret = lex.skip_lwsp()
        self._add()  # end of group: all NIL
        return 0 if ret == 0 else 1

    def _address_list(self) -> None:
        lex = self.lex
        while True:
            start = lex.pos
            ret = self._group()
            if ret < 0:
                lex.pos = start
                self.addr = _Address()
                ret = self._mailbox()
            if ret == 0:
                return
            if lex.pos >= lex.end or lex.peek() != 0x2C:
                return
            lex.pos += 1
            ret = lex.skip_lwsp()
            if ret <= 0:
                if ret < 0:
                    self._add_fixed()
                return


_PLACEHOLDERS = (b"MISSING_MAILBOX", b"MISSING_DOMAIN", b"SYNTAX_ERROR", b"INVALID_ROUTE")


def address_text(value: bytes) -> bytes:
    """An address field rewritten from its parsed form, as Dovecot's SEARCH matches it
    (message_address_write): ``name <local@domain>`` or ``local@domain``, groups as
    ``group: a, b;``, comments dropped (a trailing one is the display name). So
    ``<a (x)@ (y) b.org>`` matches ``a@b.org``, which its written text does not hold."""
    out: list[bytes] = []
    pending: list[bytes] = []  # the addresses of the list (or of the open group)
    group: bytes | None = None
    for address in _AddressParser(value).parse():
        if address.domain is None:
            if address.mailbox is not None:  # a group opens
                if pending:
                    out.append(b", ".join(pending))
                pending, group = [], address.mailbox
            elif group is not None:  # ... and closes
                out.append(group + b": " + b", ".join(pending) + b";")
                pending, group = [], None
            continue
        spec = b"@".join(
            part
            for part in (address.mailbox, address.domain)
            if part is not None and part not in _PLACEHOLDERS
        )
        if address.name is not None:
            spec = address.name + (b" <" + spec + b">" if spec else b"")
        if spec:
            pending.append(spec)
    if group is not None:
        out.append(group + b": " + b", ".join(pending) + b";")
    elif pending:
        out.append(b", ".join(pending))
    return b", ".join(out)


def _address_list_value(values: Sequence[bytes]) -> Value:
    """``(addr addr ...)``: RFC 3501 puts no space between the addresses."""
    addresses = [a for value in values for a in _AddressParser(value).parse()]
    if not addresses:
        return None
    items = (
        [
            None if a.name is None else _for_humans(a.name),
            _nstring(a.route),
            _nstring(a.mailbox),
            _nstring(a.domain),
        ]
        for a in addresses
    )
    return [Raw(b"".join(encode(item) for item in items))]


_ENVELOPE_FIELDS = (
    b"date",
    b"subject",
    b"from",
    b"sender",
    b"reply-to",
    b"to",
    b"cc",
    b"bcc",
    b"in-reply-to",
    b"message-id",
)


def _envelope(fields: Sequence[_Field]) -> list[Value]:
    """RFC 3501 ENVELOPE from a header. Like Dovecot, a repeated address field adds its
    addresses, a repeated string field (Subject, Date, ...) replaces the earlier one."""
    found: dict[bytes, list[bytes]] = {}
    for item in fields:
        name = item.name.lower()
        if item.colon and name in _ENVELOPE_FIELDS:
            found.setdefault(name, []).append(item.value)

    def last(name: bytes) -> bytes | None:
        values = found.get(name)
        return _clean(values[-1]) if values else None

    def addresses(name: bytes) -> Value:
        return _address_list_value(found.get(name, ()))

    subject = last(b"subject")
    sender_from = addresses(b"from")
    sender = addresses(b"sender")
    reply_to = addresses(b"reply-to")
    return [
        _nstring_nolf(last(b"date")),
        None if subject is None else _for_humans(subject),
        sender_from,
        sender if sender is not None else sender_from,
        reply_to if reply_to is not None else sender_from,
        addresses(b"to"),
        addresses(b"cc"),
        addresses(b"bcc"),
        _nstring_nolf(last(b"in-reply-to")),
        _nstring_nolf(last(b"message-id")),
    ]


# --------------------------------------------------------------------------- MIME parts


@dataclass(slots=True)
class _ContentData:
    """What BODYSTRUCTURE shows of a part's ``Content-*`` fields (Dovecot's
    message_part_data): the first field of each kind wins."""

    type: bytes | None = None
    subtype: bytes | None = None
    params: list[tuple[bytes, bytes]] = field(default_factory=list)
    encoding: bytes | None = None
    id: bytes | None = None
    description: bytes | None = None
    md5: bytes | None = None
    disposition: bytes | None = None
    disposition_params: list[tuple[bytes, bytes]] = field(default_factory=list)
    language: list[bytes] | None = None
    location: bytes | None = None


def _content_type(value: bytes) -> tuple[bytes, int, _Lexer]:
    """``type/subtype`` as far as it parses, the parser's status, and the lexer (left at
    the parameters)."""
    lexer = _Lexer(value)
    lexer.skip_lwsp()
    out = bytearray()
    ret = lexer.content_type(out)
    return bytes(out), ret, lexer


def _content_data(fields: Sequence[_Field]) -> _ContentData:
    data = _ContentData()
    disposition_done = False
    for item in fields:
        name = item.name.lower()
        if not item.colon or not name.startswith(b"content-"):
            continue
        value = item.value
        kind = name[8:]
        if kind == b"type" and data.type is None:
            text, ret, lexer = _content_type(value)
            slash = text.find(b"/")
            data.type = text if slash < 0 else text[:slash]
            data.subtype = b"" if slash < 0 else text[slash + 1 :]
            if ret >= 0:
                data.params = _rfc2231_params(lexer)
        elif kind == b"transfer-encoding" and data.encoding is None:
            lexer = _Lexer(value)
            lexer.skip_lwsp()
            out = bytearray()
            if lexer.mime_token(out) >= 0 and lexer.skip_lwsp() == 0 and out:
                data.encoding = bytes(out)
        elif kind == b"id" and data.id is None:
            data.id = _clean(value)
        elif kind == b"md5" and data.md5 is None:
            data.md5 = _clean(value)
        elif kind == b"description" and data.description is None:
            data.description = _clean(value)
        elif kind == b"location" and data.location is None:
            data.location = _clean(value)
        elif kind == b"language" and data.language is None:
            lexer = _Lexer(value)
            lexer.skip_lwsp()
            langs: list[bytes] = []
            out = bytearray()
            while lexer.atom(out) >= 0:
                langs.append(bytes(out))
                del out[:]
                if lexer.peek() != 0x2C:
                    break
                lexer.pos += 1
                lexer.skip_lwsp()
            if langs:
                data.language = langs
        elif kind == b"disposition" and not disposition_done:
            # Dovecot re-parses a later Content-Disposition while none had parameters
            lexer = _Lexer(value)
            lexer.skip_lwsp()
            out = bytearray()
            if lexer.mime_token(out) < 0:
                continue
            data.disposition = bytes(out)
            data.disposition_params = _rfc2231_params(lexer)
            disposition_done = bool(data.disposition_params)
    return data


class _Part:
    """A MIME part: ``raw[start:header_end]`` is its header (MIME header for a body part),
    ``raw[header_end:body_end]`` its body. A message/rfc822 part has exactly one child,
    the encapsulated message."""

    __slots__ = (
        "body_end",
        "boundary",
        "children",
        "depth",
        "digest",
        "fields",
        "header_end",
        "is_mime",
        "multipart",
        "parent",
        "rfc822",
        "start",
        "text",
    )

    start: int
    header_end: int
    body_end: int
    parent: _Part | None
    depth: int
    fields: list[_Field]
    children: list[_Part]
    is_mime: bool
    multipart: bool
    digest: bool
    rfc822: bool
    text: bool
    boundary: bytes | None

    def __init__(self, start: int, parent: _Part | None) -> None:
        self.start = self.header_end = self.body_end = start
        self.parent = parent
        self.depth = 0 if parent is None else parent.depth + 1
        self.fields = []
        self.children = []
        # a child of a multipart is MIME without needing Mime-Version
        self.is_mime = parent is not None and parent.multipart
        self.multipart = self.digest = self.rfc822 = self.text = False
        self.boundary = None
        if parent is not None:
            parent.children.append(self)

    def classify(self, fields: Sequence[_Field]) -> None:
        """Flags from the header, as Dovecot's message parser sets them."""
        seen_type = False
        for item in fields:
            name = item.name.lower()
            if not item.colon:
                continue
            if name == b"mime-version":
                self.is_mime = True
            elif name == b"content-type":
                self.is_mime = True
                if seen_type:
                    continue
                seen_type = True
                text, ret, lexer = _content_type(item.value)
                lowered = text.lower()
                if ret < 0:
                    pass
                elif lowered == b"message/rfc822":
                    self.rfc822 = True
                elif lowered.startswith(b"text") and lowered[4:5] in (b"", b"/"):
                    self.text = True
                elif lowered.startswith(b"multipart/"):
                    self.multipart = True
                    self.digest = lowered == b"multipart/digest"
                    for key, value in _rfc2231_params(lexer):
                        if key.lower() == b"boundary":
                            # like Dovecot: longer boundaries are cut (so a close
                            # delimiter "--long--" is not recognised as one)
                            self.boundary = value[:MAX_BOUNDARY]
                            break
        if not self.is_mime:
            self.multipart = self.digest = self.rfc822 = self.text = False
            self.boundary = None
        if not seen_type or not self.is_mime:
            parent = self.parent
            if parent is not None and parent.digest:
                self.rfc822 = True
            else:
                self.text = True


class _TreeBuilder:
    """Dovecot's MIME parser over a complete buffer: boundaries of every open multipart
    are searched at each line start, the longest matching one wins."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.size = len(raw)
        self.boundaries: list[tuple[bytes, _Part]] = []  # innermost last
        self.count = 1

    def match(self, offset: int) -> tuple[int, bool] | None:
        """(index in `boundaries`, is close delimiter) for a boundary line at `offset`."""
        raw = self.raw
        if not self.boundaries or not raw.startswith(b"--", offset):
            return None
        best = -1
        best_len = -1
        for index in range(len(self.boundaries) - 1, -1, -1):
            boundary = self.boundaries[index][0]
            if len(boundary) > best_len and raw.startswith(boundary, offset + 2):
                best, best_len = index, len(boundary)
        if best < 0:
            return None
        after = offset + 2 + best_len
        return best, raw[after : after + 2] == b"--"

    def build(self) -> _Part:
        root = _Part(0, None)
        part = root
        pos = 0
        in_header = True
        while True:
            if in_header:
                hit, pos = self.header(part, pos)
                if part.rfc822 and not self.room(part):
                    part.rfc822 = False  # too deep: the encapsulated message stays opaque
                if hit is not None:
                    # the header is cut by a boundary line: this part (and the empty
                    # message it encapsulates) ends before the newline preceding that
                    # line, which Dovecot counts in the body of the enclosing part
                    line, index, close = hit
                    if part.rfc822:
                        self.add(part.header_end, part)
                    parent = part.parent
                    assert parent is not None  # the root is never inside a boundary
                    part, pos, in_header = self.finish(parent, line, 0, index, close)
                    if pos < 0:
                        return root
                    continue
                if part.rfc822:
                    part = self.add(pos, part)
                    continue
                in_header = False
            found = self.scan(pos)
            if found is None:
                self.close(part, self.size)
                return root
            line, newline, index, close = found
            part, pos, in_header = self.finish(part, line, newline, index, close)
            if pos < 0:
                return root

    def room(self, parent: _Part) -> bool:
        return self.count < MAX_PARTS and parent.depth < MAX_DEPTH

    def add(self, start: int, parent: _Part) -> _Part:
        self.count += 1
        return _Part(start, parent)

    def header(self, part: _Part, pos: int) -> tuple[tuple[int, int, bool] | None, int]:
        """Parse the header of `part`; (boundary line, index, close) when a boundary line
        cut it short."""
        hit: list[tuple[int, bool]] = []

        def check(offset: int) -> bool:
            found = self.match(offset)
            if found is None or self.boundaries[found[0]][1] is part:
                return False
            hit.append(found)
            return True

        def on_eoh(fields: list[_Field]) -> None:
            part.classify(fields)
            if part.multipart and part.boundary is not None:
                if self.room(part):
                    self.boundaries.append((part.boundary, part))
                else:
                    part.multipart = part.digest = False

        header = _parse_header(self.raw, pos, check, on_eoh)
        part.fields = header.fields
        part.header_end = header.end
        part.body_end = header.end
        if not header.eoh:
            part.classify(header.fields)
            if part.multipart and not self.room(part):
                part.multipart = part.digest = False
        if not hit:
            return None, header.end
        index, close = hit[0]
        return (header.interrupted_at, index, close), header.end

    def scan(self, pos: int) -> tuple[int, int, int, bool] | None:
        """The next boundary line from `pos` (a line start, whose own newline is not in
        the body): (line offset, newline length, index, close)."""
        if not self.boundaries:
            return None
        raw = self.raw
        found = self.match(pos)
        if found is not None:
            return pos, 0, found[0], found[1]
        cursor = pos
        while True:
            lf = raw.find(b"\n--", cursor)
            if lf < 0:
                return None
            found = self.match(lf + 1)
            if found is not None:
                newline = 2 if lf > pos and raw[lf - 1] == 0x0D else 1
                return lf + 1, newline, found[0], found[1]
            cursor = lf + 1

    def close(self, part: _Part | None, end: int) -> None:
        while part is not None:
            part.body_end = end
            part = part.parent

    def finish(
        self, part: _Part, line: int, newline: int, index: int, close: bool
    ) -> tuple[_Part, int, bool]:
        """A boundary line at `line`: close the parts inside its multipart, skip the line;
        the next part starts after it (or the epilogue follows). pos -1: end of input."""
        owner = self.boundaries[index][1]
        end = line - newline
        current: _Part | None = part
        while current is not None and current is not owner:
            current.body_end = end
            current = current.parent
        del self.boundaries[index if close else index + 1 :]
        lf = self.raw.find(b"\n", line)
        if lf < 0:
            self.close(owner, self.size)
            return owner, -1, False
        pos = lf + 1
        if self.boundaries and self.boundaries[-1][1] is owner:
            if self.count < MAX_PARTS:
                return self.add(pos, owner), pos, True
            del self.boundaries[-1]  # too many parts: the rest of this multipart is opaque
        return owner, pos, False


# --------------------------------------------------------------------------- BODYSTRUCTURE


def _string(value: bytes) -> Value:
    return _quote_or_literal(value)


def _params(params: Sequence[tuple[bytes, bytes]], default_charset: bool) -> Value:
    items: list[Value] = []
    for name, value in params:
        items += [_string(name), _string(value)]
    if default_charset and not any(name.lower() == b"charset" for name, _ in params):
        items += [b"charset", DEFAULT_CHARSET]
    return items or None


def _extension(data: _ContentData) -> list[Value]:
    disposition: Value = None
    if data.disposition is not None:
        disposition = [_string(data.disposition), _params(data.disposition_params, False)]
    language: Value = None if data.language is None else [_string(x) for x in data.language]
    return [disposition, language, _nstring_nolf(data.location)]


_EMPTY_TEXT: list[Value] = [b"text", b"plain", [b"charset", DEFAULT_CHARSET], None, None]


class _Structure:
    """BODYSTRUCTURE (`extensible`) or BODY of a part tree, field by field as Dovecot
    writes it: sizes and line counts of the octets as stored, text/* gets a default
    charset, a multipart without parts shows one empty text/plain."""

    def __init__(self, raw: bytes, extensible: bool) -> None:
        self.raw = raw
        self.extensible = extensible

    def part(self, part: _Part) -> list[Value]:
        data = _content_data(part.fields) if part.is_mime else _ContentData()
        if part.multipart:
            return self.multipart(part, data)
        return self.single(part, data)

    def multipart(self, part: _Part, data: _ContentData) -> list[Value]:
        children: list[Value] = [self.part(child) for child in part.children]
        if not children:  # no body parts: Dovecot shows one empty text/plain
            empty: list[Value] = [*_EMPTY_TEXT, b"7bit", 0, 0]
            children.append([*empty, None, None, None, None] if self.extensible else empty)
        # RFC 3501 body-type-mpart = 1*body SP media-subtype: no space between the parts
        out: list[Value] = [Raw(b"".join(encode(child) for child in children))]
        out.append(_string(data.subtype or b""))
        if self.extensible:
            out.append(_params(data.params, False))
            out += _extension(data)
        return out

    def single(self, part: _Part, data: _ContentData) -> list[Value]:
        out: list[Value]
        if part.rfc822:
            out = [b"message", b"rfc822"]
            text = False
        elif data.type is None:
            out = [b"text", b"plain"]
            text = True
        else:
            out = [_string(data.type), _string(data.subtype or b"")]
            text = data.type.lower() == b"text"
        body_size = part.body_end - part.header_end
        out += [
            _params(data.params, text),
            _nstring_nolf(data.id),
            _nstring_nolf(data.description),
            b"7bit" if data.encoding is None else _string(data.encoding),
            body_size,
        ]
        lines = self.raw.count(b"\n", part.header_end, part.body_end)
        if text:
            out.append(lines)
        elif part.rfc822 and part.children:
            child = part.children[0]
            out += [_envelope(child.fields), self.part(child), lines]
        if self.extensible:
            out.append(_nstring_nolf(data.md5))
            out += _extension(data)
        return out


# --------------------------------------------------------------------------- the message


class ParsedMessage:
    """One message's raw octets and what FETCH derives from them, computed on demand.

    Cheap to keep around: only the raw bytes are held until ENVELOPE (top header only)
    or BODYSTRUCTURE / a body section (the MIME tree) is asked for."""

    __slots__ = ("_header", "_raw", "_tree")

    def __init__(self, raw: bytes) -> None:
        self._raw = bytes(raw)
        self._header: _Header | None = None
        self._tree: _Part | None = None

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def size(self) -> int:
        """RFC822.SIZE: the octets that BODY[] returns."""
        return len(self._raw)

    def _top_header(self) -> _Header:
        if self._header is None:
            if self._tree is not None:
                tree = self._tree
                self._header = _Header(tree.fields, tree.header_end, True)
            else:
                self._header = _parse_header(self._raw, 0)
        return self._header

    def _root(self) -> _Part:
        if self._tree is None:
            self._tree = _TreeBuilder(self._raw).build()
        return self._tree

    def header_fields(self) -> list[tuple[bytes, bytes]]:
        """(name, unfolded value) of every top-level header field, in order."""
        return [(f.name, f.value) for f in self._top_header().fields]

    def envelope(self) -> Value:
        """ENVELOPE (RFC 3501 §7.4.2): strings as written in the header, unfolded."""
        return _envelope(self._top_header().fields)

    def bodystructure(self, extensible: bool = True) -> Value:
        """BODYSTRUCTURE, or BODY (non-extensible) with ``extensible=False``."""
        return _Structure(self._raw, extensible).part(self._root())

    def _find(self, numbers: Sequence[int]) -> _Part | None:
        """Dovecot's imap_msgpart_find: part 1 of a non-multipart part is the part itself;
        going deeper through a message/rfc822 part enters the encapsulated message."""
        part: _Part | None = self._root()
        for depth, number in enumerate(numbers):
            if part is None:
                return None
            more = depth + 1 < len(numbers)
            if part.multipart:
                part = part.children[number - 1] if 0 < number <= len(part.children) else None
            elif number != 1 or (more and not part.rfc822):
                return None
            if part is not None and part.rfc822 and more:
                part = part.children[0] if part.children else None
        return part

    def section(self, section: Section) -> bytes | None:
        """The octets of BODY[section] (before any <partial>), None when the part does not
        exist or is not a message/rfc822 for HEADER/TEXT (Dovecot then answers ``""``)."""
        raw = self._raw
        text = section.text
        if not section.part:
            if text is None:
                return raw
            header = self._top_header()
            if text == "HEADER":
                return raw[: header.end]
            if text == "TEXT":
                return raw[header.end :]
            if text == "MIME":
                return None
            # Dovecot serves HEADER.FIELDS of the message from its header cache, which
            # always ends with CRLF (completing a last line without newline if need be)
            tail = b"\r\n" if text == "HEADER.FIELDS" else None
            return self._filter(section, header, tail)
        part = self._find(section.part)
        if part is None:
            return None
        if text is None:
            return raw[part.header_end : part.body_end]
        if text == "MIME":
            return raw[part.start : part.header_end]
        if not part.rfc822 or not part.children:
            return None
        child = part.children[0]
        if text == "HEADER":
            return raw[child.start : child.header_end]
        if text == "TEXT":
            return raw[child.header_end : child.body_end]
        # Dovecot filters the stream from the part on, up to a blank line or the end of
        # the message, whatever the boundaries say
        return self._filter(section, _parse_header(raw, child.start), None)

    def _filter(self, section: Section, header: _Header, tail: bytes | None) -> bytes:
        """HEADER.FIELDS[.NOT]: the (un)listed fields as written, in order, then the blank
        line when the header has one (or `tail`)."""
        raw = self._raw
        wanted = {name.lower().encode("utf-8", "replace") for name in section.fields}
        include = section.text == "HEADER.FIELDS"
        out = bytearray()
        for item in header.fields:
            if (item.colon and item.name.lower() in wanted) == include:
                out += raw[item.start : item.end]
        if tail is not None:
            out += tail
        elif header.eoh:  # the blank line is just a newline
            out += b"\r\n" if raw.endswith(b"\r\n", 0, header.end) else b"\n"
        return bytes(out)

    def rfc822_header(self) -> bytes:
        """RFC822.HEADER == BODY.PEEK[HEADER]."""
        return self._raw[: self._top_header().end]

    def rfc822_text(self) -> bytes:
        """RFC822.TEXT == BODY[TEXT]."""
        return self._raw[self._top_header().end :]
