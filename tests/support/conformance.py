"""A campaign opened and read as `mock-operator conformance` does, over the running mock's
loopback API: for tests that play an LPS and look at its verdicts."""

from __future__ import annotations

from typing import Any

import httpx

from mock_operator.server import MockOperator
from tests.conftest import client_tls

API = "/_test/conformance/campaigns"


async def open_campaign(mock: MockOperator, **body: Any) -> dict[str, Any]:
    """The mock's answer to `conformance start` (its `id`, its page, the scenario ports)."""
    async with httpx.AsyncClient(timeout=10, verify=client_tls()) as http:
        answer = await http.post(
            f"{mock.http_url}{API}", json={"software": "Mon LPS", "version": "2.1", **body}
        )
    answer.raise_for_status()
    started: dict[str, Any] = answer.json()
    return started


async def campaign_results(mock: MockOperator, campaign: str) -> dict[str, dict[str, Any]]:
    """The campaign's JSON report, its results by check key."""
    async with httpx.AsyncClient(timeout=30, verify=client_tls()) as http:
        answer = await http.get(
            f"{mock.http_url}{API}/{campaign}/report", params={"format": "json"}
        )
    answer.raise_for_status()
    return {r["id"]: r for r in answer.json()["results"]}
