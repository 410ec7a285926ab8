"""The client side of CONDSTORE/QRESYNC (`gateway.imap.resync`): HIGHESTMODSEQ and
NOMODSEQ codes, STATUS values, MODSEQ fetch items, VANISHED responses and UID sets, read
from the events the client codec frames, with their limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.backends.imap_smtp.tools import fetch_items
from gateway.imap.client import ParseError, ResponseParser, Tagged, Untagged
from gateway.imap.resync import (
    MAX_MODSEQ,
    MAX_UID,
    UidSet,
    fetch_modseq,
    highest_modseq,
    no_modseq,
    parse_uid_set,
    status_values,
    vanished,
)


def events(data: bytes) -> list[Untagged | Tagged]:
    parser = ResponseParser()
    parser.receive_data(data)
    found: list[Untagged | Tagged] = []
    while (event := parser.next_event()) is not None:
        assert isinstance(event, Untagged | Tagged), event
        found.append(event)
    return found


def untagged(line: bytes) -> Untagged:
    (event,) = events(line)
    assert isinstance(event, Untagged)
    return event


def test_highestmodseq_from_select_as_dovecot_answers() -> None:
    answer = events(
        b"* OK [UIDVALIDITY 1796610261] UIDs valid\r\n"
        b"* OK [HIGHESTMODSEQ 715194045007] Highest\r\n"
        b"A1 OK [READ-ONLY] Examine completed (0.001 + 0.000 secs).\r\n"
    )
    codes = [e.code for e in answer]
    assert [highest_modseq(c) for c in codes] == [None, 715194045007, None]
    assert highest_modseq("highestmodseq 7") == 7  # code names are case-insensitive
    assert not any(no_modseq(c) for c in codes)
    refusal = untagged(b"* OK [NOMODSEQ] Sorry, this mailbox format has no modseqs\r\n")
    assert no_modseq(refusal.code)
    assert highest_modseq(refusal.code) is None


@pytest.mark.parametrize(
    "code",
    [
        None,
        "HIGHESTMODSEQ",
        "HIGHESTMODSEQ 0",
        "HIGHESTMODSEQ -3",
        "HIGHESTMODSEQ 12a",
        "HIGHESTMODSEQ 012",
        f"HIGHESTMODSEQ {MAX_MODSEQ + 1}",
        "HIGHESTMODSEQ " + "9" * 400,
        "UIDNEXT 12",
    ],
)
def test_bad_highestmodseq_is_none(code: str | None) -> None:
    assert highest_modseq(code) is None


def test_highestmodseq_upper_bound_accepted() -> None:
    assert highest_modseq(f"HIGHESTMODSEQ {MAX_MODSEQ}") == MAX_MODSEQ


def test_status_values() -> None:
    event = untagged(b"* STATUS INBOX (MESSAGES 2 UIDVALIDITY 1796610261 HIGHESTMODSEQ 7)\r\n")
    parsed = status_values(event)
    assert parsed is not None
    _, values = parsed
    assert values == {"MESSAGES": 2, "UIDVALIDITY": 1796610261, "HIGHESTMODSEQ": 7}
    quoted = status_values(untagged(b'* STATUS "Dossier &AOk-t&AOk-" (highestmodseq 9)\r\n'))
    assert quoted is not None
    assert quoted[0] == b"Dossier &AOk-t&AOk-"
    assert quoted[1] == {"HIGHESTMODSEQ": 9}


@pytest.mark.parametrize(
    "line",
    [
        b'* LIST () "/" INBOX\r\n',
        b"* STATUS INBOX\r\n",
        b"* STATUS INBOX (MESSAGES)\r\n",
        b"* STATUS INBOX MESSAGES 2\r\n",
        b"* STATUS INBOX (" + b"MESSAGES 1 " * 40 + b")\r\n",
        b'* STATUS INBOX ("unclosed)\r\n',
    ],
)
def test_status_values_refuses_what_is_not_a_status(line: bytes) -> None:
    assert status_values(untagged(line)) is None


def test_status_values_leaves_out_values_past_63_bits() -> None:
    parsed = status_values(untagged(b"* STATUS INBOX (HIGHESTMODSEQ 99999999999999999999)\r\n"))
    assert parsed is not None
    assert parsed[1] == {}


def test_modseq_fetch_item() -> None:
    event = untagged(b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ (5))\r\n")
    items = fetch_items(event)
    assert items["UID"] == 2
    assert fetch_modseq(items["MODSEQ"]) == 5
    for value in ([], [0], [1, 2], [b"5"], 5, None, [MAX_MODSEQ + 1]):
        assert fetch_modseq(value) is None  # type: ignore[arg-type]


def test_vanished_earlier_and_live() -> None:
    earlier = vanished(untagged(b"* VANISHED (EARLIER) 300:310,405,411\r\n"))
    assert earlier is not None
    assert earlier.earlier
    assert [u for u in (299, 300, 305, 310, 311, 405, 406, 411) if u in earlier.uids] == [
        300,
        305,
        310,
        405,
        411,
    ]
    assert len(earlier.uids) == 13
    live = vanished(untagged(b"* VANISHED 3\r\n"))
    assert live is not None
    assert not live.earlier
    assert 3 in live.uids
    assert 2 not in live.uids
    lower = vanished(untagged(b"* vanished (earlier) 7:5\r\n"))
    assert lower is not None
    assert lower.uids.ranges == ((5, 7),)
    assert vanished(untagged(b"* 3 EXPUNGE\r\n")) is None


def test_a_whole_uid_range_stays_a_range() -> None:
    told = vanished(untagged(b"* VANISHED (EARLIER) 1:4294967295\r\n"))
    assert told is not None
    assert told.uids.ranges == ((1, MAX_UID),)
    assert MAX_UID in told.uids
    assert 0 not in told.uids


@pytest.mark.parametrize(
    "line",
    [
        b"* VANISHED\r\n",
        b"* VANISHED (EARLIER)\r\n",
        b"* VANISHED (LATER) 3\r\n",
        b"* VANISHED (EARLIER) 1:*\r\n",
        b"* VANISHED 0\r\n",
        b"* VANISHED 3:0\r\n",
        b"* VANISHED 4294967296\r\n",
        b"* VANISHED 1,,2\r\n",
        b"* VANISHED 1 2\r\n",
        b'* VANISHED "1:3"\r\n',
        b"* VANISHED (EARLIER) (1)\r\n",
        b"* VANISHED 12345678901:12345678902\r\n",
    ],
)
def test_malformed_vanished_is_a_parse_error(line: bytes) -> None:
    with pytest.raises(ParseError):
        vanished(untagged(line))


def test_uid_set_range_count_is_bounded() -> None:
    many = ",".join(str(2 * i + 1) for i in range(50))
    assert len(parse_uid_set(many, max_ranges=50)) == 50
    with pytest.raises(ParseError, match="more than 49"):
        parse_uid_set(many, max_ranges=49)
    line = b"* VANISHED " + ",".join(str(2 * i + 1) for i in range(20)).encode() + b"\r\n"
    with pytest.raises(ParseError):
        vanished(untagged(line), max_ranges=10)


def test_uid_sets_merge_and_union() -> None:
    merged = parse_uid_set("5,1:3,4,9:10,8")
    assert merged.ranges == ((1, 5), (8, 10))
    union = merged | parse_uid_set("6,20")
    assert union.ranges == ((1, 6), (8, 10), (20, 20))
    assert not UidSet(())
    assert len(UidSet(())) == 0
    assert "3" not in merged


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 400), st.integers(1, 400)), min_size=1, max_size=30))
def test_uid_set_membership_is_the_expanded_set(pieces: list[tuple[int, int]]) -> None:
    text = ",".join(f"{a}:{b}" if a != b else str(a) for a, b in pieces)
    expanded = {u for a, b in pieces for u in range(min(a, b), max(a, b) + 1)}
    parsed = parse_uid_set(text)
    assert {u for u in range(0, 402) if u in parsed} == expanded
    assert len(parsed) == len(expanded)
