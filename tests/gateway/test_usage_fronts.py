"""Who still uses what, as the gateway counts the sessions a test really makes: IMAP with
imaplib sending ID (before and after login, or not at all), SMTP with smtplib's EHLO and
messages carrying X-MSS-NIL; then the figures through /admin/usage and `lps-gateway usage`."""

from __future__ import annotations

import asyncio
import base64
import csv
import imaplib
import io
import json
import smtplib
from collections.abc import AsyncIterator
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.settings import MockSettings, Settings
from gateway.usage.report import UsageReport
from tests.mss.builders import letter
from tests.support.sasl import xoauth2, xoauth2_b64
from tests.support.stacks import Stack, configure_with, gateway_settings, running_stack

MARTIN = "claire.martin@medecin.mssante.fr"
DUPONT = "jean.dupont@medecin.mssante.fr"
DURAND = "luc.durand@infirmier.mssante.fr"
ADMIN = "899700000008"
# RFC 2971 ID is valid in every state; imaplib knows it not, and xatom would learn only one
imaplib.Commands["ID"] = ("NONAUTH", "AUTH", "SELECTED")


@pytest.fixture
async def stack(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Stack]:
    settings = gateway_settings(tmp_path / "gateway", admin={"idnats": [ADMIN]})
    async with running_stack(settings, mock_settings, tmp_path / "mock", configure_with()) as s:
        yield s


def imap_session(port: int, user: str, token: str, *, before: str | None, after: str | None) -> str:
    """An LPS on imaplib: ID (name, version) before login, after it, or never; then a
    SELECT and LOGOUT. Returns the SELECT status."""
    with imaplib.IMAP4("127.0.0.1", port) as client:
        if before:
            client.xatom("ID", before)
        client.authenticate("XOAUTH2", lambda _: base64.b64decode(xoauth2(user, token)))
        if after:
            client.xatom("ID", after)
        status, _ = client.select("INBOX", readonly=True)
        return status


def smtp_session(port: int, ehlo: str, user: str, token: str, nils: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname=ehlo, timeout=30) as smtp:
        smtp.ehlo()
        code, _ = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(user, token).decode())
        assert code == 235
        for nil in nils:
            msg = letter(user, DURAND, "usage", nil)
            msg.set_content("Bonjour\n")
            smtp.sendmail(user, [DURAND], msg.as_bytes(policy=SMTP_POLICY))


def figures(report: UsageReport) -> dict[tuple[str, str, str], tuple[int, int, int, int]]:
    return {
        (r.software, r.version, r.interface): (r.bals, r.persons, r.sessions, r.messages)
        for r in report.software
    }


async def make_sessions(stack: Stack) -> None:
    martin = await stack.token("dr-martin")
    bernard = await stack.token("sec-bernard")
    port = stack.imap_port
    medimail = '("name" "Medimail" "version" "4.2")'
    runs = [
        (port, MARTIN, martin, medimail, None),  # ID before login: relayed session
        (port, MARTIN, martin, None, medimail),  # ID after login: the relay sees it
        (port, MARTIN, bernard, medimail, None),  # a delegate, same software
        (port, DUPONT, bernard, '("name" "VieuxLPS" "version" "1.0")', None),  # historic BAL
        (port, MARTIN, martin, None, None),  # no ID at all
    ]
    for args in runs:
        status = await asyncio.to_thread(imap_session, *args[:3], before=args[3], after=args[4])
        assert status == "OK"
    await asyncio.to_thread(
        smtp_session, stack.smtp_port, "cabinet-lps.local", MARTIN, martin, ["NIL-42", "NIL-42"]
    )


