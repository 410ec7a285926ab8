"""The legacy front's session cookies: opened by a one-time-password login (the historic
platform's OTP while the BAL lives there, a PSC CIBA approval afterwards), as on the old
platform, so that an LPS logs in once and then calls with the cookie.

Kept in memory, bounded: a restart asks people to log in again, which the historic
platform did too. Tokens are looked up by their SHA-256, so the lookup leaks no timing
about the secret, and are never logged.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.mss.historic_ws import HistoricSession

MAX_SESSIONS = 100_000


@dataclass(frozen=True)
class OpenSession:
    session: HistoricSession
    means: str  # otp, ciba


class SessionBook:
    def __init__(
        self,
        lifetime: int,
        *,
        limit: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime = lifetime
        self._limit = limit
        self._clock = clock
        self._sessions: OrderedDict[bytes, OpenSession] = OrderedDict()

    def open(self, idnat: str, means: str) -> HistoricSession:
        token = secrets.token_urlsafe(32)
        session = HistoricSession(token, idnat, self._clock() + self.lifetime)
        self._sessions[_key(token)] = OpenSession(session, means)
        while len(self._sessions) > self._limit:
            self._sessions.popitem(last=False)  # the oldest goes first
        return session

    def find(self, token: str) -> OpenSession | None:
        """The live session of this cookie value; None when unknown or expired."""
        if not token or len(token) > 128:
            return None
        key = _key(token)
        found = self._sessions.get(key)
        if found is None:
            return None
        if found.session.expires_at <= self._clock():
            del self._sessions[key]
            return None
        return found

    def close(self, token: str) -> None:
        self._sessions.pop(_key(token), None)

    def __len__(self) -> int:
        return len(self._sessions)


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()
