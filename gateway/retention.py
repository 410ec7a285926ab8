"""Retention: audit events and usage rows are personal data, kept `retention_days`, then
purged (`[audit] retention_days`, `[usage] retention_days`; 0 keeps them forever). A
revoked delegation (who had which rights on whose BAL, and who revoked them) is part of
the trail: it goes with the audit events of its time. An open delegation stays, expired
or not (its holder renews it).

Each node purges by itself every `[audit] purge_interval` (`Purger`), and an operator can
see or do the same at once (`lps-gateway purge [--dry-run]`). Rows go in small batches, one
short transaction each, oldest first, so a purge never holds a table for long; on
PostgreSQL a batch skips the rows another node's purge has locked, so nodes purging at
once share the work instead of waiting on (or deadlocking with) each other.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, func, inspect, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from delegation.db import create_engine, shown
from delegation.models import AuditEventRow, DelegationRow
from gateway.db import usage_daily, usage_nonconformities, usage_seen
from gateway.runtime.lifecycle import cancelled
from gateway.settings import Settings

log = logging.getLogger(__name__)

BATCH = 1_000  # rows per transaction


@dataclass(frozen=True)
class Kept:
    """A table's rule: rows whose `column` is older than `days` go (0: kept forever)."""

    table: Table
    column: ColumnElement[Any]
    days: int

    def cutoff(self, now: dt.datetime) -> dt.datetime | dt.date:
        """The oldest value kept: a day for day-keyed tables, else an instant."""
        instant = now - dt.timedelta(days=self.days)
        return instant.date() if self.column.type.python_type is dt.date else instant


@dataclass(frozen=True)
class Purged:
    """What a purge removed from a table (or would have, in a dry run)."""

    table: str
    cutoff: dt.datetime | dt.date | None  # None: kept forever
    rows: int


def rules(settings: Settings) -> list[Kept]:
    audit, delegations = AuditEventRow.__table__, DelegationRow.__table__
    assert isinstance(audit, Table)
    assert isinstance(delegations, Table)
    usage = settings.usage.retention_days
    return [
        Kept(audit, audit.c.at, settings.audit.retention_days),
        Kept(delegations, delegations.c.revoked_at, settings.audit.retention_days),
        Kept(usage_daily, usage_daily.c.day, usage),
        Kept(usage_seen, usage_seen.c.last_seen, usage),
        Kept(usage_nonconformities, usage_nonconformities.c.day, usage),
    ]


async def purge(
    engine: AsyncEngine,
    kept: Sequence[Kept],
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    batch: int = BATCH,
) -> list[Purged]:
    """Remove, table by table, the rows older than their cutoff (`dry_run`: count them)."""
    now = now or dt.datetime.now(dt.UTC)
    done = []
    for rule in kept:
        if rule.days == 0:
            done.append(Purged(rule.table.name, None, 0))
            continue
        cutoff = rule.cutoff(now)
        if dry_run:
            rows = await _count(engine, rule, cutoff)
        else:
            rows = await _delete(engine, rule, cutoff, batch)
        done.append(Purged(rule.table.name, cutoff, rows))
    return done


async def _count(engine: AsyncEngine, rule: Kept, cutoff: dt.datetime | dt.date) -> int:
    async with engine.connect() as connection:
        query = select(func.count()).select_from(rule.table).where(rule.column < cutoff)
        return int((await connection.execute(query)).scalar_one())


async def _delete(
    engine: AsyncEngine, rule: Kept, cutoff: dt.datetime | dt.date, batch: int
) -> int:
    key = list(rule.table.primary_key.columns)
    oldest = (
        select(*key)
        .where(rule.column < cutoff)
        .order_by(rule.column)
        .limit(batch)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer anyway
    )
    match = key[0].in_(oldest) if len(key) == 1 else tuple_(*key).in_(oldest)
    removed = 0
    while True:
        async with engine.begin() as connection:
            gone = (await connection.execute(delete(rule.table).where(match))).rowcount
        removed += gone
        if gone < batch:
            return removed
        await asyncio.sleep(0)  # let the node's own writes in between two batches


class Purger:
    """The node's periodic purge: first soon after start, then every `interval` seconds.
    A failed purge is logged and tried again at the next round."""

    def __init__(
        self,
        engine: AsyncEngine,
        kept: Sequence[Kept],
        interval: float,
        *,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.engine = engine
        self.kept = list(kept)
        self.interval = interval
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and any(rule.days for rule in self.kept):
            self._task = asyncio.create_task(self._forever(), name="retention-purge")

    async def _forever(self) -> None:
        while True:
            try:
                now = self.clock() if self.clock is not None else None
                for purged in await purge(self.engine, self.kept, now=now):
                    if purged.rows:
                        log.info(
                            "retention.purged",
                            extra={
                                "table": purged.table,
                                "rows": purged.rows,
                                "cutoff": str(purged.cutoff),
                            },
                        )
            except Exception:
                log.exception("retention.purge_failed")
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        await cancelled(self._task)
        self._task = None


def described(purged: Sequence[Purged], *, dry_run: bool) -> list[str]:
    """One line per table, as `lps-gateway purge` prints them."""
    verb = "would be removed" if dry_run else "removed"
    lines = []
    for done in purged:
        if done.cutoff is None:
            lines.append(f"{done.table}: kept forever (retention_days = 0)")
        else:
            lines.append(f"{done.table}: {done.rows} rows older than {done.cutoff} {verb}")
    return lines


async def run_purge(settings: Settings, *, dry_run: bool) -> tuple[int, list[str]]:
    """`lps-gateway purge`: the exit code and the lines to print. The database must be one
    a gateway has run on (its tables are not created here)."""
    engine = create_engine(settings.database())
    kept = rules(settings)
    try:
        async with engine.connect() as connection:
            ready = await connection.run_sync(
                lambda sync: all(inspect(sync).has_table(rule.table.name) for rule in kept)
            )
        if not ready:
            return 1, [
                f"no gateway tables in {shown(settings.database())}: run it where the gateway runs"
            ]
        return 0, described(await purge(engine, kept, dry_run=dry_run), dry_run=dry_run)
    finally:
        await engine.dispose()
