"""The usage recorder: fronts hand it accesses, it merges them in memory and writes the
merged counts in the background, so a login waits for no database write.

Memory is bounded: past `max_pending` distinct rows a flush starts at once; past twice
that (the database is slow or down) accesses that would add a row are dropped, counted
and logged, while those adding to a pending row still count.

MSSanté non-conformities (`nonconformity`, from `gateway.mss.policy`) are counted per day,
software, interface and rule. Their rows are bounded whatever clients send: rule ids come
from the closed list `gateway.mss.rules.RULES` (any other is not counted), and a node
counts them under at most `rule_software` software names a day, the rest under `other`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.mss.policy import Outcome
from gateway.mss.rules import RULES
from gateway.usage.access import (
    INTERFACES,
    UNKNOWN,
    VERSION_LENGTH,
    Access,
    Interface,
    Kind,
    clean_label,
)
from gateway.usage.store import Counts, DailyKey, RuleCounts, RuleKey, Seen, SeenKey, write

log = logging.getLogger(__name__)

STOP_ATTEMPTS = 4  # writes of what is left at stop, spaced STOP_RETRY_DELAY times 1, 2 and 3
STOP_RETRY_DELAY = 0.5  # seconds


class _Routed(Protocol):
    @property
    def name(self) -> str: ...


class Granted(Protocol):
    """What a login grant tells the usage tables (`gateway.fronts.login.FrontGrant` has
    it): the BAL, the person, holder or delegate, and the backend that holds the BAL."""

    @property
    def mailbox(self) -> str: ...

    @property
    def actor(self) -> str: ...

    @property
    def via(self) -> str: ...

    @property
    def route(self) -> _Routed: ...


class Counter(Protocol):
    """Where each access is also counted as it happens (`gateway.metrics.Metrics`)."""

    def count_access(self, access: Access) -> None: ...

    def count_nonconformity(
        self, interface: str, software: str, rule: str, outcome: str
    ) -> None: ...


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


OTHER = "other"  # the software of non-conformities past a day's `rule_software` names


class UsageRecorder:
    def __init__(
        self,
        engine: AsyncEngine | None,
        *,
        flush_interval: float = 5.0,
        max_pending: int = 10_000,
        counter: Counter | None = None,
        clock: Callable[[], dt.datetime] = _now,
        rule_software: int = 1_000,
    ) -> None:
        self.engine = engine  # None: count in metrics only (an API without a database)
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.counter = counter
        self.clock = clock
        self.dropped = 0
        self._daily: dict[DailyKey, Counts] = {}
        self._seen: dict[SeenKey, Seen] = {}
        self._rules: dict[RuleKey, RuleCounts] = {}
        self.rule_software = rule_software
        self._rule_day: dt.date | None = None
        self._rule_names: set[str] = set()  # the software counted under on `_rule_day`
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop = asyncio.Event()

    # -- what fronts call ----------------------------------------------------------------

    def session(
        self, grant: Granted, interface: Interface, software: str | None, version: str | None = ""
    ) -> None:
        """One login on `grant`'s BAL through `interface`, by `software` (as the client
        named itself: IMAP ID name and version, EHLO, NUMHOMOLOGATION, User-Agent)."""
        self.record(self._access(grant, interface, software, version, "session"))

    def message(
        self, grant: Granted, interface: Interface, software: str | None, version: str | None = ""
    ) -> None:
        """One message submitted from `grant`'s BAL, by `software` (its X-MSS-NIL)."""
        self.record(self._access(grant, interface, software, version, "message"))

    def record(self, access: Access) -> None:
        """Count `access`; never waits, never raises."""
        if self.counter is not None:
            self.counter.count_access(access)
        if self.engine is None:
            return
        day_key = (access.day, access.software, access.version, access.interface)
        seen_key = (access.software, access.version, access.interface, access.bal, access.idnat)
        new_rows = (day_key not in self._daily) + (seen_key not in self._seen)
        if new_rows and self.pending >= 2 * self.max_pending:
            self.dropped += 1
            return
        counts = self._daily.setdefault(day_key, Counts())
        if access.kind == "session":
            counts.sessions += 1
        else:
            counts.messages += 1
        seen = Seen(access.at, access.at, access.platform, access.delegated)
        known = self._seen.setdefault(seen_key, seen)
        if known is not seen:
            known.merge(seen)
        if self.pending >= self.max_pending:
            self._wake.set()

    def nonconformity(
        self, interface: str, software: str | None, version: str | None, rule: str, outcome: Outcome
    ) -> None:
        """One MSSanté rule broken by a message from `software` (as `message` names it),
        `refused` or `reported` (let through) by the policy; never waits, never raises."""
        if rule not in RULES or interface not in INTERFACES:
            log.warning("usage.unknown_rule", extra={"rule": rule[:40], "interface": interface})
            return
        at = self.clock()
        name = self._rule_software(at.astimezone(dt.UTC).date(), clean_label(software) or UNKNOWN)
        if self.counter is not None:
            self.counter.count_nonconformity(interface, name, rule, outcome)
        if self.engine is None:
            return
        version = clean_label(version, VERSION_LENGTH) if name != OTHER else ""
        key = (at.astimezone(dt.UTC).date(), name, version, interface, rule)
        if key not in self._rules and self.pending >= 2 * self.max_pending:
            self.dropped += 1
            return
        counts = self._rules.setdefault(key, RuleCounts())
        if outcome == "refused":
            counts.refused += 1
        else:
            counts.reported += 1
        if self.pending >= self.max_pending:
            self._wake.set()

    def _rule_software(self, day: dt.date, name: str) -> str:
        """`name`, or `other` past the day's `rule_software` distinct names."""
        if day != self._rule_day:
            self._rule_day, self._rule_names = day, set()
        if name in self._rule_names:
            return name
        if len(self._rule_names) < self.rule_software and name != OTHER:
            self._rule_names.add(name)
            return name
        return OTHER

    def _access(
        self,
        grant: Granted,
        interface: Interface,
        software: str | None,
        version: str | None,
        kind: Kind,
    ) -> Access:
        return Access(
            at=self.clock(),
            interface=interface,
            software=software or "",
            version=version or "",
            bal=grant.mailbox,
            platform=grant.route.name,
            idnat=grant.actor,
            delegated=grant.via == "delegation",
            kind=kind,
        )

    # -- life ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows merged in memory, not yet written."""
        return len(self._daily) + len(self._seen) + len(self._rules)

    def start(self) -> None:
        if self._task is None and self.engine is not None:
            self._task = asyncio.create_task(self._flush_forever(), name="usage-flush")

    async def stop(self) -> None:
        """Stop flushing in the background, then write what is left."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True  # a write under way ends first: cancelling it loses it
            self._wake.set()
            self._stop.set()
            await asyncio.gather(task, return_exceptions=True)
        for attempt in range(1, STOP_ATTEMPTS + 1):
            try:
                await self.flush()
                return
            except Exception:
                # the last write of a node: another process stopping at the same moment
                # may hold SQLite's lock beyond its busy timeout (workers of one node)
                if attempt == STOP_ATTEMPTS:
                    raise
                await asyncio.sleep(STOP_RETRY_DELAY * attempt)

    async def flush(self) -> None:
        """Write what is merged now (kept for the next flush when the database fails)."""
        async with self._lock:
            if self.engine is None or not self.pending:
                return
            daily, self._daily = self._daily, {}
            seen, self._seen = self._seen, {}
            rules, self._rules = self._rules, {}
            self._wake.clear()
            try:
                await write(self.engine, daily, seen, rules)
            except BaseException as failure:  # cancelled too: the batch is not lost
                if isinstance(failure, Exception):
                    log.warning("usage.flush_failed", exc_info=True)
                self._merge_back(daily, seen, rules)
                raise
            finally:
                if self.dropped:
                    log.warning("usage.dropped", extra={"accesses": self.dropped})
                    self.dropped = 0

    def _merge_back(
        self,
        daily: dict[DailyKey, Counts],
        seen: dict[SeenKey, Seen],
        rules: dict[RuleKey, RuleCounts],
    ) -> None:
        """Put a batch the database refused back, within the same bound as `record`."""
        full = 2 * self.max_pending
        for rule_key, rule_counts in rules.items():
            if rule_key not in self._rules and self.pending >= full:
                self.dropped += rule_counts.refused + rule_counts.reported
                continue
            known_counts = self._rules.setdefault(rule_key, RuleCounts())
            known_counts.refused += rule_counts.refused
            known_counts.reported += rule_counts.reported
        for key, counts in daily.items():
            if key not in self._daily and self.pending >= full:
                self.dropped += counts.sessions + counts.messages
                continue
            mine = self._daily.setdefault(key, Counts())
            mine.sessions += counts.sessions
            mine.messages += counts.messages
        for seen_key, row in seen.items():
            known = self._seen.get(seen_key)
            if known is not None:
                known.merge(row)
            elif self.pending < full:
                self._seen[seen_key] = row

    async def _flush_forever(self) -> None:
        while not self._stopping:
            try:
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            if self._stopping:
                return
            try:
                await self.flush()
            except Exception:  # logged by flush; the next round tries again
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        await self._stop.wait()
