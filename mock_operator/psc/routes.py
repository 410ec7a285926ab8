"""HTTP endpoints of the mock Pro Santé Connect (Keycloak paths, DOMAIN.md §3)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import re
import secrets
import time
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from gateway.runtime.net import is_loopback
from mock_operator.personas import Persona
from mock_operator.psc.ciba import CibaError
from mock_operator.psc.clients import CIBA_GRANT, Client, ClientError
from mock_operator.psc.forms import FormError, read_form
from mock_operator.psc.provider import AuthorizationCode, AuthorizationRequest, MockPsc
from mock_operator.psc.sessions import PscSession, RefreshRefused
from mock_operator.psc.tokens import DEFAULT_SCOPE, MEANS_BY_CHANNEL
from mock_operator.web import templates

_PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_PKCE_VERIFIER = _PKCE_CHALLENGE
MAX_BINDING_MESSAGE = 64
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
LOOPBACK_ONLY = "Page de test, servie aux appels locaux (loopback) seulement."
log = logging.getLogger(__name__)


def get_psc(request: Request) -> MockPsc:
    psc: MockPsc = request.app.state.psc
    return psc


Psc = Annotated[MockPsc, Depends(get_psc)]


def oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    headers = dict(NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="esante-wallet"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


def bearer_error(description: str) -> JSONResponse:
    return JSONResponse(
        {"error": "invalid_token", "error_description": description},
        status_code=401,
        headers={
            "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'
        },
    )


def _test_endpoints_open(psc: MockPsc, request: Request) -> bool:
    """The test-only endpoints answer loopback peers only, and only when enabled."""
    return (
        psc.settings.test_endpoints
        and request.client is not None
        and is_loopback(request.client.host)
    )


def _find_persona(psc: MockPsc, key_or_idnat: str) -> Persona | None:
    return psc.personas.get(key_or_idnat) or psc.personas.by_idnat(key_or_idnat)


def _unknown_persona(psc: MockPsc) -> JSONResponse:
    known = ", ".join(p.key for p in psc.personas)
    return JSONResponse({"detail": f"unknown persona; known: {known}"}, status_code=404)


async def _end_sessions(psc: MockPsc, persona: Persona) -> int:
    """End a persona's PSC sessions: their tokens introspect inactive from now on."""
    ended = await psc.sessions.end_persona(persona.key)
    log.info("psc.sessions_ended", extra={"persona": persona.key, "ended": ended})
    if psc.observer is not None and ended:
        psc.observer.psc("session_end", client_id="", idnat=persona.idnat, sessions=ended)
    return ended


def _observe_token(psc: MockPsc, grant: str, client_id: str, answer: Response) -> None:
    """Tell the conformance runner of a token issued (or refused) to an application."""
    if psc.observer is None:
        return
    if answer.status_code != 200:
        psc.observer.psc("token_refused", client_id=client_id, idnat="", grant=grant)
        return
    try:
        access = json.loads(bytes(answer.body))["access_token"]
    except (ValueError, KeyError, TypeError):
        return
    claims = psc.tokens.verify(access, check_expiry=False) or {}
    psc.observer.psc(
        "token",
        client_id=client_id,
        idnat=str(claims.get("SubjectNameID", "")),
        grant=grant,
        jti=str(claims.get("jti", "")),
        sid=str(claims.get("sid", "")),
        exp=claims.get("exp"),
    )


def _local_time(timestamp: float) -> str:
    return time.strftime("%d/%m/%Y %H:%M:%S", time.localtime(timestamp))


def _pkce_matches(verifier: str, challenge: str) -> bool:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return hmac.compare_digest(computed, challenge)


async def _client_and_form(
    psc: MockPsc, request: Request
) -> tuple[Client, dict[str, str]] | JSONResponse:
    try:
        form = await read_form(request)
    except FormError as exc:
        return oauth_error("invalid_request", str(exc))
    try:
        client = psc.clients.authenticate(request.headers.get("authorization"), form)
    except ClientError as exc:
        return oauth_error("invalid_client", str(exc), 401)
    return client, form


