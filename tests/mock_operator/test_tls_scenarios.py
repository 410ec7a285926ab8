"""The TLS scenario ports over real sockets: a verifying client refuses each certificate
and the campaign says so; a careless one authenticates there and the campaign fails it."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import io
import smtplib
import ssl
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from rich.console import Console
from typer.testing import CliRunner

from mock_operator.cli import app, describe
from mock_operator.conformance.scenario_certs import OTHER_NAME, SCENARIOS
from mock_operator.server import MockOperator
from tests.conftest import client_tls, persona_token, quick_mock_settings
from tests.support.conformance import campaign_results, open_campaign
from tests.support.sasl import xoauth2_blob
from tests.support.tls_scenarios import refuse_tls_scenarios, trusting
from tests.support.waiting import eventually

MARTIN = "claire.martin@medecin.mssante.fr"
CERT_CHECKS = {
    "expired": "cert-expired",
    "wrong-name": "cert-name",
    "untrusted-ca": "cert-untrusted",
}


async def settled(mock: MockOperator, campaign: str, status: str) -> dict[str, dict[str, Any]]:
    """The report once the three certificate checks all have `status`."""
    found: dict[str, dict[str, Any]] = {}

    async def check() -> bool:
        nonlocal found
        found = await campaign_results(mock, campaign)
        return all(found[key]["status"] == status for key in CERT_CHECKS.values())

    await eventually(check, f"cert-* checks {status}")
    return found


def careless() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def ports(mock: MockOperator, scenario: str) -> dict[str, int]:
    assert mock.scenarios is not None
    return mock.scenarios.ports()[scenario]


def imap_refused(port: int, context: ssl.SSLContext) -> str:
    client = imaplib.IMAP4("localhost", port, timeout=30)
    try:
        with pytest.raises(ssl.SSLCertVerificationError) as raised:
            client.starttls(context)
        return str(raised.value.verify_message)
    finally:
        with contextlib.suppress(OSError):  # the failed handshake closed it
            client.shutdown()


def smtp_refused(port: int, context: ssl.SSLContext) -> str:
    smtp = smtplib.SMTP("localhost", port, timeout=30)
    try:
        smtp.ehlo("mon-lps.example")
        with pytest.raises(ssl.SSLCertVerificationError) as raised:
            smtp.starttls(context=context)
        return str(raised.value.verify_message)
    finally:
        smtp.close()


def imap_login(port: int, context: ssl.SSLContext, token: str) -> None:
    client = imaplib.IMAP4("localhost", port, timeout=30)
    try:
        client.starttls(context)
        client.authenticate("XOAUTH2", lambda _: xoauth2_blob(MARTIN, token))
        client.select("INBOX")
    finally:
        client.logout()


def smtp_login(port: int, context: ssl.SSLContext, token: str) -> None:
    with smtplib.SMTP("localhost", port, timeout=30) as smtp:
        smtp.ehlo("mon-lps.example")
        smtp.starttls(context=context)
        smtp.ehlo("mon-lps.example")
        smtp.auth(
            "XOAUTH2",
            lambda challenge=None: xoauth2_blob(MARTIN, token).decode(),
            initial_response_ok=True,
        )


async def test_the_scenario_ports_and_their_certificates(mock_op: MockOperator) -> None:
    assert mock_op.scenarios is not None
    found = mock_op.scenarios.ports()
    assert list(found) == list(SCENARIOS)
    numbers = [p for pair in found.values() for p in pair.values()]
    assert len(set(numbers)) == 6
    assert not {2143, 2144, 2587, 8090, 1143, 1587, 8080, *range(2150, 2156)} & set(numbers)
    files = mock_op.scenarios.files
    for scenario in SCENARIOS:
        assert stat.S_IMODE(files.key(scenario).stat().st_mode) == 0o600
    expired = x509.load_pem_x509_certificate(files.cert("expired").read_bytes())
    assert expired.not_valid_after_utc.timestamp() < time.time()
    named = x509.load_pem_x509_certificate(files.cert("wrong-name").read_bytes())
    names = named.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [OTHER_NAME]
    assert not names.get_values_for_type(x509.IPAddress)
    # The normal ports keep their certificate, which the trust file also covers.
    assert mock_op.tls_cert is not None
    assert mock_op.tls_cert.read_bytes() in files.trust.read_bytes()
    await asyncio.to_thread(visit, mock_op.imap_port, trusting(mock_op))


def visit(port: int, context: ssl.SSLContext) -> None:
    """STARTTLS, then LOGOUT: no authentication."""
    client = imaplib.IMAP4("localhost", port, timeout=30)
    client.starttls(context)
    client.logout()


async def test_a_verifying_lps_refuses_every_scenario_and_passes(mock_op: MockOperator) -> None:
    started = await open_campaign(mock_op)
    assert started["tls_scenarios"]["ports"] == mock_op.scenarios.ports()  # type: ignore[union-attr]
    assert started["tls_scenarios"]["trust"].endswith("trust.pem")
    context = trusting(mock_op)
    messages = {}
    for scenario in SCENARIOS:
        where = ports(mock_op, scenario)
        messages[scenario] = (
            await asyncio.to_thread(imap_refused, where["imap"], context),
            await asyncio.to_thread(smtp_refused, where["smtp"], context),
        )
    assert "expired" in messages["expired"][0]
    assert "Hostname mismatch" in messages["wrong-name"][1]
    assert "local issuer" in messages["untrusted-ca"][0]

    found = await settled(mock_op, started["id"], "passed")
    assert any("certificate expired" in line for line in found["cert-expired"]["evidence"])
    assert any("bad certificate" in line for line in found["cert-name"]["evidence"])
    assert any("unknown ca" in line for line in found["cert-untrusted"]["evidence"])
    assert {line.split(" ")[0] for line in found["cert-expired"]["evidence"]} == {"imap", "smtp"}
    assert found["cert-name"]["requirement"] == "RFC 6125 §6 / RFC 9525"


async def test_a_client_that_hangs_up_without_an_alert_refused_too(
    mock_op: MockOperator,
) -> None:
    """asyncio's TLS client closes without sending its alert: the server saw its ClientHello
    answered with the certificate, then the close."""
    started = await open_campaign(mock_op)
    await refuse_tls_scenarios(mock_op)
    found = await settled(mock_op, started["id"], "passed")
    evidence = found["cert-expired"]["evidence"]
    assert {line.split(" ")[0] for line in evidence} == {"imap", "smtp"}
    assert all("sans alerte" in line for line in evidence)


async def test_a_careless_lps_authenticates_and_fails(mock_op: MockOperator) -> None:
    started = await open_campaign(mock_op)
    token = await persona_token(mock_op)
    for scenario in SCENARIOS:
        where = ports(mock_op, scenario)
        await asyncio.to_thread(imap_login, where["imap"], careless(), token)
        await asyncio.to_thread(smtp_login, where["smtp"], careless(), token)
    found = await settled(mock_op, started["id"], "failed")
    evidence = found["cert-expired"]["evidence"]
    assert any("AUTHENTICATE XOAUTH2" in line for line in evidence)
    assert any(line.startswith("smtp") and "AUTH XOAUTH2" in line for line in evidence)
    assert all(token[:20] not in line for r in found.values() for line in r["evidence"])
    assert "Authentification malgré" in found["cert-untrusted"]["detail"]


async def test_handshake_then_leaving_without_authenticating_passes(
    mock_op: MockOperator,
) -> None:
    """A client that checks the certificate after the handshake and leaves."""
    started = await open_campaign(mock_op)

    def smtp_visit(port: int) -> None:
        smtp = smtplib.SMTP("localhost", port, timeout=30)
        smtp.ehlo("mon-lps.example")
        smtp.starttls(context=careless())
        smtp.close()  # no EHLO, no QUIT: gone

    for scenario in SCENARIOS:
        await asyncio.to_thread(visit, ports(mock_op, scenario)["imap"], careless())
        await asyncio.to_thread(smtp_visit, ports(mock_op, scenario)["smtp"])
    found = await settled(mock_op, started["id"], "passed")
    evidence = found["cert-name"]["evidence"]
    assert {line.split(" ")[0] for line in evidence} == {"imap", "smtp"}
    assert all("fermeture sans authentification" in line for line in evidence)


async def test_trusting_only_the_dev_certificate_is_inconclusive(mock_op: MockOperator) -> None:
    """An LPS not given trust.pem refuses the expired and misnamed certificates as unknown:
    that says nothing of expiry or names."""
    started = await open_campaign(mock_op)
    assert mock_op.tls_cert is not None
    context = ssl.create_default_context(cafile=str(mock_op.tls_cert))
    for scenario in SCENARIOS:
        await asyncio.to_thread(imap_refused, ports(mock_op, scenario)["imap"], context)

    async def check() -> bool:
        found = await campaign_results(mock_op, started["id"])
        return found["cert-untrusted"]["status"] == "passed"

    await eventually(check, "cert-untrusted passed")
    found = await campaign_results(mock_op, started["id"])
    for key in ("cert-expired", "cert-name"):
        assert found[key]["status"] == "not_observed"
        assert "trust.pem" in found[key]["detail"]


async def test_nobody_connected_is_not_observed(mock_op: MockOperator) -> None:
    started = await open_campaign(mock_op)
    found = await campaign_results(mock_op, started["id"])
    for key in CERT_CHECKS.values():
        assert found[key]["status"] == "not_observed"


async def test_the_campaign_page_shows_where_to_point_the_lps(mock_op: MockOperator) -> None:
    started = await open_campaign(mock_op)
    async with httpx.AsyncClient(timeout=10, verify=client_tls()) as http:
        page = await http.get(f"{mock_op.http_url}/conformance/{started['id']}")
    assert page.status_code == 200
    assert "Certificats à refuser" in page.text
    assert "trust.pem" in page.text
    for scenario in SCENARIOS:
        assert f'id="tls-{scenario}"' in page.text
        assert str(ports(mock_op, scenario)["smtp"]) in page.text


async def test_the_commands_print_the_scenario_ports(mock_op: MockOperator) -> None:
    console = Console(file=io.StringIO(), width=400)
    describe(mock_op, console)
    printed = console.file.getvalue()  # type: ignore[attr-defined]
    for scenario in SCENARIOS:
        assert f"{scenario} imap {ports(mock_op, scenario)['imap']}" in printed
    assert "trust.pem" in printed
    started = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["conformance", "start", "--software", "Mon LPS", "--url", mock_op.http_url],
    )
    assert started.exit_code == 0, started.output
    where = ports(mock_op, "wrong-name")
    assert f"wrong-name {where['imap']}/{where['smtp']}" in started.output
    assert started.output.strip().splitlines()[-1].startswith("c")  # the id, alone, last


async def test_scenario_ports_can_be_turned_off(tmp_path: Path) -> None:
    settings = quick_mock_settings().model_copy(update={"scenario_ports": False})
    mock = MockOperator(settings, tmp_path / "mock-operator")
    await mock.start()
    try:
        assert mock.scenarios is None
        started = await open_campaign(mock)
        assert "tls_scenarios" not in started
        assert not (tmp_path / "mock-operator" / "tls" / "scenarios").exists()
    finally:
        await mock.stop()
