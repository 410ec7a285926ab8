"""The reference LPS passes a campaign; each variant of it does one thing wrong and fails
exactly the check that watches that thing (and the ones that by necessity go with it).

One mock operator for the module; each test opens its own campaign for a client id of its
own (registered in the mock's `clients.toml` before it starts) and closes it at the end, so
that no campaign sees another's events. The LPS works in a thread (imaplib, smtplib and
httpx block) while the mock serves on the module's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import imaplib
import json
import smtplib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio

from mock_operator.conformance import checks
from mock_operator.conformance.events import token_claims
from mock_operator.conformance.results import Report, Status
from mock_operator.conformance.store import Campaign
from mock_operator.psc.clients import _write_defaults
from mock_operator.server import MockOperator
from tests.conftest import client_tls, quick_mock_settings
from tests.mock_operator.conformance_lps import (
    Flaws,
    ReferenceLps,
    SessionEnded,
    broken_zip,
    decoded,
    raw_message,
)
from tests.support.tls_scenarios import refuse_tls_scenarios
from tests.support.waiting import eventually, until

pytestmark = pytest.mark.asyncio(loop_scope="module")

MARTIN = "claire.martin@medecin.mssante.fr"
MARTIN_IDNAT = "899700000001"
BERNARD_IDNAT = "899700000003"
MOREAU = "eve.moreau@medecin.mssante.fr"
DURAND = "luc.durand@infirmier.mssante.fr"
DURAND_IDNAT = "899700000004"
CLIENTS = ["lps-ref", *(f"lps-v{n:02d}" for n in range(40))]


T = TypeVar("T")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mock(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MockOperator]:
    directory = tmp_path_factory.mktemp("conformance-lps")
    clients = directory / "clients.toml"
    _write_defaults(clients)
    with clients.open("a", encoding="utf-8") as file:
        for client in CLIENTS:
            file.write(f'\n[[client]]\nclient_id = "{client}"\nclient_secret = "s-{client}"\n')
    settings = quick_mock_settings().model_copy(update={"ciba_auto_approve_after": 0.0})
    operator = MockOperator(settings, directory)
    await operator.start()
    try:
        yield operator
    finally:
        await operator.stop()


_free = iter(CLIENTS[1:])


@dataclass
class Run:
    """A campaign and what the test does in it."""

    mock: MockOperator
    campaign: Campaign
    client_id: str
    lpss: list[ReferenceLps] = field(default_factory=list)
    grace: float | None = None  # SESSION_END_GRACE for this report

    def lps(
        self,
        idnat: str = MARTIN_IDNAT,
        bal: str = MARTIN,
        *,
        client_id: str | None = None,
        **flaws: Any,
    ) -> ReferenceLps:
        made = ReferenceLps(
            self.mock,
            client_id=client_id or self.client_id,
            idnat=idnat,
            bal=bal,
            flaws=Flaws(**flaws),
        )
        self.lpss.append(made)
        return made

    async def report(self) -> dict[str, Any]:
        assert self.mock.runner is not None
        with pytest.MonkeyPatch.context() as patch:
            if self.grace is not None:
                patch.setattr(checks, "SESSION_END_GRACE", self.grace)
            built: Report = await self.mock.runner.report(self.campaign)
        return {r.check.key: r for r in built.results}

    async def events(self) -> list[Any]:
        assert self.mock.observatory is not None
        return await self.mock.observatory.events(self.campaign.id)

    async def delivered(self, count: int = 4) -> None:
        async def enough() -> bool:
            return sum(1 for e in await self.events() if e.kind == "delivered") >= count

        await eventually(enough, "the runner's test messages delivered")

    async def closed(self, interface: str) -> None:
        async def seen() -> bool:
            return any(e.kind == "close" and e.interface == interface for e in await self.events())

        await eventually(seen, f"{interface} session closed")


async def open_run(
    mock: MockOperator, client_id: str | None = None, personas: tuple[str, ...] = ()
) -> Run:
    assert mock.observatory is not None
    client = client_id or next(_free)
    campaign = await mock.observatory.open("Mon LPS", "2.1", None if personas else client, personas)
    return Run(mock, campaign, client)


async def close_run(run: Run) -> None:
    for lps in run.lpss:
        await asyncio.to_thread(_quietly, lps.close_sessions)
    assert run.mock.observatory is not None
    await run.mock.observatory.close(run.campaign.id)


def _quietly(action: Callable[[], object]) -> None:
    with contextlib.suppress(OSError, imaplib.IMAP4.error, smtplib.SMTPException):
        action()  # a session the server (or the test) already closed


async def go(action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(action, *args, **kwargs)


def statuses(results: dict[str, Any]) -> str:
    return json.dumps(
        {k: (str(r.status), r.detail) for k, r in results.items()}, ensure_ascii=False, indent=1
    )


def failed(results: dict[str, Any]) -> set[str]:
    return {k for k, r in results.items() if r.status is Status.FAILED}


async def deliver_one(mock: MockOperator, bal: str, subject: str = "Nouveau message") -> None:
    """Another practitioner's message arriving in `bal` (what IDLE should announce)."""
    assert mock.platform is not None
    raw = (
        f"From: {MOREAU}\r\nTo: {bal}\r\nSubject: {subject}\r\n"
        f"Date: {dt.datetime.now(dt.UTC):%a, %d %b %Y %H:%M:%S +0000}\r\n"
        f"Message-ID: <{time.time_ns()}@medecin.mssante.fr>\r\n\r\nBonjour.\r\n"
    ).encode()
    await mock.platform.deliver(bal, raw, internal_date=dt.datetime.now(dt.UTC))


