"""Browser sessions of the web pages: server-side, bounded, idle- and age-limited.

The cookie carries only a random id; the identity, the CSRF token and the pending login
(state, PKCE verifier, nonce) stay on the server.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from psc_auth import Identity

COOKIE = "lpsgw_session"
MAX_SESSIONS = 10_000  # of each kind: logged in, and logins under way
MAX_PENDING_PER_ADDRESS = 20
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
    """Logged-in sessions and pending logins, kept apart: anyone can start a login, so a
    flood of them may only push out other pending logins, never a holder's session; and
    each client address holds at most `MAX_PENDING_PER_ADDRESS` of them, so that one
    address cannot push out another's."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._sessions: OrderedDict[str, WebSession] = OrderedDict()
        self._pending: OrderedDict[str, WebSession] = OrderedDict()
        self._owner: dict[str, str] = {}  # pending id -> the address that started it
        self._by_owner: dict[str, deque[str]] = {}
        self._clock = clock

    def get(self, session_id: str | None) -> WebSession | None:
        if not session_id:
            return None
        pool = self._sessions if session_id in self._sessions else self._pending
        session = pool.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen_at > IDLE_SECONDS or now - session.created_at > MAX_AGE_SECONDS:
            self.drop(session_id)
            return None
        session.seen_at = now
        pool.move_to_end(session_id)
        return session

    def create(self) -> WebSession:
        """A logged-in session (made once PSC has answered)."""
        session = self._new()
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def create_pending(self, owner: str) -> WebSession:
        """A session for a login under way, started from the client address `owner`."""
        mine = self._by_owner.setdefault(owner, deque())
        while len(mine) >= MAX_PENDING_PER_ADDRESS:
            self.drop(mine[0])
        session = self._new()
        self._pending[session.id] = session
        self._owner[session.id] = owner
        mine.append(session.id)
        while len(self._pending) > MAX_SESSIONS:
            self.drop(next(iter(self._pending)))
        return session

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        if self._pending.pop(session_id, None) is None:
            return
        owner = self._owner.pop(session_id)
        mine = self._by_owner[owner]
        mine.remove(session_id)
        if not mine:
            del self._by_owner[owner]

    def _new(self) -> WebSession:
        now = self._clock()
        return WebSession(secrets.token_urlsafe(32), now, now)
