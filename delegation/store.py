"""The database plumbing every part of the delegation service shares.

The parts (decisions, grants, directory, mailboxes, audit trail) each hold a reference to
one `Store`, so they share its clock, its bus and, above all, its write lock:

* On SQLite, writes are serialised by an in-process lock (SQLite has one writer); on
  PostgreSQL, changes to one mailbox's delegations are serialised by a row lock on the
  mailbox (taken by the grants), so concurrent grants and revokes end in a consistent state.
* A unique-key race with another node is retried, and ends as a `Conflict`.
* Changes are published on the `ChangeBus` only after their transaction committed, so a
  subscriber that re-checks sees the new state; a bus failure then is logged, not raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from delegation.errors import Conflict
from delegation.events import ChangeBus, ChangeEvent, LocalBus

log = logging.getLogger("delegation.service")  # the name log filters have always matched

Clock = Callable[[], dt.datetime]
_T = TypeVar("_T")
_ON_COMMIT = "lps_on_commit"  # AsyncSession.info key: what to do once it committed


def on_commit(db: AsyncSession, prepare: Callable[[], Callable[[], None]]) -> None:
    """Within `Store.writing`: run `prepare` once `db`'s changes are flushed, still inside
    the transaction (ids known, nothing expired), and what it returns once the transaction
    committed, so that a listener hears only of what was really written."""
    db.info.setdefault(_ON_COMMIT, []).append(prepare)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Store:
    """Sessions, the write lock, the clock and the change bus of one delegation service."""

    def __init__(
        self,
        db: AsyncEngine | async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utc_now,
        bus: ChangeBus | None = None,
    ) -> None:
        if isinstance(db, AsyncEngine):
            engine: object = db
            self._sessions = async_sessionmaker(db, expire_on_commit=False)
        else:
            engine = db.kw.get("bind")
            self._sessions = db
        # SQLite has one writer: queue writers here rather than fail with "database is locked".
        self._serialise = not isinstance(engine, AsyncEngine) or engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock()
        self._clock = clock
        self.bus: ChangeBus = bus if bus is not None else LocalBus()

    def now(self) -> dt.datetime:
        """The service clock (injectable for tests); always aware UTC."""
        value = self._clock()
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("the delegation clock must return aware datetimes")
        return value.astimezone(dt.UTC)

    def reading(self) -> AsyncSession:
        """A session for reads: no write lock, no explicit transaction."""
        return self._sessions()

    async def ping(self) -> None:
        """Run `SELECT 1`: the readiness probe's proof that the database answers (raises)."""
        async with self._sessions() as db:
            await db.execute(text("SELECT 1"))

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncSession]:
        """A transaction that commits on exit (rolls back on an exception), behind the write
        lock on SQLite."""
        lock: contextlib.AbstractAsyncContextManager[object] = (
            self._write_lock if self._serialise else contextlib.nullcontext()
        )
        committed: list[Callable[[], None]] = []
        async with lock, self._sessions.begin() as db:
            yield db
            if prepared := db.info.pop(_ON_COMMIT, None):
                await db.flush()
                committed = [prepare() for prepare in prepared]
        for tell in committed:
            tell()

    async def retry_on_integrity(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run a write; a unique-key race with another node is retried, then a Conflict."""
        for remaining in (2, 1, 0):
            try:
                return await attempt()
            except IntegrityError as exc:
                if remaining == 0:
                    raise Conflict(f"concurrent change: {exc.orig}") from None
        raise AssertionError("unreachable")

    async def publish(self, events: Iterable[ChangeEvent]) -> None:
        """After commit: the change is durable, so a bus failure is logged, not raised."""
        for event in events:
            try:
                await self.bus.publish(event)
            except Exception:
                log.exception(
                    "could not publish %s on delegation %s", event.kind, event.delegation_id
                )
