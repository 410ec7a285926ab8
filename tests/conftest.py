"""Fixtures shared by every test: optional peers, and a running mock operator on port 0."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import MockSettings
from mock_operator.server import MockOperator

REQUIRE_PEERS = os.environ.get("LPS_REQUIRE_PEERS") == "1"


async def persona_token(mock: MockOperator, persona: str = "dr-martin", **extra: Any) -> str:
    """A fresh PSC access token for a persona, from the running mock's test endpoint."""
    async with httpx.AsyncClient(timeout=10) as http:
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


@pytest.fixture
def mock_settings() -> MockSettings:
    """Mock settings for tests: any free port, CIBA approved only when a test says so."""
    return MockSettings(
        http_port=0,
        imap_port=0,
        smtp_port=0,
        ciba_auto_approve_after=None,
        ciba_interval=1,
        auth_failure_delay=0,
    )


@pytest.fixture
async def mock_op(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[MockOperator]:
    operator = MockOperator(mock_settings, tmp_path / "mock-operator")
    await operator.start()
    try:
        yield operator
    finally:
        await operator.stop()
