"""The usage report: per software (and version) and interface, since a date, read from the
daily counts and the first/last-seen rows only (never from raw events), the BAL still
on the historic platform with the software that reached them last, and the MSSanté rules
each software broke (refused, or reported under `[mss] policy = "report"`)."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import String, func, inspect, literal, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncEngine

from delegation.models import MailboxRow
from gateway.backends.routing import Placement
from gateway.db import usage_daily, usage_nonconformities, usage_seen
from gateway.mss.rules import RULES, UNKNOWN_RULE

CSV_FIELDS = (
    "software",
    "version",
    "interface",
    "bals",
    "persons",
    "sessions",
    "messages",
    "first_seen",
    "last_seen",
)
NONCONFORMITY_FIELDS = (
    "software",
    "version",
    "interface",
    "rule",
    "header",
    "refused",
    "reported",
    "first_day",
    "last_day",
)
CsvTable = Literal["software", "nonconformities"]


@dataclass(frozen=True)
class SoftwareUsage:
    software: str
    version: str
    interface: str
    bals: int
    persons: int
    sessions: int
    messages: int
    first_seen: dt.datetime | None
    last_seen: dt.datetime | None


@dataclass(frozen=True)
class HistoricBal:
    """A BAL that the routing places on a historic platform today, and who reached it last."""

    bal: str
    platform: str
    software: str
    version: str
    interface: str
    last_seen: dt.datetime


@dataclass(frozen=True)
class DayCount:
    day: dt.date
    interface: str
    sessions: int
    messages: int


@dataclass(frozen=True)
class Nonconformity:
    """An MSSanté rule a software broke: messages refused for it, and messages let through
    with it (`reported`, under `[mss] policy = "report"`), on UTC days first to last."""

    software: str
    version: str
    interface: str
    rule: str
    header: str | None
    refused: int
    reported: int
    first_day: dt.date
    last_day: dt.date


@dataclass(frozen=True)
class UsageReport:
    since: dt.date | None
    software: list[SoftwareUsage]
    historic: list[HistoricBal] = field(default_factory=list)
    days: list[DayCount] = field(default_factory=list)
    nonconformities: list[Nonconformity] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, dt.date | dt.datetime):
                return value.isoformat()
            return value

        def rows(items: Collection[Any]) -> list[dict[str, Any]]:
            return [{k: plain(v) for k, v in asdict(item).items()} for item in items]

        return {
            "since": plain(self.since),
            "software": rows(self.software),
            "historic_bals": rows(self.historic),
            "days": rows(self.days),
            "nonconformities": rows(self.nonconformities),
        }

    def as_csv(self, table: CsvTable = "software") -> str:
        """The per-software table, or the non-conformities per software and rule (labels
        were cleaned of formula starters on the way in)."""
        fields, items = (
            (CSV_FIELDS, self.software)
            if table == "software"
            else (NONCONFORMITY_FIELDS, self.nonconformities)
        )
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(fields)
        for row in items:
            values = asdict(row)
            writer.writerow(
                [
                    v.isoformat() if isinstance(v, dt.date) else ("" if v is None else v)
                    for v in (values[name] for name in fields)
                ]
            )
        return out.getvalue()


async def usage_report(
    engine: AsyncEngine,
    since: dt.date | None = None,
    *,
    placement: Placement | None = None,
    historic: Collection[str] = (),
) -> UsageReport:
    """The figures since `since` (UTC day, included; None: all). `placement` and
    `historic` (names of the historic platform's backends) find the BAL still there."""
    start = dt.datetime.combine(since, dt.time(), dt.UTC) if since is not None else None
    seen, daily = usage_seen.c, usage_daily.c
    keys = (seen.software, seen.version, seen.interface)
    people = select(
        *keys,
        func.count(seen.bal.distinct()),
        func.count(seen.idnat.distinct()),
        func.min(seen.first_seen),
        func.max(seen.last_seen),
    ).group_by(*keys)
    counts = select(
        daily.software,
        daily.version,
        daily.interface,
        func.sum(daily.sessions),
        func.sum(daily.messages),
    ).group_by(daily.software, daily.version, daily.interface)
    per_day = (
        select(daily.day, daily.interface, func.sum(daily.sessions), func.sum(daily.messages))
        .group_by(daily.day, daily.interface)
        .order_by(daily.day, daily.interface)
    )
    broken = usage_nonconformities.c
    rule_keys = (broken.software, broken.version, broken.interface, broken.rule)
    per_rule = (
        select(
            *rule_keys,
            func.sum(broken.refused),
            func.sum(broken.reported),
            func.min(broken.day),
            func.max(broken.day),
        )
        .group_by(*rule_keys)
        .order_by(*rule_keys)
    )
    if start is not None:
        people = people.where(seen.last_seen >= start)
        counts = counts.where(daily.day >= since)
        per_day = per_day.where(daily.day >= since)
        per_rule = per_rule.where(broken.day >= since)

    async def rows(query: Any) -> list[Any]:
        # one connection each: PostgreSQL runs the queries at once
        async with engine.connect() as connection:
            return list(await connection.execute(query))

    async def rule_rows() -> list[Any]:
        # a database the gateway has not migrated to gw0008 yet (the CLI of a newer release)
        async with engine.connect() as connection:
            if not await connection.run_sync(
                lambda sync: inspect(sync).has_table(usage_nonconformities.name)
            ):
                return []
            return list(await connection.execute(per_rule))

    async def lasts() -> list[Any]:
        if not historic:
            return []
        async with engine.connect() as connection:
            registry = await connection.run_sync(
                lambda sync: inspect(sync).has_table(MailboxRow.__tablename__)
            )
            return list(await connection.execute(_latest(engine, start, registry)))

    reached_rows, total_rows, by_day, latest, by_rule = await asyncio.gather(
        rows(people), rows(counts), rows(per_day), lasts(), rule_rows()
    )
    nonconformities = [
        Nonconformity(
            str(name),
            str(version),
            str(interface),
            str(rule),
            RULES.get(rule, UNKNOWN_RULE).header,
            refused=int(refused or 0),
            reported=int(reported or 0),
            first_day=first,
            last_day=last,
        )
        for name, version, interface, rule, refused, reported, first, last in by_rule
    ]
    reached = {tuple(row[:3]): row[3:] for row in reached_rows}
    totals = {tuple(row[:3]): row[3:] for row in total_rows}
    days = [DayCount(r[0], r[1], int(r[2]), int(r[3])) for r in by_day]
    software = []
    for key in sorted(reached.keys() | totals.keys()):
        bals, persons, first, last_seen = reached.get(key, (0, 0, None, None))
        sessions, messages = totals.get(key, (0, 0))
        name, version, interface = (str(part) for part in key)
        software.append(
            SoftwareUsage(
                name,
                version,
                interface,
                bals=int(bals),
                persons=int(persons),
                sessions=int(sessions or 0),
                messages=int(messages or 0),
                first_seen=first,
                last_seen=last_seen,
            )
        )
    still = []
    for bal, recorded, registered, name, version, interface, when in latest:
        now = placement.backend_of(bal, registered or "") if placement else recorded
        if now in historic:
            still.append(HistoricBal(bal, str(now), name, version, interface, when))
    still.sort(key=lambda item: (item.software, item.bal))
    return UsageReport(since, software, still, days, nonconformities)


def _latest(engine: AsyncEngine, start: dt.datetime | None, registry: bool) -> Any:
    """Each BAL's last access (since `start`) with the backend the registry records for it:
    DISTINCT ON where PostgreSQL has it, a window function elsewhere."""
    seen = usage_seen.c
    registered = MailboxRow.backend if registry else literal(None, String)
    columns = (
        seen.bal,
        seen.platform,
        registered.label("registered"),
        seen.software,
        seen.version,
        seen.interface,
        seen.last_seen,
    )
    if engine.dialect.name == "postgresql":
        on_bal = distinct_on(seen.bal)
        query = select(*columns).ext(on_bal).order_by(seen.bal, seen.last_seen.desc())
    else:
        n = func.row_number().over(partition_by=seen.bal, order_by=seen.last_seen.desc())
        query = select(*columns, n.label("n"))
    if registry:
        query = query.outerjoin(MailboxRow, MailboxRow.address == seen.bal)
    if start is not None:
        query = query.where(seen.last_seen >= start)
    if engine.dialect.name == "postgresql":
        return query
    ranked = query.subquery()
    return select(*(c for c in ranked.c if c.name != "n")).where(ranked.c.n == 1)
