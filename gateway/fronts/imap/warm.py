"""Warm backend sessions: an IMAP backend session kept open a few seconds after its client
left, for the next login that would have opened the very same one (an LPS reconnecting
with a fresh token), saving the backend's connect, TLS, ID and SASL round trips.

A session is kept only when its relay ended at rest (no command awaiting the backend, not
in IDLE, nothing left unread), under a key naming everything that made it what it is:
backend, BAL, person, rights, delegation, means, the client's address (the backend was
told it with ID before login) and the BAL's moves. It is handed only to a login with the
same key, after an UNSELECT and a NOOP that proves it alive (`refreshed`); never to
another person or other rights. While it waits it must stay silent: any byte or the end
of the connection drops it. It is dropped at once when its delegation is revoked, changed
or expires, when its BAL moves (registered like a live session), when the backend's
writes are held (checked at reuse), when its time is up, and at shutdown: each drop is a
LOGOUT. A login that finds no session for its key first closes the warm sessions of other
keys on the same BAL from the same address, which the backend counts against the same
per user and address limit (Dovecot's ``mail_max_userip_connections``).

Pools live in one process: each worker of a multi-process node keeps its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.backends.base import Upstream
from gateway.backends.errors import BackendError
from gateway.backends.imap_smtp.upstream import log_out, refreshed
from gateway.bal_migration.gate import MOVED_BYE
from gateway.fronts.login import FrontGrant
from gateway.metrics import Metrics
from gateway.runtime import logs
from gateway.runtime.limits import ip_address_of
from gateway.runtime.login import ConnectionInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WarmPolicy:
    """A backend's `keep_warm` (seconds, 0: never) and `keep_warm_max` (sessions)."""

    seconds: float
    most: int

    @property
    def enabled(self) -> bool:
        return self.seconds > 0 and self.most > 0


@dataclass(frozen=True, slots=True)
class WarmKey:
    """What makes a backend session the one a login would open."""

    backend: str  # the route's name
    placed: str  # the backend the registry's record named at login
    mailbox: str
    actor: str
    rights: frozenset[str]
    via: str
    delegation_id: int | None
    means: str
    client: str  # the client's address, as the backend was told it
    connected: str  # the address the client reached (x-connected-ip)
    moves: int  # the BAL's moves on this node when the login decided

    @classmethod
    def of(cls, grant: FrontGrant, connection: ConnectionInfo) -> WarmKey | None:
        client = ip_address_of(connection.peer)
        if client is None:
            return None
        return cls(
            grant.route.name,
            grant.decision.backend,
            grant.mailbox.strip().lower(),
            grant.actor,
            grant.rights,
            grant.via,
            grant.delegation_id,
            grant.means,
            str(client),
            connection.local_address,
            grant.moves,
        )

    @property
    def place(self) -> tuple[str, str, str]:
        """(backend, BAL, address): what the backend's per user and address limit counts."""
        return self.backend, self.mailbox, self.client


class Parked:
    """One warm session. Tracked like a live session (`kick`, `update`), so that the
    registry's changes and a move of its BAL drop it."""

    def __init__(
        self,
        pool: WarmSessions,
        key: WarmKey,
        upstream: Upstream,
        selected: bool,
        grant: FrontGrant,
    ) -> None:
        self.pool = pool
        self.key = key
        self.upstream = upstream
        self.selected = selected
        self.grant = grant
        self.session_id = logs.session_id.get()  # the backend logs it under this one's login
        self.gone: list[Callable[[], None]] = []  # told when it leaves the pool
        self._timer: asyncio.TimerHandle | None = None
        self._watch = asyncio.create_task(upstream.reader.read(1), name="imap-warm-watch")
        self._watch.add_done_callback(self._spoke)

    def _spoke(self, watch: asyncio.Task[bytes]) -> None:
        """The backend said something, or closed: nothing it says while waiting is good
        (once its client is gone, the session must stay silent). Nothing when `detach`
        stopped the watch: the session has left the pool then."""
        if not watch.cancelled():
            watch.exception()  # retrieved: a reset connection is no error to report
        self.pool.drop(self, "backend")

    @property
    def mailbox(self) -> str:
        return self.grant.mailbox

    @property
    def actor(self) -> str:
        return self.grant.actor

    def schedule(self, seconds: float, expires_at: dt.datetime | None) -> None:
        """Drop when its time is up, or when its delegation expires if sooner."""
        if self._timer is not None:
            self._timer.cancel()
        reason = "expired"
        if expires_at is not None and self.grant.via == "delegation":
            left = (expires_at - dt.datetime.now(dt.UTC)).total_seconds()
            if left < seconds:
                seconds, reason = max(0.0, left), "revoked"
        self._timer = asyncio.get_running_loop().call_later(seconds, self.pool.drop, self, reason)

    def kick(self, reason: str) -> None:
        self.pool.drop(self, "moved" if reason == MOVED_BYE else "revoked")

    def update(self, rights: frozenset[str], expires_at: dt.datetime | None) -> None:
        if rights != self.key.rights:
            self.pool.drop(self, "changed")
        else:
            self.schedule(self.pool.seconds_left(self), expires_at)

    async def detach(self) -> bool:
        """Stop watching; False when the connection spoke or ended meanwhile."""
        if self._timer is not None:
            self._timer.cancel()
        if self._watch.done():
            return False
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await self._watch
        return self._watch.cancelled()


