"""The holder's page, `/ui/delegations`: log in with Pro Santé Connect (authorization code
with PKCE), see one's BAL, grant and revoke delegations, see who opened the BAL."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from delegation.errors import DelegationError
from delegation.expiry import check_expiry
from delegation.models import MAX_ID
from delegation.service import DelegationService
from gateway.api.admin import AdminConfig
from gateway.api.schemas import PRINTABLE, RIGHTS_ORDER
from gateway.runtime.forwarded import client_address
from gateway.usage.report import UsageReport
from gateway.web.migrations import migrations_view
from gateway.web.sessions import COOKIE, PendingLogin, SessionStore, WebSession
from psc_auth import TokenError, TokenValidator
from psc_auth.trust import system_trust

log = logging.getLogger(__name__)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
STATIC = Path(__file__).parent / "static"  # our scripts, and vendored libraries (vendor/)
PREFIX = "/ui"
RIGHT_LABELS = {"read": "lecture", "write": "écriture", "send": "envoi"}
PARIS = dt.timezone(dt.timedelta(hours=1))
MAX_QUERY = 64
ADMINS_ONLY = "Page réservée aux administrateurs de l'opérateur."
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_ERRORS = {
    401: "Connexion refusée.",
    403: "Accès refusé.",
    404: "Page introuvable.",
    405: "Méthode non permise.",
    503: "Service momentanément indisponible.",
}


class WebConfig:
    def __init__(self, client_id: str, client_secret: str, public_url: str | None) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.public_url = public_url.rstrip("/") if public_url else None

    def redirect_uri(self, request: Request) -> str:
        base = self.public_url or str(request.base_url).rstrip("/")
        return f"{base}/ui/callback"

    def secure_cookies(self, request: Request) -> bool:
        """Secure when browsers come over https: the public URL says so even when a
        TLS-terminating proxy passes the request on in clear."""
        public = (self.public_url or "").lower()
        return public.startswith("https://") or request.url.scheme == "https"


UNCONFIGURED_LOGIN = (
    "Connexion impossible : la passerelle n'a pas de secret client Pro Santé Connect "
    "(réglage ui.client_secret, ou la variable LPSGW_UI__CLIENT_SECRET). "
    "Prévenez son administrateur."
)


def build_router(
    service: DelegationService,
    validator: TokenValidator,
    config: WebConfig,
    sessions: SessionStore | None = None,
    admin: AdminConfig | None = None,
) -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    store = sessions or SessionStore()

    def session_of(request: Request) -> WebSession | None:
        return store.get(request.cookies.get(COOKIE))

    def with_cookie(response: Response, session: WebSession, request: Request) -> Response:
        response.set_cookie(
            COOKIE,
            session.id,
            httponly=True,
            samesite="lax",
            secure=config.secure_cookies(request),
            path=PREFIX,
        )
        return response

    @router.get("/")
    async def root() -> Response:
        return RedirectResponse("/ui/delegations", status_code=303)

    @router.get("/login")
    async def login(request: Request) -> Response:
        """Always a fresh pre-login session: a session id that came with the request, perhaps
        planted by someone else, is never the one that ends up logged in."""
        if not config.client_secret:  # PSC would refuse the code: say what is missing
            log.error("web.login_unconfigured", extra={"missing": "ui.client_secret"})
            return _message(request, UNCONFIGURED_LOGIN, 503)
        session = store.create_pending(client_address(request) or "?")
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
        """The identity goes into a brand-new session (new id, new CSRF token); the pre-login
        session is used once and dropped, whatever the outcome."""
        prelogin = session_of(request)
        pending = prelogin.pending if prelogin else None
        if prelogin is None or pending is None or state is None:
            return _message(request, "Session de connexion inconnue.", 400)
        store.drop(prelogin.id)
        if not secrets.compare_digest(state, pending.state):
            return _message(request, "Réponse de connexion invalide.", 400)
        if error or not code:
            return _message(request, "Connexion refusée.", 401)
        token_endpoint = str((await validator.provider.metadata())["token_endpoint"])
        try:
            async with httpx.AsyncClient(timeout=10, verify=system_trust()) as http:
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
            identity = await validator.validate(str(answer.json()["access_token"]))
        except (httpx.HTTPError, KeyError, ValueError, TokenError) as exc:
            log.info("web.login_failed", extra={"error": type(exc).__name__})
            return _message(request, "Connexion impossible.", 401)
        session = store.create()
        session.identity = identity
        log.info("web.login", extra={"idnat": str(identity.idnat)})
        return with_cookie(RedirectResponse("/ui/delegations", status_code=303), session, request)

    @router.post("/logout")
    async def logout(request: Request, csrf: Annotated[str, Form(max_length=64)]) -> Response:
        session = session_of(request)
        response = RedirectResponse("/ui/delegations", status_code=303)
        if session is not None and session.check_csrf(csrf):
            store.drop(session.id)
            response.delete_cookie(
                COOKIE,
                path=PREFIX,
                secure=config.secure_cookies(request),
                httponly=True,
                samesite="lax",
            )
        return response

    @router.get("/delegations", response_class=HTMLResponse)
    async def page(request: Request, q: str | None = None) -> Response:
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
            if len(q) > MAX_QUERY:
                search_error = f"Saisissez au plus {MAX_QUERY} caractères."
            elif len(q.strip()) < 3:
                search_error = "Saisissez au moins 3 caractères."
            else:
                try:
                    found = await service.directory_search(q.strip(), limit=20)
                except DelegationError:
                    search_error = "Saisissez au moins 3 lettres ou chiffres."
        flash, session.flash = session.flash, None
        context = {
            "identity": identity,
            "grants": grants,
            "managed": managed,
            "found": found,
            "query": (q or "")[:MAX_QUERY],
            "search_error": search_error,
            "flash": flash,
            "csrf": session.csrf,
            "rights_order": RIGHTS_ORDER,
            "right_labels": RIGHT_LABELS,
            "now": dt.datetime.now(dt.UTC),
            "local": _local,
        }
        return _page(request, "delegations.html", context)

    @router.get("/admin/usage", response_class=HTMLResponse)
    async def usage_page(
        request: Request, since: Annotated[str | None, Query(max_length=10)] = None
    ) -> Response:
        """Who still uses what, for the operator's administrators: charts, and the same
        figures as tables."""
        session = session_of(request)
        if session is None or session.identity is None:
            return RedirectResponse("/ui/login", status_code=303)
        if admin is None or not admin.allows(session.identity):
            return _message(request, ADMINS_ONLY, 403)
        try:
            day = dt.date.fromisoformat(since) if since else None
        except ValueError:
            return _message(request, "Date invalide (AAAA-MM-JJ).", 400)
        report = await admin.usage(day)
        context = {
            "identity": session.identity,
            "report": report,
            "chart": chart_data(report),
            "since": day.isoformat() if day else "",
            "local": _local,
        }
        return _page(request, "admin_usage.html", context)

    @router.get("/admin/migrations", response_class=HTMLResponse)
    async def migrations_page(request: Request) -> Response:
        """The BAL being moved, for the operator's administrators: whole on the server
        (useful without scripts), then refreshed in place from `migrations.json`."""
        session = session_of(request)
        if session is None or session.identity is None:
            return RedirectResponse("/ui/login", status_code=303)
        if admin is None or not admin.allows(session.identity):
            return _message(request, ADMINS_ONLY, 403)
        context = {
            "identity": session.identity,
            "view": await migrations_view(admin.migrations, _local),
        }
        response = _page(request, "admin_migrations.html", context)
        response.headers.update(NO_STORE)
        return response

    @router.get("/admin/migrations.json")
    async def migrations_json(request: Request) -> Response:
        """What the page's script reads every two seconds; the page's session and rule
        (the administrators' API is `/admin/migrations`, with a bearer token)."""
        session = session_of(request)
        if session is None or session.identity is None:
            return RedirectResponse("/ui/login", status_code=303, headers=NO_STORE)
        if admin is None or not admin.allows(session.identity):
            return JSONResponse({"detail": ADMINS_ONLY}, status_code=403, headers=NO_STORE)
        view = await migrations_view(admin.migrations, _local)
        return JSONResponse(view, headers=NO_STORE)

    @router.post("/delegations/grant")
    async def grant(
        request: Request,
        csrf: Annotated[str, Form(max_length=64)],
        mailbox: Annotated[str, Form(max_length=254, pattern=PRINTABLE)],
        delegate: Annotated[str, Form(max_length=32)],
        rights: Annotated[list[str] | None, Form(max_length=3)] = None,
        expires_on: Annotated[str, Form(max_length=10)] = "",
    ) -> Response:
        session = session_of(request)
        if session is None or session.identity is None or not session.check_csrf(csrf):
            return _message(request, "Session expirée.", 403)
        if not rights:
            session.flash = "Choisissez au moins un droit."
            return RedirectResponse("/ui/delegations", status_code=303)
        try:
            expires = _end_of_day(expires_on) if expires_on else None
            check_expiry(expires, service.now())
        except (ValueError, DelegationError):
            session.flash = "Date d'expiration invalide : un jour à venir, dans 10 ans au plus."
            return RedirectResponse("/ui/delegations", status_code=303)
        try:
            await service.grant(
                session.identity,
                mailbox,
                delegate,
                rights,
                expires,
                software=request.headers.get("user-agent", "")[:128] or None,
                remote=client_address(request),
            )
            session.flash = "Délégation enregistrée."
        except DelegationError as exc:
            session.flash = f"Refusé : {exc}"
        return RedirectResponse("/ui/delegations", status_code=303)

    @router.post("/delegations/revoke")
    async def revoke(
        request: Request,
        csrf: Annotated[str, Form(max_length=64)],
        mailbox: Annotated[str, Form(max_length=254, pattern=PRINTABLE)],
        delegation_id: Annotated[int, Form(ge=1, le=MAX_ID)],
    ) -> Response:
        session = session_of(request)
        if session is None or session.identity is None or not session.check_csrf(csrf):
            return _message(request, "Session expirée.", 403)
        try:
            await service.revoke(
                session.identity,
                mailbox,
                delegation_id,
                software=request.headers.get("user-agent", "")[:128] or None,
                remote=client_address(request),
            )
            session.flash = "Délégation révoquée."
        except DelegationError as exc:
            session.flash = f"Refusé : {exc}"
        return RedirectResponse("/ui/delegations", status_code=303)

    return router


def chart_data(report: UsageReport) -> dict[str, Any]:
    """The page's figures as its charts and tables read them: sessions per day per
    interface (every day of the period that has any), and the BAL still on the historic
    platform counted by the software that reached them last."""
    days = sorted({d.day for d in report.days})
    index = {day: i for i, day in enumerate(days)}
    series: dict[str, list[int]] = {}
    for count in report.days:
        series.setdefault(count.interface, [0] * len(days))[index[count.day]] += count.sessions
    historic: dict[str, int] = {}
    for bal in report.historic:
        historic[bal.software] = historic.get(bal.software, 0) + 1
    return {
        "days": [day.isoformat() for day in days],
        "interfaces": [{"interface": k, "sessions": v} for k, v in sorted(series.items())],
        "historic": [
            {"software": k, "bals": v}
            for k, v in sorted(historic.items(), key=lambda item: (-item[1], item[0]))
        ],
    }


def error_page(request: Request, status: int) -> Response | None:
    """A request the pages cannot take (a malformed form, an unknown page) gets a French
    page, not the API's problem+json; None outside the pages."""
    path = request.url.path
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return None
    return _message(request, _ERRORS.get(status, "Requête invalide."), status)


def _end_of_day(day: str) -> dt.datetime:
    """An expiry chosen as a date ends that evening, Paris time."""
    date = dt.date.fromisoformat(day)
    return dt.datetime.combine(date, dt.time(23, 59, 59), tzinfo=PARIS)


def _local(when: dt.datetime | None) -> str:
    """Paris time; a date at the edge of the calendar (year 9999) is shown in UTC rather than
    overflow."""
    if when is None:
        return "—"
    try:
        return when.astimezone(PARIS).strftime("%d/%m/%Y %H:%M")
    except OverflowError:
        return when.strftime("%d/%m/%Y %H:%M UTC")


def _message(request: Request, text: str, status: int) -> Response:
    return _page(request, "message.html", {"message": text}, status)


def _page(request: Request, name: str, context: dict[str, object], status: int = 200) -> Response:
    return templates.TemplateResponse(request, name, context, status_code=status)
