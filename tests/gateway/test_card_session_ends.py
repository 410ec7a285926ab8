"""Sessions opened with a CPS card end when the card is revoked or expires, without any
new login: real sockets (imaplib, smtplib with the card), the mock's card CA rewriting its
revocation list under the running gateway, the BYE or 421 waited for, never a time."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import imaplib
import smtplib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.card_sessions import CardSessionWatch
from gateway.settings import MockSettings, Settings
from mock_operator.server import MockOperator
from tests.support.cards import Card, authority_of, issue_card, tls_with_card, with_cards
from tests.support.stacks import Stack, configure_with, gateway_settings, running_stack
from tests.support.waiting import eventually, until

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
MARTIN = "claire.martin@medecin.mssante.fr"  # modern: relayed
DUPONT = "jean.dupont@medecin.mssante.fr"  # historic: served by the engine
MARTIN_IDNAT = "899700000001"
BERNARD_IDNAT = "899700000003"
INTERVAL = 0.2


def configure(interval: float) -> Callable[[Settings, MockOperator], None]:
    cards = with_cards(configure_with())

    def both(settings: Settings, mock: MockOperator) -> None:
        cards(settings, mock)
        settings.cards = settings.cards.model_copy(update={"revalidate_interval": interval})

    return both


@pytest.fixture
def interval() -> float:
    return INTERVAL


@pytest.fixture
async def stack(
    tmp_path: Path, mock_settings: MockSettings, interval: float
) -> AsyncIterator[Stack]:
    settings = gateway_settings(tmp_path / "gateway")
    async with running_stack(
        settings, mock_settings, tmp_path / "mock", configure(interval)
    ) as running:
        yield running


def watch(stack: Stack) -> CardSessionWatch:
    assert stack.gateway.card_sessions is not None
    return stack.gateway.card_sessions


def card(stack: Stack, persona: str, directory: Path, **extra: Any) -> Card:
    return issue_card(authority_of(stack.mock), stack.mock, persona, directory / persona, **extra)


def imap_session(stack: Stack, held: Card, authzid: str) -> imaplib.IMAP4:
    """Logged in with `held` on `authzid`'s BAL, INBOX selected (read only if need be)."""
    trusted = stack.gateway.settings.data_dir / "dev-cert.pem"
    client = imaplib.IMAP4(HOST, stack.imap_port, timeout=60)
    client.starttls(tls_with_card(trusted, held))
    typ, _ = client.authenticate("EXTERNAL", lambda _: authzid.encode())
    assert typ == "OK"
    try:
        client.select("INBOX")
    except imaplib.IMAP4.readonly:
        client.untagged_responses.pop("READ-ONLY", None)
    return client


def smtp_session(stack: Stack, held: Card, authzid: str) -> smtplib.SMTP:
    trusted = stack.gateway.settings.data_dir / "dev-cert.pem"
    client = smtplib.SMTP(HOST, stack.smtp_port, timeout=60)
    client.ehlo("card-watch-test")
    client.starttls(context=tls_with_card(trusted, held))
    client.ehlo("card-watch-test")
    code, _ = client.docmd("AUTH", "EXTERNAL =" if not authzid else "EXTERNAL " + _b64(authzid))
    assert code == 235
    return client


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def next_line(client: imaplib.IMAP4) -> bytes:
    """The next line the server sends unasked (blocks until it comes, or the socket's
    timeout: a real failure)."""
    return client.readline()


