"""`[mss] policy` on its own: which violations refuse a message under each policy, and what
is counted and logged of each (the rule id and the header name, nothing of the message)."""

from __future__ import annotations

import logging

import pytest

from gateway.mss.policy import MessagePolicy, Outcome, Policy, outcome
from gateway.mss.rules import RULES, check_message
from tests.mss.builders import HOSPITAL, seeded_letter, variant

# a letter breaking a sender rule (From), a header rule (X-MSS-INS) and one the gateway
# adds nothing for (no X-MSS-NIL, no default)
BROKEN = variant(
    seeded_letter(),
    headers={"From": "intrus@evil.example", "X-MSS-INS": "N", "X-MSS-NIL": None},
)


class Counted:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str | None, str, Outcome]] = []

    def nonconformity(
        self, interface: str, software: str | None, version: str | None, rule: str, outcome: Outcome
    ) -> None:
        self.calls.append((interface, software, version, rule, outcome))


@pytest.mark.parametrize("policy", ["enforce", "report"])
def test_sender_and_safety_rules_refuse_under_any_policy(policy: Policy) -> None:
    checked = check_message(BROKEN, sender=HOSPITAL)
    for violation in checked.violations:
        expected = "reported" if policy == "report" and violation.scope == "mss" else "refused"
        assert outcome(violation, policy) == expected
    assert [r for r, about in RULES.items() if about.scope != "mss"] == [
        "message-too-big",
        "header-unreadable",
        "message-unparsable",
        "MIME-too-complex",
        "IHE_XDM-unreadable",
        "From-mismatch",
        "From-display-address",
        "Resent-From-mismatch",
        "Resent-Sender-mismatch",
    ]


@pytest.mark.parametrize(
    ("policy", "refusing", "outcomes"),
    [
        (
            "enforce",
            ["From-mismatch", "X-MSS-NIL-missing", "X-MSS-INS-mismatch"],
            ["refused", "refused", "refused"],
        ),
        ("report", ["From-mismatch"], ["refused", "reported", "reported"]),
    ],
)
def test_judge_counts_and_logs_every_violation(
    policy: Policy,
    refusing: list[str],
    outcomes: list[Outcome],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.mss.policy")
    counter = Counted()
    checked = check_message(BROKEN, sender=HOSPITAL)
    refused = MessagePolicy(policy, counter).judge(
        checked, interface="api-lps-smtp", software="cabinet.local", bal=HOSPITAL, actor="8"
    )
    assert [v.rule for v in refused] == refusing
    rules = ["From-mismatch", "X-MSS-NIL-missing", "X-MSS-INS-mismatch"]
    assert counter.calls == [
        ("api-lps-smtp", "cabinet.local", "", rule, verdict)
        for rule, verdict in zip(rules, outcomes, strict=True)
    ]
    logged = [r for r in caplog.records if r.getMessage() == "mss.nonconformity"]
    assert [(r.rule, r.header, r.outcome) for r in logged] == [  # type: ignore[attr-defined]
        (rule, RULES[rule].header, verdict) for rule, verdict in zip(rules, outcomes, strict=True)
    ]
    for record in logged:
        assert "intrus" not in str(vars(record))  # the message's content stays out


def test_no_violation_nothing_counted() -> None:
    counter = Counted()
    checked = check_message(seeded_letter(), sender=HOSPITAL)
    assert MessagePolicy("report", counter).judge(checked, interface="x", software=None) == []
    assert counter.calls == []
