"""`mock-operator probe` against real servers: the mock's own platform and the gateway in
front of it pass, a plain Dovecot shows what it lacks, and the reports read as a vendor's
CI and a person read them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from defusedxml import ElementTree as SafeET

from gateway.runtime.tls import dev_certificate
from gateway.settings import MockSettings
from mock_operator.conformance import probe_checks as checks
from mock_operator.conformance.probe import ProbeTarget, default_mailboxes, run_probe
from mock_operator.conformance.probe_sasl import LoginPlan
from mock_operator.conformance.probe_wire import Endpoint, TlsPolicy
from mock_operator.conformance.render import render
from mock_operator.conformance.results import Report, Status
from mock_operator.server import MockOperator
from tests.conftest import persona_token, quick_mock_settings, require_peer
from tests.dovecot import dovecot_available, start_dovecot
from tests.support.stacks import Stack, gateway_settings, running_stack

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

ALL_KEYS = [check.key for check in (*checks.IMAP_CHECKS, *checks.SMTP_CHECKS)]
ON_LOOPBACK = {"imap-no-auth-before-tls", "smtp-no-auth-before-tls"}  # plaintext allowed there
DSN = "smtp-dsn"
MARTIN = "claire.martin@medecin.mssante.fr"
JWT = re.compile(r"eyJ[\w-]{4,}\.[\w-]+\.")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """The demo's wiring: the gateway in front of the mock. The probe runs several times
    from 127.0.0.1 with bad tokens on purpose: loopback is exempt from the login throttle."""
    base = tmp_path_factory.mktemp("probe")
    settings = gateway_settings(base / "gateway", limits={"exempt_networks": ["127.0.0.0/8"]})
    async with running_stack(settings, quick_mock_settings(), base / "mock") as running:
        yield running


async def probe_cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    """`mock-operator probe ARGS` as a user runs it."""
    path = shutil.which("mock-operator", path=str(Path(sys.executable).parent))
    assert path is not None
    process = await asyncio.create_subprocess_exec(
        path,
        "probe",
        *args,
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(180):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def mock_ports(mock: MockOperator) -> list[str]:
    assert mock.tls_cert is not None
    return [
        f"--imap=127.0.0.1:{mock.imap_port}",
        f"--smtp=127.0.0.1:{mock.smtp_port}",
        f"--url={mock.http_url}",
        f"--ca={mock.tls_cert}",
    ]


def gateway_ports(stack: Stack) -> list[str]:
    return [
        f"--imap=localhost:{stack.imap_port}",  # the development certificate's name
        f"--smtp=localhost:{stack.smtp_port}",
        f"--url={stack.mock.http_url}",
        f"--ca={dev_certificate(stack.gateway.settings.data_dir)[0]}",
    ]


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {result["id"]: result["status"] for result in report["results"]}


def assert_conformant(report: dict[str, Any], rc: int) -> None:
    """Every check passed (DSN included) but the two a loopback address cannot show; the
    exit code says nothing failed."""
    found = statuses(report)
    assert list(found) == ALL_KEYS
    expected = {key: "not_observed" if key in ON_LOOPBACK else "passed" for key in found}
    details = {r["id"]: r["detail"] for r in report["results"] if r["status"] != "passed"}
    assert found == expected, details
    assert rc == 0


async def test_the_mock_platform_passes(stack: Stack, tmp_path: Path) -> None:
    rc, out, err = await probe_cli(
        *mock_ports(stack.mock), "--persona=dr-martin", "--format=json", cwd=tmp_path
    )
    report = json.loads(out)
    assert_conformant(report, rc)
    assert report["kind"] == "probe"
    assert report["subject"]["BAL ouverte"] == MARTIN
    results = {r["id"]: r for r in report["results"]}
    assert "boucle locale" in results["imap-no-auth-before-tls"]["detail"]
    assert results["imap-starttls"]["detail"].startswith("TLSv1.")
    assert "certificat vérifié pour 127.0.0.1" in results["imap-starttls"]["detail"]
    assert "5.7.1" in results["smtp-sender-not-allowed"]["detail"]
    evidence = "\n".join(results["imap-bad-token-challenge"]["evidence"])
    assert '"status":"invalid_token"' in evidence
    assert "C: P0002 AUTHENTICATE XOAUTH2 <masqué>" in evidence
    assert not JWT.search(out + err)


@pytest.mark.parametrize("persona", ["dr-martin", "sec-bernard"])
async def test_the_gateway_passes(stack: Stack, tmp_path: Path, persona: str) -> None:
    """The secretary opens the BAL delegated to her, and is refused one that is not."""
    rc, out, err = await probe_cli(
        *gateway_ports(stack), f"--persona={persona}", "--format=json", cwd=tmp_path
    )
    report = json.loads(out)
    assert_conformant(report, rc)
    results = {r["id"]: r for r in report["results"]}
    assert "certificat vérifié pour localhost" in results["smtp-starttls"]["detail"]
    other = default_mailboxes(persona)[1]
    assert f"may not open {other}" in "\n".join(results["imap-other-bal"]["evidence"])
    assert not JWT.search(out + err)


async def test_dsn_is_advertised_and_the_probe_exits_0(stack: Stack, tmp_path: Path) -> None:
    for ports in (mock_ports(stack.mock), gateway_ports(stack)):
        rc, out, _ = await probe_cli(*ports, "--persona=dr-martin", "--format=json", cwd=tmp_path)
        assert statuses(json.loads(out))[DSN] == "passed"
        assert rc == 0


async def test_a_plain_dovecot_lacks_the_api_lps(stack: Stack, tmp_path: Path) -> None:
    """Dovecot as Debian ships it (here: no TLS, PLAIN and LOGIN only): no STARTTLS, no
    token mechanism, bad tokens refused for the wrong reason."""
    require_peer(dovecot_available(), "Dovecot (dovecot-imapd) not installed")
    dovecot = await asyncio.to_thread(start_dovecot)
    try:
        rc, out, _ = await probe_cli(
            f"--imap=127.0.0.1:{dovecot.port}",
            f"--url={stack.mock.http_url}",
            "--persona=dr-martin",
            "--format=json",
            cwd=tmp_path,
        )
    finally:
        await asyncio.to_thread(dovecot.stop)
    assert rc == 1
    report = json.loads(out)
    found = statuses(report)
    failed = {key for key, status in found.items() if status == "failed"}
    assert failed == {
        "imap-starttls",
        "imap-capabilities",
        "imap-xoauth2",
        "imap-oauthbearer",
        "imap-bad-token",
        "imap-bad-token-challenge",
    }
    assert {key for key in found if key.startswith("smtp-")} <= {
        key for key, status in found.items() if status == "not_observed"
    }
    results = {r["id"]: r for r in report["results"]}
    assert results["imap-capabilities"]["detail"] == "absentes : AUTH=XOAUTH2, AUTH=OAUTHBEARER"
    assert "aucun jeton envoyé" in results["imap-xoauth2"]["detail"]
    assert results["imap-session-capabilities"]["status"] == "not_observed"
    assert results["imap-other-bal"]["status"] == "not_observed"
    assert "au lieu de NO [AUTHENTICATIONFAILED]" in results["imap-bad-token"]["detail"]


def tokens_of(mock: MockOperator, persona: str) -> Callable[[], Awaitable[str]]:
    async def fresh() -> str:
        return await persona_token(mock, persona)

    return fresh


async def probe_in_process(
    mock: MockOperator, target: ProbeTarget, persona: str = "dr-martin"
) -> tuple[Report, list[str]]:
    """The probe's report, and every token it was given (to look for in the output)."""
    given: list[str] = []
    source = tokens_of(mock, persona)

    async def recorded() -> str:
        token = await source()
        given.append(token)
        return token

    bal, other = default_mailboxes(persona)
    assert bal is not None
    assert other is not None
    plan = await LoginPlan.prepare(persona, bal, other, recorded)
    return await run_probe(target, plan), [*given, *plan.bad]


