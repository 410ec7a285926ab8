"""The campaigns over HTTP: a JSON API for `mock-operator conformance` and the `/conformance`
pages in French. Both answer loopback callers only, like the mock's other test pages."""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from gateway.runtime.net import is_loopback
from mock_operator.conformance.checks import CHECKS
from mock_operator.conformance.observatory import Observatory
from mock_operator.conformance.render import FORMATS, as_dict, render
from mock_operator.conformance.runner import Runner, correspondents
from mock_operator.conformance.samples import MDN_SUBJECT
from mock_operator.conformance.store import Campaign
from mock_operator.psc.forms import FormError, read_form
from mock_operator.psc.provider import MockPsc
from mock_operator.web import templates

LOOPBACK_ONLY = "Page de test, servie aux appels locaux (loopback) seulement."
MEDIA = {"json": "application/json", "junit": "application/xml", "html": "text/html"}
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
_KEY = re.compile(r"[a-z0-9-]{1,40}")


class CampaignRequest(BaseModel):
    software: Annotated[str, Field(min_length=1, max_length=200)]
    version: Annotated[str, Field(max_length=100)] = ""
    client_id: Annotated[str | None, Field(max_length=128)] = None
    personas: Annotated[list[Annotated[str, Field(max_length=40)]], Field(max_length=20)] = []


def _loopback(request: Request) -> bool:
    return request.client is not None and is_loopback(request.client.host)


def build_conformance_router(
    observatory: Callable[[], Observatory | None],
    runner: Callable[[], Runner | None],
    psc: Callable[[], MockPsc | None],
    tls_scenarios: Callable[[], dict[str, Any] | None] = lambda: None,
) -> APIRouter:
    """`tls_scenarios`: the TLS scenario ports and the file to trust, when they run
    (`ScenarioPorts.describe`), shown on the campaign page and answered when one opens."""
    router = APIRouter()

    def ready(request: Request) -> tuple[Observatory, Runner] | Response:
        if not _loopback(request):
            return JSONResponse({"detail": LOOPBACK_ONLY}, status_code=404)
        found, run = observatory(), runner()
        if found is None or run is None:
            return JSONResponse({"detail": "the runner is not started"}, status_code=503)
        return found, run

    async def open_campaign(obs: Observatory, body: CampaignRequest) -> Campaign | str:
        mock = psc()
        unknown = [p for p in body.personas if mock is None or mock.personas.get(p) is None]
        if unknown:
            return f"unknown persona(s): {', '.join(unknown)}"
        if not _NAME.fullmatch(body.software) or (
            body.version and not _NAME.fullmatch(body.version)
        ):
            return "software and version: printable text only"
        return await obs.open(body.software, body.version, body.client_id, body.personas)

    @router.post("/_test/conformance/campaigns", include_in_schema=False)
    async def start(body: CampaignRequest, request: Request) -> Response:
        got = ready(request)
        if isinstance(got, Response):
            return got
        campaign = await open_campaign(got[0], body)
        if isinstance(campaign, str):
            return JSONResponse({"detail": campaign}, status_code=400)
        answer: dict[str, Any] = {"id": campaign.id, "url": f"/conformance/{campaign.id}"}
        if (ports := tls_scenarios()) is not None:
            answer["tls_scenarios"] = ports
        return JSONResponse(answer)

    @router.get("/_test/conformance/campaigns/{campaign_id}/report", include_in_schema=False)
    async def report(campaign_id: str, request: Request, format: str = "json") -> Response:
        got = ready(request)
        if isinstance(got, Response):
            return got
        if format not in FORMATS:
            return JSONResponse({"detail": f"format: one of {', '.join(FORMATS)}"}, 400)
        campaign = await got[0].store.get(campaign_id[:40])
        if campaign is None:
            return JSONResponse({"detail": f"no campaign {_shown(campaign_id)}"}, 404)
        built = await got[1].report(campaign)
        return Response(render(built, format), media_type=MEDIA[format])

    @router.post("/_test/conformance/campaigns/{campaign_id}/close", include_in_schema=False)
    async def close(campaign_id: str, request: Request) -> Response:
        got = ready(request)
        if isinstance(got, Response):
            return got
        if await got[0].store.get(campaign_id[:40]) is None:
            return JSONResponse({"detail": "no such campaign"}, 404)
        await got[0].close(campaign_id[:40])
        return JSONResponse({"id": campaign_id, "closed": True})

    # -- pages ---------------------------------------------------------------------------

    def page_error(request: Request, message: str, status: int) -> HTMLResponse:
        return templates.TemplateResponse(
            request, "message.html", {"message": message}, status_code=status
        )

    @router.get("/conformance", response_class=HTMLResponse, include_in_schema=False)
    async def campaigns_page(request: Request) -> Response:
        got = ready(request)
        if isinstance(got, Response):
            return page_error(request, LOOPBACK_ONLY, 404)
        mock = psc()
        context: dict[str, Any] = {
            "campaigns": list(reversed(await got[0].store.all())),
            "personas": mock.personas.all() if mock else [],
            "page_token": mock.page_token if mock else "",
            "error": request.query_params.get("erreur", "")[:200],
            "when": _when,
        }
        return templates.TemplateResponse(request, "conformance.html", context)

    async def posted(request: Request) -> tuple[Observatory, dict[str, str]] | Response:
        """A page's form, from a loopback caller, carrying the page's token (CSRF)."""
        got = ready(request)
        mock = psc()
        if isinstance(got, Response) or mock is None:
            return page_error(request, LOOPBACK_ONLY, 404)
        try:
            form = await read_form(request)
        except FormError as exc:
            return page_error(request, str(exc), 400)
        if not secrets.compare_digest(form.get("token", ""), mock.page_token):
            return page_error(request, "Formulaire expiré : rechargez la page.", 400)
        return got[0], form

    @router.post("/conformance", response_class=HTMLResponse, include_in_schema=False)
    async def campaigns_start(request: Request) -> Response:
        answer = await posted(request)
        if isinstance(answer, Response):
            return answer
        watcher, form = answer
        try:
            body = CampaignRequest(
                software=form.get("software", "").strip(),
                version=form.get("version", "").strip(),
                client_id=form.get("client_id", "").strip() or None,
                personas=[
                    k.removeprefix("persona_")
                    for k in form
                    if k.startswith("persona_") and _KEY.fullmatch(k.removeprefix("persona_"))
                ],
            )
        except ValueError:
            return RedirectResponse(
                "/conformance?erreur=Nom+du+logiciel+requis+(200+caract%C3%A8res+au+plus)"
                "%2C+version+100+au+plus%2C+20+personas+au+plus",
                303,
            )
        campaign = await open_campaign(watcher, body)
        if isinstance(campaign, str):
            return page_error(request, campaign, 400)
        return RedirectResponse(f"/conformance/{campaign.id}", status_code=303)

    @router.get("/conformance/{campaign_id}", response_class=HTMLResponse, include_in_schema=False)
    async def campaign_page(campaign_id: str, request: Request) -> Response:
        got = ready(request)
        if isinstance(got, Response):
            return page_error(request, LOOPBACK_ONLY, 404)
        campaign = await got[0].store.get(campaign_id[:40])
        if campaign is None:
            return page_error(request, "Campagne inconnue.", 404)
        mock = psc()
        built = await got[1].report(campaign)
        context = {
            "campaign": campaign,
            "report": built,
            "data": as_dict(built),
            "scenarios": _scenarios(campaign, mock),
            "tls_scenarios": tls_scenarios(),
            "page_token": mock.page_token if mock else "",
            "checks": CHECKS,
        }
        return templates.TemplateResponse(request, "conformance_campaign.html", context)

    @router.post("/conformance/{campaign_id}/close", include_in_schema=False)
    async def campaign_close(campaign_id: str, request: Request) -> Response:
        answer = await posted(request)
        if isinstance(answer, Response):
            return answer
        watcher = answer[0]
        if await watcher.store.get(campaign_id[:40]) is None:
            return page_error(request, "Campagne inconnue.", 404)
        await watcher.close(campaign_id[:40])
        return RedirectResponse(f"/conformance/{campaign_id[:40]}", status_code=303)

    return router


