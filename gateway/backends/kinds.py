"""Backends by kind: the one place that turns a `[backends.<name>]` table into a
`Backend`. Nothing outside `gateway/backends/` asks a backend's kind."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.backends.base import Backend
from gateway.backends.imap_smtp.backend import ImapSmtpBackend
from gateway.backends.legacy_ws.backend import LegacyWsBackend
from gateway.backends.legacy_ws.store import LegacyBackends
from gateway.backends.legacy_ws.uidmap import UidMap
from gateway.settings import BackendSettings


def backends_from_settings(
    configured: Mapping[str, BackendSettings], historic: LegacyBackends | None = None
) -> dict[str, Backend]:
    """One `Backend` per configured name. `historic` is what historic-platform stores
    share; without it those backends answer readiness probes only."""
    built: dict[str, Backend] = {}
    for name, settings in configured.items():
        if settings.kind == "legacy_ws":
            built[name] = LegacyWsBackend(name, settings, historic)
        else:
            built[name] = ImapSmtpBackend(name, settings)
    return built


class Backends:
    """The backends of one gateway, by name, and what those of a kind share: for the
    historic platform, the UID map beside the registry (`engine`), the message cache and
    the watch of each BAL in use, whose versions are the change signal of the sessions the
    engine serves itself (`version`, `wait`: NOOP and IDLE)."""

    def __init__(
        self, configured: Mapping[str, BackendSettings], engine: AsyncEngine | None = None
    ) -> None:
        self.historic = LegacyBackends(UidMap(engine)) if engine is not None else None
        self.by_name = backends_from_settings(configured, self.historic)

    def version(self, bal: str, folder: str) -> int:
        return self.historic.watches.version(bal, folder) if self.historic else 0

    async def wait(self, bal: str, folder: str, seen: int) -> None:
        if self.historic is None:
            await asyncio.Event().wait()  # no change ever comes: the caller's timeout ends it
        else:
            await self.historic.watches.wait(bal, folder, seen)

    async def aclose(self) -> None:
        for backend in self.by_name.values():
            await backend.aclose()
        if self.historic is not None:
            await self.historic.aclose()