async def end_psc_session(mock: MockOperator, persona: str) -> None:
    async with httpx.AsyncClient(timeout=10, verify=client_tls()) as http:
        answer = await http.post(f"{mock.http_url}/_test/end-session", json={"persona": persona})
    answer.raise_for_status()


def by_subject(messages: dict[int, Message], start: str) -> tuple[int, Message]:
    """The runner's test message whose subject starts with `start` (the BAL's seeded
    messages left aside)."""
    for uid, message in messages.items():
        runner = "conformance" in str(message["Message-ID"] or "")
        if runner and decoded(message["Subject"]).startswith(start):
            return uid, message
    raise AssertionError(f"no message {start!r} in {[m['Subject'] for m in messages.values()]}")


def sample(messages: dict[int, Message], kind: str) -> tuple[int, Message]:
    subjects = {"xdm": "XDM/1.0/DDM+", "mdn-request": "Demande d"}
    return by_subject(messages, subjects[kind])


# -- the reference LPS -----------------------------------------------------------------


async def test_the_reference_lps_passes_every_check(mock: MockOperator) -> None:
    run = await open_run(mock, "lps-ref", ())
    lps = run.lps()
    await go(lps.psc_login)
    await go(lps.imap_open)  # first login in the campaign: the runner's messages
    await run.delivered()
    inbox = await go(lps.sync_inbox)
    assert len(inbox) >= 4

    idle = asyncio.ensure_future(go(lps.idle_for_new))
    await until(lps.idling.is_set, "the LPS idling")
    await deliver_one(mock, MARTIN)
    new = await idle
    assert [str(m["Subject"]) for m in new.values()] == ["Nouveau message"]
    await go(lps.mark_seen, next(iter(new)))
    await go(lps.refresh)  # before the access token expires

    await go(lps.smtp_open)
    await go(lps.send, lps.xdm_report(MOREAU), receipt=True)
    await go(lps.send, lps.reply(sample(inbox, "xdm")[1]))
    await go(lps.send, lps.mdn(sample(inbox, "mdn-request")[1]))
    await go(lps.imap_close)
    await go(lps.imap_open, mechanism="OAUTHBEARER")
    await go(lps.imap_close)

    # a secretary with e-CPS opens Dr Martin's BAL, delegated to her, and sends from it
    bernard = run.lps(BERNARD_IDNAT, MARTIN)
    await go(bernard.psc_login)
    await go(bernard.imap_open, MARTIN)
    await go(bernard.select)
    await go(bernard.imap_close)
    await go(bernard.smtp_open, MARTIN)
    await go(bernard.send, bernard.note(MOREAU, "Courrier du secrétariat"))
    await go(bernard.smtp_close)

    # the PSC session ends: the next refresh fails, the LPS closes its sessions at once;
    # once the person logs in again it reopens them by itself
    await go(lps.imap_open)
    await end_psc_session(mock, "dr-martin")
    with pytest.raises(SessionEnded):
        await go(lps.refresh)
    assert lps.imap is None
    assert lps.smtp is None
    await go(lps.psc_login)
    await go(lps.reopen_sessions)
    await go(lps.close_sessions)
    await run.closed("imap")
    # the certificates of the TLS scenario ports: refused, before any authentication
    await refuse_tls_scenarios(mock)

    results = await run.report()
    await close_run(run)
    not_passed = {k for k, r in results.items() if r.status is not Status.PASSED}
    assert not_passed == set(), statuses(results)
    assert results["sni"].detail == "SNI : localhost."


