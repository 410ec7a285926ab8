"""The checks on hand-written event lists (the timing rules a real client would take minutes
to show), and the observatory's attribution of what it sees to campaigns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mock_operator.conformance import checks, observatory
from mock_operator.conformance.checks import (
    MAX_RETRIES_AFTER_END,
    MIN_POLL_INTERVAL,
    SESSION_END_GRACE,
    evaluate,
)
from mock_operator.conformance.events import Event
from mock_operator.conformance.observatory import MAX_PENDING, Observatory
from mock_operator.conformance.results import Status
from mock_operator.conformance.store import Campaign, CampaignStore
from mock_operator.personas import default_personas
from mock_operator.server import sqlite_engine

MARTIN = "claire.martin@medecin.mssante.fr"
MARTIN_IDNAT = "899700000001"
T0 = 1_800_000_000.0


def status(events: list[Event], key: str, now: float | None = None) -> Status:
    return {r.check.key: r.status for r in evaluate(events, {}, now)}[key]


def command(name: str, at: float, connection: str = "i1", **data: Any) -> Event:
    return Event("imap", "command", connection, {"name": name, "line": name, **data}, at)


def login(at: float, connection: str = "i1", ok: bool = True, **data: Any) -> Event:
    facts = {"ok": ok, "idnat": MARTIN_IDNAT, "client_id": "lps", "mechanism": "XOAUTH2"}
    return Event("imap", "login", connection, {**facts, "secure": True, **data}, at)


def close(at: float, connection: str = "i1") -> Event:
    return Event("imap", "close", connection, {}, at)


def session_end(at: float) -> Event:
    return Event("psc", "session_end", "", {"client_id": "", "idnat": MARTIN_IDNAT}, at)


def psc_token(at: float, grant: str) -> Event:
    return Event("psc", "token", "", {"client_id": "lps", "grant": grant}, at)


# -- imap-idle: polling interval ---------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        (1.0, Status.FAILED),
        (MIN_POLL_INTERVAL - 0.5, Status.FAILED),
        (MIN_POLL_INTERVAL, Status.PASSED),
        (300.0, Status.PASSED),
    ],
)
def test_polling_without_idle_is_judged_by_its_median_interval(
    interval: float, expected: Status
) -> None:
    polls = [command("NOOP", T0 + n * interval) for n in range(5)]
    polls.insert(2, command("NOOP", T0 + 2 * interval + 0.1))  # one burst does not decide
    assert status([login(T0 - 1), *polls], "imap-idle") is expected


def test_two_polls_are_not_yet_a_rate_and_idle_passes_at_once() -> None:
    assert status([command("NOOP", T0), command("NOOP", T0 + 1)], "imap-idle") is (
        Status.NOT_OBSERVED
    )
    assert status([command("NOOP", T0), command("IDLE", T0 + 1)], "imap-idle") is Status.PASSED


def test_opening_folders_at_startup_is_no_polling_but_reopening_inbox_is() -> None:
    startup = [
        command("SELECT", T0, mailbox="INBOX"),
        command("EXAMINE", T0 + 0.1, mailbox="Envoyés"),
        command("SELECT", T0 + 0.2, mailbox="Brouillons"),
        command("NOOP", T0 + 300),
    ]
    assert status(startup, "imap-idle") is Status.NOT_OBSERVED
    reconnecting = [
        command("SELECT", T0 + n, f"i{n}", mailbox="inbox" if n % 2 else "INBOX") for n in range(5)
    ]
    assert status(reconnecting, "imap-idle") is Status.FAILED


# -- session-end: the grace after the PSC session ends ------------------------------------


def test_sessions_closed_within_the_grace_pass() -> None:
    events = [login(T0), session_end(T0 + 10), close(T0 + 10 + SESSION_END_GRACE - 1)]
    assert status(events, "session-end") is Status.PASSED


def test_a_session_closed_after_the_grace_or_never_fails() -> None:
    late = [login(T0), session_end(T0 + 10), close(T0 + 11 + SESSION_END_GRACE)]
    assert status(late, "session-end") is Status.FAILED
    still_open = [login(T0), session_end(T0 + 10)]
    assert status(still_open, "session-end", T0 + 11 + SESSION_END_GRACE) is Status.FAILED


def test_a_session_still_open_within_the_grace_is_not_judged_yet() -> None:
    # the page shows the report live: a correct LPS is not red while its delay runs
    still_open = [login(T0), session_end(T0 + 10)]
    assert status(still_open, "session-end", T0 + 20) is Status.NOT_OBSERVED
    assert status(still_open, "session-end") is Status.NOT_OBSERVED  # now: the last event


def test_a_token_of_the_ended_session_presented_after_the_grace_fails() -> None:
    events = [
        login(T0),
        session_end(T0 + 10),
        close(T0 + 11),
        login(T0 + 20 + SESSION_END_GRACE, "i2", ok=False, iat=T0),
    ]
    assert status(events, "session-end") is Status.FAILED


def test_sessions_of_another_person_or_opened_after_the_end_do_not_count() -> None:
    events = [
        login(T0, "i1", idnat="899700000007"),  # Dr Moreau keeps hers
        session_end(T0 + 10),
        login(T0 + 20, "i2"),  # reopened after a new login
    ]
    assert status(events, "session-end") is Status.PASSED
    assert status([login(T0)], "session-end") is Status.NOT_OBSERVED


# -- session-reopen: retries after the end ------------------------------------------------


def _refused(count: int, start: float) -> list[Event]:
    return [login(start + n, f"r{n}", ok=False) for n in range(count)]


def test_reopened_after_the_new_login_with_few_retries_passes() -> None:
    events = [
        login(T0),
        session_end(T0 + 10),
        *_refused(MAX_RETRIES_AFTER_END, T0 + 11),
        psc_token(T0 + 60, "urn:openid:params:grant-type:ciba"),
        login(T0 + 61, "i9"),
    ]
    assert status(events, "session-reopen") is Status.PASSED


def test_hammering_after_the_end_fails_even_if_reopened() -> None:
    events = [
        login(T0),
        session_end(T0 + 10),
        *_refused(MAX_RETRIES_AFTER_END + 1, T0 + 11),
        psc_token(T0 + 60, "urn:openid:params:grant-type:ciba"),
        login(T0 + 61, "i9"),
    ]
    assert status(events, "session-reopen") is Status.FAILED


def test_reopen_needs_a_new_login_and_a_refresh_is_not_one() -> None:
    base = [login(T0), session_end(T0 + 10)]
    refreshed = [*base, psc_token(T0 + 20, "refresh_token"), login(T0 + 21, "i2")]
    assert status(refreshed, "session-reopen") is Status.NOT_OBSERVED
    not_reopened = [*base, psc_token(T0 + 20, "authorization_code")]
    assert status(not_reopened, "session-reopen") is Status.FAILED


# -- the fixes: EXISTS answering SELECT, size queries -------------------------------------


def _update(at: float, connection: str = "i1") -> Event:
    line = "* 7 EXISTS"
    return Event("imap", "update", connection, {"update": "EXISTS", "line": line}, at)


def test_the_exists_answering_select_is_no_news_of_a_message() -> None:
    fetch = command("FETCH", T0 + 3, uid=True, items=["BODY.PEEK[]"], sequence="1:*")
    after_select = [login(T0), command("SELECT", T0 + 1), _update(T0 + 1), fetch]
    assert status(after_select, "imap-updates") is Status.NOT_OBSERVED
    during_idle = [login(T0), command("SELECT", T0 + 1), command("IDLE", T0 + 2), _update(T0 + 2)]
    assert status(during_idle, "imap-updates") is Status.FAILED
    assert status([*during_idle, fetch], "imap-updates") is Status.PASSED


def test_a_size_or_header_query_is_no_read_of_the_message() -> None:
    delivered = Event("runner", "delivered", "", {"kind": "large", "uid": 9, "subject": "x"}, T0)
    sizes = command("FETCH", T0 + 1, uid=True, items=["UID", "RFC822.SIZE"], sequence="9")
    header = command("FETCH", T0 + 1, uid=True, items=["RFC822.HEADER"], sequence="9")
    body = command("FETCH", T0 + 2, uid=True, items=["BODY.PEEK[]"], sequence="9")
    assert status([delivered, sizes, header], "reception-large") is Status.NOT_OBSERVED
    assert status([delivered, sizes, body], "reception-large") is Status.PASSED


def test_a_tls_version_below_1_2_fails() -> None:
    # the mock's own TLS refuses it at the handshake: a real client cannot show it
    old = Event("imap", "tls", "i1", {"version": "TLSv1.1", "sni": "localhost"}, T0)
    new = Event("smtp", "tls", "s1", {"version": "TLSv1.3", "sni": "localhost"}, T0)
    assert status([old, new], "tls-version") is Status.FAILED
    assert status([new], "tls-version") is Status.PASSED


# -- observatory: attribution -------------------------------------------------------------


@pytest_asyncio.fixture
async def watch(tmp_path: Path) -> AsyncIterator[Observatory]:
    engine = sqlite_engine(tmp_path / "mock.db")
    found = Observatory(CampaignStore(engine), default_personas())
    await found.start()
    try:
        yield found
    finally:
        await found.stop()
        await engine.dispose()


def _login(obs: Observatory, connection: str, **data: Any) -> Campaign | None:
    facts = {"client_id": "", "idnat": "", "bal": "", "ok": True, **data}
    return obs.login("smtp", connection, **facts)


async def _kinds(obs: Observatory, campaign: Campaign) -> list[str]:
    return [e.kind for e in await obs.events(campaign.id)]


async def test_a_connection_goes_to_the_campaign_of_its_client_person_or_bal(
    watch: Observatory,
) -> None:
    by_client = await watch.open("A", "", "lps-a", ())
    by_person = await watch.open("B", "", None, ("dr-martin",))
    assert _login(watch, "c1", client_id="lps-a", idnat="899700000007") == by_client
    assert _login(watch, "c2", client_id="lps-z", idnat=MARTIN_IDNAT) == by_person
    # the secretary (another idNat) opening Dr Martin's BAL: the BAL names the campaign
    assert _login(watch, "c3", client_id="lps-z", idnat="899700000003", bal=MARTIN) == by_person
    assert _login(watch, "c4", client_id="lps-z", idnat="899700000007") is None
    # the most recent campaign first, when two match
    newer = await watch.open("C", "", "lps-a", ())
    assert _login(watch, "c5", client_id="lps-a") == newer


async def test_events_before_login_are_held_then_written_or_dropped(watch: Observatory) -> None:
    campaign = await watch.open("A", "", "lps-a", ())
    for n in range(MAX_PENDING + 50):
        watch.event("smtp", "c1", "command", name="NOOP", n=n)
        watch.event("smtp", "c2", "command", name="NOOP", n=n)
    assert _login(watch, "c1", client_id="lps-a") == campaign
    assert _login(watch, "c2", client_id="lps-other") is None
    watch.event("smtp", "c1", "command", name="QUIT")
    watch.event("smtp", "c2", "command", name="QUIT")  # its connection matched nothing
    kinds = await _kinds(watch, campaign)
    assert kinds.count("command") == MAX_PENDING + 1  # held ones bounded, then the QUIT
    assert kinds.count("login") == 1
    assert not watch._pending
    assert watch._owner["c2"] is None


async def test_nothing_is_held_when_no_campaign_is_open(watch: Observatory) -> None:
    watch.event("imap", "c1", "command", name="CAPABILITY")
    assert not watch._pending


async def test_a_campaign_stops_recording_at_max_events(
    watch: Observatory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(observatory, "MAX_EVENTS", 30)
    campaign = await watch.open("A", "", "lps-a", ())
    _login(watch, "c1", client_id="lps-a")
    for _ in range(100):
        watch.event("smtp", "c1", "command", name="NOOP")
    kinds = await _kinds(watch, campaign)
    assert len(kinds) == 31  # MAX_EVENTS, then one "truncated"
    assert kinds[-1] == "truncated"


async def test_a_report_waits_for_the_batch_being_written(
    watch: Observatory, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = await watch.open("A", "", "lps-a", ())
    await watch.flush()
    written = watch.store.write
    started, release = asyncio.Event(), asyncio.Event()

    async def held(batch: Any) -> None:
        started.set()
        await release.wait()
        await written(batch)

    monkeypatch.setattr(watch.store, "write", held)
    _login(watch, "c1", client_id="lps-a")  # the write loop takes it, and is held writing
    await started.wait()
    reading = asyncio.create_task(_kinds(watch, campaign))
    await asyncio.sleep(0)  # one turn of the loop: the report has asked for its events
    assert not reading.done(), "the report must wait for the batch being written"
    release.set()
    assert "login" in await reading


def test_every_check_has_a_rule() -> None:
    assert [c.key for c in checks.CHECKS] == list(checks._RULES)
