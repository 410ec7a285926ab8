"""`copy_bal` at the sizes of issue 14 §2, on real platforms: a Dovecot BAL with special-use,
accented, nested and empty folders to the mock's modern platform; a 50 MB message (the
mock's historic platform refuses MIME messages over 40 MiB, `MAX_MIME_BYTES`, so it goes
modern → Dovecot, and back); and a message expunged between the copy's listing and its
fetch. The 10,000-message folder is in test_scale_many.py (its own file, for the workers'
balance)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import time
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gateway.backends.base import MailboxAccess, digest
from gateway.bal_migration.copy import copy_bal, verify_bal
from gateway.settings import MockSettings
from tests.bal_migration.platforms import (
    DOVECOT_BAL,
    MODERN_BAL,
    Platforms,
    running_platforms,
)
from tests.bal_migration.test_chaos import mail

pytestmark = pytest.mark.slow

KEYWORDS = frozenset({"\\Seen", "$MDNSent", "$Forwarded"})
WHEN = dt.datetime(2025, 11, 3, 8, 30, 15, tzinfo=dt.timezone(dt.timedelta(hours=1)))
BIG = 50_000_000  # bytes of the large message, headers included
RETURN_BAL = "retour.irm@medecin.mssante.fr"  # the 50 MB message's way back, on the mock


@pytest.fixture
async def platforms(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Platforms]:
    async with running_platforms(tmp_path, mock_settings, special_use=True) as running:
        yield running


@pytest.fixture(scope="session")
def big_message(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MIME message of `BIG` bytes whose attachment is base64 (76-character lines) of
    pseudo-random bytes; built once, kept in a file."""
    head = (
        f"From: dr.martin@medecin.mssante.fr\r\nTo: {MODERN_BAL}\r\n"
        "Subject: IRM complete (DICOM)\r\nMessage-ID: <irm-50mo@test>\r\n"
        "Date: Mon, 02 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="frontiere"\r\n\r\n'
        "--frontiere\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nVoici l'examen.\r\n"
        "--frontiere\r\nContent-Type: application/dicom\r\n"
        'Content-Disposition: attachment; filename="examen.dcm"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode()
    tail = b"\r\n--frontiere--\r\n"
    lines = (BIG - len(head) - len(tail)) // 78  # 76 characters and CRLF
    raw = b"".join(
        hashlib.shake_256(str(n).encode()).digest(57 * 1024) for n in range(lines // 1024 + 1)
    )[: lines * 57]
    encoded = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    body = head + encoded.removesuffix(b"\r\n") + tail
    body += b" " * (BIG - len(body))  # pad the last line up to the exact size
    path = tmp_path_factory.mktemp("big") / "irm.eml"
    path.write_bytes(body)
    return path


async def opened(platforms: Platforms, name: str, bal: str) -> MailboxAccess:
    return await platforms.access(name, bal)


async def test_dovecot_folders_to_the_modern_platform(platforms: Platforms) -> None:
    """Special uses mapped (Sent → Envoyés, its child following), accents, nesting, an
    empty folder, keywords and dates; verify clean; the second run does nothing."""
    read = await opened(platforms, "dovecot", DOVECOT_BAL)
    write = await opened(platforms, "modern", MODERN_BAL)
    try:
        await read.folders()  # learns Dovecot's "." delimiter before creating nested names
        for name in ("Sent", "Sent/2024", "Drafts", "Trash", "Comptes rendus", "Vide"):
            await read.create_folder(name)
        await read.create_folder("Comptes rendus/Échographies")
        uses = {f.name: f.special_use for f in await read.folders()}
        assert uses["Sent"] == "\\Sent"
        assert uses["Trash"] == "\\Trash"
        await read.append("Sent", mail("envoyé"), {"\\Seen", "$MDNSent"}, WHEN)
        await read.append("Sent/2024", mail("envoyé 2024"), {"\\Seen"}, WHEN)
        await read.append("Drafts", mail("brouillon"), {"\\Draft"}, WHEN)
        await read.append("Trash", mail("jeté"), {"\\Seen", "\\Deleted"}, WHEN)
        for number in range(3):
            await read.append("Comptes rendus/Échographies", mail(f"écho {number}"), KEYWORDS, WHEN)
        await read.append("INBOX", mail("transféré"), {"$Forwarded"}, WHEN)

        journal = await platforms.checkpoints.journal(DOVECOT_BAL, "dovecot", "modern")
        report = await copy_bal(DOVECOT_BAL, read, write, journal)
        assert report.appended == 8
        assert report.folders["Sent"] == "Envoyés"
        assert report.folders["Sent/2024"] == "Envoyés/2024"
        assert report.folders["Drafts"] == "Brouillons"
        assert report.folders["Trash"] == "Corbeille"
        assert report.folders["Comptes rendus/Échographies"] == "Comptes rendus/Échographies"
        on_target = {f.name for f in await write.folders()}
        assert {"Envoyés/2024", "Comptes rendus/Échographies", "Vide"} <= on_target
        assert await write.messages("Vide") == []
        echoes = await write.messages("Comptes rendus/Échographies")
        assert [(m.flags, m.internal_date) for m in echoes] == [(KEYWORDS, WHEN)] * 3
        (sent,) = await write.messages("Envoyés")
        assert sent.flags == {"\\Seen", "$MDNSent"}
        (trashed,) = await write.messages("Corbeille")
        assert "\\Deleted" in trashed.flags

        verified = await verify_bal(DOVECOT_BAL, read, write, journal)
        assert verified.identical, verified.differences
        again = await copy_bal(DOVECOT_BAL, read, write, journal)
        assert (again.appended, again.flag_changes, again.deleted, again.adopted) == (0, 0, 0, 0)
    finally:
        await read.aclose()
        await write.aclose()


async def test_a_50_mb_message_modern_to_dovecot_and_back(
    platforms: Platforms, big_message: Path
) -> None:
    """Its bytes arrive intact both ways (the mock's modern platform takes APPENDs up to
    50 MiB); the copy holds a few copies of it at most."""
    body = await asyncio.to_thread(big_message.read_bytes)
    expected = digest(body)
    assert len(body) == BIG
    await platforms.stack.mock.platform.deliver(MODERN_BAL, body, flags={"\\Seen"})
    del body
    modern = await opened(platforms, "modern", MODERN_BAL)
    dovecot = await opened(platforms, "dovecot", DOVECOT_BAL)
    try:
        journal = await platforms.checkpoints.journal(MODERN_BAL, "modern", "dovecot")
        tracemalloc.start()
        try:
            started = time.monotonic()
            report = await copy_bal(MODERN_BAL, modern, dovecot, journal)
            took = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        print(f"50 MB modern → Dovecot: {took:.1f} s, peak {peak / BIG:.1f} times the message")
        assert report.appended == 1
        assert report.bytes == BIG
        # both servers' sides of it are in this process too (the mock's FETCH response)
        assert peak < 6 * BIG
        (copied,) = await dovecot.messages("INBOX")
        assert copied.digest == expected
        assert copied.size == BIG
        verified = await verify_bal(MODERN_BAL, modern, dovecot, journal)
        assert verified.identical, verified.differences

        await platforms.stack.mock.platform.ensure_mailbox(RETURN_BAL, "899700000008", "Retour")
        back = await opened(platforms, "modern", RETURN_BAL)
        try:
            journal = await platforms.checkpoints.journal(DOVECOT_BAL, "dovecot", "modern")
            returned = await copy_bal(DOVECOT_BAL, dovecot, back, journal)
            assert returned.bytes == BIG
            (again,) = await back.messages("INBOX")
            assert again.digest == copied.digest
        finally:
            await back.aclose()
    finally:
        await modern.aclose()
        await dovecot.aclose()


class _Vanishing:
    """The source access, whose message `uid` is expunged by a client right before the
    copy fetches it."""

    def __init__(self, access: MailboxAccess, folder: str, uid: int) -> None:
        self.access, self.folder, self.uid = access, folder, uid

    def __getattr__(self, name: str) -> object:
        return getattr(self.access, name)

    async def fetch(self, folder: str, uid: int) -> bytes:
        if (folder, uid) == (self.folder, self.uid):
            await self.access.delete(folder, [uid])
        return await self.access.fetch(folder, uid)

    async def fetch_many(self, folder: str, uids: Sequence[int]) -> dict[int, bytes]:
        if folder == self.folder and self.uid in uids:
            await self.access.delete(folder, [self.uid])
        found: dict[int, bytes] = await self.access.fetch_many(folder, uids)  # type: ignore[attr-defined]
        return found


async def test_a_message_expunged_between_listing_and_fetch(platforms: Platforms) -> None:
    """Bug fixed: the run failed with BackendNotFound; now it copies the rest, and the
    next run has nothing to do."""
    read = await opened(platforms, "modern", MODERN_BAL)
    write = await opened(platforms, "dovecot", DOVECOT_BAL)
    try:
        for number in range(4):
            await read.append("INBOX", mail(f"message {number}"), {"\\Seen"}, WHEN)
        doomed = (await read.messages("INBOX"))[1]
        journal = await platforms.checkpoints.journal(MODERN_BAL, "modern", "dovecot")
        report = await copy_bal(MODERN_BAL, _Vanishing(read, "INBOX", doomed.uid), write, journal)  # type: ignore[arg-type]
        assert (report.appended, report.vanished) == (3, 1)
        assert (await journal.record()).state == "copied"
        verified = await verify_bal(MODERN_BAL, read, write)
        assert verified.identical, verified.differences
        again = await copy_bal(MODERN_BAL, read, write, journal)
        assert (again.appended, again.deleted, again.vanished) == (0, 0, 0)
    finally:
        await read.aclose()
        await write.aclose()
