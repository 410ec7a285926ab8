"""Fixtures for psc_auth: a fake provider and validators wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from psc_auth import TokenValidator, ValidatorConfig
from tests.psc_auth.fake_provider import CLIENT_ID, ISSUER, Clock, FakeProvider


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provider(clock: Clock) -> FakeProvider:
    return FakeProvider(clock)


MakeValidator = Callable[..., TokenValidator]


@pytest.fixture
async def make_validator(provider: FakeProvider, clock: Clock) -> AsyncIterator[MakeValidator]:
    clients: list[httpx.AsyncClient] = []

    def make(**config: Any) -> TokenValidator:
        defaults: dict[str, Any] = {
            "issuer": ISSUER,
            "client_ids": [CLIENT_ID],
            "clock_skew_seconds": 0,
            "introspection_client_id": "gw",
            "introspection_client_secret": "s3cret",
        }
        defaults.update(config)
        http = httpx.AsyncClient(transport=httpx.MockTransport(provider.handler))
        clients.append(http)
        return TokenValidator(ValidatorConfig(**defaults), http, clock=clock)

    yield make
    for http in clients:
        await http.aclose()
