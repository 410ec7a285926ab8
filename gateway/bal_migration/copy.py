"""Copying a BAL from one `MailboxAccess` to another, and verifying the result.

`copy_bal` creates the target's folders, then for each source folder lists both sides,
asks `plan.diff` what to do, and does it: appends the exact bytes with their flags
(keywords included) and internal date in batches, each batch's intents committed before
its APPENDs and completed after them; flag changes and deletions of messages expunged on
the source since they were copied. Run again, it does only what changed; killed anywhere,
it goes on without a duplicate. `verify_bal` compares the two sides, folder by folder.

UIDs: where the target can import with given UIDs (`UidImport`) and the source's UIDs are
those the BAL's clients see, a target folder new and empty at the first copy gets the
source folder's UIDVALIDITY, and each message is imported under its source UID, ascending,
so that an LPS's cache stays valid after the move. Later runs go on so while the source's
UIDs are above the target folder's; once the target has messages of its own above them
(delivered there after a cut-over), the rest is appended with new UIDs. Resumption is the
same either way: an import is an APPEND whose UID was chosen, and its intent is adopted by
UID and digest. `CopyReport.uids_kept` names the folders whose copies all kept their UIDs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from gateway.backends.base import (
    UNREAD,
    MailboxAccess,
    ToolMessage,
    UidImport,
    digest,
    listing_of,
    public_uids_of,
    uid_import_of,
)
from gateway.backends.errors import BackendError, BackendNotFound, BackendUnavailable
from gateway.bal_migration.checkpoint import FolderKey, Journal
from gateway.bal_migration.plan import (
    Adopt,
    Append,
    Copied,
    Delete,
    Difference,
    SetFlags,
    compare,
    diff,
    map_folders,
)

BATCH = 200  # appends per intent transaction (and per source FETCH, within FETCH_BYTES)
FETCH_BYTES = 16 * 1024 * 1024  # source bytes fetched per request (past one message)
FORGET_BATCH = 500  # source UIDs per DELETE (the databases' parameter limits)


@dataclass
class CopyProgress:
    """Where a copy stands, given to the `progress` callback after each step."""

    bal: str
    folder: str = ""
    folders_done: int = 0
    folders: int = 0
    appended: int = 0
    to_append: int = 0  # planned so far (grows as folders are listed)
    bytes: int = 0


@dataclass
class CopyReport:
    bal: str
    folders: dict[str, str] = field(default_factory=dict)  # source name → target name
    created: list[str] = field(default_factory=list)  # target folders created
    appended: int = 0
    adopted: int = 0  # APPENDs of an interrupted run found on the target
    vanished: int = 0  # gone from the source between its listing and its copy
    flag_changes: int = 0
    deleted: int = 0
    bytes: int = 0
    seconds: float = 0.0
    # source folders whose UIDVALIDITY and every message's UID the target kept
    uids_kept: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    bal: str
    folders: dict[str, str] = field(default_factory=dict)
    messages: int = 0  # on the source
    differences: list[Difference] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences


class _Pace:
    """At most `rate` source messages a second (None: as fast as it goes). A throttled
    copy works in batches of about a second's messages: its checkpoints and progress
    keep coming at that pace, not once per `BATCH`."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.batch = min(BATCH, max(1, int(rate))) if rate else BATCH
        self.next = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next > now:
            await asyncio.sleep(self.next - now)
        self.next = max(self.next, now) + self.interval


async def uidvalidity_of(access: MailboxAccess, folder: str) -> int:
    """The folder's UIDVALIDITY where the access tells it (IMAP and store accesses do);
    0 otherwise (checkpoints then trust UIDs not to be reused)."""
    ask = getattr(access, "uidvalidity", None)
    if ask is None:
        return 0
    value = await ask(folder)
    return int(value)


