"""Sessions end when the Pro Santé Connect session behind their token ends.

An IMAP or SMTP session is opened with an access token that lives two minutes, yet the
session may last hours. The LPS should close it when its refresh token stops working
(ECO.1.2.6); for a careless one, the gateway makes it so. OpenID back-channel logout only
reaches the client that holds the PSC session (the LPS), never a resource server, so the
gateway asks PSC itself: while a token is valid, it is introspected every
`revalidate_interval` (one call per distinct token, whatever the number of sessions it
opened) and `active: false` ends its sessions; once it has expired, its sessions live at
most `session_max_after_token_expiry` more, then are asked to log in again with a fresh
token, which proves the PSC session still lives. A provider that does not answer ends
nothing: an outage of PSC must not cut every practice off.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from psc_auth import TokenError, TokenValidator

log = logging.getLogger(__name__)

PSC_SESSION_ENDED = "PSC session ended, log in again"
AFTER_EXPIRY = "access token expired, log in again with a fresh token"
CONCURRENT_CHECKS = 8


class Endable(Protocol):
    """A session the watch can end (an IMAP relay, a served session, an SMTP session)."""

    def kick(self, reason: str) -> None: ...


@dataclass
class _Token:
    token: str = field(repr=False)
    expires_at: float
    sessions: set[Endable] = field(default_factory=set)
    expiry: asyncio.TimerHandle | None = None


class PscSessionWatch:
    """The node's sessions by the token that opened them. `revalidate` is False when the
    gateway has no introspection credentials: then only the expiry bound applies."""

    def __init__(
        self,
        validator: TokenValidator,
        *,
        interval: float,
        max_after_expiry: float,
        revalidate: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.validator = validator
        self.interval = interval
        self.max_after_expiry = max_after_expiry
        self.revalidate = revalidate and interval > 0
        self._clock = clock
        self._tokens: dict[bytes, _Token] = {}
        self._of: dict[Endable, bytes] = {}
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # revalidation rounds done, for tests and operators

    @property
    def sessions(self) -> int:
        """How many sessions are watched."""
        return len(self._of)

    def add(self, session: Endable, token: str, expires_at: dt.datetime) -> None:
        key = hashlib.sha256(token.encode()).digest()
        watched = self._tokens.get(key)
        if watched is None:
            watched = self._tokens[key] = _Token(token, expires_at.timestamp())
            delay = watched.expires_at + self.max_after_expiry - self._clock()
            watched.expiry = asyncio.get_running_loop().call_later(
                max(0.0, delay), self._end, key, AFTER_EXPIRY
            )
        watched.sessions.add(session)
        self._of[session] = key

    def discard(self, session: Endable) -> None:
        key = self._of.pop(session, None)
        watched = self._tokens.get(key) if key is not None else None
        if watched is None or key is None:
            return
        watched.sessions.discard(session)
        if not watched.sessions:
            self._forget(key)

    def start(self) -> None:
        if self.revalidate and self._task is None:
            self._task = asyncio.create_task(self._revalidate_forever(), name="psc-sessions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for key in list(self._tokens):
            self._forget(key)
        self._of.clear()

    async def revalidate_now(self) -> int:
        """One round: introspect every token still valid; return how many sessions ended."""
        now = self._clock()
        skew = self.validator.config.clock_skew_seconds
        due = [(k, w) for k, w in self._tokens.items() if w.expires_at - skew > now]
        limit = asyncio.Semaphore(CONCURRENT_CHECKS)

        async def check(key: bytes, watched: _Token) -> int:
            async with limit:
                try:
                    active = await self.validator.is_active(watched.token)
                except TokenError as exc:
                    log.warning("psc.revalidation_unavailable", extra={"error": exc.failure.value})
                    return 0
            if active or watched.expires_at - skew <= self._clock():
                return 0  # an answer about a token that just expired says nothing of its session
            self.validator.mark_inactive(watched.token, watched.expires_at)
            return self._end(key, PSC_SESSION_ENDED)

        ended = sum(await asyncio.gather(*(check(key, watched) for key, watched in due)))
        self.rounds += 1
        return ended

    async def _revalidate_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.revalidate_now()
            except Exception:
                log.exception("psc.revalidation_failed")

    def _end(self, key: bytes, reason: str) -> int:
        watched = self._tokens.get(key)
        if watched is None:
            return 0
        sessions = list(watched.sessions)
        log.info("psc.sessions_ended", extra={"sessions": len(sessions), "reason": reason})
        for session in sessions:
            session.kick(reason)
            self._of.pop(session, None)
        self._forget(key)
        return len(sessions)

    def _forget(self, key: bytes) -> None:
        watched = self._tokens.pop(key, None)
        if watched is not None and watched.expiry is not None:
            watched.expiry.cancel()
