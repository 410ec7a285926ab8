"""Browser sessions of the web pages: server-side, bounded, idle- and age-limited.

The cookie carries only a random id; the identity, the CSRF token and the pending login
(state, PKCE verifier, nonce) stay on the server.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from psc_auth import Identity

COOKIE = "lpsgw_session"
MAX_SESSIONS = 10_000
IDLE_SECONDS = 30 * 60  # as a PSC session
MAX_AGE_SECONDS = 4 * 3600


@dataclass
class PendingLogin:
    state: str
    verifier: str
    nonce: str
    created_at: float


@dataclass
class WebSession:
    id: str
    created_at: float
    seen_at: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    identity: Identity | None = None
    pending: PendingLogin | None = None
    flash: str | None = None

    def check_csrf(self, value: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), value.encode())


class SessionStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._sessions: OrderedDict[str, WebSession] = OrderedDict()
        self._clock = clock

    def get(self, session_id: str | None) -> WebSession | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen_at > IDLE_SECONDS or now - session.created_at > MAX_AGE_SECONDS:
            del self._sessions[session_id]
            return None
        session.seen_at = now
        self._sessions.move_to_end(session_id)
        return session

    def create(self) -> WebSession:
        now = self._clock()
        session = WebSession(secrets.token_urlsafe(32), now, now)
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
