"""The page's session store: logins under way cannot push out logged-in sessions, nor one
address's pending logins another's."""

from __future__ import annotations

import pytest

from gateway.web import sessions
from gateway.web.sessions import IDLE_SECONDS, MAX_PENDING_PER_ADDRESS, SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_logins_pushes_out_no_holder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 50)
    store = SessionStore()
    holder = store.create()
    other = store.create_pending("192.0.2.1")
    for _ in range(10_000):
        store.create_pending("203.0.113.66")
    assert store.get(holder.id) is holder
    assert store.get(other.id) is other  # the flood came from another address
    flooder = [store.create_pending("203.0.113.66") for _ in range(MAX_PENDING_PER_ADDRESS)]
    assert all(store.get(s.id) is s for s in flooder)


def test_many_addresses_push_out_the_oldest_pending_login(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 50)
    store = SessionStore()
    first = store.create_pending("192.0.2.1")
    for n in range(60):
        store.create_pending(f"198.51.100.{n}")
    assert store.get(first.id) is None


def test_sessions_idle_out_and_drop() -> None:
    clock = Clock()
    store = SessionStore(clock)
    session = store.create()
    pending = store.create_pending("192.0.2.1")
    clock.now += IDLE_SECONDS + 1
    assert store.get(session.id) is None
    assert store.get(pending.id) is None
    again = store.create_pending("192.0.2.1")
    store.drop(again.id)
    assert store.get(again.id) is None
    store.drop("unknown")
