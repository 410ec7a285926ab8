"""The PSC session watch on its own, with a scripted provider: who is asked, who is ended."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field

import pytest

from gateway.psc_sessions import AFTER_EXPIRY, PSC_SESSION_ENDED, PscSessionWatch
from psc_auth import AuthMeans, Identity, IdNat, TokenError, TokenFailure, ValidatorConfig


@dataclass
class Provider:
    """Answers `is_active` as the test says; records what was asked."""

    inactive: set[str] = field(default_factory=set)
    down: bool = False
    asked: list[str] = field(default_factory=list)
    marked: list[str] = field(default_factory=list)
    ended_sessions: list[str | None] = field(default_factory=list)
    config: ValidatorConfig = field(default_factory=ValidatorConfig)

    async def is_active(self, token: str) -> bool:
        self.asked.append(token)
        if self.down:
            raise TokenError(TokenFailure.PROVIDER_UNREACHABLE, "down")
        return token not in self.inactive

    def mark_inactive(self, token: str, until: float, psc_session: str | None = None) -> None:
        self.marked.append(token)
        self.ended_sessions.append(psc_session)


@dataclass(eq=False)
class Session:
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None

    def kick(self, reason: str) -> None:
        self.reason = reason
        self.ended.set()


def in_(seconds: float, psc_session: str | None = None) -> Identity:
    """Who a token expiring in `seconds` says the person is, in PSC session `psc_session`."""
    return Identity(
        idnat=IdNat.parse("899700000003"),
        subject="s",
        given_name="Sophie",
        family_name="BERNARD",
        professions=(),
        auth_means=AuthMeans.ECPS,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds),
        token_id="t",
        client_id="lps-demo",
        claims={"sid": psc_session} if psc_session else {},
    )


def watch(provider: Provider, **extra: float) -> PscSessionWatch:
    values = {"interval": 60.0, "max_after_expiry": 1800.0, **extra}
    return PscSessionWatch(
        provider,  # type: ignore[arg-type]
        interval=values["interval"],
        max_after_expiry=values["max_after_expiry"],
        revalidate=True,
    )


async def test_one_question_per_token_and_its_sessions_end_together() -> None:
    provider = Provider()
    watcher = watch(provider)
    a1, a2, b = Session(), Session(), Session()
    watcher.add(a1, "token-a", in_(120))
    watcher.add(a2, "token-a", in_(120))
    watcher.add(b, "token-b", in_(120))
    assert await watcher.revalidate_now() == 0
    assert sorted(provider.asked) == ["token-a", "token-b"]
    provider.inactive.add("token-a")
    assert await watcher.revalidate_now() == 2
    assert a1.reason == a2.reason == PSC_SESSION_ENDED
    assert b.reason is None
    assert provider.marked == ["token-a"]  # a new login with it is refused too
    assert watcher.sessions == 1
    await watcher.stop()


async def test_a_provider_that_does_not_answer_ends_nothing() -> None:
    provider = Provider(down=True, inactive={"token-a"})
    watcher = watch(provider)
    session = Session()
    watcher.add(session, "token-a", in_(120))
    assert await watcher.revalidate_now() == 0
    assert session.reason is None
    await watcher.stop()


async def test_a_token_about_to_expire_is_not_asked() -> None:
    """PSC says inactive for an expired token: that says nothing of the session."""
    provider = Provider(inactive={"token-a"})
    watcher = watch(provider)
    session = Session()
    watcher.add(session, "token-a", in_(provider.config.clock_skew_seconds - 1))
    assert await watcher.revalidate_now() == 0
    assert provider.asked == []
    assert session.reason is None
    await watcher.stop()


async def test_a_session_lives_a_bounded_time_after_its_token_expired() -> None:
    watcher = watch(Provider(), max_after_expiry=0.2)
    session, later = Session(), Session()
    started = time.monotonic()
    watcher.add(session, "token-a", in_(0))
    watcher.add(later, "token-b", in_(3600))
    await asyncio.wait_for(session.ended.wait(), 10)
    assert time.monotonic() - started >= 0.15
    assert session.reason == AFTER_EXPIRY
    assert later.reason is None
    await watcher.stop()


async def test_a_session_that_left_is_forgotten() -> None:
    provider = Provider(inactive={"token-a"})
    watcher = watch(provider, max_after_expiry=0.0)
    session = Session()
    watcher.add(session, "token-a", in_(120))
    watcher.discard(session)
    assert watcher.sessions == 0
    assert await watcher.revalidate_now() == 0
    assert provider.asked == []
    await watcher.stop()


@pytest.mark.parametrize("interval", [0.05])
async def test_rounds_run_by_themselves(interval: float) -> None:
    provider = Provider()
    watcher = watch(provider, interval=interval)
    session = Session()
    watcher.add(session, "token-a", in_(120))
    watcher.start()
    provider.inactive.add("token-a")
    await asyncio.wait_for(session.ended.wait(), 10)
    assert session.reason == PSC_SESSION_ENDED
    await watcher.stop()


async def test_a_psc_session_is_asked_once_with_its_freshest_token() -> None:
    """An LPS logs in again every two minutes with fresh tokens of one PSC session: its
    older sessions, whose tokens have expired, end with it all the same."""
    provider = Provider()
    watcher = watch(provider)
    old, new, other = Session(), Session(), Session()
    watcher.add(old, "token-1", in_(10, "sid-a"))  # within the clock skew: not asked alone
    watcher.add(new, "token-2", in_(120, "sid-a"))
    watcher.add(other, "token-3", in_(120, "sid-b"))
    assert await watcher.revalidate_now() == 0
    assert sorted(provider.asked) == ["token-2", "token-3"]
    provider.inactive.add("token-2")
    assert await watcher.revalidate_now() == 2
    assert old.reason == new.reason == PSC_SESSION_ENDED
    assert other.reason is None
    assert provider.ended_sessions == ["sid-a"]  # its other tokens are refused at login
    await watcher.stop()
