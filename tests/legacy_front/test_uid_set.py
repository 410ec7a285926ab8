"""The UID sets the legacy front sends: consecutive UIDs as ranges, nothing more or less."""

from __future__ import annotations

import random

import pytest

from gateway.backends.imap_smtp.tools import uid_set


def _members(text: bytes) -> list[int]:
    found: list[int] = []
    for item in text.split(b","):
        low, _, high = item.partition(b":")
        found.extend(range(int(low), int(high or low) + 1))
    return found


@pytest.mark.parametrize(
    ("uids", "expected"),
    [
        ([7], b"7"),
        (range(1, 501), b"1:500"),
        ([5, 3, 4, 1, 9, 10, 4], b"1,3:5,9:10"),
        ([2, 4, 6], b"2,4,6"),
    ],
)
def test_runs_become_ranges(uids: list[int], expected: bytes) -> None:
    assert uid_set(uids) == expected


def test_a_scattered_set_names_exactly_its_uids() -> None:
    rng = random.Random(13)
    uids = rng.sample(range(1, 5000), 700)
    text = uid_set(uids)
    assert _members(text) == sorted(uids)
    assert text.count(b",") < len(uids) - 1  # some runs were merged
