"""Sans-I/O IMAP4rev1 command parser (server side): client bytes in, command events out.

In the spirit of h11 it owns no socket and no clock. The server feeds `receive_data` with
whatever it read and calls `next_event` until it returns None. Parsing is in two layers:

* framing splits the byte stream into commands: lines, and the literals a line announces by
  ending with ``{n}`` / ``{n+}``. It remembers where it stopped looking for CRLF, so data
  arriving byte by byte costs O(1) per call, and it enforces every size limit *before*
  buffering, so memory stays within `Limits.max_pending`;
* a recursive-descent reader turns one framed command into an event (RFC 3501 §9 grammar).
  When a line announces a literal, the reader also runs over the command so far: it finds
  errors before the client sends the literal and tells whether that literal is APPEND's
  message (which has the larger size limit).

Errors never escape `next_event`: they become `CommandError` events (BAD, or NO for a
well-formed command naming a mailbox that cannot exist), after which the parser
resynchronises at the next command, skipping LITERAL+ data the client sends anyway.
"""

from __future__ import annotations

import binascii
import codecs
import datetime as dt
import re
from collections.abc import Callable
from typing import NoReturn, TypeAlias

from gateway.imap import commands as cmd
from gateway.imap import mutf7
from gateway.imap.limits import Limits
from gateway.imap.syntax import (
    FetchAttribute,
    FetchName,
    SearchKey,
    Section,
    SectionText,
    SeqRange,
    SequenceSet,
    StatusItem,
    StoreAction,
    StoreMode,
)

__all__ = ["DEFAULT_LIMITS", "CommandParser", "Event", "search_codec"]

Event: TypeAlias = cmd.Command | cmd.ContinuationNeeded | cmd.RawLine | cmd.CommandError

DEFAULT_LIMITS = Limits()

# After one of these events the server may change how the next bytes are read (raw line,
# refused literal, TLS): nothing further is parsed until it calls `next_event` again.
_BARRIERS = (cmd.ContinuationNeeded, cmd.RawLine, cmd.Authenticate, cmd.Idle, cmd.StartTls)

# Literal announcements checked by running the reader over the command so far; beyond,
# only framing limits apply, so that a command with many literals is not re-read each time.
_EARLY_CHECKS = 8

MAX_NUMBER = 2**32 - 1  # RFC 3501 number / nz-number
MAX_NUMBER64 = 2**63 - 1  # RFC 9051 number64 (LARGER / SMALLER)
_HUGE = 2**64  # an announced literal size with absurdly many digits
MAX_ID_PAIRS = 30  # RFC 2971
MAX_ID_FIELD = 30
MAX_ID_VALUE = 1024

SP, DQUOTE, LPAREN, RPAREN, STAR = 0x20, 0x22, 0x28, 0x29, 0x2A
LT, LBRACKET, BACKSLASH, RBRACKET, LBRACE, TILDE = 0x3C, 0x5B, 0x5C, 0x5D, 0x7B, 0x7E

# Character classes of RFC 3501 §9 (ATOM-CHAR excludes "(){ %*\"\\]" and controls).
_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")
_ASTRING = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+")  # + "]"
_TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+")  # - "+"
_LIST_CHARS = re.compile(rb"[\x21\x23-\x27\x2a-\x5b\x5d-\x7a\x7c-\x7e]+")  # + "%*]"
# RFC 9051 lets quoted strings carry UTF-8; RFC 3501 escapes only '"' and "\".
_QUOTED = re.compile(rb'"([^"\\\x00\r\n]*(?:\\["\\][^"\\\x00\r\n]*)*)"')
_UNESCAPE = re.compile(rb'\\(["\\])')
_LITERAL = re.compile(rb"\{([0-9]+)(\+?)\}")
_DIGITS = re.compile(rb"[0-9]+")
_SEQSET = re.compile(rb"[0-9*:,]+")
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_PARTIAL = re.compile(rb"<([0-9]+)\.([0-9]+)>")
_STORE_ATT = re.compile(rb"([+-]?)FLAGS(\.SILENT)?", re.IGNORECASE)
_SASL_TOKEN = re.compile(rb"[A-Za-z0-9+/=]+")
_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DATE_TIME = re.compile(
    rb'"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{4})"'
)

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBERS = {name.upper().encode(): index for index, name in enumerate(MONTHS, 1)}