async def test_reports_have_one_testcase_per_check(stack: Stack, tmp_path: Path) -> None:
    mock = stack.mock
    assert mock.tls_cert is not None
    target = ProbeTarget(
        Endpoint("127.0.0.1", mock.imap_port),
        Endpoint("127.0.0.1", mock.smtp_port),
        TlsPolicy((mock.tls_cert,)),
    )
    report, tokens = await probe_in_process(mock, target)
    assert len(tokens) >= 6  # four logins and the sample, and two bad tokens
    junit = render(report, "junit")
    suite = SafeET.fromstring(junit.encode()).find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert len(cases) == len(ALL_KEYS)
    for case, check in zip(cases, (*checks.IMAP_CHECKS, *checks.SMTP_CHECKS), strict=True):
        assert case.get("name") == f"{check.requirement} {check.key}: {check.title}"
    assert suite.get("tests") == str(len(ALL_KEYS))
    assert suite.get("failures") == str(report.count(Status.FAILED))
    assert suite.get("skipped") == str(report.count(Status.NOT_OBSERVED)) == "2"
    names = {case.get("name", "") for case in cases}
    assert "ECO.1.2.1 imap-xoauth2: IMAP : XOAUTH2 accepté avec un jeton PSC valide" in names
    html = render(report, "html")
    assert '<html lang="fr">' in html
    assert all(f'id="{key}"' in html for key in ALL_KEYS)
    rendered = junit + html + render(report, "json")
    leaked = [token for token in tokens if token in rendered or token[-40:] in rendered]
    assert not leaked


