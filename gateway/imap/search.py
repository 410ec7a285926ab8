"""IMAP SEARCH evaluation (RFC 3501 §6.4.4) against one message at a time.

The engine calls `validate` once per command, then `matches` for each message's
`Candidate`. It loads message bytes only when `needs_message` says a key reads headers or
body; each candidate decodes its headers and its body lazily, at most once per search.

Decisions (documented because RFC 3501 leaves them open):

- BEFORE/ON/SINCE compare the calendar date of the internal date *in its own offset*, as
  Dovecot does; SENTBEFORE/SENTON/SENTSINCE use the Date: header's date as written (its own
  offset) and fall back to the internal date when Date: is missing or unparsable (Dovecot).
- Text keys are substring matches after NFKC normalisation and `casefold()`: "é" matches
  "É", but accents are significant ("e" does not match "é").
- Headers are decoded as unstructured text (RFC 2047 words, raw 8-bit as UTF-8), so
  FROM/TO/CC/BCC see display names, group names, addresses and comments as written; they
  also match the field rewritten from its parsed addresses, as Dovecot searches it
  (``<a (c)@ b.org>`` holds ``a@b.org``; a trailing comment is the display name). A text
  key with an empty string matches the messages having that field (like HEADER with an
  empty value).
- BODY searches the decoded text of text/* and message/* parts plus the headers of attached
  messages; other attachments (PDF, images) are skipped, and only the first `MAX_BODY_TEXT`
  characters per message are searched. TEXT searches the header block and that body.
- CHARSET US-ASCII is taken as the ASCII subset of UTF-8: 8-bit search strings are accepted.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import HeaderRegistry
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from typing import TypeVar

from gateway.imap.codes import Code
from gateway.imap.message import address_text
from gateway.imap.syntax import SearchKey, SequenceSet

SUPPORTED_CHARSETS = ("UTF-8", "US-ASCII")  # for the `NO [BADCHARSET (...)]` response code
MAX_BODY_TEXT = 10 * 1024 * 1024  # decoded body characters searched per message
MAX_PARSE_BYTES = 16 * 1024 * 1024  # raw bytes parsed for BODY/TEXT (base64 is 4/3 larger)
MAX_HEADER_BYTES = 512 * 1024  # header block parsed per message; fields beyond are ignored
# The MIME parser checks every line against every enclosing boundary and costs ~1 ms per
# part: beyond these bounds the body is searched as raw text rather than stalling the search.
MAX_BOUNDARIES = 100  # distinct boundaries declared (a bound on nesting depth)
MAX_MIME_WORK = 2_000_000  # lines x distinct boundaries (~0.5 s of parsing)
MAX_MIME_PARTS = 500  # boundary delimiter lines
MAX_DEPTH = 100  # nesting of OR/NOT/AND: deeper keys are refused rather than recursed into
MAX_NUMBER = 2**32 - 1  # RFC 3501 `number` / `nz-number` are 32-bit unsigned

_FLAG_KEYS: dict[str, tuple[str, bool]] = {
    "ANSWERED": ("\\answered", True),
    "UNANSWERED": ("\\answered", False),
    "DELETED": ("\\deleted", True),
    "UNDELETED": ("\\deleted", False),
    "DRAFT": ("\\draft", True),
    "UNDRAFT": ("\\draft", False),
    "FLAGGED": ("\\flagged", True),
    "UNFLAGGED": ("\\flagged", False),
    "SEEN": ("\\seen", True),
    "UNSEEN": ("\\seen", False),
}
_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}
_ADDRESS_FIELDS = frozenset({"bcc", "cc", "from", "to"})
_DATE_KEYS = frozenset({"BEFORE", "ON", "SINCE"})
_SENT_KEYS = {"SENTBEFORE": "BEFORE", "SENTON": "ON", "SENTSINCE": "SINCE"}
_MESSAGE_KEYS = frozenset({*_HEADER_KEYS, *_SENT_KEYS, "BODY", "TEXT", "HEADER"})

_ArgType = type[str] | type[int] | type[dt.date] | type[SequenceSet]
_SCHEMA: dict[str, tuple[_ArgType, ...]] = {
    **dict.fromkeys(_FLAG_KEYS, ()),
    **dict.fromkeys(("ALL", "NEW", "OLD", "RECENT"), ()),
    **dict.fromkeys((*_HEADER_KEYS, "BODY", "TEXT", "KEYWORD", "UNKEYWORD"), (str,)),
    **dict.fromkeys((*_DATE_KEYS, *_SENT_KEYS), (dt.date,)),
    **dict.fromkeys(("LARGER", "SMALLER"), (int,)),
    **dict.fromkeys(("SEQSET", "UID"), (SequenceSet,)),
    "HEADER": (str, str),
}
_ATOM = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]+')  # RFC 3501 atom
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BOUNDARY_PARAM = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]*)"|([^\s;"]+))', re.IGNORECASE)
_HEADER_CHUNK = 4096
# RFC 2047 decoding is policy.default's unstructured header (lenient: words inside quotes and
# comments, unknown charsets). Its registry builds a new class per lookup: look it up once.
# MIME structure is parsed with compat32, whose raw values are what we decode anyway: under
# policy.default the parser runs the structured header parsers on every Content-Type and
# the search got ~10 times slower.
_UNSTRUCTURED = HeaderRegistry()["x-search"]  # the registry policy.default uses

_T = TypeVar("_T")


class SearchError(Exception):
    """A SEARCH the server must refuse: `code` BADCHARSET means answer
    ``NO [BADCHARSET (UTF-8 US-ASCII)]``; code None means a malformed key, answered BAD."""

    def __init__(self, code: Code | None, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass(slots=True)
class _Headers:
    """One message's header fields, each decoded and folded on first use (a SUBJECT search
    need not decode Received: chains); `text` is the whole block, for TEXT."""

    raw: list[tuple[str, str, str]]  # (lower-case name, name, undecoded value), in order
    sent: dt.date | None  # date of the first Date: field, None when absent or unparsable
    decoded: dict[str, tuple[str, ...]] = field(default_factory=dict)
    parsed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    block: str | None = None

    def values(self, lower_name: str) -> tuple[str, ...]:
        found = self.decoded.get(lower_name)
        if found is None:
            found = tuple(_fold(_decode_header(v)) for n, _, v in self.raw if n == lower_name)
            self.decoded[lower_name] = found
        return found

    def addresses(self, lower_name: str) -> tuple[str, ...]:
        """The address fields named, each rewritten from its parsed addresses, decoded."""
        found = self.parsed.get(lower_name)
        if found is None:
            found = tuple(
                _fold(_decode_header(address_text(_octets(v)).decode("ascii", "surrogateescape")))
                for n, _, v in self.raw
                if n == lower_name
            )
            self.parsed[lower_name] = found
        return found

    def text(self) -> str:
        if self.block is None:
            self.block = "\n".join(
                f"{_fold(name)}: {_fold(_decode_header(value))}" for _, name, value in self.raw
            )
        return self.block


@dataclass
class Candidate:
    """One message as SEARCH sees it. `message` (raw RFC 5322 bytes) may stay None when
    `needs_message(key)` is False. A candidate is a per-search snapshot: the decoded forms
    are cached on it, so do not change `message` or `flags` after the first `matches`."""

    seq: int
    uid: int
    flags: frozenset[str]
    internal_date: dt.datetime
    size: int
    recent: bool
    message: bytes | None = None
    _folded_flags: frozenset[str] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _headers: _Headers | None = field(default=None, init=False, repr=False, compare=False)
    _body: str | None = field(default=None, init=False, repr=False, compare=False)


# -- public API ---------------------------------------------------------------------------


def needs_message(key: SearchKey) -> bool:
    """Whether evaluating `key` reads headers or body, so the engine must load the bytes."""
    stack = [key]
    while stack:
        current = stack.pop()
        if current.name in _MESSAGE_KEYS:
            return True
        stack.extend(arg for arg in current.args if isinstance(arg, SearchKey))
    return False


def validate(key: SearchKey, charset: str | None) -> None:
    """Check the charset, then the key tree's shape, once per command, so that `matches`
    can trust it. Raises `SearchError` (BADCHARSET, or None for a malformed key)."""
    if charset is not None and charset.upper() not in SUPPORTED_CHARSETS:
        raise SearchError(Code.BADCHARSET, f"unsupported charset {charset}")
    _validate(key, 1)


def matches(key: SearchKey, candidate: Candidate, *, largest_seq: int, largest_uid: int) -> bool:
    """Whether `candidate` satisfies `key`. `*` in SEQSET means `largest_seq`, in UID
    `largest_uid` (the mailbox's largest UID, so ``UID 5:*`` always matches it)."""
    return _compiled(key)(candidate, largest_seq, largest_uid)


# -- validation ---------------------------------------------------------------------------


def _validate(key: SearchKey, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise SearchError(None, "search key nested too deeply")
    name = key.name
    if name in ("AND", "OR", "NOT"):
        wanted = {"OR": 2, "NOT": 1}.get(name)
        if not key.args or (wanted is not None and len(key.args) != wanted):
            raise SearchError(None, f"{name} needs {wanted or 'at least one'} search key(s)")
        for child in key.args:
            if not isinstance(child, SearchKey):
                raise SearchError(None, f"{name} operands must be search keys")
            _validate(child, depth + 1)
        return
    schema = _SCHEMA.get(name)
    if schema is None:
        raise SearchError(None, f"unknown search key {name!r}")
    if len(key.args) != len(schema):
        raise SearchError(None, f"{name} takes {len(schema)} argument(s)")
    for arg, kind in zip(key.args, schema, strict=True):
        if not _is_instance(arg, kind):
            raise SearchError(None, f"{name} argument must be {kind.__name__}")
        if isinstance(arg, int) and not 0 <= arg <= MAX_NUMBER:
            raise SearchError(None, f"{name} argument out of range")
        if isinstance(arg, SequenceSet):
            _validate_set(name, arg)
    if name in ("KEYWORD", "UNKEYWORD") and not _ATOM.fullmatch(_str_arg(key)):
        raise SearchError(None, f"{name} needs a keyword atom")
    if name == "HEADER" and not _FIELD_NAME.fullmatch(_str_arg(key)):
        raise SearchError(None, "HEADER needs a valid field name")


def _is_instance(arg: object, kind: _ArgType) -> bool:
    """isinstance, minus the subclasses that are not IMAP values (bool, datetime)."""
    if isinstance(arg, bool) or (kind is dt.date and isinstance(arg, dt.datetime)):
        return False
    return isinstance(arg, kind)


def _validate_set(name: str, numbers: SequenceSet) -> None:
    if not numbers.ranges:
        raise SearchError(None, f"{name} needs a non-empty sequence set")
    for item in numbers.ranges:
        for end in (item.start, item.end):
            if end is not None and (
                isinstance(end, bool) or not isinstance(end, int) or not 1 <= end <= MAX_NUMBER
            ):
                raise SearchError(None, f"{name}: invalid number in sequence set")


# -- evaluation ---------------------------------------------------------------------------

# A key is compiled once into nested closures (needles folded, cheap tests ordered first)
# and the closures run for every message: interpreting the tree per message cost ~3 µs per
# node, which a 100-deep ``OR UID 1 OR UID 2 ...`` over 5,000 messages turns into seconds.
_Test = Callable[[Candidate, int, int], bool]  # (candidate, largest_seq, largest_uid)
_COMPILED: dict[int, tuple[SearchKey, _Test]] = {}  # by id; holding the key pins its id
_COMPILED_MAX = 32


def _compiled(key: SearchKey) -> _Test:
    entry = _COMPILED.get(id(key))
    if entry is None or entry[0] is not key:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        entry = _COMPILED[id(key)] = (key, _compile(key, 1))
    return entry[1]


def _compile(key: SearchKey, depth: int) -> _Test:
    if depth > MAX_DEPTH:
        raise SearchError(None, "search key nested too deeply")
    name = key.name
    flag = _FLAG_KEYS.get(name)
    if flag is not None:
        system_flag, present = flag
        return lambda c, _s, _u: (system_flag in _flags(c)) is present
    if name in ("AND", "OR"):
        count = 2 if name == "OR" else None
        tests = [_compile(child, depth + 1) for child in _cheap_first(_children(key, count))]
        return _all_of(tests) if name == "AND" else _any_of(tests)
    if name == "NOT":
        inner = _compile(_children(key, 1)[0], depth + 1)
        return lambda c, s, u: not inner(c, s, u)
    if name in _HEADER_KEYS or name == "HEADER":
        field_name = _HEADER_KEYS.get(name) or _str_arg(key).lower()
        needle = _fold(_str_arg(key, 1 if name == "HEADER" else 0))
        if name != "HEADER" and field_name in _ADDRESS_FIELDS:
            return lambda c, _s, _u: (
                any(needle in v for v in _headers(c).values(field_name))
                or any(needle in v for v in _headers(c).addresses(field_name))
            )
        return lambda c, _s, _u: any(needle in v for v in _headers(c).values(field_name))
    if name == "BODY":
        needle = _fold(_str_arg(key))
        return lambda c, _s, _u: needle in _body(c)
    if name == "TEXT":
        needle = _fold(_str_arg(key))
        return lambda c, _s, _u: needle in _headers(c).text() or needle in _body(c)
    if name in _DATE_KEYS:
        return _date_test(name, _date_arg(key), sent=False)
    if name in _SENT_KEYS:
        return _date_test(_SENT_KEYS[name], _date_arg(key), sent=True)
    if name == "SEQSET":
        seqs = _arg(key, 0, SequenceSet)
        return lambda c, s, _u: seqs.contains(c.seq, s)
    if name == "UID":
        uids = _arg(key, 0, SequenceSet)
        return lambda c, _s, u: uids.contains(c.uid, u)
    if name in ("LARGER", "SMALLER"):
        size = _arg(key, 0, int)
        if name == "LARGER":
            return lambda c, _s, _u: c.size > size
        return lambda c, _s, _u: c.size < size
    if name in ("KEYWORD", "UNKEYWORD"):
        keyword, present = _str_arg(key).casefold(), name == "KEYWORD"
        return lambda c, _s, _u: (keyword in _flags(c)) is present
    state = _STATE_TESTS.get(name)
    if state is not None:
        return lambda c, _s, _u: state(c)
    raise SearchError(None, f"unknown search key {name!r}")


_STATE_TESTS: dict[str, Callable[[Candidate], bool]] = {
    "ALL": lambda c: True,
    "RECENT": lambda c: c.recent,
    "NEW": lambda c: c.recent and "\\seen" not in _flags(c),
    "OLD": lambda c: not c.recent,
}


def _all_of(tests: list[_Test]) -> _Test:
    def test(c: Candidate, s: int, u: int) -> bool:
        return all(t(c, s, u) for t in tests)

    return test


def _any_of(tests: list[_Test]) -> _Test:
    first, second = tests
    return lambda c, s, u: first(c, s, u) or second(c, s, u)


def _date_test(op: str, target: dt.date, *, sent: bool) -> _Test:
    """Internal date in its own offset; sent date from Date:, else the internal date."""

    def test(c: Candidate, _s: int, _u: int) -> bool:
        value = _headers(c).sent if sent else None
        return _compare_dates(op, c.internal_date.date() if value is None else value, target)

    return test


def _cheap_first(children: Sequence[SearchKey]) -> list[SearchKey]:
    """Keys that need no message first: a candidate they reject is never decoded."""
    return sorted(children, key=needs_message)  # stable: False first


def _compare_dates(op: str, value: dt.date, target: dt.date) -> bool:
    if op == "BEFORE":
        return value < target
    if op == "ON":
        return value == target
    return value >= target  # SINCE


def _arg(key: SearchKey, index: int, kind: type[_T]) -> _T:
    """Typed access to an argument; a key that skipped `validate` fails cleanly (BAD)."""
    value = key.args[index] if index < len(key.args) else None
    if not isinstance(value, kind):
        raise SearchError(None, f"{key.name}: argument {index + 1} must be {kind.__name__}")
    return value


def _str_arg(key: SearchKey, index: int = 0) -> str:
    return _arg(key, index, str)


def _date_arg(key: SearchKey) -> dt.date:
    return _arg(key, 0, dt.date)


def _children(key: SearchKey, count: int | None = None) -> tuple[SearchKey, ...]:
    children = tuple(_arg(key, i, SearchKey) for i in range(len(key.args)))
    if not children or (count is not None and len(children) != count):
        raise SearchError(None, f"{key.name}: wrong number of search keys")
    return children


def _flags(c: Candidate) -> frozenset[str]:
    if c._folded_flags is None:
        c._folded_flags = frozenset(flag.casefold() for flag in c.flags)
    return c._folded_flags


# -- decoding -----------------------------------------------------------------------------


def _fold(text: str) -> str:
    """The comparison form: case-insensitive (full case folding), canonical composition."""
    return unicodedata.normalize("NFKC", text.casefold())


def _raw(c: Candidate) -> bytes:
    if c.message is None:
        raise ValueError(f"message {c.uid} not loaded although the search key needs it")
    return c.message


def _headers(c: Candidate) -> _Headers:
    if c._headers is None:
        c._headers = _parse_headers(_raw(c))
    return c._headers


def _body(c: Candidate) -> str:
    if c._body is None:
        c._body = _parse_body(_raw(c))
    return c._body


def _header_end(raw: bytes) -> int:
    """Offset of the blank line ending the header block (or the end of the message)."""
    if raw.startswith((b"\r\n", b"\n")):
        return 0
    found = re.search(rb"\r?\n\r?\n", raw)
    return len(raw) if found is None else found.start()


def _parse_headers(raw: bytes) -> _Headers:
    block = raw[:MAX_HEADER_BYTES]
    items = [(name.lower(), name, value) for name, value in _raw_items(block[: _header_end(block)])]
    date = next((value for lower, _, value in items if lower == "date"), None)
    return _Headers(items, None if date is None else _parse_date(_decode_header(date)))


def _raw_items(header_block: bytes) -> list[tuple[str, str]]:
    try:
        parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(header_block)
        return [(str(name), str(value)) for name, value in parsed.raw_items()]
    except Exception:
        return []


def _decode_header(value: str) -> str:
    """RFC 2047 words decoded anywhere (also inside quotes and comments, as mailers put
    them there), raw 8-bit read as UTF-8; never raises."""
    unfolded = _LINE_BREAK.sub("", value)
    if "=?" not in unfolded:
        return unfolded if unfolded.isascii() else _clean(unfolded)
    return "".join(_decode_words(chunk) for chunk in _chunks(unfolded))


def _chunks(text: str) -> Iterator[str]:
    """Pieces of at most ~_HEADER_CHUNK characters, cut before a space (encoded words
    have none): the email header parser is quadratic in the length of one value."""
    start = 0
    while len(text) - start > _HEADER_CHUNK:
        cut = text.rfind(" ", start + 1, start + _HEADER_CHUNK)
        cut = start + _HEADER_CHUNK if cut < 0 else cut
        yield text[start:cut]
        start = cut
    yield text[start:]


def _decode_words(text: str) -> str:
    try:
        return _clean(str(_UNSTRUCTURED("x-search", text)))
    except Exception:
        return _clean(text)


def _octets(value: str) -> bytes:
    """A header value back to the bytes it was parsed from (8-bit ones surrogate-escaped)."""
    return value.encode("utf-8", "surrogateescape")


def _clean(text: str) -> str:
    """Surrogate-escaped bytes (from the parser) back to UTF-8 text, U+FFFD when invalid."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _parse_date(value: str) -> dt.date | None:
    try:
        return email.utils.parsedate_to_datetime(value).date()
    except Exception:
        return None


def _parse_body(raw: bytes) -> str:
    """The folded searchable body; raw text when MIME parsing fails or would cost too much."""
    data = raw[:MAX_PARSE_BYTES]
    text = None if _mime_too_costly(data) else _mime_text(data)
    if text is None:
        rest = data[_header_end(data) :].lstrip(b"\r\n")
        text = rest[:MAX_BODY_TEXT].decode("utf-8", "replace")
    return _fold(text)


def _mime_text(data: bytes) -> str | None:
    try:
        return _body_text(BytesParser(policy=policy.compat32).parsebytes(data))
    except Exception:  # a parser bug on hostile input: the caller searches raw text
        return None


def _mime_too_costly(data: bytes) -> bool:
    declared = {b for m in _BOUNDARY_PARAM.finditer(data) if (b := m.group(1) or m.group(2))}
    if len(declared) > MAX_BOUNDARIES:
        return True
    if len(declared) > 1 and len(declared) * data.count(b"\n") > MAX_MIME_WORK:
        return True
    return sum(data.count(b"\n--" + boundary) for boundary in declared) > MAX_MIME_PARTS


def _body_text(message: Message) -> str:
    """Decoded text parts (and attached messages' headers) in order, up to MAX_BODY_TEXT."""
    pieces: list[str] = []
    budget = MAX_BODY_TEXT
    stack: list[tuple[Message, bool]] = [(message, False)]
    while stack and budget > 0:
        part, embedded = stack.pop()
        text = ""
        if embedded:
            text = "".join(
                f"{name}: {_decode_header(str(value))}\n" for name, value in part.raw_items()
            )
        payload = part.get_payload()
        if isinstance(payload, list):
            inner = part.get_content_maintype() == "message"
            stack.extend((sub, inner) for sub in reversed(payload) if isinstance(sub, Message))
        elif part.get_content_maintype() in ("text", "message", "multipart"):
            # message/global and boundary-less multiparts are text as far as SEARCH goes
            text += _part_text(part)
        pieces.append(text[:budget])
        budget -= len(pieces[-1])
    return "".join(pieces)


def _part_text(part: Message) -> str:
    """A leaf part's text: transfer encoding undone, then its charset (UTF-8 fallback)."""
    try:
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            return ""
        charset = part.get_content_charset() or "utf-8"
        try:
            return data.decode(charset)
        except (LookupError, UnicodeError, ValueError):
            return data.decode("utf-8", "replace")
    except Exception:
        return _clean(str(part.get_payload()))
