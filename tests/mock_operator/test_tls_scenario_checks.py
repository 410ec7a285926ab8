"""The cert-* checks on hand-written event lists, and how a failed handshake is read."""

from __future__ import annotations

import ssl
import stat
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from gateway.runtime.tls import ensure_dev_certificate, server_context
from gateway.settings import MockSettings
from mock_operator.conformance.cert_checks import scenario_verdict
from mock_operator.conformance.checks import BY_KEY, evaluate
from mock_operator.conformance.events import Event
from mock_operator.conformance.results import Status
from mock_operator.conformance.scenario_certs import ensure_scenario_certificates
from mock_operator.conformance.tls_scenarios import handshake_failure

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def connection(
    name: str, interface: str, scenario: str, *rest: tuple[str, dict[str, Any]]
) -> list[Event]:
    events = [Event(interface, "connect", name, {"scenario": scenario, "secure": False})]
    return events + [Event(interface, kind, name, data) for kind, data in rest]


def grouped(*connections: Sequence[Event]) -> dict[str, list[Event]]:
    found: dict[str, list[Event]] = defaultdict(list)
    for events in connections:
        for event in events:
            found[event.connection].append(event)
    return found


def refused(alert: str = "", hello: bool = True) -> tuple[str, dict[str, Any]]:
    return "tls_failed", {"hello": hello, "refused": hello, "alert": alert, "reason": "x"}


CLOSE = ("close", {})
TLS = ("tls", {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "sni": "localhost"})


def test_never_connected_is_not_observed() -> None:
    other = connection("c1", "imap", "wrong-name", refused("bad certificate"), CLOSE)
    status, detail, evidence = scenario_verdict("expired", grouped(other))
    assert status is Status.NOT_OBSERVED
    assert "expired" in detail
    assert evidence == []


@pytest.mark.parametrize(
    ("events", "how"),
    [
        ([refused("certificate expired"), CLOSE], "alerte TLS « certificate expired »"),
        ([refused(""), CLOSE], "sans alerte"),
        (
            [TLS, ("command", {"name": "LOGOUT", "line": "a2 LOGOUT"}), CLOSE],
            "sans authentification",
        ),
    ],
)
def test_a_refusal_passes(events: list[tuple[str, dict[str, Any]]], how: str) -> None:
    status, _, evidence = scenario_verdict(
        "expired", grouped(connection("c1", "imap", "expired", *events))
    )
    assert status is Status.PASSED
    assert how in evidence[0]
    assert evidence[0].startswith("imap : ")


def test_credentials_after_the_handshake_fail_with_the_line_as_evidence() -> None:
    imap = connection(
        "c1",
        "imap",
        "wrong-name",
        TLS,
        ("command", {"name": "AUTHENTICATE", "line": f"a1 AUTHENTICATE XOAUTH2 {JWT}"}),
        ("login", {"ok": True, "mechanism": "XOAUTH2", "user": "a@b.fr", "secure": True}),
        CLOSE,
    )
    smtp = connection(
        "s1",
        "smtp",
        "wrong-name",
        TLS,
        ("login", {"ok": False, "mechanism": "XOAUTH2", "user": "a@b.fr", "secure": True}),
    )
    also_refused = connection("c2", "imap", "wrong-name", refused("bad certificate"), CLOSE)
    results = {
        r.check.key: r
        for r in evaluate([*imap, *smtp, *also_refused], {})
        if r.check.key.startswith("cert-")
    }
    result = results["cert-name"]
    assert result.status is Status.FAILED
    assert result.evidence[0].startswith("imap : a1 AUTHENTICATE XOAUTH2")
    assert JWT not in " ".join(result.evidence)
    assert "refusée" in result.evidence[1]
    assert results["cert-expired"].status is Status.NOT_OBSERVED


def test_plaintext_garbage_and_silence_decide_nothing() -> None:
    plaintext = connection(
        "c1",
        "smtp",
        "untrusted-ca",
        ("command", {"name": "AUTH", "line": "AUTH XOAUTH2 <masqué>"}),
        ("login", {"ok": True, "mechanism": "XOAUTH2", "user": "a@b.fr", "secure": False}),
        CLOSE,
    )
    garbage = connection("c2", "imap", "untrusted-ca", refused("", hello=False), CLOSE)
    silent = connection("c3", "imap", "untrusted-ca", CLOSE)
    still_open = connection("c4", "imap", "untrusted-ca", TLS)
    status, detail, _ = scenario_verdict(
        "untrusted-ca", grouped(plaintext, garbage, silent, still_open)
    )
    assert status is Status.NOT_OBSERVED
    assert "jusqu'au certificat" in detail


def test_unknown_ca_on_the_trusted_ca_scenarios_is_inconclusive() -> None:
    for scenario in ("expired", "wrong-name"):
        events = connection("c1", "imap", scenario, refused("unknown ca"), CLOSE)
        status, detail, evidence = scenario_verdict(scenario, grouped(events))
        assert status is Status.NOT_OBSERVED
        assert "trust.pem" in detail
        assert "unknown ca" in evidence[0]
    events = connection("c1", "imap", "untrusted-ca", refused("unknown ca"), CLOSE)
    assert scenario_verdict("untrusted-ca", grouped(events))[0] is Status.PASSED


