"""The historic platform as a backend: its web services serve the API LPS sessions (the
gateway's engine over `LegacyWsStore`, one `sendMessage` per submission), and its own
IMAP, when configured (`historic_imap`), serves the operator's tools: the web services
cannot give a message's original bytes nor create one outside Drafts."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

from gateway.backends.base import MailboxAccess
from gateway.backends.errors import BackendUnavailable
from gateway.backends.imap_smtp.tools import ImapMailboxAccess
from gateway.backends.legacy_ws.client import LegacyWsClient
from gateway.backends.legacy_ws.store import LegacyBackends, LegacyWsStore
from gateway.backends.legacy_ws.submit import HistoricSubmission
from gateway.backends.probes import mail_port_check, web_services_check
from gateway.backends.store_access import StoreMailboxAccess
from gateway.runtime.login import ConnectionInfo
from gateway.settings import BackendSettings


class HistoricStoreAccess(StoreMailboxAccess):
    """The tools' access through the web services: it also tells each UID's messageId,
    so that a BAL moving away keeps its ids exactly (`gateway.bal_migration.adopt`)."""

    def __init__(self, store: LegacyWsStore) -> None:
        super().__init__(store)
        self._historic = store

    async def historic_folder_ids(self) -> dict[str, int]:
        return await self._historic.historic_folder_ids()

    async def historic_ids(self, folder: str) -> dict[int, str]:
        return await self._historic.historic_ids(folder)


class LegacyWsBackend:
    """`Backend` over the historic web services. `shared` holds what the stores of one
    gateway share (clients, UID map, caches, watches); without it (a readiness probe
    alone) sessions are refused as misconfigured."""

    def __init__(self, name: str, settings: BackendSettings, shared: LegacyBackends | None) -> None:
        self._name = name
        self.settings = settings
        self.shared = shared

    @property
    def name(self) -> str:
        return self._name

    def _shared(self) -> LegacyBackends:
        if self.shared is None:
            raise BackendUnavailable("misconfigured", f"{self._name}: no historic state")
        return self.shared

    def historic_client(self) -> LegacyWsClient:
        """The trusted gateway's client of the historic web services (the legacy front
        passes historic calls through it)."""
        return self._shared().client(self._name, self.settings)

    async def open_imap(
        self, bal: str, token: str | None, *, client: ConnectionInfo | None = None
    ) -> LegacyWsStore:
        return self._shared().store(self._name, self.settings, bal)

    def submission(
        self, bal: str, token: str | None, *, max_size: int, client: ConnectionInfo | None = None
    ) -> HistoricSubmission:
        ws = self._shared().client(self._name, self.settings)
        return HistoricSubmission(self._name, ws, bal, max_size=max_size)

    def probes(self) -> Mapping[str, Awaitable[str]]:
        s = self.settings
        probes = {"ws": web_services_check(s)}
        if s.historic_imap:
            probes["imap"] = mail_port_check(s, "imap", s.imap_host, s.imap_port, s.imap_tls)
        return probes

    async def tools(self, bal: str) -> MailboxAccess:
        if self.settings.historic_imap:
            # its UIDs are not those LPS see: the gateway gives those (`UidMap`)
            return await ImapMailboxAccess.open(self._name, self.settings, bal, public_uids=False)
        return HistoricStoreAccess(await self.open_imap(bal, ""))

    async def aclose(self) -> None:
        return None
