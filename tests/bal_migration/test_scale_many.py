"""A 10,000-message folder copied between two Dovecot BAL (seeded as a maildir written by
the test, in a second), then an incremental run after 3 new messages, 5 flag changes and 2
expunges on the source, which does exactly those. The mock's modern platform takes ~10 ms
an APPEND, too slow at this count; Dovecot's maildir takes a few ms, growing with the
folder. The slowest test of the migration: about 1 to 4 minutes on a 2-core machine."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.bal_migration.copy import copy_bal, verify_bal
from gateway.settings import MockSettings
from tests.bal_migration.platforms import (
    DOVECOT_BAL,
    USER_PW,
    Platforms,
    running_platforms,
    write_maildir,
)
from tests.bal_migration.test_chaos import mail
from tests.bal_migration.test_copy import digests

pytestmark = pytest.mark.slow

WHEN = dt.datetime(2025, 11, 3, 8, 30, 15, tzinfo=dt.timezone(dt.timedelta(hours=1)))
ARCHIVE_BAL = "archives.cabinet@medecin.mssante.fr"  # a second BAL on the Dovecot
MANY = 10_000


@pytest.fixture
async def platforms(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Platforms]:
    async with running_platforms(
        tmp_path, mock_settings, extra_users={ARCHIVE_BAL: USER_PW}
    ) as running:
        yield running


async def test_ten_thousand_messages_and_an_incremental_run(platforms: Platforms) -> None:
    folder = "Archives 2019"
    started = time.monotonic()
    seeded = write_maildir(
        platforms.server,
        DOVECOT_BAL,
        folder,
        (
            (mail(f"archive {n}"), frozenset({"\\Seen"}) if n % 3 else frozenset(), WHEN)
            for n in range(MANY)
        ),
    )
    assert seeded == MANY
    read = await platforms.access("dovecot", DOVECOT_BAL)
    write = await platforms.access("dovecot", ARCHIVE_BAL)
    try:
        journal = await platforms.checkpoints.journal(DOVECOT_BAL, "dovecot", "dovecot")
        first = await copy_bal(DOVECOT_BAL, read, write, journal)
        copied_at = time.monotonic()
        assert first.appended == MANY
        assert len(await write.messages(folder)) == MANY

        listed = await read.messages(folder)
        for number in range(3):
            await read.append(folder, mail(f"nouveau {number}"), {"$Forwarded"}, WHEN)
        for message in listed[100:105]:
            await read.set_flags(folder, message.uid, {"\\Answered", "$MDNSent"})
        await read.delete(folder, [listed[7].uid, listed[5000].uid])

        second = await copy_bal(DOVECOT_BAL, read, write, journal)
        print(
            f"{MANY} messages: first run {copied_at - started:.1f} s, "
            f"incremental {second.seconds:.1f} s"
        )
        assert (second.appended, second.flag_changes, second.deleted, second.adopted) == (
            3,
            5,
            2,
            0,
        )
        verified = await verify_bal(DOVECOT_BAL, read, write, journal)
        assert verified.identical, verified.differences
        assert verified.messages == MANY + 1
        assert await digests(write) == await digests(read)
    finally:
        await read.aclose()
        await write.aclose()
