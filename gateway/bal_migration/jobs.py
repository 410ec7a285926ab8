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
from gateway.bal_migration.checkpoint import Checkpoints, CopyRecord
from gateway.bal_migration.copy import CopyProgress, copy_bal, verify_bal
from gateway.bal_migration.plan import Difference
from gateway.settings import BackendSettings

log = logging.getLogger(__name__)

Action = Literal["copy", "verify"]
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
    ) -> None:
        self.checkpoints = checkpoints
        self._locate = locate
        self._backends = backends
        self._settings = settings
        self._audit = audit
        self._jobs: dict[str, Job] = {}  # the latest job of each BAL
        self._tasks: set[asyncio.Task[None]] = set()

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
            target = to if to is not None else await self._copied_to(bal, source)
            if target == source:
                raise MigrationRefused(f"{bal} is on {source} already")
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
                else:
                    await self._verify(job)
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
        journal = await self.checkpoints.journal(job.bal, job.source, job.target)
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
            "seconds": round(report.seconds, 3),
        }

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
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