async def revoke_with_the_cli(tmp_path: Path, persona: str) -> None:
    command = Path(sys.executable).with_name("mock-operator")
    done = await asyncio.create_subprocess_exec(
        str(command),
        "card",
        persona,
        "--revoke",
        "--data",
        str(tmp_path / "mock"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await done.communicate()
    assert done.returncode == 0, err
    assert out.decode().startswith(f"1 card of {persona} revoked"), out


async def session_ends(stack: Stack, mailbox: str, actor: str) -> list[Any]:
    """The `session-end` audit events of `actor` on `mailbox` (once written)."""
    audit, registry = stack.gateway.audit, stack.gateway.delegations
    assert audit is not None
    assert registry is not None
    found: list[Any] = []

    async def written() -> bool:
        await audit.flush()
        events = await registry.audit_for(mailbox)
        found[:] = [e for e in events if e.action == "session-end" and e.actor_idnat == actor]
        return bool(found)

    await eventually(written, f"session-end of {actor} on {mailbox}")
    return found


async def test_a_revoked_card_gets_bye_on_imap_and_another_card_stays(
    stack: Stack, tmp_path: Path
) -> None:
    """Dr MARTIN idles on her BAL (relayed), Sophie BERNARD reads jean.dupont's (served by
    the engine) with her own card: `mock-operator card dr-martin --revoke` ends the first
    with `* BYE card revoked`, the second lives on."""
    martin = await asyncio.to_thread(imap_session, stack, card(stack, "dr-martin", tmp_path), "")
    bernard = await asyncio.to_thread(
        imap_session, stack, card(stack, "sec-bernard", tmp_path), DUPONT
    )
    try:
        await until(lambda: watch(stack).sessions == 2, "both card sessions watched")
        bye = asyncio.create_task(asyncio.to_thread(next_line, martin))
        await revoke_with_the_cli(tmp_path, "dr-martin")
        line = await asyncio.wait_for(bye, 90)
        assert line.startswith(b"* BYE card revoked"), line
        rounds = watch(stack).rounds
        await until(lambda: watch(stack).rounds > rounds + 1, "two more rounds")
        typ, _ = await asyncio.to_thread(bernard.noop)
        assert typ == "OK"
        assert watch(stack).sessions == 1
        ended = await session_ends(stack, MARTIN, MARTIN_IDNAT)
        assert [e.detail for e in ended] == ["card revoked"]
        assert ended[0].delegation_id is None  # her own BAL, not through a delegation
    finally:
        await asyncio.to_thread(bernard.logout)
        martin.shutdown()
    await until(lambda: watch(stack).sessions == 0, "logout leaves the watch")


async def test_a_served_session_of_a_revoked_card_gets_bye(stack: Stack, tmp_path: Path) -> None:
    """jean.dupont lives on the historic platform: the engine serves the session itself;
    Sophie BERNARD reaches it through her delegation (audited with it)."""
    bernard = await asyncio.to_thread(
        imap_session, stack, card(stack, "sec-bernard", tmp_path), DUPONT
    )
    try:
        await until(lambda: watch(stack).sessions == 1, "the card session watched")
        bye = asyncio.create_task(asyncio.to_thread(next_line, bernard))
        authority = authority_of(stack.mock)
        assert authority.revoke(*authority.issued_to(BERNARD_IDNAT)) == 1
        line = await asyncio.wait_for(bye, 90)
        assert line.startswith(b"* BYE card revoked"), line
        ended = await session_ends(stack, DUPONT, BERNARD_IDNAT)
        assert ended[0].detail == "card revoked"
        assert ended[0].delegation_id is not None
    finally:
        bernard.shutdown()


async def test_a_revoked_card_gets_421_on_smtp_and_another_card_stays(
    stack: Stack, tmp_path: Path
) -> None:
    martin = await asyncio.to_thread(smtp_session, stack, card(stack, "dr-martin", tmp_path), "")
    bernard = await asyncio.to_thread(
        smtp_session, stack, card(stack, "sec-bernard", tmp_path), MARTIN
    )
    try:
        await until(lambda: watch(stack).sessions == 2, "both card sessions watched")
        reply = asyncio.create_task(asyncio.to_thread(martin.getreply))
        await revoke_with_the_cli(tmp_path, "dr-martin")
        code, text = await asyncio.wait_for(reply, 90)
        assert (code, text) == (421, b"4.7.0 card revoked")
        rounds = watch(stack).rounds
        await until(lambda: watch(stack).rounds > rounds + 1, "two more rounds")
        assert (await asyncio.to_thread(bernard.noop))[0] == 250
        ended = await session_ends(stack, MARTIN, MARTIN_IDNAT)
        assert [e.detail for e in ended] == ["card revoked"]
        assert ended[0].interface == "smtp"
    finally:
        await asyncio.to_thread(bernard.quit)
        martin.close()
    await until(lambda: watch(stack).sessions == 0, "logout leaves the watch")


@pytest.mark.parametrize("interval", [0.0])  # no revalidation round: the timer alone
async def test_a_card_ends_its_sessions_at_its_expiry(stack: Stack, tmp_path: Path) -> None:
    lifetime = dt.timedelta(seconds=6)
    short = card(stack, "dr-martin", tmp_path, lifetime=lifetime)
    imap = await asyncio.to_thread(imap_session, stack, short, "")
    smtp = await asyncio.to_thread(smtp_session, stack, short, "")
    try:
        await until(lambda: watch(stack).sessions == 2, "both card sessions watched")
        bye = asyncio.create_task(asyncio.to_thread(next_line, imap))
        reply = asyncio.create_task(asyncio.to_thread(smtp.getreply))
        line = await asyncio.wait_for(bye, 90)
        assert line.startswith(b"* BYE card expired"), line
        assert await asyncio.wait_for(reply, 90) == (421, b"4.7.0 card expired")
        assert watch(stack).rounds == 0
        assert watch(stack).sessions == 0
        ended = await session_ends(stack, MARTIN, MARTIN_IDNAT)
        assert sorted(e.interface for e in ended) == ["imap", "smtp"]
        assert {e.detail for e in ended} == {"card expired"}
    finally:
        imap.shutdown()
        smtp.close()
