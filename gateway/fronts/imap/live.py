"""Live sessions: relays and engine-served sessions by (BAL, delegate), ended or
updated when the registry says their delegation changed (revoked, expired, narrowed)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as dt
import logging
from typing import Protocol

from delegation.audit import AuditAction
from delegation.events import ChangeEvent
from delegation.service import DelegationService
from gateway.audit import in_background
from gateway.bal_migration.gate import MOVED_BYE
from gateway.fronts.imap.audited_store import AuditedStore
from gateway.fronts.login import FrontGrant
from gateway.imap.engine import ImapSession
from gateway.imap.response import untagged_status
from gateway.imap.transport import StreamChannel
from gateway.runtime.lifecycle import cancelled

log = logging.getLogger(__name__)

GAP_CHECK = 1.0  # seconds between checks for change events lost by the bus


class LiveSession(Protocol):
    """What live-session tracking needs of a session: a relay, or one the engine serves."""

    @property
    def grant(self) -> FrontGrant: ...

    @property
    def mailbox(self) -> str: ...

    @property
    def actor(self) -> str: ...

    def kick(self, reason: str) -> None: ...

    def update(self, rights: frozenset[str], expires_at: dt.datetime | None) -> None: ...


class ServedSession:
    """A session the engine serves itself (a BAL on the historic platform), made revocable
    like a relay: `kick` says BYE and ends its connection task."""

    def __init__(
        self, session: ImapSession, channel: StreamChannel, task: asyncio.Task[None]
    ) -> None:
        assert isinstance(session.grant, FrontGrant)
        self.session = session
        self.channel = channel
        self.task = task
        self._grant: FrontGrant = session.grant
        self._expiry: asyncio.TimerHandle | None = None
        self._kicked = False
        self._ended = False
        self._logs = contextvars.copy_context()  # a watcher's kick logs as the session
        self.update(self._grant.rights, self._grant.decision.expires_at)

    @property
    def grant(self) -> FrontGrant:
        return self._grant

    @property
    def mailbox(self) -> str:
        return self._grant.mailbox

    @property
    def actor(self) -> str:
        return self._grant.actor

    def kick(self, reason: str) -> None:
        if self._kicked or self._ended:
            return
        self._kicked = True
        self._logs.run(
            log.info, "imap.session_kicked", extra={"bal": self.mailbox, "reason": reason}
        )
        store = self._grant.store
        if isinstance(store, AuditedStore):
            in_background(store.record(AuditAction.SESSION_END, reason, "ok"))
        with contextlib.suppress(Exception):
            self.channel.writer.write(untagged_status("BYE", reason))
        self.task.cancel()

    def update(self, rights: frozenset[str], expires_at: dt.datetime | None) -> None:
        if self._ended:
            return
        if rights != self._grant.rights:
            self._grant = dataclasses.replace(self._grant, rights=rights)
            self.session.grant = dataclasses.replace(self.session.grant, rights=rights)  # type: ignore[type-var]
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if expires_at is not None and self._grant.via == "delegation":
            delay = (expires_at - dt.datetime.now(dt.UTC)).total_seconds()
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, delay), self.kick, f"delegation on {self.mailbox} expired"
            )

    def ended(self) -> None:
        self._ended = True
        if self._expiry is not None:
            self._expiry.cancel()


class LiveSessions:
    """Relays by (BAL, delegate idNat), told of delegation changes by the registry's bus
    (every node hears them: PostgreSQL LISTEN/NOTIFY)."""

    def __init__(self, registry: DelegationService) -> None:
        self.registry = registry
        self._relays: dict[tuple[str, str], set[LiveSession]] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return sum(len(group) for group in self._relays.values())

    def add(self, relay: LiveSession) -> None:
        self._relays.setdefault((relay.mailbox, relay.actor), set()).add(relay)

    def discard(self, relay: LiveSession) -> None:
        key = (relay.mailbox, relay.actor)
        group = self._relays.get(key)
        if group is not None:
            group.discard(relay)
            if not group:
                del self._relays[key]

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="imap-live-sessions")

    async def stop(self) -> None:
        await cancelled(self._task)

    async def _watch(self) -> None:
        async with self.registry.bus.subscribe() as events:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), GAP_CHECK)
                except TimeoutError:
                    event = None  # no change: but were some lost (a listener reconnect)?
                except StopAsyncIteration:
                    return
                try:
                    if events.overflowed:
                        events.clear_overflow()
                        await self._recheck(list(self._relays))
                    if event is not None:
                        await self._apply(event)
                except Exception:
                    log.exception("imap.live_sessions_failed")

    async def _apply(self, event: ChangeEvent) -> None:
        if event.kind == "moved":
            await self._moved(event.mailbox)
            return
        key = (event.mailbox, event.delegate_idnat)
        if key not in self._relays:
            return
        if event.kind in ("revoked", "expired"):
            for relay in list(self._relays.get(key, ())):
                if relay.grant.via == "delegation":
                    relay.kick(f"delegation on {event.mailbox} {event.kind}")
        else:
            await self._recheck([key])

    async def _moved(self, mailbox: str) -> None:
        """The BAL moved (a cut-over or a rollback, on any node): sessions opened while the
        registry named its old backend end, as on the node that moved it; all of them when
        the BAL left the registry."""
        relays = [r for key, group in self._relays.items() if key[0] == mailbox for r in group]
        if not relays:
            return
        record = await self.registry.mailbox(mailbox)
        for relay in relays:
            if record is None:  # removed from the registry (a directory import's prune)
                relay.kick(f"{mailbox} is no longer served")
            elif relay.grant.decision.backend != record.backend:
                relay.kick(MOVED_BYE)

    async def confirm(self, relay: LiveSession) -> None:
        if relay.grant.via != "delegation":
            return
        decision = await self.registry.decide(relay.grant.identity, relay.mailbox)
        if decision.grant is None:
            relay.kick(f"delegation on {relay.mailbox} {decision.refusal or 'withdrawn'}")
        else:
            relay.update(decision.grant.rights, decision.grant.expires_at)

    async def _recheck(self, keys: list[tuple[str, str]]) -> None:
        """Compare live delegated sessions with the registry: end or update them; and end
        those whose BAL moved (a `moved` event lost with the others)."""
        for mailbox in {key[0] for key in keys}:
            await self._moved(mailbox)
        for key in keys:
            relays = [r for r in self._relays.get(key, ()) if r.grant.via == "delegation"]
            if not relays:
                continue
            grants = await self.registry.accessible(relays[0].grant.identity)
            current = next((g for g in grants if g.mailbox == key[0]), None)
            for relay in relays:
                if current is None:
                    relay.kick(f"delegation on {key[0]} withdrawn")
                else:
                    relay.update(current.rights, current.expires_at)