async def test_figures_match_the_sessions_made(stack: Stack) -> None:
    await make_sessions(stack)
    report = await stack.gateway.usage_report()
    assert figures(report) == {
        ("Medimail", "4.2", "api-lps-imap"): (1, 2, 3, 0),
        ("VieuxLPS", "1.0", "api-lps-imap"): (1, 1, 1, 0),
        ("unknown", "", "api-lps-imap"): (1, 1, 1, 0),
        ("cabinet-lps.local", "", "api-lps-smtp"): (1, 1, 1, 0),
        ("NIL-42", "", "api-lps-smtp"): (1, 1, 0, 2),
    }
    assert [(b.bal, b.platform, b.software) for b in report.historic] == [
        (DUPONT, "historic", "VieuxLPS")
    ]
    metrics = stack.gateway.metrics
    sample = metrics.sample
    assert sample("lpsgw_usage_logins_total", interface="api-lps-imap", software="Medimail") == 3
    assert sample("lpsgw_usage_messages_total", interface="api-lps-smtp", software="NIL-42") == 2


async def test_admin_usage_for_administrators_only(stack: Stack) -> None:
    await make_sessions(stack)
    url = f"{stack.gateway.http_url}/admin/usage"
    admin = {"Authorization": f"Bearer {await stack.token('adm-roux')}"}
    other = {"Authorization": f"Bearer {await stack.token('dr-martin')}"}
    async with httpx.AsyncClient(timeout=10) as http:
        refused = await http.get(url, headers=other)
        refused_csv = await http.get(f"{url}.csv", headers=other)
        anonymous = await http.get(url)
        answer = await http.get(url, headers=admin)
        table = await http.get(f"{url}.csv", headers=admin, params={"since": "2000-01-01"})
        future = await http.get(url, headers=admin, params={"since": "2999-01-01"})
        bad = await http.get(url, headers=admin, params={"since": "yesterday"})
    for forbidden in (refused, refused_csv):
        assert forbidden.status_code == 403
        assert forbidden.headers["content-type"] == "application/problem+json"
        assert forbidden.json()["status"] == 403
    assert anonymous.status_code == 401
    assert bad.status_code == 422
    assert answer.status_code == 200
    body = answer.json()
    medimail = [r for r in body["software"] if r["software"] == "Medimail"]
    assert [(r["bals"], r["persons"], r["sessions"]) for r in medimail] == [(1, 2, 3)]
    assert [b["bal"] for b in body["historic_bals"]] == [DUPONT]
    assert future.json()["software"] == []
    assert table.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(table.text)))
    nil = [r for r in rows if r["software"] == "NIL-42"]
    assert [(r["interface"], r["messages"], r["bals"]) for r in nil] == [("api-lps-smtp", "2", "1")]


def run_cli(settings: Settings, *args: str) -> Any:
    result = CliRunner().invoke(
        app, ["usage", "--data", str(settings.data_dir), *args], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    return result.output


async def test_cli_reports_in_every_format(stack: Stack) -> None:
    await make_sessions(stack)
    await stack.gateway.usage.flush()
    settings = stack.gateway.settings
    # the CLI reads the database as the demo's directory holds it: no backends configured
    plain = Settings(data_dir=settings.data_dir)
    as_json = json.loads(await asyncio.to_thread(run_cli, plain, "--format", "json"))
    medimail = [r for r in as_json["software"] if r["software"] == "Medimail"]
    assert [(r["bals"], r["persons"], r["sessions"]) for r in medimail] == [(1, 2, 3)]
    assert [(b["bal"], b["software"]) for b in as_json["historic_bals"]] == [(DUPONT, "VieuxLPS")]
    as_csv = await asyncio.to_thread(run_cli, plain, "--format", "csv", "--since", "2000-01-01")
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert {(r["software"], r["interface"], r["sessions"]) for r in rows} >= {
        ("Medimail", "api-lps-imap", "3"),
        ("cabinet-lps.local", "api-lps-smtp", "1"),
    }
    table = await asyncio.to_thread(run_cli, plain)
    assert "Medimail" in table
    assert "VieuxLPS" in table
    assert DUPONT in table
    empty = await asyncio.to_thread(run_cli, plain, "--format", "json", "--since", "2999-01-01")
    assert json.loads(empty)["software"] == []


def test_cli_says_when_there_are_no_figures(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["usage", "--data", str(tmp_path)])
    assert result.exit_code == 1
    assert "no usage figures" in result.output
