"""Hostile callers of the mock's import API (`/operator/mailboxes/{address}/import/...`):
without the master credentials, with oversized or malformed parameters, with imports the
folder's state forbids. Each gets a clean 4xx (never a 500) and the folder is unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from mock_operator.server import MockOperator
from tests.conftest import quick_mock_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

BAL = "import.cible@medecin.mssante.fr"
WHEN = "2026-03-02T10:00:00+01:00"
MESSAGE = b"Subject: import\r\n\r\nbonjour\r\n"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mock_op(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MockOperator]:
    """One mock for the module's probes: the refused ones compare the folder before and
    after, and none of them changes it, so the one import that succeeds still finds the
    folder new."""
    operator = MockOperator(quick_mock_settings(), tmp_path_factory.mktemp("uid-import"))
    await operator.start()
    try:
        yield operator
    finally:
        await operator.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def http(mock_op: MockOperator) -> AsyncIterator[httpx.AsyncClient]:
    assert mock_op.platform is not None
    assert mock_op.master is not None
    await mock_op.platform.ensure_mailbox(BAL, "899700000007", "Eve MOREAU")
    auth = httpx.BasicAuth(mock_op.master.user, mock_op.master.password)
    base = f"{mock_op.http_url}/operator/mailboxes/{BAL}/import"
    async with httpx.AsyncClient(base_url=base, auth=auth, timeout=10) as client:
        yield client


def _message(**changes: Any) -> dict[str, Any]:
    return {"folder": "INBOX", "uid": 7, "internal_date": WHEN, **changes}


async def _inbox(mock_op: MockOperator) -> tuple[int, int, list[int]]:
    assert mock_op.platform is not None
    state = await mock_op.platform.store(BAL).folder_state("INBOX")
    return state.uidvalidity, state.uidnext, [m.uid for m in state.messages]


async def test_imports_then_conflicts_are_409(http: httpx.AsyncClient, mock_op: MockOperator):
    set_validity = await http.put("/uidvalidity", json={"folder": "INBOX", "uidvalidity": 4242})
    assert set_validity.json() == {"folder": "INBOX", "uidvalidity": 4242, "uidnext": 1}
    stored = await http.post("/messages", params=_message(), content=MESSAGE)
    assert stored.status_code == 201, stored.text
    assert stored.json() == {"folder": "INBOX", "uidvalidity": 4242, "uid": 7}
    # a UID not above what the folder gave, a UIDVALIDITY for a folder holding messages
    again = await http.post("/messages", params=_message(), content=MESSAGE)
    lower = await http.post("/messages", params=_message(uid=3), content=MESSAGE)
    other = await http.put("/uidvalidity", json={"folder": "INBOX", "uidvalidity": 99})
    same = await http.put("/uidvalidity", json={"folder": "INBOX", "uidvalidity": 4242})
    assert [again.status_code, lower.status_code, other.status_code] == [409, 409, 409]
    assert same.json()["uidnext"] == 8
    assert await _inbox(mock_op) == (4242, 8, [7])
    assert mock_op.platform is not None
    message = await mock_op.platform.store(BAL).fetch_message("INBOX", 7)
    assert message == MESSAGE


GARBAGE_MESSAGES: list[tuple[dict[str, Any], bytes]] = [
    (_message(uid=0), MESSAGE),
    (_message(uid=-1), MESSAGE),
    (_message(uid=2**32), MESSAGE),
    (_message(uid="7; DROP TABLE"), MESSAGE),
    (_message(internal_date="2026-03-02T10:00:00"), MESSAGE),  # no offset
    (_message(internal_date="yesterday"), MESSAGE),
    (_message(flag="\\Seen\r\nX-Injected: 1"), MESSAGE),
    (_message(flag="two words"), MESSAGE),
    (_message(flag="(\\Seen)"), MESSAGE),
    (_message(flag="k" * 65), MESSAGE),
    (_message(flag=[f"$k{n}" for n in range(65)]), MESSAGE),
    (_message(folder=""), MESSAGE),
    (_message(folder="x" * 300), MESSAGE),
    (_message(folder="Nulle/Part"), MESSAGE),  # no such folder: 404
    ({"folder": "INBOX", "uid": 7}, MESSAGE),  # no date
    (_message(), b""),
    (_message(), b"x" * (50 * 1024 * 1024 + 1)),
]

GARBAGE_UIDVALIDITIES: list[Any] = [
    {"folder": "INBOX", "uidvalidity": 0},
    {"folder": "INBOX", "uidvalidity": 2**32},
    {"folder": "INBOX", "uidvalidity": "1"},
    {"folder": "INBOX"},
    {"folder": "", "uidvalidity": 5},
    {"folder": "x" * 300, "uidvalidity": 5},
    {"folder": "Nulle/Part", "uidvalidity": 5},
    ["INBOX", 5],
]


async def test_garbage_is_refused(http: httpx.AsyncClient, mock_op: MockOperator) -> None:
    before = await _inbox(mock_op)
    for params, body in GARBAGE_MESSAGES:
        answer = await http.post("/messages", params=params, content=body)
        assert answer.status_code in (404, 413, 422), (params, answer.text)
    for wanted in GARBAGE_UIDVALIDITIES:
        answer = await http.put("/uidvalidity", json=wanted)
        assert answer.status_code in (404, 422), (wanted, answer.text)
    assert await _inbox(mock_op) == before


async def test_strangers_and_unknown_addresses(
    mock_op: MockOperator, http: httpx.AsyncClient
) -> None:
    before = await _inbox(mock_op)
    async with httpx.AsyncClient(base_url=http.base_url, timeout=10) as stranger:
        for auth in [None, httpx.BasicAuth("lps-gateway", "wrong"), httpx.BasicAuth("a", "a")]:
            put = await stranger.put(
                "/uidvalidity", json={"folder": "INBOX", "uidvalidity": 5}, auth=auth
            )
            post = await stranger.post("/messages", params=_message(), content=MESSAGE, auth=auth)
            assert (put.status_code, post.status_code) == (401, 401)
    assert mock_op.master is not None
    auth = httpx.BasicAuth(mock_op.master.user, mock_op.master.password)
    async with httpx.AsyncClient(auth=auth, timeout=10) as master:
        for address in ["nobody@medecin.mssante.fr", "not-an-address", "a" * 300 + "@x.fr"]:
            url = f"{mock_op.http_url}/operator/mailboxes/{address}/import/messages"
            answer = await master.post(url, params=_message(), content=MESSAGE)
            assert answer.status_code in (404, 422), answer.text
    assert await _inbox(mock_op) == before
