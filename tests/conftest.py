"""Fixtures shared by every test: optional peers, and a running mock operator on port 0."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from delegation.db import async_url, asyncpg_dsn, create_engine, migrate
from gateway.db import migrate_gateway
from gateway.settings import MockSettings
from mock_operator.server import MockOperator
from psc_auth.trust import system_trust

# every `lps-gateway serve` and `demo` a test starts runs one process, as before workers
# existed (the suite is CPU-bound); the environment beats a file's [server] workers: a
# test wanting more sets LPSGW_SERVER__WORKERS, as tests/test_workers.py does
os.environ.setdefault("LPSGW_SERVER__WORKERS", "1")
REQUIRE_PEERS = os.environ.get("LPS_REQUIRE_PEERS") == "1"
PG_URL = os.environ.get("LPS_TEST_DATABASE_URL")


def client_tls() -> ssl.SSLContext:
    """The one TLS context for the tests' short-lived HTTP clients (the gateway's own, see
    `psc_auth.trust`): httpx loads the whole CA bundle for each new client otherwise."""
    return system_trust()


async def persona_token(mock: MockOperator, persona: str = "dr-martin", **extra: Any) -> str:
    """A fresh PSC access token for a persona, from the running mock's test endpoint."""
    async with httpx.AsyncClient(timeout=10, verify=client_tls()) as http:
        answer = await http.post(f"{mock.http_url}/_test/token", json={"persona": persona, **extra})
    answer.raise_for_status()
    value: str = answer.json()["access_token"]
    return value


def require_peer(available: bool, reason: str) -> None:
    """Skip when an optional peer is missing; fail instead under LPS_REQUIRE_PEERS=1 (CI)."""
    if available:
        return
    if REQUIRE_PEERS:
        pytest.fail(f"required test peer missing: {reason}")
    pytest.skip(reason)


_CONFIGURED_LOGGERS = ("", "mail.log", "httpx", "httpcore", "aiosqlite", "uvicorn.error", "alembic")


@pytest.fixture(autouse=True)
def _logging_as_found() -> Any:
    """A test that runs a command in-process configures logging for the whole worker
    (levels, handlers, filters); put it back, so that no later test depends on the order
    tests ran in."""
    saved = {
        name: (logger.level, list(logger.handlers), list(logger.filters))
        for name in _CONFIGURED_LOGGERS
        if (logger := logging.getLogger(name))
    }
    yield
    for name, (level, handlers, filters) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.filters[:] = filters


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked `slow` first, then the others by their number of tests: pytest-xdist
    hands whole modules to its workers in this order (`--dist loadfile`, reordering off),
    so the run ends on short modules and the workers finish together."""
    per_module: dict[str, int] = {}
    slow: set[str] = set()
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        per_module[module] = per_module.get(module, 0) + 1
        if item.get_closest_marker("slow") is not None:
            slow.add(module)
    order = {
        module: rank
        for rank, module in enumerate(
            sorted(per_module, key=lambda m: (m not in slow, -per_module[m]))
        )
    }
    items.sort(key=lambda item: order[item.nodeid.split("::", 1)[0]])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Captured output with a lone surrogate (bytes a hostile client sent, decoded with
    surrogateescape) cannot cross to the xdist controller: escape it in the report."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(name, _escaped(content)) for name, content in report.sections]


def quick_mock_settings() -> MockSettings:
    """Mock settings for tests: any free port, CIBA approved only when a test says so."""
    return MockSettings(
        http_port=0,
        imap_port=0,
        smtp_port=0,
        historic_imap_port=0,
        ciba_auto_approve_after=None,
        ciba_interval=1,
        auth_failure_delay=0,
    )


@pytest.fixture
def mock_settings() -> MockSettings:
    return quick_mock_settings()


@pytest.fixture
async def mock_op(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[MockOperator]:
    operator = MockOperator(mock_settings, tmp_path / "mock-operator")
    await operator.start()
    try:
        yield operator
    finally:
        await operator.stop()


_TEMPLATES: dict[str, str] = {}  # kind -> the SQLite file or the PostgreSQL database name


def _database_url(name: str) -> str:
    assert PG_URL is not None
    return make_url(async_url(PG_URL)).set(database=name).render_as_string(hide_password=False)


async def _migrate_both(url: str) -> None:
    await migrate(url)
    await migrate_gateway(url)


def _drop_postgres_template(name: str) -> None:
    async def drop() -> None:
        assert PG_URL is not None
        admin = await asyncpg.connect(asyncpg_dsn(PG_URL), timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    with contextlib.suppress(Exception):
        asyncio.run(drop())


async def migrated_template(kind: str, admin: asyncpg.Connection | None = None) -> str:
    """A database migrated to head (registry and gateway tables), made once per test
    process; tests that need one copy it instead of replaying every migration (1-2 s on
    PostgreSQL). The migrations have their own tests, on empty databases."""
    if kind in _TEMPLATES:
        return _TEMPLATES[kind]
    if kind == "sqlite":
        path = Path(tempfile.mkdtemp(prefix="lps-registry-template-")) / "template.db"
        await _migrate_both(f"sqlite+aiosqlite:///{path}")
        atexit.register(shutil.rmtree, path.parent, True)
        _TEMPLATES[kind] = str(path)
    else:
        assert admin is not None
        name = f"lps_tmpl_{uuid.uuid4().hex[:16]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        atexit.register(_drop_postgres_template, name)
        await _migrate_both(_database_url(name))
        _TEMPLATES[kind] = name
    return _TEMPLATES[kind]


@contextlib.asynccontextmanager
async def postgres_database(*, migrated: bool = False) -> AsyncIterator[str]:
    """A uniquely named database on the test server, dropped afterwards: empty, or
    `migrated` to head (copied from this process's template)."""
    require_peer(PG_URL is not None, "LPS_TEST_DATABASE_URL is not set")
    assert PG_URL is not None
    try:
        admin = await asyncpg.connect(asyncpg_dsn(PG_URL), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        require_peer(False, f"PostgreSQL at LPS_TEST_DATABASE_URL unreachable: {exc}")
        raise
    name = f"lps_dlg_{uuid.uuid4().hex[:16]}"
    template = f' TEMPLATE "{await migrated_template("postgresql", admin)}"' if migrated else ""
    await admin.execute(f'CREATE DATABASE "{name}"{template}')
    # a test database is thrown away: commits need not wait for the disk
    await admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    try:
        yield _database_url(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def fresh_database(kind: str, directory: Path) -> AsyncIterator[str]:
    """An empty database (not migrated): "sqlite", a file in `directory`, or "postgresql",
    one of its own on the test server."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'delegation.db'}"
        return
    async with postgres_database() as url:
        yield url


@contextlib.asynccontextmanager
async def migrated_database(kind: str, directory: Path) -> AsyncIterator[str]:
    """As `fresh_database`, already migrated to head."""
    if kind == "sqlite":
        path = directory / "delegation.db"
        shutil.copyfile(await migrated_template("sqlite"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    async with postgres_database(migrated=True) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def fresh_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database (not migrated)."""
    async with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def migrated_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with the registry's and the gateway's tables (migrated to head)."""
    async with migrated_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def migrated_engine(migrated_db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh database with the registry's and the gateway's tables."""
    engine = create_engine(migrated_db_url)
    try:
        yield engine
    finally:
        await engine.dispose()
