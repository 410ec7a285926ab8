"""The gateway's API LPS IMAP listener.

Before login the engine's own session answers (CAPABILITY, NOOP, LOGOUT, STARTTLS, ID,
AUTHENTICATE, LOGIN), with an authenticator that validates the PSC token, resolves the
delegation, routes the BAL and opens its backend session (`login`). After login the
connection is relayed (`relay`), or served by the engine over the backend's store; live
sessions are tracked (`live`) so that a revoked or expired delegation ends them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from delegation.audit import AuditAction
from delegation.service import DelegationService
from gateway.backends.base import Upstream
from gateway.card_sessions import CardSessionWatch
from gateway.fronts.imap.audited_store import AuditedStore
from gateway.fronts.imap.live import LiveSessions, ServedSession
from gateway.fronts.imap.login import ProxyAuthenticator, ProxyGrant, close_store
from gateway.fronts.imap.relay import Keeper, Relay
from gateway.fronts.imap.warm import WarmSessions
from gateway.fronts.login import FrontAuthenticator, FrontGrant
from gateway.imap.codes import Code
from gateway.imap.engine import EngineConfig, ImapSession
from gateway.imap.limits import Limits
from gateway.imap.structure_cache import StructureCache
from gateway.imap.transport import SHUTTING_DOWN, ImapServer, ServerConfig, StreamChannel
from gateway.metrics import Metrics
from gateway.psc_sessions import PscSessionWatch
from gateway.runtime.limits import NodeLimits
from gateway.settings import ImapFrontSettings
from gateway.usage import UsageRecorder, interface_for
from gateway.usage.sessions import PendingSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxyConfig:
    server: ServerConfig

    @classmethod
    def from_settings(cls, settings: ImapFrontSettings) -> ProxyConfig:
        limits = Limits(
            max_line_length=settings.max_line,
            max_literal_size=settings.max_literal,
            max_command_literal_size=settings.max_other_literal,
        )
        engine = EngineConfig(
            greeting="MSSante API LPS gateway ready",
            idle_timeout=settings.idle_timeout,
            auth_failure_delay=settings.auth_failure_delay,
        )
        return cls(
            ServerConfig(
                engine=engine,
                limits=limits,
                preauth_timeout=settings.preauth_timeout,
                idle_timeout=settings.idle_timeout,
                write_timeout=settings.write_timeout,
                max_connections=settings.max_connections,
                proxy_protocol_from=tuple(settings.proxy_protocol_from),
                proxy_protocol_timeout=settings.proxy_protocol_timeout,
            )
        )

    def serving_stores(
        self,
        version: Callable[[str, str], int],
        wait: Callable[[str, str, int], Awaitable[None]],
    ) -> ProxyConfig:
        """For the BAL the engine serves itself (historic ones): their change signal, and a
        cache of ENVELOPE / BODYSTRUCTURE shared by the sessions (a message never changes
        under its UID, there as anywhere)."""
        engine = dataclasses.replace(
            self.server.engine, hub_version=version, hub_wait=wait, structures=StructureCache()
        )
        return ProxyConfig(dataclasses.replace(self.server, engine=engine))

    def with_implicit_tls(self) -> ProxyConfig:
        return ProxyConfig(dataclasses.replace(self.server, implicit_tls=True))


class ProxyServer(ImapServer):
    """The API LPS IMAP listener of the gateway. `limits` (the node's caps), `psc` (which
    ends sessions whose PSC session ended) and `card_watch` (sessions whose CPS card is
    revoked or expired) are shared with the node's other fronts."""

    def __init__(
        self,
        config: ProxyConfig,
        front: FrontAuthenticator,
        registry: DelegationService,
        metrics: Metrics,
        ssl_context: ssl.SSLContext | None,
        sock: socket.socket,
        *,
        limits: NodeLimits | None = None,
        psc: PscSessionWatch | None = None,
        card_watch: CardSessionWatch | None = None,
        usage: UsageRecorder | None = None,
        warm: WarmSessions | None = None,
    ) -> None:
        # the node's warm backend sessions, shared by its IMAP listeners
        self.warm = warm if warm is not None else WarmSessions({}, metrics)
        authenticator = ProxyAuthenticator(
            front,
            metrics,
            sessions=limits.sessions_per_person if limits else None,
            warm=self.warm,
        )
        super().__init__(
            config.server,
            authenticator,
            ssl_context,
            sock,
            preauth_slots=limits.imap_preauth if limits else None,
            exempt=limits.exempt if limits else None,
        )
        self.metrics = metrics
        self.audit = front.audit
        self.live = LiveSessions(registry)
        self.gate = front.gate
        self.psc = psc
        self.card_watch = card_watch
        self.usage = usage
        self._relays: dict[asyncio.Task[None], Relay] = {}
        self._served: weakref.WeakKeyDictionary[ImapSession, PendingSession | None] = (
            weakref.WeakKeyDictionary()
        )

    def refused(self, reason: str) -> None:
        self.metrics.refused_connections.labels("imap", reason).inc()

    async def start(self) -> None:
        self.live.start()
        await super().start()

    def _ask_to_leave(self, task: asyncio.Task[None], channel: StreamChannel, reason: str) -> None:
        relay = self._relays.get(task)
        if relay is not None:
            relay.shut_down(reason)
        else:
            super()._ask_to_leave(task, channel, reason)

    def _end_now(self, task: asyncio.Task[None], channel: StreamChannel) -> None:
        relay = self._relays.get(task)
        if relay is not None:
            relay.kick(SHUTTING_DOWN, Code.UNAVAILABLE)
        else:
            super()._end_now(task, channel)

    async def drain(self, grace: float, reason: str = SHUTTING_DOWN) -> None:
        await asyncio.gather(super().drain(grace, reason), self.warm.aclose())

    async def stop(self, grace: float = 5.0) -> None:
        await asyncio.gather(super().stop(grace), self.warm.aclose())
        await self.live.stop()

    async def _handover(self, session: ImapSession, channel: StreamChannel) -> bool:
        grant = session.grant
        if isinstance(grant, FrontGrant) and not isinstance(grant, ProxyGrant):
            if session not in self._served:  # called after every command: track it once
                self._served[session] = self._usage(grant)
                await self._track_served(session, channel, grant)
            pending = self._served.get(session)
            if pending is not None:  # the engine answers ID in any state
                pending.identified(session.client_id)
            return False  # the engine serves it
        if not isinstance(grant, ProxyGrant):
            return False
        relay = Relay(
            session,
            channel,
            grant,
            self.config,
            self.audit,
            self.metrics,
            gate=self.gate,
            keeper=self._keeper(grant),
        )
        usage = self._usage(grant)
        if usage is not None:
            usage.identified(session.client_id)
            relay.identified = usage.identified
        gauge = self.metrics.open_sessions.labels("imap")
        self.live.add(relay)
        if self.gate is not None:
            self.gate.add(relay.mailbox, relay, grant.moves)
        if self.psc is not None and grant.token is not None:  # a card has no PSC session
            self.psc.add(relay, grant.token, grant.identity)
        cards = self.card_watch if grant.card is not None else None
        if cards is not None and grant.card is not None:
            cards.add(relay, grant.card)
        gauge.inc()
        task = asyncio.current_task()
        assert task is not None
        self._relays[task] = relay
        try:
            # A revocation may have come while the backend login ran, before the relay was
            # tracked: ask the registry once more now that later changes will reach it.
            await self.live.confirm(relay)
            await relay.run()
        finally:
            del self._relays[task]
            if usage is not None:
                usage.ended()
            gauge.dec()
            self.live.discard(relay)
            if self.gate is not None:
                self.gate.discard(relay.mailbox, relay)
            if self.psc is not None:
                self.psc.discard(relay)
            if cards is not None:
                cards.discard(relay)
        return True

    def _keeper(self, grant: ProxyGrant) -> Keeper | None:
        """Where the relay hands its backend session when the client leaves it at rest:
        the warm pool, which the registry's changes and the BAL's moves (its `moved`
        event) reach like a live session. Not the gate's: a
        cut-over counts the client sessions it ends, and a move on this node changes the
        BAL's epoch, part of the key."""
        key = grant.warm_key
        if key is None:
            return None
        live = self.live

        def keep(upstream: Upstream, selected: bool) -> bool:
            parked = self.warm.keep(key, upstream, selected, grant)
            if parked is None:
                return False
            live.add(parked)
            parked.gone.append(lambda: live.discard(parked))
            return True

        return keep

    def _usage(self, grant: FrontGrant) -> PendingSession | None:
        """The session's line in the usage figures, once the client says who it is."""
        if self.usage is None:
            return None
        return PendingSession(
            self.usage, grant, interface_for("imap", by_card=grant.means == "card")
        )

    async def _track_served(
        self, session: ImapSession, channel: StreamChannel, grant: FrontGrant
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        served = ServedSession(session, channel, task)
        gauge = self.metrics.open_sessions.labels("imap")
        self.live.add(served)
        gate = self.gate
        if gate is not None:
            gate.add(served.mailbox, served, grant.moves)
        psc = self.psc if grant.token is not None else None  # a card has no PSC session
        if psc is not None and grant.token is not None:
            psc.add(served, grant.token, grant.identity)
        cards = self.card_watch if grant.card is not None else None
        if cards is not None and grant.card is not None:
            cards.add(served, grant.card)
        gauge.inc()
        store = grant.store

        then = grant.on_close

        async def ended() -> None:
            pending = self._served.get(session)
            if pending is not None:
                pending.ended()
            gauge.dec()
            served.ended()
            self.live.discard(served)
            if gate is not None:
                gate.discard(served.mailbox, served)
            if psc is not None:
                psc.discard(served)
            if cards is not None:
                cards.discard(served)
            try:
                if isinstance(store, AuditedStore) and store.reads:
                    await store.record(AuditAction.READ, f"{store.reads} read commands", "ok")
                await close_store(store)
            finally:
                if then is not None:
                    await then()

        session.grant = dataclasses.replace(grant, on_close=ended)
        await self.live.confirm(served)
