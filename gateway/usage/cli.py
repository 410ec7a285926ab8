"""`lps-gateway usage`: the report read from the gateway's database, printed as a rich
table, CSV or JSON."""

from __future__ import annotations

import datetime as dt
import json
import sys

from rich.console import Console
from rich.table import Table
from sqlalchemy import inspect

from delegation.db import create_engine, shown
from gateway.backends.routing import Placement
from gateway.db import usage_daily
from gateway.settings import RoutingSettings, Settings
from gateway.usage.report import CsvTable, UsageReport, usage_report

# `lps-gateway demo` configures its backends in code, not in a file: read in its
# directory without backends, the usage tables are the demo's, laid out as it lays them.
DEMO_BACKENDS = ("modern", "historic")
DEMO_HISTORIC = ("historic",)


def placement_of(settings: Settings) -> tuple[Placement, list[str]]:
    """Where each BAL lives now, and which backends are the historic platform."""
    if not settings.backends:
        return Placement(DEMO_BACKENDS, RoutingSettings(default="modern")), list(DEMO_HISTORIC)
    historic = [name for name, b in settings.backends.items() if b.kind == "legacy_ws"]
    return Placement(settings.backends, settings.routing), historic


async def run_report(
    settings: Settings, since: dt.date | None, output: str, table: CsvTable = "software"
) -> int:
    # piped or redirected, rich would squeeze the tables into 80 columns: keep them whole
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    errors = Console(stderr=True)
    engine = create_engine(settings.database())
    try:
        async with engine.connect() as connection:
            ready = await connection.run_sync(
                lambda sync: inspect(sync).has_table(usage_daily.name)
            )
        if not ready:
            errors.print(
                f"lps-gateway usage: no usage figures in {shown(settings.database())} "
                "(run it where the gateway runs, or give --config / --data)",
                highlight=False,
            )
            return 1
        placement, historic = placement_of(settings)
        report = await usage_report(engine, since, placement=placement, historic=historic)
    finally:
        await engine.dispose()
    if output == "json":
        console.print_json(json.dumps(report.as_json()))
    elif output == "csv":
        print(report.as_csv(table), end="")
    else:
        print_tables(report, console)
    return 0


def _when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def print_tables(report: UsageReport, console: Console) -> None:
    since = report.since.isoformat() if report.since else "the start"
    table = Table(title=f"Who still uses what, since {since}")
    for name in ("software", "version", "interface"):
        table.add_column(name)
    for name in ("BAL", "persons", "sessions", "messages"):
        table.add_column(name, justify="right")
    table.add_column("first seen")
    table.add_column("last seen")
    for row in report.software:
        table.add_row(
            row.software,
            row.version,
            row.interface,
            str(row.bals),
            str(row.persons),
            str(row.sessions),
            str(row.messages),
            _when(row.first_seen),
            _when(row.last_seen),
        )
    console.print(table)
    still = Table(title=f"BAL still on the historic platform ({len(report.historic)})")
    for name in ("BAL", "platform", "software last seen", "version", "interface", "last seen"):
        still.add_column(name)
    for bal in report.historic:
        still.add_row(
            bal.bal, bal.platform, bal.software, bal.version, bal.interface, _when(bal.last_seen)
        )
    console.print(still)
    broken = Table(title="MSSanté rules broken, by software (refused; reported: let through)")
    for name in ("software", "version", "interface", "rule", "header"):
        broken.add_column(name)
    for name in ("refused", "reported"):
        broken.add_column(name, justify="right")
    broken.add_column("first day")
    broken.add_column("last day")
    for rule in report.nonconformities:
        broken.add_row(
            rule.software,
            rule.version,
            rule.interface,
            rule.rule,
            rule.header or "-",
            str(rule.refused),
            str(rule.reported),
            rule.first_day.isoformat(),
            rule.last_day.isoformat(),
        )
    console.print(broken)
