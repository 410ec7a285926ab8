"""Policy hooks of the IMAP engine: who logs in (`Authenticator`) and what they may do.

The engine knows nothing of tokens or delegations: an authenticator turns SASL
credentials into a `SessionGrant` naming the BAL's store and the rights on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from gateway.imap.commands import Command
from gateway.imap.mailstore import MailStore
from gateway.runtime.login import ConnectionInfo
from psc_auth.errors import SaslError
from psc_auth.sasl import MAX_FIELD_LENGTH, TokenCredentials

Right = Literal["read", "write", "send"]
ALL_RIGHTS: frozenset[str] = frozenset({"read", "write", "send"})


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


class Authenticator(Protocol):
    async def authenticate(
        self, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> SessionGrant: ...


@dataclass(frozen=True)
class ExternalCredentials:
    """SASL EXTERNAL (RFC 4422 appendix A): the client certificate the TLS layer verified
    (DER), and the authorisation identity asked for ("" asks for the certificate's own)."""

    authzid: str
    certificate: bytes = field(repr=False)


@runtime_checkable
class ExternalAuthenticator(Protocol):
    """An `Authenticator` that also takes TLS client certificates: the engine then offers
    AUTH=EXTERNAL to a client that presented one."""

    async def authenticate_external(
        self, credentials: ExternalCredentials, connection: ConnectionInfo
    ) -> SessionGrant: ...


def decode_external(response: bytes) -> str:
    """The authzid of an EXTERNAL response: UTF-8 without control characters, bounded."""
    if len(response) > MAX_FIELD_LENGTH:
        raise SaslError("EXTERNAL: authzid too long")
    try:
        authzid = response.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("EXTERNAL: authzid is not UTF-8") from None
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in authzid):
        raise SaslError("EXTERNAL: authzid has control characters")
    return authzid
