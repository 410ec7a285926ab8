"""Change events on delegations, so live IMAP/SMTP sessions learn of a revocation at once.

A `ChangeBus` fans events out to subscribers. `LocalBus` serves one process (SQLite, the
demo); `PostgresBus` also carries them between gateway nodes sharing one PostgreSQL,
through ``LISTEN/NOTIFY``. Each subscriber has a bounded queue: when a slow one falls
behind, the oldest events are dropped and its `overflowed` flag is raised, which means
"you may have missed changes: re-check what you hold" (also raised after the PostgreSQL
listener had to reconnect, since notifications sent meanwhile are lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, cast, get_args

import asyncpg

from delegation.db import asyncpg_dsn, is_postgresql

log = logging.getLogger(__name__)

ChangeKind = Literal["granted", "updated", "revoked", "expired", "moved"]
"""`moved`: the mailbox now lives on another backend (`delegate_idnat` empty): decisions
remembered for it are stale, its sessions on the old backend end."""
CHANNEL = "lps_delegation"
DEFAULT_QUEUE_SIZE = 1_000
_KINDS: frozenset[str] = frozenset(get_args(ChangeKind))


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A delegation changed: sessions of `delegate_idnat` on `mailbox` must re-check rights."""

    kind: ChangeKind
    mailbox: str
    delegate_idnat: str
    delegation_id: int
    at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "mailbox": self.mailbox,
            "delegate_idnat": self.delegate_idnat,
            "delegation_id": self.delegation_id,
            "at": self.at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: object) -> ChangeEvent:
        """Parse a payload from the wire; ValueError on anything unexpected."""
        if not isinstance(data, dict):
            raise ValueError("change event payload is not an object")
        kind, mailbox, delegate = data.get("kind"), data.get("mailbox"), data.get("delegate_idnat")
        delegation_id, at = data.get("delegation_id"), data.get("at")
        if kind not in _KINDS or not isinstance(kind, str):
            raise ValueError(f"unknown change kind {kind!r}")
        if not isinstance(mailbox, str) or not isinstance(delegate, str):
            raise ValueError("change event without mailbox or delegate")
        if not isinstance(delegation_id, int) or isinstance(delegation_id, bool):
            raise ValueError("change event without delegation id")
        if not isinstance(at, str):
            raise ValueError("change event without time")
        when = dt.datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("change event time without time zone")
        return cls(
            cast(ChangeKind, kind), mailbox, delegate, delegation_id, when.astimezone(dt.UTC)
        )


