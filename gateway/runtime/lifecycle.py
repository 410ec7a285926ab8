"""Run services until SIGINT or SIGTERM (or SIGHUP: a closed terminal's), then drain and
stop them in reverse order (a signal while they start stops them too: a service's start
is cancelled, not waited for)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from gateway.runtime.asgi_server import CannotListen

STOPS = (signal.SIGINT, signal.SIGTERM)


class Service(Protocol):
    """A service may also have `async def drain()`: on a signal, before any is stopped,
    each stops taking new work and lets the work under way end (a node shutting down)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def run_until_signalled(
    services: Sequence[Service],
    on_started: Callable[[], Awaitable[None] | None] | None = None,
    *,
    hangup: bool = True,
) -> None:
    """`hangup`: SIGHUP stops as SIGTERM does, rather than by its default death that
    drains nothing (no sessions told, the audit queue lost); False for a worker, which
    ignores it (its supervisor drains the node)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    stops = (*STOPS, signal.SIGHUP) if hangup else STOPS
    for sig in stops:
        loop.add_signal_handler(sig, stopping.set)
    started: list[Service] = []
    try:
        for service in services:
            try:
                if not await _started(service, stopping):
                    with contextlib.suppress(Exception):
                        await service.stop()
                    return
            except BaseException:
                # what it had opened (a listener started, a port bound) closes before the
                # error is told, not as the loop is torn down under it
                with contextlib.suppress(Exception):
                    await service.stop()
                raise
            started.append(service)
        if on_started is not None:
            result = on_started()
            if result is not None:
                await result
        await stopping.wait()
        for service in reversed(started):
            drain = getattr(service, "drain", None)
            if drain is not None:
                await drain()
    finally:
        for sig in stops:
            loop.remove_signal_handler(sig)
        for service in reversed(started):
            await service.stop()


async def _started(service: Service, stopping: asyncio.Event) -> bool:
    """`service.start()`, or False when a signal came first (the start cancelled)."""
    starting = asyncio.ensure_future(service.start())
    signalled = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
    if starting.cancelled():
        return False
    starting.result()
    return True


def run_command(program: str, main: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run(main)` for a command that listens: a port that cannot be bound is one
    line on stderr naming it, and exit status 1, not a traceback."""
    try:
        asyncio.run(main)
    except CannotListen as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


async def cancelled(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background loop and wait until it is over (`None`: nothing to stop)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