# -- variants: one thing wrong each ----------------------------------------------------
#
# Each variant does only what its check needs (a check with nothing to judge is "not
# observed", never failed), and the test asserts the set of failed checks exactly.
# tls-version has no variant: the mock's TLS refuses versions below 1.2 at the handshake,
# before anything is observed; test_conformance_checks.py judges it on written events.


async def _imap_read(lps: ReferenceLps, count: int = 2) -> dict[int, Message]:
    """Log in, open the INBOX, read a few messages (the seeded ones), log out."""
    await go(lps.psc_login)
    await go(lps.imap_open)
    await go(lps.select)
    uids = await go(lps.new_uids)
    read = await go(lps.fetch, uids[:count])
    await go(lps.imap_close)
    return read


async def _send(lps: ReferenceLps, *messages: Message | bytes) -> None:
    await go(lps.psc_login)
    await go(lps.smtp_open)
    for message in messages:
        await go(lps.send, message, to=MOREAU)
    await go(lps.smtp_close)


async def no_starttls_imap(run: Run) -> None:
    # plaintext AUTH is allowed on loopback: the check, not the server, catches it
    await _imap_read(run.lps(starttls=False))


async def no_starttls_smtp(run: Run) -> None:
    lps = run.lps(starttls=False)
    await _send(lps, lps.note(MOREAU))


async def no_sni(run: Run) -> None:
    lps = run.lps(by_name=False)  # 127.0.0.1: Python sends no SNI for an IP address
    await _imap_read(lps)
    await _send(lps, lps.note(MOREAU))


async def login_command(run: Run) -> None:
    await _imap_read(run.lps(mechanism="LOGIN"))  # the mock takes the token as password


async def plain_mechanism(run: Run) -> None:
    await _imap_read(run.lps(mechanism="PLAIN"))


async def tokens_of_two_clients(run: Run) -> None:
    # a campaign by person (no client id): IMAP and SMTP with tokens of two applications
    await _imap_read(run.lps(DURAND_IDNAT, DURAND))
    other = run.lps(DURAND_IDNAT, DURAND, client_id=next(_free))
    await _send(other, other.note(MOREAU))


async def expired_token(run: Run) -> None:
    async with httpx.AsyncClient(timeout=10, verify=client_tls()) as http:
        answer = await http.post(
            f"{run.mock.http_url}/_test/token",
            json={"persona": "dr-martin", "lifetime": 1, "client_id": run.client_id},
        )
    answer.raise_for_status()
    lps = run.lps()
    lps.access_token = answer.json()["access_token"]
    expires = token_claims(lps.access_token)["exp"]
    await until(lambda: time.time() > expires, "the token expired")  # not a fixed delay
    # refused, or taken within the platform's clock leeway: presented expired either way
    with contextlib.suppress(imaplib.IMAP4.error):
        await go(lps.imap_open)


async def sessions_left_open(run: Run) -> None:
    lps = run.lps()
    await go(lps.psc_login)
    await go(lps.imap_open)
    await end_psc_session(run.mock, "dr-martin")  # the LPS never notices
    run.grace = 0.0  # past the grace at once: no waiting 2 minutes


async def sessions_not_reopened(run: Run) -> None:
    lps = run.lps()
    await go(lps.psc_login)
    await go(lps.imap_open)
    await end_psc_session(run.mock, "dr-martin")
    with pytest.raises(SessionEnded):
        await go(lps.refresh)  # closes its sessions, as it should
    await go(lps.psc_login)  # the person logs in again; the LPS does not reopen


async def no_id(run: Run) -> None:
    await _imap_read(run.lps(id_fields=None))


async def id_without_version(run: Run) -> None:
    await _imap_read(run.lps(id_fields=(("name", "Mon LPS"),)))


async def sequence_numbers(run: Run) -> None:
    await _imap_read(run.lps(uid=False))


