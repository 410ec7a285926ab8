"""/docs (Swagger UI) and /redoc (ReDoc) of the gateway and of the mock operator work with
the network cut: Chromium renders them with every request to another host refused. The
pages need nothing from the registry: one SQLite database does."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mock_operator.server import MockOperator
from tests.api.conftest import seeded_registry, serving_api
from tests.browser import chromium

pytestmark = pytest.mark.slow

LOCAL = re.compile(r"^(?:https?://127\.0\.0\.1[:/]|data:|blob:|about:)")


@pytest.fixture
async def sites(mock_op: MockOperator, tmp_path: Path) -> AsyncIterator[list[str]]:
    """The gateway's API and the mock operator's, each with its own documentation."""
    async with (
        seeded_registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}") as registry,
        serving_api(mock_op, registry) as api,
    ):
        yield [api, mock_op.http_url]


async def first_summary(http: httpx.AsyncClient, base: str) -> str:
    spec = (await http.get(f"{base}/openapi.json")).json()
    for operations in spec["paths"].values():
        for operation in operations.values():
            if operation.get("summary"):
                return str(operation["summary"])
    raise AssertionError("no operation has a summary")


async def test_pages_name_no_other_host(sites: list[str]):
    async with httpx.AsyncClient(timeout=10) as http:
        for base in sites:
            for page in ("/docs", "/redoc"):
                answer = await http.get(f"{base}{page}")
                assert answer.status_code == 200
                urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)""", answer.text)
                assert urls, "the page loads its scripts"
                assert all(u.startswith("/") for u in urls), urls
                assert "cdn" not in answer.text
                assert "fonts.googleapis" not in answer.text
                policy = answer.headers["content-security-policy"]
                assert "default-src 'self'" in policy
                assert "img-src 'self' data:" in policy
            script = await http.get(f"{base}/docs/static/swagger-ui-bundle.js")
            assert script.status_code == 200
            assert len(script.content) > 100_000


async def test_pages_render_offline(sites: list[str]):
    refused: list[str] = []

    async def local_only(route: Any) -> None:
        url = route.request.url
        if LOCAL.match(url):
            await route.continue_()
        else:
            refused.append(url)
            await route.abort()

    async with chromium() as browser, httpx.AsyncClient(timeout=10) as http:
        page = await browser.new_page()
        await page.route("**/*", local_only)
        for base in sites:
            summary = await first_summary(http, base)
            await page.goto(f"{base}/docs")
            await page.locator(".opblock").first.wait_for(timeout=30_000)
            assert await page.locator(".opblock").count() > 3
            await page.goto(f"{base}/redoc")
            title = page.locator("h2", has_text=re.compile(rf"^{re.escape(summary)}\s*$"))
            await title.first.wait_for(timeout=30_000)
    assert refused == [], "the pages asked another host for something"
