"""The `/v1` API with real PSC tokens: shapes, rules, errors as RFC 9457 problems."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from mock_operator.server import MockOperator
from tests.api.conftest import Api, seeded_registry, serving_api
from tests.conftest import fresh_database, quick_mock_settings

MARTIN = "claire.martin@medecin.mssante.fr"
DUPONT = "jean.dupont@medecin.mssante.fr"
BERNARD = "899700000003"
MOREAU = "899700000007"


def is_problem(answer: httpx.Response, status: int) -> dict[str, object]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = answer.json()
    assert body["status"] == status
    assert body["title"]
    return body


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgresql"])
async def reader(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Api]:
    """The API as `api` builds it, once per database for the tests that change nothing in
    the registry (a mock and a database each were nearly all of their time); those that
    grant keep an `api` each."""
    directory = tmp_path_factory.mktemp("v1")
    mock = MockOperator(quick_mock_settings(), directory / "mock")
    await mock.start()
    try:
        async with (
            fresh_database(request.param, directory) as url,
            seeded_registry(url) as registry,
            serving_api(mock, registry) as base,
        ):
            client = Api(base, mock)
            try:
                yield client
            finally:
                await client.http.aclose()
    finally:
        await mock.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_me(reader: Api):
    api = reader
    async with await api.as_("sec-bernard") as client:
        me = (await client.get("/v1/me")).json()
    assert me["idnat"] == BERNARD
    assert me["name"] == "Sophie BERNARD"
    assert me["auth_means"] == "e-cps"


@pytest.mark.asyncio(loop_scope="module")
async def test_no_or_bad_token_is_401_with_challenge(reader: Api):
    api = reader
    for headers in ({}, {"Authorization": "Bearer not.a.jwt"}, {"Authorization": "Basic eA=="}):
        answer = await api.http.get("/v1/me", headers=headers)
        is_problem(answer, 401)
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.asyncio(loop_scope="module")
async def test_mailboxes_of_a_secretary(reader: Api):
    api = reader
    async with await api.as_("sec-bernard") as client:
        boxes = (await client.get("/v1/mailboxes")).json()
    by_address = {b["address"]: b for b in boxes}
    assert set(by_address) == {MARTIN, DUPONT}
    martin = by_address[MARTIN]
    assert martin["rights"] == ["read", "write", "send"]
    assert martin["via"] == "delegation"
    assert isinstance(martin["delegation_id"], int)
    assert martin["holder"] == {"idnat": "899700000001", "name": "Claire MARTIN"}
    assert martin["type"] == "PER"
    assert by_address[DUPONT]["rights"] == ["read"]
    assert set(martin) == {"address", "type", "rights", "via", "delegation_id", "holder"}


@pytest.mark.asyncio(loop_scope="module")
async def test_own_mailbox_comes_first(reader: Api):
    api = reader
    async with await api.as_("dr-leroy") as client:
        boxes = (await client.get("/v1/mailboxes")).json()
    assert boxes[0]["address"] == "paul.leroy@medecin.mssante.fr"
    assert boxes[0]["via"] == "holder"
    assert boxes[0]["delegation_id"] is None
    assert boxes[1]["address"] == DUPONT


async def test_grant_list_received_revoke(api: Api):
    expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(days=7)).isoformat()
    async with await api.as_("dr-martin") as holder, await api.as_("dr-moreau") as delegate:
        created = await holder.post(
            f"/v1/mailboxes/{MARTIN}/delegations",
            json={"delegate": MOREAU, "rights": ["read"], "expires_at": expiry},
        )
        assert created.status_code == 201, created.text
        delegation = created.json()
        assert set(delegation) == {
            "id",
            "mailbox",
            "delegate",
            "rights",
            "granted_by",
            "created_at",
            "expires_at",
            "revoked_at",
        }
        assert delegation["delegate"] == {"idnat": MOREAU, "name": "Eve MOREAU"}
        assert delegation["granted_by"] == "899700000001"
        assert delegation["revoked_at"] is None
        listed = (await holder.get(f"/v1/mailboxes/{MARTIN}/delegations")).json()
        assert delegation["id"] in [d["id"] for d in listed]
        received = (await delegate.get("/v1/delegations/received")).json()
        assert [d["mailbox"] for d in received] == [MARTIN]
        boxes = (await delegate.get("/v1/mailboxes")).json()
        assert MARTIN in [b["address"] for b in boxes]
        again = await holder.post(
            f"/v1/mailboxes/{MARTIN}/delegations",
            json={"delegate": MOREAU, "rights": ["read", "send"]},
        )
        assert again.status_code == 201
        assert again.json()["id"] == delegation["id"], "granting again updates"
        assert again.json()["rights"] == ["read", "send"]
        revoked = await holder.delete(f"/v1/mailboxes/{MARTIN}/delegations/{delegation['id']}")
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        boxes = (await delegate.get("/v1/mailboxes")).json()
        assert MARTIN not in [b["address"] for b in boxes]


@pytest.mark.asyncio(loop_scope="module")
async def test_rules_give_problems(reader: Api):
    api = reader
    async with await api.as_("dr-martin") as holder, await api.as_("sec-bernard") as secretary:
        url = f"/v1/mailboxes/{MARTIN}/delegations"
        is_problem(await secretary.get(url), 403)
        is_problem(await secretary.post(url, json={"delegate": MOREAU, "rights": ["read"]}), 403)
        is_problem(await holder.get("/v1/mailboxes/nobody@medecin.mssante.fr/delegations"), 404)
        self_grant = await holder.post(url, json={"delegate": "899700000001", "rights": ["read"]})
        is_problem(self_grant, 422)
        is_problem(await holder.post(url, json={"delegate": MOREAU, "rights": []}), 422)
        is_problem(await holder.post(url, json={"delegate": MOREAU, "rights": ["admin"]}), 422)
        past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
        body = {"delegate": MOREAU, "rights": ["read"], "expires_at": past}
        is_problem(await holder.post(url, json=body), 422)
        unknown = {"delegate": "899700009999", "rights": ["read"]}
        is_problem(await holder.post(url, json=unknown), 404)
        is_problem(await holder.delete(f"{url}/999999"), 404)


@pytest.mark.asyncio(loop_scope="module")
async def test_directory_search(reader: Api):
    api = reader
    async with await api.as_("dr-martin") as client:
        found = (await client.get("/v1/directory", params={"q": "bernard"})).json()
        assert [e["idnat"] for e in found] == [BERNARD]
        assert found[0]["ecps_only"] is True
        by_id = (await client.get("/v1/directory", params={"q": "8997000000"})).json()
        assert 3 <= len(by_id) <= 20
        is_problem(await client.get("/v1/directory", params={"q": "ab"}), 422)
        accents = (await client.get("/v1/directory", params={"q": "MARTÍN"})).json()
        assert isinstance(accents, list)


async def test_an_expiry_lies_within_ten_years(api: Api):
    now = dt.datetime.now(dt.UTC)
    url = f"/v1/mailboxes/{MARTIN}/delegations"
    ahead = "the expiry is at most 10 years (3650 days) ahead"
    refused = {
        (now + dt.timedelta(days=3660)).isoformat(): ahead,
        "9999-12-31T23:59:59+00:00": ahead,
        "9999-12-31T23:59:59-05:00": ahead,  # past year 9999 once in UTC
        "0001-01-01T00:00:00+01:00": "the expiry is not in the future",  # before year 1 in UTC
    }
    async with await api.as_("dr-martin") as holder:
        within = (now + dt.timedelta(days=3640)).isoformat()
        body = {"delegate": MOREAU, "rights": ["read"], "expires_at": within}
        assert (await holder.post(url, json=body)).status_code == 201
        for expires_at, detail in refused.items():
            body["expires_at"] = expires_at
            problem = is_problem(await holder.post(url, json=body), 422)
            assert problem["type"] == "https://lps-gateway.invalid/problems/bad-expiry"
            assert problem["detail"] == detail
