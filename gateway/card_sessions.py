"""Sessions opened with a CPS card end when the card is revoked or expires.

A card login is checked against the revocation list once, at login; the session may then
last hours. `mock-operator card PERSONA --revoke` (or the IGC Santé publishing a new list)
must end it, as must the card's own end of validity. So every card session (IMAP relayed,
IMAP served, SMTP) is watched here from login to logout:

* every `revalidate_interval` the verifier looks at its revocation list file (one
  ``stat``; read again only when it changed) and each open card is checked against it:
  a revoked card, or a list that became unusable (missing, unsigned, out of date: then
  no card is taken at login either), ends every session of that card;
* one timer per card ends its sessions when its `not_after` passes (no polling).

Ending is the fronts' `kick(reason)`: IMAP says ``* BYE card revoked``, SMTP ``421``, and
each kick leaves a ``session-end`` audit event (who, BAL, delegation, the reason).
`CardSessions` holds the decision (no I/O, no clock); `CardSessionWatch` is the asyncio
glue. Memory is one entry per open session, gone at logout: the fronts' session caps bound it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.psc_sessions import Endable
from gateway.runtime.lifecycle import cancelled
from psc_auth.certificates import CardHolder, CardRefusal, CardVerifier

log = logging.getLogger(__name__)

CARD_REVOKED = "card revoked"
CARD_EXPIRED = "card expired"
NO_REVOCATION_LIST = "card revocation list unavailable"
ISSUER_NOT_TRUSTED = "card issuer no longer trusted"

REASONS: dict[CardRefusal, str] = {
    CardRefusal.REVOKED: CARD_REVOKED,
    CardRefusal.EXPIRED: CARD_EXPIRED,
    CardRefusal.NO_REVOCATION_LIST: NO_REVOCATION_LIST,
    CardRefusal.UNKNOWN_ISSUER: ISSUER_NOT_TRUSTED,
}

CardKey = tuple[str, int]
"""A card: its issuer (RFC 4514) and serial number."""

Standing = Callable[[CardHolder], CardRefusal | None]
"""`CardVerifier.standing()`: None while a card stands, else why not."""


def key_of(card: CardHolder) -> CardKey:
    return (card.issuer, card.serial)


def reason_for(refusal: CardRefusal) -> str:
    """What an ended session is told (BYE, 421) and what its audit event says."""
    return REASONS.get(refusal, f"card refused ({refusal.value})")


@dataclass
class _Card:
    holder: CardHolder
    sessions: set[Endable] = field(default_factory=set)


class CardSessions:
    """Open sessions by the card that opened them: which to end, given a check of cards."""

    def __init__(self) -> None:
        self._cards: dict[CardKey, _Card] = {}
        self._of: dict[Endable, CardKey] = {}

    def __len__(self) -> int:
        return len(self._of)

    @property
    def cards(self) -> int:
        return len(self._cards)

    def add(self, session: Endable, card: CardHolder) -> bool:
        """Watch `session`, opened with `card`; True when the card was not watched yet."""
        key = key_of(card)
        watched = self._cards.get(key)
        new = watched is None
        if watched is None:
            watched = self._cards[key] = _Card(card)
        watched.sessions.add(session)
        self._of[session] = key
        return new

    def discard(self, session: Endable) -> CardKey | None:
        """Stop watching `session`: the key of its card when no session of it is left."""
        key = self._of.pop(session, None)
        watched = self._cards.get(key) if key is not None else None
        if watched is None or key is None:
            return None
        watched.sessions.discard(session)
        if watched.sessions:
            return None
        del self._cards[key]
        return key

    def ending(self, standing: Standing) -> list[tuple[CardKey, str]]:
        """The cards that no longer stand, with the reason their sessions are told."""
        ended: list[tuple[CardKey, str]] = []
        for key, watched in self._cards.items():
            refusal = standing(watched.holder)
            if refusal is not None:
                ended.append((key, reason_for(refusal)))
        return ended

    def take(self, key: CardKey) -> list[Endable]:
        """Forget the card `key` and return its sessions (to be ended)."""
        watched = self._cards.pop(key, None)
        if watched is None:
            return []
        for session in watched.sessions:
            self._of.pop(session, None)
        return list(watched.sessions)

    def clear(self) -> None:
        self._cards.clear()
        self._of.clear()


class CardSessionWatch:
    """The node's card sessions, ended when their card is revoked or expires. `interval`
    0: revocation is checked at login only (expiry still ends sessions)."""

    def __init__(self, verifier: CardVerifier, *, interval: float) -> None:
        self.verifier = verifier
        self.interval = interval
        self._sessions = CardSessions()
        self._expiry: dict[CardKey, asyncio.TimerHandle] = {}
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # revalidation rounds done, for tests and operators

    @property
    def sessions(self) -> int:
        """How many sessions are watched."""
        return len(self._sessions)

    def add(self, session: Endable, card: CardHolder) -> None:
        """Watch `session` opened with `card`. The card is checked once more now: a list
        published between its login's check and this call would otherwise be missed for
        it (later rounds would see the list unchanged but not this session)."""
        loop = asyncio.get_running_loop()
        key = key_of(card)
        if self._sessions.add(session, card):
            delay = (card.not_after - self.verifier.clock()).total_seconds()
            # past not_after, not at it: the verifier takes a card until then
            self._expiry[key] = loop.call_later(max(0.0, delay) + 0.001, self._expired, key)
        refusal = self.verifier.standing()(card)
        if refusal is not None:
            loop.call_soon(self._end, key, reason_for(refusal))

    def discard(self, session: Endable) -> None:
        key = self._sessions.discard(session)
        if key is not None:
            self._cancel_timer(key)

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._revalidate_forever(), name="card-sessions")

    async def stop(self) -> None:
        await cancelled(self._task)
        self._task = None
        for timer in self._expiry.values():
            timer.cancel()
        self._expiry.clear()
        self._sessions.clear()

    def revalidate_now(self) -> int:
        """One round: every open card against the revocation list as it is now; return
        how many sessions ended."""
        ending = self._sessions.ending(self.verifier.standing())
        self.rounds += 1
        return sum(self._end(key, reason) for key, reason in ending)

    async def _revalidate_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.revalidate_now()
            except Exception:
                log.exception("card.revalidation_failed")

    def _expired(self, key: CardKey) -> None:
        self._expiry.pop(key, None)
        self._end(key, CARD_EXPIRED)

    def _end(self, key: CardKey, reason: str) -> int:
        sessions = self._sessions.take(key)
        self._cancel_timer(key)
        if not sessions:
            return 0
        log.info(
            "card.sessions_ended",
            extra={"sessions": len(sessions), "reason": reason, "serial": f"{key[1]:x}"},
        )
        for session in sessions:
            try:
                session.kick(reason)
            except Exception:  # one session's failure must not spare the others
                log.exception("card.kick_failed")
        return len(sessions)

    def _cancel_timer(self, key: CardKey) -> None:
        timer = self._expiry.pop(key, None)
        if timer is not None:
            timer.cancel()
