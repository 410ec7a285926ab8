"""Hostile callers of the migrations page's `/ui/admin/migrations.json`: nobody logged in,
forged or half-made sessions, a practitioner, the local admin secret (an API credential,
not a page's) get nothing of the records; every answer is `no-store`; query strings
change nothing, and the page starts nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from gateway.web.sessions import COOKIE
from tests.conftest import quick_mock_settings
from tests.support.pages import log_in
from tests.support.stacks import Stack, gateway_settings, running_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

ADMIN = "899700000008"  # adm-roux
DUPONT = "jean.dupont@medecin.mssante.fr"
JSON = "/ui/admin/migrations.json"


async def running(directory: Path) -> AsyncIterator[Stack]:
    settings = gateway_settings(directory / "gateway", admin={"idnats": [ADMIN]})
    async with running_stack(settings, quick_mock_settings(), directory / "mock") as started:
        yield started


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway for the probes that read (a stack each was nearly all of the module's
    time): each makes the same one record (`a_record`), and none of them adds another."""
    async for started in running(tmp_path_factory.mktemp("migrations-page-probes")):
        yield started


@pytest_asyncio.fixture(loop_scope="module")
async def empty(tmp_path: Path) -> AsyncIterator[Stack]:
    """A gateway of its own, without any record, for the probe that says nothing starts."""
    async for started in running(tmp_path):
        yield started


async def a_record(stack: Stack) -> None:
    assert stack.gateway.migrations is not None
    journal = await stack.gateway.migrations.checkpoints.journal(DUPONT, "modern", "elsewhere")
    await journal.set_state("copying")
    await journal.set_state("failed", error="IMAP: connexion refusée")


def no_store(answer: httpx.Response) -> None:
    assert answer.headers.get("cache-control") == "no-store", answer.headers
    assert answer.headers.get("x-content-type-options") == "nosniff"


FORGED = [None, "x", "A" * 4000, "../../admin.secret", "' OR 1=1 --", "%00%ff"]
QUERIES = [
    f"?bal={DUPONT}",
    "?bal=nobody@x.fr&limit=0&offset=9999",
    "?callback=alert",
    "?since=not-a-date&state=<script>",
    "?" + "&".join(f"k{n}=v" for n in range(200)),
    "?x=" + "%ff" * 300,
]


async def test_no_session_no_records(stack: Stack) -> None:
    await a_record(stack)
    for cookie in FORGED:
        cookies = {COOKIE: cookie} if cookie is not None else None
        async with httpx.AsyncClient(base_url=stack.gateway.http_url, cookies=cookies) as http:
            answer = await http.get(JSON)
        assert answer.status_code == 303, cookie
        assert answer.headers["location"] == "/ui/login"
        assert DUPONT not in answer.text
        no_store(answer)


async def test_a_login_under_way_is_no_session(stack: Stack) -> None:
    await a_record(stack)
    async with httpx.AsyncClient(base_url=stack.gateway.http_url) as http:
        started = await http.get("/ui/login")  # a pre-login session: its cookie, no identity
        assert started.status_code == 303
        assert COOKIE in http.cookies
        answer = await http.get(JSON)
    assert answer.status_code == 303
    assert DUPONT not in answer.text


async def test_the_local_admin_secret_opens_no_page(stack: Stack) -> None:
    await a_record(stack)
    secret = (stack.gateway.settings.data_dir / "admin.secret").read_text().strip()
    async with httpx.AsyncClient(base_url=stack.gateway.http_url) as http:
        answer = await http.get(JSON, headers={"Authorization": f"Bearer {secret}"})
        api = await http.get("/admin/migrations", headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 303
    assert DUPONT not in answer.text
    assert api.status_code == 200  # the administrators' API is where the secret counts
    assert api.json()["migrations"][0]["bal"] == DUPONT


async def test_a_practitioner_is_refused(stack: Stack) -> None:
    await a_record(stack)
    site = stack.gateway.http_url
    async with httpx.AsyncClient(timeout=10) as http:
        await log_in(http, site, "dr-martin")
        answer = await http.get(f"{site}{JSON}?admin=1&idnat={ADMIN}")
    assert answer.status_code == 403
    assert DUPONT not in answer.text
    no_store(answer)


async def test_query_strings_are_ignored(stack: Stack) -> None:
    await a_record(stack)
    site = stack.gateway.http_url
    async with httpx.AsyncClient(timeout=10) as http:
        await log_in(http, site, "adm-roux")
        plain = await http.get(f"{site}{JSON}")
        [row] = plain.json()["rows"]
        assert (row["bal"], row["error"]) == (DUPONT, "IMAP: connexion refusée")
        for query in QUERIES:
            asked = await http.get(f"{site}{JSON}{query}")
            page = await http.get(f"{site}/ui/admin/migrations{query}")
            assert asked.status_code == 200, query
            no_store(asked)
            assert asked.headers["content-type"] == "application/json"
            assert asked.json()["rows"] == plain.json()["rows"], query
            assert page.status_code == 200, query
            assert page.headers["cache-control"] == "no-store"
            assert DUPONT in page.text
            for reflected in ("k199", "callback", "nobody@x.fr", "not-a-date", "offset"):
                assert reflected not in page.text


async def test_the_page_starts_nothing(empty: Stack) -> None:
    stack = empty
    site = stack.gateway.http_url
    async with httpx.AsyncClient(timeout=10) as http:
        await log_in(http, site, "adm-roux")
        for path in ("/ui/admin/migrations", JSON):
            answer = await http.post(
                f"{site}{path}", json={"bals": [DUPONT], "to": "modern", "action": "copy"}
            )
            assert answer.status_code == 405, path
        view = await http.get(f"{site}{JSON}")
    assert view.json()["rows"] == []
    assert stack.gateway.migrations is not None
    assert await stack.gateway.migrations.status() == []
