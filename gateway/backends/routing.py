"""The routing table: which backend carries the sessions of a BAL."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gateway.backends.base import Backend
from gateway.settings import RoutingSettings


class NoRoute(LookupError):
    """No backend is configured for this mailbox."""


@dataclass(frozen=True)
class Route:
    name: str
    backend: Backend


class Placement:
    """Mailbox → the name of the backend holding it, from the settings and the registry's
    record alone: what `Router` follows, and what reports read without opening backends."""

    def __init__(self, names: Collection[str], routing: RoutingSettings) -> None:
        self.names = frozenset(names)
        self._mailboxes = {k.strip().lower(): v for k, v in routing.mailboxes.items()}
        self._domains = {k.strip().lower(): v for k, v in routing.domains.items()}
        self._default = routing.default
        for name in [*self._mailboxes.values(), *self._domains.values(), self._default]:
            if name is not None and name not in self.names:
                raise ValueError(f"routing names an unknown backend: {name!r}")

    def pinned(self, mailbox: str) -> str | None:
        """The backend `[routing.mailboxes]` names for this mailbox (the registry's record
        does not count for it), or None."""
        return self._mailboxes.get(mailbox.strip().lower())

    def backend_of(self, mailbox: str, registered: str = "") -> str | None:
        """An explicit mailbox entry, then the registry's record, then the domain, then
        the default; None when nothing is configured."""
        address = mailbox.strip().lower()
        domain = address.rpartition("@")[2]
        for name in (
            self._mailboxes.get(address),
            registered if registered in self.names else None,
            self._domains.get(domain),
            self._default,
        ):
            if name is not None:
                return name
        return None


class Router:
    """Mailbox → backend: an explicit mailbox entry, then the backend the registry records
    for the mailbox, then the mailbox's domain, then the default."""

    def __init__(self, backends: Mapping[str, Backend], routing: RoutingSettings) -> None:
        self.backends = dict(backends)
        self.placement = Placement(self.backends, routing)

    def route(self, mailbox: str, registered: str = "") -> Route:
        name = self.placement.backend_of(mailbox, registered)
        if name is None:
            raise NoRoute(f"no backend configured for {mailbox.strip().lower()}")
        return Route(name, self.backends[name])
