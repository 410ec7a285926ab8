"""Policy hooks of the IMAP engine: who logs in (`Authenticator`) and what they may do.

The engine knows nothing of tokens or delegations: an authenticator turns SASL
credentials into a `SessionGrant` naming the BAL's store and the rights on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gateway.imap.commands import Command
from gateway.imap.mailstore import MailStore
from psc_auth.sasl import TokenCredentials

Right = Literal["read", "write", "send"]
ALL_RIGHTS: frozenset[str] = frozenset({"read", "write", "send"})


@dataclass(frozen=True)
class ConnectionInfo:
    peer: str
    secure: bool
    loopback: bool
    tls_available: bool
    session_id: str = ""
    software: str | None = None  # what the client said it is (IMAP ID, SMTP EHLO)


@dataclass(frozen=True)
class SessionGrant:
    """A successful login: the store to serve, with the rights of the person on it.

    `store` is None when the engine does not serve the session itself (the gateway's proxy
    carries it to a backend); `address` then names the BAL, and `capabilities` is the list
    announced after login (the backend's, filtered) instead of the engine's own.
    """

    store: MailStore | None
    rights: frozenset[str]
    actor: str  # who logged in: an idNat, or the master user's name
    via: str = "holder"  # "holder", "delegation", "master"
    on_close: Callable[[], Awaitable[None]] | None = field(default=None, compare=False)
    # told of each command refused for want of a right, and of each SELECT / EXAMINE with
    # its result ("ok", "failed:no"): the audit trail records both
    on_refused: Callable[[Command, str], Awaitable[None]] | None = field(
        default=None, compare=False
    )
    on_selected: Callable[[Command, str], Awaitable[None]] | None = field(
        default=None, compare=False
    )
    address: str = ""
    capabilities: tuple[str, ...] | None = None

    @property
    def mailbox(self) -> str:
        return self.store.address if self.store is not None else self.address

    def may(self, right: str) -> bool:
        return right in self.rights


AuthFailure = Literal["authentication", "authorization", "unavailable", "throttled", "limit"]


class AuthFailed(Exception):
    """Login refused. `kind` picks the response code: AUTHENTICATIONFAILED (bad token or
    credentials), AUTHORIZATIONFAILED (this person may not open this BAL), UNAVAILABLE (a
    service down, or this address failed too often lately: "throttled"), LIMIT (this person
    holds too many sessions). Only the first two are the client's fault, and wait."""

    def __init__(
        self,
        kind: AuthFailure,
        text: str,
        challenge: bytes | None = None,
    ) -> None:
        self.kind = kind
        self.text = text
        self.challenge = challenge
        super().__init__(text)


class Authenticator(Protocol):
    async def authenticate(
        self, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> SessionGrant: ...
