"""A flood of MSSanté non-conformities under `[mss] policy = "report"`: every message of a
logged-in LPS breaks as many header rules as it can, under a new hostile X-MSS-NIL each
time, with invented X-MSS-* headers. The usage figures stay bounded: rule ids only from
the gateway's closed list, at most `[usage] nonconformity_software` names a day (the rest
`other`), labels cleaned, metrics series bounded; and the messages are still relayed."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from gateway.mss.rules import RULES
from gateway.settings import Settings
from tests.support.sasl import xoauth2_b64
from tests.support.stacks import Stack, gateway_settings

CLAIRE = "claire.martin@medecin.mssante.fr"
EVE = "eve.moreau@medecin.mssante.fr"
NAMES = 3  # [usage] nonconformity_software
MESSAGES = 25


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return gateway_settings(
        tmp_path / "gateway",
        mss={"policy": "report"},
        usage={"nonconformity_software": NAMES, "top_software": NAMES},
    )


def hostile(n: int) -> bytes:
    """A message breaking a dozen header rules, with client-chosen text everywhere a rule
    id or a software name could be taken from."""
    nil = f"=cmd|' /C calc'!A{n}<script>" + "N" * 300
    head = [
        f"From: {CLAIRE}",
        f"To: {EVE}",
        f"Subject: flood {n}",
        f"X-MSS-NIL: {nil}",
        "X-MSS-NIL: second",
        "X-MSS-CODECDA: 11490-0",
        "X-MSS-CODECDA: X-MSS-EVIL-mismatch",
        "X-MSS-INS: From-mismatch",
        "X-MSS-INS: O",
        "X-MSS-MES: '; DROP TABLE gw_usage_daily; --",
        "X-MSS-MES: FIN",
        f"X-MSS-INVENTED-{n}: rule-{n}",
        f"X-MSS-INS-mismatch-{n}: yes",
    ]
    return ("\r\n".join(head) + "\r\n\r\nBonjour\r\n").encode()


def flood(stack: Stack, token: str) -> list[int]:
    codes: list[int] = []
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, local_hostname="flood", timeout=60) as smtp:
        smtp.ehlo()
        code, _ = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(CLAIRE, token).decode())
        assert code == 235
        for n in range(MESSAGES):
            smtp.sendmail(CLAIRE, [EVE], hostile(n))  # raises on anything but 250
            codes.append(250)
    return codes


async def test_a_flood_of_nonconformities_cannot_grow_the_usage_store(stack: Stack) -> None:
    token = await stack.token("dr-martin")
    assert await asyncio.to_thread(flood, stack, token) == [250] * MESSAGES
    report = await stack.gateway.usage_report()
    rows = report.nonconformities
    rules = {row.rule for row in rows}
    assert rules <= RULES.keys()  # nothing named after the message's headers or values
    assert "X-MSS-INS-duplicate" in rules
    assert "X-MSS-MES-unexpected" in rules
    names = {row.software for row in rows}
    assert len(names) == NAMES + 1
    assert "other" in names
    assert len(rows) <= (NAMES + 1) * len(rules)  # whatever the number of messages
    for name in names:
        assert len(name) <= 64
        assert not name.startswith(("=", "+", "-", "@"))
        for bad in ("<", ">", "'", "|", "!", "\r", "\n"):
            assert bad not in name
    per_rule = {row.rule: 0 for row in rows}
    for row in rows:
        per_rule[row.rule] += row.reported
        assert row.refused == 0
    assert set(per_rule.values()) == {MESSAGES}  # each broken rule counted once a message

    registry = stack.gateway.metrics.registry
    labels = {
        (sample.labels["rule"], sample.labels["software"])
        for metric in registry.collect()
        if metric.name == "lpsgw_mss_nonconformities"
        for sample in metric.samples
        if sample.name == "lpsgw_mss_nonconformities_total"
    }
    assert {rule for rule, _ in labels} == rules
    assert len({software for _, software in labels}) <= NAMES + 1