async def test_the_command_writes_the_report_and_prints_a_table(
    stack: Stack, tmp_path: Path
) -> None:
    rc, out, err = await probe_cli(
        *mock_ports(stack.mock),
        "--persona=dr-martin",
        "--output=probe.xml",
        "--timeout=20",
        cwd=tmp_path,
    )
    suite = SafeET.fromstring((tmp_path / "probe.xml").read_bytes()).find("testsuite")
    assert suite is not None
    assert len(suite.findall("testcase")) == len(ALL_KEYS)
    assert rc == (1 if suite.get("failures") != "0" else 0), err
    assert "contrôle" in out
    assert "imap-xoauth2" in out
    assert re.search(r"\d+ réussi\(s\), \d+ échoué\(s\), 2 non observé\(s\)", out)
    assert "rapport : probe.xml" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--persona=dr-martin"], "--imap HOST:PORT"),
        (["--persona=dr-martin", "--imap=localhost"], "expected HOST:PORT"),
        (["--persona=dr-martin", "--imap=localhost:1", "--format=pdf"], "html, junit, json"),
        (["--persona=nobody", "--imap=localhost:1"], "--bal"),
    ],
)
async def test_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    rc, _, err = await probe_cli(*args, cwd=tmp_path)
    assert rc == 2
    assert message in " ".join(err.split())


def outside_address() -> str | None:
    """An address of this machine that is not loopback (where routing would send a
    packet to a documentation address from), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet leaves: UDP only picks a route
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address  # noqa: S104


async def test_off_loopback_login_is_refused_before_starttls(tmp_path: Path) -> None:
    """From an address that is not loopback, the mock offers no login in the clear: the
    probe sees AUTHENTICATE and LOGIN refused (PRIVACYREQUIRED) and AUTH refused (5.7.11)."""
    address = outside_address()
    if address is None:
        pytest.skip("no address but loopback on this machine")
    settings: MockSettings = quick_mock_settings()
    settings.host = address
    mock = MockOperator(settings, tmp_path / "mock")
    await mock.start()
    try:
        assert mock.tls_cert is not None
        assert mock.psc is not None
        psc = mock.psc
        persona = psc.personas.get("dr-martin")
        assert persona is not None

        async def minted() -> str:  # the test endpoint answers loopback callers only
            session = await psc.sessions.open(persona.key, "card", "lps-demo")
            return psc.tokens.access_token(persona, session)[0]

        plan = await LoginPlan.prepare(
            "dr-martin", MARTIN, "luc.durand@infirmier.mssante.fr", minted
        )
        target = ProbeTarget(
            Endpoint(address, mock.imap_port),
            Endpoint(address, mock.smtp_port),
            TlsPolicy((mock.tls_cert,), server_name="localhost"),
        )
        report = await run_probe(target, plan)
    finally:
        await mock.stop()
    results = {result.check.key: result for result in report.results}
    for key in ON_LOOPBACK:
        assert results[key].status is Status.PASSED, results[key]
    imap = "\n".join(results["imap-no-auth-before-tls"].evidence)
    assert "NO [PRIVACYREQUIRED]" in imap
    assert 'C: P0003 LOGIN "mock-operator-probe" <masqué>' in imap
    assert "538 5.7.11" in "\n".join(results["smtp-no-auth-before-tls"].evidence)
    assert results["imap-xoauth2"].status is Status.PASSED  # after STARTTLS
    assert "certificat vérifié pour localhost" in results["imap-starttls"].detail


async def test_the_certificate_is_checked_unless_insecure(stack: Stack) -> None:
    """Without the mock's CA the handshake fails and no token is sent; with --insecure it
    goes on, and the STARTTLS check says the certificate was not checked."""
    imap = Endpoint("127.0.0.1", stack.mock.imap_port)
    untrusted, tokens = await probe_in_process(stack.mock, ProbeTarget(imap, None, TlsPolicy()))
    results = {result.check.key: result for result in untrusted.results}
    assert results["imap-starttls"].status is Status.FAILED
    assert "certificat refusé pour 127.0.0.1" in results["imap-starttls"].detail
    assert "--ca" in results["imap-starttls"].detail
    assert results["imap-xoauth2"].status is Status.NOT_OBSERVED
    assert "aucun jeton envoyé" in results["imap-xoauth2"].detail
    assert len(tokens) == 3  # the sample the bad tokens imitate, and those two

    insecure = TlsPolicy(insecure=True)
    trusting, _ = await probe_in_process(stack.mock, ProbeTarget(imap, None, insecure))
    results = {result.check.key: result for result in trusting.results}
    assert results["imap-starttls"].status is Status.PASSED
    assert "NON vérifié (--insecure)" in results["imap-starttls"].detail
    assert results["imap-xoauth2"].status is Status.PASSED
    assert trusting.subject["TLS"] == "certificat non vérifié (--insecure)"
