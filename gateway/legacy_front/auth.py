"""Who calls the gateway's historic web services: the `Caller` of each request.

Tried in this order, as the historic clients authenticate (the first that applies decides):

1. a Pro Santé Connect token, ``Authorization: Bearer`` (what an LPS half-way to the API
   LPS has) -> means ``token``; HTTP Basic is refused (17): there is no trusted gateway in
   front of the gateway;
2. a CPS card: the client certificate of the gateway's own mutual-TLS listener, or one
   passed on by a trusted front proxy (``ssl_client_verify: SUCCESS`` + ``ssl_client_cert``,
   URL-encoded PEM, from `trusted_proxies` only), checked by the card verifier (the CA,
   its revocation list, the validity) -> means ``card``;
3. the gateway's session cookie (`SESSION_COOKIE`) opened by an OTP login;
4. the one-time-password dialogue (``IDNAT`` + ``PASSWORD`` + ``IDCANAL``, then ``OTP``),
   answered by the historic platform while the person's BAL lives there and by PSC CIBA
   once it has moved (see `otp.py`); success opens a session cookie;
5. an unknown or expired cookie -> 26; no credentials at all -> 8.

Authorisation on the BAL is not decided here: the operations ask the delegation registry.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from starlette.requests import Request

from gateway.legacy_front.cookies import SessionBook
from gateway.legacy_front.otp import OtpLogin
from gateway.mss import historic_proxy
from gateway.mss.historic_proxy import (
    TrustedProxies,
    proxied_certificate,
)
from gateway.mss.historic_ws import (
    AUTH_IMPOSSIBLE,
    AUTH_INVALID_CREDENTIALS,
    AUTH_INVALID_SESSION,
    MAX_IDNAT,
    SESSION_COOKIE,
    Authenticated,
    AuthRefused,
    Caller,
)
from gateway.runtime.forwarded import client_address, tcp_peer
from gateway.runtime.limits import Exemptions, LoginThrottle, client_key
from psc_auth import TokenError, TokenValidator
from psc_auth.certificates import CardError, CardVerifier
from psc_auth.errors import IdNatError
from psc_auth.idnat import IdNat

log = logging.getLogger(__name__)

MAX_SOFTWARE = 64

CertificateOf = Callable[[Request], bytes | None]
"""The DER client certificate the gateway's own TLS listener verified, if any."""
OtpFor = Callable[[str], Awaitable[OtpLogin]]
"""Who answers the OTP dialogue of this idNat (the historic platform or PSC CIBA)."""


RefusalHook = Callable[[str, str, AuthRefused, str | None], Awaitable[None]]
"""(idNat, means, the refusal, software) of a refused login."""


@dataclass
class _Attempt:
    """What is known of a login while it is decided, for the audit of a refusal."""

    software: str | None
    idnat: str | None = None
    means: str = "token"


