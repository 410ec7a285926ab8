"""The login vocabulary every listener speaks: who connected (`ConnectionInfo`), why a
login was refused (`AuthFailed`, whose kind picks each protocol's reply), and what a
successful login must offer an SMTP handler (`Login`). The IMAP engine, the gateway's
fronts and the mock operator's platforms share it, so the same refusal reads the same on
IMAP and SMTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from psc_auth.sasl import TokenCredentials


@dataclass(frozen=True)
class ConnectionInfo:
    peer: str
    secure: bool
    loopback: bool
    tls_available: bool
    session_id: str = ""
    software: str | None = None  # what the client said it is (IMAP ID, SMTP EHLO)
    port: int = 0  # the client's (0: unknown)
    local_address: str = ""  # the address the client connected to (a load balancer's)
    local_port: int = 0


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


@runtime_checkable
class Login(Protocol):
    """A successful login as an SMTP handler sees it: whose BAL, who, with which rights."""

    @property
    def mailbox(self) -> str: ...

    @property
    def actor(self) -> str: ...

    def may(self, right: str) -> bool: ...


class LoginAuthority(Protocol):
    """Turns SASL credentials into a `Login`, or raises `AuthFailed`."""

    async def authenticate(
        self, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> Login: ...
