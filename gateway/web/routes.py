"""The holder's page, `/ui/delegations`: log in with Pro Santé Connect (authorization code
with PKCE), see one's BAL, grant and revoke delegations, see who opened the BAL."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from delegation.errors import DelegationError
from delegation.service import DelegationService
from gateway.api.schemas import RIGHTS_ORDER
from gateway.web.sessions import COOKIE, PendingLogin, SessionStore, WebSession
from psc_auth import TokenError, TokenValidator

log = logging.getLogger(__name__)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
RIGHT_LABELS = {"read": "lecture", "write": "écriture", "send": "envoi"}
PARIS = dt.timezone(dt.timedelta(hours=1))


class WebConfig:
    def __init__(self, client_id: str, client_secret: str, public_url: str | None) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.public_url = public_url.rstrip("/") if public_url else None

    def redirect_uri(self, request: Request) -> str:
        base = self.public_url or str(request.base_url).rstrip("/")
        return f"{base}/ui/callback"


def build_router(
    service: DelegationService,
    validator: TokenValidator,
    config: WebConfig,
    sessions: SessionStore | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)
    store = sessions or SessionStore()

    def session_of(request: Request) -> WebSession | None:
        return store.get(request.cookies.get(COOKIE))

    def with_cookie(response: Response, session: WebSession, request: Request) -> Response:
        response.set_cookie(
            COOKIE,
            session.id,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/ui",
        )
        return response

    @router.get("/")
    async def root() -> Response:
        return RedirectResponse("/ui/delegations", status_code=303)

    @router.get("/login")
    async def login(request: Request) -> Response:
        session = session_of(request) or store.create()
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        session.pending = PendingLogin(
            state=secrets.token_urlsafe(24),
            verifier=verifier,
            nonce=secrets.token_urlsafe(16),
            created_at=dt.datetime.now(dt.UTC).timestamp(),
        )
        endpoint = str((await validator.provider.metadata())["authorization_endpoint"])
        query = urlencode(
            {
                "response_type": "code",
                "client_id": config.client_id,
                "redirect_uri": config.redirect_uri(request),
                "scope": "openid scope_all",
                "acr_values": "eidas1",
                "state": session.pending.state,
                "nonce": session.pending.nonce,
                "code_challenge": challenge.rstrip(b"=").decode(),
                "code_challenge_method": "S256",
            }
        )
        return with_cookie(
            RedirectResponse(f"{endpoint}?{query}", status_code=303), session, request
        )

    @router.get("/callback")
    async def callback(
        request: Request,
        code: Annotated[str | None, Query(max_length=512)] = None,
        state: Annotated[str | None, Query(max_length=256)] = None,
        error: Annotated[str | None, Query(max_length=128)] = None,
    ) -> Response:
        session = session_of(request)
        pending = session.pending if session else None
        if session is None or pending is None or state is None:
            return _page(
                request, "message.html", {"message": "Session de connexion inconnue."}, 400
            )
        session.pending = None
        if not secrets.compare_digest(state, pending.state):
            return _page(
                request, "message.html", {"message": "Réponse de connexion invalide."}, 400
            )
        if error or not code:
            return _page(request, "message.html", {"message": "Connexion refusée."}, 401)
        token_endpoint = str((await validator.provider.metadata())["token_endpoint"])
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.post(
                    token_endpoint,
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": config.redirect_uri(request),
                        "code_verifier": pending.verifier,
                    },
                    auth=(config.client_id, config.client_secret),
                )
            answer.raise_for_status()
            session.identity = await validator.validate(str(answer.json()["access_token"]))
        except (httpx.HTTPError, KeyError, ValueError, TokenError) as exc:
            log.info("web.login_failed", extra={"error": type(exc).__name__})
            return _page(request, "message.html", {"message": "Connexion impossible."}, 401)
        log.info("web.login", extra={"idnat": str(session.identity.idnat)})
        return RedirectResponse("/ui/delegations", status_code=303)

    @router.post("/logout")
    async def logout(request: Request, csrf: Annotated[str, Form(max_length=64)]) -> Response:
        session = session_of(request)
        if session is not None and session.check_csrf(csrf):
            store.drop(session.id)
        return RedirectResponse("/ui/delegations", status_code=303)

    @router.get("/delegations", response_class=HTMLResponse)
    async def page(
        request: Request, q: Annotated[str | None, Query(max_length=64)] = None
    ) -> Response:
        session = session_of(request)
        if session is None or session.identity is None:
            return RedirectResponse("/ui/login", status_code=303)
        identity = session.identity
        grants = await service.accessible(identity)
        owned = [g for g in grants if g.via == "holder"]
        managed = []
        for grant in owned:
            delegations = await service.delegations_of(
                identity, grant.mailbox, include_revoked=True
            )
            audit = await service.audit_for(grant.mailbox, limit=50)
            managed.append((grant, delegations, audit))
        found = []
        search_error = None
        if q is not None:
            if len(q.strip()) < 3:
                search_error = "Saisissez au moins 3 caractères."
            else:
                found = await service.directory_search(q.strip(), limit=20)
        flash, session.flash = session.flash, None
        context = {
            "identity": identity,
            "grants": grants,
            "managed": managed,
            "found": found,
            "query": q or "",
            "search_error": search_error,
            "flash": flash,
            "csrf": session.csrf,
            "rights_order": RIGHTS_ORDER,
            "right_labels": RIGHT_LABELS,
            "now": dt.datetime.now(dt.UTC),
            "local": lambda when: (
                when.astimezone(PARIS).strftime("%d/%m/%Y %H:%M") if when else "—"
            ),
        }
        return _page(request, "delegations.html", context)

    @router.post("/delegations/grant")
    async def grant(
        request: Request,
        csrf: Annotated[str, Form(max_length=64)],
        mailbox: Annotated[str, Form(max_length=254)],
        delegate: Annotated[str, Form(max_length=32)],
        rights: Annotated[list[str], Form(max_length=3)],
        expires_on: Annotated[str, Form(max_length=10)] = "",
    ) -> Response:
        session = session_of(request)
        if session is None or session.identity is None or not session.check_csrf(csrf):
            return _page(request, "message.html", {"message": "Session expirée."}, 403)
        try:
            expires = _end_of_day(expires_on) if expires_on else None
            await service.grant(
                session.identity,
                mailbox,
                delegate,
                rights,
                expires,
                software=request.headers.get("user-agent", "")[:128] or None,
                remote=request.client.host if request.client else None,
            )
            session.flash = "Délégation enregistrée."
        except ValueError:
            session.flash = "Date d'expiration invalide."
        except DelegationError as exc:
            session.flash = f"Refusé : {exc}"
        return RedirectResponse("/ui/delegations", status_code=303)

    @router.post("/delegations/revoke")
    async def revoke(
        request: Request,
        csrf: Annotated[str, Form(max_length=64)],
        mailbox: Annotated[str, Form(max_length=254)],
        delegation_id: Annotated[int, Form(ge=1, le=2**31 - 1)],
    ) -> Response:
        session = session_of(request)
        if session is None or session.identity is None or not session.check_csrf(csrf):
            return _page(request, "message.html", {"message": "Session expirée."}, 403)
        try:
            await service.revoke(
                session.identity,
                mailbox,
                delegation_id,
                software=request.headers.get("user-agent", "")[:128] or None,
                remote=request.client.host if request.client else None,
            )
            session.flash = "Délégation révoquée."
        except DelegationError as exc:
            session.flash = f"Refusé : {exc}"
        return RedirectResponse("/ui/delegations", status_code=303)

    return router


def _end_of_day(day: str) -> dt.datetime:
    """An expiry chosen as a date ends that evening, Paris time."""
    date = dt.date.fromisoformat(day)
    return dt.datetime.combine(date, dt.time(23, 59, 59), tzinfo=PARIS)


def _page(request: Request, name: str, context: dict[str, object], status: int = 200) -> Response:
    return templates.TemplateResponse(request, name, context, status_code=status)
