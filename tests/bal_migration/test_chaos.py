"""The chaos test's first half (issue 14 §2): a workload of deliveries and client changes
runs on the source BAL while `copy_bal` is interrupted at random points, by cancelling its
task during or after a random APPEND (wherever the copy then is: a read, an intent, a
completion) and by ``kill -9`` of a child process running it
(tests/bal_migration/chaos_copy.py) after a random number of APPENDs, their batch done and
its checkpoint not yet written (the child waits there to be killed); once the
workload stops, a last run completes. Then `verify_bal` is clean, no message is on the
target twice, and the target holds exactly what the workload's own ledger says.

`run_chaos_copy` returns what a cut-over step needs to go on from there (the accesses'
backends and BAL, the journal, the ledger). The seed is printed: a failure is replayed
with ``LPS_CHAOS_SEED=<seed>``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import imaplib
import json
import os
import random
import ssl
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.backends.base import MailboxAccess, digest
from gateway.bal_migration.checkpoint import Journal
from gateway.bal_migration.copy import CopyReport, copy_bal, verify_bal
from gateway.imap import mutf7
from gateway.settings import BackendSettings, MockSettings
from tests.bal_migration.appends import WatchedAppends
from tests.bal_migration.platforms import (
    HISTORIC_BAL,
    MODERN_BAL,
    USER_PW,
    Platforms,
    revealed,
    running_platforms,
)
from tests.support.waiting import until

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
REPO = HERE.parent.parent
ARCHIVES = "Archives"
ACCENTED = "Comptes rendus/Échographies"
KEYWORDS = ("$MDNSent", "$Forwarded", "\\Seen", "\\Flagged", "\\Answered")
SEED = int(os.environ.get("LPS_CHAOS_SEED", "0")) or None


@dataclass(frozen=True)
class Direction:
    source: tuple[str, str]  # (backend, BAL)
    target: tuple[str, str]
    workload_ops: int  # client changes and deliveries while the copy is interrupted
    initial: int  # messages in the source's INBOX before the first run


# the same BAL on both sides, as a move is (the Dovecot gets a user for it)
MODERN_TO_DOVECOT = Direction(("modern", MODERN_BAL), ("dovecot", MODERN_BAL), 40, 60)
HISTORIC_TO_MODERN = Direction(("historic-imap", HISTORIC_BAL), ("modern", HISTORIC_BAL), 25, 30)


@dataclass
class ChaosResult:
    """Where the chaos left the BAL: copied, verified, ready for a cut-over."""

    direction: Direction
    seed: int
    journal: Journal
    ledger: dict[str, Counter[str]]  # source folder → digests the workload left there
    mapping: dict[str, str]  # source folder → target folder
    interruptions: list[str] = field(default_factory=list)
    reports: list[CopyReport] = field(default_factory=list)


def mail(subject: str) -> bytes:
    return (
        f"From: dr.martin@medecin.mssante.fr\r\nTo: {MODERN_BAL}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@chaos>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0100\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Compte rendu {uuid.uuid4().hex}.\r\n"
    ).encode()


# -- the source's client ----------------------------------------------------------------
def imap_client(settings: BackendSettings, bal: str) -> imaplib.IMAP4:
    """A plain imaplib client on the source, logged in as the operator's tools are."""
    client = imaplib.IMAP4(settings.imap_host, settings.imap_port, timeout=30)
    if settings.imap_tls == "starttls":
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
        client.starttls(context)
    blob = f"{bal}\0{settings.master_user}\0{settings.password()}".encode()
    client.authenticate("PLAIN", lambda _: blob)
    return client


def mailbox(name: str, delimiter: str) -> str:
    return '"' + mutf7.encode(name.replace("/", delimiter)) + '"'


