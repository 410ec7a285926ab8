"""Retention on a real database (SQLite, and PostgreSQL under LPS_TEST_DATABASE_URL): rows
past `[audit]` / `[usage] retention_days` removed, newer ones kept, a dry run removes
nothing, nodes purging at once share the work, each node purges by itself, and
`lps-gateway purge` says per table what it removed and from which cutoff."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, make_url, select, true
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from typer.testing import CliRunner

from delegation.db import create_engine
from delegation.models import AuditEventRow, DelegationRow, DirectoryEntryRow, MailboxRow
from gateway.cli import app
from gateway.db import usage_daily, usage_nonconformities, usage_seen
from gateway.retention import Purger, purge, rules
from gateway.settings import Settings
from gateway.usage.store import Counts, RuleCounts, Seen, write
from tests.conftest import postgres_database, quick_mock_settings
from tests.support.stacks import gateway_settings, running_stack
from tests.support.waiting import eventually
from tests.test_cli import command

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
OLD = NOW - dt.timedelta(days=400)  # past the default year
RECENT = NOW - dt.timedelta(days=10)
TABLES = [
    AuditEventRow.__table__,
    DelegationRow.__table__,
    usage_daily,
    usage_seen,
    usage_nonconformities,
]


@pytest.fixture
def engine(migrated_engine: AsyncEngine) -> AsyncEngine:
    return migrated_engine


async def add_rows(engine: AsyncEngine, at: dt.datetime, count: int, tag: str) -> None:
    """`count` rows dated `at` in every table the purge covers."""
    async with engine.begin() as connection:
        await connection.execute(
            insert(AuditEventRow.__table__),
            [
                {
                    "at": at,
                    "actor_idnat": "899700000001",
                    "mailbox": f"{tag}{n}@medecin.mssante.fr",
                    "action": "login",
                    "interface": "imap",
                    "result": "ok",
                }
                for n in range(count)
            ],
        )
        await connection.execute(
            insert(DelegationRow.__table__),
            [
                _delegation(await _mailbox(connection, f"{tag}{n}"), at, revoked=True)
                for n in range(count)
            ],
        )
    keys = [f"{tag}{n}" for n in range(count)]
    await write(
        engine,
        {(at.date(), software, "1", "api-lps-imap"): Counts(1, 0) for software in keys},
        {
            (software, "1", "api-lps-imap", "bal@x.fr", "899700000001"): Seen(
                at, at, "modern", False
            )
            for software in keys
        },
        {
            (at.date(), software, "1", "api-lps-smtp", "x-mss-nil"): RuleCounts(1, 0)
            for software in keys
        },
    )


async def _mailbox(connection: AsyncConnection, name: str) -> tuple[int, str]:
    """A holder and her BAL, for a delegation (to herself: any person will do) to hang on."""
    idnat = f"7{int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10**11:011d}"
    await connection.execute(
        insert(DirectoryEntryRow.__table__),
        {"idnat": idnat, "given_name": "A", "family_name": name, "search_key": name},
    )
    row = await connection.execute(
        insert(MailboxRow.__table__).returning(MailboxRow.__table__.c.id),
        {"address": f"{name}@x.fr", "type": "PER", "holder_idnat": idnat, "backend": "m"},
    )
    return int(row.scalar_one()), idnat


def _delegation(mailbox: tuple[int, str], at: dt.datetime, *, revoked: bool) -> dict[str, Any]:
    return {
        "mailbox_id": mailbox[0],
        "delegate_idnat": mailbox[1],
        "may_read": True,
        "may_write": False,
        "may_send": False,
        "granted_by": mailbox[1],
        "created_at": at,
        "updated_at": at,
        "revoked_at": at if revoked else None,
    }


async def counts(engine: AsyncEngine) -> dict[str, int]:
    """Rows per table; of delegations, the revoked ones (the open ones are never purged)."""
    revoked = DelegationRow.__table__.c.revoked_at.is_not(None)
    async with engine.connect() as connection:
        return {
            table.name: (
                await connection.execute(
                    select(func.count())
                    .select_from(table)
                    .where(revoked if table is DelegationRow.__table__ else true())
                )
            ).scalar_one()
            for table in TABLES
        }


async def test_old_rows_go_newer_stay_and_a_dry_run_removes_nothing(engine: AsyncEngine):
    await add_rows(engine, OLD, 5, "old")
    await add_rows(engine, RECENT, 3, "new")
    async with engine.begin() as connection:  # open, granted long ago: stays
        mailbox = await _mailbox(connection, "open")
        await connection.execute(
            insert(DelegationRow.__table__), _delegation(mailbox, OLD, revoked=False)
        )
    kept = rules(Settings())
    assert {rule.table.name for rule in kept} == {table.name for table in TABLES}

    seen = await purge(engine, kept, now=NOW, dry_run=True)
    assert {p.table: p.rows for p in seen} == dict.fromkeys((t.name for t in TABLES), 5)
    assert await counts(engine) == dict.fromkeys((t.name for t in TABLES), 8)
    audit = next(p for p in seen if p.table == "dlg_audit_events")
    assert audit.cutoff == NOW - dt.timedelta(days=365)
    daily = next(p for p in seen if p.table == "gw_usage_daily")
    assert daily.cutoff == (NOW - dt.timedelta(days=365)).date()

    done = await purge(engine, kept, now=NOW, batch=2)  # several batches each
    assert {p.table: p.rows for p in done} == dict.fromkeys((t.name for t in TABLES), 5)
    assert await counts(engine) == dict.fromkeys((t.name for t in TABLES), 3)
    async with engine.connect() as connection:
        left = (await connection.execute(select(AuditEventRow.mailbox))).scalars().all()
    assert all(mailbox.startswith("new") for mailbox in left)
    assert {p.rows for p in await purge(engine, kept, now=NOW)} == {0}
    async with engine.connect() as connection:
        still = await connection.execute(
            select(DelegationRow.id).where(DelegationRow.revoked_at.is_(None))
        )
    assert len(still.all()) == 1, "an open delegation stays, however old"


async def test_zero_keeps_forever_and_each_table_follows_its_own_setting(engine: AsyncEngine):
    await add_rows(engine, OLD, 2, "old")
    settings = Settings(audit={"retention_days": 0}, usage={"retention_days": 30})
    done = {p.table: p for p in await purge(engine, rules(settings), now=NOW)}
    assert done["dlg_audit_events"].rows == 0
    assert done["dlg_audit_events"].cutoff is None
    assert done["gw_usage_seen"].rows == 2
    left = await counts(engine)
    assert left["dlg_audit_events"] == 2
    assert left["gw_usage_daily"] == left["gw_usage_seen"] == left["gw_usage_nonconformities"] == 0


async def test_nodes_purging_at_once_remove_each_row_once(
    engine: AsyncEngine, migrated_db_url: str
):
    await add_rows(engine, OLD, 40, "old")
    await add_rows(engine, RECENT, 2, "new")
    nodes = [create_engine(migrated_db_url) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(purge(node, rules(Settings()), now=NOW, batch=5) for node in nodes)
        )
    finally:
        for node in nodes:
            await node.dispose()
    for table in TABLES:
        assert sum(p.rows for result in results for p in result if p.table == table.name) == 40
    assert await counts(engine) == dict.fromkeys((t.name for t in TABLES), 2)


async def test_the_purger_runs_again_by_itself(engine: AsyncEngine):
    purger = Purger(engine, rules(Settings()), interval=0.05, clock=lambda: NOW)
    purger.start()
    try:
        await add_rows(engine, OLD, 3, "old")  # after its first round: a later one takes them

        async def gone() -> bool:
            return set((await counts(engine)).values()) == {0}

        await eventually(gone, "the old rows purged")
    finally:
        await purger.stop()


async def test_a_running_gateway_purges_past_its_retention(tmp_path: Path):
    settings = gateway_settings(
        tmp_path / "gateway",
        audit={"retention_days": 30, "purge_interval": 0.1},
        usage={"retention_days": 30},
    )
    async with running_stack(settings, quick_mock_settings(), tmp_path / "mock") as stack:
        engine = stack.gateway.engine
        assert engine is not None
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=31)
        await add_rows(engine, old, 2, "old")
        await add_rows(engine, old + dt.timedelta(days=2), 1, "new")

        async def purged() -> bool:
            return set((await counts(engine)).values()) == {1}

        await eventually(purged, "the gateway's own purge")


PASSWORD = "s3cret-in-the-url"


def _purge(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command("lps-gateway"), "purge", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_purge_command_dry_run_then_purge(
    engine: AsyncEngine, migrated_db_url: str, tmp_path: Path
):
    now = dt.datetime.now(dt.UTC)
    await add_rows(engine, now - dt.timedelta(days=100), 4, "old")
    await add_rows(engine, now - dt.timedelta(days=1), 1, "new")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\ndatabase_url = "{migrated_db_url}"\n'
        "[audit]\nretention_days = 90\n[usage]\nretention_days = 90\n"
    )
    dry = await asyncio.to_thread(_purge, config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    cutoff = (now - dt.timedelta(days=90)).date().isoformat()
    lines = dry.stdout.splitlines()
    assert len(lines) == len(TABLES), dry.stdout
    for table in TABLES:
        (line,) = [x for x in lines if x.startswith(f"{table.name}: ")]
        assert "4 rows older than" in line
        assert cutoff in line
        assert line.endswith("would be removed")
    assert await counts(engine) == dict.fromkeys((t.name for t in TABLES), 5)

    done = await asyncio.to_thread(_purge, config)
    assert done.returncode == 0, done.stderr
    assert all(
        line.endswith(" removed") and "would" not in line for line in done.stdout.splitlines()
    )
    assert await counts(engine) == dict.fromkeys((t.name for t in TABLES), 1)


def test_purge_command_refuses_a_database_no_gateway_ran_on(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n')
    done = _purge(config, "--dry-run")
    assert done.returncode == 1
    assert "no gateway tables" in done.stderr


async def test_purge_and_usage_never_print_the_database_password(tmp_path: Path) -> None:
    """On a database without the gateway's tables both commands name it, password masked."""
    async with postgres_database() as url:
        config = tmp_path / "gateway.toml"
        with_password = make_url(url).set(password=PASSWORD)
        config.write_text(
            f'data_dir = "{tmp_path}"\n'
            f'database_url = "{with_password.render_as_string(hide_password=False)}"\n'
        )
        done = await asyncio.to_thread(_purge, config, "--dry-run")
        usage = await asyncio.to_thread(
            CliRunner().invoke, app, ["usage", "--config", str(config)], env={"COLUMNS": "300"}
        )
    assert done.returncode == 1
    assert "no gateway tables in postgresql+asyncpg://postgres:***@" in done.stderr
    assert usage.exit_code == 1
    assert "no usage figures in postgresql+asyncpg://postgres:***@" in usage.output
    for output in (done.stdout, done.stderr, usage.output):
        assert PASSWORD not in output