def _shown(campaign_id: str) -> str:
    """A campaign id as an answer may repeat it: quoted when it looks like one, else not
    at all (a caller's markup or 10 KB of it is not echoed)."""
    return repr(campaign_id) if _KEY.fullmatch(campaign_id) else "(identifiant invalide)"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    return dt.datetime.fromtimestamp(timestamp).strftime("%d/%m/%Y %H:%M")


def _scenarios(campaign: Campaign, psc: MockPsc | None) -> list[str]:
    """What the person testing is asked to do, in the order a session goes."""
    personas = [psc.personas.get(k) for k in campaign.personas] if psc else []
    people = [p for p in personas if p is not None] or (psc.personas.all()[:1] if psc else [])
    first = people[0] if people else None
    own = first.bal if first and first.bal else "la BAL de la persona"
    others = correspondents(psc.personas) if psc else []
    to = next((p.bal for p in others if p.bal != own), "eve.moreau@…")
    who = first.display_name if first else "la persona"
    return [
        f"Connectez le logiciel avec le compte PSC de {who} "
        f"(STARTTLS, XOAUTH2 ou OAUTHBEARER) et relevez la BAL {own}.",
        "Le banc dépose quatre messages de test dans la boîte de réception à la première "
        "connexion : ouvrez-les tous (document CDA, noms accentués, pièce volumineuse).",
        f"Lisez le message « {MDN_SUBJECT} » et renvoyez l'accusé de lecture.",
        f"Envoyez à {to} un compte rendu avec un document CDA (IHE_XDM.ZIP), "
        "en demandant un accusé de réception et un accusé de lecture.",
        "Répondez au message de test qui porte le document CDA.",
        "Ouvrez une BAL déléguée (secrétariat, remplaçant) et envoyez depuis elle.",
        "Terminez la session PSC (mock-operator end-session), vérifiez que le logiciel ferme "
        "ses sessions, puis reconnectez-vous : il doit les rouvrir seul.",
    ]
