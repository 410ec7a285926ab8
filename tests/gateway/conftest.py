"""A whole gateway in front of a running mock operator, as `lps-gateway demo` wires them:
one registry seeded with the default personas, the modern platform as backend "modern"."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from delegation.seed import seed
from gateway.server import Gateway
from gateway.settings import BackendSettings, MockSettings, Settings
from mock_operator.personas import default_personas
from mock_operator.server import MockOperator
from tests.conftest import persona_token


@dataclass
class Stack:
    gateway: Gateway
    mock: MockOperator

    @property
    def imap_port(self) -> int:
        assert self.gateway.imap is not None
        return self.gateway.imap.port

    @property
    def smtp_port(self) -> int:
        assert self.gateway.smtp is not None
        return self.gateway.smtp.port

    async def token(self, persona: str = "dr-martin", **extra: Any) -> str:
        return await persona_token(self.mock, persona, **extra)

    async def stop(self) -> None:
        await self.gateway.stop()
        await self.mock.stop()


def mock_backend(mock: MockOperator, **overrides: Any) -> BackendSettings:
    """The mock's modern platform as a backend: master login over STARTTLS, trusting the
    mock's development certificate."""
    assert mock.master is not None
    values: dict[str, Any] = {
        "imap_port": mock.imap_port,
        "smtp_port": mock.smtp_port,
        "imap_tls": "starttls",
        "smtp_tls": "starttls",
        "ca_file": mock.tls_cert,
        "master_user": mock.master.user,
        "master_password": mock.master.password,
        "connect_timeout": 5,
        "reply_timeout": 10,
    }
    values.update(overrides)
    return BackendSettings(**values)


def gateway_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Gateway settings for tests: free ports, no failure delays."""
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "http": {"port": 0},
        "imap": {"port": 0, "auth_failure_delay": 0},
        "smtp": {"port": 0, "auth_failure_delay": 0},
        "psc": {"client_ids": ["lps-demo"]},  # the client the mock's test tokens are for
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Settings(**base)


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return gateway_settings(tmp_path / "gateway")


@pytest.fixture
def backend_overrides() -> dict[str, Any]:
    """Override in a test module to change how the gateway logs in to the mock."""
    return {}


async def start_stack(
    settings: Settings,
    mock_settings: MockSettings,
    mock_dir: Path,
    configure: Callable[[Settings, MockOperator], None] | None = None,
) -> Stack:
    gateway = Gateway(settings)
    registry = await gateway.open_registry()
    await seed(registry, [dataclasses.asdict(p) for p in default_personas()])
    mock = MockOperator(mock_settings, mock_dir, registry=registry)
    await mock.start()
    settings.psc.issuer = mock.issuer
    if configure is not None:
        configure(settings, mock)
    else:
        settings.backends = {"modern": mock_backend(mock)}
        settings.routing.default = "modern"
    try:
        await gateway.start()
    except BaseException:
        await mock.stop()
        await gateway.stop()
        raise
    return Stack(gateway, mock)


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings,
    mock_settings: MockSettings,
    mock_dir: Path,
    configure: Callable[[Settings, MockOperator], None] | None = None,
) -> AsyncIterator[Stack]:
    """`start_stack`, stopped on leaving."""
    running = await start_stack(settings, mock_settings, mock_dir, configure)
    try:
        yield running
    finally:
        await running.stop()


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
