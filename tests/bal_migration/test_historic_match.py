"""`historic_match`, sans I/O: what the platform's IMAP and its web services each show of
a message gives the same key; copies and look-alikes pair in order and by size; a
message without a partner is left unpaired; the folder tree gives the IMAP names."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bal_migration.historic_match import (
    Seen,
    folder_paths,
    imap_name,
    imap_seen,
    pair,
    ws_seen,
)

HEADER = (
    b"From: =?utf-8?q?Claire_Martin?= <Claire.Martin@medecin.mssante.fr>\r\n"
    b"To: jean.dupont@medecin.mssante.fr\r\n"
    b"Subject: =?utf-8?q?Compte_rendu_d=E2=80=99=C3=A9chographie?=\r\n"
    b"Date: Mon, 02 Nov 2026 10:00:00 +0100\r\n\r\n"
)
ARRIVED = dt.datetime(2026, 11, 2, 9, 0, 7, tzinfo=dt.UTC)


def _ws(
    message_id: object, date: str = "02/11/2026 10:00:00", size: int = 100
) -> dict[str, object]:
    return {
        "messageId": message_id,
        "date": date,
        "subject": "Compte rendu d\u2019échographie",
        "size": size,
        "emails": [
            {"address": "jean.dupont@medecin.mssante.fr", "type": "TO"},
            {
                "address": "claire.martin@medecin.mssante.fr",
                "name": "Claire Martin",
                "type": "FROM",
            },
        ],
    }


def test_both_sides_show_the_same_key() -> None:
    mine = imap_seen(7, HEADER, ARRIVED, 100)
    shown = ws_seen(_ws("41"))
    assert mine is not None
    assert shown is not None
    assert shown[0] == 41
    assert mine.key == shown[1].key  # decoded subject, Paris time, lower-case sender
    assert pair([mine], [shown[1]]) == {7: 41}


def test_a_platform_whose_date_is_the_arrival_still_pairs() -> None:
    mine = imap_seen(7, HEADER, ARRIVED, 100)
    shown = ws_seen(_ws("41", date="02/11/2026 10:00:07"))  # 09:00:07 UTC, Paris time
    assert mine is not None
    assert shown is not None
    assert pair([mine], [shown[1]]) == {7: 41}


def test_a_message_without_date_header_uses_its_arrival() -> None:
    header = b"From: a@b.fr\r\nSubject: x\r\n\r\n"
    mine = imap_seen(3, header, ARRIVED, 10)
    assert mine is not None
    assert mine.key == ("02/11/2026 10:00:07", "x", "a@b.fr")
    assert mine.arrival is None


def test_ids_the_gateway_cannot_serve_again_are_left_out() -> None:
    for bad in ("abc", "", "-4", "1e3", "٣", True, None, 10**19, "9" * 19):
        assert ws_seen(_ws(bad)) is None, bad
    assert ws_seen({"messageId": "5"}) is None  # no date, no subject
    assert ws_seen(_ws(12)) is not None


def test_copies_pair_in_order_and_look_alikes_by_size() -> None:
    key = ("02/11/2026 10:00:00", "résultats", "a@b.fr")
    # three exact copies (size 100) and one look-alike (size 120, arrived second)
    mine = [Seen(key, 100, 1), Seen(key, 120, 2), Seen(key, 100, 3), Seen(key, 100, 5)]
    theirs = [Seen(key, 100, 30), Seen(key, 120, 31), Seen(key, 100, 32), Seen(key, 100, 34)]
    assert pair(mine, theirs) == {1: 30, 2: 31, 3: 32, 5: 34}


def test_a_message_without_partner_stays_unpaired() -> None:
    mine = [Seen(("d", "s", "f"), 1, 1), Seen(("d", "other", "f"), 1, 2)]
    theirs = [Seen(("d", "s", "f"), 1, 10), Seen(("e", "s", "f"), 1, 11)]
    assert pair(mine, theirs) == {1: 10}


@st.composite
def mailboxes(draw: st.DrawFn) -> tuple[list[Seen], list[Seen], dict[int, int]]:
    """A folder as both sides show it: UIDs and ids both grow with arrival; some
    messages only one side shows (arrived or gone in between)."""
    count = draw(st.integers(0, 40))
    keys = [("d", s, "f") for s in "abc"]
    mine: list[Seen] = []
    theirs: list[Seen] = []
    truth: dict[int, int] = {}
    uid, mid = draw(st.integers(1, 5)), draw(st.integers(1, 500))
    for _ in range(count):
        key = draw(st.sampled_from(keys))
        size = draw(st.sampled_from([100, 120]))
        side = draw(st.sampled_from(["both", "both", "both", "imap", "ws"]))
        if side in ("both", "imap"):
            mine.append(Seen(key, size, uid))
        if side in ("both", "ws"):
            theirs.append(Seen(key, size, mid))
        if side == "both":
            truth[uid] = mid
        uid += draw(st.integers(1, 3))
        mid += draw(st.integers(1, 3))
    return mine, theirs, truth


@given(mailboxes(), st.randoms())
@settings(max_examples=200, deadline=None)
def test_pairing_is_one_to_one_and_respects_keys(
    folder: tuple[list[Seen], list[Seen], dict[int, int]], shuffle: random.Random
) -> None:
    mine, theirs, truth = folder
    shuffle.shuffle(mine)
    shuffle.shuffle(theirs)
    paired = pair(mine, theirs)
    assert len(set(paired.values())) == len(paired)  # never one id for two messages
    by_uid = {s.order: s for s in mine}
    by_id = {s.order: s for s in theirs}
    for uid, mid in paired.items():
        assert by_uid[uid].key == by_id[mid].key
    if all(s.order in truth for s in mine) and len(theirs) == len(truth):
        # both sides show the same messages: the pairing is the truth (a copy and
        # its look-alikes are told apart by size, then by order)
        assert paired == truth


def test_folder_paths_follow_the_platform_s_imap_names() -> None:
    tree = [
        {"id": 2, "name": "Boîte de réception", "children": [{"id": 300, "name": "Labo"}]},
        {"id": 3, "name": "Trash"},
        {"id": 257, "name": "Résultats", "children": [{"id": 258, "name": "Biologie d'été"}]},
        {"id": 259, "name": "inbox"},  # hidden behind the inbox
        {"id": 260, "name": "a/b"},  # no IMAP name can hold it
        {"id": True, "name": "bool"},
        "not a folder",
    ]
    assert folder_paths(tree) == {
        "INBOX": 2,
        "INBOX/Labo": 300,
        "Trash": 3,
        "Résultats": 257,
        "Résultats/Biologie d'été": 258,
    }
    assert imap_name("inbox/Labo") == "INBOX/Labo"
    assert imap_name("Inboxes") == "Inboxes"


def test_when_one_side_shows_more_only_a_size_found_once_pairs() -> None:
    """Two look-alikes on the IMAP side, one id on the other (the second was deleted
    between the listings): the same size would be a guess, so neither is paired, unless
    a size found once on each side says which is which."""
    twins = [imap_seen(uid, HEADER, ARRIVED, 100) for uid in (1, 2)]
    assert all(t is not None for t in twins)
    shown = ws_seen(_ws("9", size=100))
    assert shown is not None
    assert pair([t for t in twins if t], [shown[1]]) == {}
    sized = [imap_seen(1, HEADER, ARRIVED, 100), imap_seen(2, HEADER, ARRIVED, 250)]
    other = ws_seen(_ws("9", size=250))
    assert other is not None
    assert pair([s for s in sized if s], [other[1]]) == {2: 9}


def test_a_date_paris_time_cannot_hold_is_still_read() -> None:
    """`Date: Fri, 31 Dec 9999 23:00:00 -1200` is past what Paris time can hold: the
    message is still seen (shown as written), never an error that stops the move."""
    header = HEADER.replace(
        b"Date: Mon, 02 Nov 2026 10:00:00 +0100", b"Date: Fri, 31 Dec 9999 23:00:00 -1200"
    )
    seen = imap_seen(3, header, ARRIVED, 100)
    assert seen is not None
    assert seen.key[0] == "31/12/9999 23:00:00"
