"""Waiting for a state, not for a time: poll a condition as the event loop turns, with a
generous bound that only a real failure reaches (CI runs on a busy 2-core machine)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

BOUND = 60.0  # seconds


async def until(condition: Callable[[], bool], what: str, *, bound: float = BOUND) -> None:
    """Return once `condition()` holds; AssertionError naming `what` past `bound`."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {bound:g} s: {what}")
        await asyncio.sleep(0.02)