async def _token_response(
    psc: MockPsc,
    persona: Persona,
    session: PscSession,
    scope: str,
    *,
    nonce: str | None = None,
    with_refresh: bool = True,
) -> JSONResponse:
    access, expires_in = psc.tokens.access_token(persona, session, scope=scope)
    body: dict[str, Any] = {
        "access_token": access,
        "expires_in": expires_in,
        "token_type": "Bearer",
        "not-before-policy": 0,
        "session_state": session.sid,
        "scope": scope,
    }
    if "openid" in scope.split():
        body["id_token"] = psc.tokens.id_token(persona, session, access_token=access, nonce=nonce)
    if with_refresh:
        refresh, refresh_expires_in = await psc.sessions.issue_refresh(session, scope)
        body["refresh_token"] = refresh
        body["refresh_expires_in"] = refresh_expires_in
    return JSONResponse(body, headers=NO_STORE)


def build_router(realm: str) -> APIRouter:
    prefix = f"/auth/realms/{realm}"
    oidc = f"{prefix}/protocol/openid-connect"
    router = APIRouter(tags=["Pro Santé Connect (mock)"])

    @router.get(f"{prefix}/.well-known/wallet-openid-configuration")
    @router.get(f"{prefix}/.well-known/openid-configuration")
    async def discovery(psc: Psc) -> dict[str, Any]:
        return psc.metadata()

    @router.get(f"{oidc}/certs")
    async def certs(psc: Psc) -> dict[str, Any]:
        return psc.keys.published()

    # -- authorization code + PKCE -----------------------------------------------------
    @router.get(f"{oidc}/auth", response_class=HTMLResponse)
    async def authorize(request: Request, psc: Psc) -> Response:
        params = request.query_params
        for name in params:
            if len(params.getlist(name)) > 1:
                return _error_page(request, f"Le paramètre {name} est répété.")
        client = psc.clients.get(params.get("client_id", ""))
        redirect_uri = params.get("redirect_uri", "")
        if client is None:
            return _error_page(request, "Application inconnue (client_id).")
        if not redirect_uri or not client.accepts_redirect(redirect_uri):
            return _error_page(request, "Adresse de retour non enregistrée (redirect_uri).")
        state = params.get("state")

        def fail(error: str, description: str) -> Response:
            query = {"error": error, "error_description": description, "iss": psc.issuer}
            if state is not None:
                query["state"] = state
            return RedirectResponse(_with_query(redirect_uri, query), status_code=302)

        if params.get("response_type") != "code":
            return fail("unsupported_response_type", "only response_type=code")
        if "authorization_code" not in client.grant_types:
            return fail("unauthorized_client", "client may not use the authorization code")
        scope = params.get("scope", "")
        if "openid" not in scope.split():
            return fail("invalid_scope", "scope must include openid")
        challenge = params.get("code_challenge", "")
        if params.get("code_challenge_method") != "S256" or not _PKCE_CHALLENGE.fullmatch(
            challenge
        ):
            return fail("invalid_request", "PKCE with code_challenge_method=S256 is required")
        acr_values = params.get("acr_values")
        if acr_values is not None and "eidas1" not in acr_values.split():
            return fail("invalid_request", "only acr eidas1 is available")
        login_id = secrets.token_urlsafe(24)
        psc.pending_logins[login_id] = AuthorizationRequest(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            scope=scope,
            state=state,
            nonce=params.get("nonce"),
            code_challenge=challenge,
            created_at=psc.clock(),
        )
        return templates.TemplateResponse(
            request,
            "login.html",
            {"login_id": login_id, "personas": psc.personas.all(), "client": client.client_id},
        )

    @router.post(f"{oidc}/auth", response_class=HTMLResponse)
    async def authorize_submit(request: Request, psc: Psc) -> Response:
        try:
            form = await read_form(request)
        except FormError as exc:
            return _error_page(request, str(exc))
        pending = psc.pending_logins.pop(form.get("login_id", ""), None)
        if not isinstance(pending, AuthorizationRequest) or (
            psc.clock() - pending.created_at > 600
        ):
            return _error_page(request, "Demande de connexion inconnue ou expirée.")
        persona = psc.personas.get(form.get("persona", ""))
        means = form.get("means", "")
        query: dict[str, str] = {"iss": psc.issuer}
        if pending.state is not None:
            query["state"] = pending.state
        if persona is None or means not in ("card", "e-cps"):
            query.update(error="access_denied", error_description="no persona chosen")
            return RedirectResponse(_with_query(pending.redirect_uri, query), status_code=302)
        if means == "card" and persona.ecps_only:
            return _error_page(request, f"{persona.display_name} n'a pas de carte CPS : e-CPS.")
        session = await psc.sessions.open(persona.key, means, pending.client_id)
        code = psc.new_code(
            AuthorizationCode(
                client_id=pending.client_id,
                redirect_uri=pending.redirect_uri,
                scope=pending.scope,
                nonce=pending.nonce,
                code_challenge=pending.code_challenge,
                sid=session.sid,
                persona=persona.key,
                expires_at=psc.clock() + psc.settings.authorization_code_lifetime,
            )
        )
        query.update(code=code, session_state=session.sid)
        return RedirectResponse(_with_query(pending.redirect_uri, query), status_code=302)

    # -- token endpoint ----------------------------------------------------------------
    @router.post(f"{oidc}/token")
    async def token(request: Request, psc: Psc) -> Response:
        authenticated = await _client_and_form(psc, request)
        if isinstance(authenticated, JSONResponse):
            return authenticated
        client, form = authenticated
        grant_type = form.get("grant_type", "")
        if grant_type not in client.grant_types:
            return oauth_error("unauthorized_client", f"grant {grant_type!r} not allowed")
        if grant_type == "authorization_code":
            answer = await _code_grant(psc, client, form)
        elif grant_type == "refresh_token":
            answer = await _refresh_grant(psc, client, form)
        elif grant_type == CIBA_GRANT:
            answer = await _ciba_grant(psc, client, form)
        else:
            return oauth_error("unsupported_grant_type", "unsupported grant_type")
        _observe_token(psc, grant_type, client.client_id, answer)
        return answer

    # -- CIBA -------------------------------------------------------------------------
    @router.post(f"{oidc}/ext/ciba/auth")
    async def ciba_auth(request: Request, psc: Psc) -> Response:
        authenticated = await _client_and_form(psc, request)
        if isinstance(authenticated, JSONResponse):
            return authenticated
        client, form = authenticated
        if CIBA_GRANT not in client.grant_types:
            return oauth_error("unauthorized_client", "client may not use CIBA")
        scope = form.get("scope", "")
        if "openid" not in scope.split():
            return oauth_error("invalid_scope", "scope must include openid")
        persona = psc.personas.by_idnat(form.get("login_hint", ""))
        if persona is None:
            return oauth_error("unknown_user_id", "login_hint is not a known national id")
        channel = form.get("channel", "MOBILE").upper()
        means = MEANS_BY_CHANNEL.get(channel)
        if means is None:
            return oauth_error("invalid_request", "channel must be CARD or MOBILE")
        if means == "card" and persona.ecps_only:
            return oauth_error("invalid_request", "this person has no CPS card: use MOBILE")
        binding = form.get("binding_message", "")
        if len(binding) > MAX_BINDING_MESSAGE:
            return oauth_error("invalid_binding_message", "binding_message too long")
        try:
            started = psc.ciba.start(
                client_id=client.client_id,
                persona=persona.key,
                means=means,
                binding_message=binding,
                scope=scope,
            )
        except CibaError as exc:
            return oauth_error(exc.error, exc.description)
        return JSONResponse(
            {
                "auth_req_id": started.auth_req_id,
                "expires_in": psc.settings.ciba_expires_in,
                "interval": started.interval,
            },
            headers=NO_STORE,
        )

    @router.get(f"{prefix}/ciba", response_class=HTMLResponse)
    async def ciba_page(request: Request, psc: Psc) -> Response:
        pending = [(r, psc.personas.get(r.persona)) for r in psc.ciba.pending()]
        approved = [(r, psc.personas.get(r.persona)) for r in psc.ciba.approved()]
        return templates.TemplateResponse(
            request, "ciba.html", {"pending": pending, "approved": approved}
        )

    @router.post(f"{prefix}/ciba/{{auth_req_id}}/{{decision}}", response_class=HTMLResponse)
    async def ciba_decide(auth_req_id: str, decision: str, request: Request, psc: Psc) -> Response:
        if decision not in ("approve", "deny") or not psc.ciba.decide(
            auth_req_id, approve=decision == "approve"
        ):
            return _error_page(request, "Demande inconnue ou déjà traitée.", status=404)
        return RedirectResponse(f"{prefix}/ciba", status_code=303)

    # -- open sessions (test page, loopback-only) ---------------------------------------
    @router.get(f"{prefix}/sessions", response_class=HTMLResponse)
    async def sessions_page(request: Request, psc: Psc) -> Response:
        if not _test_endpoints_open(psc, request):
            return _error_page(request, LOOPBACK_ONLY, status=404)
        sessions = await psc.sessions.open_sessions()
        by_persona = [
            (psc.personas.get(key), key, list(group))
            for key, group in itertools.groupby(sessions, key=lambda s: s.persona)
        ]
        ended_persona = psc.personas.get(request.query_params.get("persona", ""))
        ended = request.query_params.get("ended", "")
        context = {
            "by_persona": by_persona,
            "ended": (ended_persona, int(ended)) if ended_persona and ended.isdigit() else None,
            "when": _local_time,
            "loopback_only": LOOPBACK_ONLY,
            "page_token": psc.page_token,
        }
        return templates.TemplateResponse(request, "sessions.html", context)

    @router.post(f"{prefix}/sessions/{{key}}/end", response_class=HTMLResponse)
    async def sessions_end(key: str, request: Request, psc: Psc) -> Response:
        if not _test_endpoints_open(psc, request):
            return _error_page(request, LOOPBACK_ONLY, status=404)
        try:
            token = (await read_form(request)).get("token", "")
        except FormError:
            token = ""
        if not hmac.compare_digest(token.encode(), psc.page_token.encode()):
            # Loopback is no proof of intent: a page in the tester's browser could post here.
            return _error_page(request, "Formulaire expiré : rechargez la page.", status=403)
        persona = psc.personas.get(key)
        if persona is None:
            return _error_page(request, "Personne inconnue.", status=404)
        ended = await _end_sessions(psc, persona)
        query = urlencode({"persona": persona.key, "ended": ended})
        return RedirectResponse(f"{prefix}/sessions?{query}", status_code=303)

    # -- userinfo, introspection, logout, revocation ------------------------------------
    # one route per method: a two-method route gives both operations one OpenAPI id
    @router.get(f"{oidc}/userinfo", operation_id="userinfo_get")
    @router.post(f"{oidc}/userinfo", operation_id="userinfo_post")
    async def userinfo(request: Request, psc: Psc) -> Response:
        authorization = request.headers.get("authorization", "")
        if authorization[:7].lower() != "bearer ":
            return bearer_error("bearer token required")
        claims = psc.tokens.verify(authorization[7:].strip())
        if claims is None or claims.get("typ") != "Bearer":
            return bearer_error("token invalid or expired")
        session = await psc.sessions.alive(str(claims.get("sid", "")))
        persona = psc.personas.get(session.persona) if session else None
        if persona is None:
            return bearer_error("session is over")
        if "application/jwt" in request.headers.get("accept", ""):
            signed = psc.tokens.userinfo_jwt(persona, str(claims.get("azp", "")))
            return Response(signed, media_type="application/jwt", headers=NO_STORE)
        return JSONResponse(psc.tokens.userinfo(persona), headers=NO_STORE)

    @router.post(f"{oidc}/token/introspect")
    async def introspect(request: Request, psc: Psc) -> Response:
        authenticated = await _client_and_form(psc, request)
        if isinstance(authenticated, JSONResponse):
            return authenticated
        _client, form = authenticated
        claims = psc.tokens.verify(form.get("token", ""))
        if claims is None or claims.get("typ") != "Bearer":
            return JSONResponse({"active": False}, headers=NO_STORE)
        if await psc.sessions.alive(str(claims.get("sid", ""))) is None:
            return JSONResponse({"active": False}, headers=NO_STORE)
        answer = {
            **claims,
            "active": True,
            "client_id": claims.get("azp"),
            "username": claims.get("preferred_username"),
            "token_type": "Bearer",
        }
        return JSONResponse(answer, headers=NO_STORE)

    @router.get(f"{oidc}/logout", response_class=HTMLResponse, operation_id="logout_get")
    @router.post(f"{oidc}/logout", response_class=HTMLResponse, operation_id="logout_post")
    async def logout(request: Request, psc: Psc) -> Response:
        params: dict[str, str] = dict(request.query_params)
        if request.method == "POST":
            try:
                params = await read_form(request)
            except FormError as exc:
                return oauth_error("invalid_request", str(exc))
            if "refresh_token" in params:  # back-channel logout by a confidential client
                try:
                    psc.clients.authenticate(request.headers.get("authorization"), params)
                except ClientError as exc:
                    return oauth_error("invalid_client", str(exc), 401)
                sid = await psc.sessions.session_of_refresh(params["refresh_token"])
                if sid is None:
                    return oauth_error("invalid_grant", "unknown refresh token")
                await psc.sessions.end(sid)
                return Response(status_code=204)
        hint = psc.tokens.verify(params.get("id_token_hint", ""), check_expiry=False)
        if hint is None:
            return _error_page(request, "Déconnexion : id_token_hint manquant ou invalide.")
        await psc.sessions.end(str(hint.get("sid", "")))
        if psc.observer is not None:  # the software logged its user out: a campaign sees it
            idnat = str(hint.get("SubjectNameID", ""))
            psc.observer.psc("logout", client_id=str(hint.get("aud", "")), idnat=idnat)
        client = psc.clients.get(str(hint.get("aud", "")))
        target = params.get("post_logout_redirect_uri")
        if target and client and target in client.post_logout_redirect_uris:
            state = params.get("state")
            return RedirectResponse(
                _with_query(target, {"state": state} if state else {}), status_code=302
            )
        return templates.TemplateResponse(
            request, "message.html", {"message": "Vous êtes déconnecté(e)."}
        )

    @router.post(f"{oidc}/revoke")
    async def revoke(request: Request, psc: Psc) -> Response:
        authenticated = await _client_and_form(psc, request)
        if isinstance(authenticated, JSONResponse):
            return authenticated
        client, form = authenticated
        hint = form.get("token_type_hint")
        if hint not in (None, "refresh_token"):
            return oauth_error("unsupported_token_type", "only refresh tokens can be revoked")
        await psc.sessions.revoke_refresh(form.get("token", ""), client.client_id)
        return Response(status_code=200, headers=NO_STORE)

    # -- test-only, loopback-only ------------------------------------------------------
    @router.post("/_test/token", include_in_schema=False)
    async def test_token(body: TestTokenRequest, request: Request, psc: Psc) -> Response:
        if not _test_endpoints_open(psc, request):
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        persona = _find_persona(psc, body.persona)
        if persona is None:
            return _unknown_persona(psc)
        if psc.clients.get(body.client_id) is None:
            return JSONResponse({"detail": "unknown client_id"}, status_code=400)
        means = body.means or ("e-cps" if persona.ecps_only else "card")
        if means == "card" and persona.ecps_only:
            return JSONResponse({"detail": "this persona has no CPS card"}, status_code=400)
        session = await psc.sessions.open(persona.key, means, body.client_id)
        access, expires_in = psc.tokens.access_token(persona, session, lifetime=body.lifetime)
        return JSONResponse(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": expires_in,
                "persona": persona.key,
                "idnat": persona.idnat,
                "session_state": session.sid,
            },
            headers=NO_STORE,
        )

    @router.post("/_test/end-session", include_in_schema=False)
    async def test_end_session(body: TestEndSessionRequest, request: Request, psc: Psc) -> Response:
        if not _test_endpoints_open(psc, request):
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        persona = _find_persona(psc, body.persona)
        if persona is None:
            return _unknown_persona(psc)
        ended = await _end_sessions(psc, persona)
        return JSONResponse(
            {"persona": persona.key, "idnat": persona.idnat, "ended": ended}, headers=NO_STORE
        )

    @router.post("/_test/rotate-keys", include_in_schema=False)
    async def test_rotate(request: Request, psc: Psc) -> Response:
        if not _test_endpoints_open(psc, request):
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return JSONResponse({"kid": psc.keys.rotate()})

    return router


