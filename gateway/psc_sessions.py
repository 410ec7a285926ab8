"""Sessions end when the Pro Santé Connect session behind their token ends.

An IMAP or SMTP session is opened with an access token that lives two minutes, yet the
session may last hours. The LPS should close it when its refresh token stops working
(ECO.1.2.6); for a careless one, the gateway makes it so. OpenID back-channel logout only
reaches the client that holds the PSC session (the LPS), never a resource server, so the
gateway asks PSC itself: every `revalidate_interval`, one token per PSC session (the
`sid` its tokens carry: an LPS logs in again every two minutes with fresh ones) is
introspected, the freshest still valid, and `active: false` ends every session opened with
a token of that PSC session, whose tokens are then refused at login too. A session whose
own token has expired lives at most `session_max_after_token_expiry` more, then is asked
to log in again with a fresh token, which proves the PSC session still lives. A provider
that does not answer ends nothing: an outage of PSC must not cut every practice off.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.runtime.lifecycle import cancelled
from psc_auth import Identity, TokenError, TokenValidator

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
    psc_session: str | None  # the PSC session it belongs to; None: its own
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

    def add(self, session: Endable, token: str, identity: Identity) -> None:
        """Watch `session`, opened with `token` (validated as `identity`)."""
        key = hashlib.sha256(token.encode()).digest()
        watched = self._tokens.get(key)
        if watched is None:
            expires_at = identity.expires_at.timestamp()
            watched = self._tokens[key] = _Token(token, expires_at, identity.psc_session)
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
        await cancelled(self._task)
        self._task = None
        for key in list(self._tokens):
            self._forget(key)
        self._of.clear()

    async def revalidate_now(self) -> int:
        """One round: for each PSC session, introspect its freshest token still valid;
        return how many sessions ended."""
        now = self._clock()
        skew = self.validator.config.clock_skew_seconds
        groups: dict[object, list[bytes]] = {}
        for key, watched in self._tokens.items():
            groups.setdefault(watched.psc_session or key, []).append(key)
        limit = asyncio.Semaphore(CONCURRENT_CHECKS)

        async def check(keys: list[bytes]) -> int:
            freshest = max(keys, key=lambda k: self._tokens[k].expires_at)
            watched = self._tokens[freshest]
            if watched.expires_at - skew <= now:
                return 0  # PSC says inactive for an expired token: that says nothing
            async with limit:
                try:
                    active = await self.validator.is_active(watched.token)
                except TokenError as exc:
                    log.warning("psc.revalidation_unavailable", extra={"error": exc.failure.value})
                    return 0
            if active or watched.expires_at - skew <= self._clock():
                return 0
            self.validator.mark_inactive(watched.token, watched.expires_at, watched.psc_session)
            return sum(self._end(key, PSC_SESSION_ENDED) for key in keys)

        ended = sum(await asyncio.gather(*(check(keys) for keys in groups.values())))
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
