"""Sender identity on the SMTP front: a message must not look as if another doctor sent it.

Every header line the receiving platform will read is read here too (``From :``, an mbox
line, a line without a colon, a bare CR or LF are refused with 5.6.0, naming the line), a
``Sender:`` of the client's never survives, a display name cannot carry another address,
and a delegation revoked or narrowed between RCPT and DATA stops the message."""

from __future__ import annotations

import asyncio
import email
import smtplib
from collections.abc import AsyncIterator

import aiosmtplib
import pytest
import pytest_asyncio

from psc_auth import Identity
from tests.conftest import quick_mock_settings
from tests.gateway.test_legacy_ws_smtp import DUPONT, INBOX, PETIT, titled
from tests.gateway.test_smtp_front import (
    NIL,
    client,
    metric,
    received,
    smtplib_session,
    subject,
)
from tests.support.stacks import Stack, gateway_settings, running_stack

CLAIRE = "claire.martin@medecin.mssante.fr"  # dr-martin's; sec-bernard: read, write, send
EVE = "eve.moreau@medecin.mssante.fr"  # dr-moreau's
SOPHIE = "899700000003"
LEROY = "899700000006"


def raw_message(*header_lines: str, title: str, body: str = "Bonjour.") -> bytes:
    lines = [*header_lines, f"Subject: {title}", f"X-MSS-NIL: {NIL}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway for the checks of what a message says (a stack each was most of their
    time): each sends under a subject of its own and looks for that subject only. The
    tests that change delegations or count messages keep a gateway each."""
    directory = tmp_path_factory.mktemp("smtp-sender")
    async with running_stack(
        gateway_settings(directory / "gateway"), quick_mock_settings(), directory / "mock"
    ) as running:
        yield running


async def identity(stack: Stack, persona: str) -> Identity:
    assert stack.gateway.validator is not None
    return await stack.gateway.validator.validate(await stack.token(persona))


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("lines", "shown"),
    [
        ([f"From: {CLAIRE}", f"From : {EVE}", f"To: {EVE}"], f"line 2: 'From : {EVE}'"),
        ([f"From {EVE} Sat Dec  5 10:00:00 2026", f"From: {CLAIRE}", f"To: {EVE}"], "line 1"),
        ([f"From: {CLAIRE}", "X-Note just words", f"From: {EVE}"], "line 2: 'X-Note just words'"),
        ([f"From: {CLAIRE}", f"X-Note: a\nFrom: {EVE}", f"To: {EVE}"], "line 2"),
    ],
)
async def test_a_header_line_the_check_cannot_read_is_refused_with_5_6_0(
    shared: Stack, lines: list[str], shown: str
) -> None:
    """The reviewer's case first: ``From : eve`` after a good From, which Python's parser
    drops and a receiving platform may show."""
    title = subject()
    token = await shared.token("dr-martin")

    def send() -> None:
        with smtplib_session(shared.smtp_port, CLAIRE, token) as smtp:
            smtp.sendmail(CLAIRE, [EVE], raw_message(*lines, title=title))

    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(send)
    assert refused.value.smtp_code == 554
    text = refused.value.smtp_error.decode()
    assert text.startswith("5.6.0")
    assert shown in text
    assert await received(shared, EVE, title) == []


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    "sender_field",
    [f"Sender: {EVE}", f"sender: Eve MOREAU <{EVE}>", f"SENDER:\r\n {EVE}"],
)
async def test_a_sender_field_of_the_clients_never_reaches_the_recipient(
    shared: Stack, sender_field: str
) -> None:
    """Holder and delegate alike: the client's Sender is removed, the gateway writes the one
    it means (none for the holder: From names the author)."""
    title = subject()
    raw = raw_message(f"From: {CLAIRE}", f"To: {EVE}", sender_field, title=title)
    async with client(shared, "dr-martin", CLAIRE) as smtp:
        await smtp.sendmail(CLAIRE, [EVE], raw)
    [delivered] = await received(shared, EVE, title)
    assert email.message_from_bytes(delivered).get_all("Sender") is None
    assert EVE.encode() not in delivered.split(b"\r\nTo:", 1)[0]

    title = subject()
    raw = raw_message(f"From: {CLAIRE}", f"To: {EVE}", sender_field, title=title)
    async with client(shared, "sec-bernard", CLAIRE) as smtp:
        await smtp.sendmail(CLAIRE, [EVE], raw)
    [delivered] = await received(shared, EVE, title)
    assert email.message_from_bytes(delivered).get_all("Sender") == [f"Sophie BERNARD <{CLAIRE}>"]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    "from_value",
    [
        f'"{EVE}" <{CLAIRE}>',
        f"Dr Eve MOREAU ({EVE}) <{CLAIRE}>",
        f"=?utf-8?q?eve=2Emoreau=40medecin=2Emssante=2Efr?= <{CLAIRE}>",
    ],
)
async def test_a_display_name_naming_another_address_is_refused(
    shared: Stack, from_value: str
) -> None:
    title = subject()
    async with client(shared, "dr-martin", CLAIRE) as smtp:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.sendmail(
                CLAIRE, [EVE], raw_message(f"From: {from_value}", f"To: {EVE}", title=title)
            )
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1")
    assert await received(shared, EVE, title) == []


async def _delegation_id(stack: Stack, holder: Identity, bal: str, delegate: str) -> int:
    assert stack.gateway.delegations is not None
    for delegation in await stack.gateway.delegations.delegations_of(holder, bal):
        if delegation.delegate_idnat == delegate:
            return delegation.id
    raise AssertionError(f"no delegation of {delegate} on {bal}")


@pytest.mark.parametrize("change", ["revoked", "no-send-right"])
async def test_a_delegation_changed_between_rcpt_and_data_stops_the_message(
    stack: Stack, change: str
) -> None:
    """Revoked, or narrowed to read and write: the registry is asked again at DATA."""
    registry = stack.gateway.delegations
    assert registry is not None
    title = subject()
    martin = await identity(stack, "dr-martin")
    async with client(stack, "sec-bernard", CLAIRE) as smtp:
        await smtp.mail(CLAIRE)
        await smtp.rcpt(EVE)
        if change == "revoked":
            await registry.revoke(
                martin, CLAIRE, await _delegation_id(stack, martin, CLAIRE, SOPHIE)
            )
        else:
            await registry.grant(martin, CLAIRE, SOPHIE, ["read", "write"])
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.data(raw_message(f"From: {CLAIRE}", f"To: {EVE}", title=title))
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1")
    assert f"({change})" in refused.value.message
    assert await received(stack, EVE, title) == []
    assert metric(stack, "lpsgw_messages_total", result="accepted") == 0
    assert stack.gateway.audit is not None
    await stack.gateway.audit.flush()
    events = await registry.audit_for(CLAIRE)
    assert any(e.action == "send" and e.result == f"refused:{change}" for e in events)


async def test_a_revocation_between_rcpt_and_data_stops_a_historic_message(
    legacy: Stack,
) -> None:
    """The same on a BAL the historic platform holds (sendMessage is never called)."""
    assert legacy.gateway.delegations is not None
    title = subject()
    dupont = await identity(legacy, "dr-dupont")
    async with client(legacy, "dr-leroy") as smtp:
        await smtp.mail(DUPONT)
        await smtp.rcpt(PETIT)
        delegation = await _delegation_id(legacy, dupont, DUPONT, LEROY)
        await legacy.gateway.delegations.revoke(dupont, DUPONT, delegation)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.data(raw_message(f"From: {DUPONT}", f"To: {PETIT}", title=title))
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1")
    assert await titled(legacy, PETIT, INBOX, title) == []
