"""`plan.diff` on models: the target ends equal to the source (a multiset of digest,
flags, internal date), a second diff is empty, and an interruption anywhere (even between
an APPEND and its checkpoint) converges on the next run without a duplicate."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.backends.base import ToolFolder, ToolMessage
from gateway.bal_migration.plan import (
    Adopt,
    Append,
    Copied,
    Delete,
    SetFlags,
    compare,
    diff,
    map_folders,
)

BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
FLAGS = st.frozensets(st.sampled_from(["\\Seen", "\\Flagged", "$MDNSent", "$Forwarded"]))


class Interrupted(Exception):
    pass


class Model:
    """A source folder, a target folder and the checkpoints, applying `diff`'s actions as
    the engine does (intent, APPEND, completion), optionally killed after `budget` steps."""

    def __init__(
        self, source: list[tuple[str, frozenset[str], int]], *, keep: bool = False
    ) -> None:
        self.keep = keep  # the target imports under the source's UID while it is >= UIDNEXT
        self.source: dict[int, ToolMessage] = {}
        self.source_next = 1
        self.target: dict[int, ToolMessage] = {}
        self.target_next = 1
        self.copied: dict[int, Copied] = {}
        for body, flags, day in source:
            self.deliver(body, flags, day)

    def deliver(self, body: str, flags: frozenset[str], day: int) -> None:
        uid = self.source_next
        self.source_next += 1
        self.source[uid] = ToolMessage(uid, flags, BASE + dt.timedelta(days=day), 1, body)

    def run(self, budget: int | None = None) -> list[object]:
        steps = [0]

        def step() -> None:
            steps[0] += 1
            if budget is not None and steps[0] > budget:
                raise Interrupted

        actions = diff(list(self.source.values()), list(self.target.values()), self.copied)
        floor = max(self.target, default=0)
        for action in actions:
            if isinstance(action, Adopt):
                step()
                old = self.copied[action.source_uid]
                self.copied[action.source_uid] = Copied(
                    old.source_uid, old.digest, action.target_uid, old.flags
                )
            elif isinstance(action, Delete):
                if action.target_uid is not None:
                    step()
                    del self.target[action.target_uid]
                step()
                self.copied.pop(action.source_uid, None)
            elif isinstance(action, SetFlags):
                step()
                old_message = self.target[action.target_uid]
                self.target[action.target_uid] = ToolMessage(
                    old_message.uid,
                    action.flags,
                    old_message.internal_date,
                    old_message.size,
                    old_message.digest,
                )
            elif isinstance(action, Append):
                step()  # the intent
                self.copied[action.source_uid] = Copied(
                    action.source_uid, action.digest, None, action.flags, floor
                )
                step()  # the APPEND (or the import)
                uid = self.target_next
                if self.keep and action.source_uid > floor and action.source_uid >= uid:
                    uid = action.source_uid
                self.target_next = uid + 1
                self.target[uid] = ToolMessage(
                    uid, action.flags, action.internal_date, action.size, action.digest
                )
                floor = max(floor, uid)
                step()  # the completion
                self.copied[action.source_uid] = Copied(
                    action.source_uid, action.digest, uid, action.flags
                )
        return list(actions)

    def equal(self) -> bool:
        def bag(
            messages: dict[int, ToolMessage],
        ) -> Counter[tuple[str, frozenset[str], dt.datetime]]:
            return Counter((m.digest, m.flags, m.internal_date) for m in messages.values())

        return bag(self.source) == bag(self.target)


MESSAGES = st.lists(st.tuples(st.sampled_from("abcdef"), FLAGS, st.integers(0, 5)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(MESSAGES)
def test_one_run_copies_and_a_second_does_nothing(messages: list[tuple[str, frozenset[str], int]]):
    model = Model(messages)
    model.run()
    assert model.equal()
    assert model.run() == []
    assert not compare("INBOX", "INBOX", list(model.source.values()), list(model.target.values()))


@settings(max_examples=300, deadline=None)
@given(MESSAGES, st.lists(st.integers(0, 40), max_size=4), st.data())
def test_interrupted_runs_converge_without_duplicates(
    messages: list[tuple[str, frozenset[str], int]], kills: list[int], data: st.DataObject
):
    model = Model(messages)
    for budget in kills:
        with contextlib.suppress(Interrupted):
            model.run(budget)
        # the source changes between runs: a delivery, a flag change, an expunge
        change = data.draw(st.sampled_from(["none", "deliver", "flag", "expunge"]))
        if change == "deliver":
            model.deliver(data.draw(st.sampled_from("abcdef")), frozenset(), 1)
        elif change != "none" and model.source:
            uid = data.draw(st.sampled_from(sorted(model.source)))
            if change == "flag":
                old = model.source[uid]
                model.source[uid] = ToolMessage(
                    uid, old.flags ^ {"\\Seen"}, old.internal_date, old.size, old.digest
                )
            else:
                del model.source[uid]
    model.run()
    assert model.equal(), (model.source, model.target)
    assert model.run() == []
    assert len(model.target) == len(model.source)


@settings(max_examples=100, deadline=None)
@given(MESSAGES, st.lists(st.integers(0, 40), max_size=4), st.data())
def test_imports_keep_every_uid_through_interruptions(
    messages: list[tuple[str, frozenset[str], int]], kills: list[int], data: st.DataObject
):
    model = Model(messages, keep=True)
    for budget in kills:
        with contextlib.suppress(Interrupted):
            model.run(budget)
        change = data.draw(st.sampled_from(["none", "deliver", "expunge"]))
        if change == "deliver":
            model.deliver(data.draw(st.sampled_from("abcdef")), frozenset(), 1)
        elif change == "expunge" and model.source:
            del model.source[data.draw(st.sampled_from(sorted(model.source)))]
    model.run()
    assert model.equal()
    assert sorted(model.target) == sorted(model.source)
    assert all(c.target_uid == c.source_uid for c in model.copied.values())


def test_an_import_whose_checkpoint_was_lost_is_adopted_under_its_own_uid():
    twins = [ToolMessage(uid, frozenset(), BASE, 3, "d1") for uid in (4, 6)]
    # both imported (4 and 6 on the target too), neither completion written: each is
    # adopted as the message under its own UID, whatever order the listing gives
    copied = {m.uid: Copied(m.uid, "d1", None, frozenset(), floor=0) for m in twins}
    assert diff(twins, twins[::-1], copied) == [Adopt(4, 4), Adopt(6, 6)]


def test_an_expunge_after_the_copy_deletes_the_copy_and_is_not_resurrected():
    model = Model([("a", frozenset(), 0), ("b", frozenset({"\\Seen"}), 0)])
    model.run()
    del model.source[1]
    actions = model.run()
    assert actions == [Delete(1, 1)]
    assert [m.digest for m in model.target.values()] == ["b"]
    assert model.run() == []


def test_an_intent_whose_append_happened_is_adopted():
    message = ToolMessage(7, frozenset({"$MDNSent"}), BASE, 3, "d1")
    on_target = [
        ToolMessage(3, frozenset(), BASE, 3, "d1"),
        ToolMessage(9, frozenset({"$MDNSent"}), BASE, 3, "d1"),
    ]
    # 3 was there before the intent (floor 5): only 9 can be the lost APPEND
    actions = diff([message], on_target, {7: Copied(7, "d1", None, message.flags, floor=5)})
    assert actions == [Adopt(7, 9)]
    # nothing above the floor: the APPEND never happened, append it
    actions = diff([message], on_target[:1], {7: Copied(7, "d1", None, message.flags, floor=5)})
    assert [type(a) for a in actions] == [Append]


def test_folder_mapping():
    source = [
        ToolFolder("INBOX"),
        ToolFolder("Sent Items", "\\Sent"),
        ToolFolder("Sent Items/2025"),
        ToolFolder("Sent"),
        ToolFolder("Éléments supprimés", "\\Trash"),
        ToolFolder("Dossiers/Résultats"),
        ToolFolder("Archive", "\\Archive"),
    ]
    target = [ToolFolder("INBOX"), ToolFolder("Sent", "\\Sent"), ToolFolder("Trash", "\\Trash")]
    assert map_folders(source, target) == {
        "INBOX": "INBOX",
        "Sent Items": "Sent",
        "Sent Items/2025": "Sent/2025",
        "Sent": "Sent (2)",
        "Éléments supprimés": "Trash",
        "Dossiers/Résultats": "Dossiers/Résultats",
        "Archive": "Archive",
    }
