"""The audit trail never loses an event for another's sake: every name the code can produce
fits its column, and one event the table cannot take costs only itself (with a log line)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from delegation import DelegationService
from delegation.audit import ACTIONS, AuditAction, AuditRecord
from delegation.models import ACTION_LENGTH, AuditEventRow
from gateway.audit import AuditSink, in_background
from gateway.fronts.imap.audited_store import AuditedStore
from gateway.fronts.imap.rights import audit_action
from gateway.imap import commands as c
from gateway.imap.mailstore import CopyResult, FolderInfo, FolderState
from gateway.imap.parser import CommandParser

BERNARD = "899700000003"
MARTIN = "899700000001"
CLAIRE_BAL = "claire.martin@medecin.mssante.fr"

# One line per command the codec knows; the walk below fails when a new command appears.
SAMPLES = [
    b"a CAPABILITY",
    b"a NOOP",
    b"a LOGOUT",
    b"a STARTTLS",
    b"a AUTHENTICATE XOAUTH2 dXNlcj0=",
    b"a LOGIN user pass",
    b"a SELECT INBOX",
    b"a EXAMINE INBOX",
    b"a CREATE x",
    b"a DELETE x",
    b"a RENAME x y",
    b"a SUBSCRIBE x",
    b"a UNSUBSCRIBE x",
    b'a LIST "" *',
    b"a STATUS INBOX (MESSAGES)",
    b"a APPEND INBOX {3+}\r\nabc",
    b"a CHECK",
    b"a CLOSE",
    b"a UNSELECT",
    b"a EXPUNGE",
    b"a UID EXPUNGE 1",
    b"a SEARCH ALL",
    b"a FETCH 1 FLAGS",
    b"a STORE 1 +FLAGS (\\Seen)",
    b"a COPY 1 x",
    b"a MOVE 1 x",
    b"a IDLE",
    b"a ID NIL",
    b"a ENABLE UTF8=ACCEPT",
    b"a NAMESPACE",
]


def _commands() -> list[c.Command]:
    parser = CommandParser()
    parser.receive_data(b"".join(line + b"\r\n" for line in SAMPLES))
    found: list[c.Command] = []
    while (event := parser.next_event()) is not None:
        assert isinstance(event, c.Command), event
        found.append(event)
    return found


def test_every_action_fits_its_column() -> None:
    column = AuditEventRow.__table__.c.action.type
    assert column.length == ACTION_LENGTH  # type: ignore[attr-defined]
    assert all(0 < len(action) <= ACTION_LENGTH for action in ACTIONS)
    assert "folder-unsubscribe" in ACTIONS  # the one that did not fit in 16


def test_every_imap_command_is_named_from_the_vocabulary() -> None:
    commands = _commands()
    every_class = {cls for cls in vars(c).values() if isinstance(cls, type)}
    every_command = {cls for cls in every_class if issubclass(cls, c.Command)} - {c.Command}
    assert {type(command) for command in commands} == every_command
    named = {audit_action(command) for command in commands} - {None}
    assert named <= set(AuditAction)
    assert AuditAction.FOLDER_UNSUBSCRIBE in named


class _Inner:
    """A store that does nothing, to see what the audited wrapper names each change."""

    address = CLAIRE_BAL

    async def list_folders(self) -> list[FolderInfo]:
        return []

    async def create_folder(self, name: str) -> None:
        pass

    async def delete_folder(self, name: str) -> None:
        pass

    async def rename_folder(self, old: str, new: str) -> None:
        pass

    async def subscribe(self, name: str, subscribed: bool) -> None:
        pass

    async def folder_state(self, name: str) -> FolderState:
        raise NotImplementedError

    async def fetch_message(self, name: str, uid: int) -> bytes:
        return b""

    async def fetch_messages(self, name: str, uids: Any) -> dict[int, bytes]:
        return {}

    async def append(self, name: str, message: bytes, flags: Any, date: Any) -> tuple[int, int]:
        return 1, 1

    async def store_flags(self, name: str, uids: Any, mode: Any, flags: Any) -> dict[int, Any]:
        return {}

    async def copy(self, name: str, uids: Any, destination: str) -> CopyResult:
        return CopyResult(1, ())

    async def move(self, name: str, uids: Any, destination: str) -> CopyResult:
        return CopyResult(1, ())

    async def expunge(self, name: str, uids: Any = None) -> list[int]:
        return []


async def test_every_change_of_a_served_store_is_named_from_the_vocabulary(
    seeded: DelegationService,
) -> None:
    """The historic path (stores the engine serves) names its changes itself: every one is
    written to the real table, on SQLite and PostgreSQL."""
    named: list[AuditAction] = []

    async def record(action: AuditAction, detail: str, result: str) -> None:
        named.append(action)
        await seeded.record(BERNARD, CLAIRE_BAL, action, interface="imap", detail=detail)

    store = AuditedStore(_Inner(), record)  # type: ignore[arg-type]
    await store.create_folder("x")
    await store.delete_folder("x")
    await store.rename_folder("x", "y")
    await store.subscribe("x", True)
    await store.subscribe("x", False)
    await store.append("Drafts", b"m", (), dt.datetime.now(dt.UTC))
    await store.store_flags("INBOX", [1], "add", ["\\Flagged"])
    await store.copy("INBOX", [1], "x")
    await store.move("INBOX", [1], "x")
    await store.expunge("INBOX")
    written = [e.action for e in await seeded.audit_for(CLAIRE_BAL, limit=100)]
    assert sorted(written) == sorted(named)
    assert "folder-unsubscribe" in written


async def test_every_action_is_written_on_every_database(seeded: DelegationService) -> None:
    records = [AuditRecord(BERNARD, CLAIRE_BAL, action, "imap") for action in AuditAction]
    assert await seeded.record_many(records) == len(records)
    written = {e.action for e in await seeded.audit_for(CLAIRE_BAL, limit=100)}
    assert written == ACTIONS


async def test_a_batch_tells_the_listener_each_event_with_its_id(
    seeded: DelegationService,
) -> None:
    """The SIEM copy of a batch: every event written, in order, with the id of its row."""
    told: list[Any] = []
    seeded.audit_listener = told.append
    at = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    records = [
        AuditRecord(BERNARD, CLAIRE_BAL, AuditAction.SELECT, "imap", detail=f"n{i}", at=at)
        for i in range(5)
    ]
    assert await seeded.record_many(records) == 5
    assert [e.detail for e in told] == [f"n{i}" for i in range(5)]
    written = {e.id: e for e in await seeded.audit_for(CLAIRE_BAL, limit=100)}
    assert all(written[e.id] == e for e in told)
    assert len({e.id for e in told}) == 5
    seeded.audit_listener = None
    assert await seeded.record_many(records[:2]) == 2
    assert len(told) == 5
    assert len(await seeded.audit_for(CLAIRE_BAL, limit=100)) == 7


async def test_one_bad_event_costs_only_itself(
    seeded: DelegationService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    sink = AuditSink(seeded)
    sink.start()
    good = [
        AuditRecord(MARTIN, CLAIRE_BAL, AuditAction.SELECT, "imap", detail=f"g{n}")
        for n in range(20)
    ]
    bad = [
        AuditRecord(BERNARD, CLAIRE_BAL, "folder-unsubscribe-everything", "imap"),  # type: ignore[arg-type]
        AuditRecord(BERNARD, CLAIRE_BAL, AuditAction.STORE, "pop3"),
        AuditRecord("", CLAIRE_BAL, AuditAction.STORE, "imap"),
    ]
    hostile = AuditRecord(
        BERNARD,
        CLAIRE_BAL,
        AuditAction.FOLDER_UNSUBSCRIBE,
        "imap",
        software="Evil\x00LPS " + "x" * 5000,
        remote="\x00" * 100,
        detail="in\x00box\r\nforged: line",
        result="refused:noperm",
    )
    for record in [*good[:10], *bad, hostile, *good[10:]]:
        await sink.submit(record)
    await asyncio.wait_for(sink.flush(), 10)
    await sink.stop()
    events = await seeded.audit_for(CLAIRE_BAL, limit=100)
    assert {e.detail for e in events if e.action == "select"} == {f"g{n}" for n in range(20)}
    [kept] = [e for e in events if e.action == "folder-unsubscribe"]
    assert kept.detail == "in?box??forged: line"
    assert kept.software is not None
    assert kept.software.startswith("Evil?LPS xx")
    assert len(kept.software) == 128
    assert kept.result == "refused:noperm"
    assert len(events) == 21
    quarantined = [r for r in caplog.records if r.getMessage() == "audit.event_quarantined"]
    assert len(quarantined) == 3
    assert any(r.getMessage() == "audit.event_clipped" for r in caplog.records)


async def test_flush_waits_for_the_events_handed_over_in_the_background(
    seeded: DelegationService,
) -> None:
    """A relay hands its events over before its client sees the reply: once `flush`
    returns, they are written, though none had reached the queue when it was called."""
    sink = AuditSink(seeded)
    sink.start()

    async def handed_over(record: AuditRecord) -> None:
        for _ in range(3):  # a submission that takes a few turns of the loop to arrive
            await asyncio.sleep(0)
        await sink.submit(record)

    for number in range(5):
        record = AuditRecord(MARTIN, CLAIRE_BAL, AuditAction.READ, "imap", detail=f"b{number}")
        in_background(handed_over(record))
    await asyncio.wait_for(sink.flush(), 10)
    events = await seeded.audit_for(CLAIRE_BAL, limit=100)
    await sink.stop()
    assert {e.detail for e in events} == {f"b{n}" for n in range(5)}


async def test_events_linger_for_a_batch_but_flush_does_not_wait_for_it(
    seeded: DelegationService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer lets events gather into one transaction, however long it lingers
    (an hour here) `flush` writes them at once: tests and shutdown never wait for it."""
    monkeypatch.setattr("gateway.audit.LINGER", 3600.0)
    batches: list[int] = []
    record_many = seeded.record_many

    async def counted(events: Any) -> int:
        batches.append(len(events))
        return await record_many(events)

    monkeypatch.setattr(seeded, "record_many", counted)
    sink = AuditSink(seeded)
    sink.start()
    for number in range(4):
        await sink.submit(
            AuditRecord(MARTIN, CLAIRE_BAL, AuditAction.READ, "imap", detail=f"l{number}")
        )
        await asyncio.sleep(0)  # the writer takes the first and lingers for the others
    await asyncio.wait_for(sink.flush(), 10)
    events = await seeded.audit_for(CLAIRE_BAL, limit=100)
    await asyncio.wait_for(sink.stop(), 10)
    assert {e.detail for e in events} == {f"l{n}" for n in range(4)}
    assert batches == [4]


async def test_a_batch_the_database_refuses_is_written_event_by_event(
    seeded: DelegationService, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the database refuses for one event's data (a constraint, an encoding), the
    batch is split and only that event is lost, named in the log."""
    original = seeded.record_many

    async def picky(events: list[AuditRecord]) -> int:
        if any(e.detail == "poison" for e in events):
            raise IntegrityError("INSERT", {}, ValueError("refused"))
        return await original(events)

    monkeypatch.setattr(seeded, "record_many", picky)
    sink = AuditSink(seeded)
    sink.start()
    for number in range(30):
        detail = "poison" if number == 17 else f"e{number}"
        await sink.submit(AuditRecord(MARTIN, CLAIRE_BAL, AuditAction.STORE, "imap", detail=detail))
    await asyncio.wait_for(sink.flush(), 10)
    await sink.stop()
    events = await seeded.audit_for(CLAIRE_BAL, limit=100)
    assert {e.detail for e in events} == {f"e{n}" for n in range(30) if n != 17}
    refused = [r for r in caplog.records if r.getMessage() == "audit.event_refused"]
    assert len(refused) == 1
