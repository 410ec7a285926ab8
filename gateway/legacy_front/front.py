"""The legacy front assembled: the historic web services' faces (REST, SOAP, WSDL: the
very router the mock serves, `gateway.mss.historic_http`) over the gateway's operations,
its authentication, and who answers the OTP dialogue of each person.

Served on the gateway's HTTP listener under ``/mss-msg-services`` (beside the API, with
its own body cap: attachments travel in base64), and, when `https_port` is set, on a
mutual-TLS listener that asks for a CPS card.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import httpx
from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.backends.routing import Placement
from gateway.legacy_front.auth import LegacyFrontAuth
from gateway.legacy_front.cookies import SessionBook
from gateway.legacy_front.otp import CibaOtp, HistoricOtp, OtpLogin
from gateway.mss.historic_http import build_historic_router
from gateway.mss.historic_ws import HistoricOperations
from gateway.runtime.asgi_tls import client_certificate
from gateway.runtime.limits import NodeLimits
from gateway.runtime.logs import RequestIdMiddleware
from gateway.runtime.tls import backend_context
from gateway.settings import Settings
from psc_auth import TokenValidator
from psc_auth.certificates import CardVerifier
from psc_auth.trust import system_trust

log = logging.getLogger(__name__)

PREFIX = "/mss-msg-services/"

OwnBals = Callable[[str], Awaitable[list[tuple[str, str]]]]
"""idNat -> [(BAL held, backend the registry records for it)]."""


class LegacyFront:
    """What the legacy front holds for its lifetime: HTTP clients towards PSC and the
    historic platforms, the session book, the card verifier."""

    def __init__(
        self,
        settings: Settings,
        *,
        validator: TokenValidator,
        ciba_validator: TokenValidator,
        placement: Placement,
        own_bals: OwnBals,
        cards: CardVerifier | None = None,
        limits: NodeLimits | None = None,
    ) -> None:
        front = settings.legacy_front
        self.settings = settings
        self.placement = placement
        self.own_bals = own_bals
        self.sessions = SessionBook(front.session_lifetime)
        self._http = httpx.AsyncClient(
            timeout=10, trust_env=False, follow_redirects=False, verify=system_trust()
        )
        self._historic: dict[str, HistoricOtp] = {}
        self._historic_http: list[httpx.AsyncClient] = []
        for name, backend in settings.backends.items():
            if backend.kind == "legacy_ws" and backend.ws_url:
                http = httpx.AsyncClient(
                    timeout=httpx.Timeout(backend.reply_timeout, connect=backend.connect_timeout),
                    trust_env=False,
                    follow_redirects=False,
                    verify=backend_context(backend.ca_file, backend.tls_verify),
                )
                self._historic_http.append(http)
                self._historic[name] = HistoricOtp(backend.ws_url, http)
        self.ciba = CibaOtp(
            ciba_validator,
            self._http,
            client_id=settings.ui.client_id,
            client_secret=settings.ui.client_secret,
            max_failures=front.otp_max_failures,
            lockout=front.otp_lockout,
            max_wait=front.ciba_max_wait,
        )
        self.auth = LegacyFrontAuth(
            validator,
            self.sessions,
            otp_for=self.otp_for,
            cards=cards,
            certificate_of=_certificate_of,
            trusted_proxies=front.trusted_proxies,
            throttle=limits.logins if limits is not None else None,
            exempt=limits.exempt if limits is not None else None,
        )

    async def otp_for(self, idnat: str) -> OtpLogin:
        """The historic platform while one of the person's own BAL lives there (it holds
        their password and sends the code), PSC CIBA otherwise."""
        for address, registered in await self.own_bals(idnat):
            name = self.placement.backend_of(address, registered)
            if name is not None and name in self._historic:
                return self._historic[name]
        return self.ciba

    def app(self, operations: HistoricOperations) -> FastAPI:
        front = self.settings.legacy_front
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.include_router(
            build_historic_router(
                operations,
                self.auth,
                max_body=front.max_body,
                public_url=self.settings.http.public_url,
            )
        )
        app.add_middleware(RequestIdMiddleware)
        return app

    async def aclose(self) -> None:
        await self._http.aclose()
        for http in self._historic_http:
            await http.aclose()


def _certificate_of(request: Request) -> bytes | None:
    return client_certificate(request.scope)


class PathDispatch:
    """Requests under a prefix go to their app, the rest (and lifespan) to `default`: the
    legacy front keeps its own body cap and error shapes beside the API's."""

    def __init__(self, default: ASGIApp, routes: Mapping[str, ASGIApp]) -> None:
        self.default = default
        self.routes = tuple(routes.items())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope.get("path", "")
            for prefix, app in self.routes:
                if path.startswith(prefix):
                    await app(scope, receive, send)
                    return
        await self.default(scope, receive, send)
