"""Operations endpoints: /healthz (liveness), /readyz (database and backends answer; terse on
the public listener, detailed on the operations listener), /metrics (Prometheus). Probes run
over real sockets against small greeting servers, the app through httpx, and a whole gateway
in front of the mock operator."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from delegation.db import create_engine, migrate
from delegation.service import DelegationService
from gateway.api.app import create_api
from gateway.api.ops import create_ops_app
from gateway.health import OK, REGISTRY_EMPTY, Readiness, backend_check, database_check
from gateway.metrics import Metrics
from gateway.runtime.tls import ensure_dev_certificate, server_context
from gateway.settings import BackendSettings, Settings
from psc_auth import TokenValidator, ValidatorConfig
from tests.support.net import closed_port
from tests.support.stacks import Stack, gateway_settings

MARTIN = "claire.martin@medecin.mssante.fr"


# -- helpers -------------------------------------------------------------------------------


@dataclass
class Greeter:
    """A listener that says `greeting` (or nothing) and records what clients send."""

    port: int
    connections: int = 0
    received: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def greeter(
    greeting: bytes | None, *, tls: ssl.SSLContext | None = None, close: bool = False
) -> AsyncIterator[Greeter]:
    state = Greeter(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            if greeting is not None:
                writer.write(greeting)
                await writer.drain()
            if not close:
                line = await reader.readline()
                state.received.append(line)
                if line:
                    writer.write(b"* BYE\r\n" if line.endswith(b"LOGOUT\r\n") else b"221 bye\r\n")
                    await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[DelegationService]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    await migrate(url)
    engine = create_engine(url)
    try:
        yield DelegationService(engine)
    finally:
        await engine.dispose()


def settings_with(tmp_path: Path, **backends: BackendSettings) -> Settings:
    return Settings(data_dir=tmp_path, backends=backends)


def backend(imap_port: int, smtp_port: int, **extra: Any) -> BackendSettings:
    return BackendSettings(imap_port=imap_port, smtp_port=smtp_port, **extra)


# -- probes --------------------------------------------------------------------------------


async def test_backend_probe_accepts_greetings_and_says_goodbye():
    async with (
        greeter(b"* OK [CAPABILITY IMAP4rev1] ready\r\n") as imap,
        greeter(b"220-first line\r\n220 ready\r\n") as smtp,
    ):
        assert await backend_check("imap", "127.0.0.1", imap.port, within=1) == OK
        assert await backend_check("smtp", "127.0.0.1", smtp.port, within=1) == OK
        # a polite client: the backend logs a logout, not a dropped connection
        for _ in range(50):
            if imap.received and smtp.received:
                break
            await asyncio.sleep(0.01)
    assert imap.received == [b"ready LOGOUT\r\n"]
    assert smtp.received == [b"QUIT\r\n"]


async def test_backend_probe_reasons():
    port = closed_port()
    refused = await backend_check("imap", "127.0.0.1", port, within=1)
    assert refused == f"connection refused (127.0.0.1:{port})"
    async with greeter(b"* BYE too busy\r\n") as busy:
        answer = await backend_check("imap", "127.0.0.1", busy.port, within=1)
        assert answer.startswith("unexpected imap greeting")
        assert "too busy" in answer
    async with greeter(b"* OK imap here\r\n") as wrong:
        answer = await backend_check("smtp", "127.0.0.1", wrong.port, within=1)
        assert answer.startswith("unexpected smtp greeting"), "an IMAP server on the SMTP port"
    async with greeter(None) as silent:
        started = time.monotonic()
        answer = await backend_check("smtp", "127.0.0.1", silent.port, within=0.3)
        assert answer == f"no greeting from 127.0.0.1:{silent.port} within 0.3s"
        assert time.monotonic() - started < 1.5
    async with greeter(b"* OK " + b"x" * 100_000) as endless:
        answer = await backend_check("imap", "127.0.0.1", endless.port, within=1)
        assert answer == f"greeting from 127.0.0.1:{endless.port} too long"
    async with greeter(None, close=True) as rude:
        answer = await backend_check("imap", "127.0.0.1", rude.port, within=1)
        assert answer == f"127.0.0.1:{rude.port} closed the connection before greeting"


async def test_backend_probe_over_implicit_tls(tmp_path: Path):
    cert, key = ensure_dev_certificate(tmp_path / "tls")
    tls = server_context(cert, key)
    async with (
        greeter(b"* OK imaps ready\r\n", tls=tls) as imaps,
        greeter(b"220 smtps ready\r\n", tls=tls) as smtps,
    ):
        trusting = backend(
            imaps.port, smtps.port, imap_tls="implicit", smtp_tls="implicit", ca_file=cert
        )
        distrusting = backend(imaps.port, smtps.port, imap_tls="implicit", smtp_tls="implicit")
        plain = backend(imaps.port, smtps.port, connect_timeout=0.5)
        settings = settings_with(tmp_path, good=trusting, bad=distrusting, plain=plain)
        probe = Readiness(settings, _NoDatabase())
        ready, checks = await probe.check()
    assert not ready
    assert checks["backend:good:imap"] == OK
    assert checks["backend:good:smtp"] == OK
    assert "CERTIFICATE_VERIFY_FAILED" in checks["backend:bad:imap"]
    assert checks["backend:bad:imap"].startswith("tls: ")
    # a TLS server greets nobody in clear: the probe of a misconfigured backend fails
    assert checks["backend:plain:imap"] != OK


class _NoDatabase(DelegationService):
    """A registry whose database always answers (for probes that test backends only)."""

    def __init__(self) -> None:
        pass

    async def ping(self) -> None:
        return None


class _BrokenDatabase(DelegationService):
    def __init__(self, message: str) -> None:
        self.message = message

    async def ping(self) -> None:
        raise RuntimeError(self.message)


async def test_database_probe(registry: DelegationService, tmp_path: Path):
    assert await database_check(registry) == OK
    missing = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    try:
        answer = await database_check(DelegationService(missing))
    finally:
        await missing.dispose()
    assert answer.startswith("OperationalError: unable to open database file")
    assert "[SQL" not in answer, "no SQL nor SQLAlchemy link in a probe's reason"


async def test_database_reason_never_shows_the_password(tmp_path: Path):
    secret = "s3cr3t/pw"
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"postgresql://lps:{secret.replace('/', '%2F')}@127.0.0.1:{closed_port()}/x",
    )
    chatty = _BrokenDatabase(f"login lps:{secret} refused, also lps:s3cr3t%2Fpw\nmore\nlines")
    ready, checks = await Readiness(settings, chatty).check()
    assert not ready
    assert secret not in checks["database"]
    assert "s3cr3t" not in checks["database"]
    assert checks["database"] == "RuntimeError: login lps:*** refused, also lps:***"

    # and a real driver failing to connect to that URL (nothing listens there)
    engine = create_engine(settings.database())
    try:
        ready, checks = await Readiness(settings, DelegationService(engine)).check()
    finally:
        await engine.dispose()
    assert not ready
    assert checks["database"] != OK
    assert "s3cr3t" not in checks["database"]
    assert len(checks["database"]) <= 160


# -- readiness -----------------------------------------------------------------------------


async def test_readiness_names_every_check(registry: DelegationService, tmp_path: Path):
    dead = closed_port()
    async with greeter(b"* OK\r\n") as imap, greeter(b"220 hi\r\n") as smtp:
        settings = settings_with(
            tmp_path,
            modern=backend(imap.port, smtp.port),
            old=backend(dead, smtp.port),
        )
        ready, checks = await Readiness(settings, registry).check()
    assert not ready
    assert checks == {
        "database": OK,
        "registry": REGISTRY_EMPTY,
        "backend:modern:imap": OK,
        "backend:modern:smtp": OK,
        "backend:old:imap": f"connection refused (127.0.0.1:{dead})",
        "backend:old:smtp": OK,
    }


async def test_readiness_probes_concurrently_with_capped_timeouts(
    registry: DelegationService, tmp_path: Path
):
    async with greeter(None) as silent_a, greeter(None) as silent_b:
        settings = settings_with(
            tmp_path,
            slow=backend(silent_a.port, silent_b.port, connect_timeout=60),
            quick=backend(silent_a.port, silent_b.port, connect_timeout=0.2),
        )
        started = time.monotonic()
        ready, checks = await Readiness(settings, registry).check()
        elapsed = time.monotonic() - started
    assert not ready
    assert checks["backend:slow:imap"].endswith("within 2s"), "capped at 2 s, not 60 s"
    assert checks["backend:quick:smtp"].endswith("within 0.2s")
    assert elapsed < 3.5, f"four silent servers probed one after the other? {elapsed:.1f}s"


async def test_readiness_is_cached_for_a_second(registry: DelegationService, tmp_path: Path):
    now = [100.0]
    async with greeter(b"* OK\r\n") as imap, greeter(b"220 hi\r\n") as smtp:
        settings = settings_with(tmp_path, modern=backend(imap.port, smtp.port))
        probe = Readiness(settings, registry, clock=lambda: now[0])
        answers = await asyncio.gather(*(probe.check() for _ in range(25)))
        assert all(answer == (True, answers[0][1]) for answer in answers)
        assert (imap.connections, smtp.connections) == (1, 1), "a storm costs one probe"
        now[0] += 0.9
        await probe.check()
        assert imap.connections == 1
        now[0] += 0.2
        await probe.check()
        assert (imap.connections, smtp.connections) == (2, 2), "a second later, a new probe"
    # the cached dictionary is not the caller's to change
    answers[0][1]["database"] = "tampered"
    assert (await probe.check())[1]["database"] == OK


# -- the HTTP endpoints, in process --------------------------------------------------------


@pytest.fixture
async def validator() -> AsyncIterator[TokenValidator]:
    value = TokenValidator(ValidatorConfig(issuer="http://127.0.0.1:9/auth/realms/none"))
    try:
        yield value
    finally:
        await value.aclose()


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def test_endpoints_in_process(
    registry: DelegationService, validator: TokenValidator, tmp_path: Path
):
    metrics = Metrics()
    metrics.logins.labels("imap", "ok").inc(3)
    async with greeter(b"* OK\r\n") as imap, greeter(b"220 hi\r\n") as smtp:
        settings = settings_with(tmp_path, modern=backend(imap.port, smtp.port))
        app = create_api(
            registry, validator, metrics=metrics, readiness=Readiness(settings, registry)
        )
        async with client(app) as http:
            live = await http.get("/healthz")
            ready = await http.get("/readyz")
            scraped = await http.get("/metrics")
            schema = (await http.get("/openapi.json")).json()
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    assert ready.status_code == 200, "an empty registry keeps the node ready"
    assert ready.json() == {
        "status": "ready",
        "checks": {
            "database": OK,
            "registry": REGISTRY_EMPTY,
            "backend:modern:imap": OK,
            "backend:modern:smtp": OK,
        },
    }
    assert ready.headers["cache-control"] == "no-store"
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    assert samples[("lpsgw_logins_total", (("protocol", "imap"), ("result", "ok")))] == 3
    assert samples[("lpsgw_open_sessions", (("protocol", "smtp"),))] == 0
    assert not {"/healthz", "/readyz", "/metrics"} & set(schema["paths"])


async def test_unready_is_503_terse_in_public_detailed_for_operations(
    registry: DelegationService, validator: TokenValidator, tmp_path: Path
):
    dead = closed_port()
    async with greeter(b"* OK\r\n") as imap:
        settings = settings_with(tmp_path, modern=backend(imap.port, dead))
        readiness = Readiness(settings, registry)
        app = create_api(registry, validator, readiness=readiness)
        async with client(app) as http:
            answer = await http.get("/readyz")
            live = await http.get("/healthz")
            scraped = await http.get("/metrics")
        async with client(create_ops_app(readiness.check, Metrics())) as http:
            detailed = await http.get("/readyz")
            ops_metrics = await http.get("/metrics")
            ops_live = await http.get("/healthz")
            no_api = await http.get("/v1/me")
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "unready",
        "checks": {
            "database": OK,
            "registry": REGISTRY_EMPTY,
            "backend:modern:imap": OK,
            "backend:modern:smtp": "failed",
        },
    }
    assert "127.0.0.1" not in answer.text
    assert str(dead) not in answer.text
    assert "refused" not in answer.text
    assert live.status_code == 200, "liveness does not depend on backends"
    assert scraped.status_code == 404, "no metrics given, none served"
    assert detailed.status_code == 503
    body = detailed.json()
    assert body["status"] == "unready"
    assert body["checks"]["backend:modern:smtp"] == f"connection refused (127.0.0.1:{dead})"
    assert body["checks"]["backend:modern:imap"] == OK
    assert detailed.headers["cache-control"] == "no-store"
    assert ops_metrics.status_code == 200
    assert ops_live.json() == {"status": "ok"}
    assert no_api.status_code == 404, "the operations listener serves no API"


async def test_readyz_without_readiness_checks_the_database(
    validator: TokenValidator, tmp_path: Path, registry: DelegationService
):
    async with client(create_api(registry, validator)) as http:
        answer = await http.get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ready", "checks": {"database": OK}}
    missing = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'x.db'}")
    try:
        async with client(create_api(DelegationService(missing), validator)) as http:
            answer = await http.get("/readyz")
    finally:
        await missing.dispose()
    assert answer.status_code == 503
    assert answer.json() == {"status": "unready", "checks": {"database": "failed"}}


# -- a whole gateway in front of the mock operator -----------------------------------------


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def readyz_until(url: str, status: int, deadline: float = 5.0) -> httpx.Response:
    """/readyz caches for a second: ask until it says `status` (or give up)."""
    async with httpx.AsyncClient(timeout=10) as http:
        stop = time.monotonic() + deadline
        while True:
            answer = await http.get(f"{url}/readyz")
            if answer.status_code == status or time.monotonic() > stop:
                return answer
            await asyncio.sleep(0.2)


async def test_stack_health_and_readiness(stack: Stack):
    url = stack.gateway.http_url
    async with httpx.AsyncClient(timeout=10) as http:
        live = await http.get(f"{url}/healthz")
        ready = await http.get(f"{url}/readyz")
    assert live.status_code == 200
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "checks": {
            "database": OK,
            "registry": OK,
            "backend:modern:imap": OK,
            "backend:modern:smtp": OK,
        },
    }

    assert stack.mock.imap is not None
    await stack.mock.imap.stop()  # the backend's IMAP listener goes away
    unready = await readyz_until(url, 503)
    assert unready.status_code == 503, unready.text
    checks = unready.json()["checks"]
    assert checks == {
        "database": OK,
        "registry": OK,
        "backend:modern:imap": "failed",
        "backend:modern:smtp": OK,
    }
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{url}/healthz")).status_code == 200, "still alive"


class TestBackendOnAClosedPort:
    @pytest.fixture
    def backend_overrides(self) -> dict[str, Any]:
        return {"smtp_port": closed_port()}

    async def test_public_readyz_does_not_name_it(
        self, stack: Stack, backend_overrides: dict[str, Any]
    ):
        answer = await readyz_until(stack.gateway.http_url, 503, deadline=0)
        assert answer.status_code == 503
        assert answer.json() == {
            "status": "unready",
            "checks": {
                "database": OK,
                "registry": OK,
                "backend:modern:imap": OK,
                "backend:modern:smtp": "failed",
            },
        }
        port = backend_overrides["smtp_port"]
        for secret in ("127.0.0.1", str(port), "refused", "connection"):
            assert secret not in answer.text, "an unauthenticated caller learns no backend"
        assert stack.gateway.ops_port is None


class TestOperationsListener:
    @pytest.fixture
    def stack_settings(self, tmp_path: Path) -> Settings:
        return gateway_settings(tmp_path / "gateway", ops={"port": 0})

    @pytest.fixture
    def backend_overrides(self) -> dict[str, Any]:
        return {"smtp_port": closed_port()}

    async def test_readyz_and_metrics_move_there(
        self, stack: Stack, backend_overrides: dict[str, Any]
    ):
        ops = stack.gateway.ops_url
        assert ops is not None
        assert stack.gateway.ops_port not in (None, 0, stack.gateway.http_port)
        public = stack.gateway.http_url
        detailed = await readyz_until(ops, 503, deadline=0)
        terse = await readyz_until(public, 503, deadline=0)
        async with httpx.AsyncClient(timeout=10) as http:
            ops_metrics = await http.get(f"{ops}/metrics")
            ops_live = await http.get(f"{ops}/healthz")
            ops_api = await http.get(f"{ops}/v1/me")
            public_metrics = await http.get(f"{public}/metrics")
            public_live = await http.get(f"{public}/healthz")
        port = backend_overrides["smtp_port"]
        assert detailed.status_code == 503
        smtp = detailed.json()["checks"]["backend:modern:smtp"]
        assert smtp == f"connection refused (127.0.0.1:{port})"
        assert terse.json()["checks"]["backend:modern:smtp"] == "failed"
        assert str(port) not in terse.text
        assert ops_metrics.status_code == 200
        assert "lpsgw_logins_total" in ops_metrics.text
        assert ops_live.status_code == 200
        assert ops_api.status_code == 404, "no API on the operations listener"
        assert public_metrics.status_code == 404, "metrics left the public listener"
        assert public_live.status_code == 200


@contextlib.contextmanager
def imap_session(port: int, user: str, token: str) -> Iterator[imaplib.IMAP4]:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        client.authenticate(
            "XOAUTH2", lambda _: f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
        )
        yield client
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()


async def test_stack_metrics(stack: Stack):
    url = f"{stack.gateway.http_url}/metrics"
    async with httpx.AsyncClient(timeout=10) as http:
        before = await http.get(url)
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain; version=")
        families = {f.name: f for f in text_string_to_metric_families(before.text)}
        assert families["lpsgw_open_sessions"].type == "gauge"
        assert families["lpsgw_logins"].type == "counter"
        for name in ("lpsgw_relayed_bytes", "lpsgw_backend_errors", "lpsgw_messages"):
            assert name in families
        initial = scrape(before.text)
        assert initial[("lpsgw_logins_total", (("protocol", "imap"), ("result", "ok")))] == 0
        assert initial[("lpsgw_open_sessions", (("protocol", "imap"),))] == 0

        token = await stack.token("dr-martin")
        opened = asyncio.Event()
        release = asyncio.Event()
        loop = asyncio.get_running_loop()

        def session() -> str:
            with imap_session(stack.imap_port, MARTIN, token) as imap:
                loop.call_soon_threadsafe(opened.set)
                asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)
                typ, _ = imap.select("INBOX")
                return str(typ)

        worker = asyncio.create_task(asyncio.to_thread(session))
        await asyncio.wait_for(opened.wait(), 10)
        during = scrape((await http.get(url)).text)
        release.set()
        assert await worker == "OK"
        after = scrape((await http.get(url)).text)
    assert during[("lpsgw_open_sessions", (("protocol", "imap"),))] == 1
    assert during[("lpsgw_logins_total", (("protocol", "imap"), ("result", "ok")))] == 1
    relayed = [v for (name, _), v in after.items() if name == "lpsgw_relayed_bytes_total"]
    assert sum(relayed) > 0, "the SELECT's answer was carried and counted"
