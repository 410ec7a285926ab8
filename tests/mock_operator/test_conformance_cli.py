"""`mock-operator conformance` as a vendor runs it: a process of its own against a running
mock (here, the test's), its id on the last line, reports in a file, clear failures."""

from __future__ import annotations

import asyncio
import imaplib
import re
from pathlib import Path

import pytest
from defusedxml import ElementTree as SafeET

from mock_operator.conformance.checks import CHECKS
from mock_operator.server import MockOperator
from tests.conftest import persona_token
from tests.test_cli import command

pytestmark = pytest.mark.slow

ID = re.compile(r"c\d{8}-[0-9a-f]{6}")


async def cli(*args: str) -> tuple[int, str, str]:
    """Run `mock-operator` without blocking the loop the mock serves on (3-5 s of imports
    each on a busy machine: the tests make few calls)."""
    process = await asyncio.create_subprocess_exec(
        command("mock-operator"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"NO_COLOR": "1", "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def plaintext_login(mock: MockOperator, token: str) -> None:
    """An LPS that logs in without STARTTLS (allowed on loopback): starttls-imap fails."""
    client = imaplib.IMAP4("127.0.0.1", mock.imap_port, timeout=30)
    client.login("claire.martin@medecin.mssante.fr", token)
    client.logout()


async def test_start_then_report_in_junit_even_when_checks_fail(
    mock_op: MockOperator, tmp_path: Path
) -> None:
    code, out, _ = await cli(
        "conformance", "start", "--software", "Mon LPS", "--version", "2.1",
        "--persona", "dr-martin", "--url", mock_op.http_url,
    )  # fmt: skip
    assert code == 0
    campaign = out.strip().splitlines()[-1]
    assert ID.fullmatch(campaign), out
    assert f"/conformance/{campaign}" in out

    await asyncio.to_thread(plaintext_login, mock_op, await persona_token(mock_op))

    junit = tmp_path / "conformance.xml"
    code, out, err = await cli(
        "conformance", "report", campaign, "--format", "junit", "--output", str(junit),
        "--url", mock_op.http_url,
    )  # fmt: skip
    assert code == 0, err
    assert out == ""
    assert mock_op.runner is not None
    assert mock_op.observatory is not None
    found = await mock_op.observatory.store.get(campaign)
    assert found is not None
    report = await mock_op.runner.report(found)
    statuses = {r.check.key: r.status.value for r in report.results}
    assert statuses["starttls-imap"] == "failed"
    assert statuses["sasl-token"] == "failed"  # LOGIN, not XOAUTH2

    root = SafeET.parse(junit).getroot()
    assert root is not None
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert len(cases) == len(CHECKS)
    for case, check in zip(cases, CHECKS, strict=True):
        assert f" {check.key}: " in case.get("name", "")
        status = statuses[check.key]
        assert (case.find("failure") is not None) is (status == "failed"), check.key
        assert (case.find("skipped") is not None) is (status == "not_observed"), check.key
    assert suite.get("failures") == str(list(statuses.values()).count("failed"))
    assert suite.get("tests") == str(len(CHECKS))


async def test_an_unknown_campaign_exits_1_saying_so(mock_op: MockOperator) -> None:
    code, out, err = await cli(
        "conformance", "report", "c20990101-abcdef", "--url", mock_op.http_url
    )
    assert code == 1
    assert out == ""
    assert "no campaign 'c20990101-abcdef'" in err