async def body_not_peek(run: Run) -> None:
    await _imap_read(run.lps(peek=False))


async def polling(run: Run) -> None:
    lps = run.lps()
    await go(lps.psc_login)
    await go(lps.imap_open)
    await go(lps.select)
    await go(lps.poll, 3)  # NOOP after NOOP, no IDLE
    await go(lps.imap_close)


async def exists_ignored(run: Run) -> None:
    lps = run.lps()
    await go(lps.psc_login)
    await go(lps.imap_open)
    await go(lps.select)
    idle = asyncio.ensure_future(go(lps.idle_until_exists))
    await until(lps.idling.is_set, "the LPS idling")
    await deliver_one(run.mock, MARTIN)
    await idle
    await go(lps.imap_close)


async def no_logout(run: Run) -> None:
    await _imap_read(run.lps(logout=False))
    await run.closed("imap")


async def undelegated_bal(run: Run) -> None:
    bernard = run.lps(BERNARD_IDNAT, MOREAU)  # Dr Moreau never delegated her BAL
    await go(bernard.psc_login)
    with pytest.raises(imaplib.IMAP4.error):
        await go(bernard.imap_open)


async def delegate_sends_as_herself(run: Run) -> None:
    bernard = run.lps(BERNARD_IDNAT, MARTIN)
    message = bernard.note(MOREAU)
    message.replace_header("From", "sophie.bernard@secretariat.example")
    await _send(bernard, message)


async def from_not_the_bal(run: Run) -> None:
    # MAIL FROM another address is refused (550 5.7.1) before DATA: nothing to judge then.
    # What is observable: the envelope is the BAL, the From: header another address.
    lps = run.lps()
    message = lps.note(MOREAU)
    message.replace_header("From", "claire.martin@cabinet-martin.example")
    await _send(lps, message)


async def mail_from_refused(run: Run) -> None:
    # the envelope names another address: refused at MAIL (550 5.7.1), no message exists,
    # so no message check has anything to judge: from-bal stays "not observed"
    lps = run.lps()
    await go(lps.psc_login)
    await go(lps.smtp_open)
    with pytest.raises(smtplib.SMTPSenderRefused):
        await go(lps.send, lps.note(MOREAU), sender="claire.martin@cabinet-martin.example")
    await go(lps.smtp_close)


def _without(header: str) -> Callable[[Run], Any]:
    async def variant(run: Run) -> None:
        lps = run.lps()
        message = lps.note(MOREAU)
        del message[header]
        await _send(lps, message)

    return variant


async def eight_bit_subject(run: Run) -> None:
    lps = run.lps()
    message = lps.note(MOREAU)
    del message["Subject"]
    head, _, body = raw_message(message).partition(b"\r\n\r\n")
    raw = head + "\r\nSubject: Rendez-vous de contrôle — été".encode() + b"\r\n\r\n" + body
    await _send(lps, raw)


async def broken_archive(run: Run) -> None:
    lps = run.lps()
    await _send(lps, lps.xdm_report(MOREAU, archive=broken_zip))


async def wrong_codecda(run: Run) -> None:
    lps = run.lps()
    message = lps.xdm_report(MOREAU)
    message.replace_header("X-MSS-CODECDA", "11488-4")
    await _send(lps, message)


async def wrong_ins(run: Run) -> None:
    lps = run.lps()
    message = lps.xdm_report(MOREAU)
    message.replace_header("X-MSS-INS", "N")  # the sample CDA's INS is qualified: O
    await _send(lps, message)


async def xdm_without_ddm_subject(run: Run) -> None:
    lps = run.lps()
    await _send(lps, lps.xdm_report(MOREAU, subject="Compte rendu de consultation"))


async def reply_without_references(run: Run) -> None:
    lps = run.lps()
    original = lps.note(MOREAU, "Avis sur un patient commun")
    reply = lps.reply(original)
    del reply["References"]
    await _send(lps, reply)


async def return_receipt_to(run: Run) -> None:
    lps = run.lps()
    message = lps.note(MOREAU)
    message["Return-Receipt-To"] = MARTIN  # instead of RCPT NOTIFY=SUCCESS (RFC 3461)
    await _send(lps, message)


async def dnt_elsewhere(run: Run) -> None:
    lps = run.lps()
    message = lps.xdm_report(MOREAU)
    message.replace_header("Disposition-Notification-To", MOREAU)
    await _send(lps, message)


