"""The gateway's audit trail, written in the background and in batches.

Every access leaves an event (who, which BAL, through which delegation, from which
software, result), but a front must not wait for the database on each command: events are
queued and written many per transaction. `stop` drains the queue, so none is lost on a
clean shutdown (unless the database stays down through it, which is logged); a database
outage makes the writer retry and, once the queue is full, producers wait: nothing is
dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from delegation.errors import Invalid
from delegation.service import AuditRecord, DelegationService

log = logging.getLogger(__name__)

BATCH = 500
QUEUE_SIZE = 10_000
WRITE_TIMEOUT = 30.0  # seconds for one batch
MAX_RETRY_DELAY = 5.0


class AuditSink:
    def __init__(self, registry: DelegationService) -> None:
        self.registry = registry
        self._queue: asyncio.Queue[AuditRecord] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._write_forever(), name="audit-sink")

    async def submit(self, record: AuditRecord) -> None:
        if record.at is None:
            record = dataclasses.replace(record, at=self.registry.now())
        await self._queue.put(record)

    async def flush(self) -> None:
        """Wait until every event submitted so far is written."""
        await self._queue.join()

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[AuditRecord]) -> None:
        """Write `batch`, retrying until the database takes it: meanwhile the queue fills
        and the fronts wait on `submit`, rather than serve accesses nobody recorded."""
        delay = 0.2
        while True:
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await self.registry.record_many(batch)
                return
            except Invalid:
                # A malformed event (a bug, not an outage): retrying would never succeed.
                log.exception("audit.invalid_event", extra={"events": len(batch)})
                return
            except Exception:
                log.exception("audit.write_failed", extra={"events": len(batch), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)

    async def stop(self) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.flush()
        if not self._queue.empty():
            log.error("audit.lost_on_shutdown", extra={"events": self._queue.qsize()})
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
