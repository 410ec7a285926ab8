"""Logging in to the gateway's pages over plain HTTP, as a browser would: `/ui/login`, the
mock Pro Santé Connect's form (a persona, e-CPS), the callback; the session cookie stays
in the client's jar."""

from __future__ import annotations

import re

import httpx

LOGIN_ID = re.compile(r'name="login_id" value="([^"]+)"')


async def log_in(http: httpx.AsyncClient, site: str, persona: str) -> None:
    """Log `http` in to the pages of the gateway at `site` as `persona` (a mock persona
    key, e.g. "adm-roux")."""
    form = await http.get(f"{site}/ui/login", follow_redirects=True)
    form.raise_for_status()
    found = LOGIN_ID.search(form.text)
    assert found is not None, "the mock's login form has no login_id"
    landed = await http.post(
        str(form.url),
        data={"login_id": found.group(1), "persona": persona, "means": "e-cps"},
        follow_redirects=True,
    )
    assert landed.status_code == 200, landed.text[:300]
    assert landed.url.path == "/ui/delegations", landed.url
