"""Writing merged counts to the usage tables: additive upserts, so that flushes of several
nodes, or of one node twice, never lose or double a count (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, case, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db import usage_daily, usage_nonconformities, usage_seen

DailyKey = tuple[dt.date, str, str, str]  # day, software, version, interface
SeenKey = tuple[str, str, str, str, str]  # software, version, interface, bal, idnat
RuleKey = tuple[dt.date, str, str, str, str]  # day, software, version, interface, rule
ROWS_PER_STATEMENT = 500  # PostgreSQL takes 32,767 parameters, SQLite 32,766 (3.32+)


@dataclass
class Counts:
    sessions: int = 0
    messages: int = 0


@dataclass
class RuleCounts:
    refused: int = 0
    reported: int = 0


@dataclass
class Seen:
    first: dt.datetime
    last: dt.datetime
    platform: str
    delegated: bool

    def merge(self, other: Seen) -> None:
        self.first = min(self.first, other.first)
        if other.last >= self.last:
            self.last, self.platform, self.delegated = other.last, other.platform, other.delegated


async def write(
    engine: AsyncEngine,
    daily: dict[DailyKey, Counts],
    seen: dict[SeenKey, Seen],
    rules: dict[RuleKey, RuleCounts] | None = None,
) -> None:
    """Add `daily`, `seen` and `rules` (MSSanté non-conformities) to the tables in one
    transaction. Rows go in key order, so two nodes flushing at once lock them in the same
    order (no deadlock)."""
    postgres = engine.dialect.name == "postgresql"
    daily_rows = [
        {
            "day": key[0],
            "software": key[1],
            "version": key[2],
            "interface": key[3],
            "sessions": counts.sessions,
            "messages": counts.messages,
        }
        for key, counts in sorted(daily.items())
    ]
    seen_rows = [
        {
            "software": key[0],
            "version": key[1],
            "interface": key[2],
            "bal": key[3],
            "idnat": key[4],
            "platform": row.platform,
            "delegated": row.delegated,
            "first_seen": row.first,
            "last_seen": row.last,
        }
        for key, row in sorted(seen.items())
    ]
    rule_rows = [
        {
            "day": key[0],
            "software": key[1],
            "version": key[2],
            "interface": key[3],
            "rule": key[4],
            "refused": counts.refused,
            "reported": counts.reported,
        }
        for key, counts in sorted((rules or {}).items())
    ]
    async with engine.begin() as connection:
        for chunk in _chunks(daily_rows):
            await connection.execute(_daily_upsert(postgres, chunk))
        for chunk in _chunks(seen_rows):
            await connection.execute(_seen_upsert(postgres, chunk))
        for chunk in _chunks(rule_rows):
            await connection.execute(_rules_upsert(postgres, chunk))


def _insert(postgres: bool, table: Table, rows: Sequence[dict[str, Any]]) -> Any:
    return (postgresql.insert if postgres else sqlite.insert)(table).values(list(rows))


def _daily_upsert(postgres: bool, rows: Sequence[dict[str, Any]]) -> Any:
    statement = _insert(postgres, usage_daily, rows)
    new = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=["day", "software", "version", "interface"],
        set_={
            "sessions": usage_daily.c.sessions + new.sessions,
            "messages": usage_daily.c.messages + new.messages,
        },
    )


def _rules_upsert(postgres: bool, rows: Sequence[dict[str, Any]]) -> Any:
    statement = _insert(postgres, usage_nonconformities, rows)
    new, old = statement.excluded, usage_nonconformities.c
    return statement.on_conflict_do_update(
        index_elements=["day", "software", "version", "interface", "rule"],
        set_={"refused": old.refused + new.refused, "reported": old.reported + new.reported},
    )


def _seen_upsert(postgres: bool, rows: Sequence[dict[str, Any]]) -> Any:
    statement = _insert(postgres, usage_seen, rows)
    new, old = statement.excluded, usage_seen.c
    # SQLite's two-argument min/max are PostgreSQL's least/greatest
    least = func.least if postgres else func.min
    greatest = func.greatest if postgres else func.max
    newer = new.last_seen >= old.last_seen
    return statement.on_conflict_do_update(
        index_elements=["software", "version", "interface", "bal", "idnat"],
        set_={
            "first_seen": least(old.first_seen, new.first_seen),
            "last_seen": greatest(old.last_seen, new.last_seen),
            "platform": case((newer, new.platform), else_=old.platform),
            "delegated": case((newer, new.delegated), else_=old.delegated),
        },
    )


def _chunks(rows: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        yield rows[start : start + ROWS_PER_STATEMENT]