async def malformed_mdn(run: Run) -> None:
    lps = run.lps()
    original = lps.note(MOREAU)
    original["Disposition-Notification-To"] = MOREAU
    await _send(lps, lps.mdn(original, disposition=None))  # no Disposition field


async def large_left_unread(run: Run) -> None:
    lps = run.lps()
    await go(lps.psc_login)
    await go(lps.imap_open)
    await run.delivered()
    await go(lps.select)
    sizes = await go(lps.sizes, await go(lps.new_uids))
    await go(lps.fetch, [uid for uid, size in sizes.items() if size < 1024 * 1024])
    await go(lps.imap_close)


VARIANTS: dict[str, tuple[Callable[[Run], Any], set[str]]] = {
    "no-starttls-imap": (no_starttls_imap, {"starttls-imap"}),
    "no-starttls-smtp": (no_starttls_smtp, {"starttls-smtp"}),
    "no-sni": (no_sni, {"sni"}),
    "login-command": (login_command, {"sasl-token"}),
    "plain": (plain_mechanism, {"sasl-token"}),
    "two-clients": (tokens_of_two_clients, {"token-client"}),
    "expired-token": (expired_token, {"token-expired"}),
    "sessions-left-open": (sessions_left_open, {"session-end"}),
    "sessions-not-reopened": (sessions_not_reopened, {"session-reopen"}),
    "no-id": (no_id, {"imap-id"}),
    "id-without-version": (id_without_version, {"imap-id"}),
    "sequence-numbers": (sequence_numbers, {"imap-uid"}),
    "body-not-peek": (body_not_peek, {"imap-peek"}),
    "polling": (polling, {"imap-idle"}),
    "exists-ignored": (exists_ignored, {"imap-updates"}),
    "no-logout": (no_logout, {"imap-logout"}),
    "undelegated-bal": (undelegated_bal, {"delegation-open"}),
    # the delegate's From: is not the BAL she sends from: both checks say so
    "delegate-from": (delegate_sends_as_herself, {"delegation-from", "from-bal"}),
    "from-not-bal": (from_not_the_bal, {"from-bal"}),
    "mail-from-refused": (mail_from_refused, set()),
    "no-message-id": (_without("Message-ID"), {"message-id"}),
    "no-date": (_without("Date"), {"date"}),
    "eight-bit-subject": (eight_bit_subject, {"header-encoding"}),
    "no-nil": (_without("X-MSS-NIL"), {"x-mss-nil"}),
    "broken-archive": (broken_archive, {"xdm-archive"}),
    "wrong-codecda": (wrong_codecda, {"x-mss-codecda"}),
    "wrong-ins": (wrong_ins, {"x-mss-ins"}),
    "xdm-subject": (xdm_without_ddm_subject, {"xdm-subject"}),
    "reply-without-references": (reply_without_references, {"reply-headers"}),
    "return-receipt-to": (return_receipt_to, {"dsn-request"}),
    "dnt-elsewhere": (dnt_elsewhere, {"mdn-request"}),
    "malformed-mdn": (malformed_mdn, {"mdn-send"}),
    # reception checks are never failed (the LPS may read later): not observed instead
    "large-left-unread": (large_left_unread, set()),
}
PERSONA_CAMPAIGNS = {"two-clients": ("ide-durand",)}
WITH_DELIVERIES = {"large-left-unread"}


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_a_variant_fails_exactly_its_check(mock: MockOperator, variant: str) -> None:
    action, expected = VARIANTS[variant]
    assert mock.observatory is not None
    deliver = mock.observatory.on_first_login
    if variant not in WITH_DELIVERIES:  # 4 messages (one of 5 MB) per campaign: time
        mock.observatory.on_first_login = None
    run = await open_run(mock, personas=PERSONA_CAMPAIGNS.get(variant, ()))
    try:
        await action(run)
        results = await run.report()
    finally:
        mock.observatory.on_first_login = deliver
        await close_run(run)
    assert failed(results) == expected, statuses(results)
    if variant == "mail-from-refused":
        assert results["from-bal"].status is Status.NOT_OBSERVED
    if variant == "large-left-unread":
        assert results["reception-large"].status is Status.NOT_OBSERVED
        assert results["reception-xdm"].status is Status.PASSED