class WarmSessions:
    """The warm sessions of one process (its IMAP listeners share them), by key, with each
    backend's policy."""

    def __init__(self, policies: Mapping[str, WarmPolicy], metrics: Metrics) -> None:
        self.policies = dict(policies)
        self.metrics = metrics
        self._parked: dict[WarmKey, list[Parked]] = {}
        self._since: dict[Parked, float] = {}  # oldest first
        self._closing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False  # the node stops: nothing is kept any more

    def __len__(self) -> int:
        return len(self._since)

    def enabled(self, backend: str) -> bool:
        policy = self.policies.get(backend)
        return policy is not None and policy.enabled

    def key(self, grant: FrontGrant, connection: ConnectionInfo) -> WarmKey | None:
        """The key a login's session would be kept under; None when it would not be."""
        if not self.enabled(grant.route.name):
            return None
        return WarmKey.of(grant, connection)

    # -- keeping -----------------------------------------------------------------------
    def keep(
        self, key: WarmKey, upstream: Upstream, selected: bool, grant: FrontGrant
    ) -> Parked | None:
        """Keep a session whose client left, its relay at rest; None when it may not be
        (the backend's policy, nothing unread, the delegation still current)."""
        policy = self.policies.get(key.backend)
        if policy is None or not policy.enabled or self._closed:
            return None
        if selected and "UNSELECT" not in {c.upper() for c in upstream.capabilities}:
            self._refused(key, "unselect")
            return None
        reader = upstream.reader
        if reader.at_eof() or reader._buffer or upstream.leftover:  # type: ignore[attr-defined]
            self._refused(key, "unread")
            return None
        expires_at = grant.decision.expires_at
        lapsed = expires_at is not None and expires_at <= dt.datetime.now(dt.UTC)
        if grant.via == "delegation" and lapsed:
            self._refused(key, "revoked")
            return None
        mine = [p for p in self._since if p.key.backend == key.backend]
        if len(mine) >= policy.most:
            self.drop(mine[0], "full")
        self._loop = asyncio.get_running_loop()
        parked = Parked(self, key, upstream, selected, grant)
        self._parked.setdefault(key, []).append(parked)
        self._since[parked] = self._loop.time()
        parked.schedule(policy.seconds, expires_at)
        self.metrics.warm_sessions.labels(key.backend, "kept").inc()
        self._gauge(key.backend)
        return parked

    def _refused(self, key: WarmKey, reason: str) -> None:
        self.metrics.warm_drops.labels(key.backend, reason).inc()

    def seconds_left(self, parked: Parked) -> float:
        policy = self.policies[parked.key.backend]
        since = self._since.get(parked)
        if since is None or self._loop is None:
            return 0.0
        return max(0.0, policy.seconds - (self._loop.time() - since))

    # -- taking ------------------------------------------------------------------------
    async def take(self, key: WarmKey, held: Callable[[str], bool]) -> Upstream | None:
        """A warm session for `key`, refreshed and proved alive; None (a miss) when there
        is none fit, after closing those of other keys the backend counts with it.
        `held(bal)`: the BAL's writes are held (a migration's cut-over)."""
        while self._parked.get(key):
            parked = self._parked[key][-1]  # the most recent: the likeliest alive
            self._forget(parked)
            if held(key.mailbox):
                self._closed_later(parked, "held")
                continue
            try:
                if not await parked.detach():
                    self._closed_later(parked, "backend", polite=False)
                    continue
                upstream = await refreshed(parked.upstream, selected=parked.selected)
            except BackendError as exc:
                log.info("imap.warm_stale", extra={"backend": key.backend, "error": exc.detail})
                self._closed_later(parked, "stale", polite=False)
                continue
            except BaseException:  # the login's deadline: the session is in no known state
                parked.upstream.writer.transport.abort()
                raise
            self.metrics.warm_sessions.labels(key.backend, "hit").inc()
            log.info(
                "imap.warm_reused",
                extra={"backend": key.backend, "first_session": parked.session_id},
            )
            return upstream
        self.metrics.warm_sessions.labels(key.backend, "miss").inc()
        others = [p for p in self._since if p.key.place == key.place]
        closing = []
        for parked in others:
            self._forget(parked)
            closing.append(self._closed_later(parked, "evicted"))
        if closing:  # the backend counts them until they are gone
            await asyncio.gather(*closing, return_exceptions=True)
        return None

    # -- dropping ----------------------------------------------------------------------
    def drop(self, parked: Parked, reason: str) -> None:
        """Close a warm session with LOGOUT (once; nothing if it left the pool already)."""
        if parked not in self._since:
            return
        self._forget(parked)
        self._closed_later(parked, reason)

    def _forget(self, parked: Parked) -> None:
        self._since.pop(parked, None)
        group = self._parked.get(parked.key)
        if group is not None:
            with contextlib.suppress(ValueError):
                group.remove(parked)
            if not group:
                del self._parked[parked.key]
        for gone in parked.gone:
            gone()
        parked.gone.clear()
        self._gauge(parked.key.backend)

    def _closed_later(
        self, parked: Parked, reason: str, *, polite: bool = True
    ) -> asyncio.Task[None]:
        self.metrics.warm_drops.labels(parked.key.backend, reason).inc()
        task = asyncio.create_task(self._close(parked, polite), name="imap-warm-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    async def _close(self, parked: Parked, polite: bool) -> None:
        alive = await parked.detach()
        if polite and alive:
            await log_out(parked.upstream)
        else:
            await parked.upstream.close()

    def _gauge(self, backend: str) -> None:
        count = sum(1 for p in self._since if p.key.backend == backend)
        self.metrics.warm_open.labels(backend).set(count)

    async def aclose(self) -> None:
        """Shutdown: every warm session closed with LOGOUT, none kept from now on."""
        self._closed = True
        await self.drop_all()

    async def drop_all(self, reason: str = "shutdown") -> None:
        """Close every warm session with LOGOUT, and wait until they are closed."""
        for parked in list(self._since):
            self.drop(parked, reason)
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
