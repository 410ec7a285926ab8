"""Who is logging in and which BAL they may open: token (psc_auth), then grant (delegation),
then route (which backend). Shared by the IMAP and SMTP fronts so both decide the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from delegation.audit import AuditAction, AuditRecord
from delegation.service import DelegationService, Grant
from gateway.audit import AuditSink
from gateway.backends.routing import NoRoute, Route, Router
from gateway.decisions import DecisionCache
from gateway.imap.session import AuthFailed, ConnectionInfo, SessionGrant
from gateway.limits import LoginThrottle
from psc_auth import Identity, TokenError, TokenValidator
from psc_auth.sasl import TokenCredentials, error_challenge

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FrontGrant(SessionGrant):
    """A login on a gateway front: who, which BAL with which rights, and where it lives."""

    identity: Identity
    decision: Grant
    route: Route
    credentials: TokenCredentials = dataclasses.field(repr=False)

    @property
    def delegation_id(self) -> int | None:
        return self.decision.delegation_id


class FrontAuthenticator:
    """Turns SASL token credentials into a `FrontGrant`, or an `AuthFailed` whose kind picks
    the reply: a bad token is AUTHENTICATIONFAILED (with the RFC 7628 challenge), a BAL the
    person may not open AUTHORIZATIONFAILED, an unreachable provider UNAVAILABLE."""

    def __init__(
        self,
        validator: TokenValidator,
        registry: DelegationService,
        router: Router,
        *,
        interface: str,
        decisions: DecisionCache,
        audit: AuditSink,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.validator = validator
        self.registry = registry
        self.router = router
        self.interface = interface
        self.decisions = decisions
        self.audit = audit
        self.throttle = throttle
        issuer = validator.config.issuer.rstrip("/")
        self.challenge = error_challenge(f"{issuer}/.well-known/openid-configuration")

    async def authenticate(
        self, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> FrontGrant:
        """Who, which BAL, where. An address that failed too often lately is refused before
        its token costs a validation (`throttled`); its bad tokens and forbidden BAL count."""
        throttle = self.throttle
        wait = throttle.retry_after(connection.peer) if throttle is not None else None
        if wait is not None:
            log.info("gateway.login_throttled", extra={"peer": connection.peer})
            raise AuthFailed(
                "throttled",
                f"too many failed logins from your address, try again in {math.ceil(wait)} s",
            )
        try:
            identity = await self.identify(credentials)
            bal = await self.target(identity, credentials.user)
            return await self.authorise(
                identity, bal, credentials, connection, action=AuditAction.LOGIN
            )
        except AuthFailed as failure:
            if throttle is not None and failure.kind in ("authentication", "authorization"):
                throttle.failed(connection.peer)
            raise

    async def identify(self, credentials: TokenCredentials) -> Identity:
        try:
            return await self.validator.validate(credentials.token)
        except TokenError as exc:
            if exc.failure.temporary:
                raise AuthFailed("unavailable", "identity provider unreachable") from None
            raise AuthFailed(
                "authentication", f"invalid token ({exc.failure.value})", self.challenge
            ) from None

    async def target(self, identity: Identity, user: str) -> str:
        """The BAL the SASL user names; empty or the person's own idNat means their own BAL."""
        name = user.strip().lower()
        if name and name != str(identity.idnat).lower():
            return name
        own = [g.mailbox for g in await self.registry.accessible(identity) if g.via == "holder"]
        if not own:
            raise AuthFailed("authorization", "no mailbox of your own: name the BAL to open")
        return own[0]

    async def authorise(
        self,
        identity: Identity,
        bal: str,
        credentials: TokenCredentials,
        connection: ConnectionInfo,
        *,
        action: AuditAction,
        right: str | None = None,
    ) -> FrontGrant:
        actor = str(identity.idnat)
        found = await self.decisions.decide(identity, bal)
        decision = found.grant
        refusal = found.refusal
        if decision is not None and right is not None and not decision.allows(right):
            refusal = f"no-{right}-right"
        await self.audit.submit(
            AuditRecord(
                actor,
                decision.mailbox if decision is not None else bal.strip().lower(),
                action,
                self.interface,
                result=f"refused:{refusal}" if refusal else "ok",
                delegation_id=found.delegation_id,
                software=connection.software,
                remote=connection.peer,
                detail=f"via={decision.via} rights={','.join(sorted(decision.rights))}"
                if decision is not None
                else None,
            )
        )
        if decision is None:
            raise AuthFailed("authorization", f"{actor} may not open {bal}")
        if refusal is not None:
            raise AuthFailed("authorization", f"{actor} has no {right} right on {bal}")
        try:
            route = self.router.route(decision.mailbox, decision.backend)
        except NoRoute as exc:
            log.error("gateway.no_route", extra={"bal": decision.mailbox})
            raise AuthFailed("unavailable", str(exc)) from None
        return FrontGrant(
            store=None,
            rights=decision.rights,
            actor=actor,
            via=decision.via,
            address=decision.mailbox,
            identity=identity,
            decision=decision,
            route=route,
            credentials=credentials,
        )

    async def recheck(
        self, grant: FrontGrant, connection: ConnectionInfo, *, action: AuditAction, right: str
    ) -> str | None:
        """The registry's word now, not the cached one of the login or of MAIL FROM: None
        when `grant` still holds `right`, else why not (refusals are audited). For the
        moment a message is about to leave: a revocation between MAIL and DATA counts."""
        decision = await self.registry.decide(grant.identity, grant.mailbox)
        refusal = decision.refusal
        if decision.grant is not None and not decision.grant.allows(right):
            refusal = f"no-{right}-right"
        if refusal is not None:
            await self.audit.submit(
                AuditRecord(
                    grant.actor,
                    grant.mailbox,
                    action,
                    self.interface,
                    result=f"refused:{refusal}",
                    delegation_id=decision.delegation_id or grant.delegation_id,
                    software=connection.software,
                    remote=connection.peer,
                    detail="checked again before relaying",
                )
            )
        return refusal
