"""`lps-gateway directory import`: the import run against the database the gateway's
settings name, and its report printed one change a line."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from delegation.db import create_engine, is_postgresql, migrate, schema_revision
from delegation.events import bus_for_url
from delegation.service import DelegationService
from gateway.api.admin import LOCAL_ADMIN
from gateway.directory_import.apply import Report, import_directory
from gateway.directory_import.parse import Format, Limits
from gateway.settings import Settings
from gateway.usage.cli import placement_of


def format_of(path: Path, given: str | None) -> Format:
    if given == "json" or (given is None and path.suffix.lower() == ".json"):
        return "json"
    return "csv"


def read_capped(path: Path, limits: Limits) -> bytes:
    """At most one byte past the cap: a larger file is refused without being read whole."""
    with path.open("rb") as file:
        return file.read(limits.max_bytes + 1)


async def run_import(
    settings: Settings,
    path: Path,
    format: Format,
    *,
    dry_run: bool,
    prune: bool,
    skip_invalid: bool,
    as_json: bool = False,
) -> int:
    limits = Limits()
    data = read_capped(path, limits)
    url = settings.database()
    if dry_run:
        found, heads = await schema_revision(url)
        if found != heads:
            Console(stderr=True, soft_wrap=True, highlight=False).print(
                f"dry run refused: the database's schema is {', '.join(sorted(found)) or 'absent'}"
                f", this build's is {', '.join(sorted(heads))} (a dry run migrates nothing: "
                "run it with the build the gateway runs)",
                markup=False,
            )
            return 1
    else:
        await migrate(url)
    engine = create_engine(url)
    bus = bus_for_url(url)
    try:
        service = DelegationService(engine, bus=bus)
        report = await import_directory(
            service,
            data,
            format,
            backends=placement_of(settings)[0].names,
            actor=LOCAL_ADMIN,
            dry_run=dry_run,
            prune=prune,
            skip_invalid=skip_invalid,
            limits=limits,
        )
    finally:
        await bus.close()
        await engine.dispose()
    console = Console(soft_wrap=True, highlight=False)
    errors = Console(stderr=True, soft_wrap=True, highlight=False)
    if as_json:
        console.print_json(json.dumps(report.as_json()))
    else:
        print_report(console, errors, report)
    if report.written and report.pruned and not is_postgresql(url):
        errors.print(
            "note: on SQLite a running gateway does not hear this command's revocations: "
            "its open sessions on what was removed go on until they end (POST the file to "
            "/admin/directory instead to end them at once)",
            markup=False,
        )
    return 1 if report.refused else 0


def print_report(out: Console, err: Console, report: Report) -> None:
    """One line per change, then a summary; refusals, skips and warnings on stderr."""
    removed = "removed" if report.pruned else "would remove"
    for verb, changes in (
        ("added", report.added),
        ("changed", report.changed),
        (removed, report.removed),
    ):
        for change in changes:
            line = f"{verb:<13}{change.kind:<11}{change.key}"
            out.print(f"{line}  {change.detail}" if change.detail else line, markup=False)
    for verb, problems in (
        ("refused", report.errors),
        ("skipped", report.skipped),
        ("warning", report.warnings),
    ):
        for problem in problems:
            err.print(f"{verb}: {problem}", markup=False)
    if report.refused:
        err.print("nothing imported: the file was refused (--skip-invalid leaves bad lines out)")
        return
    summary = report.summary().removeprefix("directory import: ")
    if report.dry_run:
        out.print(f"dry run, nothing written: {summary}", markup=False)
    elif not report.written:
        out.print(f"no change: {summary}", markup=False)
    else:
        out.print(f"imported: {summary}", markup=False)
    if report.prune_withheld:
        out.print("(--prune not applied: the file had refused lines)", markup=False)
    elif report.removed and not report.pruned:
        out.print("(nothing is removed without --prune)", markup=False)
