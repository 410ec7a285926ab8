"""An operator platform speaking IMAP and SMTP submission: sessions are relayed to it."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

from gateway.backends.base import MailboxAccess, Upstream
from gateway.backends.errors import BackendTokenOnly
from gateway.backends.imap_smtp.submission import SmtpSubmission
from gateway.backends.imap_smtp.tools import ImapMailboxAccess
from gateway.backends.imap_smtp.upstream import open_upstream
from gateway.backends.probes import mail_port_check
from gateway.runtime.login import ConnectionInfo
from gateway.settings import BackendSettings


class ImapSmtpBackend:
    """`Backend` for an IMAP/SMTP platform: an `Upstream` per IMAP session (the front
    relays it), an SMTP session per submission, its IMAP with the master login for tools."""

    def __init__(self, name: str, settings: BackendSettings) -> None:
        self._name = name
        self.settings = settings

    @property
    def name(self) -> str:
        return self._name

    async def open_imap(
        self, bal: str, token: str | None, *, client: ConnectionInfo | None = None
    ) -> Upstream:
        origin = client if self.settings.forward_client_address else None
        if token is None:
            self._master_allowed()
        return await open_upstream(
            self._name, self.settings, bal, token or "", master=token is None, client=origin
        )

    def submission(
        self, bal: str, token: str | None, *, max_size: int, client: ConnectionInfo | None = None
    ) -> SmtpSubmission:
        if token is None:
            self._master_allowed()
        origin = client if self.settings.forward_client_address else None
        return SmtpSubmission(self._name, self.settings, bal, token, client=origin)

    def _master_allowed(self) -> None:
        """A session without a user token needs the master login this backend is set for."""
        if self.settings.login != "master":
            raise BackendTokenOnly(self._name)

    def probes(self) -> Mapping[str, Awaitable[str]]:
        s = self.settings
        return {
            "imap": mail_port_check(s, "imap", s.imap_host, s.imap_port, s.imap_tls),
            "smtp": mail_port_check(s, "smtp", s.smtp_host, s.smtp_port, s.smtp_tls),
        }

    async def tools(self, bal: str) -> MailboxAccess:
        return await ImapMailboxAccess.open(self._name, self.settings, bal)

    async def aclose(self) -> None:
        return None
