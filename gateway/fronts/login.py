"""Who is logging in and which BAL they may open: token (psc_auth), then grant (delegation),
then route (which backend). Shared by the IMAP and SMTP fronts so both decide the same way.

A CPS card (SASL EXTERNAL over mutual TLS) is the other way to say who: its holder is a
person, then the same delegation decision as for a token; or an organisation certificate,
which opens the APP BAL it names (`psc_auth.certificates`) and nothing else. The grant
says which (`means`), so usage figures can name the historic interfaces.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from dataclasses import dataclass
from typing import Literal

from delegation.audit import AuditAction, AuditRecord
from delegation.models import RIGHTS
from delegation.service import Decision, DelegationService, Grant
from gateway.audit import AuditSink
from gateway.backends.routing import NoRoute, Route, Router
from gateway.bal_migration.gate import BalGate, Held, Moved
from gateway.decisions import DecisionCache
from gateway.imap.session import ExternalCredentials, SessionGrant
from gateway.runtime.limits import Exemptions, LoginThrottle, SlotCounter, client_key
from gateway.runtime.login import AuthFailed, ConnectionInfo
from psc_auth import Identity, TokenError, TokenValidator
from psc_auth.certificates import CardError, CardHolder, CardVerifier
from psc_auth.sasl import TokenCredentials, error_challenge

log = logging.getLogger(__name__)


Means = Literal["token", "card"]
"""How a front login proved who: a PSC token, or a CPS card / organisation certificate."""


@dataclass(frozen=True, kw_only=True)
class FrontGrant(SessionGrant):
    """A login on a gateway front: who, which BAL with which rights, and where it lives."""

    identity: Identity
    decision: Grant
    route: Route
    # the token login's credentials; None for a card login (no token: the backend is
    # opened with its master login)
    credentials: TokenCredentials | None = dataclasses.field(repr=False)
    # the login's audit event, when the front writes it once the session is open
    login_event: AuditRecord | None = dataclasses.field(default=None, compare=False)
    means: Means = "token"
    card: CardHolder | None = dataclasses.field(default=None, compare=False)
    # the gate's count of the BAL's moves when this login decided where it goes
    moves: int = dataclasses.field(default=0, compare=False)

    @property
    def delegation_id(self) -> int | None:
        return self.decision.delegation_id

    @property
    def token(self) -> str | None:
        """The PSC access token of a token login; None for a card login."""
        return self.credentials.token if self.credentials is not None else None


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
        exempt: Exemptions | None = None,
        cards: CardVerifier | None = None,
        gate: BalGate | None = None,
    ) -> None:
        self.cards = cards
        self.gate = gate  # holds a BAL's logins while it moves (`gateway.bal_migration`)
        self.validator = validator
        self.registry = registry
        self.router = router
        self.interface = interface
        self.decisions = decisions
        self.audit = audit
        self.throttle = throttle
        self.exempt = exempt or Exemptions()
        issuer = validator.config.issuer.rstrip("/")
        self.challenge = error_challenge(f"{issuer}/.well-known/openid-configuration")

    async def authenticate(
        self,
        credentials: TokenCredentials,
        connection: ConnectionInfo,
        *,
        record_success: bool = True,
    ) -> FrontGrant:
        """Who, which BAL, where. Failed logins are throttled: bad tokens per source address
        (refused before the next token costs a validation), BAL one may not open per person
        (a person polling a withdrawn delegation does not lock out their neighbours behind
        one NAT address). With `record_success` False, the login's audit event is left in
        the grant (`login_event`) for the caller to write once the session is really open."""
        address = None if connection.peer in self.exempt else client_key(connection.peer)
        self._throttled(address, "from your address")
        try:
            identity = await self.identify(credentials)
        except AuthFailed as failure:
            throttle = self.throttle
            if throttle is not None and address is not None and failure.kind == "authentication":
                throttle.failed(address)
            raise
        person = f"idnat:{identity.idnat}"
        self._throttled(person, "for this person")
        try:
            bal = await self.target(identity, credentials.user)
            return await self.authorise(
                identity,
                bal,
                credentials,
                connection,
                action=AuditAction.LOGIN,
                record_success=record_success,
            )
        except AuthFailed as failure:
            if self.throttle is not None and failure.kind == "authorization":
                self.throttle.failed(person)
            raise

    async def authenticate_card(
        self,
        credentials: ExternalCredentials,
        connection: ConnectionInfo,
        *,
        record_success: bool = True,
    ) -> FrontGrant:
        """`authenticate` for SASL EXTERNAL: the client certificate TLS verified, checked
        again here (issuer, validity, usage, revocation list as it is now), then the BAL of
        the authzid (empty: the holder's own) with the same decision, audit and throttling
        as a token. A refused card whose holder can be read is audited."""
        address = None if connection.peer in self.exempt else client_key(connection.peer)
        self._throttled(address, "from your address")
        verifier = self.cards
        if verifier is None:
            raise AuthFailed("authentication", "this server takes no client certificate")
        try:
            holder = verifier.verify(credentials.certificate)
        except CardError as exc:
            if self.throttle is not None and address is not None:
                self.throttle.failed(address)
            log.info(
                "gateway.card_refused", extra={"reason": exc.refusal.value, "idnat": exc.idnat}
            )
            if exc.idnat is not None:
                await self.audit.submit(
                    self.event(
                        exc.idnat,
                        credentials.authzid,
                        AuditAction.LOGIN,
                        connection,
                        result=f"refused:card-{exc.refusal.value}",
                        delegation_id=None,
                        detail="means=card",
                    )
                )
            raise AuthFailed("authentication", f"card refused ({exc.refusal.value})") from None
        identity = holder.identity()
        person = f"idnat:{identity.idnat}"
        self._throttled(person, "for this person")
        try:
            if holder.is_organisation:
                bal = credentials.authzid.strip().lower() or holder.mailboxes[0]
            else:
                bal = await self.target(identity, credentials.authzid)
            return await self.authorise(
                identity,
                bal,
                None,
                connection,
                action=AuditAction.LOGIN,
                record_success=record_success,
                card=holder,
            )
        except AuthFailed as failure:
            if self.throttle is not None and failure.kind == "authorization":
                self.throttle.failed(person)
            raise

    async def authenticate_external(
        self, credentials: ExternalCredentials, connection: ConnectionInfo
    ) -> FrontGrant:
        """`authenticate_card`, its audit event written at once."""
        return await self.authenticate_card(credentials, connection)

    async def take_session_slot(self, grant: FrontGrant, sessions: SlotCounter) -> None:
        """One of the person's `sessions` slots for this login, or `AuthFailed("limit")`
        with the refusal audited on the login's own event (left in the grant by
        `record_success=False`). The caller releases the slot when the session ends."""
        if sessions.acquire(grant.actor):
            return
        log.warning(
            "gateway.too_many_sessions", extra={"actor": grant.actor, "interface": self.interface}
        )
        assert grant.login_event is not None
        await self.audit.submit(
            dataclasses.replace(grant.login_event, result="refused:too-many-sessions")
        )
        raise AuthFailed("limit", f"{grant.actor} has {sessions.limit} sessions open already")

    def _throttled(self, key: str | None, whose: str) -> None:
        throttle = self.throttle
        wait = throttle.retry_after(key) if throttle is not None and key is not None else None
        if wait is not None:
            log.info("gateway.login_throttled", extra={"key": key})
            raise AuthFailed(
                "throttled", f"too many failed logins {whose}, try again in {math.ceil(wait)} s"
            )

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
        credentials: TokenCredentials | None,
        connection: ConnectionInfo,
        *,
        action: AuditAction,
        right: str | None = None,
        record_success: bool = True,
        card: CardHolder | None = None,
    ) -> FrontGrant:
        """The registry's decision on `bal` for `identity` (for an organisation
        certificate: whether it names that APP BAL), audited, routed. `card` is the
        certificate of a card login (`credentials` None)."""
        actor = str(identity.idnat)
        moves = 0
        if self.gate is not None:
            try:  # a BAL being moved: its new logins land where it goes
                await self.gate.passage(bal)
            except Moved:
                pass  # not routed yet: it goes where the BAL went
            except Held as exc:
                raise AuthFailed("unavailable", str(exc)) from None
            moves = self.gate.epoch(bal)
        if card is not None and card.is_organisation:
            found = await self._organisation_decision(card, bal)
        else:
            found = await self.decisions.decide(identity, bal)
        decision = found.grant
        means: Means = "card" if card is not None else "token"
        detail = (
            f"via={decision.via} rights={','.join(sorted(decision.rights))}" if decision else ""
        )
        if card is not None:
            detail = f"{detail} means=card".strip()
        refusal = _refusal(found, right)
        submitted = refusal is not None or record_success  # else when the session is open
        event = self.event(
            actor,
            decision.mailbox if decision is not None else bal.strip().lower(),
            action,
            connection,
            result=f"refused:{refusal}" if refusal else "ok",
            delegation_id=found.delegation_id,
            detail=detail or None,
            at=self.audit.registry.now() if submitted else None,
        )
        if submitted:
            await self.audit.submit(event)
        if decision is None:
            raise AuthFailed("authorization", f"{actor} may not open {bal}")
        if refusal is not None:
            raise AuthFailed("authorization", f"{actor} has no {right} right on {bal}")
        try:
            route = self.router.route(decision.mailbox, decision.backend)
        except NoRoute as exc:
            log.error("gateway.no_route", extra={"bal": decision.mailbox})
            if not record_success:
                await self.audit.submit(dataclasses.replace(event, result="failed:no-route"))
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
            login_event=None if record_success else event,
            means=means,
            card=card,
            moves=moves,
        )

    async def _organisation_decision(self, card: CardHolder, bal: str) -> Decision:
        """An organisation certificate opens the APP BAL it names, with every right."""
        address = bal.strip().lower()
        if address not in card.mailboxes:
            return Decision(None, "not-named-by-certificate", None)
        mailbox = await self.registry.mailbox(address)
        if mailbox is None or mailbox.type != "APP":
            return Decision(None, "not-an-app-bal", None)
        grant = Grant(
            mailbox=mailbox.address,
            rights=RIGHTS,
            via="holder",
            delegation_id=None,
            holder_idnat=None,
            holder_name=mailbox.organisation or card.name,
            expires_at=None,
            mailbox_type=mailbox.type,
            backend=mailbox.backend,
        )
        return Decision(grant, None, None)

    async def recheck(
        self, grant: FrontGrant, connection: ConnectionInfo, *, action: AuditAction, right: str
    ) -> str | None:
        """The registry's word now, not the one the login or MAIL FROM got: None when
        `grant` still holds `right`, else why not (refusals are audited). For the moment a
        message is about to leave: a revocation between MAIL and DATA counts. The decision
        cache forgets a pair at every change of it, on every node: no round trip here."""
        card = grant.card
        if card is not None and card.is_organisation:
            found = await self._organisation_decision(card, grant.mailbox)
        else:
            found = await self.decisions.decide(grant.identity, grant.mailbox)
        refusal = _refusal(found, right)
        if refusal is not None:
            await self.audit.submit(
                self.event(
                    grant.actor,
                    grant.mailbox,
                    action,
                    connection,
                    result=f"refused:{refusal}",
                    delegation_id=found.delegation_id or grant.delegation_id,
                    detail="checked again before relaying",
                )
            )
        return refusal

    def event(
        self,
        actor: str,
        mailbox: str,
        action: AuditAction,
        connection: ConnectionInfo | None,
        *,
        result: str = "ok",
        delegation_id: int | None,
        detail: str | None,
        at: dt.datetime | None = None,
    ) -> AuditRecord:
        """An audit event of this front (`connection` None: the client is already gone);
        undated, the sink dates it when it arrives (a copy)."""
        return AuditRecord(
            actor,
            mailbox,
            action,
            self.interface,
            result=result,
            delegation_id=delegation_id,
            software=connection.software if connection else None,
            remote=connection.peer if connection else None,
            detail=detail,
            at=at,
        )


def _refusal(found: Decision, right: str | None) -> str | None:
    """Why the registry's decision does not let its person act with `right` (None: it
    does; `right` None asks only whether the BAL may be opened)."""
    if found.grant is not None and right is not None and not found.grant.allows(right):
        return f"no-{right}-right"
    return found.refusal
