"""Ending PSC sessions: a token of an ended session is inactive however the session ended,
and a persona's sessions end on demand (test endpoint, `mock-operator end-session`, page)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.runtime.asgi_server import AsgiServer, bind_tcp
from mock_operator.personas import default_personas
from mock_operator.psc.provider import MockPsc
from mock_operator.psc.sessions import SessionStore
from mock_operator.server import MockOperator, create_app, sqlite_engine
from tests.browser import chromium
from tests.conftest import client_tls, persona_token, quick_mock_settings
from tests.mock_operator.test_psc import demo_client, is_active, login, oidc, secret_of

pytestmark = pytest.mark.slow

MOCK_OPERATOR = Path(sys.executable).parent / "mock-operator"


class Clock:
    """Time the test moves by hand: sessions idle out and expire without waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def served_psc(
    data: Path, clock: Clock, **settings: Any
) -> AsyncIterator[tuple[MockPsc, str]]:
    """The mock PSC alone on a real socket, living on `clock`; and its base URL."""
    config = quick_mock_settings().model_copy(update=settings)
    sock = bind_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    engine = sqlite_engine(data / "mock.db")
    psc = MockPsc(
        config,
        data_dir=data,
        issuer=config.issuer(port),
        personas=default_personas(),
        engine=engine,
        clock=clock,
    )
    await psc.start()
    server = AsgiServer(create_app(psc), sock)
    await server.start()
    try:
        yield psc, config.base_url(port)
    finally:
        await server.stop()
        await engine.dispose()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, verify=client_tls()) as client:
        yield client


@pytest.mark.parametrize(
    ("lifetime", "idle"), [(3_600, 600), (600, 3_600)], ids=["idle timeout", "lifetime"]
)
async def test_a_session_past_its_idle_timeout_or_lifetime_vouches_for_nothing(
    tmp_path: Path, http: httpx.AsyncClient, lifetime: int, idle: int
):
    clock = Clock()
    async with served_psc(
        tmp_path, clock, session_lifetime=lifetime, session_idle_timeout=idle
    ) as (psc, base_url):
        answer = await http.post(
            f"{base_url}/_test/token",
            json={"persona": "dr-martin", "lifetime": 86_400},  # outlives the session
        )
        token = answer.json()["access_token"]
        start = clock.now
        clock.now = start + min(lifetime, idle) - 1
        assert await is_active(http, psc, token)
        clock.now = start + min(lifetime, idle) + 1
        assert not await is_active(http, psc, token)


async def test_store_ends_only_the_persona_open_sessions(tmp_path: Path):
    clock = Clock()
    engine = sqlite_engine(tmp_path / "sessions.db")
    store = SessionStore(
        engine, lifetime=3_600, idle_timeout=600, refresh_lifetime=600, clock=clock
    )
    await store.create_schema()
    try:
        stale = await store.open("sec-bernard", "e-cps", "lps-demo")
        clock.now += 601
        logged_out = await store.open("sec-bernard", "e-cps", "lps-demo")
        assert await store.end(logged_out.sid)
        first = await store.open("sec-bernard", "e-cps", "lps-demo")
        clock.now += 1
        second = await store.open("sec-bernard", "e-cps", "lps-gateway")
        martin = await store.open("dr-martin", "card", "lps-demo")
        listed = await store.open_sessions()
        assert [s.sid for s in listed] == [martin.sid, first.sid, second.sid]
        assert listed[1].last_active == first.auth_time

        assert await store.end_persona("sec-bernard") == 2, "not the idle nor the logged-out one"
        assert await store.end_persona("sec-bernard") == 0
        assert await store.alive(first.sid) is None
        assert await store.alive(second.sid) is None
        assert await store.alive(stale.sid) is None
        assert await store.alive(martin.sid) == martin
        assert [s.sid for s in await store.open_sessions()] == [martin.sid]
    finally:
        await engine.dispose()


