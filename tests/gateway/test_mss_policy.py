"""`[mss] policy` end to end: smtplib submits messages breaking the MSSanté header rules to a
gateway in front of the mock operator. Under ``report`` they reach the recipient unchanged,
under ``enforce`` they are refused; under both the sender-identity rules refuse, and every
rule broken is counted per software (X-MSS-NIL, else EHLO) and rule in the usage figures:
the report, `/admin/usage` (JSON, CSV), `lps-gateway usage` and the metrics."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import smtplib
import uuid
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.mss.historic_ws import Caller, HistoricError
from gateway.settings import Settings
from gateway.usage.report import UsageReport
from tests.mss.builders import letter, seeded_letter, variant
from tests.support.pages import log_in
from tests.support.sasl import xoauth2_b64
from tests.support.stacks import Stack, gateway_settings

CLAIRE = "claire.martin@medecin.mssante.fr"  # dr-martin's
EVE = "eve.moreau@medecin.mssante.fr"
LUC = "luc.durand@infirmier.mssante.fr"
ADMIN = "899700000008"  # adm-roux
EHLO = "cabinet-lps.local"
NIL = "NIL-REPORT-7"


@pytest.fixture
def policy() -> str:
    """Overridden by `@pytest.mark.parametrize("policy", [...])`."""
    return "report"


@pytest.fixture
def stack_settings(tmp_path: Path, policy: str) -> Settings:
    return gateway_settings(tmp_path / "gateway", mss={"policy": policy}, admin={"idnats": [ADMIN]})


def title() -> str:
    return f"Compte rendu {uuid.uuid4().hex[:12]}"


def plain(sender: str, to: str, subject: str, nil: str | None = NIL) -> bytes:
    msg = letter(sender, to, subject, nil)
    msg.set_content("Bonjour,\n\nCi-joint le compte rendu.\n")
    return msg.as_bytes(policy=SMTP_POLICY)


def incoherent_ins(subject: str) -> bytes:
    """The seeded letter (qualified INS in METADATA.XML) saying X-MSS-INS: N."""
    headers = {"From": CLAIRE, "To": EVE, "Subject": subject, "X-MSS-NIL": NIL, "X-MSS-INS": "N"}
    return variant(seeded_letter(), headers=headers)


def submit(stack: Stack, token: str, messages: list[bytes]) -> list[tuple[int, str]]:
    """smtplib as an LPS: EHLO, AUTH XOAUTH2, one MAIL/RCPT/DATA per message; the DATA
    replies (code, text)."""
    replies: list[tuple[int, str]] = []
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, local_hostname=EHLO, timeout=30) as smtp:
        smtp.ehlo()
        code, _ = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(CLAIRE, token).decode())
        assert code == 235
        for raw in messages:
            try:
                smtp.sendmail(CLAIRE, [EVE], raw)
                replies.append((250, ""))
            except smtplib.SMTPDataError as refused:
                replies.append((refused.smtp_code, refused.smtp_error.decode()))
    return replies


async def received(stack: Stack, address: str, subject: str) -> list[bytes]:
    assert stack.mock.platform is not None
    store = stack.mock.platform.store(address)
    state = await store.folder_state("INBOX")
    found = [await store.fetch_message("INBOX", meta.uid) for meta in state.messages]
    return [raw for raw in found if subject.encode() in raw]


def counts(report: UsageReport) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(software, interface, rule) -> (refused, reported)."""
    return {
        (r.software, r.interface, r.rule): (r.refused, r.reported) for r in report.nonconformities
    }


def metric(stack: Stack, name: str, **labels: str) -> float:
    return stack.gateway.metrics.sample(name, **labels)


