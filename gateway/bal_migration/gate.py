"""What a cut-over needs from the fronts of this node: hold a BAL's writes for a few
seconds, and end its open sessions.

Every front asks `passage` before a change to a BAL (an IMAP write, a message submitted,
a historic web-service write): while the BAL is held the change waits, at most
`max_wait`, and is refused with `Held` when the hold outlasts it (the client is told to
retry: `NO [UNAVAILABLE]`, `451 4.3.0`); a change that waited through a cut-over gets
`Moved` instead, since the backend it was bound to no longer holds the BAL. `writing`
counts the changes under way, so that `hold` starts the final delta only once the ones
already sent to the old backend are done. Sessions are tracked by BAL so that `end` can
say `* BYE` (421 on SMTP) to each of them with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

MAX_WAIT = 10.0  # seconds a change waits for a hold to end before it is refused
DRAIN_WAIT = 5.0  # seconds a hold waits for the changes already under way


class Held(Exception):
    """The BAL's writes are held longer than a client should wait: retry shortly."""


class Moved(Held):
    """The BAL moved while the change waited: reconnect, the next session lands there."""


class Endable(Protocol):
    def kick(self, reason: str) -> None: ...


MOVED_BYE = (
    "Votre boîte aux lettres a été déplacée vers une nouvelle plateforme de messagerie ; "
    "votre logiciel va se reconnecter automatiquement, sans perte de messages."
)
"""What a session on a BAL that moved is told (French, the users' language)."""


@dataclass
class _Bal:
    hold: asyncio.Event | None = None  # set when the hold ends
    moved: bool = False  # the hold ended with a move
    writing: int = 0
    waiting: int = 0  # changes waiting for the hold to end
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: set[Endable] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def unused(self) -> bool:
        return self.hold is None and not self.writing and not self.sessions


class BalGate:
    """The node's holds and sessions, by BAL (canonical lower-case addresses)."""

    def __init__(self, *, max_wait: float = MAX_WAIT, drain_wait: float = DRAIN_WAIT) -> None:
        self.max_wait = max_wait
        self.drain_wait = drain_wait
        self._bals: dict[str, _Bal] = {}
        self._moves: dict[str, int] = {}  # BAL -> how many times it moved (this node)

    def _of(self, bal: str) -> _Bal:
        key = bal.strip().lower()
        entry = self._bals.get(key)
        if entry is None:
            entry = self._bals[key] = _Bal()
        return entry

    def _tidy(self, bal: str) -> None:
        key = bal.strip().lower()
        entry = self._bals.get(key)
        if entry is not None and entry.unused:
            del self._bals[key]

    def held(self, bal: str) -> bool:
        entry = self._bals.get(bal.strip().lower())
        return entry is not None and entry.hold is not None

    # -- the fronts ------------------------------------------------------------------------
    async def passage(self, bal: str) -> None:
        """Wait while `bal` is held; `Held` after `max_wait`, `Moved` if it moved."""
        entry = self._bals.get(bal.strip().lower())
        if entry is None or entry.hold is None:
            return
        released = entry.hold
        entry.waiting += 1
        try:
            async with asyncio.timeout(self.max_wait):
                await released.wait()
        except TimeoutError:
            raise Held(f"{bal} is being moved, retry in a few seconds") from None
        finally:
            entry.waiting -= 1
        if entry.moved:
            raise Moved(f"{bal} moved to another platform, reconnect")

    @contextlib.asynccontextmanager
    async def writing(self, bal: str) -> AsyncIterator[None]:
        """A change to `bal`: waits for a hold (see `passage`), counted while under way."""
        await self.passage(bal)
        self.begin(bal)
        try:
            yield
        finally:
            self.done(bal)

    def begin(self, bal: str) -> None:
        """A change sent on its way (after `passage`): a hold waits for its `done`."""
        entry = self._of(bal)
        entry.writing += 1
        entry.idle.clear()

    def done(self, bal: str) -> None:
        entry = self._bals.get(bal.strip().lower())
        if entry is None or not entry.writing:
            return
        entry.writing -= 1
        if not entry.writing:
            entry.idle.set()
        self._tidy(bal)

    def epoch(self, bal: str) -> int:
        """How many times `bal` moved on this node: a login reads it before it decides
        where to go, and `add` ends at once a session whose BAL moved meanwhile."""
        return self._moves.get(bal.strip().lower(), 0)

    def add(self, bal: str, session: Endable, epoch: int | None = None) -> None:
        """Track `session` on `bal`; `epoch`: `epoch(bal)` when its login decided where
        it goes (a move since then ends it with `MOVED_BYE`)."""
        if epoch is not None and epoch != self.epoch(bal):
            session.kick(MOVED_BYE)
            return
        self._of(bal).sessions.add(session)

    def discard(self, bal: str, session: Endable) -> None:
        entry = self._bals.get(bal.strip().lower())
        if entry is not None:
            entry.sessions.discard(session)
            self._tidy(bal)

    def waiting(self, bal: str) -> int:
        """How many changes wait for `bal`'s hold to end (operators, tests)."""
        entry = self._bals.get(bal.strip().lower())
        return entry.waiting if entry is not None else 0

    def sessions(self, bal: str) -> int:
        entry = self._bals.get(bal.strip().lower())
        return len(entry.sessions) if entry is not None else 0

    # -- the cut-over ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def hold(self, bal: str) -> AsyncIterator[HoldHandle]:
        """Hold `bal`'s changes, once those under way are done (`Held` if they do not end
        within `drain_wait`: nothing is held then). Ending the block releases the waiting
        changes; `handle.moved()` first makes them `Moved`, and ends the sessions."""
        entry = self._of(bal)
        if entry.hold is not None:
            raise Held(f"{bal} is held already")
        entry.hold, entry.moved = asyncio.Event(), False
        handle = HoldHandle(self, bal)
        try:
            try:
                async with asyncio.timeout(self.drain_wait):
                    await entry.idle.wait()
            except TimeoutError:
                raise Held(
                    f"{bal}: changes under way did not end within {self.drain_wait:g} s"
                ) from None
            yield handle
        finally:
            released, entry.hold = entry.hold, None
            released.set()
            self._tidy(bal)

    def end(self, bal: str, reason: str) -> int:
        """End every session of `bal` on this node with `reason`; how many."""
        entry = self._bals.get(bal.strip().lower())
        if entry is None:
            return 0
        sessions = list(entry.sessions)
        entry.sessions.clear()
        for session in sessions:
            try:
                session.kick(reason)
            except Exception:  # one session's failure must not keep the others open
                log.exception("migration.kick_failed")
        self._tidy(bal)
        log.info("migration.sessions_ended", extra={"bal": bal, "sessions": len(sessions)})
        return len(sessions)


@dataclass
class HoldHandle:
    gate: BalGate
    bal: str

    def broken(self) -> str | None:
        """Why the hold may no longer keep every change away from the old backend (None:
        it does). A cut-over checks it after its final delta, before it switches."""
        return None

    def moved(self, reason: str = MOVED_BYE) -> int:
        """The BAL now lives elsewhere: changes waiting get `Moved`, sessions end."""
        entry = self.gate._of(self.bal)
        entry.moved = True
        key = self.bal.strip().lower()
        self.gate._moves[key] = self.gate._moves.get(key, 0) + 1
        return self.gate.end(self.bal, reason)
