"""The card session watch on its own, with the mock's real card CA and revocation list:
which sessions end, when, and why; the fronts' end of it is in test_card_session_ends."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.card_sessions import (
    CARD_EXPIRED,
    CARD_REVOKED,
    ISSUER_NOT_TRUSTED,
    NO_REVOCATION_LIST,
    CardSessions,
    CardSessionWatch,
)
from mock_operator.historic.auth import CpsAuthority
from mock_operator.personas import default_personas
from psc_auth.certificates import CardHolder, CardRefusal, CardVerifier
from psc_auth.idnat import IdNat
from tests.support.waiting import until

BOUND = 30.0


@dataclass(eq=False)
class Session:
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reasons: list[str] = field(default_factory=list)

    def kick(self, reason: str) -> None:
        self.reasons.append(reason)
        self.ended.set()


@dataclass
class Authority:
    """The mock's card CA in a temporary directory, and a verifier reading its list."""

    ca: CpsAuthority
    verifier: CardVerifier

    def card(
        self, persona: str, lifetime: dt.timedelta = dt.timedelta(days=365)
    ) -> tuple[x509.Certificate, CardHolder]:
        found = default_personas().get(persona)
        assert found is not None
        pem, _ = self.ca.issue(found, lifetime=lifetime)
        certificate = x509.load_pem_x509_certificate(pem)
        return certificate, self.verifier.verify(certificate.public_bytes(Encoding.DER))


def authority(
    directory: Path, clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
) -> Authority:
    ca = CpsAuthority.load_or_create(directory)
    return Authority(ca, CardVerifier([ca.certificate], ca.crl_path, clock=clock))


async def test_a_revoked_card_ends_its_sessions_and_no_other(tmp_path: Path) -> None:
    ca = authority(tmp_path)
    martin, martin_card = ca.card("dr-martin")
    _, dupont_card = ca.card("dr-dupont")
    watch = CardSessionWatch(ca.verifier, interval=0)
    a1, a2, b = Session(), Session(), Session()
    watch.add(a1, martin_card)
    watch.add(a2, martin_card)
    watch.add(b, dupont_card)
    assert watch.revalidate_now() == 0
    assert ca.ca.revoke(martin) == 1
    assert watch.revalidate_now() == 2
    assert a1.reasons == a2.reasons == [CARD_REVOKED]
    assert b.reasons == []
    assert watch.sessions == 1
    assert watch.revalidate_now() == 0  # ended once, forgotten
    assert a1.reasons == [CARD_REVOKED]
    await watch.stop()


async def test_the_list_is_checked_every_interval(tmp_path: Path) -> None:
    ca = authority(tmp_path)
    martin, martin_card = ca.card("dr-martin")
    watch = CardSessionWatch(ca.verifier, interval=0.05)
    watch.start()
    session = Session()
    watch.add(session, martin_card)
    rounds = watch.rounds
    await until(lambda: watch.rounds > rounds + 1, "two rounds")
    assert session.reasons == []
    ca.ca.revoke(martin)
    await asyncio.wait_for(session.ended.wait(), BOUND)
    assert session.reasons == [CARD_REVOKED]
    await watch.stop()


async def test_an_unusable_list_ends_every_card_session(tmp_path: Path) -> None:
    """Missing, or garbage: no card is taken at login, and none stays open either."""
    ca = authority(tmp_path)
    _, martin_card = ca.card("dr-martin")
    _, dupont_card = ca.card("dr-dupont")
    watch = CardSessionWatch(ca.verifier, interval=0)
    a, b = Session(), Session()
    watch.add(a, martin_card)
    assert watch.revalidate_now() == 0
    ca.ca.crl_path.write_bytes(b"-----BEGIN X509 CRL-----\nnot a list\n")
    assert watch.revalidate_now() == 1
    assert a.reasons == [NO_REVOCATION_LIST]
    ca.ca.crl_path.unlink()
    watch.add(b, dupont_card)  # checked at once: ended without waiting for a round
    await asyncio.wait_for(b.ended.wait(), BOUND)
    assert b.reasons == [NO_REVOCATION_LIST]
    assert watch.sessions == 0
    await watch.stop()


