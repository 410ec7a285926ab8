"""The proxy's response framer: boundaries found however the bytes are split, literals
passed through untouched, limits enforced; and the rights each command needs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.fronts.imap.rights import audit_action, audit_detail, required_right
from gateway.imap.framing import FramingError, ResponseFramer
from gateway.imap.parser import CommandParser

RESPONSES = [
    b"* 3 EXISTS\r\n",
    b"* 1 FETCH (UID 7 BODY[] {7}\r\nhello\r\n BODY[1] {2}\r\nab FLAGS (\\Seen))\r\n",
    b"* 2 FETCH (BODY[HEADER] {0}\r\n)\r\n",
    b"* OK [CAPABILITY IMAP4rev1 IDLE] text ending like a literal {5}\r\n",
    b"+ idling\r\n",
    b"A1 OK [READ-WRITE] SELECT completed\r\n",
    b"A2 NO Mailbox doesn't exist: x{5}\r\n",
    b"* BYE going {3}\r\n",
    b"* 4 FETCH (BINARY[1] ~{3}\r\n\x00\x01\x02)\r\n",
]


def heads(framer: ResponseFramer, chunks: list[bytes]) -> tuple[bytes, list[bytes]]:
    out, first_lines = bytearray(), []
    for chunk in chunks:
        for segment in framer.feed(chunk):
            out += segment.data
            if segment.head:
                first_lines.append(bytes(segment.data))
    return bytes(out), first_lines


@given(st.lists(st.sampled_from(RESPONSES), min_size=1, max_size=8), st.data())
def test_any_split_gives_the_same_bytes_and_heads(responses: list[bytes], data: st.DataObject):
    stream = b"".join(responses)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    framer = ResponseFramer()
    out, first_lines = heads(framer, [c for c in chunks if c])
    assert out == stream
    assert first_lines == [response.split(b"\r\n", 1)[0] + b"\r\n" for response in responses]
    assert framer.at_boundary


def test_boundary_only_between_responses():
    framer = ResponseFramer()
    framer.feed(b"* 1 FETCH (BODY[] {10}\r\n01234")
    assert not framer.at_boundary
    framer.feed(b"56789)\r")
    assert not framer.at_boundary
    framer.feed(b"\n")
    assert framer.at_boundary


def test_literal_octets_are_views_not_copies():
    framer = ResponseFramer()
    payload = b"x" * 100_000
    segments = framer.feed(b"* 1 FETCH (BODY[] {100000}\r\n" + payload + b")\r\n")
    literal = [s for s in segments if not s.line]
    assert isinstance(literal[0].data, memoryview)
    assert bytes(literal[0].data) == payload


def test_limits():
    with pytest.raises(FramingError):
        ResponseFramer(max_line=100).feed(b"* " + b"x" * 200)
    with pytest.raises(FramingError):
        ResponseFramer(max_literal=10).feed(b"* 1 FETCH (BODY[] {11}\r\n")


@pytest.mark.parametrize(
    ("line", "right", "action"),
    [
        (b"a SELECT INBOX", "read", "select"),
        (b"a EXAMINE INBOX", "read", "examine"),
        (b"a FETCH 1 BODY[]", "read", None),
        (b"a UID SEARCH ALL", "read", None),
        (b"a STORE 1 +FLAGS (\\Seen)", "read", "store"),
        (b"a STORE 1 -FLAGS.SILENT (\\Seen)", "read", "store"),
        (b"a STORE 1 FLAGS (\\Seen)", "write", "store"),
        (b"a STORE 1 +FLAGS (\\Seen \\Flagged)", "write", "store"),
        (b"a UID EXPUNGE 1:3", "write", "expunge"),
        (b"a EXPUNGE", "write", "expunge"),
        (b"a COPY 1 Corbeille", "write", "copy"),
        (b"a UID MOVE 1 Corbeille", "write", "move"),
        (b"a CREATE X", "write", "folder-create"),
        (b"a DELETE X", "write", "folder-delete"),
        (b"a RENAME X Y", "write", "folder-rename"),
        (b"a SUBSCRIBE X", "write", "folder-subscribe"),
        (b"a UNSUBSCRIBE X", "write", "folder-unsubscribe"),
        (b"a CLOSE", None, "close"),
        (b"a NOOP", None, None),
        (b"a IDLE", None, None),
        (b"a LOGOUT", None, None),
    ],
)
def test_rights_and_audit_names(line: bytes, right: str | None, action: str | None):
    parser = CommandParser()
    parser.receive_data(line + b"\r\n")
    command = parser.next_event()
    assert required_right(command) == right  # type: ignore[arg-type]
    assert audit_action(command) == action  # type: ignore[arg-type]


def test_audit_detail_is_short_and_says_what():
    parser = CommandParser()
    parser.receive_data(b"a UID STORE 1:5 +FLAGS (\\Deleted)\r\nb RENAME A B\r\n")
    store, rename = parser.next_event(), parser.next_event()
    assert audit_detail(store) == "UID 1:5 +FLAGS (\\Deleted)"  # type: ignore[arg-type]
    assert audit_detail(rename) == "A -> B"  # type: ignore[arg-type]


@given(st.lists(st.sampled_from(RESPONSES), min_size=1, max_size=6), st.data())
def test_exact_means_the_segments_are_the_input(responses: list[bytes], data: st.DataObject):
    """What the proxy relies on to forward a read as it came: when `exact`, the segments
    are the bytes fed; otherwise only whole lines come out, each exactly once."""
    stream = b"".join(responses)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=12)))
    framer = ResponseFramer()
    out = bytearray()
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        chunk = stream[a:b]
        if not chunk:
            continue
        segments = framer.feed(chunk)
        joined = b"".join(bytes(s.data) for s in segments)
        if framer.exact:
            assert joined == chunk
        out += joined
    assert bytes(out) == stream


NESTED = (
    b'* 2 FETCH (ENVELOPE ({5}\r\nd\r\nte "s" NIL) BODYSTRUCTURE ("text" "plain" '
    b'("name" {6}\r\na{3}\r\n) NIL NIL "7bit" 5 1) BINARY[1] ~{4}\r\n\x00\r\n\x01)\r\n'
)


def through_a_reused_buffer(framer: ResponseFramer, chunks: list[bytes]) -> bytes:
    """Feed `chunks` as the relay does: each read into the same buffer, forwarded (here:
    copied out) before the next read overwrites it; stale bytes lie beyond each read."""
    buffer = bytearray(b"\xff" * 1024)
    out = bytearray()
    for chunk in chunks:
        buffer[: len(chunk)] = chunk
        for segment in framer.feed(buffer, len(chunk)):
            out += segment.data
    return bytes(out)


@pytest.mark.parametrize("response", [NESTED, RESPONSES[1], RESPONSES[3], RESPONSES[8]])
def test_every_single_cut_of_a_response_with_literals(response: bytes) -> None:
    for at in range(1, len(response)):
        framer = ResponseFramer()
        assert through_a_reused_buffer(framer, [response[:at], response[at:]]) == response
        assert framer.at_boundary, at
        assert framer.literal_left == 0


@given(st.lists(st.sampled_from([*RESPONSES, NESTED]), min_size=1, max_size=6), st.data())
def test_a_reused_read_buffer_gives_the_same_bytes(
    responses: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(responses)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    framer = ResponseFramer()
    assert through_a_reused_buffer(framer, [c for c in chunks if c]) == stream
    assert framer.at_boundary


def test_crlf_cut_between_cr_and_lf_announces_the_literal_once_whole() -> None:
    framer = ResponseFramer()
    assert framer.feed(b"* 1 FETCH (BODY[] {3}\r") == []
    assert framer.literal_left == 0
    segments = framer.feed(b"\nabc)\r\n")
    assert [bytes(s.data) for s in segments] == [b"* 1 FETCH (BODY[] {3}\r\n", b"abc", b")\r\n"]
    assert framer.at_boundary


def test_literal_left_counts_down_what_is_owed() -> None:
    framer = ResponseFramer()
    framer.feed(b"* 1 FETCH (BINARY[] ~{10}\r\n0123")
    assert framer.literal_left == 6
    framer.feed(b"456789)\r\n")
    assert framer.literal_left == 0
    assert framer.at_boundary