class Workload:
    """Deliveries and a real client's changes on the source, one step per tick; every
    change that succeeded is written in the ledger (source folder → digests)."""

    def __init__(
        self,
        client: imaplib.IMAP4,
        deliver: Callable[[bytes], Awaitable[object]],
        rng: random.Random,
        ledger: dict[str, Counter[str]],
        limit: int,
        delimiter: str,
    ) -> None:
        self.client, self.deliver, self.rng = client, deliver, rng
        self.ledger, self.limit, self.delimiter = ledger, limit, delimiter
        self.ticks = 0  # steps allowed so far (the copy's APPENDs grant them)
        self.done: Counter[str] = Counter()
        self.stop = False

    async def run(self) -> None:
        steps = 0
        while steps < self.limit:
            await until(lambda s=steps: self.ticks > s or self.stop, "a tick for the workload")
            if self.stop:
                return
            kind = self.rng.choice(["deliver", "deliver", "flags", "move", "expunge", "append"])
            await self.step(kind)
            self.done[kind] += 1
            steps += 1

    async def step(self, kind: str) -> None:
        if kind == "deliver":
            raw = mail(f"livraison {uuid.uuid4().hex[:6]}")
            await self.deliver(raw)
            self.ledger["INBOX"][digest(raw)] += 1
            return
        if kind == "append":
            raw = mail(f"ajout {uuid.uuid4().hex[:6]}")
            await asyncio.to_thread(
                self.client.append, mailbox(ARCHIVES, self.delimiter), "(\\Seen)", None, raw
            )
            self.ledger[ARCHIVES][digest(raw)] += 1
            return
        picked = await asyncio.to_thread(self._pick, "INBOX")
        if picked is None:
            return
        uid, found = picked
        if kind == "flags":
            flags = " ".join(self.rng.sample(KEYWORDS, self.rng.randint(0, 3)))
            await asyncio.to_thread(self._ok, "UID", "STORE", uid, "FLAGS", f"({flags})")
        elif kind == "move":
            await asyncio.to_thread(self._ok, "UID", "MOVE", uid, mailbox(ARCHIVES, self.delimiter))
            self.ledger["INBOX"][found] -= 1
            self.ledger[ARCHIVES][found] += 1
        else:
            await asyncio.to_thread(self._ok, "UID", "STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
            await asyncio.to_thread(self._ok, "UID", "EXPUNGE", uid)
            self.ledger["INBOX"][found] -= 1

    def _ok(self, *words: str) -> None:
        status, answer = self.client._simple_command(*words)  # type: ignore[attr-defined]
        assert status == "OK", (words, answer)

    def _pick(self, folder: str) -> tuple[str, str] | None:
        self.client.select(mailbox(folder, self.delimiter))
        status, found = self.client.uid("SEARCH", "ALL")
        assert status == "OK"
        uids = found[0].split() if found and found[0] else []
        if not uids:
            return None
        uid = self.rng.choice(uids).decode()
        status, data = self.client.uid("FETCH", uid, "(BODY.PEEK[])")
        body = next(part[1] for part in data if isinstance(part, tuple))
        assert status == "OK"
        assert isinstance(body, bytes)
        return uid, digest(body)


# -- interrupting the copy --------------------------------------------------------------
class Counting(WatchedAppends):
    """The target access, calling `on_append` as each APPEND starts (`before`) or right
    after it returned, before its checkpoint."""

    def __init__(self, access: MailboxAccess, on_append: Callable[[], None], before: bool):
        super().__init__(access)
        self.on_append, self.before = on_append, before

    def starting(self, count: int) -> None:
        if self.before:
            for _ in range(count):
                self.on_append()

    def done(self, uids: Sequence[int]) -> None:
        if not self.before:
            for _ in uids:
                self.on_append()


@contextlib.asynccontextmanager
async def opened(
    platforms: Platforms, direction: Direction
) -> AsyncIterator[tuple[MailboxAccess, MailboxAccess]]:
    source = await platforms.access(*direction.source)
    target = await platforms.access(*direction.target)
    try:
        yield source, target
    finally:
        for access in (source, target):
            await access.aclose()


async def cancelled_copy(
    platforms: Platforms, direction: Direction, journal: Journal, workload: Workload, after: int
) -> str:
    """Run the copy as a task and cancel it once its `after`-th APPEND starts or ends."""
    appends = 0
    reached = asyncio.Event()
    before = after % 2 == 0

    def tick() -> None:
        nonlocal appends
        appends += 1
        workload.ticks += 1
        if appends >= after:
            reached.set()

    async with opened(platforms, direction) as (source, target):
        copy = asyncio.create_task(
            copy_bal(direction.source[1], source, Counting(target, tick, before), journal)  # type: ignore[arg-type]
        )
        waiter = asyncio.create_task(reached.wait())
        await asyncio.wait({copy, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if copy.done():
            copy.result()
            return f"completed before {after} appends"
        copy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await copy
    return f"cancelled at append {after} ({'during' if before else 'after'} it)"


def write_config(config: Path, platforms: Platforms, direction: Direction, after: int) -> None:
    """The child's configuration, secrets included: a 0600 file in the test's directory."""
    config.touch(mode=0o600)
    config.write_text(
        json.dumps(
            {
                "database_url": platforms.database_url,
                "kill_after": after,
                "source": {
                    "name": direction.source[0],
                    "bal": direction.source[1],
                    "settings": revealed(platforms.settings(direction.source[0])),
                },
                "target": {
                    "name": direction.target[0],
                    "bal": direction.target[1],
                    "settings": revealed(platforms.settings(direction.target[0])),
                },
            }
        )
    )


async def killed_copy(
    platforms: Platforms,
    direction: Direction,
    workload: Workload,
    after: int,
    config: Path,
) -> str:
    """Run the copy in a child process and SIGKILL it after its `after`-th APPEND, before
    the checkpoint of that APPEND's batch."""
    write_config(config, platforms, direction, after)
    errors = config.with_suffix(".stderr")
    # subprocess.Popen, read and waited for in threads: Python 3.11's asyncio child watcher
    # can lose the race to reap a child (CPython gh-86276) and report 255 for a clean exit
    with errors.open("wb") as stderr:
        child = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, str(HERE / "chaos_copy.py"), str(config)],
            stdin=subprocess.PIPE,  # never written: the child waits on it to be killed
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout's code, not the venv's
        )
    assert child.stdout is not None
    appends = 0
    outcome = f"completed before {after} appends"
    said: list[bytes] = []
    try:
        while line := await asyncio.to_thread(child.stdout.readline):
            said.append(line)
            if line.startswith(b"appended"):
                appends += 1
                workload.ticks += 1
                if appends >= after:
                    child.kill()
                    outcome = f"killed -9 after append {after}"
                    break
    finally:
        if child.poll() is None and not outcome.startswith("killed"):
            child.kill()  # the test failed while it ran: never leave it behind
        code = await asyncio.to_thread(child.wait)
        child.stdout.close()
        if child.stdin is not None:
            child.stdin.close()
    if outcome.startswith("completed"):
        assert code == 0, (code, said[-5:], errors.read_text(errors="replace"))
    else:
        assert code == -9
    return outcome


# -- the run ----------------------------------------------------------------------------
async def listing(access: MailboxAccess) -> dict[str, Counter[str]]:
    found: dict[str, Counter[str]] = {}
    for folder in await access.folders():
        found[folder.name] = Counter(m.digest for m in await access.messages(folder.name))
    return found


async def seed_source(platforms: Platforms, direction: Direction) -> None:
    async with opened(platforms, direction) as (source, _):
        existing = {f.name for f in await source.folders()}
        for name in ("Comptes rendus", ACCENTED, ARCHIVES, "Vide"):
            if name not in existing:
                await source.create_folder(name)
        when = dt.datetime(2025, 6, 1, 9, 0, tzinfo=dt.UTC)
        for number in range(direction.initial):
            flags = {"$MDNSent", "\\Seen"} if number % 3 else {"$Forwarded"}
            await source.append("INBOX", mail(f"initial {number}"), flags, when)
        for number in range(4):
            await source.append(ACCENTED, mail(f"échographie {number}"), {"\\Seen"}, when)


async def run_chaos_copy(
    platforms: Platforms, direction: Direction, seed: int, workdir: Path
) -> ChaosResult:
    """Seed the source, run the workload while the copy is interrupted twice by cancelling
    and twice by kill -9 (random points from `seed`), then copy to completion; asserts
    nothing itself beyond the interruptions' outcomes."""
    rng = random.Random(seed)
    print(f"chaos seed {seed} ({direction.source[0]} → {direction.target[0]})")
    await seed_source(platforms, direction)
    async with opened(platforms, direction) as (source, _):
        ledger = await listing(source)
    ledger.setdefault(ARCHIVES, Counter())
    settings = platforms.settings(direction.source[0])
    client = await asyncio.to_thread(imap_client, settings, direction.source[1])
    delimiter = "." if direction.source[0] == "dovecot" else "/"
    workload = Workload(
        client,
        _deliverer(platforms, direction),
        rng,
        ledger,
        direction.workload_ops,
        delimiter,
    )
    journal = await platforms.checkpoints.journal(
        direction.source[1], direction.source[0], direction.target[0]
    )
    result = ChaosResult(direction, seed, journal, ledger, {})
    running = asyncio.create_task(workload.run())
    try:
        for round_ in range(4):
            after = rng.randint(2, 12)
            workload.ticks += 3  # some work for the copy to find
            if round_ % 2 == 0:
                outcome = await cancelled_copy(platforms, direction, journal, workload, after)
            else:
                config = workdir / f"chaos-{round_}.json"
                outcome = await killed_copy(platforms, direction, workload, after, config)
            result.interruptions.append(outcome)
        workload.ticks += direction.workload_ops  # let it finish its steps
        await running
    finally:
        workload.stop = True
        await running
        await asyncio.to_thread(client.logout)
    print("workload", dict(workload.done), "interruptions", result.interruptions)
    async with opened(platforms, direction) as (source, target):
        result.reports.append(await copy_bal(direction.source[1], source, target, journal))
        result.mapping = dict(result.reports[-1].folders)
    return result


def _deliverer(platforms: Platforms, direction: Direction) -> Callable[[bytes], Awaitable[object]]:
    mock = platforms.stack.mock
    if direction.source[0] == "historic-imap":
        assert mock.historic is not None
        store = mock.historic.store
        return lambda raw: store.deliver_mime(direction.source[1], raw)
    return lambda raw: mock.platform.deliver(direction.source[1], raw)


@pytest.mark.parametrize(
    "direction",
    [MODERN_TO_DOVECOT, HISTORIC_TO_MODERN],
    ids=["modern-to-dovecot", "historic-to-modern"],
)
async def test_copy_under_chaos(tmp_path: Path, mock_settings: MockSettings, direction: Direction):
    seed = SEED or random.SystemRandom().randrange(1, 2**31)
    async with running_platforms(
        tmp_path, mock_settings, extra_users={MODERN_BAL: USER_PW}
    ) as platforms:
        if direction.target[0] == "modern":
            await platforms.stack.mock.platform.ensure_mailbox(
                direction.target[1], "899700000002", "Jean DUPONT"
            )
        result = await run_chaos_copy(platforms, direction, seed, tmp_path)
        assert any(not i.startswith("completed") for i in result.interruptions), result
        if result.interruptions[-1].startswith("killed"):
            # killed between APPENDs and their batch's checkpoint: found, not copied again
            assert result.reports[-1].adopted >= 1, result
        async with opened(platforms, direction) as (source, target):
            report = await verify_bal(direction.source[1], source, target, result.journal)
            assert report.identical, (seed, report.differences)
            on_source = await listing(source)
            on_target = await listing(target)
            again = await copy_bal(direction.source[1], source, target, result.journal)
        assert (again.appended, again.flag_changes, again.deleted) == (0, 0, 0), seed
        expected = {name: +counts for name, counts in result.ledger.items()}
        assert {name: +counts for name, counts in on_source.items()} == expected, seed
        for name, counts in expected.items():
            copied = on_target[result.mapping[name]]
            assert copied == counts, (seed, name)
            assert all(n == 1 for n in copied.values()), (seed, name, "duplicated")
        assert sum(sum(c.values()) for c in on_target.values()) == sum(
            sum(c.values()) for c in expected.values()
        ), seed
        await cut_over(platforms, direction, result, expected)


async def cut_over(
    platforms: Platforms,
    direction: Direction,
    result: ChaosResult,
    expected: dict[str, Counter[str]],
) -> None:
    """The second half: the gateway cuts the BAL over (its record names the source's
    backend), and the live BAL on the target holds exactly what the workload produced."""
    gateway = platforms.stack.gateway
    registry, migrations = gateway.delegations, gateway.migrations
    assert registry is not None
    assert migrations is not None
    (source_name, bal), (target_name, _) = direction.source, direction.target
    if await registry.mailbox(bal) is None:
        await registry.upsert_mailbox(bal, holder_idnat="899700000007", backend=source_name)
    else:
        await registry.move_mailbox(bal, source_name)
    [job] = await migrations.start([bal], target_name, "cutover", actor="local-admin")

    await until(lambda: job.state in ("done", "failed"), "the cut-over's end", bound=120)
    assert job.state == "done", (result.seed, job.error, job.differences)
    assert job.result["identical"] is True
    record = await registry.mailbox(bal)
    assert record is not None
    assert record.backend == target_name
    async with opened(platforms, direction) as (source, target):
        report = await verify_bal(bal, source, target)
        assert report.identical, (result.seed, report.differences)
        on_target = await listing(target)
    for name, counts in expected.items():
        assert on_target[result.mapping[name]] == counts, (result.seed, name)
    await migrations.aclose()  # its trailing sync: not this test's