class Subscription:
    """One subscriber's bounded queue; an async iterator and an async context manager.

    Iteration ends when the subscription (or its bus) is closed; leaving the ``async with``
    block unsubscribes.
    """

    def __init__(self, maxsize: int, on_close: Callable[[Subscription], None]) -> None:
        if maxsize < 1:
            raise ValueError("a subscription queue holds at least one event")
        self._items: deque[ChangeEvent] = deque()
        self._maxsize = maxsize
        self._wakeup = asyncio.Event()
        self._on_close = on_close
        self._closed = False
        self.dropped = 0

    @property
    def overflowed(self) -> bool:
        """True when events may have been missed since the last `clear_overflow`."""
        return self.dropped > 0

    def clear_overflow(self) -> int:
        """Acknowledge the overflow (after a full re-check); returns how many were lost."""
        dropped, self.dropped = self.dropped, 0
        return dropped

    @property
    def closed(self) -> bool:
        return self._closed

    def deliver(self, event: ChangeEvent) -> None:
        """Queue an event; drop the oldest when full (the bus never waits on a subscriber)."""
        if self._closed:
            return
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(event)
        self._wakeup.set()

    def mark_gap(self) -> None:
        """Events may have been lost upstream (e.g. the listener reconnected)."""
        if not self._closed:
            self.dropped += 1
            self._wakeup.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._items.clear()
        self._wakeup.set()
        self._on_close(self)

    async def get(self) -> ChangeEvent:
        """The next event; StopAsyncIteration once closed."""
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ChangeEvent:
        return await self.get()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ChangeBus:
    """Fan-out of change events to in-process subscribers (and, for some buses, to peers)."""

    def __init__(self, *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._subscriptions: set[Subscription] = set()

    def subscribe(self, *, queue_size: int | None = None) -> Subscription:
        """A new subscription, receiving events published from now on."""
        subscription = Subscription(queue_size or self._queue_size, self._subscriptions.discard)
        self._subscriptions.add(subscription)
        return subscription

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def _deliver_local(self, event: ChangeEvent) -> None:
        for subscription in list(self._subscriptions):
            subscription.deliver(event)

    async def publish(self, event: ChangeEvent) -> None:
        """Deliver to every subscriber of this bus (and of its peers, if any)."""
        raise NotImplementedError

    async def start(self) -> None:
        """Get ready to receive peers' events (nothing to do for a local bus)."""

    async def close(self) -> None:
        """Stop, and end every subscription's iteration."""
        for subscription in list(self._subscriptions):
            subscription.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class LocalBus(ChangeBus):
    """In-process only: enough for one gateway node (SQLite, the demo, tests)."""

    async def publish(self, event: ChangeEvent) -> None:
        self._deliver_local(event)


_PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class PostgresBus(ChangeBus):
    """Events through PostgreSQL ``NOTIFY lps_delegation``: every node, this one included.

    Local subscribers get an event at once from `publish` (even while the listener is
    reconnecting); the bus ignores the echo of its own notifications by an origin id in
    the JSON payload. One connection listens (reconnected with exponential backoff, a
    ``SELECT 1`` probe catching silent drops); another, opened on demand, notifies.
    """

    def __init__(
        self,
        dsn: str,
        *,
        channel: str = CHANNEL,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        connect_timeout: float = 10.0,
        probe_interval: float = 15.0,
        backoff_min: float = 0.1,
        backoff_max: float = 10.0,
    ) -> None:
        super().__init__(queue_size=queue_size)
        self._dsn = dsn
        self._channel = channel
        self._origin = uuid.uuid4().hex
        self._connect_timeout = connect_timeout
        self._probe_interval = probe_interval
        self._backoff = (backoff_min, backoff_max)
        self._listening = asyncio.Event()
        self._listener_task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection[Any] | None = None
        self._notifier: asyncpg.Connection[Any] | None = None
        self._notify_lock = asyncio.Lock()
        self._closed = False

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    @property
    def listener_pid(self) -> int | None:
        """The server process of the listening connection (operations, tests)."""
        conn = self._listener
        return conn.get_server_pid() if conn is not None and not conn.is_closed() else None

    def subscribe(self, *, queue_size: int | None = None) -> Subscription:
        """Subscribe (starting the listener if needed: call `start` to wait until it listens)."""
        self._ensure_listener()
        return super().subscribe(queue_size=queue_size)

    async def start(self) -> None:
        """Start listening and wait until ``LISTEN`` is in place (TimeoutError otherwise)."""
        self._ensure_listener()
        await asyncio.wait_for(self._listening.wait(), self._connect_timeout * 2)

    def _ensure_listener(self) -> None:
        if self._closed:
            raise RuntimeError("bus closed")
        if self._listener_task is None or self._listener_task.done():
            self._listener_task = asyncio.get_running_loop().create_task(
                self._listen_forever(), name=f"delegation-bus-{self._origin[:8]}"
            )

    async def publish(self, event: ChangeEvent) -> None:
        """Deliver locally, then notify the other nodes (raises if PostgreSQL is unreachable)."""
        self._deliver_local(event)
        payload = json.dumps({**event.to_json(), "origin": self._origin}, separators=(",", ":"))
        async with self._notify_lock:
            for attempt in (1, 2):  # the cached connection may have died: one fresh retry
                try:
                    conn = await self._notify_connection()
                    await conn.execute("SELECT pg_notify($1, $2)", self._channel, payload)
                    return
                except _PG_ERRORS:
                    await self._drop_notifier()
                    if attempt == 2:
                        raise

    async def _notify_connection(self) -> asyncpg.Connection[Any]:
        if self._notifier is None or self._notifier.is_closed():
            self._notifier = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        return self._notifier

    async def _drop_notifier(self) -> None:
        conn, self._notifier = self._notifier, None
        if conn is not None:
            conn.terminate()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            data = json.loads(payload) if isinstance(payload, str) else None
            if isinstance(data, dict) and data.get("origin") == self._origin:
                return  # our own, already delivered by publish()
            event = ChangeEvent.from_json(data)
        except ValueError:
            log.warning("ignoring malformed notification on %s", self._channel)
            return
        self._deliver_local(event)

    async def _listen_forever(self) -> None:
        delay = self._backoff[0]
        connected_before = False
        while not self._closed:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
            except _PG_ERRORS as exc:
                log.warning("delegation bus: cannot connect (%s); retry in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(_setter(lost))
            self._listener = conn
            try:
                await conn.add_listener(self._channel, self._on_notify)
                if connected_before:
                    for subscription in list(self._subscriptions):
                        subscription.mark_gap()
                connected_before = True
                delay = self._backoff[0]
                self._listening.set()
                await self._watch(conn, lost)
            except _PG_ERRORS as exc:
                log.warning("delegation bus: listener lost (%s); reconnecting", exc)
            finally:
                self._listening.clear()
                self._listener = None
                conn.terminate()
            if not self._closed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])

    async def _watch(self, conn: asyncpg.Connection[Any], lost: asyncio.Event) -> None:
        """Return when the connection is gone; probe it so a silent drop is noticed too."""
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._probe_interval)
                return
            await asyncio.wait_for(conn.execute("SELECT 1"), self._connect_timeout)

    async def close(self) -> None:
        self._closed = True
        task, self._listener_task = self._listener_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._notify_lock:
            await self._drop_notifier()
        await super().close()


def _setter(flag: asyncio.Event) -> Callable[[object], None]:
    def set_flag(_conn: object) -> None:
        flag.set()

    return set_flag


def bus_for_url(url: str, **options: Any) -> ChangeBus:
    """The bus matching the database: PostgreSQL nodes share events, SQLite stays local."""
    if is_postgresql(url):
        return PostgresBus(asyncpg_dsn(url), **options)
    return LocalBus(**options)
