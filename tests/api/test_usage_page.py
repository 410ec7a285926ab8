"""The usage page in a real Chromium (Playwright): the operator's administrator logs in
with the mock PSC, the charts are drawn (canvas not blank) by the Chart.js the gateway
serves itself, and the tables show the figures of the sessions this test made; a
practitioner gets 403."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import MockSettings, Settings
from mock_operator.server import MockOperator
from tests.browser import chromium
from tests.gateway.test_usage_fronts import make_sessions
from tests.support.stacks import Stack, configure_with, gateway_settings, running_stack

pytestmark = pytest.mark.slow

ADMIN = "899700000008"
BLANK = """(id) => {
  const canvas = document.getElementById(id);
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let drawn = 0;
  for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] !== 0) drawn++; }
  return [canvas.width, drawn];
}"""


@pytest.fixture
async def stack(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Stack]:
    settings = gateway_settings(tmp_path / "gateway", admin={"idnats": [ADMIN]})
    both = configure_with()

    def configure(settings: Settings, mock: MockOperator) -> None:
        both(settings, mock)
        assert mock.psc is not None
        client = mock.psc.clients.get(settings.ui.client_id)
        assert client is not None
        settings.ui.client_secret = client.client_secret  # the pages log in as the demo's

    async with running_stack(settings, mock_settings, tmp_path / "mock", configure) as s:
        yield s


async def log_in(browser: Any, site: str, name: str) -> Any:
    page = await browser.new_page()
    await page.goto(f"{site}/ui/admin/usage")
    await page.get_by_text(name).click()
    await page.get_by_label("e-CPS (application sur le téléphone)").check()
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_url(f"{site}/ui/delegations")
    return page


async def test_the_page_draws_the_figures_for_the_administrator(stack: Stack) -> None:
    await make_sessions(stack)
    site = stack.gateway.http_url
    async with httpx.AsyncClient() as http:
        library = await http.get(f"{site}/ui/static/vendor/chart.umd.min.js")
    assert library.status_code == 200
    assert "Chart.js v4" in library.text[:200]
    async with chromium() as browser:
        page = await log_in(browser, site, "Camille ROUX")
        answer = await page.goto(f"{site}/ui/admin/usage")
        assert answer.status == 200
        await page.wait_for_selector("html[data-charts-drawn=yes]")
        for chart in ("chart-interfaces", "chart-historic"):
            width, drawn = await page.evaluate(BLANK, chart)
            assert width > 0
            assert drawn > 500, f"{chart} left blank"
        software = await page.locator("#table-software tbody tr").all_inner_texts()
        medimail = [row.split("\t") for row in software if row.startswith("Medimail")]
        assert [cells[:7] for cells in medimail] == [
            ["Medimail", "4.2", "api-lps-imap", "1", "2", "3", "0"]
        ]
        nil = [row.split("\t")[:7] for row in software if row.startswith("NIL-42")]
        assert nil == [["NIL-42", "", "api-lps-smtp", "1", "1", "0", "2"]]
        historic = await page.locator("#table-historic tbody tr").all_inner_texts()
        assert historic == ["VieuxLPS\t1"]
        interfaces = await page.locator("#table-interfaces").inner_text()
        assert "api-lps-imap" in interfaces
        assert "api-lps-smtp" in interfaces
        json_figures = await page.evaluate(
            "JSON.parse(document.getElementById('usage-data').textContent)"
        )
        assert sum(json_figures["interfaces"][0]["sessions"]) == 5  # the five IMAP sessions

        other = await log_in(await browser.new_context(), site, "Claire MARTIN")
        refused = await other.goto(f"{site}/ui/admin/usage")
        assert refused.status == 403
        assert "administrateurs" in await other.content()