class TestTokenRequest(BaseModel):
    persona: str = Field(max_length=64, description="persona key or idNat")
    lifetime: int | None = Field(default=None, ge=1, le=86_400)
    client_id: str = Field(default="lps-demo", max_length=128)
    means: str | None = Field(default=None, pattern="^(card|e-cps)$")


class TestEndSessionRequest(BaseModel):
    persona: str = Field(max_length=64, description="persona key or idNat")


async def _code_grant(psc: MockPsc, client: Client, form: dict[str, str]) -> Response:
    code = psc.codes.get(form.get("code", ""))
    if not isinstance(code, AuthorizationCode) or code.client_id != client.client_id:
        return oauth_error("invalid_grant", "unknown authorization code")
    if code.used:
        await psc.sessions.end(code.sid)  # replayed code: RFC 6749 §4.1.2
        return oauth_error("invalid_grant", "authorization code already used")
    code.used = True
    if psc.clock() >= code.expires_at:
        return oauth_error("invalid_grant", "authorization code expired")
    if form.get("redirect_uri") != code.redirect_uri:
        return oauth_error("invalid_grant", "redirect_uri does not match")
    verifier = form.get("code_verifier", "")
    if not _PKCE_VERIFIER.fullmatch(verifier) or not _pkce_matches(verifier, code.code_challenge):
        return oauth_error("invalid_grant", "PKCE verification failed")
    session = await psc.sessions.alive(code.sid)
    persona = psc.personas.get(code.persona)
    if session is None or persona is None:
        return oauth_error("invalid_grant", "session is over")
    return await _token_response(psc, persona, session, code.scope, nonce=code.nonce)


