"""The legacy front's pool of IMAP sessions: what the reaper closes, and what it must not
touch while a close is awaited (a session leased meanwhile stays leased)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.legacy_front.sessions import SessionPool, _Idle

KEY = ("modern", "claire.martin@medecin.mssante.fr")


class FakeAccess:
    def __init__(self, during_close: Any = None) -> None:
        self.closed = False
        self.during_close = during_close

    async def aclose(self) -> None:
        await asyncio.sleep(0)
        if self.during_close is not None:
            await self.during_close()
        self.closed = True


class FakeSession:
    broken = False

    def __init__(self, access: FakeAccess) -> None:
        self.access = access


async def test_a_session_leased_while_the_reaper_closes_another_is_not_put_back() -> None:
    now = [100.0]
    pool = SessionPool(idle=0.02, clock=lambda: now[0])
    leased: list[Any] = []

    async def lease_meanwhile() -> None:
        leased.append(await pool._take(KEY))

    old = FakeSession(FakeAccess(during_close=lease_meanwhile))
    fresh = FakeSession(FakeAccess())
    pool._idle[KEY] = [_Idle(fresh, now[0]), _Idle(old, now[0] - 1)]  # type: ignore[arg-type]
    pool._reaper = asyncio.create_task(pool._reap())
    await pool._reaper
    assert old.access.closed
    assert leased == [fresh]  # taken while `old` was being closed ...
    assert not fresh.access.closed
    assert pool.idle_of(*KEY) == []  # ... and not put back in the idle list by the reaper


async def test_take_closes_the_stale_and_lends_a_live_one() -> None:
    now = [100.0]
    pool = SessionPool(idle=10, clock=lambda: now[0])
    live = FakeSession(FakeAccess())
    stale = FakeSession(FakeAccess())
    broken = FakeSession(FakeAccess())
    broken.broken = True
    pool._idle[KEY] = [  # type: ignore[list-item]
        _Idle(live, 95.0),
        _Idle(stale, 80.0),
        _Idle(broken, 99.0),
    ]
    assert await pool._take(KEY) is live
    assert stale.access.closed
    assert broken.access.closed
    assert not live.access.closed


async def test_a_burst_for_one_bal_is_lent_a_few_sessions_at_a_time() -> None:
    """Ten requests at once for one BAL hold at most `leased_per_bal` turns (so as many
    backend connections), the others wait; another BAL is not kept waiting by them."""
    pool = SessionPool(leased_per_bal=3)
    release = asyncio.Event()
    most = 0
    other_served = asyncio.Event()

    async def request(key: tuple[str, str]) -> None:
        nonlocal most
        async with pool._turn(key):
            most = max(most, pool.leased(*KEY))
            if key == KEY:
                await release.wait()
            else:
                other_served.set()

    burst = [asyncio.create_task(request(KEY)) for _ in range(10)]
    other = asyncio.create_task(request(("modern", "jean.dupont@medecin.mssante.fr")))
    await other_served.wait()
    assert pool.leased(*KEY) == 3
    release.set()
    await asyncio.gather(*burst, other)
    assert most == 3
    assert pool.leased(*KEY) == 0
    assert pool._leased == {}