def test_the_three_checks_are_transport_checks_named_by_requirement() -> None:
    assert BY_KEY["cert-expired"].requirement == "ECO.1.1.5"
    assert BY_KEY["cert-untrusted"].requirement == "ECO.1.1.10"
    assert "RFC 9525" in BY_KEY["cert-name"].requirement
    assert {BY_KEY[k].area for k in ("cert-expired", "cert-name", "cert-untrusted")} == {
        "transport"
    }


def _alert(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] alert")
    error.reason = reason  # type: ignore[misc]
    return error


@pytest.mark.parametrize(
    ("error", "hello", "refused", "alert"),
    [
        (_alert("SSLV3_ALERT_CERTIFICATE_EXPIRED"), True, True, "certificate expired"),
        (_alert("SSLV3_ALERT_BAD_CERTIFICATE"), True, True, "bad certificate"),
        (_alert("TLSV1_ALERT_UNKNOWN_CA"), True, True, "unknown ca"),
        (ConnectionResetError(), True, True, ""),
        (ConnectionResetError(), False, False, ""),
        (_alert("WRONG_VERSION_NUMBER"), False, False, ""),
        (_alert("HTTP_REQUEST"), False, False, ""),
        (TimeoutError(), True, False, ""),
    ],
)
def test_handshake_failures(error: BaseException, hello: bool, refused: bool, alert: str) -> None:
    facts = handshake_failure(error, hello)
    assert facts["refused"] is refused
    assert facts["alert"] == alert
    assert facts["hello"] is hello


def test_scenario_port_defaults() -> None:
    assert [MockSettings().scenario_port(i) for i in range(6)] == list(range(2150, 2156))
    assert MockSettings(imap_port=0).scenario_port(3) == 0
    assert MockSettings(imap_port=0, scenario_port_base=3000).scenario_port(1) == 3001
    assert MockSettings(scenario_port_base=0).scenario_port(5) == 0


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """A TLS handshake in memory: "" when the client accepts, else its verify message."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    ours = client.wrap_bio(to_client, to_server, server_hostname="localhost")
    theirs = server.wrap_bio(to_server, to_client, server_side=True)
    done = set()
    for _ in range(10):
        for name, side in (("client", ours), ("server", theirs)):
            if name in done:
                continue
            try:
                side.do_handshake()
                done.add(name)
            except ssl.SSLCertVerificationError as error:
                return str(error.verify_message)
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass
        if done == {"client", "server"}:
            return ""
    raise AssertionError("handshake neither done nor refused")


def test_the_certificates_fail_for_their_own_fault_only_even_strictly(tmp_path: Path) -> None:
    """A strict verifier (Python 3.13's default flags) refuses each scenario certificate for
    the scenario's reason, not for a malformed CA, and takes the normal ports' one."""
    cert, key = ensure_dev_certificate(tmp_path / "tls")
    files = ensure_scenario_certificates(tmp_path / "tls" / "scenarios", cert)
    client = ssl.create_default_context(cafile=str(files.trust))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    expected = {
        "expired": "certificate has expired",
        "wrong-name": "Hostname mismatch",
        "untrusted-ca": "unable to get local issuer certificate",
    }
    for scenario, message in expected.items():
        server = server_context(files.cert(scenario), files.key(scenario))
        assert message in handshake(server, client), scenario
    assert handshake(server_context(cert, key), client) == ""


def test_the_certificates_are_made_once_and_trust_follows_the_dev_certificate(
    tmp_path: Path,
) -> None:
    cert, _ = ensure_dev_certificate(tmp_path / "tls")
    directory = tmp_path / "tls" / "scenarios"
    files = ensure_scenario_certificates(directory, cert)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert {stat.S_IMODE(p.stat().st_mode) for p in directory.glob("*-key.pem")} == {0o600}
    assert len(list(directory.glob("*-key.pem"))) == 3  # the CAs' keys are kept nowhere
    assert ensure_scenario_certificates(directory, cert) == files
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    cert.unlink()
    cert, _ = ensure_dev_certificate(tmp_path / "tls")  # a new development certificate
    ensure_scenario_certificates(directory, cert)
    assert files.trust.read_bytes() == cert.read_bytes() + files.ca.read_bytes()
    assert files.cert("expired").read_bytes() == before["expired-cert.pem"]
    untrusted = x509.load_pem_x509_certificate(files.cert("untrusted-ca").read_bytes())
    trusted = x509.load_pem_x509_certificates(files.trust.read_bytes())
    assert len(trusted) == 2
    assert untrusted.issuer not in {c.subject for c in trusted}
    assert ensure_scenario_certificates(directory, None).trust.read_bytes() == files.ca.read_bytes()
