"""One login's session on a front, recorded once with the software the client named.

IMAP clients send ID before login (the engine answers), after it (the relay carries it),
or never: the session is recorded at the first of login-with-ID, the first ID after
login, or its end (software unknown)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.usage.access import Interface
from gateway.usage.recorder import Granted, UsageRecorder


class PendingSession:
    def __init__(self, recorder: UsageRecorder, grant: Granted, interface: Interface) -> None:
        self.recorder = recorder
        self.grant = grant
        self.interface = interface
        self.recorded = False

    def identified(self, client_id: Mapping[str, str | None]) -> None:
        """The client's ID fields (RFC 2971, lower-case keys): recorded when it has a name."""
        name = client_id.get("name")
        if name and not self.recorded:
            self._record(name, client_id.get("version"))

    def ended(self) -> None:
        if not self.recorded:
            self._record(None, None)

    def _record(self, software: str | None, version: str | None) -> None:
        self.recorded = True
        self.recorder.session(self.grant, self.interface, software, version)
