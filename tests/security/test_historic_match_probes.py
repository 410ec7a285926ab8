"""A hostile (or broken) historic platform at the cut-over: what its web services list and
what its IMAP shows are read to keep a leaving BAL's ids (`historic_match`). Any shape,
depth or size of answer is either used within bounds or left out, never an exception
that would stop the move, and never an id the gateway could not serve again."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bal_migration.historic_match import (
    MAX_FOLDERS,
    MAX_HEADER_BYTES,
    folder_paths,
    imap_seen,
    pair,
    ws_seen,
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)
WHEN = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)


@given(JSON)
@settings(max_examples=300, deadline=None)
def test_any_message_object_is_used_or_left_out(value: Any) -> None:
    shown = ws_seen(value) if isinstance(value, dict) else None
    if shown is not None:
        number, seen = shown
        assert 0 <= number < 10**18
        assert seen.order == number


@given(st.dictionaries(st.sampled_from(["messageId", "date", "subject", "emails", "size"]), JSON))
@settings(max_examples=300, deadline=None)
def test_message_objects_with_the_right_keys_and_wrong_types(value: dict[str, Any]) -> None:
    shown = ws_seen(value)
    if shown is not None:
        assert isinstance(shown[1].key[0], str)


@given(st.lists(JSON, max_size=6))
@settings(max_examples=300, deadline=None)
def test_any_folder_tree_gives_names_or_nothing(tree: list[Any]) -> None:
    found = folder_paths(tree)
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in found.items())


def test_a_tree_too_deep_or_too_wide_is_cut() -> None:
    deep: dict[str, Any] = {"id": 257, "name": "n0"}
    node = deep
    for level in range(1, 5000):  # a recursion bomb
        child: dict[str, Any] = {"id": 257 + level, "name": f"n{level}"}
        node["children"] = [child]
        node = child
    assert 0 < len(folder_paths([deep])) <= 100
    wide = [{"id": 300 + i, "name": f"f{i}"} for i in range(MAX_FOLDERS + 50)]
    assert len(folder_paths(wide)) == MAX_FOLDERS
    cycle: dict[str, Any] = {"id": 257, "name": "loop"}
    cycle["children"] = [cycle]
    assert len(folder_paths([cycle])) <= 100


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_any_header_block_is_read_or_left_out(header: bytes) -> None:
    seen = imap_seen(1, header, WHEN, len(header))
    if seen is not None:
        assert seen.order == 1


def test_an_oversized_header_is_left_out() -> None:
    header = b"Subject: " + b"x" * MAX_HEADER_BYTES + b"\r\n\r\n"
    assert imap_seen(1, header, WHEN, len(header)) is None


def test_an_id_listed_twice_is_given_once() -> None:
    """A platform listing one messageId twice (or two folders' copies of it) cannot make
    two messages share it."""
    mine = [imap_seen(uid, b"Subject: a\r\n\r\n", WHEN, 5) for uid in (1, 2)]
    listed = [ws_seen({"messageId": "9", "date": "02/11/2026 10:00:00", "subject": "a"})] * 2
    paired = pair([m for m in mine if m], [s[1] for s in listed if s])
    assert len(set(paired.values())) == len(paired)


def test_long_folder_names_are_not_followed() -> None:
    """A folder named with a megabyte, with two thousand children: each child's path would
    repeat it (gigabytes of keys); the name is not followed, nor its children."""
    huge = "x" * 1_000_000
    children = [{"id": 200 + n, "name": f"c{n}"} for n in range(2000)]
    tree: list[dict[str, Any]] = [{"id": 100, "name": huge, "children": children}]
    tree.append({"id": 9, "name": "Archives", "children": [{"id": 10, "name": "2025"}]})
    assert folder_paths(tree) == {"Archives": 9, "Archives/2025": 10}
