"""The selected-state commands but FETCH: STORE, COPY / MOVE, EXPUNGE, SEARCH, CLOSE and
UNSELECT, with the sequence-set addressing they share with FETCH.

Each handler is a function of the session and its command: it checks the rights and the
view's mode, asks the store, and writes the untagged responses the RFCs call for; the
session's `ok` then reports what changed meanwhile (EXPUNGE, EXISTS, FLAGS) as the command
allows, before the tagged OK.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING

from gateway.imap import commands as c
from gateway.imap.codes import Code
from gateway.imap.mailstore import MessageGone, StoreError
from gateway.imap.response import Atom, Value, untagged, untagged_status
from gateway.imap.search import (
    SUPPORTED_CHARSETS,
    Candidate,
    SearchError,
    matches,
    needs_message,
    validate,
)
from gateway.imap.syntax import SequenceSet
from gateway.imap.view import RECENT, SelectedView, apply_flags, flag_list

if TYPE_CHECKING:
    from gateway.imap.engine import ImapSession

log = logging.getLogger(__name__)


# -- addressing -------------------------------------------------------------------------------


def targets(session: ImapSession, sequence: SequenceSet, uid: bool) -> list[tuple[int, int]]:
    """(seq, UID) pairs addressed by a sequence set, ascending. A UID command makes later
    unsolicited FETCH responses carry UIDs too (`used_uid`)."""
    view = session.view
    assert view is not None
    if uid:
        session.used_uid = True
        if not view.uids:
            return []
        uids, largest = view.uids, view.largest_uid
        picked: set[int] = set()
        for item in sequence.ranges:  # the view's UIDs ascend: each range is a slice
            low, high = item.bounds(largest)
            picked.update(range(bisect_left(uids, low), bisect_right(uids, high)))
        return [(index + 1, uids[index]) for index in sorted(picked)]
    return [(seq, view.uid_at(seq)) for seq in sequence.iter_numbers(view.exists)]


async def bad_sequence(
    session: ImapSession, command: c.Command, sequence: SequenceSet, uid: bool
) -> bool:
    """RFC 3501 §9 / 9051 §9: a message number beyond EXISTS is an error, `*` included
    on an empty mailbox (Dovecot: BAD "Invalid messageset"); UIDs beyond are ignored.
    True when the command was answered BAD."""
    assert session.view is not None
    if uid:
        return False
    exists = session.view.exists
    if exists == 0 or any(item.bounds(exists)[1] > exists for item in sequence.ranges):
        await session.reply(command.tag, "BAD", "message number out of range")
        return True
    return False


async def _writable(session: ImapSession, command: c.Command) -> bool:
    """Changes to an EXAMINEd (or otherwise read-only) mailbox are NO [READ-ONLY]."""
    assert session.view is not None
    if session.view.readonly:
        await session.reply(command.tag, "NO", "mailbox is read-only", Code.READ_ONLY)
        return False
    return True


# -- STORE ------------------------------------------------------------------------------------


async def store(session: ImapSession, command: c.Store) -> None:
    """STORE / UID STORE: the store changes the flags, the client hears the result (FETCH
    FLAGS) unless .SILENT. \\Recent is the session's own: never stored."""
    view = session.view
    assert view is not None
    if await bad_sequence(session, command, command.sequence, command.uid):
        return
    action = command.action
    # Marking read or unread needs the read right; any other change (FLAGS replaces
    # every flag, even with only \Seen listed) needs write.
    only_seen = action.mode != "replace" and set(action.flags) <= {"\\Seen"}
    if not await session.require(command, "read" if only_seen else "write"):
        return
    if not await _writable(session, command):
        return
    chosen = targets(session, command.sequence, command.uid)
    flags = [f for f in action.flags if f != RECENT]
    changed = await session.store.store_flags(
        view.folder, [u for _, u in chosen], action.mode, flags
    )
    out = view.note_keywords(changed.values())
    for seq, uid in chosen:
        if uid not in changed or uid not in view.meta:
            continue
        if action.silent:
            # The client knows what it set; changes made meanwhile by others still
            # differ from the view, so the next sync reports them (RFC 3501 §6.4.6).
            view.set_flags(uid, apply_flags(view.meta[uid].flags, action.mode, flags))
            continue
        out.append(_flags_response(view, seq, uid, changed[uid], with_uid=command.uid))
    await session.channel.write(b"".join(out))
    await session.ok(command, "STORE completed")


def _flags_response(
    view: SelectedView, seq: int, uid: int, flags: frozenset[str], *, with_uid: bool
) -> bytes:
    """``* seq FETCH ([UID n] FLAGS (...))``, the view brought up to date first."""
    view.set_flags(uid, flags)
    items: list[Value] = [Atom("FLAGS"), flag_list(view.shown(uid, flags))]
    if with_uid:
        items = [Atom("UID"), uid, *items]
    return untagged(seq, Atom("FETCH"), items)


