"""A migration's write hold across the workers of a node: the worker cutting a BAL over
holds it in every worker before its final delta, so that no worker lets a change through
to the old backend meanwhile, and a move ends the BAL's sessions in every worker.

The worker that holds sends `hold` through the supervisor; each other worker holds the BAL
in its own gate (once its changes under way are done, as a hold does) and answers `held`
(or that it could not); the hold is in place once every worker answered yes within
`drain_wait`, and refused (`Held`, nothing held anywhere) otherwise. `moved` and `release`
follow the hold's handle; a worker that dies releases what it held in the others (the
supervisor says `gone`), and breaks a hold it kept: started again, it holds nothing, so the
cut-over checks `broken()` after its final delta and switches nothing if so."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gateway.bal_migration.gate import MOVED_BYE, BalGate, Held, HoldHandle
from gateway.workers.channel import Message

log = logging.getLogger(__name__)


@dataclass
class _Asked:
    """A hold this worker asked of the others: the answers awaited."""

    waiting: set[int]
    refused: list[str] = field(default_factory=list)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    broken: str | None = None  # a worker that held died: its successor holds nothing


@dataclass
class _Kept:
    """A hold this worker keeps for another's cut-over."""

    source: int
    handle: HoldHandle | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)


class NodeGate(BalGate):
    """`BalGate` whose holds reach every worker of the node (`count` of them, this one
    `index`), through `send` and `received`."""

    def __init__(
        self,
        send: Callable[[Message], None],
        index: int,
        count: int,
        *,
        max_wait: float,
        drain_wait: float,
    ) -> None:
        super().__init__(max_wait=max_wait, drain_wait=drain_wait)
        self._send = send
        self._index = index
        self._count = count
        self._asked: dict[str, _Asked] = {}
        self._kept: dict[str, _Kept] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def hold(self, bal: str) -> AsyncIterator[HoldHandle]:
        async with super().hold(bal):
            hold_id = uuid.uuid4().hex
            asked = self._asked[hold_id] = _Asked(set(range(self._count)) - {self._index})
            self._send({"t": "hold", "id": hold_id, "bal": bal})
            try:
                if asked.waiting:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.drain_wait):
                            await asked.answered.wait()
                if asked.waiting or asked.refused:
                    why = "; ".join(asked.refused) or "a worker did not answer"
                    raise Held(f"{bal}: not held in every worker of the node: {why}")
                yield _NodeHandle(self, bal, hold_id)
            finally:
                del self._asked[hold_id]
                self._send({"t": "release", "id": hold_id})

    def received(self, message: Message) -> None:
        """A message of the channel about holds (others are not this gate's)."""
        kind, hold_id = message.get("t"), str(message.get("id"))
        if kind == "hold" and isinstance(message.get("from"), int):
            self._keep(hold_id, str(message.get("bal")), message["from"])
        elif kind == "held" and message.get("to") == self._index:
            self._answered(hold_id, message)
        elif kind == "moved" and (kept := self._kept.get(hold_id)) is not None:
            if kept.handle is not None:
                kept.handle.moved(str(message.get("reason") or MOVED_BYE))
        elif kind == "release" and (kept := self._kept.get(hold_id)) is not None:
            kept.released.set()
        elif kind == "gone":
            for kept in self._kept.values():
                if kept.source == message.get("worker"):
                    kept.released.set()
            for asked in self._asked.values():
                if message.get("worker") in asked.waiting:  # it will never answer
                    asked.refused.append(f"worker {message.get('worker')} died")
                    asked.waiting.discard(message["worker"])
                    asked.answered.set()
                elif asked.broken is None:  # started again, it lets writes through
                    asked.broken = f"worker {message.get('worker')} died during the hold"

    def _answered(self, hold_id: str, message: Message) -> None:
        asked = self._asked.get(hold_id)
        if asked is None:
            return
        asked.waiting.discard(message.get("from"))
        if not message.get("ok"):
            asked.refused.append(str(message.get("reason")))
        if not asked.waiting or asked.refused:
            asked.answered.set()

    def _keep(self, hold_id: str, bal: str, source: int) -> None:
        kept = self._kept[hold_id] = _Kept(source)
        task = asyncio.create_task(self._hold_for(hold_id, bal, kept))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hold_for(self, hold_id: str, bal: str, kept: _Kept) -> None:
        answer: Message = {"t": "held", "id": hold_id, "to": kept.source}
        try:
            async with super().hold(bal) as handle:
                kept.handle = handle
                self._send({**answer, "ok": True})
                log.info("migration.held", extra={"bal": bal, "for_worker": kept.source})
                await kept.released.wait()
        except Held as refused:
            self._send({**answer, "ok": False, "reason": str(refused)})
        finally:
            self._kept.pop(hold_id, None)

    async def aclose(self) -> None:
        """Release what this worker keeps for others (it stops)."""
        for kept in self._kept.values():
            kept.released.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _NodeHandle(HoldHandle):
    """The hold's handle in the worker that holds: a move ends the sessions of the BAL
    in every worker (`moved` counts this worker's; the others log theirs)."""

    def __init__(self, gate: NodeGate, bal: str, hold_id: str) -> None:
        super().__init__(gate, bal)
        self._node = gate
        self._id = hold_id

    def broken(self) -> str | None:
        asked = self._node._asked.get(self._id)
        return "the hold ended" if asked is None else asked.broken

    def moved(self, reason: str = MOVED_BYE) -> int:
        ended = super().moved(reason)
        self._node._send({"t": "moved", "id": self._id, "reason": reason})
        return ended
