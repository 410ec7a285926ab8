"""The mock's modern platform provisioning API, and the gateway's `provision` calling it:
real sockets, the mock running, the BAL then opened with the master login over IMAP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.backends.provisioning import ProvisioningError, provision
from gateway.settings import BackendSettings
from mock_operator.server import MockOperator
from tests.support.stacks import mock_backend

HISTORIC_BAL = "jean.dupont@medecin.mssante.fr"  # a historic persona: not on the modern platform
MODERN_BAL = "claire.martin@medecin.mssante.fr"


def _master(mock: MockOperator) -> httpx.BasicAuth:
    assert mock.master is not None
    return httpx.BasicAuth(mock.master.user, mock.master.password)


async def _master_login(mock: MockOperator, bal: str) -> bool:
    """Does the modern platform's IMAP let the master in on `bal`?"""
    import asyncio
    import imaplib
    import ssl

    assert mock.master is not None
    master = mock.master

    def login() -> bool:
        context = ssl.create_default_context(cafile=str(mock.tls_cert))
        with imaplib.IMAP4("127.0.0.1", mock.imap_port) as imap:
            imap.starttls(context)
            try:
                imap.authenticate(
                    "PLAIN",
                    lambda _: f"{bal}\0{master.user}\0{master.password}".encode(),
                )
            except imaplib.IMAP4.error:
                return False
            typ, _ = imap.select("INBOX")
            return typ == "OK"

    return await asyncio.to_thread(login)


async def test_a_historic_bal_is_provisioned_once(mock_op: MockOperator) -> None:
    url = f"{mock_op.http_url}/operator/mailboxes/{HISTORIC_BAL}"
    assert not await _master_login(mock_op, HISTORIC_BAL)  # not there before
    async with httpx.AsyncClient(timeout=10) as http:
        before = await http.get(url, auth=_master(mock_op))
        assert before.status_code == 404
        assert before.json()["exists"] is False
        created = await http.put(url, auth=_master(mock_op))
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["created"] is True
        holder = next(p for p in mock_op.personas if p.bal == HISTORIC_BAL)
        assert body["holder"] == holder.idnat
        assert "INBOX" in {f["name"] for f in body["folders"]}
        uses = {f["special_use"] for f in body["folders"]}
        assert {"\\Sent", "\\Drafts", "\\Trash"} <= uses
        assert body["messages"] == 0
        again = await http.put(url, auth=_master(mock_op))
        assert again.status_code == 200
        assert again.json()["created"] is False
        after = await http.get(url, auth=_master(mock_op))
        assert after.json()["exists"] is True
    assert await _master_login(mock_op, HISTORIC_BAL)


async def test_an_existing_bal_is_described_with_its_messages(mock_op: MockOperator) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(
            f"{mock_op.http_url}/operator/mailboxes/{MODERN_BAL}", auth=_master(mock_op)
        )
    assert answer.status_code == 200
    body = answer.json()
    assert body["messages"] == sum(f["messages"] for f in body["folders"])
    assert body["messages"] > 0  # the persona's seeded mail


@pytest.mark.parametrize(
    ("auth", "status"),
    [
        (None, 401),
        (httpx.BasicAuth("lps-gateway", "wrong"), 401),
        (httpx.BasicAuth("someone", "x"), 401),
    ],
)
async def test_the_operator_api_needs_the_master_credentials(
    mock_op: MockOperator, auth: httpx.BasicAuth | None, status: int
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.put(f"{mock_op.http_url}/operator/mailboxes/{HISTORIC_BAL}", auth=auth)
        bearer = await http.put(
            f"{mock_op.http_url}/operator/mailboxes/{HISTORIC_BAL}",
            headers={"Authorization": "Bearer x"},
        )
    assert answer.status_code == status
    assert bearer.status_code == 401
    assert not await _master_login(mock_op, HISTORIC_BAL)


@pytest.mark.parametrize(
    "address",
    ["nobody@medecin.mssante.fr", "no-at-sign", "a b@x.fr", "x" * 300 + "@x.fr", "a@b@c.fr"],
)
async def test_unknown_or_malformed_addresses_are_refused(
    mock_op: MockOperator, address: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.put(
            f"{mock_op.http_url}/operator/mailboxes/{address}", auth=_master(mock_op)
        )
    assert answer.status_code in (404, 422)
    assert mock_op.platform is not None
    assert not await mock_op.platform.has_mailbox(address)


async def test_the_gateway_provisions_through_its_backend_settings(mock_op: MockOperator) -> None:
    backend = mock_backend(mock_op)
    first = await provision(backend, HISTORIC_BAL)
    assert first.created
    assert first.details["exists"] is True
    second = await provision(backend, HISTORIC_BAL)
    assert not second.created
    assert await _master_login(mock_op, HISTORIC_BAL)
    unknown = mock_backend(mock_op, provision_url=None)
    assert not (await provision(unknown, "x@y.fr")).created  # no hook: nothing asked


async def test_provisioning_errors_are_clear(mock_op: MockOperator, tmp_path: Path) -> None:
    wrong = mock_backend(mock_op, master_password="wrong")
    with pytest.raises(ProvisioningError, match="401") as refused:
        await provision(wrong, HISTORIC_BAL)
    assert "wrong" not in str(refused.value)
    with pytest.raises(ProvisioningError, match="404"):
        await provision(mock_backend(mock_op), "nobody@medecin.mssante.fr")
    down = BackendSettings(
        provision_url="http://127.0.0.1:9/operator/mailboxes", master_user="u", master_password="p"
    )
    with pytest.raises(ProvisioningError, match="does not answer"):
        await provision(down, HISTORIC_BAL)
    with pytest.raises(ValueError, match="provision_url"):
        BackendSettings(provision_url="ftp://x/")
