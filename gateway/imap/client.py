"""Client side of the sans-I/O IMAP codec: a server's bytes in, response events out.

The gateway talks to backend IMAP servers with it and, as a proxy, relays backend bytes to
its own client: every event carries `raw`, the exact octets of the whole response (line
parts, CRLFs and literal octets), so forwarding `raw` keeps both sides in step with
literals without re-encoding anything. No sockets here, in the style of h11.

Framing is the only thing parsed eagerly; data values (`Untagged.values`) are parsed on
demand, since a proxy forwards most responses without looking inside them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Final, TypeAlias, overload

from gateway.imap.response import Atom

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_LITERAL_SIZE",
    "DEFAULT_MAX_RESPONSE_SIZE",
    "STATUS_KINDS",
    "ClientConnection",
    "Continuation",
    "Event",
    "ParseError",
    "ParsedValue",
    "ProtocolViolation",
    "ResponseParser",
    "Tagged",
    "Untagged",
    "parse_capabilities",
    "parse_code",
    "parse_values",
]

DEFAULT_MAX_LINE_LENGTH: Final = 64 * 1024
DEFAULT_MAX_LITERAL_SIZE: Final = 256 * 1024 * 1024
DEFAULT_MAX_RESPONSE_SIZE: Final = 512 * 1024 * 1024
DEFAULT_MAX_DEPTH: Final = 100  # parenthesis nesting: deep BODYSTRUCTUREs, bounded recursion

#: Untagged kinds whose rest is resp-text (human text, never literals), not data.
STATUS_KINDS: Final = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})

ParsedValue: TypeAlias = "int | bytes | Atom | list[ParsedValue] | None"

# tag = 1*<any ASTRING-CHAR except "+">: CHAR above SP minus atom-specials except "]".
_TAG = rb"[!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+"
_TAGGED = re.compile(rb"(" + _TAG + rb") (OK|NO|BAD)(?= |\Z)", re.IGNORECASE)
_UNTAGGED = re.compile(rb"\* (?:([0-9]{1,20}) )?([A-Za-z][^\x00-\x20\x7f(){\"\[\]]*)(?= |\Z)")
_CR, _LF = 0x0D, 0x0A


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tagged:
    """``tag OK|NO|BAD [code] text``: completes the command sent with `tag`.
    `status` is upper case; `code` is the text inside the brackets, if any."""

    tag: str
    status: str
    code: str | None
    text: str
    raw: bytes


@dataclass(frozen=True)
class Untagged:
    """``* ...``: server data or an untagged status. Only `raw` is stored; the helpers parse
    it lazily (a proxy forwards most of these without looking inside)."""

    raw: bytes

    @cached_property
    def _head(self) -> tuple[int | None, str, int]:
        """(number, kind as sent, where the kind ends)."""
        match = _UNTAGGED.match(_first_line(self.raw))
        if match is None:  # not built by ResponseParser: be tolerant, never raise
            return None, "", len(self.raw)
        number = match.group(1)
        kind = match.group(2).decode("utf-8", "replace")
        return (int(number) if number else None), kind, match.end()

    @property
    def kind(self) -> str:
        """``OK``, ``CAPABILITY``, ``LIST``... or, for ``* 3 EXISTS``, ``EXISTS``."""
        return self._head[1].upper()

    @property
    def number(self) -> int | None:
        """The leading number of ``* 3 EXISTS`` / ``* 1 FETCH (...)``, else None."""
        return self._head[0]

    @cached_property
    def _status(self) -> tuple[str | None, str]:
        if self.kind not in STATUS_KINDS:
            return None, ""
        return _split_resp_text(_first_line(self.raw)[self._head[2] :])

    @property
    def code(self) -> str | None:
        """The response code of an untagged status (``* OK [UIDNEXT 4] ...``), else None."""
        return self._status[0]

    @property
    def text(self) -> str:
        """The human text of an untagged status, else ""."""
        return self._status[1]

    def values(self, max_depth: int = DEFAULT_MAX_DEPTH) -> list[ParsedValue]:
        """Everything after ``* `` as data: ``* 3 EXISTS`` gives ``[3, Atom("EXISTS")]``.
        Meant for data responses; raises `ParseError` when the bytes are not IMAP data."""
        return parse_values(self.raw[2:], max_depth=max_depth)


@dataclass(frozen=True, slots=True)
class Continuation:
    """``+ text``: the server wants more (literal octets, a SASL response, IDLE's DONE).
    `text` is what follows ``+ `` (a base64 challenge, or human text)."""

    text: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The backend sent something that is not IMAP or broke a limit. Fatal: the parser
    stops, the gateway answers its client ``* BYE`` and closes both sides."""

    message: str


Event: TypeAlias = Tagged | Untagged | Continuation | ProtocolViolation


def _first_line(raw: bytes) -> bytes:
    end = raw.find(b"\r\n")
    return raw if end < 0 else raw[:end]


def _split_resp_text(rest: bytes) -> tuple[str | None, str]:
    """resp-text after the status word (leading SP included): optional ``[code]``, text."""
    if rest.startswith(b" "):
        rest = rest[1:]
    code: str | None = None
    if rest.startswith(b"["):
        close = rest.find(b"]")
        if close > 0:
            code = rest[1:close].decode("utf-8", "replace")
            rest = rest[close + 1 :]
            if rest.startswith(b" "):
                rest = rest[1:]
    return code, rest.decode("utf-8", "replace")


# -- response framing ---------------------------------------------------------------------


class ResponseParser:
    """Frames a server's byte stream into responses, h11 style: feed `receive_data`, then
    call `next_event` until it returns None (need more data).

    A response is a line plus the literals it announces (``{n}`` CRLF then n octets, then
    the line goes on). Status responses and continuations never carry literals, so text
    that happens to end in ``{5}`` does not desynchronise us. Bounds: the line parts of one
    response (CRLFs and literal octets excluded) may total `max_line_length`, a literal
    `max_literal_size`, the whole response `max_response_size`; the buffer never holds more
    than the current response plus what the caller fed beyond it. Breaking a bound or the
    syntax yields one `ProtocolViolation`, after which the parser is dead (None forever,
    further data dropped). ``receive_data(b"")`` means EOF: a response cut short then also
    yields a `ProtocolViolation`.
    """

    def __init__(
        self,
        *,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_literal_size: int = DEFAULT_MAX_LITERAL_SIZE,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
    ) -> None:
        self.max_line_length = max_line_length
        self.max_literal_size = max_literal_size
        self.max_response_size = max_response_size
        # The current response always starts at offset 0 of _buf (consumed bytes are
        # deleted, which CPython's bytearray does in O(1) by moving its start pointer).
        self._buf = bytearray()
        self._segment = 0  # start of the current line part
        self._scan = 0  # where to resume looking for LF: never rescan a byte
        self._line_used = 0  # line-part bytes of this response so far
        self._literal_end: int | None = None  # waiting for literal octets up to here
        self._literals_allowed = False  # decided on the first line part
        self._eof = False
        self._failed: ProtocolViolation | None = None
        self._reported = False

    @property
    def failed(self) -> ProtocolViolation | None:
        """The violation that killed the parser, if any."""
        return self._failed

    def receive_data(self, data: bytes) -> None:
        """Append bytes from the server; ``b""`` signals end of stream."""
        if self._failed is not None:
            return
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("receive_data after end of stream")
        self._buf += data

    def take_buffer(self) -> bytes:
        """Bytes received but not yet returned as events, removed from the parser: for a
        caller that stops parsing and relays the rest raw (the proxy, after logging in)."""
        rest = bytes(self._buf)
        self._buf = bytearray()
        self._segment = self._scan = self._line_used = 0
        self._literal_end = None
        return rest

    def next_event(self) -> Event | None:
        """The next complete response, a `ProtocolViolation`, or None for more data."""
        if self._failed is not None:
            if self._reported:
                return None
            self._reported = True
            return self._failed
        try:
            return self._next()
        except _Violation as error:
            self._failed = ProtocolViolation(str(error))
            self._reported = True
            self._buf = bytearray()
            return self._failed

    def _next(self) -> Event | None:
        buf = self._buf
        while True:
            if self._literal_end is not None:
                if len(buf) < self._literal_end:
                    return self._need_more()
                self._segment = self._scan = self._literal_end
                self._literal_end = None
            lf = buf.find(b"\n", self._scan)
            if lf < 0:
                self._scan = len(buf)
                # +1: a CR at the very end may still be followed by its LF.
                if self._line_used + len(buf) - self._segment > self.max_line_length + 1:
                    raise _Violation(f"response line longer than {self.max_line_length} octets")
                return self._need_more()
            if lf == self._segment or buf[lf - 1] != _CR:
                raise _Violation("bare LF in a response line")
            end = lf - 1  # the CR
            self._line_used += end - self._segment
            if self._line_used > self.max_line_length:
                raise _Violation(f"response line longer than {self.max_line_length} octets")
            if self._segment == 0:
                first = self._classify(end)
                if first is not None:
                    return self._emit(lf + 1, first)
            if self._literals_allowed and self._announce_literal(lf, end):
                continue
            return self._emit(lf + 1, None)

    def _need_more(self) -> Event | None:
        if self._eof and self._buf:
            raise _Violation("connection closed in the middle of a response")
        return None

    def _classify(self, end: int) -> Event | None:
        """Check the first line part; a one-line response (status, continuation) is
        returned at once, data responses go on to look for literals."""
        buf = self._buf
        first = buf[0]
        if first == 0x2B:  # "+"
            prompt = bytes(buf[2 if buf[1:2] == b" " else 1 : end])
            return Continuation(text=prompt, raw=b"")
        if first == 0x2A:  # "*"
            match = _UNTAGGED.match(buf, 0, end)
            if match is None:
                raise _Violation("malformed untagged response")
            kind = match.group(2).decode("utf-8", "replace").upper()
            self._literals_allowed = match.group(1) is not None or kind not in STATUS_KINDS
            return None
        match = _TAGGED.match(buf, 0, end)
        if match is None:
            raise _Violation("not an IMAP response: " + repr(bytes(buf[: min(end, 40)])))
        code, text = _split_resp_text(bytes(buf[match.end() : end]))
        return Tagged(
            tag=match.group(1).decode("ascii"),
            status=match.group(2).decode("ascii").upper(),
            code=code,
            text=text,
            raw=b"",
        )

    def _announce_literal(self, lf: int, end: int) -> bool:
        """If the line part ends with ``{n}`` (or literal8 ``~{n}``), wait for n octets."""
        buf, segment = self._buf, self._segment
        close = end - 1
        if close <= segment or buf[close] != 0x7D:  # "}"
            return False
        digits = close
        floor = max(segment, close - 21)  # 20 digits are plenty; no long walk back
        while digits > floor and 0x30 <= buf[digits - 1] <= 0x39:
            digits -= 1
        if digits == close:
            return False
        if close - digits > 20:
            brace = buf.rfind(b"{", segment, digits)
            if brace >= 0 and buf[brace + 1 : close].isdigit():
                raise _Violation("literal size out of range")
            return False
        if digits == segment or buf[digits - 1] != 0x7B:  # "{"
            return False
        size = int(buf[digits:close])
        if size > self.max_literal_size:
            raise _Violation(f"literal of {size} octets exceeds {self.max_literal_size}")
        literal_end = lf + 1 + size
        if literal_end > self.max_response_size:
            raise _Violation(f"response larger than {self.max_response_size} octets")
        self._literal_end = literal_end
        return True

    def _emit(self, total: int, event: Event | None) -> Event:
        if total > self.max_response_size:
            raise _Violation(f"response larger than {self.max_response_size} octets")
        with memoryview(self._buf) as view, view[:total] as part:
            raw = part.tobytes()  # one copy, even for a large literal
        del self._buf[:total]
        self._segment = self._scan = self._line_used = 0
        self._literals_allowed = False
        if isinstance(event, Tagged):
            return Tagged(event.tag, event.status, event.code, event.text, raw)
        if isinstance(event, Continuation):
            return Continuation(event.text, raw)
        return Untagged(raw)


class _Violation(Exception):
    """Internal: unwinds the framing code to the single place that records the failure."""


# -- data values --------------------------------------------------------------------------


class ParseError(ValueError):
    """Bytes that are not IMAP data values (or nest deeper than allowed)."""


_ATOM = re.compile(rb'(?:\[[^\]\r\n]*\]|[^\x00-\x20\x7f(){"])+')
_QUOTED = re.compile(rb'"((?:[^"\\\r\n]|\\[^\r\n])*)"')
_UNESCAPE = re.compile(rb"\\([^\r\n])")
_LITERAL = re.compile(rb"~?\{([0-9]{1,20})\}\r\n")


def parse_values(data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> list[ParsedValue]:
    """Parse space-separated IMAP data (a final CRLF is allowed): quoted strings and literals
    become bytes, numbers int, NIL None, other atoms `Atom` (``BODY[HEADER.FIELDS (TO)]<0>``
    and ``\\Seen`` are single atoms), parenthesised lists Python lists.

    Iterative with an explicit stack, so hostile nesting costs a `ParseError`, not a
    RecursionError. Raises `ParseError` on anything else.
    """
    top: list[ParsedValue] = []
    stack: list[list[ParsedValue]] = [top]
    length = len(data)
    pos = 0
    while True:
        while pos < length and data[pos] == 0x20:
            pos += 1
        if pos == length or (pos == length - 2 and data[pos] == _CR and data[pos + 1] == _LF):
            if len(stack) > 1:
                raise ParseError("unclosed parenthesis")
            return top
        char = data[pos]
        if char == 0x28:  # "("
            if len(stack) > max_depth:
                raise ParseError(f"lists nested deeper than {max_depth}")
            inner: list[ParsedValue] = []
            stack[-1].append(inner)
            stack.append(inner)
            pos += 1
            continue
        if char == 0x29:  # ")"
            if len(stack) == 1:
                raise ParseError("unbalanced ')'")
            stack.pop()
            pos += 1
        elif char == 0x22:  # '"'
            match = _QUOTED.match(data, pos)
            if match is None:
                raise ParseError(f"bad quoted string at offset {pos}")
            stack[-1].append(_UNESCAPE.sub(rb"\1", match.group(1)))
            pos = match.end()
        elif char == 0x7B or (char == 0x7E and data[pos + 1 : pos + 2] == b"{"):  # {n} ~{n}
            match = _LITERAL.match(data, pos)
            if match is None:
                raise ParseError(f"bad literal at offset {pos}")
            start = match.end()
            pos = start + int(match.group(1))
            if pos > length:
                raise ParseError("literal runs past the end of the data")
            stack[-1].append(data[start:pos])
        else:
            match = _ATOM.match(data, pos)
            if match is None:
                raise ParseError(f"unexpected byte {bytes([char])!r} at offset {pos}")
            stack[-1].append(_atom_value(match.group()))
            pos = match.end()
        # RFC 3501 body-type-mpart: the bodies of a multipart follow each other with no
        # space between them, "(...)(...)"
        juxtaposed = data[pos : pos + 1] == b"(" and data[pos - 1] == 0x29
        if (
            pos < length
            and data[pos] not in b" )"
            and not juxtaposed
            and not _at_final_crlf(data, pos)
        ):
            raise ParseError(f"missing space at offset {pos}")


def _at_final_crlf(data: bytes, pos: int) -> bool:
    return pos == len(data) - 2 and data.endswith(b"\r\n")


def _atom_value(token: bytes) -> ParsedValue:
    if token.isdigit():
        if len(token) > 20:
            raise ParseError("number too large")
        return int(token)
    if token.upper() == b"NIL":
        return None
    return Atom(token.decode("utf-8", "replace"))


# -- response codes and capabilities --------------------------------------------------------


def parse_code(code: str) -> tuple[str, str]:
    """``"UIDNEXT 42"`` → ``("UIDNEXT", "42")``; the name upper-cased, rest possibly ""."""
    name, _, rest = code.strip().partition(" ")
    return name.upper(), rest.strip()


@overload
def parse_capabilities(source: str) -> frozenset[str]: ...
@overload
def parse_capabilities(source: Tagged | Untagged) -> frozenset[str] | None: ...
def parse_capabilities(source: str | Tagged | Untagged) -> frozenset[str] | None:
    """Capability names, upper-cased (they are case-insensitive), from a space-separated
    list, a ``* CAPABILITY ...`` response, or a ``[CAPABILITY ...]`` code (greeting, LOGIN
    OK). None when the event carries no capabilities, so callers know to ask."""
    if isinstance(source, str):
        return _capability_set(source)
    if isinstance(source, Untagged) and source.kind == "CAPABILITY":
        words = _first_line(source.raw).decode("utf-8", "replace").split(None, 2)
        return _capability_set(words[2] if len(words) > 2 else "")
    if source.code is not None:
        name, rest = parse_code(source.code)
        if name == "CAPABILITY":
            return parse_capabilities(rest)
    return None


@lru_cache(maxsize=64)
def _capability_set(names: str) -> frozenset[str]:
    """The set of a capability list, one shared by every session that got the same list:
    a backend answers all its sessions alike, and thousands of idle sessions held a copy
    each (some 4 KiB a session)."""
    return frozenset(word.upper() for word in names.split())


# -- a minimal client connection ------------------------------------------------------------


class ClientConnection:
    """Tags outgoing commands and matches tagged completions, on top of `ResponseParser`.

    Sans-I/O: `send` returns the bytes to write; feed what the server sends to
    `receive_data` and drain `next_event`. Synchronising literals in commands are the
    caller's business (send the part up to ``{n}``, wait for a `Continuation`, go on).
    A tagged response for a tag we never sent (or already completed) is a violation.
    """

    def __init__(self, parser: ResponseParser | None = None, *, tag_prefix: str = "A") -> None:
        if not re.fullmatch(r"[A-Za-z]+", tag_prefix):
            raise ValueError("tag prefix must be letters")
        self.parser = parser if parser is not None else ResponseParser()
        self._prefix = tag_prefix
        self._counter = 0
        self._pending: dict[str, None] = {}  # insertion-ordered set
        self._failed: ProtocolViolation | None = None

    def next_tag(self) -> str:
        """``A0001``, ``A0002``... (more digits after 9999): unique per connection."""
        self._counter += 1
        return f"{self._prefix}{self._counter:04d}"

    def send(self, command: bytes) -> tuple[str, bytes]:
        """Tag `command` (``b"SELECT INBOX"``, no CRLF) and return (tag, bytes to write)."""
        tag = self.next_tag()
        self._pending[tag] = None
        return tag, tag.encode("ascii") + b" " + command + b"\r\n"

    @property
    def pending(self) -> tuple[str, ...]:
        """Tags sent and not yet completed, oldest first."""
        return tuple(self._pending)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the server (``b""`` at end of stream), as for `ResponseParser`."""
        self.parser.receive_data(data)

    def next_event(self) -> Event | None:
        """Like `ResponseParser.next_event`, also completing (or rejecting) tags."""
        if self._failed is not None:
            return None
        event = self.parser.next_event()
        if isinstance(event, Tagged):
            if event.tag not in self._pending:
                self._failed = ProtocolViolation(f"tagged response for unknown tag {event.tag}")
                return self._failed
            del self._pending[event.tag]
        elif isinstance(event, ProtocolViolation):
            self._failed = event
        return event
