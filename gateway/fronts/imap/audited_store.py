"""A `MailStore` that leaves an audit event for every change made through it.

Sessions the gateway serves with its own engine (BAL on the historic platform) do not go
through the relay, which audits parsed commands; wrapping their store gives them the same
trail: one event per change (allowed or failed), reads counted and reported at the end.
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TypeVar

from delegation.audit import AuditAction
from gateway.bal_migration.gate import BalGate, Held
from gateway.imap.mailstore import (
    CopyResult,
    FlagMode,
    FolderInfo,
    FolderState,
    MailStore,
    StoreUnavailable,
)

Record = Callable[[AuditAction, str, str], Awaitable[None]]  # (action, detail, result)
_T = TypeVar("_T")


class AuditedStore:
    def __init__(self, inner: MailStore, record: Record, gate: BalGate | None = None) -> None:
        self.inner = inner
        self.record = record
        self.gate = gate  # changes wait while the BAL is being moved
        self.reads = 0

    @property
    def address(self) -> str:
        return self.inner.address

    async def _change(self, action: AuditAction, detail: str, work: Awaitable[_T]) -> _T:
        try:
            if self.gate is None:
                result = await work
            else:
                async with self.gate.writing(self.inner.address):
                    result = await work
        except Held as exc:
            if inspect.iscoroutine(work):
                work.close()
            await self.record(action, detail, "failed:held")
            raise StoreUnavailable(str(exc)) from None
        except Exception as exc:
            await self.record(action, detail, f"failed:{type(exc).__name__}")
            raise
        await self.record(action, detail, "ok")
        return result

    async def list_folders(self) -> Sequence[FolderInfo]:
        return await self.inner.list_folders()

    async def create_folder(self, name: str) -> None:
        await self._change(AuditAction.FOLDER_CREATE, name, self.inner.create_folder(name))

    async def delete_folder(self, name: str) -> None:
        await self._change(AuditAction.FOLDER_DELETE, name, self.inner.delete_folder(name))

    async def rename_folder(self, old: str, new: str) -> None:
        await self._change(
            AuditAction.FOLDER_RENAME, f"{old} -> {new}", self.inner.rename_folder(old, new)
        )

    async def subscribe(self, name: str, subscribed: bool) -> None:
        action = AuditAction.FOLDER_SUBSCRIBE if subscribed else AuditAction.FOLDER_UNSUBSCRIBE
        await self._change(action, name, self.inner.subscribe(name, subscribed))

    async def folder_state(self, name: str) -> FolderState:
        return await self.inner.folder_state(name)

    async def fetch_message(self, name: str, uid: int) -> bytes:
        self.reads += 1
        return await self.inner.fetch_message(name, uid)

    async def fetch_messages(self, name: str, uids: Sequence[int]) -> dict[int, bytes]:
        self.reads += 1
        return await self.inner.fetch_messages(name, uids)

    async def append(
        self, name: str, message: bytes, flags: Collection[str], internal_date: dt.datetime
    ) -> tuple[int, int]:
        detail = f"{name} ({len(message)} bytes)"
        work = self.inner.append(name, message, flags, internal_date)
        return await self._change(AuditAction.APPEND, detail, work)

    async def store_flags(
        self, name: str, uids: Collection[int], mode: FlagMode, flags: Collection[str]
    ) -> dict[int, frozenset[str]]:
        sign = {"add": "+", "remove": "-"}.get(mode, "")
        detail = f"{name} UID {_uids(uids)} {sign}FLAGS ({' '.join(flags)})"
        return await self._change(
            AuditAction.STORE, detail, self.inner.store_flags(name, uids, mode, flags)
        )

    async def copy(self, name: str, uids: Collection[int], destination: str) -> CopyResult:
        detail = f"{name} UID {_uids(uids)} -> {destination}"
        return await self._change(
            AuditAction.COPY, detail, self.inner.copy(name, uids, destination)
        )

    async def move(self, name: str, uids: Collection[int], destination: str) -> CopyResult:
        detail = f"{name} UID {_uids(uids)} -> {destination}"
        return await self._change(
            AuditAction.MOVE, detail, self.inner.move(name, uids, destination)
        )

    async def expunge(self, name: str, uids: Collection[int] | None = None) -> list[int]:
        detail = f"{name} " + (f"UID {_uids(uids)}" if uids is not None else "all \\Deleted")
        return await self._change(AuditAction.EXPUNGE, detail, self.inner.expunge(name, uids))


def _uids(uids: Collection[int], limit: int = 120) -> str:
    text = ",".join(str(u) for u in sorted(uids))
    return text if len(text) <= limit else text[: limit - 3] + "..."
