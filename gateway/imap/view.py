"""A session's view of its selected folder: what the client has been told.

Sequence numbers are positions in `uids`. Re-synchronising compares the store's current
state with the view and yields the untagged updates (FLAGS, EXPUNGE, EXISTS, RECENT,
FETCH FLAGS) that bring the client in step, in an order that never lets numbers and UIDs
disagree. \\Recent is the view's own (RFC 3501 §2.3.2: session state, never stored): the
engine says which arrivals are this session's, and the view shows the flag on them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gateway.imap.codes import Code
from gateway.imap.mailstore import FlagMode, FolderState, MessageMeta
from gateway.imap.response import Atom, Value, encode, untagged, untagged_status

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
ANY_KEYWORD = "\\*"  # PERMANENTFLAGS: the client may create keywords
RECENT = "\\Recent"


def flag_list(flags: frozenset[str]) -> list[Atom]:
    return [Atom(f) for f in sorted(flags)]


def apply_flags(current: frozenset[str], mode: FlagMode, flags: Iterable[str]) -> frozenset[str]:
    """The flags a message has after ``STORE FLAGS / +FLAGS / -FLAGS`` of `flags`."""
    if mode == "replace":
        return frozenset(flags)
    if mode == "add":
        return current | frozenset(flags)
    return current - frozenset(flags)


def _keywords(flags: Iterable[str]) -> set[str]:
    return {f for f in flags if not f.startswith("\\")}


@dataclass
class SelectedView:
    folder: str
    readonly: bool
    uidvalidity: int
    uidnext: int
    version: int | None  # the ChangeHub version the view matches; None: no hub, always re-read
    uids: list[int] = field(default_factory=list)
    meta: dict[int, MessageMeta] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)  # expunged, not yet announced
    # PERMANENTFLAGS without keywords: system flags and ANY_KEYWORD, () when read-only
    permanent: tuple[str, ...] = ()
    announced: set[str] = field(default_factory=set)  # keywords of the last FLAGS response
    recent: set[int] = field(default_factory=set)  # UIDs \Recent in this session

    @classmethod
    def from_state(
        cls,
        folder: str,
        readonly: bool,
        state: FolderState,
        version: int | None,
        permanent: tuple[str, ...] = (),
        recent_above: int | None = None,
    ) -> SelectedView:
        """`recent_above`: the messages with a greater UID are \\Recent in this session."""
        view = cls(folder, readonly, state.uidvalidity, state.uidnext, version)
        view.uids = [m.uid for m in state.messages]
        view.meta = {m.uid: m for m in state.messages}
        view.permanent = permanent
        view.announced = {k for m in state.messages for k in _keywords(m.flags)}
        if recent_above is not None:
            view.recent = {uid for uid in view.uids if uid > recent_above}
        return view

    @property
    def exists(self) -> int:
        return len(self.uids)

    def shown(self, uid: int, flags: frozenset[str]) -> frozenset[str]:
        """The flags FETCH shows: the stored ones, plus \\Recent when this session has it."""
        return flags | {RECENT} if uid in self.recent else flags

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
        return sorted(self.announced)

    def first_unseen(self) -> int | None:
        for index, uid in enumerate(self.uids):
            if "\\Seen" not in self.meta[uid].flags:
                return index + 1
        return None

    # -- FLAGS / PERMANENTFLAGS ---------------------------------------------------------
    def flags_response(self) -> bytes:
        return untagged(Atom("FLAGS"), [Atom(f) for f in (*SYSTEM_FLAGS, *self.keywords())])

    def permanent_flags_response(self) -> bytes:
        """Keywords already in use are permanent too when the client may set flags."""
        names = [f for f in self.permanent if f != ANY_KEYWORD]
        if ANY_KEYWORD in self.permanent:
            names += [*self.keywords(), ANY_KEYWORD]
        code = f"{Code.PERMANENTFLAGS} " + encode([Atom(f) for f in names]).decode("ascii")
        return untagged_status("OK", "flags permitted", code)

    def note_keywords(self, flag_sets: Iterable[frozenset[str]]) -> list[bytes]:
        """FLAGS (and PERMANENTFLAGS) updates announcing keywords the client has not been
        told of yet; they must precede any FETCH response showing them (RFC 3501 §7.2.6)."""
        new = {k for flags in flag_sets for k in _keywords(flags)} - self.announced
        if not new:
            return []
        self.announced |= new
        out = [self.flags_response()]
        if ANY_KEYWORD in self.permanent:
            out.append(self.permanent_flags_response())
        return out

    # -- changes -----------------------------------------------------------------------
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
            self.recent.discard(uid)
        return seq

    def arrivals(self, state: FolderState) -> list[MessageMeta]:
        """The messages of `state` the view has not counted yet (EXISTS will grow)."""
        known_max = self.uids[-1] if self.uids else 0
        return [m for m in state.messages if m.uid > known_max and m.uid not in self.meta]

    def sync(
        self,
        state: FolderState,
        *,
        allow_expunge: bool,
        with_uid: bool,
        recent_above: int | None = None,
    ) -> Iterator[bytes]:
        """Untagged updates that move the view to `state` (RFC 3501 §7.4.1, §5.5).

        Without `allow_expunge` (during FETCH, STORE, SEARCH) vanished messages keep their
        sequence numbers and are remembered in `gone` until an EXPUNGE may be sent.
        Arrivals with a UID above `recent_above` are \\Recent here; when any arrives,
        RECENT follows EXISTS (RFC 3501 §7.3.2), as Dovecot sends them."""
        current = {m.uid: m for m in state.messages}
        yield from self.note_keywords(m.flags for m in state.messages)
        vanished = [uid for uid in self.uids if uid not in current]
        if allow_expunge:
            # Lowest first, each number counted after the previous removals, as in the
            # example of RFC 3501 §7.4.1 (messages 3, 4, 7, 11: 3, 3, 5, 8).
            for uid in vanished:
                seq = self.expunge(uid)
                if seq is not None:
                    yield untagged(seq, Atom("EXPUNGE"))
        else:
            self.gone.update(vanished)
        arrivals = self.arrivals(state)
        for meta in arrivals:
            self.uids.append(meta.uid)
            self.meta[meta.uid] = meta
            if recent_above is not None and meta.uid > recent_above:
                self.recent.add(meta.uid)
        if arrivals:
            yield untagged(self.exists, Atom("EXISTS"))
            yield untagged(len(self.recent), Atom("RECENT"))
        for index, uid in enumerate(self.uids):
            new = current.get(uid)
            if new is None or new.flags == self.meta[uid].flags:
                continue
            self.meta[uid] = new
            items: list[Value] = [Atom("FLAGS"), flag_list(self.shown(uid, new.flags))]
            if with_uid:
                items = [Atom("UID"), uid, *items]
            yield untagged(index + 1, Atom("FETCH"), items)
        self.uidnext = max(self.uidnext, state.uidnext)
