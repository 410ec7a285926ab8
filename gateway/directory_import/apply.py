"""An import from start to end: parse the file, compare it with the registry, and write
the changes in one transaction through the delegation service (unless a dry run, or the
file was refused). The command line and ``/admin/directory`` both call `import_directory`
and show its `Report`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from delegation.errors import DelegationError
from delegation.service import DelegationService
from gateway.directory_import.parse import Format, Limits, parse
from gateway.directory_import.plan import Change, Plan, plan
from gateway.directory_import.records import DirectoryFileError, Problem

log = logging.getLogger(__name__)

SOFTWARE = "lps-gateway directory import"


@dataclass
class Report:
    """What an import did (or would do): `refused` means nothing was written."""

    dry_run: bool
    refused: bool = False
    written: bool = False
    added: list[Change] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)
    removed: list[Change] = field(default_factory=list)
    pruned: bool = False
    prune_withheld: bool = False
    """`--prune` asked, but not applied: the file had refused lines."""
    errors: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def summary(self) -> str:
        removed = (
            f"removed {len(self.removed)}" if self.pruned else (f"would remove {len(self.removed)}")
        )
        return (
            f"directory import: added {len(self.added)}, changed {len(self.changed)}, "
            f"{removed}, skipped {len(self.skipped)}"
        )

    def as_json(self) -> dict[str, Any]:
        def problems(items: list[Problem]) -> list[dict[str, str]]:
            return [{"at": p.at, "message": p.message} for p in items]

        return {
            "dry_run": self.dry_run,
            "refused": self.refused,
            "written": self.written,
            "added": [c.as_json() for c in self.added],
            "changed": [c.as_json() for c in self.changed],
            "removed" if self.pruned else "would_remove": [c.as_json() for c in self.removed],
            "errors": problems(self.errors),
            "skipped": problems(self.skipped),
            "warnings": problems(self.warnings),
        }


def _report(found: Plan, *, dry_run: bool, prune: bool, skip_invalid: bool) -> Report:
    refused = bool(found.errors) and not skip_invalid
    return Report(
        prune_withheld=prune and not found.prune_applied and bool(found.removed),
        dry_run=dry_run,
        refused=refused,
        added=found.added,
        changed=found.changed,
        removed=found.removed,
        pruned=found.prune_applied and not refused and not dry_run,
        errors=found.errors if refused else [],
        skipped=[] if refused else found.errors,
        warnings=found.warnings,
    )


async def import_directory(
    service: DelegationService,
    data: bytes,
    format: Format,
    *,
    backends: Collection[str],
    actor: str,
    interface: str = "http",
    remote: str | None = None,
    dry_run: bool = False,
    prune: bool = False,
    skip_invalid: bool = False,
    limits: Limits | None = None,
) -> Report:
    """Import `data`; a file with refused lines writes nothing unless `skip_invalid`.

    Parsing and planning run in a worker thread: 200,000 lines take seconds of CPU, which
    on the event loop would stall every IMAP and SMTP session and /readyz of the node."""
    try:
        parsed = await asyncio.to_thread(parse, data, format, limits)
    except DirectoryFileError as exc:
        return Report(dry_run=dry_run, refused=True, errors=[Problem("file", str(exc))])
    state = await service.registry_state()
    found = await asyncio.to_thread(plan, parsed, state, backends, service.now(), prune=prune)
    report = _report(found, dry_run=dry_run, prune=prune, skip_invalid=skip_invalid)
    if report.refused or dry_run or found.empty:
        return report
    try:
        events = await service.load(
            found.load, actor=actor, origin=(interface, SOFTWARE, remote), summary=report.summary()
        )
    except DelegationError as exc:  # the registry changed under the import: nothing written
        return Report(dry_run=dry_run, refused=True, errors=[Problem("registry", str(exc))])
    report.written = True
    log.info(
        "directory.imported",
        extra={
            "added": len(report.added),
            "changed": len(report.changed),
            "removed": len(report.removed) if report.pruned else 0,
            "skipped": len(report.skipped),
            "events": events,
        },
    )
    return report