_SYSTEM_FLAGS = {
    flag.upper(): flag for flag in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
}
_STATUS_ITEMS: dict[str, StatusItem] = {
    "MESSAGES": "MESSAGES",
    "RECENT": "RECENT",
    "UIDNEXT": "UIDNEXT",
    "UIDVALIDITY": "UIDVALIDITY",
    "UNSEEN": "UNSEEN",
}
_FETCH_SIMPLE: dict[str, FetchName] = {
    "BODY": "BODY",
    "BODYSTRUCTURE": "BODYSTRUCTURE",
    "ENVELOPE": "ENVELOPE",
    "FLAGS": "FLAGS",
    "INTERNALDATE": "INTERNALDATE",
    "RFC822": "RFC822",
    "RFC822.HEADER": "RFC822.HEADER",
    "RFC822.SIZE": "RFC822.SIZE",
    "RFC822.TEXT": "RFC822.TEXT",
    "UID": "UID",
}
_FAST = (FetchAttribute("FLAGS"), FetchAttribute("INTERNALDATE"), FetchAttribute("RFC822.SIZE"))
_FETCH_MACROS = {
    b"FAST": _FAST,
    b"ALL": (*_FAST, FetchAttribute("ENVELOPE")),
    b"FULL": (*_FAST, FetchAttribute("ENVELOPE"), FetchAttribute("BODY")),
}
_SECTION_TEXTS: dict[bytes, SectionText] = {
    b"HEADER": "HEADER",
    b"HEADER.FIELDS": "HEADER.FIELDS",
    b"HEADER.FIELDS.NOT": "HEADER.FIELDS.NOT",
    b"TEXT": "TEXT",
    b"MIME": "MIME",
}
_STORE_MODES: dict[bytes, StoreMode] = {b"": "replace", b"+": "add", b"-": "remove"}

SEARCH_PLAIN = frozenset(
    {
        *("ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN"),
        *("UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN"),
    }
)
SEARCH_TEXT = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
SEARCH_DATE = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
SEARCH_SIZE = frozenset({"LARGER", "SMALLER"})
SEARCH_KEYWORD = frozenset({"KEYWORD", "UNKEYWORD"})
_SEARCH_WITH_ARGS = SEARCH_TEXT | SEARCH_DATE | SEARCH_SIZE | SEARCH_KEYWORD
_SEARCH_WITH_ARGS |= {"HEADER", "NOT", "OR", "UID"}


def search_codec(charset: str | None) -> str:
    """The Python codec of SEARCH strings: UTF-8 by default (and for US-ASCII, a subset),
    the named codec when Python knows it, else latin-1, which keeps every byte so that the
    engine can still answer ``NO [BADCHARSET]`` rather than the parser answer BAD."""
    if charset is None or charset.upper() in ("UTF-8", "US-ASCII"):
        return "utf-8"
    try:
        name = codecs.lookup(charset).name
        "".encode(name)  # LookupError for bytes-to-bytes codecs such as zlib
    except (LookupError, ValueError):
        return "latin-1"
    return name


class _ParseError(Exception):
    """A syntax error; its message goes after BAD."""


class _Refused(_ParseError):
    """A well-formed command naming a mailbox that cannot exist; its message goes after NO."""


class _NeedLiteral(Exception):
    """The reader reached a literal whose data has not arrived yet."""

    def __init__(self, message: bool) -> None:
        super().__init__()
        self.message = message  # APPEND's message literal, with its own size limit


