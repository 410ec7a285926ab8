"""The gateway's API LPS IMAP front: pre-authentication here, then a relay to the backend.

Before login the engine's own session answers (CAPABILITY, NOOP, LOGOUT, STARTTLS, ID,
AUTHENTICATE, LOGIN), with an authenticator that validates the PSC token, resolves the
delegation, routes the BAL and logs in to its backend. After login the connection is
relayed: client commands are parsed by the codec (rights, audit) and re-serialised to the
backend; backend bytes go back as they come, framed only enough to find response
boundaries. Live relays are tracked so that a revoked or expired delegation ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import re
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from delegation.audit import AuditAction, AuditRecord
from delegation.events import ChangeEvent
from delegation.service import DelegationService
from gateway.access import FrontAuthenticator, FrontGrant
from gateway.audit import AuditSink, in_background
from gateway.backends.imap_client import BackendError, Upstream, open_upstream
from gateway.backends.legacy_ws.store import LegacyBackends, LegacyWsStore
from gateway.imap import commands as c
from gateway.imap.audited_store import AuditedStore
from gateway.imap.engine import EngineConfig, ImapSession
from gateway.imap.framing import FramingError, ResponseFramer
from gateway.imap.limits import Limits
from gateway.imap.mailstore import MailStore
from gateway.imap.response import continuation, tagged, untagged_status
from gateway.imap.rights import audit_action, audit_detail, required_right
from gateway.imap.serialize import serialize
from gateway.imap.session import AuthFailed, ConnectionInfo
from gateway.imap.structure_cache import StructureCache
from gateway.imap.transport import ImapServer, ServerConfig, WriteTimeout, _StreamChannel
from gateway.lifecycle import cancelled
from gateway.limits import NodeLimits, SlotCounter
from gateway.metrics import Metrics
from gateway.net import FAIR_SHARE
from gateway.psc_sessions import PscSessionWatch
from gateway.settings import ImapFrontSettings
from psc_auth.sasl import TokenCredentials

log = logging.getLogger(__name__)

RELAY_READ = 256 * 1024
KICK_GRACE = 1.0  # seconds a BYE waits for the response being relayed to end
MAX_AUDITS_IN_FLIGHT = 64  # a session's events handed to the audit sink, not yet queued
GAP_CHECK = 1.0  # seconds between checks for change events lost by the bus

#: What the relay can carry after login: the codec parses these commands. The backend's
#: list is intersected with it (COMPRESS, QRESYNC, ESEARCH... would desynchronise us).
CARRIED: tuple[str, ...] = ("IMAP4rev1", "LITERAL+", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE")
CARRIED += ("UNSELECT", "CHILDREN", "SPECIAL-USE", "ID")
#: A response code right after a status word: never text inside data (a folder or subject
#: may well contain "[CAPABILITY ...]").
_STATUS_CODE = re.compile(
    rb"(?P<head>\S+ (?:OK|NO|BAD|PREAUTH|BYE) )\[(?P<name>CAPABILITY|PERMANENTFLAGS)[ \]]"
    rb"[^\]\r\n]*\]",
    re.IGNORECASE,
)
_BYE = re.compile(rb"\* BYE(?:[ \r\n]|\Z)", re.IGNORECASE)
_READ_WRITE = re.compile(rb"(?P<head>\S+ OK )\[READ-WRITE\]", re.IGNORECASE)


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


def carried_capabilities(backend: frozenset[str]) -> tuple[str, ...]:
    return tuple(cap for cap in CARRIED if cap.upper() in backend or cap == "LITERAL+")


@dataclass(frozen=True, kw_only=True)
class ProxyGrant(FrontGrant):
    """A front login whose backend session is open, ready to relay."""

    upstream: Upstream = field(repr=False, compare=False)


class ProxyAuthenticator:
    """The front's decision, then the backend login; counts logins by result.

    A BAL routed to a `legacy_ws` backend (the historic web services) opens no upstream:
    the grant carries a `LegacyWsStore` and the engine serves the session itself, with its
    own capabilities. `legacy` (set by the gateway) holds what those stores share.

    With `sessions` (per node), one person holds at most so many logged-in sessions, all
    BAL together: the slot is taken before the backend login and given back when the
    session closes (the grant's `on_close`)."""

    def __init__(
        self,
        front: FrontAuthenticator,
        metrics: Metrics,
        legacy: LegacyBackends | None = None,
        sessions: SlotCounter | None = None,
    ) -> None:
        self.front = front
        self.metrics = metrics
        self.legacy = legacy
        self.sessions = sessions

    async def authenticate(
        self, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> FrontGrant:
        """The login's audit event is written once its outcome is known: refused for the
        person's session cap, failed when the backend cannot be opened, else ok."""
        try:
            grant = await self.front.authenticate(credentials, connection, record_success=False)
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
        try:
            opened = await self._open(grant, credentials, connection)
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
        if sessions is None:
            return opened
        on_close = _released(sessions, grant.actor, opened.on_close)
        return dataclasses.replace(opened, on_close=on_close)

    async def _open(
        self, grant: FrontGrant, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> FrontGrant:
        route = grant.route
        if route.backend.kind == "legacy_ws":
            if self.legacy is None:
                self.metrics.logins.labels("imap", "unavailable").inc()
                log.error("imap.legacy_ws_not_configured", extra={"backend": route.name})
                raise AuthFailed("unavailable", "mailbox server misconfigured")
            store = self.legacy.store(route.name, route.backend, grant.mailbox)
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

            self.metrics.logins.labels("imap", "ok").inc()
            return dataclasses.replace(
                grant,
                store=AuditedStore(store, record),
                capabilities=None,
                on_refused=refused,
                on_selected=command_done,
            )
        try:
            upstream = await open_upstream(route, grant.mailbox, credentials.token)
        except BackendError as exc:
            self.metrics.backend_errors.labels(route.name, "imap", exc.kind).inc()
            self.metrics.logins.labels("imap", "unavailable").inc()
            log.warning(
                "imap.backend_unavailable", extra={"backend": route.name, "error": exc.text}
            )
            raise AuthFailed("unavailable", "mailbox server unavailable, try again later") from None
        if "LITERAL+" not in upstream.capabilities:
            await upstream.close()
            self.metrics.backend_errors.labels(route.name, "imap", "protocol").inc()
            self.metrics.logins.labels("imap", "unavailable").inc()
            log.error("imap.backend_without_literal_plus", extra={"backend": route.name})
            raise AuthFailed("unavailable", "mailbox server misconfigured")
        self.metrics.logins.labels("imap", "ok").inc()
        values = {f.name: getattr(grant, f.name) for f in dataclasses.fields(grant)}
        values.update(
            capabilities=carried_capabilities(upstream.capabilities), on_close=upstream.close
        )
        return ProxyGrant(**values, upstream=upstream)


class Relay:
    """One logged-in client connection carried to its backend connection."""

    def __init__(
        self,
        session: ImapSession,
        channel: _StreamChannel,
        grant: ProxyGrant,
        config: ServerConfig,
        audit: AuditSink,
        metrics: Metrics,
    ) -> None:
        self.session = session
        self.channel = channel
        self.grant = grant
        self.up = grant.upstream
        self.config = config
        self.audit = audit
        self.metrics = metrics
        self.rights = grant.rights
        self.expires_at = grant.decision.expires_at
        self.framer = ResponseFramer()
        self.pending: dict[str, c.Command] = {}
        self.reads = 0
        self.logging_out = False
        self._out = asyncio.Lock()
        self._holding = False
        self._idle_tag: str | None = None
        self._idle_answered = asyncio.Event()
        self._idle_accepted = False
        self._kicked: str | None = None
        self._closed = False
        self._audits: set[asyncio.Future[None]] = set()  # events handed over, not yet queued
        self._tasks: list[asyncio.Task[str | None]] = []
        self._expiry: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._backend_seen = self._loop.time()
        self._sent_at: dict[str, float] = {}
        caps = " ".join(grant.capabilities or ())
        self._capability_line = f"* CAPABILITY {caps}\r\n".encode()
        self._capability_code = f"[CAPABILITY {caps}]".encode()
        self._backend_said_bye = False
        self._to_client = metrics.relayed_bytes.labels("imap", "to_client")
        self._to_backend = metrics.relayed_bytes.labels("imap", "to_backend")

    @property
    def mailbox(self) -> str:
        return self.grant.mailbox

    @property
    def actor(self) -> str:
        return self.grant.actor

    # -- life --------------------------------------------------------------------------
    async def run(self) -> None:
        self._schedule_expiry()
        self._tasks = [
            asyncio.create_task(self._from_backend(), name="imap-relay-backend"),
            asyncio.create_task(self._from_client(), name="imap-relay-client"),
        ]
        if self._kicked is not None:
            for task in self._tasks:
                task.cancel()
        bye: str | None = None
        deaf: WriteTimeout | None = None
        try:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is None and bye is None:
                    bye = task.result()
                elif not task.cancelled() and task.exception() is not None:
                    error = task.exception()
                    if isinstance(error, WriteTimeout):
                        deaf = error
                    elif not isinstance(error, ConnectionError | ssl.SSLError):
                        log.error("imap.relay_failed", exc_info=error)
                        bye = "internal gateway error"
        finally:
            self._closed = True  # from here, a revocation or a PSC logout has nothing to end
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._expiry is not None:
                self._expiry.cancel()
            if self._kicked is not None:
                bye = self._kicked
            if bye is not None:
                with contextlib.suppress(Exception):
                    self.channel.writer.write(untagged_status("BYE", bye))
                    await asyncio.wait_for(self.channel.writer.drain(), KICK_GRACE)
            await self.up.close()
            if self.reads:
                await self._record(AuditAction.READ, f"{self.reads} read commands", "ok")
        if deaf is not None:
            raise deaf  # the transport cuts the connection instead of waiting for the client

    def kick(self, reason: str) -> None:
        """End the session with `* BYE reason` (delegation revoked or expired, PSC session
        over); the audit trail says so."""
        if self._kicked is not None or self._closed:
            return
        self._kicked = reason
        log.info("imap.session_kicked", extra={"bal": self.mailbox, "reason": reason})
        self._record_soon(AuditAction.SESSION_END, reason, "ok")
        for task in self._tasks:
            task.cancel()

    def update(self, rights: frozenset[str], expires_at: dt.datetime | None) -> None:
        """The delegation changed but still stands: apply its new rights and expiry."""
        if self._closed:
            return
        self.rights = rights
        self.expires_at = expires_at
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.expires_at is None or self.grant.via != "delegation":
            return
        delay = (self.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
        self._expiry = self._loop.call_later(
            max(0.0, delay), self.kick, f"delegation on {self.mailbox} expired"
        )

    # -- backend to client ---------------------------------------------------------------
    async def _from_backend(self) -> str | None:
        try:
            if self.up.leftover:
                await self._relay(self.up.leftover)
            reader = self.up.reader
            timeout = self.up.route.backend.reply_timeout
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(RELAY_READ)
                except TimeoutError:
                    if self._overdue(timeout):
                        self._backend_error("timeout")
                        return "mailbox server not responding"
                    continue
                except (ConnectionError, ssl.SSLError):
                    data = b""
                if not data:
                    if self.logging_out or self._backend_said_bye:
                        return None  # an orderly end: the client has the backend's BYE
                    self._backend_error("died")
                    return "connection to the mailbox server lost"
                self._backend_seen = self._loop.time()
                await self._relay(data)
        except FramingError as exc:
            self._backend_error("protocol")
            log.warning("imap.backend_framing", extra={"error": str(exc)})
            return "mailbox server sent invalid data"
        finally:
            if self._holding:
                self._holding = False
                self._out.release()

    def _overdue(self, timeout: float) -> bool:
        waiting = [at for tag, at in self._sent_at.items() if tag != self._idle_tag]
        if not waiting:
            return False
        return self._loop.time() - max(min(waiting), self._backend_seen) >= timeout

    def _backend_error(self, kind: str) -> None:
        self.metrics.backend_errors.labels(self.up.route.name, "imap", kind).inc()

    async def _relay(self, data: bytes) -> None:
        segments = self.framer.feed(data)
        if not self._holding:
            await self._out.acquire()
            self._holding = True
        rewritten = False
        out: list[bytes | memoryview] = []
        for segment in segments:
            if segment.head:
                line = bytes(segment.data)
                forwarded = self._inspect(line)
                rewritten = rewritten or forwarded is not line
                out.append(forwarded)
            else:
                out.append(segment.data)
        writer = self.channel.writer
        if rewritten or not self.framer.exact:
            writer.writelines(out)  # whole lines only: a cut line goes out once complete
        else:
            writer.write(data)  # the usual case: the bytes as received, no copy
        self._to_client.inc(len(data))
        await self.channel.drain()  # a client that does not read ends here (WriteTimeout)
        if self.framer.at_boundary:
            self._holding = False
            self._out.release()

    def _inspect(self, line: bytes) -> bytes:
        """Look at the first line of a backend response; return what to forward."""
        if line.startswith(b"+"):
            if self._idle_tag is not None and not self._idle_answered.is_set():
                self._idle_accepted = True
                self._idle_answered.set()
            return line
        if line.startswith(b"* "):
            if line[2:13].upper() == b"CAPABILITY ":
                return self._capability_line
            if _BYE.match(line):
                self._backend_said_bye = True
            return self._rewrite_code(line)
        tag, _, rest = line.partition(b" ")
        name = tag.decode("ascii", "replace")
        command = self.pending.pop(name, None)
        self._sent_at.pop(name, None)
        if command is not None:
            self._completed(command, rest[:3].upper().rstrip().decode("ascii", "replace"))
            if isinstance(command, c.Select) and "write" not in self.rights:
                # What this delegate may do in it: nothing but \Seen (PERMANENTFLAGS).
                return _READ_WRITE.sub(rb"\g<head>[READ-ONLY]", line, count=1)
        return self._rewrite_code(line)

    def _rewrite_code(self, line: bytes) -> bytes:
        """The gateway's capability list instead of the backend's; without the write right,
        only \\Seen as a permanent flag (as the engine says for such a delegate)."""
        if b"[" not in line:
            return line
        match = _STATUS_CODE.match(line)
        if match is None:
            return line
        name = match.group("name").upper()
        if name == b"CAPABILITY":
            code = self._capability_code
        elif "write" not in self.rights:
            code = b"[PERMANENTFLAGS (\\Seen)]" if "read" in self.rights else b"[PERMANENTFLAGS ()]"
        else:
            return line
        return match.group("head") + code + line[match.end() :]

    def _completed(self, command: c.Command, status: str) -> None:
        if isinstance(command, c.Idle) and command.tag == self._idle_tag:
            self._idle_answered.set()
        action = audit_action(command)
        if action is not None:
            result = "ok" if status == "OK" else f"failed:{status.lower()}"
            self._record_soon(action, audit_detail(command), result)

    # -- client to backend ---------------------------------------------------------------
    async def _from_client(self) -> str | None:
        parser = self.channel.parser
        served = 0
        while True:
            served += 1
            if served % FAIR_SHARE == 0:
                await asyncio.sleep(0)  # a pipelining client is served in turns
            while len(self._audits) >= MAX_AUDITS_IN_FLIGHT:
                # A client whose commands make events faster than the trail takes them
                # waits for it, rather than pushing everyone else's events back.
                await asyncio.wait(list(self._audits), return_when=asyncio.FIRST_COMPLETED)
            event = parser.next_event()
            if event is None:
                # Read no more commands while the answers to the last ones pile up unread.
                await self.channel.drain()
                try:
                    async with asyncio.timeout(self.config.idle_timeout):
                        if not await self.channel.fill():
                            return None
                except TimeoutError:
                    return "autologout: idle too long"
                continue
            if isinstance(event, c.ContinuationNeeded):
                if event.message and "write" not in self.rights:
                    parser.reject_literal()  # refuse before the client uploads the message
                    self.metrics.rights_refusals.labels("imap", "write").inc()
                    self._record_soon(AuditAction.APPEND, f"{event.size} bytes", "refused:noperm")
                    await self._local(
                        tagged(event.tag or "*", "NO", "the write right is needed", "NOPERM")
                    )
                else:
                    await self._local(continuation("ready for literal data"))
            elif isinstance(event, c.CommandError):
                if event.fatal:
                    return event.message
                if event.tag is None:
                    await self._local(untagged_status("BAD", event.message))
                else:
                    await self._local(tagged(event.tag, event.status, event.message))
            elif isinstance(event, c.Command):
                ending = await self._command(event)
                if ending is not None:
                    return ending or None

    async def _command(self, command: c.Command) -> str | None:
        """Forward `command` or answer it here. Returns a BYE text to end the session
        ("" to end it silently), None to go on."""
        if command.tag in self.pending:
            # Completions are matched by tag: a second one in flight would blur the audit.
            await self._local(tagged(command.tag, "BAD", "tag already in use"))
            return None
        if isinstance(command, c.StartTls | c.Authenticate | c.Login):
            await self._local(tagged(command.tag, "BAD", "already authenticated"))
            return None
        if isinstance(command, c.Enable):
            await self._local(b"* ENABLED\r\n" + tagged(command.tag, "OK", "ENABLE completed"))
            return None
        right = required_right(command)
        if right is not None and right not in self.rights:
            self.metrics.rights_refusals.labels("imap", right).inc()
            action = audit_action(command)
            if action is not None:
                self._record_soon(action, audit_detail(command), "refused:noperm")
            await self._local(
                tagged(command.tag, "NO", f"the {right} right is needed for this", "NOPERM")
            )
            return None
        if isinstance(command, c.Close) and "write" not in self.rights:
            if "UNSELECT" not in self.up.capabilities:
                await self._local(tagged(command.tag, "NO", "use UNSELECT", "CANNOT"))
                return None
            command = c.Unselect(command.tag)  # CLOSE would expunge: a change
        if right == "read" and not isinstance(command, c.Select | c.Store):
            self.reads += 1
        if isinstance(command, c.Idle):
            if "IDLE" not in self.up.capabilities:
                await self._local(tagged(command.tag, "BAD", "IDLE not supported here"))
                return None
            self._idle_tag = command.tag
            self._idle_answered.clear()
            self._idle_accepted = False
        if isinstance(command, c.Logout):
            self.logging_out = True
        await self._to(serialize(command, literal_plus=True), command)
        if isinstance(command, c.Idle):
            return await self._idle(command)
        return None

    async def _idle(self, command: c.Idle) -> str | None:
        try:
            async with asyncio.timeout(self.up.route.backend.reply_timeout):
                await self._idle_answered.wait()
        except TimeoutError:
            self._backend_error("timeout")
            return "mailbox server not responding"
        if not self._idle_accepted:
            self._idle_tag = None
            return None
        try:
            async with asyncio.timeout(self.config.idle_timeout):
                line = await self.channel.read_raw_line()
        except TimeoutError:
            return "autologout: idle too long"
        if line is None:
            return ""
        if line.strip().upper() != b"DONE":
            await self._local(untagged_status("BAD", "expected DONE"))
        self._idle_tag = None
        self._sent_at[command.tag] = self._loop.time()  # its completion is due from now
        await self._to(b"DONE\r\n", None)
        return None

    async def _to(self, data: bytes, command: c.Command | None) -> None:
        if command is not None:
            self.pending[command.tag] = command
            self._sent_at[command.tag] = self._loop.time()
        self.up.writer.write(data)
        self._to_backend.inc(len(data))
        await self.up.writer.drain()

    async def _local(self, data: bytes) -> None:
        async with self._out:
            await self.channel.write(data)

    # -- audit ---------------------------------------------------------------------------
    def _record_soon(self, action: AuditAction, detail: str, result: str) -> None:
        task = in_background(self._record(action, detail, result))
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    async def _record(self, action: AuditAction, detail: str, result: str) -> None:
        await self.audit.submit(
            AuditRecord(
                self.actor,
                self.mailbox,
                action,
                "imap",
                result=result,
                delegation_id=self.grant.delegation_id,
                software=self.session.client_software(),
                remote=self.session.connection.peer,
                detail=detail or None,
            )
        )


async def _discard(opened: FrontGrant) -> None:
    """Close what a login opened for a session that will not be served after all."""
    if isinstance(opened, ProxyGrant):
        await opened.upstream.close()
    await _close_store(opened.store)


async def _close_store(store: MailStore | None) -> None:
    """A historic-platform store holds an HTTP client of its own; nothing else to close."""
    inner = store.inner if isinstance(store, AuditedStore) else store
    if isinstance(inner, LegacyWsStore):
        await inner.aclose()


def _released(
    sessions: SlotCounter, actor: str, then: Callable[[], Awaitable[None]] | None
) -> Callable[[], Awaitable[None]]:
    """An `on_close` that gives the person's session slot back, then does `then`."""

    async def close() -> None:
        sessions.release(actor)
        if then is not None:
            await then()

    return close


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
        self, session: ImapSession, channel: _StreamChannel, task: asyncio.Task[None]
    ) -> None:
        assert isinstance(session.grant, FrontGrant)
        self.session = session
        self.channel = channel
        self.task = task
        self._grant: FrontGrant = session.grant
        self._expiry: asyncio.TimerHandle | None = None
        self._kicked = False
        self._ended = False
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
        log.info("imap.session_kicked", extra={"bal": self.mailbox, "reason": reason})
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
        key = (event.mailbox, event.delegate_idnat)
        if key not in self._relays:
            return
        if event.kind in ("revoked", "expired"):
            for relay in list(self._relays.get(key, ())):
                if relay.grant.via == "delegation":
                    relay.kick(f"delegation on {event.mailbox} {event.kind}")
        else:
            await self._recheck([key])

    async def confirm(self, relay: LiveSession) -> None:
        if relay.grant.via != "delegation":
            return
        decision = await self.registry.decide(relay.grant.identity, relay.mailbox)
        if decision.grant is None:
            relay.kick(f"delegation on {relay.mailbox} {decision.refusal or 'withdrawn'}")
        else:
            relay.update(decision.grant.rights, decision.grant.expires_at)

    async def _recheck(self, keys: list[tuple[str, str]]) -> None:
        """Compare live delegated sessions with the registry: end or update them."""
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


class ProxyServer(ImapServer):
    """The API LPS IMAP listener of the gateway. `limits` (the node's caps) and `psc`
    (which ends sessions whose PSC session ended) are shared with the node's other fronts."""

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
    ) -> None:
        authenticator = ProxyAuthenticator(
            front, metrics, sessions=limits.sessions_per_person if limits else None
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
        self.psc = psc
        self._served: weakref.WeakSet[ImapSession] = weakref.WeakSet()

    def refused(self, reason: str) -> None:
        self.metrics.refused_connections.labels("imap", reason).inc()

    async def start(self) -> None:
        self.live.start()
        await super().start()

    async def stop(self, grace: float = 5.0) -> None:
        await super().stop(grace)
        await self.live.stop()

    async def _handover(self, session: ImapSession, channel: _StreamChannel) -> bool:
        grant = session.grant
        if isinstance(grant, FrontGrant) and not isinstance(grant, ProxyGrant):
            if session not in self._served:  # called after every command: track it once
                self._served.add(session)
                await self._track_served(session, channel, grant)
            return False  # the engine serves it
        if not isinstance(grant, ProxyGrant):
            return False
        relay = Relay(session, channel, grant, self.config, self.audit, self.metrics)
        gauge = self.metrics.open_sessions.labels("imap")
        self.live.add(relay)
        if self.psc is not None:
            self.psc.add(relay, grant.credentials.token, grant.identity)
        gauge.inc()
        try:
            # A revocation may have come while the backend login ran, before the relay was
            # tracked: ask the registry once more now that later changes will reach it.
            await self.live.confirm(relay)
            await relay.run()
        finally:
            gauge.dec()
            self.live.discard(relay)
            if self.psc is not None:
                self.psc.discard(relay)
        return True

    async def _track_served(
        self, session: ImapSession, channel: _StreamChannel, grant: FrontGrant
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        served = ServedSession(session, channel, task)
        gauge = self.metrics.open_sessions.labels("imap")
        self.live.add(served)
        psc = self.psc
        if psc is not None:
            psc.add(served, grant.credentials.token, grant.identity)
        gauge.inc()
        store = grant.store

        then = grant.on_close

        async def ended() -> None:
            gauge.dec()
            served.ended()
            self.live.discard(served)
            if psc is not None:
                psc.discard(served)
            try:
                if isinstance(store, AuditedStore) and store.reads:
                    await store.record(AuditAction.READ, f"{store.reads} read commands", "ok")
                await _close_store(store)
            finally:
                if then is not None:
                    await then()

        session.grant = dataclasses.replace(grant, on_close=ended)
        await self.live.confirm(served)
