"""The gateway's audit trail, written in the background and in batches.

Every access leaves an event (who, which BAL, through which delegation, from which
software, result), but a front must not wait for the database on each command: events are
queued and written many per transaction. `stop` drains the queue, so none is lost on a
clean shutdown (unless the database stays down through it, which is logged); a database
outage makes the writer retry and, once the queue is full, producers wait: nothing is
dropped silently.

One event never costs the others theirs: the registry clips or leaves out an event that
does not fit its row, and a batch the database refuses while it is up is written again
event by event, so that only the event it cannot take is lost (with a log line naming it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from delegation.audit import AuditRecord, described
from delegation.service import DelegationService
from gateway.runtime.lifecycle import cancelled

log = logging.getLogger(__name__)
_handed_over: set[asyncio.Future[None]] = set()  # kept referenced until they are done

BATCH = 500
# A transaction costs about as much CPU as 40 events in it (SQLite, measured: ~750 µs for
# the first event, ~20 µs for each next): when fewer than a batch wait, the writer lets
# more arrive for this long (at 100 logins/s a worker, 0.05 s made batches of ~5 events,
# 0.2 s of ~20: a third of the cost per event). Events are in memory either way; `flush`
# and `stop` cut the wait short.
LINGER = 0.2
QUEUE_SIZE = 10_000
WRITE_TIMEOUT = 30.0  # seconds for one batch
MAX_RETRY_DELAY = 5.0


class AuditSink:
    def __init__(self, registry: DelegationService) -> None:
        self.registry = registry
        self._queue: asyncio.Queue[AuditRecord] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._lingering: asyncio.Future[None] | None = None
        self._flushes = 0  # `flush` calls waiting: the writer does not linger for them

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._write_forever(), name="audit-sink")

    async def submit(self, record: AuditRecord) -> None:
        if not self.offer(record):
            await self._queue.put(self._stamped(record))

    def offer(self, record: AuditRecord) -> bool:
        """Queue `record` now if the queue has room (the usual case, no task to hand it
        over); False when it is full, and the caller must `submit` it."""
        if self._queue.full():
            return False
        self._queue.put_nowait(self._stamped(record))
        return True

    def _stamped(self, record: AuditRecord) -> AuditRecord:
        return (
            record if record.at is not None else dataclasses.replace(record, at=self.registry.now())
        )

    async def flush(self) -> None:
        """Wait until every event submitted so far is written, those handed over with
        `in_background` included (a relay's, before its client saw the reply)."""
        handed_over = list(_handed_over)
        if handed_over:
            await asyncio.wait(handed_over)
        self._flushes += 1
        try:
            if self._lingering is not None and not self._lingering.done():
                self._lingering.set_result(None)
            await self._queue.join()
        finally:
            self._flushes -= 1

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._queue.qsize() < BATCH - 1 and not self._flushes:
                await self._linger()
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _linger(self) -> None:
        """Wait `LINGER` seconds for more events, or until a `flush` wants them written."""
        loop = asyncio.get_running_loop()
        lingering = self._lingering = loop.create_future()
        timer = loop.call_later(LINGER, _settle, lingering)
        try:
            await lingering
        finally:
            timer.cancel()
            self._lingering = None

    async def _write(self, batch: list[AuditRecord]) -> None:
        """Write `batch`, retrying until the database takes it: meanwhile the queue fills
        and the fronts wait on `submit`, rather than serve accesses nobody recorded."""
        delay = 0.2
        while batch:
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await self.registry.record_many(batch)
                return
            except Exception as exc:
                if _refused_for_its_data(exc):
                    batch = await self._write_one_by_one(batch)
                    continue
                log.exception("audit.write_failed", extra={"events": len(batch), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _write_one_by_one(self, batch: list[AuditRecord]) -> list[AuditRecord]:
        """Write each event alone, leaving out those the database refuses for their data;
        return the events left when it fails otherwise (an outage: retried by the caller)."""
        for index, record in enumerate(batch):
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await self.registry.record_many([record])
            except Exception as exc:
                if not _refused_for_its_data(exc):
                    return batch[index:]
                log.error(
                    "audit.event_refused", extra={"error": type(exc).__name__, **described(record)}
                )
        return []

    async def stop(self) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.flush()
        if not self._queue.empty():
            log.error("audit.lost_on_shutdown", extra={"events": self._queue.qsize()})
        await cancelled(self._task)
        self._task = None


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def in_background(submission: Awaitable[None]) -> asyncio.Future[None]:
    """Hand an audit submission over without waiting for it (a front that answers its
    client first, a session being ended from a callback); a failure is logged. A caller
    that may hand many over keeps the futures and waits when it holds too many."""
    task = asyncio.ensure_future(submission)
    _handed_over.add(task)
    task.add_done_callback(_done)
    return task


def _done(task: asyncio.Future[None]) -> None:
    _handed_over.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("audit.submit_failed", exc_info=task.exception())


def _refused_for_its_data(error: Exception) -> bool:
    """Whether the database (or the driver, binding values) refused what it was given,
    rather than failed: retrying the same events would fail forever."""
    if isinstance(error, DataError | IntegrityError):
        return True
    if isinstance(error, StatementError) and not isinstance(error, DBAPIError):
        return True  # a value the driver could not bind
    return isinstance(error, ValueError | TypeError | UnicodeError)