async def test_end_session_endpoint(mock_op: MockOperator, http: httpx.AsyncClient):
    bernard = [await persona_token(mock_op, "sec-bernard") for _ in range(2)]
    martin = await persona_token(mock_op, "dr-martin")
    async with demo_client(mock_op) as oauth:
        signed_in = await login(mock_op, oauth, http, persona="sec-bernard", means="e-cps")
    for token in [*bernard, signed_in["access_token"], martin]:
        assert await is_active(http, mock_op, token)

    url = f"{mock_op.http_url}/_test/end-session"
    answer = await http.post(url, json={"persona": "899700000003"})  # by idNat
    assert answer.status_code == 200
    assert answer.json() == {"persona": "sec-bernard", "idnat": "899700000003", "ended": 3}
    for token in [*bernard, signed_in["access_token"]]:
        assert not await is_active(http, mock_op, token)
    assert await is_active(http, mock_op, martin), "another persona's session goes on"
    refresh = await http.post(
        oidc(mock_op, "token"),
        data={"grant_type": "refresh_token", "refresh_token": signed_in["refresh_token"]},
        auth=("lps-demo", secret_of(mock_op, "lps-demo")),
    )
    assert refresh.json()["error"] == "invalid_grant", "no new token from an ended session"

    assert (await http.post(url, json={"persona": "sec-bernard"})).json()["ended"] == 0
    unknown = await http.post(url, json={"persona": "nobody"})
    assert unknown.status_code == 404
    assert "sec-bernard" in unknown.json()["detail"], "the known personas are listed"


async def mock_operator_command(*args: str) -> tuple[int | None, str, str]:
    """`mock-operator ARGS` as a user runs it, while this event loop keeps serving the mock."""
    process = await asyncio.create_subprocess_exec(
        str(MOCK_OPERATOR),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode, out.decode(), err.decode()


async def test_end_session_command(mock_op: MockOperator, http: httpx.AsyncClient):
    tokens = [await persona_token(mock_op, "sec-bernard") for _ in range(3)]
    martin = await persona_token(mock_op, "dr-martin")
    url = mock_op.http_url

    done = await mock_operator_command("end-session", "sec-bernard", "--url", url)
    assert done == (0, "3 PSC sessions of sec-bernard ended\n", "")
    for token in tokens:
        assert not await is_active(http, mock_op, token)
    assert await is_active(http, mock_op, martin)

    code, out, err = await mock_operator_command("end-session", "nobody", "--url", url)
    assert (code, out) == (1, "")
    assert "refused: unknown persona; known: dr-martin" in err

    with socket.socket() as bound_not_listening:  # connections to it are refused
        bound_not_listening.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{bound_not_listening.getsockname()[1]}"
        code, out, err = await mock_operator_command("end-session", "sec-bernard", "--url", nowhere)
    assert (code, out) == (1, "")
    assert f"cannot reach the mock operator at {nowhere}" in err


async def test_sessions_page_ends_a_persona_sessions(
    mock_op: MockOperator, http: httpx.AsyncClient
):
    bernard = await persona_token(mock_op, "sec-bernard")
    martin = await persona_token(mock_op, "dr-martin")
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{mock_op.issuer}/ciba")
        await page.get_by_role("link", name="Sessions PSC ouvertes").click()
        await page.wait_for_url(f"{mock_op.issuer}/sessions")
        assert "loopback" in await page.content()
        row = page.get_by_role("row").filter(has_text="sec-bernard")
        assert await row.count() == 1
        cells = await row.get_by_role("cell").all_inner_texts()
        assert cells[:3] == ["Sophie BERNARD", "e-CPS", "lps-demo"]

        await page.get_by_role("button", name="Terminer la session de Sophie BERNARD").click()
        status = page.get_by_role("status")
        await status.wait_for()
        assert await status.inner_text() == "1 session PSC de Sophie BERNARD terminée."
        # the status is the answer to the POST that ended the sessions: they are over
        assert not await is_active(http, mock_op, bernard)
        assert await page.get_by_role("row").filter(has_text="sec-bernard").count() == 0
        assert await page.get_by_role("row").filter(has_text="dr-martin").count() == 1
    assert await is_active(http, mock_op, martin)