async def copy_bal(
    bal: str,
    source: MailboxAccess,
    target: MailboxAccess,
    journal: Journal,
    *,
    progress: Callable[[CopyProgress], None] | None = None,
    max_rate: float | None = None,
    trailing: bool = False,
) -> CopyReport:
    """Copy (or bring up to date) `bal` from `source` to `target`, checkpointing in
    `journal`. Raises the first `BackendError` after recording it as the copy's last
    error (state "failed"); the next run resumes.

    `trailing`: the target is the BAL's live platform now (after a cut-over), the source
    its old one: only messages that arrived on the source since are copied, since what
    the user changed, moved or deleted on the target is theirs (no flag is set back, no
    copy restored), and the copy's state is left as it is."""
    started = time.monotonic()
    report = CopyReport(bal)
    if not trailing:
        await journal.set_state("copying")
    try:
        await _copy(bal, source, target, journal, report, progress, _Pace(max_rate), trailing)
    except BackendError as failure:
        if not trailing:
            await journal.set_state("failed", error=f"{type(failure).__name__}: {failure}")
        raise
    except BaseException:
        if not trailing:
            await asyncio.shield(journal.set_state("failed", error="interrupted"))
        raise
    report.seconds = time.monotonic() - started
    if not trailing:
        await journal.set_state("copied")
    return report


async def _copy(
    bal: str,
    source: MailboxAccess,
    target: MailboxAccess,
    journal: Journal,
    report: CopyReport,
    progress: Callable[[CopyProgress], None] | None,
    pace: _Pace,
    trailing: bool = False,
) -> None:
    source_folders = await source.folders()
    target_folders = await target.folders()
    mapping = map_folders(source_folders, target_folders)
    report.folders = mapping
    existing = {f.name for f in target_folders}
    for name in sorted(mapping.values()):
        if name not in existing and name != "INBOX" and not trailing:
            await target.create_folder(name)
            report.created.append(name)
            existing.add(name)

    state = CopyProgress(bal, folders=len(mapping))
    known = await journal.folders()
    current: set[int] = set()
    for name in sorted(mapping):
        state.folder = name
        validity = await uidvalidity_of(source, name)
        folder = await journal.folder(name, validity, mapping[name])
        current.add(folder.key)
        await _copy_folder(
            source,
            target,
            journal,
            folder,
            report,
            state,
            progress,
            pace,
            trailing,
            existing,
            await _copied_before(journal, known, folder) if trailing else frozenset(),
        )
        state.folders_done += 1
        if progress is not None:
            progress(state)
    if trailing:
        return  # what the source lost since the cut-over is not taken from the target
    # folders gone from the source, or of an old UIDVALIDITY: their copies go too
    for stale in known:
        if stale.key in current:
            continue
        copied = await journal.copied(stale)
        if any(c.target_uid is not None for c in copied.values()) and stale.target in {
            f.name for f in await target.folders()
        }:
            gone = diff([], await target.messages(stale.target), copied)
            doomed = [a.target_uid for a in gone if isinstance(a, Delete) and a.target_uid]
            await target.delete(stale.target, doomed)
            report.deleted += len(doomed)
        await journal.drop_folder(stale)


