"""What a copy run must do, without I/O: the folder mapping, and the diff of a folder's
source listing, target listing and checkpoints into actions.

The diff is pure so that its promise can be proved on models (tests/bal_migration): applying
its actions makes the target folder hold the source folder's messages as a multiset of
(digest, flags, internal date), a second diff is empty, and a run interrupted anywhere
(even between an APPEND and its checkpoint) converges on the next without a duplicate.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.backends.base import ToolFolder, ToolMessage

INBOX = "INBOX"


# -- folders -----------------------------------------------------------------------------------
def map_folders(source: Sequence[ToolFolder], target: Sequence[ToolFolder]) -> dict[str, str]:
    """Each source folder's name on the target: INBOX to INBOX, a special-use folder to the
    target's folder of that use (its children follow it), other names kept. A name already
    given to another source folder gets a free " (2)" suffix, so two folders never merge.
    Deterministic: it depends only on the source's names and the target's special uses,
    which a copy run does not change, so every run maps alike."""
    by_use: dict[str, str] = {}
    for folder in target:
        if folder.special_use is not None:
            by_use.setdefault(folder.special_use, folder.name)

    def rank(folder: ToolFolder) -> tuple[int, int, str]:
        first = 0 if folder.name.upper() == INBOX else 1 if folder.special_use else 2
        return first, folder.name.count("/"), folder.name

    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for folder in sorted(source, key=rank):
        if folder.name.upper() == INBOX:
            name = INBOX
        elif folder.special_use is not None and by_use.get(folder.special_use) not in (
            None,
            *taken,
        ):
            name = by_use[folder.special_use]
        else:
            name = _under_mapped_parent(folder.name, mapping)
        if name in taken:
            name = _free(name, taken)
        taken.add(name)
        mapping[folder.name] = name
    return mapping


def _under_mapped_parent(name: str, mapping: Mapping[str, str]) -> str:
    parts = name.split("/")
    for cut in range(len(parts) - 1, 0, -1):
        parent = "/".join(parts[:cut])
        if parent in mapping:
            return "/".join([mapping[parent], *parts[cut:]])
    return name


def _free(name: str, taken: set[str]) -> str:
    number = 2
    while f"{name} ({number})" in taken:
        number += 1
    return f"{name} ({number})"


# -- messages ----------------------------------------------------------------------------------
def same_date(one: dt.datetime, other: dt.datetime) -> bool:
    """Internal dates compared as IMAP carries them: the instant, to the second."""
    return moment(one) == moment(other)


def moment(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class Copied:
    """A checkpoint: one source message (by UID in its folder) and its copy on the target.
    `target_uid` None is an intent written before the APPEND, which may or may not have
    happened; every target UID that existed when it was written is at most `floor`."""

    source_uid: int
    digest: str
    target_uid: int | None
    flags: frozenset[str] = frozenset()
    floor: int = 0


@dataclass(frozen=True, slots=True)
class Append:
    """Copy the source message (its bytes must have `digest`) with its flags and date."""

    source_uid: int
    digest: str
    flags: frozenset[str]
    internal_date: dt.datetime
    size: int


@dataclass(frozen=True, slots=True)
class Adopt:
    """An intent whose APPEND did happen: record `target_uid` as the copy."""

    source_uid: int
    target_uid: int


@dataclass(frozen=True, slots=True)
class SetFlags:
    source_uid: int
    target_uid: int
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class Delete:
    """The source message is gone: delete its copy (when `target_uid` is not None) and
    forget its checkpoint, so that it is never resurrected."""

    source_uid: int
    target_uid: int | None


Action = Append | Adopt | SetFlags | Delete


def diff(
    source: Sequence[ToolMessage],
    target: Sequence[ToolMessage],
    copied: Mapping[int, Copied],
) -> list[Action]:
    """The actions that bring `target` to `source`, given the checkpoints `copied` (by
    source UID). Order: adoptions, deletions, flag changes, then appends by source UID.

    An open intent is resolved against the target's listing: a target message with the
    intent's digest, above its floor and accounted for by no other checkpoint (the one
    under the source's UID first, as an import leaves it), is the APPEND whose checkpoint
    was lost, and is adopted; otherwise the APPEND never happened
    and the message is appended (again). Target messages no checkpoint accounts for (mail
    that was there before) are left alone."""
    on_target = {m.uid: m for m in target}
    accounted = {
        c.target_uid
        for c in copied.values()
        if c.target_uid is not None
        and c.target_uid in on_target
        and on_target[c.target_uid].digest == c.digest
    }
    spare: dict[str, list[int]] = defaultdict(list)
    for message in sorted(target, key=lambda m: m.uid):
        if message.uid not in accounted:
            spare[message.digest].append(message.uid)

    in_source = {m.uid: m for m in source}
    adopted: list[Action] = []
    deleted: list[Action] = []
    flagged: list[Action] = []
    appended: list[Action] = []
    copy_of: dict[int, int] = {}
    for entry in sorted(copied.values(), key=lambda c: c.source_uid):
        if entry.target_uid is None:
            found = _appended(spare[entry.digest], entry)
            if found is not None:
                spare[entry.digest].remove(found)
                copy_of[entry.source_uid] = found
                if entry.source_uid in in_source:
                    adopted.append(Adopt(entry.source_uid, found))
        elif entry.target_uid in accounted:
            copy_of[entry.source_uid] = entry.target_uid
        if entry.source_uid not in in_source:
            deleted.append(Delete(entry.source_uid, copy_of.get(entry.source_uid)))

    for message in sorted(source, key=lambda m: m.uid):
        found_entry = copied.get(message.uid)
        uid = copy_of.get(message.uid)
        if found_entry is None or uid is None or found_entry.digest != message.digest:
            if uid is not None:  # the UID now names other bytes: not our copy any more
                deleted.append(Delete(message.uid, uid))
            appended.append(
                Append(
                    message.uid,
                    message.digest,
                    message.flags,
                    message.internal_date,
                    message.size,
                )
            )
        elif on_target[uid].flags != message.flags:
            flagged.append(SetFlags(message.uid, uid, message.flags))
    return adopted + deleted + flagged + appended


def _appended(spare: list[int], entry: Copied) -> int | None:
    """The spare target UID (with the intent's digest, ascending) that the intent's APPEND
    made: one above its floor, the source's own UID first (an import keeps it)."""
    if entry.source_uid > entry.floor and entry.source_uid in spare:
        return entry.source_uid
    return next((u for u in spare if u > entry.floor), None)


# -- verification ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Difference:
    """One way a folder's copy differs: for the messages of one digest, what the source
    and the target hold, as (flags, internal date) pairs. `kind`: "missing" (fewer on the
    target), "extra" (more), "flags" or "date" (as many, not alike)."""

    folder: str  # the source's name ("" for a target folder no source folder maps to)
    target_folder: str
    digest: str
    kind: str
    source: tuple[tuple[frozenset[str], dt.datetime], ...]
    target: tuple[tuple[frozenset[str], dt.datetime], ...]


def compare(
    folder: str, target_folder: str, source: Sequence[ToolMessage], target: Sequence[ToolMessage]
) -> list[Difference]:
    """Every difference between two listings as multisets of (digest, flags, date)."""
    mine: dict[str, list[tuple[frozenset[str], dt.datetime]]] = defaultdict(list)
    theirs: dict[str, list[tuple[frozenset[str], dt.datetime]]] = defaultdict(list)
    for message in source:
        mine[message.digest].append((message.flags, moment(message.internal_date)))
    for message in target:
        theirs[message.digest].append((message.flags, moment(message.internal_date)))
    found: list[Difference] = []
    for key in sorted(set(mine) | set(theirs)):
        here, there = _sorted(mine[key]), _sorted(theirs[key])
        if here == there:
            continue
        if len(here) != len(there):
            kind = "missing" if len(here) > len(there) else "extra"
        elif sorted(d for _, d in here) != sorted(d for _, d in there):
            kind = "date"
        else:
            kind = "flags"
        found.append(Difference(folder, target_folder, key, kind, here, there))
    return found


def _sorted(
    pairs: list[tuple[frozenset[str], dt.datetime]],
) -> tuple[tuple[frozenset[str], dt.datetime], ...]:
    return tuple(sorted(pairs, key=lambda p: (sorted(p[0]), p[1])))
