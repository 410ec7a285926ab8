"""The registry's decisions, remembered briefly: a login or a message must not cost a
database round trip each time, yet a revocation must apply at once.

Only grants are remembered (a refusal is asked again each time), for at most `ttl`
seconds, and never past the delegation's expiry. Every change event of the registry's bus
(granted, updated, revoked, expired, from any node) forgets the pair it names; a gap in
the events (a full queue, a lost LISTEN connection) forgets everything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from delegation.service import Decision, DelegationService
from gateway.runtime.lifecycle import cancelled
from psc_auth import Identity

log = logging.getLogger(__name__)


class DecisionCache:
    def __init__(
        self,
        registry: DelegationService,
        *,
        ttl: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, Decision]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._listening = False
        self._generation = 0  # bumped by every change: a decision read across one is stale

    def start(self) -> None:
        if self._task is None and self.ttl > 0:
            self._task = asyncio.create_task(self._forget_on_change(), name="decision-cache")

    async def stop(self) -> None:
        await cancelled(self._task)
        self._task = None
        self._listening = False
        self._entries.clear()

    async def decide(self, identity: Identity, mailbox: str) -> Decision:
        key = (str(identity.idnat), mailbox.strip().lower())
        now = self._clock()
        cached = self._entries.get(key)
        if cached is not None:
            until, decision = cached
            grant = decision.grant
            fresh = grant is not None and (
                grant.expires_at is None or grant.expires_at > self.registry.now()
            )
            if until > now and fresh:
                return decision
            del self._entries[key]
        generation = self._generation
        decision = await self.registry.decide(identity, mailbox)
        if decision.grant is not None and self._listening and generation == self._generation:
            self._entries[key] = (now + self.ttl, decision)
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return decision

    def forget(self, idnat: str, mailbox: str) -> None:
        self._generation += 1
        self._entries.pop((idnat, mailbox.strip().lower()), None)

    def forget_mailbox(self, mailbox: str) -> None:
        """Every decision on `mailbox` (it moved: they name its old backend)."""
        self._generation += 1
        mailbox = mailbox.strip().lower()
        for key in [k for k in self._entries if k[1] == mailbox]:
            del self._entries[key]

    async def _forget_on_change(self) -> None:
        # Grants are remembered only while subscribed: no change can go unheard.
        try:
            async with self.registry.bus.subscribe() as events:
                self._listening = True
                async for event in events:
                    if events.overflowed:
                        events.clear_overflow()
                        self._generation += 1
                        self._entries.clear()
                    if event.kind == "moved":
                        self.forget_mailbox(event.mailbox)
                    else:
                        self.forget(event.delegate_idnat, event.mailbox)
        finally:
            self._listening = False
            self._entries.clear()
