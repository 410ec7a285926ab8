"""The client-side IMAP codec: framing of server responses (literals, chunking, limits),
lazy data parsing, response codes and the small tagging connection."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap.client import (
    ClientConnection,
    Continuation,
    Event,
    ParsedValue,
    ParseError,
    ProtocolViolation,
    ResponseParser,
    Tagged,
    Untagged,
    parse_capabilities,
    parse_code,
    parse_values,
)
from gateway.imap.response import (
    Atom,
    Literal,
    Value,
    continuation,
    encode,
    tagged,
    untagged,
    untagged_status,
)

PROPERTY = settings(max_examples=300, deadline=None)


def feed(data: bytes, *chunks: int, parser: ResponseParser | None = None) -> list[Event]:
    """Feed `data` split at the given offsets, draining events after every chunk."""
    parser = parser if parser is not None else ResponseParser()
    events: list[Event] = []
    start = 0
    for cut in [*sorted(chunks), len(data)]:
        if cut > start:  # an empty chunk would mean end of stream
            parser.receive_data(data[start:cut])
            start = cut
        while (event := parser.next_event()) is not None:
            events.append(event)
    return events


def one(data: bytes) -> Event:
    events = feed(data)
    assert len(events) == 1, events
    return events[0]


def untagged_event(data: bytes) -> Untagged:
    event = one(data)
    assert isinstance(event, Untagged)
    assert event.raw == data
    return event


def violation(data: bytes, parser: ResponseParser | None = None) -> ProtocolViolation:
    events = feed(data, parser=parser)
    assert events, "expected a violation"
    assert isinstance(events[-1], ProtocolViolation), events
    return events[-1]


# -- greetings, tagged, continuations ---------------------------------------------------


def test_greeting_with_capabilities() -> None:
    event = untagged_event(b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN literal+] ready\r\n")
    assert (event.kind, event.number, event.text) == ("OK", None, "ready")
    assert event.code == "CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN literal+"
    assert parse_capabilities(event) == frozenset({"IMAP4REV1", "IDLE", "AUTH=PLAIN", "LITERAL+"})


def test_preauth_and_bye() -> None:
    assert untagged_event(b"* PREAUTH logged in\r\n").kind == "PREAUTH"
    bye = untagged_event(b"* BYE [UNAVAILABLE] shutting down\r\n")
    assert (bye.kind, bye.code, bye.text) == ("BYE", "UNAVAILABLE", "shutting down")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"A0001 OK done\r\n", ("A0001", "OK", None, "done")),
        (b"A0001 ok done\r\n", ("A0001", "OK", None, "done")),
        (b"a.2 NO [TRYCREATE] no such mailbox\r\n", ("a.2", "NO", "TRYCREATE", "no such mailbox")),
        (b"x BAD [PARSE] bad syntax\r\n", ("x", "BAD", "PARSE", "bad syntax")),
        (b"A3 OK [READ-WRITE]\r\n", ("A3", "OK", "READ-WRITE", "")),
        (b"A4 OK\r\n", ("A4", "OK", None, "")),
        (b"A5 OK [unclosed code\r\n", ("A5", "OK", None, "[unclosed code")),
        (
            b"A6 OK text ending like a literal {5}\r\n",
            ("A6", "OK", None, "text ending like a literal {5}"),
        ),
        ("A7 NO déjà vu\r\n".encode(), ("A7", "NO", None, "déjà vu")),
    ],
)
def test_tagged(line: bytes, expected: tuple[str, str, str | None, str]) -> None:
    event = one(line)
    assert isinstance(event, Tagged)
    assert (event.tag, event.status, event.code, event.text) == expected
    assert event.raw == line


def test_tagged_matches_encoder() -> None:
    line = tagged("A9", "OK", "SELECT completed", code="READ-WRITE")
    assert one(line) == Tagged("A9", "OK", "READ-WRITE", "SELECT completed", line)


def test_untagged_status_with_literal_like_text_is_one_line() -> None:
    data = b"* OK watch out {3}\r\nA1 OK done\r\n"
    events = feed(data)
    assert [type(e) for e in events] == [Untagged, Tagged]
    assert isinstance(events[0], Untagged)
    assert events[0].text == "watch out {3}"


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b"+ idling\r\n", b"idling"),
        (b"+ \r\n", b""),
        (b"+\r\n", b""),
        (b"+ Ready for literal data {3}\r\n", b"Ready for literal data {3}"),
        (b"+ PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2U+\r\n", b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2U+"),
        (b"+ dXNlcj0=\r\n", b"dXNlcj0="),
    ],
)
def test_continuation(line: bytes, text: bytes) -> None:
    assert one(line) == Continuation(text, line)


def test_continuation_from_encoder() -> None:
    assert one(continuation("idling")) == Continuation(b"idling", b"+ idling\r\n")
    assert one(continuation()) == Continuation(b"", b"+ \r\n")


# -- data responses ------------------------------------------------------------------------


FETCH = (
    b"* 1 FETCH (UID 5 BODY[] {11}\r\nhello world FLAGS (\\Seen))\r\n"
    b"* 2 FETCH (BODY[HEADER.FIELDS (FROM TO)] {18}\r\nFrom: a\r\nTo: b\r\n\r\n"
    b" BODY[1]<0> {0}\r\n BODY[TEXT] {6}\r\n) \r\n\r\n BINARY[2] ~{2}\r\n\x00\xff)\r\n"
    b"A0004 OK [EXPUNGEISSUED] FETCH done\r\n"
)


def test_fetch_with_several_literals() -> None:
    events = feed(FETCH)
    assert [type(e) for e in events] == [Untagged, Untagged, Tagged]
    assert b"".join(e.raw for e in events if not isinstance(e, ProtocolViolation)) == FETCH
    first, second = events[0], events[1]
    assert isinstance(first, Untagged)
    assert isinstance(second, Untagged)
    assert (first.kind, first.number, first.code) == ("FETCH", 1, None)
    assert first.values() == [
        1,
        Atom("FETCH"),
        [Atom("UID"), 5, Atom("BODY[]"), b"hello world", Atom("FLAGS"), [Atom("\\Seen")]],
    ]
    assert second.values() == [
        2,
        Atom("FETCH"),
        [
            Atom("BODY[HEADER.FIELDS (FROM TO)]"),
            b"From: a\r\nTo: b\r\n\r\n",
            Atom("BODY[1]<0>"),
            b"",
            Atom("BODY[TEXT]"),
            b") \r\n\r\n",
            Atom("BINARY[2]"),
            b"\x00\xff",
        ],
    ]


def test_every_chunking_gives_the_same_events() -> None:
    """Two chunks split at every offset, and byte by byte: identical events and raw."""
    expected = feed(FETCH)
    for cut in range(len(FETCH) + 1):
        assert feed(FETCH, cut) == expected, cut
    assert feed(FETCH, *range(len(FETCH))) == expected


def test_literal_ending_in_brace_then_end_of_line() -> None:
    """The octets of a literal are never taken for a literal announcement."""
    data = b"* X {4}\r\n{99}\r\n* 2 EXISTS\r\n"
    events = feed(data)
    assert [e.raw for e in events if isinstance(e, Untagged)] == [
        b"* X {4}\r\n{99}\r\n",
        b"* 2 EXISTS\r\n",
    ]
    assert isinstance(events[0], Untagged)
    assert events[0].values() == [Atom("X"), b"{99}"]
    data = b"* LIST () NIL {1}\r\n}\r\n"
    assert untagged_event(data).values() == [Atom("LIST"), [], None, b"}"]


def test_list_with_quoted_and_literal_names() -> None:
    quoted = untagged_event(b'* LIST (\\HasNoChildren \\Marked) "/" "Sent \\"old\\""\r\n')
    assert quoted.kind == "LIST"
    assert quoted.values() == [
        Atom("LIST"),
        [Atom("\\HasNoChildren"), Atom("\\Marked")],
        b"/",
        b'Sent "old"',
    ]
    literal = untagged_event(b'* LIST () NIL {9}\r\nA\r\nB (c)"\r\n')
    assert literal.values() == [Atom("LIST"), [], None, b'A\r\nB (c)"']
    atom = untagged_event(b'* LSUB (\\Noselect) "." INBOX.foo]bar\r\n')
    assert atom.values()[-1] == Atom("INBOX.foo]bar")


def test_nil_and_nested_bodystructure() -> None:
    data = (
        b'* 3 FETCH (BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 12 1)'
        b' ("APPLICATION" "PDF" ("NAME" "a.pdf") NIL NIL "BASE64" 4096 NIL'
        b' ("attachment" ("FILENAME" "a.pdf")) NIL) "MIXED" ("BOUNDARY" "xyz") NIL nil))\r\n'
    )
    event = untagged_event(data)
    assert (event.kind, event.number) == ("FETCH", 3)
    body = event.values()[2]
    assert isinstance(body, list)
    structure = body[1]
    assert structure == [
        [b"TEXT", b"PLAIN", [b"CHARSET", b"utf-8"], None, None, b"7BIT", 12, 1],
        [
            b"APPLICATION",
            b"PDF",
            [b"NAME", b"a.pdf"],
            None,
            None,
            b"BASE64",
            4096,
            None,
            [b"attachment", [b"FILENAME", b"a.pdf"]],
            None,
        ],
        b"MIXED",
        [b"BOUNDARY", b"xyz"],
        None,
        None,
    ]


def test_status_search_flags_expunge_exists_recent() -> None:
    status = untagged_event(b'* STATUS "Sent Items" (MESSAGES 3 UIDNEXT 44 UNSEEN 0)\r\n')
    assert status.kind == "STATUS"
    assert status.values() == [
        Atom("STATUS"),
        b"Sent Items",
        [Atom("MESSAGES"), 3, Atom("UIDNEXT"), 44, Atom("UNSEEN"), 0],
    ]
    search = untagged_event(b"* SEARCH 2 3 5 4294967295\r\n")
    assert (search.kind, search.values()) == ("SEARCH", [Atom("SEARCH"), 2, 3, 5, 4294967295])
    assert untagged_event(b"* SEARCH\r\n").values() == [Atom("SEARCH")]
    flags = untagged_event(b"* FLAGS (\\Answered \\Seen $Forwarded)\r\n")
    assert flags.values() == [
        Atom("FLAGS"),
        [Atom("\\Answered"), Atom("\\Seen"), Atom("$Forwarded")],
    ]
    for line, kind, number in [
        (b"* 3 EXPUNGE\r\n", "EXPUNGE", 3),
        (b"* 18 exists\r\n", "EXISTS", 18),
        (b"* 0 RECENT\r\n", "RECENT", 0),
    ]:
        event = untagged_event(line)
        assert (event.kind, event.number, event.code) == (kind, number, None)
    permanent = untagged_event(b"* OK [PERMANENTFLAGS (\\Seen \\*)] Limited\r\n")
    assert parse_code(permanent.code or "") == ("PERMANENTFLAGS", "(\\Seen \\*)")
    assert parse_values(parse_code(permanent.code or "")[1].encode()) == [
        [Atom("\\Seen"), Atom("\\*")]
    ]


def test_capability_response() -> None:
    event = untagged_event(b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=XOAUTH2\r\n")
    assert event.kind == "CAPABILITY"
    assert parse_capabilities(event) == frozenset({"IMAP4REV1", "STARTTLS", "AUTH=XOAUTH2"})
    assert parse_capabilities(untagged_event(b"* 1 EXISTS\r\n")) is None
    login = one(b"A1 OK [CAPABILITY IMAP4rev1 MOVE] Logged in\r\n")
    assert isinstance(login, Tagged)
    assert parse_capabilities(login) == frozenset({"IMAP4REV1", "MOVE"})
    assert parse_capabilities("imap4rev1  idle") == frozenset({"IMAP4REV1", "IDLE"})
    assert parse_capabilities(untagged_event(b"* CAPABILITY\r\n")) == frozenset()


def test_sessions_of_one_backend_share_its_capability_set() -> None:
    """Thousands of idle sessions each held a copy of the same set: one is shared."""
    raw = b"* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID IDLE ENABLE MOVE\r\n"
    first, second = parse_capabilities(untagged_event(raw)), parse_capabilities(untagged_event(raw))
    assert first == frozenset({"IMAP4REV1", "SASL-IR", "LITERAL+", "ID", "IDLE", "ENABLE", "MOVE"})
    assert first is second


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("UIDNEXT 42", ("UIDNEXT", "42")),
        ("uidvalidity 3857529045", ("UIDVALIDITY", "3857529045")),
        ("ALERT", ("ALERT", "")),
        ("CAPABILITY IMAP4rev1 IDLE", ("CAPABILITY", "IMAP4rev1 IDLE")),
        ("APPENDUID 38505 3955", ("APPENDUID", "38505 3955")),
    ],
)
def test_parse_code(code: str, expected: tuple[str, str]) -> None:
    assert parse_code(code) == expected


# -- parse_values edge cases -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (b"()", [[]]),
        (b"( 1  2 )", [[1, 2]]),
        (b'""', [b""]),
        (b'"a\\\\b"\r\n', [b"a\\b"]),
        (b"{0}\r\n", [b""]),
        (b"{2}\r\n\r\n\r\n", [b"\r\n"]),
        (b"~foo NIL", [Atom("~foo"), None]),
        (b"BODY[]<0> 007", [Atom("BODY[]<0>"), 7]),
        # RFC 3501 body-type-mpart: a multipart's bodies follow each other with no space
        (b'(("a")("b") "mixed")', [[[b"a"], [b"b"], b"mixed"]]),
    ],
)
def test_parse_values(data: bytes, expected: list[ParsedValue]) -> None:
    assert parse_values(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"(",
        b")",
        b"(()",
        b'"unterminated',
        b'"a""b"',
        b"{5}\r\nab",
        b"{x}\r\n",
        b"a\r\nb",
        b"(a)b",
        b"1" * 30,
        b"\x00",
    ],
)
def test_parse_values_rejects(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_values(data)


def test_depth_limit() -> None:
    assert parse_values(b"(" * 100 + b")" * 100) != []
    with pytest.raises(ParseError):
        parse_values(b"(" * 101 + b")" * 101)
    with pytest.raises(ParseError):
        parse_values(b"(" * 100_000)  # no RecursionError
    event = untagged_event(b"* X " + b"(" * 5 + b")" * 5 + b"\r\n")
    with pytest.raises(ParseError):
        event.values(max_depth=4)


# -- garbage, limits, end of stream ------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\n",
        b"\r\n",
        b"*\r\n",
        b"* \r\n",
        b"* 3\r\n",
        b"* 3 4\r\n",
        b"* (FOO)\r\n",
        b"A1 BYE no\r\n",
        b"A1 FETCH (UID 1)\r\n",
        b"A1\r\n",
        b"+OK POP3 server ready\r\n-ERR\r\n",  # "+OK" passes for a continuation, not "-ERR"
        b"* OK hi\n",
        b"* 1 FETCH (BODY[] {1}\r\nx\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",  # a TLS ClientHello
        b"* 1 FETCH (BODY[] {123456789012345678901234}\r\n",
    ],
)
def test_garbage_is_a_violation(data: bytes) -> None:
    violation(data)


def test_violation_is_final() -> None:
    parser = ResponseParser()
    parser.receive_data(b"* 1 EXISTS\r\nGARBAGE\r\n* 2 EXISTS\r\n")
    assert isinstance(parser.next_event(), Untagged)
    assert isinstance(parser.next_event(), ProtocolViolation)
    assert parser.failed is not None
    parser.receive_data(b"* 3 EXISTS\r\n")
    assert parser.next_event() is None


def test_oversized_line() -> None:
    parser = ResponseParser(max_line_length=100)
    ok = b"* SEARCH " + b"1 " * 45 + b"\r\n"
    assert len(ok) - 2 <= 100
    assert isinstance(feed(ok, parser=parser)[0], Untagged)
    # Detected before the CRLF arrives: memory stays bounded.
    event = violation(b"* SEARCH " + b"1 " * 100, parser=ResponseParser(max_line_length=100))
    assert "line" in event.message
    # The line parts of one response add up, literals excluded.
    parser = ResponseParser(max_line_length=40)
    small = b"* 1 FETCH (BODY[1] {50}\r\n" + b"x" * 50 + b" BODY[2] {0}\r\n)\r\n"
    assert isinstance(feed(small, parser=parser)[0], Untagged)
    parts = b"* 1 FETCH (A {0}\r\n B {0}\r\n C {0}\r\n D {0}\r\n)\r\n"  # 35 line octets
    assert isinstance(feed(parts, parser=ResponseParser(max_line_length=35))[-1], Untagged)
    assert isinstance(feed(parts, parser=ResponseParser(max_line_length=34))[-1], ProtocolViolation)


def test_oversized_literal_and_response() -> None:
    event = violation(b"* 1 FETCH (BODY[] {11}\r\n", ResponseParser(max_literal_size=10))
    assert "literal" in event.message
    ok = b"* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n"
    assert isinstance(feed(ok, parser=ResponseParser(max_literal_size=10))[0], Untagged)
    many = b"* 1 FETCH (A {10}\r\n0123456789 B {10}\r\n0123456789)\r\n"
    event = violation(many, ResponseParser(max_literal_size=10, max_response_size=40))
    assert "response" in event.message
    # The violation comes as soon as the announcement is read, not after the octets.
    parser = ResponseParser()
    parser.receive_data(b"* 1 FETCH (BODY[] {%d}\r\n" % (parser.max_literal_size + 1))
    assert isinstance(parser.next_event(), ProtocolViolation)


def test_end_of_stream() -> None:
    parser = ResponseParser()
    parser.receive_data(b"* BYE bye\r\n")
    parser.receive_data(b"")
    assert isinstance(parser.next_event(), Untagged)
    assert parser.next_event() is None
    with pytest.raises(RuntimeError):
        parser.receive_data(b"more")
    truncated = ResponseParser()
    truncated.receive_data(b"* 1 FETCH (BODY[] {10}\r\nabc")
    assert truncated.next_event() is None
    truncated.receive_data(b"")
    event = truncated.next_event()
    assert isinstance(event, ProtocolViolation)
    assert "closed" in event.message


def test_large_literal_in_chunks_is_fast() -> None:
    size = 32 * 1024 * 1024
    body = b"x" * size
    parser = ResponseParser()
    started = time.perf_counter()
    parser.receive_data(b"* 1 FETCH (BODY[] {%d}\r\n" % size)
    for offset in range(0, size, 16 * 1024):
        parser.receive_data(body[offset : offset + 16 * 1024])
        assert parser.next_event() is None
    parser.receive_data(b" UID 9)\r\n")
    event = parser.next_event()
    assert time.perf_counter() - started < 5
    assert isinstance(event, Untagged)
    assert len(event.raw) == size + len(b"* 1 FETCH (BODY[] {%d}\r\n UID 9)\r\n" % size)


def test_long_line_in_small_chunks_and_many_responses_are_linear() -> None:
    started = time.perf_counter()
    line = b"* SEARCH" + b" 123456" * 9000 + b"\r\n"
    events = feed(line, *range(0, len(line), 7))
    assert len(events) == 1
    assert isinstance(events[0], Untagged)
    many = b"* 1 EXISTS\r\n" * 50_000 + b"A1 OK done\r\n"
    events = feed(many, len(many) // 3)
    assert len(events) == 50_001
    assert time.perf_counter() - started < 5


# -- ClientConnection ----------------------------------------------------------------------------


def test_client_connection_tags_and_completion() -> None:
    connection = ClientConnection()
    assert connection.next_tag() == "A0001"
    tag, data = connection.send(b"SELECT INBOX")
    assert (tag, data) == ("A0002", b"A0002 SELECT INBOX\r\n")
    other, _ = connection.send(b"NOOP")
    assert connection.pending == ("A0002", "A0003")
    connection.receive_data(b"* 3 EXISTS\r\nA0002 OK [READ-WRITE] done\r\n")
    assert isinstance(connection.next_event(), Untagged)
    done = connection.next_event()
    assert isinstance(done, Tagged)
    assert done.tag == tag
    assert list(connection.pending) == [other]
    assert connection.next_event() is None
    connection.receive_data(b"A0002 OK again\r\n")
    assert isinstance(connection.next_event(), ProtocolViolation)
    assert connection.next_event() is None


def test_client_connection_tag_width_grows() -> None:
    connection = ClientConnection(tag_prefix="T")
    tags = [connection.next_tag() for _ in range(10_000)]
    assert tags[0] == "T0001"
    assert tags[-2:] == ["T9999", "T10000"]
    assert len(set(tags)) == len(tags)
    with pytest.raises(ValueError, match="prefix"):
        ClientConnection(tag_prefix="A B")


# -- properties ------------------------------------------------------------------------------------

# ATOM-CHAR without "[" (a bracket would legitimately swallow the next space-separated atom).
ATOM_ALPHABET = "".join(
    chr(c) for c in range(0x21, 0x7F) if chr(c) not in '(){%*"[]' and chr(c) not in "\\"
)
TAG_ALPHABET = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '(){%*"\\+')
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)


def _is_plain_atom(word: str) -> bool:
    return not word.isdigit() and word.upper() != "NIL" and not word.startswith("~{")


atoms = st.builds(
    Atom,
    st.text(ATOM_ALPHABET, min_size=1, max_size=12).filter(_is_plain_atom)
    | st.from_regex(r"\\[A-Za-z]{1,8}", fullmatch=True),  # flags
)
scalars: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.integers(0, 2**64 - 1),
    atoms,
    TEXT,
    st.binary(max_size=40),
    st.builds(Literal, st.binary(max_size=40)),
    st.sampled_from([b"x" * 1025, b"{3}\r\n)", b") \r\n* 1 EXISTS\r\n"]),
)
values: st.SearchStrategy[Value] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner),
    max_leaves=12,
)
DATA_KINDS = ["FETCH", "LIST", "LSUB", "SEARCH", "STATUS", "FLAGS", "X-FOO", "CAPABILITY"]
data_heads = st.sampled_from(DATA_KINDS).map(lambda k: [Atom(k)]) | st.tuples(
    st.integers(0, 2**32), st.sampled_from(["FETCH", "EXISTS", "EXPUNGE", "RECENT"]).map(Atom)
).map(list)
codes = st.none() | st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="]"), max_size=20
)


def expected_values(value: Value) -> ParsedValue:
    """What `values()` gives back for what `encode` was given."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, Literal):
        return value.value
    if isinstance(value, bytes | int | Atom) or value is None:
        return value
    assert isinstance(value, Sequence)
    return [expected_values(item) for item in value]


