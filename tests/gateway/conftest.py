"""Fixtures of a whole gateway in front of a running mock operator (`tests.support.stacks`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import MockSettings, Settings
from mock_operator.server import MockOperator
from tests.support.stacks import Stack, gateway_settings, mock_backend, running_stack


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return gateway_settings(tmp_path / "gateway")


@pytest.fixture
def backend_overrides() -> dict[str, Any]:
    """Override in a test module to change how the gateway logs in to the mock."""
    return {}


@pytest.fixture
async def stack(
    tmp_path: Path,
    stack_settings: Settings,
    mock_settings: MockSettings,
    backend_overrides: dict[str, Any],
) -> AsyncIterator[Stack]:
    def configure(settings: Settings, mock: MockOperator) -> None:
        settings.backends = {"modern": mock_backend(mock, **backend_overrides)}
        settings.routing.default = "modern"

    async with running_stack(
        stack_settings, mock_settings, tmp_path / "mock", configure
    ) as running:
        yield running
