"""The IMAP front's login: the front's decision, the person's session cap, then the
backend session (`Backend.open_imap`): a connection to relay, or a store the engine
serves. The login's audit event is written once its outcome is known."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from delegation.audit import AuditAction, AuditRecord
from gateway.backends.base import Upstream
from gateway.backends.errors import BackendError, BackendTokenOnly
from gateway.fronts.imap.audited_store import AuditedStore
from gateway.fronts.imap.rights import audit_action, audit_detail
from gateway.fronts.imap.warm import WarmKey, WarmSessions
from gateway.fronts.login import FrontAuthenticator, FrontGrant
from gateway.imap import commands as c
from gateway.imap.mailstore import MailStore
from gateway.imap.session import ExternalCredentials
from gateway.metrics import Metrics
from gateway.runtime.limits import SlotCounter
from gateway.runtime.login import AuthFailed, ConnectionInfo
from psc_auth.sasl import TokenCredentials

log = logging.getLogger(__name__)

#: What the relay can carry after login: the codec parses these commands. The backend's
#: list is intersected with it (COMPRESS, QRESYNC, ESEARCH... would desynchronise us).
CARRIED: tuple[str, ...] = ("IMAP4rev1", "LITERAL+", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE")
CARRIED += ("UNSELECT", "CHILDREN", "SPECIAL-USE", "ID")
UNAVAILABLE = "mailbox server unavailable, try again later"
MISCONFIGURED = "mailbox server misconfigured"


@functools.lru_cache(maxsize=64)
def carried_capabilities(backend: frozenset[str]) -> tuple[str, ...]:
    """The backend's capabilities a relayed session offers its client (one tuple shared by
    the sessions of a backend, whose capability sets are shared: `parse_capabilities`)."""
    return tuple(cap for cap in CARRIED if cap.upper() in backend or cap == "LITERAL+")


@dataclass(frozen=True, kw_only=True)
class ProxyGrant(FrontGrant):
    """A front login whose backend session is open, ready to relay."""

    upstream: Upstream = field(repr=False, compare=False)
    # where the session may be kept warm once its client leaves; None: it may not
    warm_key: WarmKey | None = field(default=None, compare=False)


class ProxyAuthenticator:
    """The front's decision, then the backend login; counts logins by result.

    The route's backend opens the session: an `Upstream` is relayed (`ProxyGrant`), a
    `MailStore` is served by the engine itself, with its own capabilities, audited.

    With `sessions` (per node), one person holds at most so many logged-in sessions, all
    BAL together: the slot is taken before the backend login and given back when the
    session closes (the grant's `on_close`).

    With `warm`, a login first asks it for a warm session of its key (`warm`)."""

    def __init__(
        self,
        front: FrontAuthenticator,
        metrics: Metrics,
        sessions: SlotCounter | None = None,
        warm: WarmSessions | None = None,
    ) -> None:
        self.front = front
        self.metrics = metrics
        self.sessions = sessions
        self.warm = warm

    async def authenticate(
        self, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> FrontGrant:
        """The login's audit event is written once its outcome is known: refused for the
        person's session cap, failed when the backend cannot be opened, else ok."""
        return await self._login(
            self.front.authenticate(credentials, connection, record_success=False), connection
        )

    async def authenticate_external(
        self, credentials: ExternalCredentials, connection: ConnectionInfo
    ) -> FrontGrant:
        """AUTHENTICATE EXTERNAL with a CPS card: the same, from the card's holder (the
        engine offers it only when the front has a card CA and a certificate came)."""
        return await self._login(
            self.front.authenticate_card(credentials, connection, record_success=False),
            connection,
        )

    async def _login(
        self, deciding: Awaitable[FrontGrant], connection: ConnectionInfo
    ) -> FrontGrant:
        try:
            grant = await deciding
        except AuthFailed as failure:
            self.metrics.logins.labels("imap", failure.kind).inc()
            raise
        event = grant.login_event
        assert event is not None
        sessions = self.sessions
        if sessions is not None:
            try:
                await self.front.take_session_slot(grant, sessions)
            except AuthFailed:
                self.metrics.logins.labels("imap", "limit").inc()
                raise
        closing = _Closing(sessions, grant.actor)
        try:
            opened = await self._open(grant, connection, closing)
        except BaseException as failure:
            if sessions is not None:
                sessions.release(grant.actor)
            kind = failure.kind if isinstance(failure, AuthFailed) else type(failure).__name__
            await asyncio.shield(
                self.front.audit.submit(dataclasses.replace(event, result=f"failed:{kind}"))
            )
            raise
        try:
            await self.front.audit.submit(event)
        except BaseException:  # the login deadline, in the middle of it: nothing may leak
            if sessions is not None:
                sessions.release(grant.actor)
            await asyncio.shield(_discard(opened))
            raise
        return opened

    async def _open(
        self, grant: FrontGrant, connection: ConnectionInfo, closing: _Closing
    ) -> FrontGrant:
        route = grant.route
        key = self.warm.key(grant, connection) if self.warm is not None else None
        if key is not None and self.warm is not None:
            gate = self.front.gate
            held = gate.held if gate is not None else _never
            warm = await self.warm.take(key, held)
            if warm is not None:
                return await self._relayed(grant, warm, key, closing)
        try:
            opened = await route.backend.open_imap(grant.mailbox, grant.token, client=connection)
        except BackendTokenOnly as exc:
            self.metrics.logins.labels("imap", "authorization").inc()
            raise AuthFailed("authorization", exc.text) from None
        except BackendError as exc:
            self.metrics.backend_errors.labels(route.name, "imap", exc.kind).inc()
            self.metrics.logins.labels("imap", "unavailable").inc()
            level = logging.ERROR if exc.kind == "misconfigured" else logging.WARNING
            log.log(
                level,
                "imap.backend_unavailable",
                extra={"backend": route.name, "error": exc.detail},
            )
            text = MISCONFIGURED if exc.kind == "misconfigured" else UNAVAILABLE
            raise AuthFailed("unavailable", text) from None
        if isinstance(opened, Upstream):
            return await self._relayed(grant, opened, key, closing)
        self.metrics.logins.labels("imap", "ok").inc()
        return self._served(grant, opened, connection, closing)

    async def _relayed(
        self, grant: FrontGrant, upstream: Upstream, key: WarmKey | None, closing: _Closing
    ) -> ProxyGrant:
        if "LITERAL+" not in upstream.capabilities:
            await upstream.close()
            self.metrics.backend_errors.labels(grant.route.name, "imap", "protocol").inc()
            self.metrics.logins.labels("imap", "unavailable").inc()
            log.error("imap.backend_without_literal_plus", extra={"backend": grant.route.name})
            raise AuthFailed("unavailable", MISCONFIGURED)
        self.metrics.logins.labels("imap", "ok").inc()
        values = {f.name: getattr(grant, f.name) for f in dataclasses.fields(grant)}
        values.update(
            capabilities=carried_capabilities(upstream.capabilities),
            on_close=closing.then(upstream.close),
        )
        return ProxyGrant(**values, upstream=upstream, warm_key=key)

    def _served(
        self, grant: FrontGrant, store: MailStore, connection: ConnectionInfo, closing: _Closing
    ) -> FrontGrant:
        """A store the engine serves: every command audited like the relay's."""
        audit = self.front.audit

        async def record(action: AuditAction, detail: str, result: str) -> None:
            await audit.submit(
                AuditRecord(
                    grant.actor,
                    grant.mailbox,
                    action,
                    "imap",
                    result=result,
                    delegation_id=grant.delegation_id,
                    software=connection.software,
                    remote=connection.peer,
                    detail=detail or None,
                )
            )

        async def refused(command: c.Command, right: str) -> None:
            self.metrics.rights_refusals.labels("imap", right).inc()
            await command_done(command, "refused:noperm")

        async def command_done(command: c.Command, result: str) -> None:
            action = audit_action(command)
            if action is not None:
                await record(action, audit_detail(command), result)

        return dataclasses.replace(
            grant,
            store=AuditedStore(store, record, self.front.gate),
            capabilities=None,
            on_refused=refused,
            on_selected=command_done,
            on_close=closing.then(grant.on_close),
        )


def _never(bal: str) -> bool:
    return False


async def _discard(opened: FrontGrant) -> None:
    """Close what a login opened for a session that will not be served after all."""
    if isinstance(opened, ProxyGrant):
        await opened.upstream.close()
    await close_store(opened.store)


async def close_store(store: MailStore | None) -> None:
    """A served store may hold resources of its own (an HTTP client): its `aclose`."""
    inner = store.inner if isinstance(store, AuditedStore) else store
    closer: Callable[[], Awaitable[None]] | None = getattr(inner, "aclose", None)
    if closer is not None:
        await closer()


@dataclass(frozen=True, slots=True)
class _Closing:
    """What an opened session's `on_close` does first: give the person's session slot
    back (`sessions` None: no cap). Given to the grant as it is built, so that a login
    makes its grant once rather than again to add this."""

    sessions: SlotCounter | None
    actor: str

    def then(
        self, then: Callable[[], Awaitable[None]] | None
    ) -> Callable[[], Awaitable[None]] | None:
        """The `on_close` that releases the slot, then does `then`."""
        sessions = self.sessions
        if sessions is None:
            return then
        actor = self.actor

        async def close() -> None:
            sessions.release(actor)
            if then is not None:
                await then()

        return close
