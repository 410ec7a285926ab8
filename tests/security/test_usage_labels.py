"""Hostile software names: what an LPS says it is (IMAP ID, EHLO) comes from the client
and reaches tables, CSV, HTML and Prometheus labels. Each is cleaned and bounded, and a
client inventing names cannot grow the metrics' series."""

from __future__ import annotations

import asyncio
import smtplib

from tests.imap_raw import Lit, Raw
from tests.support.imap import login
from tests.support.sasl import xoauth2, xoauth2_b64
from tests.support.stacks import Stack

MARTIN = "claire.martin@medecin.mssante.fr"
HOSTILE = b"=cmd|' /C calc'!A0\r\n<script>alert(1)</script>\x1b[2J\x7f" + b"A" * 900


async def test_hostile_id_values_are_cleaned_and_bounded(stack: Stack) -> None:
    raw = await Raw.open(stack.imap_port)
    try:
        huge = await raw.command('ID ("name" ', Lit(b"A" * 5000), ")")
        assert huge.status == "BAD", huge  # RFC 2971: a value is at most 1024 octets
        reply = await raw.command('ID ("name" ', Lit(HOSTILE), ' "version" ', Lit(b"9" * 500), ")")
        assert reply.status == "OK", reply
        token = await stack.token("dr-martin")
        await raw.ok("AUTHENTICATE XOAUTH2 ", xoauth2(MARTIN, token))
        await raw.ok("LOGOUT")
    finally:
        await raw.close()
    report = await stack.gateway.usage_report()
    (row,) = report.software
    assert len(row.software) <= 64
    assert len(row.version) <= 32
    for bad in ("\r", "\n", "\x00", "\x1b", "<", ">", "'", "|", "!", "="):
        assert bad not in row.software
    assert row.software.startswith("cmd")
    assert row.sessions == 1
    csv_text = report.as_csv()
    assert all(
        not line.split(",")[0].startswith(("=", "+", "-", "@")) for line in csv_text.splitlines()
    )


async def test_hostile_ehlo_is_cleaned(stack: Stack) -> None:
    token = await stack.token("dr-martin")

    def session() -> None:
        with smtplib.SMTP("127.0.0.1", stack.smtp_port, local_hostname="x", timeout=30) as smtp:
            code, _ = smtp.docmd("EHLO", "@SUM(1+1)<b>" + "z" * 300)
            assert code == 250
            code, _ = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(MARTIN, token).decode())
            assert code == 235

    await asyncio.to_thread(session)
    report = await stack.gateway.usage_report()
    (row,) = report.software
    assert row.interface == "api-lps-smtp"
    assert row.software == ("SUM(1+1)b" + "z" * 64)[:64]


async def test_invented_names_do_not_grow_the_metrics(stack: Stack) -> None:
    limit = stack.gateway.metrics.software.limit
    for n in range(limit + 5):
        client = await login(stack, "dr-martin", MARTIN, client_id=f"Invented-{n}")
        await client.ok("LOGOUT")
        await client.close()
    registry = stack.gateway.metrics.registry
    labels = {
        sample.labels["software"]
        for metric in registry.collect()
        if metric.name == "lpsgw_usage_logins"
        for sample in metric.samples
        if sample.name == "lpsgw_usage_logins_total"
    }
    assert len(labels) == limit + 1
    assert "other" in labels
    other = stack.gateway.metrics.sample(
        "lpsgw_usage_logins_total", interface="api-lps-imap", software="other"
    )
    assert other == 5
    report = await stack.gateway.usage_report()
    assert len(report.software) == limit + 5  # the tables keep every name, bounded in length
