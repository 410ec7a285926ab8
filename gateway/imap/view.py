"""A session's view of its selected folder: what the client has been told.

Sequence numbers are positions in `uids`. Re-synchronising compares the store's current
state with the view and yields the untagged updates (EXPUNGE, EXISTS, FETCH FLAGS) that
bring the client in step, in an order that never lets numbers and UIDs disagree.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.imap.mailstore import FolderState, MessageMeta
from gateway.imap.response import Atom, Value, untagged

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def flag_list(flags: frozenset[str]) -> list[Atom]:
    return [Atom(f) for f in sorted(flags)]


@dataclass
class SelectedView:
    folder: str
    readonly: bool
    uidvalidity: int
    uidnext: int
    version: int
    uids: list[int] = field(default_factory=list)
    meta: dict[int, MessageMeta] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)  # expunged, not yet announced

    @classmethod
    def from_state(
        cls, folder: str, readonly: bool, state: FolderState, version: int
    ) -> SelectedView:
        view = cls(folder, readonly, state.uidvalidity, state.uidnext, version)
        view.uids = [m.uid for m in state.messages]
        view.meta = {m.uid: m for m in state.messages}
        return view

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        index = bisect.bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            return index + 1
        return None

    def uid_at(self, seq: int) -> int:
        return self.uids[seq - 1]

    @property
    def largest_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def keywords(self) -> list[str]:
        found = {f for m in self.meta.values() for f in m.flags if not f.startswith("\\")}
        return sorted(found)

    def first_unseen(self) -> int | None:
        for index, uid in enumerate(self.uids):
            if "\\Seen" not in self.meta[uid].flags:
                return index + 1
        return None

    def set_flags(self, uid: int, flags: frozenset[str]) -> None:
        meta = self.meta.get(uid)
        if meta is not None:
            self.meta[uid] = MessageMeta(uid, flags, meta.internal_date, meta.size)

    def expunge(self, uid: int) -> int | None:
        """Remove `uid` from the view; returns the sequence number it had."""
        seq = self.seq_of(uid)
        if seq is not None:
            del self.uids[seq - 1]
            self.meta.pop(uid, None)
            self.gone.discard(uid)
        return seq

    def sync(self, state: FolderState, *, allow_expunge: bool, with_uid: bool) -> Iterator[bytes]:
        """Untagged updates that move the view to `state` (RFC 3501 §7.4.1, §5.5)."""
        current = {m.uid: m for m in state.messages}
        vanished = [uid for uid in self.uids if uid not in current]
        if allow_expunge:
            for uid in vanished:
                seq = self.expunge(uid)
                if seq is not None:
                    yield untagged(seq, Atom("EXPUNGE"))
        else:
            self.gone.update(vanished)
        known_max = self.uids[-1] if self.uids else 0
        arrivals = [m for m in state.messages if m.uid > known_max and m.uid not in self.meta]
        for meta in arrivals:
            self.uids.append(meta.uid)
            self.meta[meta.uid] = meta
        if arrivals:
            yield untagged(self.exists, Atom("EXISTS"))
        for index, uid in enumerate(self.uids):
            new = current.get(uid)
            if new is None or new.flags == self.meta[uid].flags:
                continue
            self.meta[uid] = new
            items: list[Value] = [Atom("FLAGS"), flag_list(new.flags)]
            if with_uid:
                items = [Atom("UID"), uid, *items]
            yield untagged(index + 1, Atom("FETCH"), items)
        self.uidnext = max(self.uidnext, state.uidnext)