# -- COPY / MOVE ------------------------------------------------------------------------------


async def copy(session: ImapSession, command: c.Copy | c.Move) -> None:
    """COPY / MOVE (and their UID forms) with RFC 4315 COPYUID: in the tagged OK of a
    COPY; for a MOVE in an untagged OK before the EXPUNGEs (RFC 6851 §4.3)."""
    view = session.view
    assert view is not None
    if await bad_sequence(session, command, command.sequence, command.uid):
        return
    if not await session.require(command, "write"):
        return
    is_move = isinstance(command, c.Move)
    if is_move and not await _writable(session, command):
        return
    folders = {f.name for f in await session.store.list_folders()}
    if command.mailbox not in folders:
        await session.reply(command.tag, "NO", "no such folder", Code.TRYCREATE)
        return
    uids = [u for _, u in targets(session, command.sequence, command.uid)]
    if not uids:
        await session.ok(command, "nothing to do")
        return
    action = session.store.move if is_move else session.store.copy
    result = await action(view.folder, uids, command.mailbox)
    code = None
    if result.pairs:
        source = uid_set([s for s, _ in result.pairs])
        dest = uid_set([d for _, d in result.pairs])
        code = f"{Code.COPYUID} {result.uidvalidity} {source} {dest}"
    if is_move:
        if code:
            await session.channel.write(untagged_status("OK", "moved", code))
        await session.ok(command, "MOVE completed")
    else:
        await session.ok(command, "COPY completed", code)


def uid_set(uids: list[int]) -> str:
    """Compact a UID list into a sequence set, keeping the given order's ranges."""
    parts: list[str] = []
    start = prev = uids[0]
    for uid in uids[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


# -- EXPUNGE, CLOSE, UNSELECT -----------------------------------------------------------------


async def expunge(session: ImapSession, command: c.Expunge) -> None:
    """EXPUNGE / UID EXPUNGE: the store removes, the EXPUNGE responses come from the sync
    before the tagged OK, like those of any other session's expunge."""
    if not await session.require(command, "write"):
        return
    view = session.view
    assert view is not None
    if not await _writable(session, command):
        return
    uids = None
    if command.uids is not None:
        session.used_uid = True
        uids = [u for u in view.uids if command.uids.contains(u, view.largest_uid)]
    if uids != []:
        await session.store.expunge(view.folder, uids)
    await session.ok(command, "EXPUNGE completed")


async def close(session: ImapSession, command: c.Close | c.Unselect) -> None:
    """CLOSE expunges silently when the mailbox is writable; UNSELECT does not. Either way
    the session is back in the authenticated state."""
    assert session.view is not None
    view, session.view = session.view, None  # authenticated state whatever happens below
    if isinstance(command, c.Close) and not view.readonly and session.granted.may("write"):
        # silent: no EXPUNGE responses (RFC 3501 §6.4.2). CLOSE has no NO response,
        # so a store failure is logged, not reported.
        try:
            await session.store.expunge(view.folder)
        except StoreError as exc:
            log.warning("imap.close_expunge_failed", extra={"error": str(exc)})
    await session.reply(command.tag, "OK", f"{type(command).__name__.upper()} completed")


# -- SEARCH -----------------------------------------------------------------------------------


async def search(session: ImapSession, command: c.Search) -> None:
    """SEARCH / UID SEARCH. The messages' bytes are read only when a key needs them (a
    header or text key), one at a time: a search never holds the folder in memory."""
    view = session.view
    assert view is not None
    try:
        validate(command.key, command.charset)
    except SearchError as exc:
        if exc.code == Code.BADCHARSET:
            charsets = " ".join(SUPPORTED_CHARSETS)
            await session.reply(command.tag, "NO", str(exc), f"{exc.code} ({charsets})")
        else:
            await session.reply(command.tag, "BAD", str(exc))
        return
    if command.uid:
        session.used_uid = True
    load = needs_message(command.key)
    found: list[int] = []
    for index, uid in enumerate(list(view.uids)):
        candidate = await _candidate(session, view, index + 1, uid, load)
        if candidate is not None and matches(
            command.key, candidate, largest_seq=view.exists, largest_uid=view.largest_uid
        ):
            found.append(uid if command.uid else index + 1)
    await session.channel.write(untagged(Atom("SEARCH"), *found))
    await session.ok(command, "SEARCH completed")


async def _candidate(
    session: ImapSession, view: SelectedView, seq: int, uid: int, load: bool
) -> Candidate | None:
    """One message as SEARCH sees it; None when its bytes are needed and it is gone."""
    meta = view.meta[uid]
    raw = None
    if load:
        try:
            raw = await session.store.fetch_message(view.folder, uid)
        except MessageGone:
            return None
    return Candidate(
        seq=seq,
        uid=uid,
        flags=meta.flags,
        internal_date=meta.internal_date,
        size=meta.size,
        recent=uid in view.recent,
        message=raw,
    )
