"""What `/ui/admin/migrations` shows: one row per BAL the migrations know, already worded
for the administrator (French labels, human sizes, Paris times), so that the page and the
script that refreshes it every two seconds print the same thing from the same code."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.bal_migration.jobs import Migrations

MAX_ROWS = 500
"""BAL on the page at most: the running ones first, then the latest; `lps-gateway migrate
status --json` lists them all."""

STATES = {
    "planned": "prévue",
    "copying": "copie en cours",
    "copied": "copiée",
    "failed": "en échec",
    "verified": "vérifiée",
    "different": "différente",
    "cut over": "basculée (synchronisation de suivi)",
    "finished": "basculée, suivi clos",
    "rolled back": "retour arrière fait",
}
ACTIONS = {
    "copy": "copie",
    "verify": "vérification",
    "cutover": "bascule",
    "rollback": "retour arrière",
    "finish": "clôture",
}
JOB_STATES = {"queued": "en attente", "running": "en cours", "done": "succès", "failed": "échec"}
ACTIVE = ("queued", "running")
UNITS = ("Ko", "Mo", "Go", "To")

Local = Callable[[dt.datetime | None], str]


async def migrations_view(migrations: Migrations | None, local: Local) -> dict[str, Any]:
    """The page's rows (`rows`), the entries they come from (`migrations`, as
    `Migrations.status` gives them, without the lists of differences), and how many BAL
    were left out (`hidden`)."""
    if migrations is None:
        return {"available": False, "rows": [], "migrations": [], "hidden": 0}
    entries = await migrations.status()
    shown = _shown(entries)
    return {
        "available": True,
        "rows": [row(entry, local) for entry in shown],
        "migrations": [_without_differences(entry) for entry in shown],
        "hidden": len(entries) - len(shown),
    }


def row(entry: Mapping[str, Any], local: Local) -> dict[str, Any]:
    """One BAL: its copy (the one its latest job works on, or its latest) and that job."""
    job: Mapping[str, Any] | None = entry.get("job")
    copy = _copy_of(entry["copies"], job)
    active = job is not None and job["state"] in ACTIVE
    failed = job["error"] if job is not None and job["state"] == "failed" else None
    return {
        "bal": entry["bal"],
        "source": (job or copy or {}).get("source", ""),
        "target": (job or copy or {}).get("target", ""),
        "state": _label(STATES, copy["state"]) if copy else "—",
        "state_code": copy["state"] if copy else "",
        "job": _job_text(job) if job is not None else "",
        "active": active,
        "progress": _progress(job),
        "messages": str(copy["messages"]) if copy else "—",
        "bytes": human_bytes(copy["bytes"]) if copy else "—",
        "error": failed or (copy or {}).get("last_error") or "",
        "timings": _timings(copy, job, local),
    }


def human_bytes(count: int) -> str:
    """French units and decimal comma: 512 o, 12,3 Ko, 1,2 Mo."""
    if count < 1024:
        return f"{count} o"
    value = float(count)
    for unit in UNITS:
        value /= 1024
        if value < 1024 or unit == UNITS[-1]:
            break
    return f"{value:.1f} {unit}".replace(".", ",")


def duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _shown(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most MAX_ROWS entries, in the order of their BAL; when there are more, those
    with a job under way first, then the most recent."""
    if len(entries) <= MAX_ROWS:
        return entries

    def priority(entry: Mapping[str, Any]) -> tuple[bool, str]:
        job = entry.get("job")
        active = job is not None and job["state"] in ACTIVE
        return (active, _latest(entry))

    kept = sorted(entries, key=priority, reverse=True)[:MAX_ROWS]
    return sorted(kept, key=lambda entry: str(entry["bal"]))


def _latest(entry: Mapping[str, Any]) -> str:
    """The entry's latest time stamp (ISO text in UTC: they sort as times)."""
    times = [
        str(value)
        for record in [*entry["copies"], entry.get("job") or {}]
        for key in ("started_at", "finished_at", "verified_at", "queued_at")
        if (value := record.get(key))
    ]
    return max(times, default="")


def _without_differences(entry: Mapping[str, Any]) -> dict[str, Any]:
    job = entry.get("job")
    if job is None:
        return dict(entry)
    return {**entry, "job": {k: v for k, v in job.items() if k != "differences"}}


def _copy_of(
    copies: list[Mapping[str, Any]], job: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    if job is not None:
        for copy in copies:
            if (copy["source"], copy["target"]) == (job["source"], job["target"]):
                return copy
    if not copies:
        return None
    return max(copies, key=lambda c: str(c.get("started_at") or c.get("finished_at") or ""))


def _label(labels: Mapping[str, str], value: str) -> str:
    return labels.get(value, value)


def _job_text(job: Mapping[str, Any]) -> str:
    text = f"{_label(ACTIONS, job['action'])} : {_label(JOB_STATES, job['state'])}"
    result = job.get("result") or {}
    if job["state"] == "done" and "identical" in result:
        count = job.get("difference_count", 0)
        text += " (identique)" if result["identical"] else f" ({count} différence(s))"
    return text


def _progress(job: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A bar (`value` of `max`; no value while the plan is not known yet) for a job under
    way, the figures alone for a finished one."""
    if job is None or not job.get("progress"):
        return None
    now: Mapping[str, Any] = job["progress"]
    appended, planned = _count(now, "appended"), _count(now, "to_append")
    text = f"{appended}/{planned} messages, dossiers {_count(now, 'folders_done')}"
    text += f"/{_count(now, 'folders')}"
    running = job["state"] in ACTIVE
    if running and now.get("folder"):
        text += f" ({now['folder']})"
    known = running and planned > 0
    return {
        "bar": running,
        "value": min(appended, planned) if known else None,
        "max": planned if known else None,
        "text": text,
    }


def _count(progress: Mapping[str, Any], key: str) -> int:
    value = progress.get(key)
    return value if isinstance(value, int) else 0


def _timings(
    copy: Mapping[str, Any] | None, job: Mapping[str, Any] | None, local: Local
) -> list[str]:
    source = copy if copy is not None and copy.get("started_at") else job
    if source is None:
        return []
    started, finished = _when(source.get("started_at")), _when(source.get("finished_at"))
    verified = _when(copy.get("verified_at")) if copy is not None else None
    lines = []
    if started is not None and finished is not None and finished >= started:
        begun, ended = local(started), local(finished)
        day, _, hour = ended.partition(" ")
        lines.append(f"{begun} → {hour if begun.startswith(day + ' ') else ended}")
        lines.append(f"en {duration((finished - started).total_seconds())}")
    elif started is not None:
        lines.append(f"depuis {local(started)}")
    elif finished is not None:
        lines.append(f"fin {local(finished)}")
    if verified is not None:
        lines.append(f"vérifiée {local(verified)}")
    return lines


def _when(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
