"""UID addressing (`selected.targets`) picks, by slicing the view's ascending UIDs, the
same messages as testing each UID against the set: a FETCH of 200 listed UIDs in a
10,000-message folder must not cost 2 million comparisons."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.imap.selected import targets
from gateway.imap.syntax import SeqRange, SequenceSet

ends = st.one_of(st.none(), st.integers(min_value=1, max_value=60))
sets = st.lists(st.builds(SeqRange, ends, ends), min_size=1, max_size=8).map(
    lambda ranges: SequenceSet(tuple(ranges))
)
folders = st.sets(st.integers(min_value=1, max_value=50), max_size=40).map(sorted)


def _session(uids: list[int]) -> Any:
    view = SimpleNamespace(uids=uids, largest_uid=uids[-1] if uids else 0)
    return SimpleNamespace(view=view, used_uid=False)


@given(folders, sets)
def test_uid_targets_are_the_uids_in_the_set(uids: list[int], sequence: SequenceSet) -> None:
    session = _session(uids)
    largest = uids[-1] if uids else 0
    expected = [
        (index + 1, uid) for index, uid in enumerate(uids) if sequence.contains(uid, largest)
    ]
    assert targets(session, sequence, uid=True) == expected
    assert session.used_uid


def test_listed_uids_in_a_large_folder() -> None:
    uids = list(range(1, 10_001, 2))  # every other UID expunged
    sequence = SequenceSet((*tuple(SeqRange(u, u) for u in range(3, 403, 2)), SeqRange(9999, None)))
    found = targets(_session(uids), sequence, uid=True)
    assert [u for _, u in found] == [*range(3, 403, 2), 9999]
    assert found[0] == (2, 3)
    assert found[-1] == (5000, 9999)
    assert targets(_session(uids), SequenceSet((SeqRange(None, None),)), uid=True) == [(5000, 9999)]
