"""The migration jobs the running gateway carries out for `/admin/migrations`: copies and
verifications of BAL as background tasks, a bounded number at once per request, each
from the backend holding the BAL now (the registry's record, through the router) to the
one named. The gateway runs them because only it can hold a BAL's writes and end its
sessions (the cut-over, later); their checkpoints are `Checkpoints`' rows, what they are
doing now (progress, differences found) stays in memory for `status`."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.backends.base import Backend, MailboxAccess
from gateway.backends.provisioning import provision
from gateway.bal_migration.checkpoint import Checkpoints, CopyRecord, Journal
from gateway.bal_migration.copy import (
    CopyProgress,
    CopyReport,
    VerifyReport,
    copy_bal,
    uidvalidity_of,
    verify_bal,
)
from gateway.bal_migration.gate import BalGate
from gateway.bal_migration.hook import run_hook
from gateway.bal_migration.plan import Difference
from gateway.runtime.lifecycle import cancelled
from gateway.settings import BackendSettings, MigrationSettings

log = logging.getLogger(__name__)

Action = Literal["copy", "verify", "cutover", "rollback", "finish"]
ACTIONS: tuple[Action, ...] = ("copy", "verify", "cutover", "rollback", "finish")
MAX_DIFFERENCES = 100  # kept per verification for status (the count is kept whole)
ERROR_LENGTH = 300

Locate = Callable[[str], Awaitable[str | None]]
"""The backend holding a BAL now (None: the registry does not know it)."""
Audit = Callable[[str, str, str, str], Awaitable[None]]
"""(actor, BAL, result, detail): one audit event of a migration step."""


class MigrationRefused(Exception):
    """A request the gateway will not start (unknown backend or BAL, nothing to verify)."""


class MigrationBusy(MigrationRefused):
    """A job of that BAL is queued or running already."""


class MigrationFailed(Exception):
    """A step found the BAL not ready to move (the final verification differs)."""


Carry = Callable[[str, Journal, MailboxAccess, MailboxAccess], Awaitable[dict[str, int]]]
"""(BAL, journal, source, target): what else follows the BAL at its move (the historic
ids the legacy front serves), called while its writes are held, before the switch; its
figures go in the job's result."""


