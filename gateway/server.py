"""The gateway as one object: registry, token validation and listeners; started and
stopped by `lps-gateway serve` and `lps-gateway demo`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from delegation.db import create_engine, migrate
from delegation.events import bus_for_url
from delegation.service import DelegationService
from gateway.api.app import create_api
from gateway.asgi_server import AsgiServer, bind_tcp
from gateway.settings import Settings
from gateway.web.routes import WebConfig
from psc_auth import TokenValidator

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, settings: Settings, *, validator: TokenValidator | None = None) -> None:
        self.settings = settings
        self._validator = validator
        self.validator: TokenValidator | None = None
        self.delegations: DelegationService | None = None
        self._engine: AsyncEngine | None = None
        self._http: AsgiServer | None = None
        self._expiry: asyncio.Task[None] | None = None

    async def open_registry(self) -> DelegationService:
        """Migrate and open the delegation registry (before `start`, to seed it)."""
        if self.delegations is None:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            url = self.settings.database()
            await migrate(url)
            self._engine = create_engine(url)
            bus = bus_for_url(url)
            await bus.start()
            self.delegations = DelegationService(self._engine, bus=bus)
        return self.delegations

    @property
    def http_url(self) -> str:
        assert self._http is not None, "not started"
        http = self.settings.http
        return http.public_url or f"http://{http.host}:{self._http.port}"

    async def start(self) -> None:
        service = await self.open_registry()
        self.validator = self._validator or TokenValidator(self.settings.psc)
        http = self.settings.http
        sock = bind_tcp(http.host, http.port)
        port = sock.getsockname()[1]
        ui = self.settings.ui
        web = WebConfig(
            ui.client_id, ui.client_secret, http.public_url or f"http://{http.host}:{port}"
        )
        self._http = AsgiServer(create_api(service, self.validator, web), sock)
        await self._http.start()
        self._expiry = asyncio.create_task(service.expire_forever())
        log.info("gateway.started", extra={"http": self.http_url})

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        if self._http is not None:
            await self._http.stop()
        if self.delegations is not None:
            await self.delegations.bus.close()
        if self.validator is not None and self._validator is None:
            await self.validator.aclose()
        if self._engine is not None:
            await self._engine.dispose()
