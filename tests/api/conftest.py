"""The gateway's HTTP API on a real socket, over a seeded delegation registry, with tokens
from a running mock Pro Santé Connect."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest

from delegation.db import create_engine, migrate
from delegation.seed import seed
from delegation.service import DelegationService
from gateway.api.app import create_api
from gateway.runtime.asgi_server import AsgiServer, bind_tcp
from mock_operator.personas import default_personas
from mock_operator.server import MockOperator
from psc_auth import TokenValidator, ValidatorConfig
from tests.conftest import client_tls, persona_token


def persona_data() -> list[dict[str, object]]:
    return [dataclasses.asdict(p) for p in default_personas()]


@contextlib.asynccontextmanager
async def seeded_registry(url: str) -> AsyncIterator[DelegationService]:
    """The registry on the empty database at `url`, migrated and seeded with the personas."""
    await migrate(url)
    engine = create_engine(url)
    service = DelegationService(engine)
    await seed(service, persona_data())
    try:
        yield service
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def serving_api(mock: MockOperator, registry: DelegationService) -> AsyncIterator[str]:
    """The API over `registry` on a free port, trusting `mock`'s tokens: its base URL."""
    validator = TokenValidator(ValidatorConfig(issuer=mock.issuer))
    server = AsgiServer(create_api(registry, validator), bind_tcp("127.0.0.1", 0))
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()
        await validator.aclose()


@pytest.fixture
async def registry(migrated_db_url: str) -> AsyncIterator[DelegationService]:
    """The gateway's registry on SQLite, and on PostgreSQL when LPS_TEST_DATABASE_URL is set."""
    async with seeded_registry(migrated_db_url) as service:
        yield service


@pytest.fixture
async def api_url(mock_op: MockOperator, registry: DelegationService) -> AsyncIterator[str]:
    async with serving_api(mock_op, registry) as url:
        yield url


class Api:
    """An HTTP client acting as one persona."""

    def __init__(self, base: str, mock: MockOperator) -> None:
        self.base = base
        self.mock = mock
        self.http = httpx.AsyncClient(base_url=base, timeout=10, verify=client_tls())

    async def token(self, persona: str) -> str:
        return await persona_token(self.mock, persona)

    async def as_(self, persona: str) -> httpx.AsyncClient:
        token = await self.token(persona)
        return httpx.AsyncClient(
            base_url=self.base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
            verify=client_tls(),
        )


@pytest.fixture
async def api(api_url: str, mock_op: MockOperator) -> AsyncIterator[Api]:
    client = Api(api_url, mock_op)
    try:
        yield client
    finally:
        await client.http.aclose()
