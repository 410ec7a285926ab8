"""The usage report over a year of a 50,000-BAL operator (10 million recorded accesses),
on PostgreSQL: target under a second.

Fills a fresh database with the usage tables as `gateway.usage` leaves them after that
year (bulk-inserted with SQL, not recorded one by one): per day, software, version and
interface the sessions and messages (365 days x 40 software x 3 versions x 5
interfaces, summing to about 10 million accesses); first/last-seen rows for every BAL
(its holder, one in five also by SMTP, one in ten also by a delegate); and the registry's
50,000 mailboxes, 36,000 of them still on the historic platform. Then times
`usage_report` (per software and interface: distinct BAL and persons, sessions,
messages, first/last seen; the BAL still on the historic platform with the software that
reached them last; the sessions per day) since a year ago and since a month ago.

Run: ``.venv/bin/python bench/usage_report.py [--database-url URL] [--runs 5]``
(default URL: LPS_TEST_DATABASE_URL, e.g. ``postgresql://postgres@/postgres?host=/var/run/postgresql``;
the benchmark creates its own database there and drops it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from sqlalchemy import make_url, text

from delegation.db import async_url, asyncpg_dsn, create_engine, migrate
from gateway.backends.routing import Placement
from gateway.db import migrate_gateway
from gateway.settings import RoutingSettings
from gateway.usage.report import usage_report

BALS = 50_000
HISTORIC = 36_000
DAYS = 365
SOFTWARE = 40
VERSIONS = 3
INTERFACES = (
    "api-lps-imap",
    "api-lps-smtp",
    "historic-ws",
    "historic-imap-cps",
    "historic-smtp-cps",
)

FILL = [
    # the registry's mailboxes: the first 36,000 still on the historic platform
    """
    INSERT INTO dlg_mailboxes (address, type, organisation, backend, state)
    SELECT 'bal' || i || '@medecin.mssante.fr', 'APP', 'Cabinet ' || i,
           CASE WHEN i <= :historic THEN 'historic' ELSE 'modern' END, 'active'
    FROM generate_series(1, :bals) AS i
    """,
    # daily counts: every software x version x interface every day, ~10 M accesses in all
    """
    INSERT INTO gw_usage_daily (day, software, version, interface, sessions, messages)
    SELECT CAST(:today AS date) - d, 'LPS-' || s, v || '.0', i.name,
           (random() * 70)::bigint, (random() * 22)::bigint
    FROM generate_series(0, :days - 1) AS d,
         generate_series(1, :software) AS s,
         generate_series(1, :versions) AS v,
         unnest(CAST(:interfaces AS text[])) AS i(name)
    """,
    # first/last seen: each BAL's holder with its software over one interface ...
    """
    INSERT INTO gw_usage_seen
        (software, version, interface, bal, idnat, platform, delegated, first_seen, last_seen)
    SELECT 'LPS-' || (1 + b % :software), (1 + b % :versions) || '.0',
           (CAST(:interfaces AS text[]))[1 + (b / 7) % 5],
           'bal' || b || '@medecin.mssante.fr', '8997' || lpad(b::text, 8, '0'),
           CASE WHEN b <= :historic THEN 'historic' ELSE 'modern' END, false,
           CAST(:now AS timestamptz) - make_interval(days => :days - 1) + make_interval(secs => b),
           CAST(:now AS timestamptz) - make_interval(secs => (b * 37) % (86400 * :days))
    FROM generate_series(1, :bals) AS b
    """,
    # ... one BAL in five also by SMTP (X-MSS-NIL) ...
    """
    INSERT INTO gw_usage_seen
        (software, version, interface, bal, idnat, platform, delegated, first_seen, last_seen)
    SELECT 'NIL-' || (1 + b % :software), '', 'api-lps-smtp',
           'bal' || b || '@medecin.mssante.fr', '8997' || lpad(b::text, 8, '0'),
           'modern', false, CAST(:now AS timestamptz) - make_interval(days => 200),
           CAST(:now AS timestamptz) - make_interval(secs => (b * 53) % (86400 * 200))
    FROM generate_series(1, :bals, 5) AS b
    """,
    # ... and one in ten also by a delegate
    """
    INSERT INTO gw_usage_seen
        (software, version, interface, bal, idnat, platform, delegated, first_seen, last_seen)
    SELECT 'LPS-' || (1 + (b + 3) % :software), '2.0', 'api-lps-imap',
           'bal' || b || '@medecin.mssante.fr', '8998' || lpad(b::text, 8, '0'),
           'historic', true, CAST(:now AS timestamptz) - make_interval(days => 100),
           CAST(:now AS timestamptz) - make_interval(secs => (b * 11) % (86400 * 100))
    FROM generate_series(1, :bals, 10) AS b
    """,
]


async def fill(url: str) -> int:
    await migrate(url)
    await migrate_gateway(url)
    engine = create_engine(url)
    now = dt.datetime.now(dt.UTC)
    values = {
        "bals": BALS,
        "historic": HISTORIC,
        "days": DAYS,
        "software": SOFTWARE,
        "versions": VERSIONS,
        "interfaces": list(INTERFACES),
        "today": now.date(),
        "now": now,
    }
    try:
        async with engine.begin() as connection:
            for statement in FILL:
                clause = text(statement)
                used = {k: v for k, v in values.items() if f":{k}" in statement}
                await connection.execute(clause, used)
            total = (
                await connection.execute(
                    text("SELECT sum(sessions + messages) FROM gw_usage_daily")
                )
            ).scalar_one()
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("ANALYZE"))
    finally:
        await engine.dispose()
    return int(total)


async def timed(url: str, since: dt.date, runs: int) -> tuple[float, int, int]:
    engine = create_engine(url)
    placement = Placement(["modern", "historic"], RoutingSettings(default="modern"))
    times = []
    try:
        for _ in range(runs):
            start = time.perf_counter()
            report = await usage_report(engine, since, placement=placement, historic=["historic"])
            times.append(time.perf_counter() - start)
    finally:
        await engine.dispose()
    return statistics.median(times), len(report.software), len(report.historic)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("LPS_TEST_DATABASE_URL"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not args.database_url or not args.database_url.startswith("postgresql"):
        print("usage_report: skipped (give --database-url or LPS_TEST_DATABASE_URL: PostgreSQL)")
        return
    admin = await asyncpg.connect(asyncpg_dsn(args.database_url), timeout=10)
    name = f"lps_usage_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(async_url(args.database_url)).set(database=name)
        rendered = url.render_as_string(hide_password=False)
        start = time.perf_counter()
        total = await fill(rendered)
        filled = time.perf_counter() - start
        print(
            f"usage_report: {total:,} accesses recorded for {BALS:,} BAL over {DAYS} days "
            f"(filled in {filled:.1f} s)"
        )
        today = dt.datetime.now(dt.UTC).date()
        for label, since in (
            ("a year", today - dt.timedelta(days=DAYS)),
            ("a month", today - dt.timedelta(days=30)),
        ):
            seconds, rows, historic = await timed(rendered, since, args.runs)
            verdict = "ok" if seconds < 1.0 else "OVER TARGET"
            print(
                f"  report since {label}: {seconds:.3f} s (median of {args.runs}; "
                f"{rows} software rows, {historic:,} BAL still historic) "
                f"target < 1 s: {verdict}"
            )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
