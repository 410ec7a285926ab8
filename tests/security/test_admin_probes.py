"""Hostile callers of `/admin`: oversized and garbage Authorization headers get a clean
refusal (never a 500, never the figures), and the local admin secret, right or wrong,
never reaches a log line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.conftest import quick_mock_settings
from tests.support.stacks import Stack, gateway_settings, running_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway for every probe (a stack each was nearly all of the module's time): a
    refused request changes nothing the next probe sees."""
    directory = tmp_path_factory.mktemp("admin-probes")
    settings = gateway_settings(directory / "gateway", admin={"idnats": ["899700000008"]})
    async with running_stack(settings, quick_mock_settings(), directory / "mock") as running:
        yield running


def _secret(stack: Stack) -> str:
    return (stack.gateway.settings.data_dir / "admin.secret").read_text().strip()


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer lpsgw-admin." + b"A" * 60_000,  # oversized
        b"Bearer " + b"A" * 60_000,
        b"Bearer lpsgw-admin.\xff\xfe\x80",  # bytes no secret holds
        b"Bearer lpsgw-admin.\tx",
        b"Bearer  lpsgw-admin.",
        b"lpsgw-admin.x",  # no scheme
        b"Bearer",
        b"Negotiate lpsgw-admin.x",
    ],
)
async def test_garbage_authorization_is_refused_cleanly(stack: Stack, value: bytes) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.http_url, timeout=10) as http:
        answer = await http.get("/admin/status", headers=[(b"Authorization", value)])
    assert answer.status_code in (400, 401, 413, 431), answer.text
    assert "backends" not in answer.text
    async with httpx.AsyncClient(base_url=stack.gateway.http_url, timeout=10) as http:
        after = await http.get(
            "/admin/status", headers={"Authorization": f"Bearer {_secret(stack)}"}
        )
    assert after.status_code == 200  # the gateway is still there


async def test_the_secret_is_never_logged(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = _secret(stack)
    wrong = secret[:-4] + "XXXX"
    async with httpx.AsyncClient(base_url=stack.gateway.http_url, timeout=10) as http:
        good = await http.get("/admin/status", headers={"Authorization": f"Bearer {secret}"})
        bad = await http.get("/admin/status", headers={"Authorization": f"Bearer {wrong}"})
    assert good.status_code == 200
    assert bad.status_code == 401
    assert any("admin.local_refused" in r.getMessage() for r in caplog.records)
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert secret[len("lpsgw-admin.") :] not in logged
    assert wrong[len("lpsgw-admin.") :] not in logged
    assert stack.gateway.delegations is not None
    trail = await stack.gateway.delegations.audit_for("")
    assert all(secret[12:] not in (e.detail or "") for e in trail)


@pytest.mark.parametrize(
    "value",
    [
        b"Basic " + b"A" * 60_000,
        b"Basic !!!not-base64",
        b"Basic bHBzLWdhdGV3YXk=",  # no colon
        b"Basic \xff\xfe",
        b"Bearer x",
    ],
)
async def test_the_mocks_operator_api_refuses_garbage_basic(stack: Stack, value: bytes) -> None:
    url = f"{stack.mock.http_url}/operator/mailboxes/jean.dupont@medecin.mssante.fr"
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.put(url, headers=[(b"Authorization", value)])
    assert answer.status_code in (400, 401, 431), answer.text
    assert stack.mock.platform is not None
    assert not await stack.mock.platform.has_mailbox("jean.dupont@medecin.mssante.fr")
