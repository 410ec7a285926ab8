"""`lps-gateway migrate copy|verify|cutover|rollback|finish|status`: start jobs in the
running gateway through `/admin/migrations`, then follow them until they end (a progress
bar per BAL on a terminal, one JSON summary with --json). Exit 0 when every BAL succeeded
(verify: is identical), 1 when some did not (listed), 2 on a usage error or when no
gateway answers."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from gateway.admin_client import AdminClient, AdminClientError

POLL = 0.5  # seconds between two looks at the jobs
ENDED = ("done", "failed")


class UsageError(Exception):
    """A command line that cannot be run (exit 2)."""


def read_bals(bals: Sequence[str], from_file: Path | None) -> list[str]:
    """The BAL named, then those of `from_file` (one a line; blank lines and # comments
    skipped), each once, in order."""
    found = list(bals)
    if from_file is not None:
        try:
            text = from_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {from_file}: {exc.strerror}") from None
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                found.append(line)
    if not found:
        raise UsageError("name at least one BAL (or --from-file FILE)")
    return list(dict.fromkeys(b.strip().lower() for b in found))


def _jobs_of(client: AdminClient, ids: set[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for entry in client.get("/migrations")["migrations"]:
        job = entry.get("job")
        if job is not None and job["id"] in ids:
            found[job["id"]] = {**job, "copies": entry["copies"]}
    return found


def follow(
    client: AdminClient, started: list[dict[str, Any]], console: Console | None
) -> list[dict[str, Any]]:
    """Poll the jobs until each has ended; progress bars on `console` when it is a terminal."""
    ids = {job["id"] for job in started}
    progress: Progress | None = None
    bars: dict[str, TaskID] = {}
    if console is not None and console.is_terminal:
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} messages"),
            TextColumn("{task.fields[bytes]} bytes"),
            TextColumn("{task.fields[state]}"),
            console=console,
        )
        progress.start()
        for job in started:
            bars[job["id"]] = progress.add_task(job["bal"], total=1, state="queued", bytes=0)
    try:
        while True:
            jobs = _jobs_of(client, ids)
            if progress is not None:
                for job_id, job in jobs.items():
                    now = job.get("progress") or {}
                    progress.update(
                        bars[job_id],
                        total=max(now.get("to_append", 0), 1),
                        completed=now.get("appended", 0),
                        bytes=now.get("bytes", 0),
                        state=job["state"] + (f" {now['folder']}" if now.get("folder") else ""),
                    )
            if len(jobs) == len(ids) and all(j["state"] in ENDED for j in jobs.values()):
                return [jobs[j["id"]] for j in started]
            if lost := ids - jobs.keys():
                raise AdminClientError(
                    f"the gateway no longer knows job(s) {', '.join(sorted(lost))} (restarted?)"
                )
            time.sleep(POLL)
    finally:
        if progress is not None:
            progress.stop()


def start(client: AdminClient, action: str, **options: Any) -> list[dict[str, Any]]:
    body = {"action": action, **{k: v for k, v in options.items() if v is not None}}
    jobs: list[dict[str, Any]] = client.post("/migrations", json=body)["jobs"]
    return jobs


def print_copies(console: Console, errors: Console, ended: list[dict[str, Any]]) -> int:
    failed = [j for j in ended if j["state"] != "done"]
    for job in ended:
        if job["state"] == "done":
            result = job["result"]
            console.print(
                f"{job['bal']}: copied {job['source']} -> {job['target']}: "
                f"{result.get('appended', 0)} appended, {result.get('flag_changes', 0)} flag "
                f"changes, {result.get('deleted', 0)} deleted, {result.get('bytes', 0)} bytes "
                f"in {result.get('seconds', 0)} s",
                highlight=False,
                markup=False,
            )
    for job in failed:
        errors.print(f"{job['bal']}: FAILED: {job['error']}", highlight=False, markup=False)
    if failed:
        errors.print(f"{len(failed)} of {len(ended)} BAL failed", highlight=False)
    return 1 if failed else 0


def print_moves(console: Console, errors: Console, ended: list[dict[str, Any]]) -> int:
    """What each cut-over, rollback or finish did."""
    failed = [j for j in ended if j["state"] != "done"]
    for job in ended:
        if job["state"] != "done":
            continue
        result = job["result"]
        if job["action"] == "finish":
            last = result.get("last_pass", {})
            text = f"trailing sync closed ({last.get('appended', 0)} copied in its last pass)"
        else:
            final = result.get("final_delta", {})
            text = (
                f"now on {job['target']} (from {job['source']}): "
                f"{result.get('messages', 0)} messages verified, writes held "
                f"{result.get('hold_seconds', 0)} s, last delta {final.get('appended', 0)} "
                f"appended, {result.get('sessions_ended', 0)} session(s) ended"
            )
            if result.get("mta_hook") not in (None, "ok"):
                text += f"; MTA hook: {result['mta_hook']}"
        console.print(f"{job['bal']}: {text}", highlight=False, markup=False)
    for job in failed:
        errors.print(f"{job['bal']}: FAILED: {job['error']}", highlight=False, markup=False)
        for difference in job.get("differences", [])[:10]:
            errors.print(
                f"  {difference['kind']:<8} {difference['folder'] or '(none)'} -> "
                f"{difference['target_folder']} {difference['digest'][:16]}",
                highlight=False,
                markup=False,
            )
    if failed:
        errors.print(f"{len(failed)} of {len(ended)} BAL failed", highlight=False)
    return 1 if failed else 0


def print_verifications(console: Console, errors: Console, ended: list[dict[str, Any]]) -> int:
    bad = 0
    for job in ended:
        if job["state"] != "done":
            bad += 1
            errors.print(f"{job['bal']}: FAILED: {job['error']}", highlight=False, markup=False)
            continue
        where = f"{job['source']} -> {job['target']}"
        if job["result"].get("identical"):
            console.print(
                f"{job['bal']}: identical ({where}, {job['result'].get('messages', 0)} messages)",
                highlight=False,
                markup=False,
            )
            continue
        bad += 1
        console.print(
            f"{job['bal']}: {job['difference_count']} differences ({where})",
            highlight=False,
            markup=False,
        )
        for difference in job["differences"]:
            folder = difference["folder"] or "(none)"
            console.print(
                f"  {difference['kind']:<8} {folder} -> {difference['target_folder']} "
                f"{difference['digest'][:16]}: source {len(difference['source'])}, "
                f"target {len(difference['target'])}",
                highlight=False,
                markup=False,
            )
        if job["difference_count"] > len(job["differences"]):
            console.print(f"  ... and {job['difference_count'] - len(job['differences'])} more")
    return 1 if bad else 0


def print_status(console: Console, migrations: list[dict[str, Any]]) -> None:
    if not migrations:
        console.print("no migration yet")
        return
    for entry in migrations:
        console.print(entry["bal"], highlight=False, markup=False)
        for copy in entry["copies"]:
            error = f"  last error: {copy['last_error']}" if copy["last_error"] else ""
            console.print(
                f"  {copy['source']} -> {copy['target']}: {copy['state']}, "
                f"{copy['messages']} messages, {copy['bytes']} bytes, "
                f"started {copy['started_at'] or '-'}, ended {copy['finished_at'] or '-'}, "
                f"verified {copy['verified_at'] or '-'}{error}",
                highlight=False,
                markup=False,
            )
        job = entry.get("job")
        if job is not None and job["state"] not in ENDED:
            console.print(f"  now: {job['action']} {job['state']}", highlight=False)


def dump(console: Console, data: Any) -> None:
    console.print(json.dumps(data, indent=2, ensure_ascii=False), highlight=False, markup=False)