async def test_report_relays_unchanged_and_counts_per_software(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.mss.policy")
    token = await stack.token("dr-martin")
    ins, no_nil, wrong_from = title(), title(), title()
    messages = [
        incoherent_ins(ins),
        incoherent_ins(title()),
        plain(CLAIRE, EVE, no_nil, nil=None),
        # From names another BAL: refused under any policy (its missing NIL is reported)
        plain(LUC, EVE, wrong_from, nil=None),
    ]
    replies = await asyncio.to_thread(submit, stack, token, messages)
    assert [code for code, _ in replies] == [250, 250, 250, 550]
    assert replies[3][1].startswith("5.7.1 From")
    assert "X-MSS" not in replies[3][1]  # the reply names what refused, not what is reported
    assert await received(stack, EVE, ins) == [messages[0]]  # byte for byte
    assert await received(stack, EVE, no_nil) == [messages[2]]
    assert await received(stack, EVE, wrong_from) == []

    report = await stack.gateway.usage_report()
    assert counts(report) == {
        (NIL, "api-lps-smtp", "X-MSS-INS-mismatch"): (0, 2),
        (EHLO, "api-lps-smtp", "X-MSS-NIL-missing"): (0, 2),
        (EHLO, "api-lps-smtp", "From-mismatch"): (1, 0),
    }
    [ins_row] = [r for r in report.nonconformities if r.rule == "X-MSS-INS-mismatch"]
    assert ins_row.header == "X-MSS-INS"
    assert ins_row.first_day == ins_row.last_day
    sample = {"rule": "X-MSS-INS-mismatch", "outcome": "reported", "software": NIL}
    assert metric(stack, "lpsgw_mss_nonconformities_total", **sample) == 2
    assert metric(stack, "lpsgw_messages_total", result="rejected") == 1
    assert metric(stack, "lpsgw_messages_total", result="accepted") == 3

    lines = [r for r in caplog.records if r.getMessage() == "mss.nonconformity"]
    assert sorted((r.rule, r.header, r.outcome) for r in lines) == [  # type: ignore[attr-defined]
        ("From-mismatch", "From", "refused"),
        ("X-MSS-INS-mismatch", "X-MSS-INS", "reported"),
        ("X-MSS-INS-mismatch", "X-MSS-INS", "reported"),
        ("X-MSS-NIL-missing", "X-MSS-NIL", "reported"),
        ("X-MSS-NIL-missing", "X-MSS-NIL", "reported"),
    ]
    for record in lines:
        shown = json.dumps(vars(record), default=str)
        for content in (ins, NIL, "Bonjour", "patient"):
            assert content not in shown


@pytest.mark.parametrize("policy", ["enforce"])
async def test_enforce_refuses_and_counts_per_software(stack: Stack) -> None:
    token = await stack.token("dr-martin")
    ins, no_nil = title(), title()
    replies = await asyncio.to_thread(
        submit, stack, token, [incoherent_ins(ins), plain(CLAIRE, EVE, no_nil, nil=None)]
    )
    assert [code for code, _ in replies] == [554, 554]
    assert "X-MSS-INS" in replies[0][1]
    assert "X-MSS-NIL" in replies[1][1]
    assert await received(stack, EVE, ins) == []
    assert await received(stack, EVE, no_nil) == []
    report = await stack.gateway.usage_report()
    assert counts(report) == {
        (NIL, "api-lps-smtp", "X-MSS-INS-mismatch"): (1, 0),
        (EHLO, "api-lps-smtp", "X-MSS-NIL-missing"): (1, 0),
    }
    sample = {"rule": "X-MSS-NIL-missing", "outcome": "refused", "software": EHLO}
    assert metric(stack, "lpsgw_mss_nonconformities_total", **sample) == 1
    assert metric(stack, "lpsgw_messages_total", result="rejected") == 2


def run_cli(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(
        app, ["usage", "--data", str(settings.data_dir), *args], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    return result.output


async def test_the_figures_through_the_admin_api_and_the_cli(stack: Stack) -> None:
    token = await stack.token("dr-martin")
    messages = [incoherent_ins(title()), plain(CLAIRE, EVE, title(), nil=None)]
    assert [c for c, _ in await asyncio.to_thread(submit, stack, token, messages)] == [250, 250]
    url = f"{stack.gateway.http_url}/admin/usage"
    admin = {"Authorization": f"Bearer {await stack.token('adm-roux')}"}
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(url, headers=admin)
        table = await http.get(f"{url}.csv", headers=admin, params={"table": "nonconformities"})
        default = await http.get(f"{url}.csv", headers=admin)
        bad = await http.get(f"{url}.csv", headers=admin, params={"table": "secrets"})
    assert answer.status_code == 200
    rows = {(r["software"], r["rule"]): r for r in answer.json()["nonconformities"]}
    assert set(rows) == {(NIL, "X-MSS-INS-mismatch"), (EHLO, "X-MSS-NIL-missing")}
    assert rows[NIL, "X-MSS-INS-mismatch"]["reported"] == 1
    assert rows[NIL, "X-MSS-INS-mismatch"]["header"] == "X-MSS-INS"
    assert table.status_code == 200
    assert "usage-nonconformities.csv" in table.headers["content-disposition"]
    parsed = list(csv.DictReader(io.StringIO(table.text)))
    assert {(r["software"], r["rule"], r["refused"], r["reported"]) for r in parsed} == {
        (NIL, "X-MSS-INS-mismatch", "0", "1"),
        (EHLO, "X-MSS-NIL-missing", "0", "1"),
    }
    assert "rule" not in default.text.splitlines()[0]  # the per-software table, as before
    assert bad.status_code == 422

    await stack.gateway.usage.flush()
    plain_settings = Settings(data_dir=stack.gateway.settings.data_dir)
    as_json = json.loads(await asyncio.to_thread(run_cli, plain_settings, "--format", "json"))
    assert {(r["software"], r["rule"], r["reported"]) for r in as_json["nonconformities"]} == {
        (NIL, "X-MSS-INS-mismatch", 1),
        (EHLO, "X-MSS-NIL-missing", 1),
    }
    as_csv = await asyncio.to_thread(
        run_cli, plain_settings, "--format", "csv", "--table", "nonconformities"
    )
    assert {(r["software"], r["rule"]) for r in csv.DictReader(io.StringIO(as_csv))} == {
        (NIL, "X-MSS-INS-mismatch"),
        (EHLO, "X-MSS-NIL-missing"),
    }
    printed = await asyncio.to_thread(run_cli, plain_settings)
    assert "MSSanté rules broken" in printed
    assert "X-MSS-INS-mismatch" in printed
    assert EHLO in printed


async def test_the_usage_page_lists_them(stack: Stack) -> None:
    token = await stack.token("dr-martin")
    messages = [incoherent_ins(title())]
    assert [c for c, _ in await asyncio.to_thread(submit, stack, token, messages)] == [250]
    site = stack.gateway.http_url
    async with httpx.AsyncClient(timeout=10) as http:
        await log_in(http, site, "adm-roux")  # the pages' PSC login, as a browser's
        page = await http.get(f"{site}/ui/admin/usage")
    assert page.status_code == 200
    assert 'id="table-nonconformities"' in page.text
    assert "X-MSS-INS-mismatch" in page.text


def caller(persona_idnat: str, **extra: Any) -> Caller:
    return Caller(persona_idnat, means="card", **extra)


@pytest.mark.parametrize("policy", ["report", "enforce"])
async def test_send_message_of_the_historic_web_services(stack: Stack, policy: str) -> None:
    """sendMessage on a modern BAL without NUMHOMOLOGATION (so without X-MSS-NIL): relayed
    and counted under the User-Agent when reporting, refused (36) when enforcing."""
    operations = stack.gateway.legacy_operations
    assert operations is not None
    subject = title()
    payload = {
        "email": CLAIRE,
        "message": {"addresses": [LUC], "subject": subject, "body": "Bonjour"},
    }
    who = caller("899700000001", user_agent="VieuxLPS/2.1")
    if policy == "enforce":
        with pytest.raises(HistoricError) as refused:
            await operations.call("Item", "sendMessage", who, payload)
        assert "X-MSS-NIL-missing" in str(refused.value)
        assert await received(stack, LUC, subject) == []
    else:
        sent = await operations.call("Item", "sendMessage", who, payload)
        assert sent["message"]["subject"] == subject
        [delivered] = await received(stack, LUC, subject)
        assert b"X-MSS-NIL" not in delivered
    outcome = (1, 0) if policy == "enforce" else (0, 1)
    report = await stack.gateway.usage_report()
    assert counts(report) == {("VieuxLPS/2.1", "historic-ws", "X-MSS-NIL-missing"): outcome}
