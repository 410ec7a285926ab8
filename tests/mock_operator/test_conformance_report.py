"""The report model and its three renderings: what a vendor's CI and a person read."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from defusedxml import ElementTree as SafeET

from mock_operator.conformance.render import render
from mock_operator.conformance.results import Check, Report, Result, Status, scrub

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
SASL = base64.b64encode(f"user=a@b\x01auth=Bearer {TOKEN}\x01\x01".encode()).decode()

STARTTLS = Check("starttls", "ECO.1.0.2", "STARTTLS avant toute authentification", "transport")
NIL = Check("x-mss-nil", "ECO.2.4.3", "X-MSS-NIL sur chaque message", "envoi")
MDN = Check("mdn", "ECO.3.1.6", "Accusé de lecture renvoyé", "réception")


def _report() -> Report:
    started = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)
    return Report(
        kind="campaign",
        title="Campagne de conformité — Mon LPS 2.1",
        subject={"logiciel": "Mon LPS <b>", "version": "2.1"},
        started=started,
        finished=started + dt.timedelta(minutes=5),
        results=(
            Result.of(
                STARTTLS,
                Status.PASSED,
                evidence=["C: a1 STARTTLS", f"C: a2 AUTHENTICATE XOAUTH2 {SASL}"],
            ),
            Result.of(
                NIL, Status.FAILED, "Message sans X-MSS-NIL", [f"Authorization: Bearer {TOKEN}"]
            ),
            Result.of(MDN, Status.NOT_OBSERVED, "Aucun message lu"),
        ),
    )


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (f"C: a2 AUTHENTICATE XOAUTH2 {SASL}", "C: a2 AUTHENTICATE XOAUTH2 <masqué>"),
        (f"AUTH OAUTHBEARER {SASL}", "AUTH OAUTHBEARER <masqué>"),
        (SASL, "<masqué>"),
        (f"Authorization: Bearer {TOKEN}", "Authorization: Bearer <jeton>"),
        (f"token={TOKEN}&x=1", "token=<jeton>&x=1"),
        ('a1 LOGIN "jean" s3cret', 'a1 LOGIN "jean" <masqué>'),
        ("C: a3 UID FETCH 1:* (BODY.PEEK[])", "C: a3 UID FETCH 1:* (BODY.PEEK[])"),
        ("bell\x07\x00", "bell\\x07\\x00"),
    ],
)
def test_scrub_masks_what_would_let_a_reader_log_in(line: str, kept: str) -> None:
    assert scrub(line) == kept


def test_evidence_is_bounded() -> None:
    result = Result.of(NIL, Status.FAILED, evidence=["x" * 10_000] * 100)
    assert len(result.evidence) == 21
    assert result.evidence[-1] == "… (80 lignes de plus)"
    assert all(len(line) <= 401 for line in result.evidence)


def test_json_carries_every_result() -> None:
    data = json.loads(render(_report(), "json"))
    assert data["summary"] == {"passed": 1, "failed": 1, "not_observed": 1}
    assert [r["id"] for r in data["results"]] == ["starttls", "x-mss-nil", "mdn"]
    assert data["results"][1]["requirement"] == "ECO.2.4.3"
    assert TOKEN not in json.dumps(data)


def test_junit_is_one_testcase_per_check() -> None:
    text = render(_report(), "junit")
    root = SafeET.fromstring(text.encode())
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    cases = suite.findall("testcase")
    assert [c.find("failure") is not None for c in cases] == [False, True, False]
    assert [c.find("skipped") is not None for c in cases] == [False, False, True]
    assert cases[1].find("failure").get("message") == "Message sans X-MSS-NIL"  # type: ignore[union-attr]
    assert "ECO.2.4.3" in (cases[1].get("name") or "")
    assert TOKEN not in text
    assert SASL not in text


def test_html_is_french_and_escaped() -> None:
    page = render(_report(), "html")
    assert '<html lang="fr">' in page
    assert "Mon LPS &lt;b&gt;" in page
    assert 'data-status="failed"' in page
    assert "échoué" in page
    assert "non observé" in page
    assert TOKEN not in page
    assert SASL not in page


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        render(_report(), "pdf")