async def _copy_folder(
    source: MailboxAccess,
    target: MailboxAccess,
    journal: Journal,
    folder: FolderKey,
    report: CopyReport,
    state: CopyProgress,
    progress: Callable[[CopyProgress], None] | None,
    pace: _Pace,
    trailing: bool = False,
    existing: set[str] | None = None,
    before: frozenset[str] = frozenset(),
) -> None:
    copied = await journal.copied(folder)
    if trailing or not folder.uidvalidity:
        here = await source.messages(folder.name)
    else:  # the bytes of what is new are read once, when copied; a UID's never change
        here = [
            replace(m, digest=copied[m.uid].digest) if m.digest == UNREAD and m.uid in copied else m
            for m in await listing_of(source, folder.name, folder.uidvalidity)
        ]
    if trailing:
        here = [m for m in here if m.digest not in before]
        fresh = [m for m in here if m.uid not in copied or copied[m.uid].target_uid is None]
        if not fresh:
            return
        if existing is not None and folder.target not in existing and folder.target != "INBOX":
            await target.create_folder(folder.target)  # deleted on the new side: mail comes
            existing.add(folder.target)
    there = await target.messages(folder.target)
    actions = diff(here, there, copied)
    if trailing:  # only what arrived: appends (and adoptions of an interrupted pass)
        actions = [
            a
            for a in actions
            if isinstance(a, Adopt)
            or (
                isinstance(a, Append)
                and (a.source_uid not in copied or copied[a.source_uid].target_uid is None)
            )
        ]
    floor = max((m.uid for m in there), default=0)
    # the live target of a trailing pass keeps its own UIDs: plain APPENDs there
    importer = None if trailing else await _importer(source, target, folder, there, copied)

    adopted = [(a.source_uid, a.target_uid) for a in actions if isinstance(a, Adopt)]
    await journal.complete(folder, adopted)
    report.adopted += len(adopted)

    deletions = [a for a in actions if isinstance(a, Delete)]
    doomed = [a.target_uid for a in deletions if a.target_uid is not None]
    if doomed:
        await target.delete(folder.target, doomed)
    for start in range(0, len(deletions), FORGET_BATCH):
        chunk = deletions[start : start + FORGET_BATCH]
        await journal.forget(
            folder,
            [a.source_uid for a in chunk],
            deleted=sum(1 for a in chunk if a.target_uid is not None),
        )
    report.deleted += len(doomed)

    for action in actions:
        if isinstance(action, SetFlags):
            await target.set_flags(folder.target, action.target_uid, action.flags)
            await journal.flagged(folder, action.source_uid, action.flags)
            report.flag_changes += 1

    appends = [a for a in actions if isinstance(a, Append)]
    state.to_append += len(appends)
    async with contextlib.aclosing(_read_ahead(source, folder.name, appends, pace)) as reads:
        async for bodies in reads:
            ready = _checked(folder.name, bodies, report)
            # without UID import, the target takes a batch's APPENDs at once where it can
            many = getattr(target, "append_many", None) if importer is None else None
            await journal.intend(
                folder, [(a.source_uid, a.digest, a.flags) for a, _ in ready], floor
            )
            done: list[tuple[int, int]] = []
            if many is not None and len(ready) > 1:
                floor = max([floor, *await _append_ready(many, folder.target, ready, done)])
            else:
                floor, importer = await _append_each(
                    target, importer, folder.target, ready, floor, done
                )
            size = sum(len(body) for _, body in ready)
            await journal.complete(folder, done, size=size)
            report.appended += len(done)
            report.bytes += size
            state.appended += len(done)
            state.bytes += size
            if progress is not None:
                progress(state)
    if importer is not None and all(
        c.source_uid == c.target_uid for c in (await journal.copied(folder)).values()
    ):
        report.uids_kept.append(folder.name)


def _checked(
    folder: str, bodies: Sequence[tuple[Append, bytes | None]], report: CopyReport
) -> list[tuple[Append, bytes]]:
    """The messages read, each with the digest of its bytes; one expunged (or moved) by a
    client since the listing is not copied (the next run no longer lists it, or appends it
    if it is back). Bytes other than those listed under the UID are a broken source."""
    ready: list[tuple[Append, bytes]] = []
    for action, body in bodies:
        if body is None:
            report.vanished += 1
            continue
        found = digest(body)
        if action.digest != UNREAD and found != action.digest:
            raise BackendUnavailable(
                "protocol", f"{folder} {action.source_uid}: bytes changed under the copy"
            )
        ready.append((replace(action, digest=found), body))
    return ready


async def _append_each(
    target: MailboxAccess,
    importer: UidImport | None,
    folder: str,
    ready: Sequence[tuple[Append, bytes]],
    floor: int,
    done: list[tuple[int, int]],
) -> tuple[int, UidImport | None]:
    """APPEND (or import under its source UID) each message in turn; record each (source
    UID, new UID). The new floor, and the importer still usable (None once the target's
    UIDs are past the source's)."""
    for action, body in ready:
        uid = None
        if importer is not None and action.source_uid > floor:
            uid = await importer.import_message(
                folder, action.source_uid, body, action.flags, action.internal_date
            )
            if uid is None:  # the target's UIDs are past it: new UIDs from here on
                importer = None
        if uid is None:
            uid = await target.append(folder, body, action.flags, action.internal_date)
        floor = max(floor, uid)
        done.append((action.source_uid, uid))
    return floor, importer


async def _copied_before(
    journal: Journal, known: Sequence[FolderKey], folder: FolderKey
) -> frozenset[str]:
    """The digests copied from this folder under an older UIDVALIDITY: the old platform
    renumbered it after the cut-over, and the trailing sync must not bring its messages
    to the live BAL a second time."""
    found: set[str] = set()
    for older in known:
        if older.name == folder.name and older.key != folder.key:
            found.update(c.digest for c in (await journal.copied(older)).values())
    return frozenset(found)