responses = st.one_of(
    st.builds(
        tagged,
        st.text(TAG_ALPHABET, min_size=1, max_size=8),
        st.sampled_from(["OK", "NO", "BAD"]),
        TEXT,
        codes,
    ),
    st.builds(untagged_status, st.sampled_from(["OK", "NO", "BAD", "BYE", "PREAUTH"]), TEXT, codes),
    st.builds(lambda t: continuation(t), TEXT | st.binary(max_size=30)),
    st.builds(lambda head, rest: untagged(*head, *rest), data_heads, st.lists(values, max_size=4)),
)


@PROPERTY
@given(st.lists(responses, min_size=1, max_size=6), st.data())
def test_raw_reproduces_the_stream_for_any_chunking(
    items: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(items)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    whole = feed(stream)
    chunked = feed(stream, *cuts)
    assert chunked == whole
    assert [e.raw for e in chunked if not isinstance(e, ProtocolViolation)] == items
    for item, event in zip(items, chunked, strict=True):
        expected_type = {ord("*"): Untagged, ord("+"): Continuation}.get(item[0], Tagged)
        assert type(event) is expected_type


@PROPERTY
@given(data_heads, st.lists(values, max_size=5))
def test_values_round_trip(head: list[Value], rest: list[Value]) -> None:
    event = untagged_event(untagged(*head, *rest))
    assert event.values() == [expected_values(v) for v in [*head, *rest]]
    assert event.kind == str(head[-1].value if isinstance(head[-1], Atom) else "").upper()
    assert event.number == (head[0] if len(head) == 2 else None)
    assert parse_values(encode(rest)) == [expected_values(rest)]


@PROPERTY
@given(TEXT, codes, st.sampled_from(["OK", "NO", "BAD"]))
def test_tagged_fields_round_trip(text: str, code: str | None, status: str) -> None:
    line = tagged("A1", status, text, code)  # type: ignore[arg-type]
    event = one(line)
    assert isinstance(event, Tagged)
    assert event.status == status
    cleaned = text.replace("\r", " ").replace("\n", " ").strip() or "."
    if code:
        assert (event.code, event.text) == (code, cleaned)
    elif not cleaned.startswith("["):
        assert (event.code, event.text) == (None, cleaned)


NOISE = st.lists(
    st.binary(max_size=12)
    | st.sampled_from(
        [b"* ", b"+ ", b"A1 OK ", b"* 1 FETCH (", b"{3}\r\n", b"{0}\r\n", b"\r\n", b"(", b")"]
    )
    | st.sampled_from([b'"', b"\\", b"NIL ", b"~{2}\r\n", b"\n", b"{99999999999}\r\n"]),
    max_size=20,
).map(b"".join)


@PROPERTY
@given(NOISE, st.data())
def test_random_bytes_never_raise(noise: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(noise)), max_size=6))
    parser = ResponseParser(max_line_length=64, max_literal_size=32, max_response_size=128)
    events = feed(noise, *cuts, parser=parser)
    parser.receive_data(b"")
    while (event := parser.next_event()) is not None:
        events.append(event)
    raws = b"".join(e.raw for e in events if not isinstance(e, ProtocolViolation))
    assert noise.startswith(raws)
    assert all(isinstance(e, ProtocolViolation) for e in events[len(events) - 1 :] if raws != noise)
    for event in events:
        if isinstance(event, Untagged):
            assert isinstance(event.kind, str)
            _ = (event.number, event.code, event.text, parse_capabilities(event))
            with contextlib.suppress(ParseError):
                event.values()
    with contextlib.suppress(ParseError):
        parse_values(noise)
