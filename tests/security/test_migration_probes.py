"""Hostile callers of `/admin/migrations`, with the right credentials but garbage to ask:
oversized BAL lists, things that are not addresses, unknown actions and fields, absurd
job counts and rates. Each gets a clean 4xx (never a 500), and nothing is started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from tests.support.stacks import Stack, gateway_settings

DUPONT = "jean.dupont@medecin.mssante.fr"


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return gateway_settings(tmp_path / "gateway", admin={"idnats": ["899700000008"]})


def _headers(stack: Stack) -> dict[str, str]:
    secret = (stack.gateway.settings.data_dir / "admin.secret").read_text().strip()
    return {"Authorization": f"Bearer {secret}"}


def _copy(**changes: Any) -> dict[str, Any]:
    return {"bals": [DUPONT], "to": "modern", "action": "copy", **changes}


GARBAGE: list[Any] = [
    _copy(bals=[f"bal{n}@medecin.mssante.fr" for n in range(1001)]),  # oversized list
    _copy(bals=[]),
    _copy(bals=["a" * 300 + "@medecin.mssante.fr"]),
    _copy(bals=["x" * 100_000]),
    _copy(bals=["not-an-address"]),
    _copy(bals=["jean.dupont@medecin"]),
    _copy(bals=["a@b.fr\r\nX-Injected: 1"]),
    _copy(bals=["<script>@x.fr</script>"]),
    _copy(bals=["a@b@c.fr"]),
    _copy(bals=[None]),
    _copy(bals=[["nested@x.fr"]]),
    _copy(bals=DUPONT),  # a string is not a list
    _copy(all_on="modern"),  # named BAL and a wave at once
    _copy(bals=[], limit=5),  # a limit without a wave
    _copy(bals=[], all_on=""),
    _copy(bals=[], all_on="m" * 100),
    _copy(bals=[], all_on="modern", limit=0),
    _copy(bals=[], all_on="modern", limit=10_000),
    _copy(bals=[], all_on=["modern"]),
    _copy(action="cutover", to=None),
    _copy(action="Cutover"),
    _copy(action="rollback;finish"),
    _copy(action="rm -rf"),
    _copy(action=None),
    _copy(extra="field"),
    _copy(jobs=0),
    _copy(jobs=10_000),
    _copy(max_rate=-1),
    _copy(max_rate=0),
    _copy(max_rate="fast"),
    _copy(to=""),
    _copy(to="m" * 1000),
    [DUPONT],
    "copy",
]


async def test_garbage_requests_are_refused_and_start_nothing(stack: Stack) -> None:
    """One gateway for every probe (a stack each would cost minutes): each a clean 4xx."""
    async with httpx.AsyncClient(base_url=stack.gateway.http_url, timeout=10) as http:
        for body in GARBAGE:
            answer = await http.post("/admin/migrations", json=body, headers=_headers(stack))
            assert answer.status_code in (400, 413, 422), (body, answer.text)
        listed = await http.get("/admin/migrations", headers=_headers(stack))
    assert listed.json() == {"migrations": []}


IMPOSSIBLE: list[tuple[Any, str]] = [
    (_copy(to="nowhere"), "unknown backend 'nowhere'"),
    (_copy(to="modern"), "is on modern already"),
    (_copy(bals=["nobody@medecin.mssante.fr"]), "no such BAL"),
    (_copy(bals=["nobody@medecin.mssante.fr"], to="nowhere"), "unknown backend"),
    (_copy(to=None), "a copy needs `to`"),
    (_copy(to=None, action="verify"), "never copied"),
    (_copy(action="cutover"), "is on modern already"),
    (_copy(action="cutover", to="nowhere"), "unknown backend"),
    (_copy(action="rollback", to=None), "no cut-over to modern to rollback"),
    (_copy(action="finish", to=None), "no cut-over to modern to finish"),
    (_copy(bals=[], all_on="nowhere"), "unknown backend 'nowhere'"),
]


async def test_requests_that_cannot_be_done_say_why(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.http_url, timeout=10) as http:
        for body, why in IMPOSSIBLE:
            answer = await http.post("/admin/migrations", json=body, headers=_headers(stack))
            assert answer.status_code == 400, (body, answer.text)
            assert why in answer.json()["detail"], (body, answer.text)
        listed = await http.get("/admin/migrations", headers=_headers(stack))
    assert listed.json() == {"migrations": []}


async def test_status_of_a_bad_address(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.http_url, timeout=10) as http:
        for bal in ["not-an-address", "%00", "a" * 400 + "@x.fr", "..%2f..%2fadmin.secret"]:
            answer = await http.get(f"/admin/migrations/{bal}", headers=_headers(stack))
            assert answer.status_code in (400, 404, 422), (bal, answer.text)
            assert "lpsgw-admin" not in answer.text
        unknown = await http.get(f"/admin/migrations/{DUPONT}", headers=_headers(stack))
    assert unknown.status_code == 404
    assert f"no migration of {DUPONT}" in unknown.json()["detail"]
