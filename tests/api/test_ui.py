"""The holder's page in a real Chromium (Playwright): log in with the mock PSC, grant, the
delegate sees the BAL in /v1/mailboxes, revoke, it is gone."""

from __future__ import annotations

import asyncio
import imaplib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from delegation.service import DelegationService
from gateway.api.app import create_api
from gateway.runtime.asgi_server import AsgiServer, bind_tcp
from gateway.settings import MockSettings
from gateway.web.routes import WebConfig
from gateway.web.sessions import COOKIE
from mock_operator.server import MockOperator
from psc_auth import TokenValidator, ValidatorConfig
from tests.browser import chromium
from tests.conftest import persona_token

MARTIN = "claire.martin@medecin.mssante.fr"


@pytest.fixture
async def shared(
    mock_settings: MockSettings, registry: DelegationService, tmp_path: Path
) -> AsyncIterator[MockOperator]:
    """A mock operator honouring the gateway's registry, as in the demo."""
    operator = MockOperator(mock_settings, tmp_path / "shared-mock", registry=registry)
    await operator.start()
    try:
        yield operator
    finally:
        await operator.stop()


@pytest.fixture
async def site(shared: MockOperator, registry: DelegationService) -> AsyncIterator[str]:
    mock_op = shared
    assert mock_op.psc is not None
    client = mock_op.psc.clients.get("lps-gateway")
    assert client is not None
    validator = TokenValidator(ValidatorConfig(issuer=mock_op.issuer))
    web = WebConfig("lps-gateway", client.client_secret, None)
    server = AsgiServer(create_api(registry, validator, web), bind_tcp("127.0.0.1", 0))
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()
        await validator.aclose()


async def delegate_mailboxes(mock: MockOperator, base: str, persona: str) -> list[str]:
    token = await persona_token(mock, persona)
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(
            f"{base}/v1/mailboxes", headers={"Authorization": f"Bearer {token}"}
        )
    return [m["address"] for m in answer.json()]


def imap_login(mock: MockOperator, bal: str, token: str) -> str:
    client = imaplib.IMAP4("127.0.0.1", mock.imap_port, timeout=10)
    try:
        client.login(bal, token)
        typ, data = client.select("INBOX", readonly=True)
        return f"{typ} {int(data[0] or 0)} messages"
    except imaplib.IMAP4.error as exc:
        return str(exc)
    finally:
        client.shutdown()


async def test_grant_and_revoke_through_the_page(site: str, shared: MockOperator, tmp_path: Path):
    mock_op = shared
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{site}/ui/delegations")
        # The mock Pro Santé Connect's login page: choose the persona and the means.
        await page.get_by_text("Claire MARTIN").click()
        await page.get_by_label("Carte CPS").check()
        await page.get_by_role("button", name="Se connecter").click()
        await page.wait_for_url(f"{site}/ui/delegations")
        assert await page.get_by_role("heading", name=MARTIN).is_visible()
        assert "Sophie BERNARD" in await page.content(), "the seeded delegation is listed"
        session = {c["name"]: c for c in await page.context.cookies()}[COOKIE]
        assert (session["httpOnly"], session["sameSite"], session["path"]) == (True, "Lax", "/ui")
        assert await page.evaluate("document.cookie") == "", "no script reads the session id"

        await page.get_by_label("Rechercher dans l'annuaire").first.fill("durand")
        await page.get_by_role("button", name="Rechercher").first.click()
        await page.get_by_label("Luc DURAND").check()
        await page.get_by_label("écriture").check()
        await page.get_by_role("button", name="Déléguer").click()
        await page.wait_for_url(f"{site}/ui/delegations")
        assert await page.get_by_role("status").inner_text() == "Délégation enregistrée."
        assert MARTIN in await delegate_mailboxes(mock_op, site, "ide-durand")
        durand = await persona_token(mock_op, "ide-durand")
        opened = await asyncio.to_thread(imap_login, mock_op, MARTIN, durand)
        assert opened == "OK 3 messages", "the delegate opens the BAL over IMAP, own token"

        await page.get_by_role("button", name="Révoquer la délégation de Luc DURAND").click()
        await page.wait_for_url(f"{site}/ui/delegations")
        assert await page.get_by_role("status").inner_text() == "Délégation révoquée."
        assert MARTIN not in await delegate_mailboxes(mock_op, site, "ide-durand")
        refused = await asyncio.to_thread(imap_login, mock_op, MARTIN, durand)
        assert "AUTHORIZATIONFAILED" in refused, "the next login after revocation is refused"
        audit = page.get_by_role("table").last
        assert "grant" in await audit.inner_text()
        await page.screenshot(path=str(tmp_path / "delegations.png"), full_page=True)


async def test_pages_need_a_session(site: str):
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{site}/ui/delegations")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/login"
        forged = await http.post(
            f"{site}/ui/delegations/grant",
            data={"csrf": "x", "mailbox": MARTIN, "delegate": "899700000004", "rights": "read"},
        )
        assert forged.status_code == 403