async def _importer(
    source: MailboxAccess,
    target: MailboxAccess,
    folder: FolderKey,
    there: Sequence[ToolMessage],
    copied: Mapping[int, Copied],
) -> UidImport | None:
    """The target's `UidImport` when this folder's copy keeps the source's UIDs: the
    target folder has the source's UIDVALIDITY, or gets it now, being empty before the
    first copy. None: copies get the target's new UIDs."""
    importer = uid_import_of(target)
    if importer is None or not public_uids_of(source) or not folder.uidvalidity:
        return None
    if await uidvalidity_of(target, folder.target) == folder.uidvalidity:
        return importer
    first = not there and all(c.target_uid is None for c in copied.values())
    if first and await importer.import_folder(folder.target, folder.uidvalidity):
        return importer
    return None


async def _append_ready(
    many: Callable[..., Awaitable[list[int]]],
    folder: str,
    ready: Sequence[tuple[Append, bytes]],
    done: list[tuple[int, int]],
) -> list[int]:
    """APPEND `ready` at once (`append_many`); record each (source UID, new UID)."""
    uids = await many(folder, [(body, a.flags, a.internal_date) for a, body in ready])
    done.extend((a.source_uid, uid) for (a, _), uid in zip(ready, uids, strict=True))
    return uids


def _batches(appends: Sequence[Append], most: int = BATCH) -> Iterator[Sequence[Append]]:
    """The appends in groups of at most `most` messages and `FETCH_BYTES` bytes (by the
    listing's sizes; a larger message alone): one read, one intent, one APPEND burst and
    one completion each, and a bounded amount of bytes in memory."""
    start = 0
    while start < len(appends):
        end, weight = start + 1, appends[start].size
        while end < len(appends) and end - start < most:
            if weight + appends[end].size > FETCH_BYTES:
                break
            weight += appends[end].size
            end += 1
        yield appends[start:end]
        start = end


async def _read_ahead(
    source: MailboxAccess, folder: str, appends: Sequence[Append], pace: _Pace
) -> AsyncGenerator[list[tuple[Append, bytes | None]], None]:
    """Each batch's bytes (`_read`), the next batch's read while the caller appends and
    checkpoints this one: the source and the target are two connections, so neither
    waits for the other, and at most two batches are in memory. Close it (aclosing): a
    read under way is cancelled then."""
    batches = iter(_batches(appends, pace.batch))
    first = next(batches, None)
    pending = None if first is None else asyncio.ensure_future(_read(source, folder, first, pace))
    try:
        while pending is not None:
            bodies = await pending
            following = next(batches, None)
            pending = (
                None
                if following is None
                else asyncio.ensure_future(_read(source, folder, following, pace))
            )
            yield bodies
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()  # seen: the copy's own failure is the one reported


async def _read(
    source: MailboxAccess, folder: str, batch: Sequence[Append], pace: _Pace
) -> list[tuple[Append, bytes | None]]:
    """Each message's bytes (None: gone from the source since its listing), in one
    request where the source can (`fetch_many`), else one by one."""
    for _ in batch:
        await pace.wait()
    many = getattr(source, "fetch_many", None)
    if many is not None:
        found: dict[int, bytes] = await many(folder, [a.source_uid for a in batch])
        return [(action, found.get(action.source_uid)) for action in batch]
    bodies: list[tuple[Append, bytes | None]] = []
    for action in batch:
        try:
            bodies.append((action, await source.fetch(folder, action.source_uid)))
        except BackendNotFound:
            bodies.append((action, None))
    return bodies


async def verify_bal(
    bal: str,
    source: MailboxAccess,
    target: MailboxAccess,
    journal: Journal | None = None,
) -> VerifyReport:
    """Compare `bal` on both sides: every source message on the target as many times, with
    the same digest, flags and internal date, in the mapped folder; messages in target
    folders no source folder maps to are differences too ("extra"). With `journal`, the
    copy's state becomes "verified" or "different"."""
    source_folders = await source.folders()
    target_folders = await target.folders()
    mapping = map_folders(source_folders, target_folders)
    report = VerifyReport(bal, mapping)
    on_target = {f.name for f in target_folders}
    for name in sorted(mapping):
        here = await source.messages(name)
        there: Sequence[ToolMessage] = (
            await target.messages(mapping[name]) if mapping[name] in on_target else []
        )
        report.messages += len(here)
        report.differences += compare(name, mapping[name], here, there)
    for name in sorted(on_target - set(mapping.values())):
        report.differences += compare("", name, [], await target.messages(name))
    if journal is not None:
        await journal.set_state("verified" if report.identical else "different")
    return report
