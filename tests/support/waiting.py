"""Waiting for a state, not for a time: poll a condition as the event loop turns, with a
generous bound that only a real failure reaches (CI runs on a busy 2-core machine)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

BOUND = 60.0  # seconds


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, *, bound: float = BOUND
) -> None:
    """Return once `await check()` holds (a state read over the network or from a
    database, with no event of its own); AssertionError naming `what` past `bound`."""
    deadline = time.monotonic() + bound
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {bound:g} s: {what}")
        await asyncio.sleep(0.02)


async def until(condition: Callable[[], bool], what: str, *, bound: float = BOUND) -> None:
    """`eventually` for a condition read in this process."""

    async def check() -> bool:
        return condition()

    await eventually(check, what, bound=bound)


def settled(condition: Callable[[], object], what: str, *, bound: float = BOUND) -> None:
    """`until` for code outside an event loop (a context manager starting peers): blocks,
    polling `condition` (an OSError counts as not yet) until it holds."""
    deadline = time.monotonic() + bound
    while True:
        try:
            if condition():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {bound:g} s: {what}")
        time.sleep(0.02)