class LegacyFrontAuth:
    """The legacy front's `HistoricAuthenticator`."""

    def __init__(
        self,
        validator: TokenValidator,
        sessions: SessionBook,
        *,
        otp_for: OtpFor | None = None,
        cards: CardVerifier | None = None,
        certificate_of: CertificateOf | None = None,
        trusted_proxies: Iterable[str] = (),
        throttle: LoginThrottle | None = None,
        exempt: Exemptions | None = None,
    ) -> None:
        self.validator = validator
        self.sessions = sessions
        self.otp_for = otp_for
        self.cards = cards
        self.certificate_of = certificate_of
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        self.throttle = throttle
        """Failed logins per client address (the node's, shared with the IMAP and SMTP
        fronts): past the limit, refused at once (8) until the window passes."""
        self.exempt = exempt
        self.on_refused: RefusalHook | None = None
        """Told of each refused login whose person is known (a card's holder, an IDNAT):
        the gateway audits it, as a refused IMAP or SMTP login is."""

    @property
    def session_lifetime(self) -> int:
        return self.sessions.lifetime

    async def authenticate(self, request: Request) -> Authenticated:
        attempt = _Attempt(_bounded(request.headers.get("numhomologation")))
        key = self._throttle_key(request)
        if key is not None and self.throttle is not None:
            wait = self.throttle.retry_after(key)
            if wait is not None:  # costs nothing: no token checked, no platform asked
                raise AuthRefused(
                    AUTH_IMPOSSIBLE, f"too many failed logins, try again in {math.ceil(wait)} s"
                )
        try:
            return await self._authenticate(request, attempt)
        except AuthRefused as refused:
            if key is not None and self.throttle is not None:
                self.throttle.failed(key)
            if self.on_refused is not None and attempt.idnat is not None:
                await self.on_refused(attempt.idnat, attempt.means, refused, attempt.software)
            raise

    def _throttle_key(self, request: Request) -> str | None:
        peer = client_address(request)
        if peer is None or (self.exempt is not None and peer in self.exempt):
            return None
        return client_key(peer)

    async def _authenticate(self, request: Request, attempt: _Attempt) -> Authenticated:
        headers = request.headers
        software = attempt.software
        agent = _bounded(headers.get("user-agent"), 256)

        def caller(idnat: str, means: str) -> Caller:
            return Caller(idnat, software, means=means, user_agent=agent)

        authorization = headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            try:
                identity = await self.validator.validate(credentials.strip())
            except TokenError as exc:
                reason = f"token refused: {exc.failure.value}"
                raise AuthRefused(AUTH_INVALID_CREDENTIALS, reason) from None
            return Authenticated(caller(str(identity.idnat), "token"))
        if scheme.lower() == "basic":
            raise AuthRefused(AUTH_INVALID_CREDENTIALS, "no master login on the gateway")

        attempt.means = "card"
        holder = self._card(request, attempt)
        if holder is not None:
            return Authenticated(caller(holder, "card"))

        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is not None and "idnat" not in headers:
            found = self.sessions.find(cookie)
            if found is None:
                raise AuthRefused(AUTH_INVALID_SESSION, "session unknown or expired")
            return Authenticated(caller(found.session.idnat, found.means))

        idnat = headers.get("idnat")
        if idnat is None:
            raise AuthRefused(AUTH_IMPOSSIBLE, "no credentials")
        idnat = _idnat(idnat)
        attempt.idnat, attempt.means = idnat, "otp"
        if self.otp_for is None:
            raise AuthRefused(AUTH_IMPOSSIBLE, "one-time passwords are not offered here")
        login = await self.otp_for(idnat)
        means = await login.verify(idnat, headers)
        session = self.sessions.open(idnat, means)
        log.info("legacy_front.session_opened", extra={"idnat": idnat, "means": means})
        return Authenticated(caller(idnat, means), session)

    def _card(self, request: Request, attempt: _Attempt) -> str | None:
        """The card holder's idNat: from our own TLS listener, else from a trusted proxy."""
        der = self.certificate_of(request) if self.certificate_of else None
        headers = request.headers
        if der is None and "ssl_client_verify" in headers:
            peer = tcp_peer(request)  # the proxy itself, not whom it names
            if not self.trusted_proxies.trusts(peer):
                log.warning("legacy_front.untrusted_cert_headers", extra={"peer": peer})
                return None
            proxied = proxied_certificate(headers)
            der = historic_proxy.der(proxied) if proxied is not None else None
        if der is None:
            return None
        if self.cards is None:
            raise AuthRefused(AUTH_IMPOSSIBLE, "CPS cards are not accepted here")
        try:
            return str(self.cards.verify(der).idnat)
        except CardError as exc:
            attempt.idnat = exc.idnat
            log.info(
                "legacy_front.card_refused",
                extra={"reason": exc.refusal.value, "idnat": exc.idnat},
            )
            raise AuthRefused(
                AUTH_INVALID_CREDENTIALS, f"card refused: {exc.refusal.value}"
            ) from None


def _idnat(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_IDNAT:
        raise AuthRefused(AUTH_INVALID_CREDENTIALS, "unknown idNat")
    try:
        return str(IdNat.parse(value))
    except IdNatError:
        raise AuthRefused(AUTH_INVALID_CREDENTIALS, "unknown idNat") from None


def _bounded(value: str | None, limit: int = MAX_SOFTWARE) -> str | None:
    """A client-chosen label, printable and bounded (it lands in logs and usage figures)."""
    if not value:
        return None
    cleaned = "".join(c for c in value.strip() if c.isprintable())[:limit]
    return cleaned or None
