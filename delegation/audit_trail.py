"""The audit trail: events appended (one, a batch, a refusal) and a mailbox's trail read.

What an event may hold is `delegation.audit`'s business; this module writes events that
fit and reads them back. A decision or a change writes its event in its own transaction
(`add`), so the trail never tells of a change that did not happen; a refusal is written
after the refused transaction rolled back (`refusal`). An event that cannot fit its row is
left out with a log line rather than costing the others their place.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from delegation.audit import AuditAction, AuditRecord, described, fitted
from delegation.errors import DelegationError, Invalid
from delegation.models import INTERFACES, AuditEventRow
from delegation.store import Store, on_commit
from psc_auth.idnat import IdNat

log = logging.getLogger("delegation.service")  # the name log filters have always matched


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at: dt.datetime
    actor_idnat: str
    mailbox: str
    delegation_id: int | None
    action: str
    interface: str
    software: str | None
    remote: str | None
    result: str
    detail: str | None


AuditListener = Callable[[AuditEvent], None]
"""Told of each audit event once its transaction committed (the log copy for a SIEM)."""


def _audit(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        at=row.at,
        actor_idnat=row.actor_idnat,
        mailbox=row.mailbox,
        delegation_id=row.delegation_id,
        action=row.action,
        interface=row.interface,
        software=row.software,
        remote=row.remote,
        result=row.result,
        detail=row.detail,
    )


class AuditTrail:
    """Appends audit events and reads a mailbox's trail."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.listener: AuditListener | None = None

    async def record(
        self,
        actor_idnat: str | IdNat,
        mailbox: str,
        action: AuditAction,
        *,
        interface: str,
        result: str = "ok",
        delegation_id: int | None = None,
        software: str | None = None,
        remote: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Append an audit event for an action the gateway performed (select, store, send...);
        `Invalid` for an action or interface outside the vocabulary."""
        record, _changed = fitted(
            AuditRecord(
                str(actor_idnat),
                mailbox,
                action,
                interface,
                result=result,
                delegation_id=delegation_id,
                software=software,
                remote=remote,
                detail=detail,
            )
        )
        async with self._store.writing() as db:
            self.add(db, record)

    async def record_many(self, events: Sequence[AuditRecord]) -> int:
        """Append several audit events in one transaction (a batch from a busy front);
        return how many were written. An event that cannot fit its row (an action or an
        interface outside the vocabulary) is left out with a log line, the others written.

        One core INSERT of all the rows (the ids returned only for a listener): the ORM's
        unit of work, objects and identity map cost more than the rows on this hot path."""
        rows = [row for row in map(self._values, events) if row is not None]
        if not rows:
            return 0
        table = AuditEventRow.__table__
        assert isinstance(table, Table)
        listener = self.listener
        async with self._store.writing() as db:
            connection = await db.connection()
            if listener is None:
                await connection.execute(insert(table), rows)
            else:
                statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
                ids = (await connection.execute(statement, rows)).scalars().all()
                written = [AuditEvent(id=i, **row) for i, row in zip(ids, rows, strict=True)]
                on_commit(db, lambda: functools.partial(_tell_all, listener, written))
        return len(rows)

    def add(self, db: AsyncSession, record: AuditRecord) -> None:
        """Append `record` within the caller's transaction (unless it cannot fit its row)."""
        row = self._row(record)
        if row is not None:
            db.add(row)
            self._tell(db, [row])

    def _tell(self, db: AsyncSession, rows: list[AuditEventRow]) -> None:
        """The listener hears of `rows` once the caller's transaction committed."""
        listener = self.listener
        if listener is None:
            return

        def prepare() -> Callable[[], None]:
            events = [_audit(row) for row in rows]
            return functools.partial(_tell_all, listener, events)

        on_commit(db, prepare)

    async def refusal(
        self,
        actor_idnat: str,
        mailbox: str,
        action: AuditAction,
        error: DelegationError,
        *,
        interface: str,
        software: str | None,
        remote: str | None,
        delegation_id: int | None = None,
    ) -> None:
        """Record that `action` was refused with `error`, in a transaction of its own."""
        if interface not in INTERFACES:
            return  # the refusal is the bad interface itself: nothing valid to record
        async with self._store.writing() as db:
            self.add(
                db,
                AuditRecord(
                    actor_idnat,
                    mailbox,
                    action,
                    interface,
                    result=f"refused:{error.reason}",
                    delegation_id=delegation_id,
                    software=software,
                    remote=remote,
                    detail=str(error),
                ),
            )

    async def audit_for(self, mailbox: str, limit: int = 100) -> list[AuditEvent]:
        """The mailbox's audit trail, newest first."""
        if not 1 <= limit <= 10_000:
            raise Invalid("the limit is between 1 and 10000", reason="bad-limit")
        address = mailbox.strip().lower()
        async with self._store.reading() as db:
            rows = (
                await db.scalars(
                    select(AuditEventRow)
                    .where(AuditEventRow.mailbox == address)
                    .order_by(AuditEventRow.at.desc(), AuditEventRow.id.desc())
                    .limit(limit)
                )
            ).all()
            return [_audit(r) for r in rows]

    def _row(self, record: AuditRecord) -> AuditEventRow | None:
        values = self._values(record)
        return None if values is None else AuditEventRow(**values)

    def _values(self, record: AuditRecord) -> dict[str, Any] | None:
        """The row's columns for `record` (id aside), or None for an event that cannot fit."""
        try:
            record, changed = fitted(record)
        except Invalid as exc:
            log.error("audit.event_quarantined", extra={"reason": exc.reason, **described(record)})
            return None
        if changed:
            log.warning("audit.event_clipped", extra={"fields": changed, **described(record)})
        return {
            "at": record.at or self._store.now(),
            "actor_idnat": record.actor_idnat,
            "mailbox": record.mailbox,
            "delegation_id": record.delegation_id,
            "action": record.action.value,
            "interface": record.interface,
            "software": record.software,
            "remote": record.remote,
            "result": record.result,
            "detail": record.detail,
        }


def _tell_all(listener: AuditListener, events: list[AuditEvent]) -> None:
    for event in events:
        try:
            listener(event)
        except Exception:  # the event is written: a listener's failure must not undo it
            log.exception("audit.listener_failed")