async def _refresh_grant(psc: MockPsc, client: Client, form: dict[str, str]) -> Response:
    try:
        session, scope = await psc.sessions.use_refresh(
            form.get("refresh_token", ""), client.client_id
        )
    except RefreshRefused as exc:
        return oauth_error("invalid_grant", str(exc))
    persona = psc.personas.get(session.persona)
    if persona is None:
        return oauth_error("invalid_grant", "unknown person")
    return await _token_response(psc, persona, session, scope)


async def _ciba_grant(psc: MockPsc, client: Client, form: dict[str, str]) -> Response:
    try:
        request = psc.ciba.poll(form.get("auth_req_id", ""), client.client_id)
    except CibaError as exc:
        return oauth_error(exc.error, exc.description)
    persona = psc.personas.get(request.persona)
    if persona is None:
        return oauth_error("invalid_grant", "unknown person")
    session = await psc.sessions.open(persona.key, request.means, client.client_id)
    return await _token_response(psc, persona, session, request.scope or DEFAULT_SCOPE)


def _with_query(uri: str, query: dict[str, str]) -> str:
    return uri + ("&" if "?" in uri else "?") + urlencode(query) if query else uri


def _error_page(request: Request, message: str, status: int = 400) -> Response:
    return templates.TemplateResponse(
        request, "message.html", {"message": message, "error": True}, status_code=status
    )
