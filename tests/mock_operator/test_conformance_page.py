"""The /conformance pages in Chromium, as the person testing an LPS uses them: open a
campaign with the form, read the scenarios, and watch a check turn green while the LPS
works, without reloading."""

from __future__ import annotations

import asyncio
import imaplib
import re
import ssl

import pytest

from mock_operator.server import MockOperator
from tests.browser import chromium
from tests.conftest import persona_token
from tests.support.sasl import xoauth2_blob

pytestmark = pytest.mark.slow

MARTIN = "claire.martin@medecin.mssante.fr"


def imap_login(mock: MockOperator, token: str) -> None:
    assert mock.tls_cert is not None
    client = imaplib.IMAP4("localhost", mock.imap_port, timeout=30)
    client.starttls(ssl.create_default_context(cafile=str(mock.tls_cert)))
    client.authenticate("XOAUTH2", lambda _: xoauth2_blob(MARTIN, token))
    client.logout()


async def test_a_campaign_opened_from_the_page_turns_green_as_the_lps_works(
    mock_op: MockOperator,
) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{mock_op.http_url}/conformance")
        await page.get_by_label("Logiciel").fill("Mon LPS")
        await page.get_by_label("Version").fill("2.1")
        await page.get_by_label("Claire MARTIN").check()
        await page.get_by_role("button", name="Ouvrir la campagne").click()
        await page.wait_for_url(re.compile(r".*/conformance/c\d{8}-[0-9a-f]{6}$"))
        assert "Mon LPS 2.1" in await page.get_by_role("heading", level=1).inner_text()

        steps = await page.get_by_role("listitem").all_inner_texts()
        assert any("Connectez le logiciel avec le compte PSC de Claire MARTIN" in s for s in steps)
        assert any(f"relevez la BAL {MARTIN}" in s for s in steps)
        assert any("Demande d'accusé de lecture" in s for s in steps)
        row = page.locator("#check-starttls-imap")
        assert await row.get_attribute("data-status") == "not_observed"
        assert "non observé" in await row.inner_text()

        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))
        await asyncio.to_thread(imap_login, mock_op, await persona_token(mock_op))
        # the page asks for the report every 2 s: the row turns green by itself
        await page.wait_for_selector(
            '#check-starttls-imap[data-status="passed"]', state="attached", timeout=30_000
        )
        assert "réussi" in await row.inner_text()
        assert navigations == [], "no reload"
        summary = await page.get_by_role("status").inner_text()
        assert re.search(r"[1-9]\d* réussi\(s\)", summary), summary
