"""How the migrations page words `Migrations.status` entries, on entries alone: French
labels where known and the raw value otherwise (actions and states still to come), bars
for running jobs only, human sizes, and which BAL stay on the page when there are too
many."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from gateway.web import migrations as view
from gateway.web.migrations import human_bytes, row
from gateway.web.routes import _local

BAL = "jean.dupont@medecin.mssante.fr"
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def copy(**changes: Any) -> dict[str, Any]:
    return {
        "source": "historic",
        "target": "modern",
        "state": "copied",
        "messages": 12,
        "bytes": 3 * 1024 * 1024 + 200_000,
        "flag_changes": 0,
        "deletions": 0,
        "last_error": None,
        "started_at": T0.isoformat(),
        "finished_at": (T0 + dt.timedelta(seconds=75)).isoformat(),
        "verified_at": None,
        **changes,
    }


def job(**changes: Any) -> dict[str, Any]:
    return {
        "id": "abc",
        "bal": BAL,
        "action": "copy",
        "source": "historic",
        "target": "modern",
        "state": "running",
        "progress": {
            "bal": BAL,
            "folder": "Résultats",
            "folders_done": 1,
            "folders": 3,
            "appended": 40,
            "to_append": 100,
            "bytes": 9000,
        },
        "result": {},
        "error": None,
        "difference_count": 0,
        "queued_at": T0.isoformat(),
        "started_at": T0.isoformat(),
        "finished_at": None,
        **changes,
    }


def test_a_running_copy_has_a_bar() -> None:
    shown = row({"bal": BAL, "copies": [copy(state="copying")], "job": job()}, _local)
    assert (shown["state"], shown["job"], shown["active"]) == (
        "copie en cours",
        "copie : en cours",
        True,
    )
    assert shown["progress"] == {
        "bar": True,
        "value": 40,
        "max": 100,
        "text": "40/100 messages, dossiers 1/3 (Résultats)",
    }
    assert shown["bytes"] == "3,2 Mo"
    assert shown["timings"] == ["02/03/2026 10:00 → 10:01", "en 1 min 15 s"]


def test_a_bar_without_value_while_planning_and_none_when_done() -> None:
    planning = job(progress={"appended": 0, "to_append": 0, "folders_done": 0, "folders": 2})
    shown = row({"bal": BAL, "copies": [], "job": planning}, _local)
    assert shown["progress"]["bar"] is True
    assert shown["progress"]["value"] is None
    assert (shown["state"], shown["messages"], shown["bytes"]) == ("—", "—", "—")
    done = row({"bal": BAL, "copies": [copy()], "job": job(state="done")}, _local)
    assert done["progress"]["bar"] is False
    assert (done["state"], done["job"]) == ("copiée", "copie : succès")


@pytest.mark.parametrize(
    ("state", "action", "job_state", "label", "job_label"),
    [
        ("cut over", "cutover", "done", "basculée (synchronisation de suivi)", "bascule : succès"),
        ("rolled back", "rollback", "failed", "retour arrière fait", "retour arrière : échec"),
        ("finished", "finish", "queued", "basculée, suivi clos", "clôture : en attente"),
        ("teleported", "teleport", "exploding", "teleported", "teleport : exploding"),
    ],
)
def test_labels_and_raw_values(
    state: str, action: str, job_state: str, label: str, job_label: str
) -> None:
    entry = {
        "bal": BAL,
        "copies": [copy(state=state)],
        "job": job(action=action, state=job_state, progress=None, error="E: non"),
    }
    shown = row(entry, _local)
    assert (shown["state"], shown["state_code"], shown["job"]) == (label, state, job_label)
    assert shown["error"] == ("E: non" if job_state == "failed" else "")


def test_a_verification_says_what_it_found() -> None:
    same = job(action="verify", state="done", progress=None, result={"identical": True})
    other = job(
        action="verify",
        state="done",
        progress=None,
        result={"identical": False},
        difference_count=3,
    )
    verified = copy(state="verified", verified_at=(T0 + dt.timedelta(hours=1)).isoformat())
    shown = row({"bal": BAL, "copies": [verified], "job": same}, _local)
    assert shown["job"] == "vérification : succès (identique)"
    assert shown["timings"][-1] == "vérifiée 02/03/2026 11:00"
    assert row({"bal": BAL, "copies": [copy()], "job": other}, _local)["job"] == (
        "vérification : succès (3 différence(s))"
    )


def test_the_copy_shown_is_the_jobs_else_the_latest() -> None:
    back = copy(source="modern", target="historic", state="copying", started_at=None)
    latest = copy(started_at=(T0 + dt.timedelta(days=1)).isoformat(), state="verified")
    older = copy(source="historic", target="dovecot", state="failed", last_error="refus")
    entry = {"bal": BAL, "copies": [older, latest], "job": None}
    assert row(entry, _local)["state"] == "vérifiée"
    entry = {"bal": BAL, "copies": [older, back], "job": job(source="modern", target="historic")}
    shown = row(entry, _local)
    assert (shown["source"], shown["target"], shown["state"]) == (
        "modern",
        "historic",
        "copie en cours",
    )
    assert shown["timings"] == ["depuis 02/03/2026 10:00"], "the job's start, the copy has none"
    overnight = copy(finished_at=(T0 + dt.timedelta(days=1)).isoformat())
    assert row({"bal": BAL, "copies": [overnight], "job": None}, _local)["timings"] == [
        "02/03/2026 10:00 → 03/03/2026 10:00",
        "en 24 h 00 min",
    ]


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 o"),
        (1023, "1023 o"),
        (1024, "1,0 Ko"),
        (1_500_000, "1,4 Mo"),
        (5 * 1024**5, "5120,0 To"),
    ],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


async def test_too_many_bal_keep_the_running_then_the_latest(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(view, "MAX_ROWS", 3)

    def entry(name: str, day: int, state: str | None = None) -> dict[str, Any]:
        started = (T0 + dt.timedelta(days=day)).isoformat()
        running = [job(state=state, started_at=T0.isoformat())] if state else [None]
        return {"bal": name, "copies": [copy(started_at=started)], "job": running[0]}

    class Status:
        async def status(self) -> list[dict[str, Any]]:
            return [
                entry("a@x.fr", 1),
                entry("b@x.fr", 5),
                entry("c@x.fr", 0, "running"),
                entry("d@x.fr", 3),
                entry("e@x.fr", 2),
            ]

    shown = await view.migrations_view(Status(), _local)  # type: ignore[arg-type]
    assert [r["bal"] for r in shown["rows"]] == ["b@x.fr", "c@x.fr", "d@x.fr"]
    assert [m["bal"] for m in shown["migrations"]] == ["b@x.fr", "c@x.fr", "d@x.fr"]
    assert shown["hidden"] == 2