@dataclass
class Moves:
    """What cut-overs and rollbacks need from the gateway besides backends: the node's
    gate, the registry's record (`move`, which also forgets remembered decisions), the
    routing pins, the settings and what else follows a BAL."""

    gate: BalGate
    move: Callable[[str, str], Awaitable[None]]
    pinned: Callable[[str], str | None]
    settings: MigrationSettings = field(default_factory=MigrationSettings)
    carry: Carry | None = None
    placements: Callable[[], Awaitable[list[tuple[str, str]]]] | None = None
    """Every BAL with the backend holding it now (for waves: `--all-on`)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def difference_json(difference: Difference) -> dict[str, Any]:
    def side(held: Sequence[tuple[frozenset[str], dt.datetime]]) -> list[dict[str, Any]]:
        return [{"flags": sorted(flags), "internal_date": date.isoformat()} for flags, date in held]

    return {
        "kind": difference.kind,
        "folder": difference.folder,
        "target_folder": difference.target_folder,
        "digest": difference.digest,
        "source": side(difference.source),
        "target": side(difference.target),
    }


def record_json(record: CopyRecord) -> dict[str, Any]:
    return {
        "source": record.source,
        "target": record.target,
        "state": record.state,
        "messages": record.messages,
        "bytes": record.bytes,
        "flag_changes": record.flag_changes,
        "deletions": record.deletions,
        "last_error": record.last_error,
        "started_at": _time(record.started_at),
        "finished_at": _time(record.finished_at),
        "verified_at": _time(record.verified_at),
    }


@dataclass
class Job:
    """One copy or verification of one BAL, as `status` shows it."""

    id: str
    bal: str
    action: Action
    source: str
    target: str
    actor: str
    state: str = "queued"  # queued, running, done, failed
    progress: CopyProgress | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    differences: list[dict[str, Any]] = field(default_factory=list)
    difference_count: int = 0
    queued_at: dt.datetime = field(default_factory=_now)
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def as_json(self) -> dict[str, Any]:
        progress = dataclasses.asdict(self.progress) if self.progress is not None else None
        return {
            "id": self.id,
            "bal": self.bal,
            "action": self.action,
            "source": self.source,
            "target": self.target,
            "state": self.state,
            "progress": progress,
            "result": self.result,
            "error": self.error,
            "differences": self.differences,
            "difference_count": self.difference_count,
            "queued_at": _time(self.queued_at),
            "started_at": _time(self.started_at),
            "finished_at": _time(self.finished_at),
        }


class Migrations:
    """The gateway's migration jobs."""

    def __init__(
        self,
        checkpoints: Checkpoints,
        *,
        locate: Locate,
        backends: Callable[[], Mapping[str, Backend]],
        settings: Mapping[str, BackendSettings],
        audit: Audit,
        moves: Moves | None = None,
    ) -> None:
        self.checkpoints = checkpoints
        self._locate = locate
        self._backends = backends
        self._settings = settings
        self._audit = audit
        self._moves = moves
        self._jobs: dict[str, Job] = {}  # the latest job of each BAL
        self._tasks: set[asyncio.Task[None]] = set()
        self._trailing: dict[str, asyncio.Task[None]] = {}  # BAL -> its trailing sync
        self._planning = asyncio.Lock()  # one request plans at a time: no BAL started twice
        self.trailing_passes = 0  # done since start, for tests and operators

    async def start(
        self,
        bals: Sequence[str],
        to: str | None,
        action: Action,
        *,
        actor: str,
        jobs: int = 1,
        max_rate: float | None = None,
    ) -> list[Job]:
        """Queue `action` for each BAL (canonical addresses), `jobs` at a time; refuse the
        whole request (nothing started) when one of them cannot be done."""
        async with self._planning:
            return await self._start(bals, to, action, actor=actor, jobs=jobs, max_rate=max_rate)

    async def _start(
        self,
        bals: Sequence[str],
        to: str | None,
        action: Action,
        *,
        actor: str,
        jobs: int,
        max_rate: float | None,
    ) -> list[Job]:
        backends = self._backends()
        if to is not None and to not in backends:
            known = ", ".join(sorted(backends))
            raise MigrationRefused(f"unknown backend {to!r:.80} (this gateway has: {known})")
        planned: list[Job] = []
        for bal in dict.fromkeys(bals):
            current = self._jobs.get(bal)
            if current is not None and current.active:
                raise MigrationBusy(f"{bal}: a {current.action} ({current.id}) is under way")
            source = await self._locate(bal)
            if source is None:
                raise MigrationRefused(f"{bal}: no such BAL in the registry")
            if action in ("rollback", "finish"):
                target = await self._cut_over_from(bal, source, action)
            else:
                target = to if to is not None else await self._copied_to(bal, source)
            if target == source:
                raise MigrationRefused(f"{bal} is on {source} already")
            if action in ("copy", "cutover"):
                await self._may_leave(bal, source, target, action)
            planned.append(Job(uuid.uuid4().hex[:12], bal, action, source, target, actor))
        gate = asyncio.Semaphore(max(1, jobs))
        for job in planned:
            self._jobs[job.bal] = job
            task = asyncio.create_task(self._run(job, gate, max_rate), name=f"migrate-{job.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return planned

    async def _copied_to(self, bal: str, source: str) -> str:
        """The target of the latest copy of `bal` from `source` (what `verify` compares)."""
        records = [r for r in await self.checkpoints.records(bal) if r.source == source]
        if not records:
            raise MigrationRefused(f"{bal}: never copied from {source}; say where with `to`")
        latest = max(records, key=lambda r: r.started_at or dt.datetime.min.replace(tzinfo=dt.UTC))
        return latest.target

    async def on_backend(self, name: str, limit: int) -> list[str]:
        """The BAL on backend `name` now, by address, at most `limit` (a wave), leaving out
        those a job is busy with and those cut over to it already."""
        if name not in self._backends():
            raise MigrationRefused(f"unknown backend {name!r:.80}")
        if self._moves is None or self._moves.placements is None:
            raise MigrationRefused("this gateway cannot list BAL by backend")
        moved = {r.bal for r in await self.checkpoints.records() if r.state == "cut over"}
        found: list[str] = []
        for bal, where in await self._moves.placements():
            job = self._jobs.get(bal)
            if where != name or bal in moved or (job is not None and job.active):
                continue
            found.append(bal)
            if len(found) >= limit:
                break
        return found

    async def _cut_over_from(self, bal: str, here: str, action: Action) -> str:
        """For rollback and finish: the backend the BAL was cut over from to `here`."""
        for record in await self.checkpoints.records(bal):
            if record.target != here:
                continue
            if record.state == "cut over" or (action == "rollback" and record.state == "finished"):
                return record.source
        raise MigrationRefused(f"{bal}: no cut-over to {here} to {action}")

    async def _may_leave(self, bal: str, source: str, target: str, action: Action) -> None:
        """Refuse a copy or cut-over the BAL's state forbids: a pin in the routing, no
        copy to cut over from, a trailing sync from `target` still running."""
        moves = self._moves
        if action == "cutover":
            if moves is None:
                raise MigrationRefused("this gateway cannot cut BAL over (no gate)")
            pin = moves.pinned(bal)
            if pin is not None:
                raise MigrationRefused(
                    f"{bal} is pinned to {pin} in [routing.mailboxes]: remove the entry first"
                )
        for record in await self.checkpoints.records(bal):
            if (record.source, record.target, record.state) == (target, source, "cut over"):
                raise MigrationRefused(
                    f"{bal} came from {target} by a cut-over whose trailing sync runs: "
                    "`rollback` to go back, or `finish` first"
                )
            if action == "cutover" and record.state == "cut over":
                raise MigrationRefused(
                    f"{bal}: the trailing sync of its cut-over from {record.source} runs: "
                    "`finish` it first"
                )
        if action == "cutover" and not any(
            r.source == source and r.target == target and r.state != "planned"
            for r in await self.checkpoints.records(bal)
        ):
            raise MigrationRefused(f"{bal}: copy it to {target} first (`migrate copy`)")

    async def _run(self, job: Job, gate: asyncio.Semaphore, max_rate: float | None) -> None:
        async with gate:
            job.state, job.started_at = "running", _now()
            detail = f"migrate {job.action}"
            await self._audit(
                job.actor, job.bal, "ok", f"{detail} started {job.source}->{job.target}"
            )
            try:
                if job.action == "copy":
                    await self._copy(job, max_rate)
                elif job.action == "verify":
                    await self._verify(job)
                elif job.action == "cutover":
                    await self._cutover(job, max_rate)
                elif job.action == "rollback":
                    await self._rollback(job, max_rate)
                else:
                    await self._finish(job)
            except Exception as failure:  # the job's, reported; the gateway goes on
                job.state = "failed"
                job.error = f"{type(failure).__name__}: {failure}"[:ERROR_LENGTH]
                log.warning(
                    "migration.failed",
                    extra={"bal": job.bal, "job": job.id, "error": job.error},
                )
                await self._audit(job.actor, job.bal, "failed", f"{detail} failed")
            else:
                job.state = "done"
                await self._audit(job.actor, job.bal, "ok", f"{detail} done")
            finally:
                job.finished_at = _now()

    async def _accesses(self, job: Job) -> tuple[MailboxAccess, MailboxAccess]:
        backends = self._backends()
        source = await backends[job.source].tools(job.bal)
        try:
            target = await backends[job.target].tools(job.bal)
        except BaseException:
            await source.aclose()
            raise
        return source, target

    async def _copy(self, job: Job, max_rate: float | None) -> None:
        journal = await self._journal_for(job)
        try:
            provisioned = await provision(self._settings[job.target], job.bal)
        except Exception as failure:
            await journal.set_state("failed", error=f"provisioning: {failure}")
            raise
        job.result["provisioned"] = provisioned.created
        source, target = await self._accesses(job)

        def progress(now: CopyProgress) -> None:
            job.progress = dataclasses.replace(now)

        try:
            report = await copy_bal(
                job.bal, source, target, journal, progress=progress, max_rate=max_rate
            )
        finally:
            await source.aclose()
            await target.aclose()
        job.result |= {
            "appended": report.appended,
            "adopted": report.adopted,
            "flag_changes": report.flag_changes,
            "deleted": report.deleted,
            "bytes": report.bytes,
            "created": report.created,
            "uids_kept": report.uids_kept,
            "seconds": round(report.seconds, 3),
        }

    async def _journal_for(self, job: Job) -> Journal:
        """The journal of `job`'s direction; after a rollback, mirrored first from the
        way back (whose copies it must know, or it would copy them again)."""
        journal = await self.checkpoints.journal(job.bal, job.source, job.target)
        record = await journal.record()
        if record.state != "rolled back":
            return journal
        back = await self.checkpoints.journal(job.bal, job.target, job.source)
        source = await self._backends()[job.source].tools(job.bal)
        try:
            validity = await _validities(source)
        finally:
            await source.aclose()
        await journal.seed_from(back, validity)
        await journal.set_state("planned")
        return journal

    def _report(self, job: Job, report: CopyReport, key: str = "") -> None:
        figures = {
            "appended": report.appended,
            "adopted": report.adopted,
            "flag_changes": report.flag_changes,
            "deleted": report.deleted,
            "bytes": report.bytes,
            "seconds": round(report.seconds, 3),
        }
        if key:
            job.result[key] = figures
        else:
            job.result |= figures | {"created": report.created}

    def _verified(self, job: Job, report: VerifyReport) -> None:
        job.difference_count = len(report.differences)
        job.differences = [difference_json(d) for d in report.differences[:MAX_DIFFERENCES]]
        job.result |= {"identical": report.identical, "messages": report.messages}

    async def _cutover(
        self,
        job: Job,
        max_rate: float | None,
        journal: Journal | None = None,
        switched: Journal | None = None,
    ) -> None:
        """A delta, then under a hold of the BAL's changes a last delta and a verification,
        the registry's record switched and the old sessions ended; then the MTA hook and
        the trailing sync from the old platform."""
        moves = self._moves
        assert moves is not None
        journal = journal or await self._journal_for(job)
        await provision(self._settings[job.target], job.bal)
        source, target = await self._accesses(job)

        def progress(now: CopyProgress) -> None:
            job.progress = dataclasses.replace(now)

        try:
            self._report(
                job,
                await copy_bal(
                    job.bal, source, target, journal, progress=progress, max_rate=max_rate
                ),
                "delta",
            )
            loop = asyncio.get_running_loop()
            async with moves.gate.hold(job.bal) as held:
                started = loop.time()
                self._report(job, await copy_bal(job.bal, source, target, journal), "final_delta")
                check = await verify_bal(job.bal, source, target, journal)
                self._verified(job, check)
                if not check.identical:
                    raise MigrationFailed(
                        f"the final verification found {len(check.differences)} difference(s): "
                        "nothing switched"
                    )
                if moves.carry is not None:  # under the target's name: unread until the move
                    try:
                        carried = await moves.carry(job.bal, journal, source, target)
                    except Exception as failure:
                        log.exception("migration.carry_failed", extra={"bal": job.bal})
                        raise MigrationFailed(
                            "the historic ids could not follow the BAL "
                            f"({type(failure).__name__}: {str(failure)[:200]}): nothing switched"
                        ) from failure
                    job.result["historic_ids"] = carried
                if (broken := held.broken()) is not None:  # a change may have gone by
                    raise MigrationFailed(f"the hold did not last ({broken}): nothing switched")
                await moves.move(job.bal, job.target)
                job.result["sessions_ended"] = held.moved()
                await journal.set_state("cut over")
                if switched is not None:  # a rollback: the way there is over
                    await switched.set_state("rolled back")
                job.result["hold_seconds"] = round(loop.time() - started, 3)
        finally:
            await source.aclose()
            await target.aclose()
        self._trail(job.bal, job.source, job.target)
        try:
            await self._after_move(job)
        except Exception as failure:  # the BAL moved: the hook's failure is reported
            log.exception("migration.hook_failed", extra={"bal": job.bal})
            job.result["mta_hook"] = f"failed: {type(failure).__name__}"

    async def _after_move(self, job: Job) -> None:
        moves = self._moves
        assert moves is not None
        hook = await run_hook(
            moves.settings.mta_hook,
            bal=job.bal,
            source=job.source,
            target=job.target,
            seconds=moves.settings.mta_hook_timeout,
        )
        if hook is not None:
            job.result["mta_hook"] = hook
            await self._audit(
                job.actor, job.bal, "ok" if hook == "ok" else "failed", f"mta hook {hook}"[:200]
            )

    async def _rollback(self, job: Job, max_rate: float | None) -> None:
        """Back to where the BAL was cut over from: the trailing sync's last pass, then the
        way back's journal mirrored from the way there (so only what arrived or changed
        on the new platform since is copied back), then a cut-over the other way."""
        await self._stop_trailing(job.bal)
        there = await self.checkpoints.journal(job.bal, job.target, job.source)
        trailing = (await there.record()).state == "cut over"
        try:
            if trailing:
                await self._trail_once(job.bal, job.target, job.source)
            back = await self.checkpoints.journal(job.bal, job.source, job.target)
            if _older(await back.record(), await there.record()):
                # first attempt since this cut-over (a retry keeps what the last one copied)
                source = await self._backends()[job.source].tools(job.bal)
                try:
                    validity = await _validities(source)
                finally:
                    await source.aclose()
                job.result["mirrored"] = await back.seed_from(there, validity)
            await self._cutover(job, max_rate, back, switched=there)
        except Exception:  # (stopping, the trailing sync resumes at the next start)
            if trailing and (await there.record()).state == "cut over":
                self._trail(job.bal, job.target, job.source)  # still there: it goes on
            raise

    async def _finish(self, job: Job) -> None:
        """Close the trailing sync, after a last pass."""
        await self._stop_trailing(job.bal)
        journal = await self.checkpoints.journal(job.bal, job.target, job.source)
        try:
            report = await self._trail_once(job.bal, job.target, job.source)
        except Exception:
            self._trail(job.bal, job.target, job.source)  # not closed: it goes on
            raise
        if report is not None:
            self._report(job, report, "last_pass")
        await journal.set_state("finished")

    # -- the trailing sync -------------------------------------------------------------------
    def _trail(self, bal: str, source: str, target: str) -> None:
        if bal in self._trailing:
            return
        task = asyncio.create_task(self._trail_forever(bal, source, target), name=f"trail-{bal}")
        self._trailing[bal] = task
        task.add_done_callback(
            lambda done: self._trailing.pop(bal) if self._trailing.get(bal) is done else None
        )

    async def _trail_forever(self, bal: str, source: str, target: str) -> None:
        interval = self._moves.settings.trailing_interval if self._moves else 60.0
        while True:
            await asyncio.sleep(interval)
            try:
                await self._trail_once(bal, source, target)
            except Exception as failure:
                log.warning(
                    "migration.trailing_failed",
                    extra={"bal": bal, "error": f"{type(failure).__name__}: {failure}"[:300]},
                )

    async def _trail_once(self, bal: str, source: str, target: str) -> CopyReport | None:
        """Copy to `target` what arrived on `source` since the cut-over."""
        backends = self._backends()
        if source not in backends or target not in backends:
            return None
        journal = await self.checkpoints.journal(bal, source, target)
        old = await backends[source].tools(bal)
        try:
            new = await backends[target].tools(bal)
            try:
                report = await copy_bal(bal, old, new, journal, trailing=True)
            finally:
                await new.aclose()
        finally:
            await old.aclose()
        self.trailing_passes += 1
        if report.appended:
            await self._audit(
                "gateway", bal, "ok", f"migrate trailing {source}->{target} {report.appended} new"
            )
        return report

    @property
    def trailing(self) -> list[str]:
        """The BAL whose trailing sync runs (on this node)."""
        return sorted(self._trailing)

    async def trail_now(self, bal: str) -> CopyReport | None:
        """One pass of `bal`'s trailing sync now (operators, tests)."""
        for record in await self.checkpoints.records(bal):
            if record.state == "cut over":
                return await self._trail_once(record.bal, record.source, record.target)
        return None

    async def _stop_trailing(self, bal: str) -> None:
        await cancelled(self._trailing.pop(bal, None))

    async def resume(self) -> int:
        """After a restart: the trailing syncs of the cut-overs not finished."""
        taken = 0
        for record in await self.checkpoints.in_state("cut over"):
            try:
                here = await self._locate(record.bal)
            except MigrationRefused:
                here = None
            if here in (None, record.target):  # a registry that cannot say: trail anyway
                self._trail(record.bal, record.source, record.target)
                taken += 1
        return taken

    async def _verify(self, job: Job) -> None:
        journal = await self.checkpoints.journal(job.bal, job.source, job.target)
        source, target = await self._accesses(job)
        try:
            report = await verify_bal(job.bal, source, target, journal)
        finally:
            await source.aclose()
            await target.aclose()
        job.difference_count = len(report.differences)
        job.differences = [difference_json(d) for d in report.differences[:MAX_DIFFERENCES]]
        job.result = {"identical": report.identical, "messages": report.messages}

    async def status(self, bal: str | None = None) -> list[dict[str, Any]]:
        """Per BAL: its copy records and its latest job (this gateway's, since it started)."""
        records = await self.checkpoints.records(bal)
        by_bal: dict[str, dict[str, Any]] = {}
        for record in records:
            entry = by_bal.setdefault(record.bal, {"bal": record.bal, "copies": [], "job": None})
            entry["copies"].append(record_json(record))
        for job in self._jobs.values():
            if bal is not None and job.bal != bal:
                continue
            entry = by_bal.setdefault(job.bal, {"bal": job.bal, "copies": [], "job": None})
            entry["job"] = job.as_json()
        return [by_bal[key] for key in sorted(by_bal)]

    async def aclose(self) -> None:
        """Stop the jobs (the gateway stops): their checkpoints let the next run resume."""
        tasks = list(self._tasks) + list(self._trailing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _validities(access: MailboxAccess) -> dict[str, int]:
    """Each folder's UIDVALIDITY on `access` (what a mirrored journal is keyed by)."""
    return {f.name: await uidvalidity_of(access, f.name) for f in await access.folders()}


def _older(back: CopyRecord, there: CopyRecord) -> bool:
    """Whether the way back's journal has not run since the way there last did (its
    cut-over): a rollback's first attempt, to be mirrored anew."""
    if back.started_at is None:
        return True
    return there.started_at is not None and back.started_at < there.started_at
