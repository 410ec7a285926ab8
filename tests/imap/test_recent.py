"""\\Recent (RFC 3501 §2.3.2) without sockets: the registry that says which session owns a
message's recent state, and the per-session view that shows it (SELECT counts, RECENT
after EXISTS, the flag in FETCH responses). The socket tests are in test_engine.py."""

from __future__ import annotations

import datetime as dt

from gateway.imap.mailstore import FolderState, MessageMeta, RecentRegistry
from gateway.imap.view import SelectedView

BAL = "claire.martin@medecin.mssante.fr"
WHEN = dt.datetime(2026, 3, 9, 12, tzinfo=dt.UTC)


def meta(uid: int, *flags: str) -> MessageMeta:
    return MessageMeta(uid, frozenset(flags), WHEN, 100)


def state(*messages: MessageMeta, uidvalidity: int = 7) -> FolderState:
    uidnext = messages[-1].uid + 1 if messages else 1
    return FolderState(uidvalidity, uidnext, tuple(messages))


def test_the_first_claim_takes_the_messages_and_later_ones_get_none() -> None:
    registry = RecentRegistry()
    assert registry.claimed(BAL, "INBOX", 7) == 0
    assert registry.claim(BAL, "INBOX", 7, 3) == 0, "UIDs 1..3 are the first claimer's"
    assert registry.claim(BAL.upper(), "INBOX", 7, 3) == 3, "a BAL is case-insensitive"
    assert registry.claim(BAL, "INBOX", 7, 5) == 3, "4 and 5 are the second claimer's"
    assert registry.claim(BAL, "INBOX", 7, 4) == 5, "a claim never goes back"
    assert registry.claimed(BAL, "INBOX", 7) == 5
    assert registry.claimed(BAL, "Envoyés", 7) == 0, "per folder"
    assert registry.claimed("other@x.fr", "INBOX", 7) == 0, "per BAL"
    assert registry.claimed(BAL, "INBOX", 8) == 0, "a re-created folder starts afresh"
    assert registry.claim(BAL, "INBOX", 8, 1) == 0


def test_claims_follow_a_renamed_folder_and_its_children() -> None:
    registry = RecentRegistry()
    registry.claim(BAL, "a", 1, 4)
    registry.claim(BAL, "a/b", 2, 6)
    registry.claim(BAL, "ab", 3, 8)
    registry.rename(BAL, "a", "z")
    assert (registry.claimed(BAL, "z", 1), registry.claimed(BAL, "z/b", 2)) == (4, 6)
    assert (registry.claimed(BAL, "a", 1), registry.claimed(BAL, "a/b", 2)) == (0, 0)
    assert registry.claimed(BAL, "ab", 3) == 8, "a sibling sharing the prefix stays"


def test_a_view_shows_recent_on_its_own_messages_only() -> None:
    view = SelectedView.from_state(
        "INBOX", False, state(meta(1, "\\Seen"), meta(2), meta(3, "$Label")), 1, (), 1
    )
    assert view.recent == {2, 3}
    assert view.shown(1, frozenset({"\\Seen"})) == {"\\Seen"}
    assert view.shown(2, frozenset()) == {"\\Recent"}
    no_claim = SelectedView.from_state("INBOX", True, state(meta(1)), 1)
    assert no_claim.recent == set(), "no recent_above: nothing is recent"


def test_arrivals_announce_exists_then_recent_and_fetch_flags_carry_it() -> None:
    view = SelectedView.from_state("INBOX", False, state(meta(1), meta(2)), 1, (), 1)
    assert view.arrivals(state(meta(1), meta(2), meta(3))) == [meta(3)]
    # 3 and 4 arrive; another session had already claimed 3, 4 is this one's
    updates = list(
        view.sync(
            state(meta(1), meta(2), meta(3), meta(4)),
            allow_expunge=True,
            with_uid=False,
            recent_above=3,
        )
    )
    assert updates == [b"* 4 EXISTS\r\n", b"* 2 RECENT\r\n"]
    assert view.recent == {2, 4}
    # a flag change shows \Recent with the new flags; no RECENT without arrivals
    changed = list(
        view.sync(
            state(meta(1), meta(2, "\\Seen"), meta(3), meta(4)),
            allow_expunge=True,
            with_uid=True,
        )
    )
    assert changed == [b"* 2 FETCH (UID 2 FLAGS (\\Recent \\Seen))\r\n"]
    # an expunge takes the message's recent state with it
    gone = list(view.sync(state(meta(1), meta(3), meta(4)), allow_expunge=True, with_uid=False))
    assert gone == [b"* 2 EXPUNGE\r\n"]
    assert view.recent == {4}
    # then the next arrival's RECENT counts what is left, plus it
    more = list(
        view.sync(
            state(meta(1), meta(3), meta(4), meta(5)),
            allow_expunge=True,
            with_uid=False,
            recent_above=4,
        )
    )
    assert more == [b"* 4 EXISTS\r\n", b"* 2 RECENT\r\n"]


def test_a_read_only_view_gets_arrivals_as_recent_without_a_claim() -> None:
    """EXAMINE: the engine passes what is unclaimed; the view takes it, the registry
    keeps it for the next read-write session."""
    registry = RecentRegistry()
    registry.claim(BAL, "INBOX", 7, 1)
    first = state(meta(1), meta(2))
    view = SelectedView.from_state("INBOX", True, first, 1, (), registry.claimed(BAL, "INBOX", 7))
    assert view.recent == {2}
    assert registry.claim(BAL, "INBOX", 7, 2) == 1, "still there for a SELECT"
