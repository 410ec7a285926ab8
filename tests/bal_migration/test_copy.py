"""`copy_bal` and `verify_bal` on real platforms over real sockets: jean.dupont's BAL
from the mock's historic platform (through its own IMAP: the original bytes) to the mock's
modern platform, with the checkpoints in the gateway's database (SQLite and PostgreSQL).

The mock's modern platform lets the master login open only an existing BAL, so the tests
provision it first with the mock's own `ensure_mailbox` (the operator's provisioning)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from delegation.db import create_engine
from gateway.backends.base import Backend, MailboxAccess
from gateway.backends.errors import BackendUnavailable
from gateway.backends.imap_smtp.tools import ImapMailboxAccess
from gateway.bal_migration.checkpoint import Checkpoints, Journal
from gateway.bal_migration.copy import CopyProgress, copy_bal, verify_bal
from gateway.settings import MockSettings
from tests.bal_migration.appends import WatchedAppends
from tests.gateway.test_backend_tools import DUPONT, letter, with_historic_imap
from tests.support.stacks import Stack, gateway_settings, running_stack

KEYWORDS = frozenset({"\\Seen", "$MDNSent", "$Forwarded"})
WHEN = dt.datetime(2025, 11, 3, 8, 30, 15, tzinfo=dt.timezone(dt.timedelta(hours=1)))


@pytest.fixture
async def both(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Stack]:
    async with running_stack(
        gateway_settings(tmp_path / "gateway"), mock_settings, tmp_path / "mock", with_historic_imap
    ) as running:
        await running.mock.platform.ensure_mailbox(DUPONT, "899700000002", "Jean DUPONT")
        yield running


@pytest.fixture
async def checkpoints(migrated_db_url: str) -> AsyncIterator[Checkpoints]:
    engine = create_engine(migrated_db_url)
    try:
        yield Checkpoints(engine)
    finally:
        await engine.dispose()


def backend(stack: Stack, name: str) -> Backend:
    assert stack.gateway.router is not None
    return stack.gateway.router.backends[name]


@pytest.fixture
async def source(both: Stack) -> AsyncIterator[MailboxAccess]:
    access = await backend(both, "historic-imap").tools(DUPONT)
    yield access
    await access.aclose()


@pytest.fixture
async def target(both: Stack) -> AsyncIterator[MailboxAccess]:
    access = await backend(both, "modern").tools(DUPONT)
    yield access
    await access.aclose()


class Killed(Exception):
    """Stands for kill -9: raised right after an APPEND returned, before its checkpoint."""


class KilledAfterAppend(WatchedAppends):
    """The target access, dying after its `after`-th APPEND has been done (in a pipelined
    batch: once the batch is done)."""

    def __init__(self, access: MailboxAccess, after: int) -> None:
        super().__init__(access)
        self.after = after

    def done(self, uids: Sequence[int]) -> None:
        self.after -= len(uids)
        if self.after <= 0:
            raise Killed


async def digests(access: MailboxAccess) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for folder in await access.folders():
        for message in await access.messages(folder.name):
            found[(folder.name, message.digest)] += 1
    return found


async def seed(source: MailboxAccess) -> tuple[str, str]:
    """Accented and empty folders, keywords and dates; returns (accented, empty)."""
    accented = f"Résultats d'analyses {uuid.uuid4().hex[:4]}"
    empty = f"Vide {uuid.uuid4().hex[:4]}"
    await source.create_folder(accented)
    await source.create_folder(empty)
    for number in range(3):
        await source.append(accented, letter(f"bilan {number}"), KEYWORDS, WHEN)
    await source.append("INBOX", letter("doublon"), {"\\Flagged"}, WHEN)
    return accented, empty


async def test_copy_verify_and_a_second_run_does_nothing(
    source: MailboxAccess, target: MailboxAccess, checkpoints: Checkpoints
):
    accented, empty = await seed(source)
    journal = await checkpoints.journal(DUPONT, "historic-imap", "modern")
    seen: list[int] = []
    report = await copy_bal(
        DUPONT, source, target, journal, progress=lambda p: seen.append(p.appended)
    )
    total = sum((await digests(source)).values())
    assert report.appended == total > 4
    assert seen
    assert seen[-1] == total
    assert {accented, empty} <= set(report.folders.values())
    assert {accented, empty} <= {f.name for f in await target.folders()}

    copied = {m.digest: m for m in await target.messages(accented)}
    assert len(copied) == 3
    for message in copied.values():
        assert message.flags == KEYWORDS
        assert message.internal_date == WHEN
    assert await target.messages(empty) == []

    verified = await verify_bal(DUPONT, source, target, journal)
    assert verified.identical, verified.differences
    assert verified.messages == total
    record = await journal.record()
    assert (record.state, record.messages) == ("verified", total)

    again = await copy_bal(DUPONT, source, target, journal)
    assert (again.appended, again.flag_changes, again.deleted, again.adopted) == (0, 0, 0, 0)


async def test_resume_after_a_kill_between_append_and_checkpoint(
    source: MailboxAccess, target: MailboxAccess, checkpoints: Checkpoints
):
    await seed(source)
    journal = await checkpoints.journal(DUPONT, "historic-imap", "modern")
    with pytest.raises(Killed):
        await copy_bal(DUPONT, source, KilledAfterAppend(target, 3), journal)  # type: ignore[arg-type]
    assert (await journal.record()).state == "failed"
    report = await copy_bal(DUPONT, source, target, journal)
    # the batch's APPENDs whose checkpoints were lost are found on the target, not redone
    assert report.adopted >= 1
    total = sum((await digests(source)).values())
    assert (await journal.record()).messages == total
    verified = await verify_bal(DUPONT, source, target)
    assert verified.identical, verified.differences
    assert await digests(target) == await digests(source)  # no duplicate anywhere


async def test_incremental_run_after_flags_a_delivery_and_an_expunge(
    source: MailboxAccess, target: MailboxAccess, checkpoints: Checkpoints
):
    accented, _ = await seed(source)
    journal = await checkpoints.journal(DUPONT, "historic-imap", "modern")
    await copy_bal(DUPONT, source, target, journal)

    first, second, _third = await source.messages(accented)
    await source.set_flags(accented, first.uid, {"\\Seen", "\\Answered", "$Forwarded"})
    await source.delete(accented, [second.uid])
    await source.append("INBOX", letter("arrivé pendant la copie"), (), WHEN)

    steps: list[CopyProgress] = []
    report = await copy_bal(DUPONT, source, target, journal, progress=steps.append)
    assert (report.appended, report.flag_changes, report.deleted) == (1, 1, 1)
    verified = await verify_bal(DUPONT, source, target, journal)
    assert verified.identical, verified.differences
    on_target = {m.digest: m for m in await target.messages(accented)}
    assert second.digest not in on_target, "an expunged message is not resurrected"
    assert on_target[first.digest].flags == {"\\Seen", "\\Answered", "$Forwarded"}

    # a difference made behind the copy's back is found and named
    (kept,) = [m for m in await target.messages(accented) if m.digest != first.digest]
    await target.set_flags(accented, kept.uid, set())
    different = await verify_bal(DUPONT, source, target, journal)
    assert [(d.folder, d.digest, d.kind) for d in different.differences] == [
        (accented, kept.digest, "flags")
    ]
    assert (await journal.record()).state == "different"


async def test_journal_records_are_listed(checkpoints: Checkpoints):
    journal = await checkpoints.journal(DUPONT.upper(), "historic-imap", "modern")
    assert isinstance(journal, Journal)
    same = await checkpoints.journal(DUPONT, "historic-imap", "modern")
    assert same.copy == journal.copy
    (record,) = await checkpoints.records(DUPONT)
    assert (record.bal, record.state, record.messages) == (DUPONT, "planned", 0)


async def test_a_copy_reads_each_source_message_once(
    both: Stack,
    source: MailboxAccess,
    target: MailboxAccess,
    checkpoints: Checkpoints,
    monkeypatch: pytest.MonkeyPatch,
):
    """The bytes of a new message are read when they are copied, not also to list it
    first; a second run reads none (a UID's bytes never change in one UIDVALIDITY)."""
    await seed(source)
    total = sum((await digests(source)).values())
    fresh = await backend(both, "historic-imap").tools(DUPONT)  # no digest known yet
    assert isinstance(fresh, ImapMailboxAccess)
    read: Counter[tuple[str, int]] = Counter()  # (folder, UID) read
    original = ImapMailboxAccess._fetch_bodies

    async def counted(self: ImapMailboxAccess, uids: Sequence[int]) -> dict[int, bytes]:
        if self is fresh:
            assert self._selected is not None
            read.update((self._selected[0], uid) for uid in uids)
        return await original(self, uids)

    monkeypatch.setattr(ImapMailboxAccess, "_fetch_bodies", counted)
    try:
        journal = await checkpoints.journal(DUPONT, "historic-imap", "modern")
        report = await copy_bal(DUPONT, fresh, target, journal)
        assert report.appended == total
        assert len(read) == total
        assert set(read.values()) == {1}
        read.clear()
        again = await copy_bal(DUPONT, fresh, target, journal)
        assert (again.appended, again.flag_changes, again.deleted) == (0, 0, 0)
        assert not read
        # a verification (a cut-over's, under its hold) by the access that copied reads
        # nothing more of the source: the digests of the bytes it copied are known
        assert (await verify_bal(DUPONT, fresh, target, journal)).identical
        assert not read
        with pytest.raises(BackendUnavailable, match="new UIDVALIDITY"):
            await fresh.listing("INBOX", await fresh.uidvalidity("INBOX") + 1)
    finally:
        await fresh.aclose()
