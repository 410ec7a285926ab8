"""Who may open which BAL of the modern platform, over IMAP and SMTP.

Three ways in: a PSC access token of the BAL's holder; a PSC token of someone the
delegation hook grants rights to (the delegation registry plugs in here); and the
trusted gateway's master login (SASL PLAIN, authzid = the BAL, the master's credentials).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.imap.session import ALL_RIGHTS, SessionGrant
from gateway.runtime.login import AuthFailed, ConnectionInfo
from mock_operator.modern.store import SqlPlatform
from psc_auth import Identity, TokenError, TokenValidator
from psc_auth.sasl import Mechanism, TokenCredentials, error_challenge

log = logging.getLogger(__name__)

Resolver = Callable[[Identity, str, str], Awaitable[tuple[frozenset[str], str] | None]]
"""(identity, BAL, interface) -> (rights, via) or None: the delegation registry's decision."""


@dataclass(frozen=True)
class MasterCredentials:
    user: str
    password: str

    def matches(self, user: str, password: str) -> bool:
        same_user = hmac.compare_digest(self.user.encode(), user.encode())
        same_password = hmac.compare_digest(self.password.encode(), password.encode())
        return same_user and same_password


class PlatformAuthenticator:
    def __init__(
        self,
        platform: SqlPlatform,
        validator: TokenValidator,
        *,
        discovery_url: str,
        master: MasterCredentials | None = None,
        resolver: Resolver | None = None,
        interface: str = "imap",
    ) -> None:
        self.platform = platform
        self.validator = validator
        self.discovery_url = discovery_url
        self.master = master
        self.resolver = resolver
        self.interface = interface

    async def authenticate(
        self, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> SessionGrant:
        if (
            self.master is not None
            and credentials.mechanism is Mechanism.PLAIN
            and credentials.authcid == self.master.user
        ):
            return await self._master(credentials)
        try:
            identity = await self.validator.validate(credentials.token)
        except TokenError as exc:
            if exc.failure.temporary:
                raise AuthFailed("unavailable", "identity provider unreachable") from None
            raise AuthFailed(
                "authentication",
                f"invalid token ({exc.failure.value})",
                error_challenge(self.discovery_url),
            ) from None
        bal = await self._target(identity, credentials.user)
        holder = await self.platform.holder_of(bal)
        if holder is None:
            raise AuthFailed("authorization", f"no mailbox {bal} here")
        actor = str(identity.idnat)
        if self.resolver is not None:  # the registry decides, and audits, every access
            decision = await self.resolver(identity, bal, self.interface)
            if decision is None:
                raise AuthFailed("authorization", f"{actor} may not open {bal}")
            rights, via = decision
            return SessionGrant(self.platform.store(bal), rights, actor, via=via)
        if holder != actor:
            raise AuthFailed("authorization", f"{actor} may not open {bal}")
        return SessionGrant(self.platform.store(bal), ALL_RIGHTS, actor)

    async def _target(self, identity: Identity, user: str) -> str:
        """The BAL named by the SASL user; empty or the idNat itself means one's own BAL."""
        if user and user != str(identity.idnat):
            return user.lower()
        own = [
            a for a, holder, _ in await self.platform.mailboxes() if holder == str(identity.idnat)
        ]
        if not own:
            raise AuthFailed("authorization", "no mailbox of your own: name the BAL to open")
        return own[0]

    async def _master(self, credentials: TokenCredentials) -> SessionGrant:
        assert self.master is not None
        if not self.master.matches(credentials.authcid, credentials.token):
            raise AuthFailed("authentication", "invalid master credentials")
        bal = credentials.user.lower()
        if bal == credentials.authcid or not await self.platform.has_mailbox(bal):
            raise AuthFailed("authorization", "master login needs authzid = an existing BAL")
        log.info("mock.master_login", extra={"bal": bal})
        return SessionGrant(self.platform.store(bal), ALL_RIGHTS, self.master.user, via="master")
