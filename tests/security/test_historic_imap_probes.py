"""Hostile clients on the mock operator's historic IMAP (master login, CPS cards):
malformed SASL EXTERNAL, an authzid naming no BAL, certificates the card CA did not
issue or that expired, and literals too big to be held, before and after login."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
from pathlib import Path

import pytest

from mock_operator.historic.auth import CpsAuthority
from mock_operator.server import MockOperator
from tests.imap_raw import Raw
from tests.mock_operator.test_historic_imap import (
    DUPONT,
    HOST,
    b64,
    master_plain,
    raw_with_card,
)
from tests.support.cards import Card, authority_of, issue_card, tls_with_card


async def test_malformed_external_responses_are_bad_and_the_session_goes_on(
    mock_op: MockOperator, tmp_path: Path
):
    client = await raw_with_card(
        mock_op, issue_card(authority_of(mock_op), mock_op, "dr-dupont", tmp_path)
    )
    try:
        for payload in (
            b"%%%not-base64",
            b"amVhbg",  # unpadded
            base64.b64encode(b"\xff\xfejean"),  # not UTF-8
            base64.b64encode(b"jean\x00dupont"),  # a NUL in the authzid
            base64.b64encode(b"jean\r\ndupont"),
            base64.b64encode(b"a" * 5_000),  # longer than any authzid
        ):
            reply = await client.command(b"AUTHENTICATE EXTERNAL " + payload)
            assert reply.status == "BAD", (payload, reply)
        await client.send(b"C1 AUTHENTICATE EXTERNAL\r\n")
        assert (await client.line()).startswith(b"+")
        await client.send(b"*\r\n")  # the client cancels
        assert (await client.collect("C1")).status == "BAD"
        # none of that counted as a failed login: the card still opens the BAL
        reply = await client.ok("AUTHENTICATE EXTERNAL =")
        assert b"logged in" in reply.tagged
        assert (await client.ok("SELECT INBOX")).status == "OK"
    finally:
        await client.close()


async def test_an_authzid_naming_no_bal_fails_authorisation_until_bye(
    mock_op: MockOperator, tmp_path: Path
):
    card = issue_card(authority_of(mock_op), mock_op, "dr-dupont", tmp_path)
    client = await raw_with_card(mock_op, card)
    try:
        for authzid in ("nobody@medecin.mssante.fr", "' OR 1=1 --", "x" * 1_000):
            reply = await client.command(f"AUTHENTICATE EXTERNAL {b64(authzid)}")
            assert b"NO [AUTHORIZATIONFAILED]" in reply.tagged, reply
        assert b"* BYE" in await client.until_closed(), "three failures end the connection"
    finally:
        await client.close()
    # the master login is no way around it either
    client = await Raw.open(mock_op.historic_imap_port)
    try:
        blob = base64.b64encode(master_plain(mock_op, "jean.dupont@medecin.mssante.fr.evil"))
        reply = await client.command(b"AUTHENTICATE PLAIN " + blob)
        assert b"NO [AUTHORIZATIONFAILED]" in reply.tagged
    finally:
        await client.close()


async def test_certificates_the_card_ca_did_not_issue_or_that_expired_end_at_tls(
    mock_op: MockOperator, tmp_path: Path
):
    assert mock_op.historic_auth is not None
    assert mock_op.historic_auth.authority is not None
    stranger = CpsAuthority.load_or_create(tmp_path / "another-ca")  # same subject, other key
    forged = issue_card(stranger, mock_op, "dr-dupont", tmp_path / "forged")
    expired = issue_card(
        mock_op.historic_auth.authority,
        mock_op,
        "dr-dupont",
        tmp_path / "expired",
        lifetime=-dt.timedelta(minutes=1),
    )
    for card in (forged, expired):
        client = await Raw.open(mock_op.historic_imap_port)
        try:
            await client.ok("STARTTLS")
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                await tls_then_login(mock_op, client, card)
        finally:
            await client.close()


async def tls_then_login(mock: MockOperator, client: Raw, card: Card) -> None:
    """The handshake; with TLS 1.3 the client hears of a refused certificate only when it
    next reads, so a login attempt follows."""
    await client.writer.start_tls(tls_with_card(mock.tls_cert, card), server_hostname=HOST)
    await client.command("AUTHENTICATE EXTERNAL =")


async def test_a_card_without_an_idnat_proves_nobody(mock_op: MockOperator, tmp_path: Path):
    assert mock_op.historic_auth is not None
    assert mock_op.historic_auth.authority is not None
    card = issue_card(
        mock_op.historic_auth.authority,
        mock_op,
        "dr-dupont",
        tmp_path / "no-idnat",
        idnat="not-an-idnat",
    )
    client = await raw_with_card(mock_op, card)
    try:
        reply = await client.command(f"AUTHENTICATE EXTERNAL {b64(DUPONT)}")
        assert b"NO [AUTHENTICATIONFAILED]" in reply.tagged, reply
    finally:
        await client.close()


async def test_literals_too_big_are_refused_before_and_after_login(mock_op: MockOperator):
    client = await Raw.open(mock_op.historic_imap_port)
    try:
        await client.send(b"L1 LOGIN {999999999}\r\n")
        assert (await client.collect("L1")).status in ("NO", "BAD")
        await client.ok("NOOP")  # nothing was waited for: the session goes on
        await client.ok(
            f"AUTHENTICATE PLAIN {base64.b64encode(master_plain(mock_op, DUPONT)).decode()}"
        )
        await client.send(b"A1 APPEND INBOX {999999999}\r\n")
        assert (await client.collect("A1")).status in ("NO", "BAD")
        await client.ok("NOOP")
        # a non-synchronising literal cannot be refused without reading it: the end
        await client.send(b"A2 APPEND INBOX {999999999+}\r\n")
        assert (await client.until_closed()).startswith(b"* BYE")
    finally:
        await client.close()
