"""Hostile clients with (or without) certificates on the gateway's IMAP and SMTP fronts:
cards of another CA or expired end at TLS, EXTERNAL without a card, malformed or
oversized authzids, a card naming nobody, an organisation certificate naming a
personal BAL (no way around the delegation registry), and a busy client whose card is
revoked (ended all the same)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import smtplib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from delegation.models import RIGHTS
from gateway.fronts.imap.login import ProxyAuthenticator
from gateway.imap.session import ExternalCredentials
from gateway.runtime.login import AuthFailed, ConnectionInfo
from gateway.settings import MockSettings
from mock_operator.historic.auth import CpsAuthority
from tests.imap_raw import Raw
from tests.support.cards import Card, authority_of, issue_card, tls_with_card, with_cards
from tests.support.stacks import Stack, configure_with, gateway_settings, running_stack

HOST = "127.0.0.1"
MARTIN = "claire.martin@medecin.mssante.fr"
APP = "labo@laboratoire-x.mssante.fr"


@pytest.fixture
async def stack(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Stack]:
    settings = gateway_settings(tmp_path / "gateway")
    async with running_stack(
        settings, mock_settings, tmp_path / "mock", with_cards(configure_with())
    ) as running:
        yield running


def context(stack: Stack, card: Card | None) -> ssl.SSLContext:
    return tls_with_card(stack.gateway.settings.data_dir / "dev-cert.pem", card)


async def raw_with(stack: Stack, card: Card | None) -> Raw:
    client = await Raw.open(stack.imap_port)
    await client.ok("STARTTLS")
    await client.writer.start_tls(context(stack, card), server_hostname=HOST)
    return client


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


async def test_cards_of_another_ca_or_expired_end_at_tls(stack: Stack, tmp_path: Path):
    stranger = CpsAuthority.load_or_create(tmp_path / "stranger")  # same subject, other key
    forged = issue_card(stranger, stack.mock, "dr-martin", tmp_path / "forged")
    expired = issue_card(
        authority_of(stack.mock),
        stack.mock,
        "dr-martin",
        tmp_path / "expired",
        lifetime=-dt.timedelta(minutes=1),
    )
    for card in (forged, expired):
        client = await Raw.open(stack.imap_port)
        try:
            await client.ok("STARTTLS")
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                await tls_then_login(stack, client, card)
        finally:
            await client.close()

        def smtp(card: Card = card) -> None:
            with smtplib.SMTP(HOST, stack.smtp_port, timeout=10) as client:
                client.starttls(context=context(stack, card))
                client.ehlo("probe")

        with pytest.raises((ssl.SSLError, smtplib.SMTPException, ConnectionError)):
            await asyncio.to_thread(smtp)


async def tls_then_login(stack: Stack, client: Raw, card: Card) -> None:
    """The handshake; with TLS 1.3 the client hears of a refused certificate only when it
    next reads, so a login attempt follows."""
    await client.writer.start_tls(context(stack, card), server_hostname=HOST)
    await client.command("AUTHENTICATE EXTERNAL =")


async def test_external_without_a_card_and_malformed_authzids(stack: Stack, tmp_path: Path):
    client = await raw_with(stack, None)
    try:
        reply = await client.command("AUTHENTICATE EXTERNAL =")
        assert b"NO [AUTHENTICATIONFAILED]" in reply.tagged, reply
    finally:
        await client.close()
    card = issue_card(authority_of(stack.mock), stack.mock, "dr-martin", tmp_path)
    client = await raw_with(stack, card)
    try:
        for payload in (
            b"%%%not-base64",
            b64(b"\xff\xfeclaire").encode(),  # not UTF-8
            b64(b"claire\x00martin").encode(),  # NUL
            b64(b"claire\r\nA1 LOGOUT").encode(),  # smuggled command
            b64("c" * 5_000).encode(),  # longer than any authzid
        ):
            reply = await client.command(b"AUTHENTICATE EXTERNAL " + payload)
            assert reply.status == "BAD", (payload, reply)
        reply = await client.command(f"AUTHENTICATE EXTERNAL {b64(MARTIN)}")
        assert reply.status == "OK", reply  # none of that counted as a failed login
    finally:
        await client.close()

    def smtp() -> list[tuple[int, bytes]]:
        with smtplib.SMTP(HOST, stack.smtp_port, timeout=10) as client:
            client.starttls(context=context(stack, card))
            client.ehlo("probe")
            answers = [
                client.docmd("AUTH", "EXTERNAL %%%"),
                client.docmd("AUTH", "EXTERNAL " + b64(b"a\x00b")),
                client.docmd("AUTH", "EXTERNAL " + b64("c" * 5_000)),
            ]
            answers.append(client.docmd("AUTH", "EXTERNAL " + b64(MARTIN)))
            return answers

    *bad, good = await asyncio.to_thread(smtp)
    assert all(code == 501 for code, _ in bad), bad
    assert good[0] == 235, good


async def test_a_card_naming_nobody_proves_nobody(stack: Stack, tmp_path: Path):
    card = issue_card(
        authority_of(stack.mock), stack.mock, "dr-martin", tmp_path, idnat="not-an-idnat"
    )
    client = await raw_with(stack, card)
    try:
        reply = await client.command(f"AUTHENTICATE EXTERNAL {b64(MARTIN)}")
        assert b"NO [AUTHENTICATIONFAILED]" in reply.tagged, reply
    finally:
        await client.close()


def front_of(stack: Stack) -> ProxyAuthenticator:
    assert stack.gateway.imap is not None
    authenticator = stack.gateway.imap.authenticator
    assert isinstance(authenticator, ProxyAuthenticator)
    return authenticator


async def test_an_organisation_certificate_opens_its_app_bal_only(stack: Stack, tmp_path: Path):
    registry = stack.gateway.delegations
    assert registry is not None
    await registry.upsert_mailbox(APP, type="APP", organisation="Laboratoire X", backend="modern")
    authority = authority_of(stack.mock)

    def organisation(*mailboxes: str) -> bytes:
        card = issue_card(
            authority,
            stack.mock,
            "dr-martin",
            tmp_path / mailboxes[0].split("@")[0],
            mailboxes=mailboxes,
            idnat="3750000001",
        )
        pem = x509.load_pem_x509_certificate(card.certificate.read_bytes())
        return pem.public_bytes(Encoding.DER)

    front = front_of(stack).front
    connection = ConnectionInfo(peer=HOST, secure=True, loopback=True, tls_available=False)
    grant = await front.authenticate_card(ExternalCredentials("", organisation(APP)), connection)
    assert (grant.mailbox, grant.via, grant.rights, grant.means) == (APP, "holder", RIGHTS, "card")
    assert grant.actor == "3750000001"
    assert grant.token is None
    assert grant.route.name == "modern"
    # naming a personal BAL in the certificate, or asking for one: refused
    for authzid, certificate in (("", organisation(MARTIN)), (MARTIN, organisation(APP))):
        with pytest.raises(AuthFailed) as refused:
            await front.authenticate_card(ExternalCredentials(authzid, certificate), connection)
        assert refused.value.kind == "authorization"
    assert stack.gateway.audit is not None
    await stack.gateway.audit.flush()
    events = await registry.audit_for(MARTIN)
    assert any(e.result == "refused:not-an-app-bal" for e in events), events


async def test_a_busy_client_with_a_revoked_card_is_still_ended(stack: Stack, tmp_path: Path):
    """A client that never stops sending commands cannot hold its session past the
    revocation of its card: it gets `* BYE card revoked`, the connection closes, and the
    card opens nothing more."""
    authority = authority_of(stack.mock)
    card = issue_card(authority, stack.mock, "dr-martin", tmp_path)
    client = await raw_with(stack, card)
    watch = stack.gateway.card_sessions
    assert watch is not None
    stop = asyncio.Event()

    async def busy() -> int:
        sent = 0
        with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
            while not stop.is_set():
                await client.send(f"B{sent} NOOP\r\n".encode())
                sent += 1
                await asyncio.sleep(0)
        return sent

    try:
        await client.ok(f"AUTHENTICATE EXTERNAL {b64(MARTIN)}")
        await client.ok("SELECT INBOX")
        sender = asyncio.create_task(busy())
        assert authority.revoke(*authority.issued_to("899700000001")) == 1
        assert watch.revalidate_now() == 1
        received = await client.until_closed()
        stop.set()
        assert await sender > 0
        assert b"* BYE card revoked\r\n" in received, received[-200:]
        assert not received.split(b"* BYE card revoked\r\n", 1)[1].strip(), "nothing after BYE"
    finally:
        stop.set()
        await client.close()
    again = await raw_with(stack, card)
    try:
        reply = await again.command(f"AUTHENTICATE EXTERNAL {b64(MARTIN)}")
        assert b"NO [AUTHENTICATIONFAILED]" in reply.tagged, reply
    finally:
        await again.close()