async def test_a_list_out_of_date_ends_card_sessions(tmp_path: Path) -> None:
    later = dt.timedelta(0)
    ca = authority(tmp_path, clock=lambda: dt.datetime.now(dt.UTC) + later)
    _, martin_card = ca.card("dr-martin")
    watch = CardSessionWatch(ca.verifier, interval=0)
    session = Session()
    watch.add(session, martin_card)
    assert watch.revalidate_now() == 0
    later = CpsAuthority.CRL_LIFETIME + dt.timedelta(days=1)  # the card is still valid
    assert watch.revalidate_now() == 1
    assert session.reasons == [NO_REVOCATION_LIST]
    await watch.stop()


async def test_a_card_ends_its_sessions_when_it_expires(tmp_path: Path) -> None:
    """A timer at `not_after`: no round runs here (interval 0)."""
    ahead = dt.timedelta(days=365) - dt.timedelta(seconds=0.5)  # the card has 0.5 s left
    ca = authority(tmp_path)
    _, martin_card = ca.card("dr-martin")
    _, dupont_card = ca.card("dr-dupont", lifetime=dt.timedelta(days=400))
    # a year on, the list would be out of date: this verifier reads none
    ca.verifier = CardVerifier([ca.ca.certificate], clock=lambda: dt.datetime.now(dt.UTC) + ahead)
    watch = CardSessionWatch(ca.verifier, interval=0)
    session, other = Session(), Session()
    watch.add(session, martin_card)
    watch.add(other, dupont_card)
    assert not session.ended.is_set()
    await asyncio.wait_for(session.ended.wait(), BOUND)
    assert session.reasons == [CARD_EXPIRED], session.reasons
    assert ca.verifier.clock() > martin_card.not_after
    assert session.reasons == [CARD_EXPIRED]
    assert other.reasons == []
    assert watch.rounds == 0
    await watch.stop()


async def test_logout_forgets_the_session_and_its_timer(tmp_path: Path) -> None:
    """Bounded memory: nothing is kept for a session gone, nor for its card."""
    ca = authority(tmp_path)
    martin, martin_card = ca.card("dr-martin")
    watch = CardSessionWatch(ca.verifier, interval=0)
    a, b = Session(), Session()
    watch.add(a, martin_card)
    watch.add(b, martin_card)
    watch.discard(a)
    assert watch.sessions == 1
    watch.discard(b)
    watch.discard(b)  # twice: harmless
    assert watch.sessions == 0
    assert watch._expiry == {}
    ca.ca.revoke(martin)
    assert watch.revalidate_now() == 0
    assert a.reasons == b.reasons == []
    await watch.stop()


def test_the_decision_alone() -> None:
    """`CardSessions` decides from a check of cards: no clock, no file, no loop."""
    now = dt.datetime.now(dt.UTC)

    def holder(serial: int) -> CardHolder:
        return CardHolder("person", IdNat.parse("899700000001"), "X", serial, now, issuer="CN=ca")

    sessions = CardSessions()
    a, b, c = Session(), Session(), Session()
    assert sessions.add(a, holder(1)) is True
    assert sessions.add(b, holder(1)) is False  # the same card: one entry
    assert sessions.add(c, holder(2)) is True
    assert sessions.cards == 2
    refused = {2: CardRefusal.REVOKED}
    ending = sessions.ending(lambda card: refused.get(card.serial))
    assert ending == [(("CN=ca", 2), CARD_REVOKED)]
    assert sessions.take(("CN=ca", 2)) == [c]
    assert len(sessions) == 2
    assert sessions.discard(a) is None
    assert sessions.discard(b) == ("CN=ca", 1)
    assert len(sessions) == 0
    assert sessions.cards == 0


async def test_a_ca_no_longer_trusted_ends_its_cards_sessions(tmp_path: Path) -> None:
    """Fail closed: a card whose issuer the verifier does not hold does not stand."""
    ca = authority(tmp_path / "old")
    _, martin_card = ca.card("dr-martin")
    other = CpsAuthority.load_or_create(tmp_path / "new")
    renamed = dataclasses.replace(martin_card, issuer="CN=somebody else")
    watch = CardSessionWatch(CardVerifier([other.certificate], other.crl_path), interval=0)
    session = Session()
    watch.add(session, renamed)
    await asyncio.wait_for(session.ended.wait(), BOUND)
    assert session.reasons == [ISSUER_NOT_TRUSTED]
    await watch.stop()
