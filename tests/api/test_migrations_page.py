"""The page `/ui/admin/migrations` and its `migrations.json`, on a running gateway with the
demo's backends: an administrator logged in with the mock PSC sees each BAL's copy (state,
counts, size, timings), others get 403, nobody logged in goes to the login; strings from
the BAL records are escaped. In Chromium: a real copy slowed with `max_rate` is followed
live, bar then "copiée", with no reload."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from delegation.service import DelegationService
from gateway.api.admin import AdminConfig
from gateway.api.app import create_api
from gateway.bal_migration.jobs import Migrations
from gateway.mss.historic_ws import INBOX
from gateway.runtime.asgi_server import AsgiServer, bind_tcp
from gateway.settings import MockSettings
from gateway.usage.report import UsageReport
from gateway.web.routes import WebConfig
from mock_operator.historic.store import Delivery
from mock_operator.server import MockOperator
from psc_auth import TokenValidator, ValidatorConfig
from tests.bal_migration.test_migrate_command import count, demo_backends
from tests.browser import chromium
from tests.gateway.test_backend_tools import DUPONT, letter
from tests.support.pages import log_in
from tests.support.stacks import Stack, gateway_settings, running_stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

ADMIN = "899700000008"  # persona adm-roux, Camille ROUX
PAGE = "/ui/admin/migrations"
JSON = "/ui/admin/migrations.json"
HOSTILE_BAL = '<script>window.pwned="bal"</script>@x.fr'
HOSTILE_ERROR = '<img src=x onerror="window.pwned=1">"&'
SEEDED = 240  # messages added to jean.dupont's historic INBOX for the live test
RATE = 50.0  # messages a second: the copy lasts about five seconds, two polls at least


@pytest.fixture
async def demo(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Stack]:
    settings = gateway_settings(tmp_path / "gateway", admin={"idnats": [ADMIN]})
    async with running_stack(settings, mock_settings, tmp_path / "mock", demo_backends) as s:
        yield s


def migrations(stack: Stack) -> Migrations:
    assert stack.gateway.migrations is not None
    return stack.gateway.migrations


async def copied(stack: Stack) -> bool:
    [entry] = await migrations(stack).status(DUPONT)
    return bool(entry["job"]["state"] == "done")


async def add_hostile_record(stack: Stack) -> None:
    journal = await migrations(stack).checkpoints.journal(HOSTILE_BAL, "historic", "modern")
    await journal.set_state("copying")
    await journal.set_state("failed", error=HOSTILE_ERROR)


def row_cells(html: str, bal: str) -> str:
    start = html.index(f'data-bal="{bal}"')
    return html[start : html.index("</tr>", start)]


async def test_the_administrator_sees_each_bal(demo: Stack) -> None:
    on_historic = await count(demo, "historic")
    await migrations(demo).start([DUPONT], "modern", "copy", actor="test")
    await eventually(lambda: copied(demo), "the copy of jean.dupont done")
    site = demo.gateway.http_url
    async with httpx.AsyncClient(timeout=10) as http:
        await log_in(http, site, "adm-roux")
        page = await http.get(f"{site}{PAGE}")
        view = await http.get(f"{site}{JSON}")
        usage = await http.get(f"{site}/ui/admin/usage")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    row = row_cells(page.text, DUPONT)
    assert "historic → modern" in row
    assert "<strong>copiée</strong>" in row
    assert "copie : succès" in row
    assert f'<td class="messages">{on_historic}</td>' in row
    assert " Ko</td>" in row or " o</td>" in row
    assert " → " in row.split('class="timings">')[1]
    assert "<br>en " in row, "how long the copy took"
    assert "<progress" not in row, "a bar for running copies only"
    assert f"{on_historic}/{on_historic} messages" in row
    assert 'href="/ui/admin/usage"' in page.text
    assert 'href="/ui/admin/migrations"' in usage.text, "the two pages link to each other"

    assert view.status_code == 200
    assert view.headers["cache-control"] == "no-store"
    assert view.headers["content-type"] == "application/json"
    body = view.json()
    assert (body["available"], body["hidden"]) == (True, 0)
    [shown] = body["rows"]
    assert (shown["bal"], shown["source"], shown["target"]) == (DUPONT, "historic", "modern")
    assert (shown["state"], shown["state_code"]) == ("copiée", "copied")
    assert shown["messages"] == str(on_historic)
    [entry] = body["migrations"]
    assert entry["copies"][0]["messages"] == on_historic
    assert entry["job"]["result"]["appended"] == on_historic
    assert "differences" not in entry["job"]


async def test_others_are_refused_strangers_sent_to_the_login_strings_escaped(
    demo: Stack,
) -> None:
    await add_hostile_record(demo)
    site = demo.gateway.http_url
    async with httpx.AsyncClient(timeout=10) as anonymous:
        for path in (PAGE, JSON):
            answer = await anonymous.get(f"{site}{path}")
            assert answer.status_code == 303, path
            assert answer.headers["location"] == "/ui/login"
            assert "x.fr" not in answer.text
    async with httpx.AsyncClient(timeout=10) as practitioner:
        await log_in(practitioner, site, "dr-martin")
        refused = await practitioner.get(f"{site}{PAGE}")
        refused_view = await practitioner.get(f"{site}{JSON}")
    assert refused.status_code == 403
    assert "Page réservée aux administrateurs de l&#39;opérateur." in refused.text
    assert "x.fr" not in refused.text
    assert refused_view.status_code == 403
    assert refused_view.json() == {"detail": "Page réservée aux administrateurs de l'opérateur."}

    async with httpx.AsyncClient(timeout=10) as http:
        await log_in(http, site, "adm-roux")
        page = await http.get(f"{site}{PAGE}")
        view = await http.get(f"{site}{JSON}")
    assert page.status_code == 200
    assert "<script>window.pwned" not in page.text
    assert "<img src=x" not in page.text
    assert "&lt;script&gt;window.pwned=&#34;bal&#34;&lt;/script&gt;@x.fr" in page.text
    assert "&lt;img src=x onerror=&#34;window.pwned=1&#34;&gt;&#34;&amp;" in page.text
    assert "<strong>en échec</strong>" in page.text
    [shown] = view.json()["rows"]
    assert (shown["bal"], shown["error"]) == (HOSTILE_BAL.lower(), HOSTILE_ERROR)


async def no_usage(day: dt.date | None) -> UsageReport:
    raise AssertionError("the usage figures are not asked for")


@pytest.fixture
async def without_engine(
    mock_settings: MockSettings, registry: DelegationService, tmp_path: Path
) -> AsyncIterator[str]:
    """The API and pages with administrators but no migration jobs (AdminConfig's
    `migrations` None), logging in with the mock PSC."""
    mock = MockOperator(mock_settings, tmp_path / "mock", registry=registry)
    await mock.start()
    assert mock.psc is not None
    client = mock.psc.clients.get("lps-gateway")
    assert client is not None
    validator = TokenValidator(ValidatorConfig(issuer=mock.issuer))
    web = WebConfig("lps-gateway", client.client_secret, None)
    admin = AdminConfig.of([ADMIN], no_usage)
    server = AsgiServer(
        create_api(registry, validator, web, admin_config=admin), bind_tcp("127.0.0.1", 0)
    )
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()
        await validator.aclose()
        await mock.stop()


@pytest.mark.parametrize("migrated_db_url", ["sqlite"], indirect=True)  # the page, not the registry
async def test_without_a_migration_engine_the_page_says_so(without_engine: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        await log_in(http, without_engine, "adm-roux")
        page = await http.get(f"{without_engine}{PAGE}")
        view = await http.get(f"{without_engine}{JSON}")
    assert page.status_code == 200
    assert "Aucun moteur de migration n'est disponible sur cette passerelle." in page.text
    assert "migrations.js" not in page.text
    assert view.json() == {"available": False, "rows": [], "migrations": [], "hidden": 0}


ROW = f'#migrations tbody tr[data-bal="{DUPONT}"]'


async def test_a_copy_followed_live_in_chromium(demo: Stack) -> None:
    assert demo.mock.historic is not None
    await demo.mock.historic.store.deliver_many(
        DUPONT, [Delivery(letter(f"résultat {n}")) for n in range(SEEDED)], INBOX
    )
    on_historic = await count(demo, "historic")
    assert on_historic >= SEEDED
    await add_hostile_record(demo)
    site = demo.gateway.http_url
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{site}{PAGE}")
        await page.get_by_text("Camille ROUX").click()
        await page.get_by_label("e-CPS (application sur le téléphone)").check()
        await page.get_by_role("button", name="Se connecter").click()
        await page.wait_for_url(f"{site}/ui/delegations")
        answer = await page.goto(f"{site}{PAGE}")
        assert answer is not None
        assert answer.status == 200
        assert await page.locator(ROW).count() == 0
        await page.evaluate("window.stillThisPage = 'oui'")

        await migrations(demo).start([DUPONT], "modern", "copy", actor="test", max_rate=RATE)
        bar: dict[str, Any] = await (
            await page.wait_for_function(
                """(row) => {
                  const bar = document.querySelector(row + " progress");
                  return bar && bar.value > 0 && bar.value < bar.max
                    && {value: bar.value, max: bar.max};
                }""",
                arg=ROW,
                timeout=30_000,
            )
        ).json_value()
        assert bar["max"] <= on_historic  # planned so far: it grows folder by folder
        assert "copie : en cours" in await page.locator(ROW).inner_text()

        await page.wait_for_function(
            """(row) => {
              const tr = document.querySelector(row);
              return tr && tr.dataset.state === "copied" && !tr.querySelector("progress");
            }""",
            arg=ROW,
            timeout=60_000,
        )
        cells = await page.locator(ROW).locator("td").all_inner_texts()
        assert cells[:2] == [DUPONT, "historic → modern"]
        assert cells[2].startswith("copiée")
        assert cells[4] == str(on_historic)
        assert f"{on_historic}/{on_historic} messages" in cells[3]
        assert await page.evaluate("window.stillThisPage") == "oui", "no reload"
        assert int(await page.evaluate("document.documentElement.dataset.migrationsUpdates")) >= 2
        assert "Mis à jour à" in await page.get_by_role("status").inner_text()

        hostile = page.locator("#migrations tbody tr", has_text="window.pwned")
        assert await hostile.locator("td.error").inner_text() == HOSTILE_ERROR
        assert await page.evaluate("window.pwned") is None
        assert await page.locator("#migrations img, #migrations script").count() == 0
        await page.get_by_role("link", name="Qui utilise quoi").click()
        await page.wait_for_url(f"{site}/ui/admin/usage")
