"""The usage recorder and report on a real database (SQLite, and PostgreSQL when
LPS_TEST_DATABASE_URL is set): exact distinct counts over periods, additive writes from
several recorders, bounded memory, cleaned labels."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from delegation.db import create_engine
from gateway.backends.routing import Placement
from gateway.db import migrate_gateway
from gateway.settings import RoutingSettings
from gateway.usage import Access, UsageRecorder, clean_label, interface_for
from gateway.usage import recorder as recorder_module
from gateway.usage.report import UsageReport, usage_report
from tests.gateway.test_legacy_ws_uidmap import _downgrade
from tests.support.waiting import until

DAY = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)


@pytest.fixture
def engine(migrated_engine: AsyncEngine) -> AsyncEngine:
    return migrated_engine


def access(
    days: int,
    bal: str,
    idnat: str,
    software: str = "Medimail",
    *,
    version: str = "4.2",
    interface: str = "api-lps-imap",
    kind: str = "session",
    platform: str = "modern",
    delegated: bool = False,
) -> Access:
    return Access(
        at=DAY + dt.timedelta(days=days),
        interface=interface,  # type: ignore[arg-type]
        software=software,
        version=version,
        bal=bal,
        platform=platform,
        idnat=idnat,
        delegated=delegated,
        kind=kind,  # type: ignore[arg-type]
    )


def row(report: UsageReport, software: str, interface: str = "api-lps-imap") -> dict[str, object]:
    found = [r for r in report.software if (r.software, r.interface) == (software, interface)]
    assert len(found) == 1, report.software
    return vars(found[0])


async def test_distinct_counts_are_exact_over_any_period_since_a_date(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine)
    # a.fr: every day 0..9 by person 1; b.fr: day 0 only (2 sessions); c.fr: day 5, two people
    for day in range(10):
        recorder.record(access(day, "a@x.fr", "1"))
    recorder.record(access(0, "b@x.fr", "2"))
    recorder.record(access(0, "b@x.fr", "2"))
    recorder.record(access(5, "c@x.fr", "3"))
    recorder.record(access(5, "c@x.fr", "4", delegated=True))
    recorder.record(
        access(6, "a@x.fr", "1", "NIL-77", version="", interface="api-lps-smtp", kind="message")
    )
    await recorder.flush()
    assert recorder.pending == 0

    everything = await usage_report(engine)
    assert row(everything, "Medimail") | {"first_seen": None, "last_seen": None} == {
        "software": "Medimail",
        "version": "4.2",
        "interface": "api-lps-imap",
        "bals": 3,
        "persons": 4,
        "sessions": 14,
        "messages": 0,
        "first_seen": None,
        "last_seen": None,
    }
    assert row(everything, "Medimail")["first_seen"] == DAY
    assert row(everything, "Medimail")["last_seen"] == DAY + dt.timedelta(days=9)
    nil = row(everything, "NIL-77", "api-lps-smtp")
    assert (nil["bals"], nil["sessions"], nil["messages"]) == (1, 0, 1)

    since_day_1 = await usage_report(engine, (DAY + dt.timedelta(days=1)).date())
    assert (row(since_day_1, "Medimail")["bals"], row(since_day_1, "Medimail")["persons"]) == (2, 3)
    assert row(since_day_1, "Medimail")["sessions"] == 11
    since_day_6 = await usage_report(engine, (DAY + dt.timedelta(days=6)).date())
    assert (row(since_day_6, "Medimail")["bals"], row(since_day_6, "Medimail")["persons"]) == (1, 1)
    assert row(since_day_6, "Medimail")["sessions"] == 4
    later = await usage_report(engine, (DAY + dt.timedelta(days=30)).date())
    assert later.software == []
    days = {(d.day, d.interface): d.sessions for d in everything.days}
    assert days[(DAY.date(), "api-lps-imap")] == 3


async def test_several_recorders_flushing_at_once_lose_no_count(engine: AsyncEngine) -> None:
    recorders = [UsageRecorder(engine) for _ in range(4)]
    for round_ in range(3):
        for number, recorder in enumerate(recorders):
            for n in range(50):
                recorder.record(access(round_, f"bal{n}@x.fr", str(n), version=str(number % 2)))
        await asyncio.gather(*(r.flush() for r in recorders))
    report = await usage_report(engine)
    assert sum(r.sessions for r in report.software) == 4 * 3 * 50
    assert {(r.version, r.bals, r.sessions) for r in report.software} == {
        ("0", 50, 300),
        ("1", 50, 300),
    }


async def test_memory_is_bounded_and_the_background_flush_writes(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine, max_pending=10, flush_interval=3600)
    for n in range(100):
        recorder.record(access(0, f"bal{n}@x.fr", str(n)))
    assert recorder.pending <= 2 * 10 + 1
    assert recorder.dropped > 0
    recorder.record(access(0, "bal0@x.fr", "0"))  # adding to a pending row still counts
    dropped = recorder.dropped
    recorder.start()
    try:
        await until(lambda: recorder.pending == 0, "the background flush")
    finally:
        await recorder.stop()
    report = await usage_report(engine)
    (only,) = report.software
    assert only.sessions == 100 - dropped + 1
    assert only.bals == only.persons == 100 - dropped


async def test_platform_and_delegation_follow_the_last_access(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine)
    recorder.record(access(3, "dupont@x.fr", "9", "OldLPS", platform="historic"))
    await recorder.flush()
    recorder.record(access(1, "dupont@x.fr", "9", "OldLPS", platform="elsewhere"))  # older
    recorder.record(access(2, "moved@x.fr", "8", "NewLPS", platform="historic"))
    await recorder.flush()
    placement = Placement(
        ["modern", "historic"],
        RoutingSettings(default="modern", mailboxes={"dupont@x.fr": "historic"}),
    )
    report = await usage_report(engine, placement=placement, historic=["historic"])
    assert [(b.bal, b.platform, b.software) for b in report.historic] == [
        ("dupont@x.fr", "historic", "OldLPS")
    ]
    assert report.historic[0].last_seen == DAY + dt.timedelta(days=3)
    assert row(report, "OldLPS")["first_seen"] == DAY + dt.timedelta(days=1)


def test_labels_are_bounded_and_cleaned() -> None:
    assert clean_label("Thunderbird\r\nX-Injected: 1") == "ThunderbirdX-Injected: 1"
    assert clean_label('=HYPERLINK("http://evil")') == "HYPERLINK(http://evil)"
    assert clean_label("<script>alert(1)</script>") == "scriptalert(1)/script"
    assert clean_label("a" * 10_000) == "a" * 64
    assert clean_label("\x00\x1b[31m") == "31m"
    assert clean_label("Médi mail   v2") == "Médi mail v2"
    assert clean_label(None) == ""
    made = access(0, " Claire.Martin@X.fr ", "1", "\t", version="9" * 99)
    assert (made.software, made.version, made.bal) == ("unknown", "9" * 32, "claire.martin@x.fr")
    assert interface_for("imap") == "api-lps-imap"
    assert interface_for("smtp", by_card=True) == "historic-smtp-cps"
    with pytest.raises(ValueError, match="interface"):
        access(0, "a@x.fr", "1", interface="pop3")


# -- MSSanté non-conformities (`[mss] policy`) ------------------------------------------------


def nonconformities(report: UsageReport) -> dict[tuple[str, str, str, str], tuple[int, int]]:
    return {
        (r.software, r.version, r.interface, r.rule): (r.refused, r.reported)
        for r in report.nonconformities
    }


async def test_nonconformities_add_up_per_day_software_and_rule(engine: AsyncEngine) -> None:
    day = [DAY]
    recorders = [UsageRecorder(engine, clock=lambda: day[0]) for _ in range(2)]
    for recorder in recorders:  # two nodes, flushing at once
        recorder.nonconformity("api-lps-smtp", "NIL-1", "", "X-MSS-INS-mismatch", "reported")
        recorder.nonconformity("api-lps-smtp", "NIL-1", "", "X-MSS-INS-mismatch", "refused")
        recorder.nonconformity("historic-ws", "LPS 2", "3.1", "X-MSS-NIL-missing", "reported")
    await asyncio.gather(*(r.flush() for r in recorders))
    day[0] = DAY + dt.timedelta(days=2)
    recorders[0].nonconformity("api-lps-smtp", "NIL-1", "", "X-MSS-INS-mismatch", "reported")
    recorders[0].nonconformity("api-lps-smtp", None, None, "From-mismatch", "refused")
    await recorders[0].flush()
    report = await usage_report(engine)
    assert nonconformities(report) == {
        ("NIL-1", "", "api-lps-smtp", "X-MSS-INS-mismatch"): (2, 3),
        ("LPS 2", "3.1", "historic-ws", "X-MSS-NIL-missing"): (0, 2),
        ("unknown", "", "api-lps-smtp", "From-mismatch"): (1, 0),
    }
    [ins] = [r for r in report.nonconformities if r.rule == "X-MSS-INS-mismatch"]
    assert (ins.header, ins.first_day, ins.last_day) == (
        "X-MSS-INS",
        DAY.date(),
        DAY.date() + dt.timedelta(days=2),
    )
    later = await usage_report(engine, DAY.date() + dt.timedelta(days=1))
    assert nonconformities(later) == {
        ("NIL-1", "", "api-lps-smtp", "X-MSS-INS-mismatch"): (0, 1),
        ("unknown", "", "api-lps-smtp", "From-mismatch"): (1, 0),
    }
    assert report.as_json()["nonconformities"][0]["first_day"] == DAY.date().isoformat()
    lines = report.as_csv("nonconformities").splitlines()
    assert lines[0] == "software,version,interface,rule,header,refused,reported,first_day,last_day"
    assert len(lines) == 4


async def test_rule_ids_and_software_names_are_bounded(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine, rule_software=3, clock=lambda: DAY)
    for n in range(50):
        recorder.nonconformity("api-lps-smtp", f"NIL-{n}", "1", "X-MSS-NIL-empty", "reported")
    for bad_rule in ("X-MSS-EVIL-mismatch", "'; DROP TABLE gw_usage_daily; --", "x" * 500):
        recorder.nonconformity("api-lps-smtp", "NIL-0", "", bad_rule, "refused")
    recorder.nonconformity("pop3", "NIL-0", "", "X-MSS-NIL-empty", "refused")
    await recorder.flush()
    figures = nonconformities(await usage_report(engine))
    assert figures == {
        ("NIL-0", "1", "api-lps-smtp", "X-MSS-NIL-empty"): (0, 1),
        ("NIL-1", "1", "api-lps-smtp", "X-MSS-NIL-empty"): (0, 1),
        ("NIL-2", "1", "api-lps-smtp", "X-MSS-NIL-empty"): (0, 1),
        ("other", "", "api-lps-smtp", "X-MSS-NIL-empty"): (0, 47),
    }
    recorder.clock = lambda: DAY + dt.timedelta(days=1)  # a new day: names count afresh
    recorder.nonconformity("api-lps-smtp", "NIL-49", "", "X-MSS-NIL-empty", "reported")
    await recorder.flush()
    assert ("NIL-49", "", "api-lps-smtp", "X-MSS-NIL-empty") in nonconformities(
        await usage_report(engine)
    )


async def test_nonconformity_rows_share_the_memory_bound(engine: AsyncEngine) -> None:
    recorder = UsageRecorder(engine, max_pending=10, flush_interval=3600, clock=lambda: DAY)
    for n in range(100):
        recorder.nonconformity("api-lps-smtp", f"NIL-{n}", "", "X-MSS-INS-invalid", "refused")
    assert recorder.pending <= 2 * 10
    assert recorder.dropped == 100 - 2 * 10
    await recorder.flush()
    assert len((await usage_report(engine)).nonconformities) == 20


async def test_the_nonconformity_table_downgrades_and_upgrades_again(fresh_db_url: str) -> None:
    await migrate_gateway(fresh_db_url)
    engine = create_engine(fresh_db_url)
    try:
        recorder = UsageRecorder(engine, clock=lambda: DAY)
        recorder.nonconformity("api-lps-smtp", "NIL-1", "", "X-MSS-INS-mismatch", "reported")
        await recorder.flush()
        await engine.dispose()
        await _downgrade(fresh_db_url, "gw0007")
        async with engine.connect() as connection:
            tables = set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
        assert "gw_usage_nonconformities" not in tables
        assert "gw_usage_daily" in tables
        # a report read before the gateway migrates (a newer CLI): no figures, no error
        assert (await usage_report(engine)).nonconformities == []
        await engine.dispose()
        await migrate_gateway(fresh_db_url)
        recorder.nonconformity("api-lps-smtp", "NIL-1", "", "X-MSS-INS-mismatch", "refused")
        await recorder.flush()
        assert nonconformities(await usage_report(engine)) == {
            ("NIL-1", "", "api-lps-smtp", "X-MSS-INS-mismatch"): (1, 0)
        }
    finally:
        await engine.dispose()


async def test_the_last_write_at_stop_outlasts_a_busy_database(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers of a node stop together: one may find SQLite locked beyond its busy timeout.
    The counts left at stop are written at a later attempt, not lost."""
    real_write = recorder_module.write
    refusals = []

    async def busy_twice(*args: Any, **kwargs: Any) -> None:
        if len(refusals) < 2:
            refusals.append(1)
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        await real_write(*args, **kwargs)

    monkeypatch.setattr(recorder_module, "write", busy_twice)
    monkeypatch.setattr(recorder_module, "STOP_RETRY_DELAY", 0)
    recorder = UsageRecorder(engine, flush_interval=3600)
    recorder.record(access(0, "a@x.fr", "1"))
    recorder.record(access(0, "b@x.fr", "2"))
    await recorder.stop()
    assert len(refusals) == 2
    assert recorder.pending == 0
    (only,) = (await usage_report(engine)).software
    assert only.sessions == 2