def _announced(line: bytes) -> tuple[int, bool] | None:
    """``(size, non_synchronising)`` when `line` ends with a literal announcement."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    match = _LITERAL.fullmatch(line, start) if start >= 0 else None
    if match is None:
        return None
    digits = match.group(1)
    size = int(digits) if len(digits) <= 12 else _HUGE
    return size, bool(match.group(2))


def _take(buffer: bytearray, size: int) -> bytes:
    """Remove and return the first `size` bytes, copying them once."""
    with memoryview(buffer) as view, view[:size] as part:
        data = bytes(part)
    del buffer[:size]  # O(1) amortised at the front of a bytearray
    return data


def _peek_tag(data: bytes | bytearray) -> str | None:
    match = _TAG.match(data)
    if match is None or data[match.end() : match.end() + 1] != b" ":
        return None
    return match.group().decode("ascii")


class CommandParser:
    """Turns the bytes a client sends into `Event`s, one command at a time.

    Complete events are parsed ahead, up to `Limits.max_pipelined`, then input waits in the
    buffer. After ContinuationNeeded, Authenticate, Idle, StartTls or RawLine the parser
    stops until the next `next_event` call, so that the server can first call
    `expect_raw_line` or `reject_literal`. After StartTls, a non-zero `pending_bytes` means
    the client sent plaintext it must not have sent: drop it with the parser.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self._scan = 0  # where to resume looking for CRLF in the buffer
        # a list, not a deque: at most `max_pipelined` (32) events, and an idle session's
        # empty list holds no block (a deque allocates one of 64 slots, 0.5 KiB)
        self._events: list[Event] = []
        self._blocked = False  # a barrier event is queued or handed out
        self._handed = False  # ... and `next_event` returned it
        self._raw = False  # the next line is a RawLine
        self._fatal = False
        # the command being framed: its finished lines and literals
        self._lines: list[bytes] = []
        self._literals: list[bytes] = []
        self._held = 0  # bytes in _lines and _literals
        self._text = 0  # bytes in _lines
        self._need: int | None = None  # size of the literal being received
        self._tag: str | None = None
        # recovery after a rejected command whose LITERAL+ data the client sends anyway
        self._skip = 0
        self._discard = False

    # -- public API ------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return self._limits

    @limits.setter
    def limits(self, value: Limits) -> None:
        """New limits for what is parsed from now on (a server raises them after login)."""
        self._limits = value

    @property
    def pending_bytes(self) -> int:
        """Bytes received and not yet turned into events."""
        return len(self._buffer) + self._held

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the client (after a fatal error they are ignored)."""
        if self._fatal or not data:
            return
        self._buffer += data
        self._pump()
        if not self._fatal and self.pending_bytes > self._limits.max_pending:
            self._shut_down()
            self._events.append(cmd.CommandError(None, "too much unprocessed input", fatal=True))

    def next_event(self) -> Event | None:
        """The next event, or None when more data is needed. Never raises."""
        if self._handed:
            self._handed = self._blocked = False
        self._pump()
        if not self._events:
            return None
        event = self._events.pop(0)
        if self._blocked and not self._events:
            self._handed = True  # the barrier, always the last event queued
        return event

    def expect_raw_line(self) -> None:
        """Return the next line as `RawLine` (a SASL response after ``+``, or IDLE's DONE)."""
        if self._fatal:  # a fatal error is queued: the connection is ending anyway
            return
        if self._events or self._lines or self._need is not None or self._skip or self._discard:
            raise RuntimeError("expect_raw_line() must directly follow the event that needs it")
        self._raw = True

    def cancel_raw_line(self) -> None:
        """The raw line asked for is no longer awaited (the server ended IDLE itself): the
        next line is a command again."""
        self._raw = False

    def reject_literal(self) -> None:
        """The server refused the literal announced by the last ContinuationNeeded: the
        client will not send it, so the next bytes start a new command."""
        if self._fatal:
            return
        if self._need is None or not self._handed:
            raise RuntimeError("reject_literal() must directly follow ContinuationNeeded")
        self._reset_command()

    # -- framing ---------------------------------------------------------------------

    def _pump(self) -> None:
        if self._fatal or self._blocked:
            return
        while len(self._events) < self._limits.max_pipelined:
            try:
                event = self._step()
            except Exception:  # a bug must not take the server down; this connection ends
                event = self._fatal_error("internal parser error")
            if event is None:
                return
            self._events.append(event)
            if isinstance(event, _BARRIERS) or self._fatal:
                self._blocked = True
                return

    def _step(self) -> Event | None:
        """Advance framing by at most one event; None when more data is needed."""
        buffer = self._buffer
        limits = self._limits
        while True:
            if self._skip:
                count = min(self._skip, len(buffer))
                del buffer[:count]
                self._skip -= count
                self._scan = 0
                if self._skip:
                    return None
                continue
            if self._need is not None:
                if len(buffer) < self._need:
                    return None
                literal = _take(buffer, self._need)
                self._literals.append(literal)
                self._held += len(literal)
                self._need = None
                self._scan = 0
                continue
            end = buffer.find(b"\r\n", self._scan)
            in_command = not (self._raw or self._discard)
            budget = limits.max_line_length - (self._text if in_command else 0)
            if end < 0:
                if len(buffer) > budget + 1:  # +1: a final CR may start the CRLF
                    return self._fatal_error("line too long")
                self._scan = max(len(buffer) - 1, 0)
                return None
            if end > budget:
                return self._fatal_error("line too long")
            line = _take(buffer, end)
            del buffer[:2]
            self._scan = 0
            if self._raw:
                self._raw = False
                return cmd.RawLine(line)
            announced = _announced(line)
            if self._discard:
                if announced is None or not announced[1]:
                    self._discard = False  # a synchronising literal is never sent now
                elif announced[0] > limits.max_literal_size:
                    return self._fatal_error("literal too large")
                else:
                    self._skip = announced[0]
                continue
            self._lines.append(line)
            self._held += len(line)
            self._text += len(line)
            if announced is None:
                event = self._parse()
                self._reset_command()
                return event
            outcome = self._announce(*announced)
            if outcome is not None:
                return outcome

    def _announce(self, size: int, plus: bool) -> Event | None:
        """A line announced a literal: check the command so far and the literal's size."""
        limits = self._limits
        message = False
        error: str | None = None
        if len(self._literals) < _EARLY_CHECKS:
            reader = _Reader(self._lines, self._literals, limits)
            try:
                reader.parse()
                error = "invalid literal"  # unreachable: the announcement is left unread
            except _NeedLiteral as need:
                message = need.message
            except _ParseError as exc:
                error = str(exc)
            self._tag = reader.tag
        tag = self._tag
        limit = limits.max_literal_size if message else limits.max_command_literal_size
        if error is None and size > limit:
            if plus:  # RFC 7888 §4: its data is on its way, the connection cannot go on
                return self._fatal_error("literal too large")
            error = "literal too large"
        if error is not None:
            self._reset_command()
            if plus:
                if size > limits.max_literal_size:
                    return self._fatal_error("literal too large")
                self._skip = size
                self._discard = True
            return cmd.CommandError(tag, error)
        self._need = size
        return None if plus else cmd.ContinuationNeeded(tag, size, message)

    def _parse(self) -> Event:
        reader = _Reader(self._lines, self._literals, self._limits)
        try:
            return reader.parse()
        except _Refused as exc:
            return cmd.CommandError(reader.tag, str(exc), status="NO")
        except _ParseError as exc:
            return cmd.CommandError(reader.tag, str(exc))
        except _NeedLiteral:  # unreachable: a complete command has all its literals
            return cmd.CommandError(reader.tag, "invalid literal")

    def _reset_command(self) -> None:
        self._lines = []
        self._literals = []
        self._held = self._text = 0
        self._need = None
        self._tag = None

    def _fatal_error(self, message: str) -> cmd.CommandError:
        """The current command cannot be framed: the connection must end (BYE)."""
        tag = self._tag or _peek_tag(self._lines[0] if self._lines else self._buffer)
        self._shut_down()
        return cmd.CommandError(tag, message, fatal=True)

    def _shut_down(self) -> None:
        """Forget all input; everything received from now on is ignored."""
        self._fatal = True
        self._buffer.clear()
        self._reset_command()
        self._skip = 0
        self._discard = self._raw = False


Handler: TypeAlias = Callable[["_Reader", str], cmd.Command]


class _Reader:
    """Recursive descent over one command: its lines, and the literal after each line but
    the last. In a partial command the last line announces a literal not yet received."""

    __slots__ = (
        "codec",
        "depth",
        "index",
        "limits",
        "line",
        "lines",
        "literals",
        "nodes",
        "pos",
        "refusal",
        "tag",
    )

    def __init__(self, lines: list[bytes], literals: list[bytes], limits: Limits) -> None:
        self.lines = lines
        self.literals = literals
        self.limits = limits
        self.index = 0  # of the current line
        self.line = lines[0]
        self.pos = 0
        self.tag: str | None = None
        self.depth = 0  # open parentheses
        self.nodes = 0  # search keys
        self.codec = "utf-8"  # of SEARCH strings
        self.refusal: str | None = None  # why the command, well-formed, is answered NO

    def parse(self) -> cmd.Command:
        match = _TAG.match(self.line)
        self.pos = match.end() if match else 0
        if match is None or self.peek() not in (SP, -1):
            raise _ParseError("missing or invalid tag")
        self.tag = tag = match.group().decode("ascii")
        if any(b"\x00" in line for line in self.lines):
            raise _ParseError("NUL byte in command")
        self.pos += 1
        name = self.keyword("command name")
        handler = _HANDLERS.get(name)
        if handler is None:
            raise _ParseError("unknown command")
        command = handler(self, tag)
        self.end()
        if self.refusal is not None:
            raise _Refused(self.refusal)
        return command

    # -- tokens ----------------------------------------------------------------------

    def peek(self) -> int:
        return self.line[self.pos] if self.pos < len(self.line) else -1

    def unexpected(self, message: str, at_end: str = "missing argument") -> NoReturn:
        char = self.peek()
        if char < 0:
            raise _ParseError(at_end)
        if char >= 0x80:
            raise _ParseError("8-bit character outside a string")
        if char < 0x20 or char == 0x7F:
            raise _ParseError("control character outside a string")
        raise _ParseError(message)

    def expect(self, char: int, message: str) -> None:
        if self.peek() != char:
            self.unexpected(message, at_end=message)
        self.pos += 1

    def sp(self) -> None:
        if self.peek() != SP:
            self.unexpected("expected a space")
        self.pos += 1

    def more(self) -> bool:
        """Consume a space when one follows (another list item or argument)."""
        if self.peek() == SP:
            self.pos += 1
            return True
        return False

    def end(self) -> None:
        if self.pos != len(self.line):
            self.unexpected("unexpected data after command")

    def delimited(self) -> bool:
        return self.pos == len(self.line) or self.line[self.pos] in (SP, RPAREN)

    def open_paren(self) -> None:
        self.expect(LPAREN, "expected '('")
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise _ParseError("too deeply nested")

    def close_paren(self) -> None:
        self.expect(RPAREN, "expected ')'")
        self.depth -= 1

    def atom(self) -> bytes:
        match = _ATOM.match(self.line, self.pos)
        if match is None:
            self.unexpected("expected an atom")
        self.pos = match.end()
        return match.group()

    def keyword(self, what: str) -> str:
        match = _ATOM.match(self.line, self.pos)
        if match is None:
            self.unexpected(f"expected {what}", at_end=f"missing {what}")
        self.pos = match.end()
        return match.group().decode("ascii").upper()

    def is_nil(self) -> bool:
        end = self.pos + 3
        if self.line[self.pos : end].upper() != b"NIL":
            return False
        return end == len(self.line) or self.line[end] in (SP, RPAREN)

    def astring(self) -> bytes:
        char = self.peek()
        if char in (DQUOTE, LBRACE) or self.literal8_ahead():
            return self.string()
        match = _ASTRING.match(self.line, self.pos)
        if match is None:
            self.unexpected("expected a string")
        self.pos = match.end()
        return match.group()

    def literal8_ahead(self) -> bool:
        return self.line[self.pos : self.pos + 2] == b"~{"

    def string(self, message: bool = False) -> bytes:
        char = self.peek()
        if char == DQUOTE:
            match = _QUOTED.match(self.line, self.pos)
            if match is None:
                raise _ParseError("invalid quoted string")
            self.pos = match.end()
            body = match.group(1)
            return _UNESCAPE.sub(rb"\1", body) if b"\\" in body else body
        if self.literal8_ahead():
            raise _ParseError("literal8 not supported")
        if char != LBRACE:
            self.unexpected("expected a quoted string or a literal")
        return self.literal(message)

    def literal(self, message: bool = False) -> bytes:
        match = _LITERAL.match(self.line, self.pos)
        if match is None or match.end() != len(self.line):
            raise _ParseError("invalid literal")
        if self.index >= len(self.literals):
            raise _NeedLiteral(message)
        data = self.literals[self.index]
        if not message and len(data) > self.limits.max_command_literal_size:
            raise _ParseError("literal too large")
        self.index += 1
        self.line = self.lines[self.index]
        self.pos = 0
        return data

    def nstring(self) -> bytes | None:
        if self.is_nil():
            self.pos += 3
            return None
        return self.string()

    def number(self, maximum: int = MAX_NUMBER) -> int:
        match = _DIGITS.match(self.line, self.pos)
        if match is None:
            self.unexpected("expected a number")
        digits = match.group()
        if len(digits) > 20 or int(digits) > maximum:
            raise _ParseError("number too large")
        self.pos = match.end()
        return int(digits)

    # -- IMAP values -----------------------------------------------------------------

    def sequence_set(self) -> SequenceSet:
        match = _SEQSET.match(self.line, self.pos)
        if match is None:
            self.unexpected("expected a sequence set")
        token = match.group()
        if token.count(b",") >= self.limits.max_sequence_ranges:
            raise _ParseError("too many ranges in sequence set")
        self.pos = match.end()
        ranges: list[SeqRange] = []
        for item in token.split(b","):
            first, colon, last = item.partition(b":")
            start = _seq_number(first)
            ranges.append(SeqRange(start, _seq_number(last) if colon else start))
        return SequenceSet(tuple(ranges))

    def flag(self) -> str:
        if self.peek() == BACKSLASH:
            match = _ATOM.match(self.line, self.pos + 1)
            flag = _SYSTEM_FLAGS.get("\\" + match.group().decode().upper()) if match else None
            if match is None or flag is None:
                raise _ParseError("invalid system flag")
            self.pos = match.end()
            return flag
        return self.atom().decode("ascii")

    def flag_list(self) -> tuple[str, ...]:
        self.open_paren()
        flags: list[str] = []
        if self.peek() != RPAREN:
            flags.append(self.flag())
            while self.more():
                flags.append(self.flag())
        self.close_paren()
        return tuple(flags)

    def mailbox(self) -> str:
        """An astring mailbox name: modified UTF-7, or UTF-8 when it has 8-bit bytes.

        Any astring is well-formed (``a&b`` is an atom): a name that decodes as neither
        makes the command answered NO once it has parsed whole, as Dovecot answers it."""
        raw = self.astring()
        name = _name(raw)
        if name is None:
            if self.refusal is None:
                encoding = "mUTF-7" if raw.isascii() else "UTF-8"
                self.refusal = f"Mailbox name is not valid {encoding}"
            return raw.decode("utf-8", "replace")
        if name.isascii() and name.upper() == "INBOX":
            return "INBOX"
        return name

    def list_reference(self) -> str:
        """LIST's reference, kept as sent (no INBOX folding), literally when undecodable."""
        return _list_name(self.astring())

    def list_mailbox(self) -> str:
        """list-mailbox = 1*list-char / string: an atom may hold ``%``, ``*`` and ``]``.
        A pattern that is not valid mUTF-7 matches literally (no error, as in Dovecot)."""
        match = _LIST_CHARS.match(self.line, self.pos)
        if match is None:
            return _list_name(self.string())
        self.pos = match.end()
        return _list_name(match.group())

    def date(self) -> dt.date:
        quoted = self.peek() == DQUOTE
        self.pos += quoted
        match = _DATE.match(self.line, self.pos)
        if match is None:
            raise _ParseError("invalid date")
        self.pos = match.end()
        if quoted:
            self.expect(DQUOTE, "invalid date")
        if not self.delimited():
            raise _ParseError("invalid date")
        day, month, year = match.groups()
        try:
            return dt.date(int(year), _MONTH_NUMBERS[month.upper()], int(day))
        except (KeyError, ValueError):
            raise _ParseError("invalid date") from None

    def date_time(self) -> dt.datetime:
        match = _DATE_TIME.match(self.line, self.pos)
        if match is None:
            raise _ParseError("invalid date-time")
        self.pos = match.end()
        day, month, year, hour, minute, second, sign, zone = match.groups()
        try:
            offset = dt.timedelta(hours=int(zone[:2]), minutes=int(zone[2:]))
            if int(zone[2:]) > 59:
                raise ValueError(zone)
            return dt.datetime(
                int(year),
                _MONTH_NUMBERS[month.upper()],
                int(day),
                int(hour),
                int(minute),
                int(second),
                tzinfo=dt.timezone(-offset if sign == b"-" else offset),
            )
        except (KeyError, ValueError):
            raise _ParseError("invalid date-time") from None

    # -- SEARCH ----------------------------------------------------------------------

    def text(self) -> str:
        try:
            return self.astring().decode(self.codec)
        except ValueError:  # UnicodeError, whatever the codec
            raise _ParseError("string not valid in its charset") from None

    def count_node(self) -> None:
        self.nodes += 1
        if self.nodes > self.limits.max_search_keys:
            raise _ParseError("too many search keys")

    def search_key(self, level: int) -> SearchKey:
        if level > self.limits.max_search_depth:
            raise _ParseError("search keys too deeply nested")
        self.count_node()
        char = self.peek()
        if char == LPAREN:
            self.open_paren()
            children = [self.search_key(level + 1)]
            while self.more():
                children.append(self.search_key(level + 1))
            self.close_paren()
            return SearchKey("AND", tuple(children))
        if 0x30 <= char <= 0x39 or char == STAR:
            return SearchKey("SEQSET", (self.sequence_set(),))
        name = self.keyword("a search key")
        if name in SEARCH_PLAIN:
            return SearchKey(name)
        if name not in _SEARCH_WITH_ARGS:
            raise _ParseError("unknown search key")
        self.sp()
        if name in SEARCH_TEXT:
            return SearchKey(name, (self.text(),))
        if name in SEARCH_DATE:
            return SearchKey(name, (self.date(),))
        if name in SEARCH_SIZE:
            return SearchKey(name, (self.number(MAX_NUMBER64),))
        if name in SEARCH_KEYWORD:
            return SearchKey(name, (self.atom().decode("ascii"),))
        if name == "NOT":
            return SearchKey(name, (self.search_key(level + 1),))
        if name == "OR":
            first = self.search_key(level + 1)
            self.sp()
            return SearchKey(name, (first, self.search_key(level + 1)))
        if name == "UID":
            return SearchKey(name, (self.sequence_set(),))
        field = self.text().upper()  # HEADER
        self.sp()
        return SearchKey(name, (field, self.text()))

    # -- FETCH -----------------------------------------------------------------------

    def fetch_attributes(self) -> tuple[FetchAttribute, ...]:
        if self.peek() == LPAREN:
            self.open_paren()
            attributes = [self.fetch_attribute()]
            while self.more():
                attributes.append(self.fetch_attribute())
            self.close_paren()
            return tuple(attributes)
        match = _FETCH_NAME.match(self.line, self.pos)
        if match is not None and match.end() == len(self.line):
            macro = _FETCH_MACROS.get(match.group().upper())
            if macro is not None:
                self.pos = match.end()
                return macro
        return (self.fetch_attribute(),)

    def fetch_attribute(self) -> FetchAttribute:
        match = _FETCH_NAME.match(self.line, self.pos)
        if match is None:
            self.unexpected("expected a fetch attribute")
        name = match.group().decode("ascii").upper()
        self.pos = match.end()
        if name in ("BODY", "BODY.PEEK") and self.peek() == LBRACKET:
            section = self.section()
            partial = self.partial() if self.peek() == LT else None
            return FetchAttribute("BODY", section, peek=name == "BODY.PEEK", partial=partial)
        simple = _FETCH_SIMPLE.get(name)
        if simple is None:
            raise _ParseError("unknown fetch attribute")
        return FetchAttribute(simple)

    def section(self) -> Section:
        self.pos += 1  # "["
        if self.peek() == RBRACKET:
            self.pos += 1
            return Section()
        match = _FETCH_NAME.match(self.line, self.pos)
        if match is None:
            raise _ParseError("invalid section")
        self.pos = match.end()
        items = match.group().upper().split(b".")
        parts: list[int] = []
        while len(parts) < len(items) and items[len(parts)].isdigit():
            parts.append(_nz_number(items[len(parts)], "invalid section part"))
        text: SectionText | None = None
        if len(parts) < len(items):
            text = _SECTION_TEXTS.get(b".".join(items[len(parts) :]))
            if text is None or (text == "MIME" and not parts):
                raise _ParseError("invalid section")
        fields: tuple[str, ...] = ()
        if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            self.sp()
            fields = self.header_list()
        self.expect(RBRACKET, "expected ']'")
        return Section(tuple(parts), text, fields)

    def header_list(self) -> tuple[str, ...]:
        self.open_paren()
        fields = [self.header_name()]
        while self.more():
            fields.append(self.header_name())
        self.close_paren()
        return tuple(fields)

    def header_name(self) -> str:
        raw = self.astring()
        if not raw.isascii():
            raise _ParseError("invalid header field name")
        return raw.decode("ascii").upper()

    def partial(self) -> tuple[int, int]:
        match = _PARTIAL.match(self.line, self.pos)
        if match is None:
            raise _ParseError("invalid partial range")
        self.pos = match.end()
        offset, length = match.groups()
        if len(offset) > 10 or int(offset) > MAX_NUMBER:
            raise _ParseError("number too large")
        return int(offset), _nz_number(length, "invalid partial range")


def _name(raw: bytes) -> str | None:
    """A mailbox name decoded: modified UTF-7 when 7-bit, else UTF-8; None when invalid."""
    try:
        return mutf7.decode(raw.decode("ascii")) if raw.isascii() else raw.decode("utf-8")
    except ValueError:
        return None


def _list_name(raw: bytes) -> str:
    name = _name(raw)
    return raw.decode("utf-8", "replace") if name is None else name


def _nz_number(digits: bytes, message: str) -> int:
    """RFC 3501 nz-number: no leading zero, 1 to 2**32 - 1."""
    if not digits.isdigit() or digits[0] == 0x30 or len(digits) > 10 or int(digits) > MAX_NUMBER:
        raise _ParseError(message)
    return int(digits)


def _seq_number(item: bytes) -> int | None:
    if item == b"*":
        return None
    if item == b"0":
        raise _ParseError("0 is not a valid sequence number")
    return _nz_number(item, "invalid sequence set")


# -- commands ------------------------------------------------------------------------


def _no_arguments(factory: Callable[[str], cmd.Command]) -> Handler:
    def handler(reader: _Reader, tag: str) -> cmd.Command:
        return factory(tag)

    return handler


def _authenticate(r: _Reader, tag: str) -> cmd.Command:
    r.sp()
    mechanism = r.keyword("a mechanism name")
    initial: bytes | None = None
    if r.more():
        match = _SASL_TOKEN.match(r.line, r.pos)
        if match is None:
            r.unexpected("invalid initial response")
        initial = match.group()
        if initial != b"=":
            try:
                binascii.a2b_base64(initial, strict_mode=True)
            except binascii.Error:
                raise _ParseError("invalid initial response") from None
        r.pos = match.end()
    return cmd.Authenticate(tag, mechanism, initial)


def _login(r: _Reader, tag: str) -> cmd.Command:
    r.sp()
    user = r.astring()
    r.sp()
    return cmd.Login(tag, user, r.astring())


def _mailbox_command(factory: Callable[[str, str], cmd.Command]) -> Handler:
    def handler(r: _Reader, tag: str) -> cmd.Command:
        r.sp()
        return factory(tag, r.mailbox())

    return handler


def _examine(r: _Reader, tag: str) -> cmd.Command:
    r.sp()
    return cmd.Select(tag, r.mailbox(), readonly=True)


def _rename(r: _Reader, tag: str) -> cmd.Command:
    r.sp()
    old = r.mailbox()
    r.sp()
    return cmd.Rename(tag, old, r.mailbox())


def _list(subscribed: bool) -> Handler:
    def handler(r: _Reader, tag: str) -> cmd.Command:
        r.sp()
        reference = r.list_reference()
        r.sp()
        return cmd.List(tag, reference, r.list_mailbox(), subscribed)

    return handler


def _status(r: _Reader, tag: str) -> cmd.Command:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    r.open_paren()
    items: list[StatusItem] = []
    while True:
        item = _STATUS_ITEMS.get(r.keyword("a status item"))
        if item is None:
            raise _ParseError("unknown status item")
        items.append(item)
        if not r.more():
            break
    r.close_paren()
    return cmd.Status(tag, mailbox, tuple(items))


def _append(r: _Reader, tag: str) -> cmd.Command:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    flags: tuple[str, ...] = ()
    if r.peek() == LPAREN:
        flags = r.flag_list()
        r.sp()
    internal_date = None
    if r.peek() == DQUOTE:
        internal_date = r.date_time()
        r.sp()
    if r.peek() == DQUOTE:
        raise _ParseError("the message must be a literal")
    return cmd.Append(tag, mailbox, flags, internal_date, r.string(message=True))


def _search(uid: bool) -> Handler:
    def handler(r: _Reader, tag: str) -> cmd.Command:
        r.sp()
        charset: str | None = None
        if r.line[r.pos : r.pos + 8].upper() == b"CHARSET ":
            r.pos += 8
            raw = r.astring()
            if not raw.isascii():
                raise _ParseError("invalid charset name")
            charset = raw.decode("ascii").upper()
            r.sp()
        r.codec = search_codec(charset)
        r.count_node()
        keys = [r.search_key(1)]
        while r.more():
            keys.append(r.search_key(1))
        return cmd.Search(tag, SearchKey("AND", tuple(keys)), charset, uid)

    return handler


def _fetch(uid: bool) -> Handler:
    def handler(r: _Reader, tag: str) -> cmd.Command:
        r.sp()
        sequence = r.sequence_set()
        r.sp()
        attributes = r.fetch_attributes()
        if uid and not any(a.name == "UID" for a in attributes):
            attributes += (FetchAttribute("UID"),)
        return cmd.Fetch(tag, sequence, attributes, uid)

    return handler


def _store(uid: bool) -> Handler:
    def handler(r: _Reader, tag: str) -> cmd.Command:
        r.sp()
        sequence = r.sequence_set()
        r.sp()
        match = _STORE_ATT.match(r.line, r.pos)
        if match is None:
            r.unexpected("expected FLAGS, +FLAGS or -FLAGS")
        r.pos = match.end()
        r.sp()
        if r.peek() == LPAREN:
            flags = r.flag_list()
        else:
            items = [r.flag()]
            while r.more():
                items.append(r.flag())
            flags = tuple(items)
        action = StoreAction(_STORE_MODES[match.group(1)], bool(match.group(2)), flags)
        return cmd.Store(tag, sequence, action, uid)

    return handler


def _transfer(factory: Callable[[str, SequenceSet, str, bool], cmd.Command], uid: bool) -> Handler:
    def handler(r: _Reader, tag: str) -> cmd.Command:
        r.sp()
        sequence = r.sequence_set()
        r.sp()
        return factory(tag, sequence, r.mailbox(), uid)

    return handler


def _uid_expunge(r: _Reader, tag: str) -> cmd.Command:
    r.sp()
    return cmd.Expunge(tag, r.sequence_set())


_UID_HANDLERS: dict[str, Handler] = {
    "FETCH": _fetch(uid=True),
    "SEARCH": _search(uid=True),
    "STORE": _store(uid=True),
    "COPY": _transfer(cmd.Copy, uid=True),
    "MOVE": _transfer(cmd.Move, uid=True),
    "EXPUNGE": _uid_expunge,
}


def _uid(r: _Reader, tag: str) -> cmd.Command:
    r.sp()
    handler = _UID_HANDLERS.get(r.keyword("a UID command"))
    if handler is None:
        raise _ParseError("unknown UID command")
    return handler(r, tag)


def _id(r: _Reader, tag: str) -> cmd.Command:
    r.sp()
    if r.is_nil():
        r.pos += 3
        return cmd.Id(tag, None)
    r.open_paren()
    parameters: list[tuple[str, str | None]] = []
    if r.peek() != RPAREN:
        while True:
            field = r.string()
            if len(field) > MAX_ID_FIELD:
                raise _ParseError("ID field name too long")
            r.sp()
            value = r.nstring()
            if value is not None and len(value) > MAX_ID_VALUE:
                raise _ParseError("ID value too long")
            if len(parameters) == MAX_ID_PAIRS:
                raise _ParseError("too many ID parameters")
            parameters.append(
                (
                    field.decode("utf-8", "replace"),
                    None if value is None else value.decode("utf-8", "replace"),
                )
            )
            if not r.more():
                break
    r.close_paren()
    return cmd.Id(tag, tuple(parameters))


def _enable(r: _Reader, tag: str) -> cmd.Command:
    r.sp()
    capabilities = [r.keyword("a capability")]
    while r.more():
        capabilities.append(r.keyword("a capability"))
    return cmd.Enable(tag, tuple(capabilities))


_HANDLERS: dict[str, Handler] = {
    "CAPABILITY": _no_arguments(cmd.Capability),
    "NOOP": _no_arguments(cmd.Noop),
    "LOGOUT": _no_arguments(cmd.Logout),
    "STARTTLS": _no_arguments(cmd.StartTls),
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "SELECT": _mailbox_command(cmd.Select),
    "EXAMINE": _examine,
    "CREATE": _mailbox_command(cmd.Create),
    "DELETE": _mailbox_command(cmd.Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _mailbox_command(cmd.Subscribe),
    "UNSUBSCRIBE": _mailbox_command(cmd.Unsubscribe),
    "LIST": _list(subscribed=False),
    "LSUB": _list(subscribed=True),
    "STATUS": _status,
    "APPEND": _append,
    "CHECK": _no_arguments(cmd.Check),
    "CLOSE": _no_arguments(cmd.Close),
    "UNSELECT": _no_arguments(cmd.Unselect),
    "EXPUNGE": _no_arguments(cmd.Expunge),
    "SEARCH": _search(uid=False),
    "FETCH": _fetch(uid=False),
    "STORE": _store(uid=False),
    "COPY": _transfer(cmd.Copy, uid=False),
    "MOVE": _transfer(cmd.Move, uid=False),
    "UID": _uid,
    "IDLE": _no_arguments(cmd.Idle),
    "ID": _id,
    "ENABLE": _enable,
    "NAMESPACE": _no_arguments(cmd.Namespace),
}
