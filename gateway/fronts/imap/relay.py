"""The relay: one logged-in client connection carried to its backend connection.

Client commands are parsed by the codec (rights, audit) and re-serialised to the backend;
backend bytes go back as they come, framed only enough to find response boundaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as dt
import functools
import logging
import re
import ssl
from collections.abc import Callable, Mapping

from delegation.audit import AuditAction, AuditRecord
from gateway.audit import AuditSink, in_background
from gateway.backends.base import Upstream
from gateway.backends.imap_smtp.upstream import log_out
from gateway.bal_migration.gate import MOVED_BYE, BalGate, Held, Moved
from gateway.fronts.imap.login import ProxyGrant
from gateway.fronts.imap.pump import BackendPump
from gateway.fronts.imap.rights import (
    audit_action,
    audit_detail,
    changes_mailbox,
    required_right,
)
from gateway.imap import commands as c
from gateway.imap.codes import Code
from gateway.imap.engine import ImapSession
from gateway.imap.framing import FramingError, ResponseFramer
from gateway.imap.response import continuation, tagged, untagged_status
from gateway.imap.serialize import serialize
from gateway.imap.transport import ServerConfig, StreamChannel, WriteTimeout
from gateway.metrics import Metrics
from gateway.runtime.net import FAIR_SHARE

log = logging.getLogger(__name__)

# bytes written to a client and not yet sent beyond which the backend is not read until
# the client catches up (a session's buffering is bounded by this and one read)
CLIENT_HIGH_WATER = 512 * 1024
KICK_GRACE = 1.0  # seconds a BYE waits for the response being relayed to end
MAX_AUDITS_IN_FLIGHT = 64  # a session's events handed to the audit sink, not yet queued
GAP_CHECK = 1.0  # seconds between checks for change events lost by the bus

_REWRITTEN = b"|".join(code.encode() for code in (Code.CAPABILITY, Code.PERMANENTFLAGS))
_STATUS_CODE = re.compile(
    rb"(?P<head>\S+ (?:OK|NO|BAD|PREAUTH|BYE) )\[(?P<name>" + _REWRITTEN + rb")[ \]][^\]\r\n]*\]",
    re.IGNORECASE,
)
_BYE = re.compile(rb"\* BYE(?:[ \r\n]|\Z)", re.IGNORECASE)
_READ_WRITE = re.compile(rb"(?P<head>\S+ OK )\[%b\]" % Code.READ_WRITE.encode(), re.IGNORECASE)
_READ_ONLY = b"[%b]" % Code.READ_ONLY.encode()
# what a delegate without the write right may change: \Seen with read, else nothing
_PERMANENT_SEEN = b"[%b (\\Seen)]" % Code.PERMANENTFLAGS.encode()
_PERMANENT_NONE = b"[%b ()]" % Code.PERMANENTFLAGS.encode()

#: LOGOUT answered by the gateway (a session kept warm) in the words of Dovecot, the
#: reference backend, so that its clients see the same as when it answers itself.
LOGOUT_BYE, LOGOUT_OK = "Logging out", "Logout completed."

#: Takes a backend session whose client left it at rest, to keep it warm (`warm`): the
#: session, and whether a mailbox may be selected in it. True when it took it.
Keeper = Callable[[Upstream, bool], bool]


@functools.lru_cache(maxsize=64)
def _capability_answers(capabilities: tuple[str, ...]) -> tuple[bytes, bytes]:
    """(``* CAPABILITY`` line, ``[CAPABILITY]`` code) of the capabilities a relay offers:
    built once for all the sessions that offer the same (per-session memory)."""
    names = " ".join(capabilities)
    return f"* CAPABILITY {names}\r\n".encode(), f"[{Code.CAPABILITY} {names}]".encode()


class Relay:
    """One logged-in client connection carried to its backend connection."""

    def __init__(
        self,
        session: ImapSession,
        channel: StreamChannel,
        grant: ProxyGrant,
        config: ServerConfig,
        audit: AuditSink,
        metrics: Metrics,
        gate: BalGate | None = None,
        keeper: Keeper | None = None,
    ) -> None:
        self.session = session
        self.keeper = keeper
        self._selected = False  # a SELECT or EXAMINE went to the backend
        self._client_left = False  # by LOGOUT answered here, or by closing at rest
        self._logged_out = False  # LOGOUT answered here
        self.gate = gate
        self._changing: set[str] = set()  # tags of changes the backend has not answered
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
        self._holding = False  # a backend response is half-forwarded
        self._at_boundary = asyncio.Event()
        self._at_boundary.set()
        self._pump: BackendPump | None = None
        self._idle_tag: str | None = None
        self._idle_answered = asyncio.Event()
        self._idle_accepted = False
        self._kicked: str | None = None
        self._kick_code: str | None = None
        self._leaving: str | None = None  # the node shuts down: BYE once at rest
        self._closed = False
        self._late: str | None = None  # a kick or an update that came as the session closed
        self._audits: set[asyncio.Future[None]] = set()  # events handed over, not yet queued
        self._tasks: list[asyncio.Task[str | None]] = []
        self._expiry: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._lagging: asyncio.Future[None] = self._loop.create_future()  # the client lags
        self._backend_seen = self._loop.time()
        self._sent_at: dict[str, float] = {}
        self._capability_line, self._capability_code = _capability_answers(grant.capabilities or ())
        self._backend_said_bye = False
        self._to_client = metrics.relayed_bytes.labels("imap", "to_client")
        self._to_backend = metrics.relayed_bytes.labels("imap", "to_backend")
        # told of the client's ID after login (the usage figures' software)
        self.identified: Callable[[Mapping[str, str | None]], None] | None = None
        self._logs = contextvars.copy_context()  # a watcher's kick logs as the session

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
        done: set[asyncio.Task[str | None]] = set()
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
            code = None
            if self._kicked is not None:
                bye, code = self._kicked, self._kick_code
            if bye is not None:
                with contextlib.suppress(Exception):
                    self.channel.writer.write(untagged_status("BYE", bye, code))
                    await asyncio.wait_for(self.channel.writer.drain(), KICK_GRACE)
            if not self._kept(done if bye is None and deaf is None else set()):
                # a LOGOUT answered here: the backend hears it now
                await (log_out(self.up) if self._logged_out else self.up.close())
            if self.gate is not None:  # changes never answered: the backend is gone
                for _ in self._changing:
                    self.gate.done(self.mailbox)
                self._changing.clear()
            if self.reads:
                await self._record(AuditAction.READ, f"{self.reads} read commands", "ok")
        if deaf is not None:
            raise deaf  # the transport cuts the connection instead of waiting for the client

    def _kept(self, done: set[asyncio.Task[str | None]]) -> bool:
        """Hand the backend session to `keeper` when the client alone ended the session,
        leaving it at rest: no command awaiting the backend (IDLE included), no response
        half relayed, the backend neither gone nor saying BYE."""
        if self.keeper is None or not self._client_left or len(done) != 1:
            return False
        (ended,) = done
        if ended is not self._tasks[1] or ended.cancelled() or ended.exception() is not None:
            return False
        if self._kicked is not None or self._leaving is not None or self.logging_out:
            return False
        if self._late is not None:  # its rights changed or it was ended: not to be reused
            log.info("imap.warm_refused", extra={"bal": self.mailbox, "why": self._late})
            return False
        if self.pending or not self.framer.at_boundary or self._backend_said_bye:
            return False
        if self._tasks[0].done() and not self._tasks[0].cancelled():
            return False  # the backend's side had ended on its own
        warm = dataclasses.replace(self.up, leftover=b"")
        if not self.keeper(warm, self._selected):
            return False
        self.up.handed_on = True  # its close (the grant's on_close) is the pool's now
        return True

    def kick(self, reason: str, code: str | None = None) -> None:
        """End the session with `* BYE [code] reason` (delegation revoked or expired, PSC
        session over, node shutting down); the audit trail says so."""
        if self._closed:
            self._late = self._late or "kicked"
        if self._kicked is not None or self._closed:
            return
        self._kicked, self._kick_code = reason, code
        self._logs.run(
            log.info, "imap.session_kicked", extra={"bal": self.mailbox, "reason": reason}
        )
        self._record_soon(AuditAction.SESSION_END, reason, "ok")
        for task in self._tasks:
            task.cancel()

    def shut_down(self, reason: str) -> None:
        """The node stops: `* BYE [UNAVAILABLE] reason` once no command awaits its backend's
        reply (at once when none does, or in IDLE); no new command is forwarded."""
        if self._closed:
            self._late = self._late or "shut down"
        if self._kicked is not None or self._closed:
            return
        self._leaving = reason
        if self._at_rest():
            self.kick(reason, Code.UNAVAILABLE)

    def _at_rest(self) -> bool:
        idling = self._idle_tag if self._idle_accepted else None
        return self.framer.at_boundary and all(tag == idling for tag in self.pending)

    def update(self, rights: frozenset[str], expires_at: dt.datetime | None) -> None:
        """The delegation changed but still stands: apply its new rights and expiry."""
        if self._closed:
            self._late = self._late or "updated"
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
        """Relay the backend's bytes (from the pump's callback, `_forward`); this task only
        waits: for the client to read when it lags (backpressure: the backend is not read
        meanwhile), for the backend when a reply is overdue, for the end."""
        transport = self.channel.writer.transport
        transport.set_write_buffer_limits(high=CLIENT_HIGH_WATER)
        pump = self._pump = BackendPump(self.up.reader, self.up.writer, self._forward)
        timeout = self.up.reply_timeout
        try:
            self._lagging = self._loop.create_future()  # before start: it may pause already
            pump.start(self.up.leftover)
            while not pump.done.done():
                await asyncio.wait(
                    (pump.done, self._lagging), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if self._lagging.done():
                    await self.channel.drain()  # a client that does not read ends here
                    self._lagging = self._loop.create_future()
                    pump.resume()
                elif not pump.done.done() and self._overdue(timeout):
                    self._backend_error("timeout")
                    return "mailbox server not responding"
            pump.done.result()
            if self.logging_out or self._backend_said_bye:
                return None  # an orderly end: the client has the backend's BYE
            self._backend_error("died")
            return "connection to the mailbox server lost"
        except FramingError as exc:
            self._backend_error("protocol")
            log.warning("imap.backend_framing", extra={"error": str(exc)})
            return "mailbox server sent invalid data"
        except WriteTimeout:
            raise  # the client's fault, not the backend's: the session is cut
        except (ConnectionError, ssl.SSLError):
            self._backend_error("died")
            return "connection to the mailbox server lost"
        finally:
            pump.stop()
            self._end_response()

    def _overdue(self, timeout: float) -> bool:
        waiting = [at for tag, at in self._sent_at.items() if tag != self._idle_tag]
        if not waiting:
            return False
        return self._loop.time() - max(min(waiting), self._backend_seen) >= timeout

    def _backend_error(self, kind: str) -> None:
        self.metrics.backend_errors.labels(self.up.backend, "imap", kind).inc()

    def _end_response(self) -> None:
        if self._holding:
            self._holding = False
            self._at_boundary.set()

    def _forward(self, data: bytearray, size: int) -> None:
        """The next `size` bytes of `data` from the backend: to the client at once, the
        first line of each response looked at (and rewritten where the gateway says
        otherwise). Runs in the pump's callback: no await."""
        if self._kicked is not None or self._closed:
            return  # the session ends: nothing more reaches the client
        self._backend_seen = self._loop.time()
        segments = self.framer.feed(data, size)
        if not self._holding:
            self._holding = True  # a reply of the gateway's own waits for the boundary
            self._at_boundary.clear()
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
        transport = self.channel.writer.transport
        if rewritten or not self.framer.exact:
            transport.writelines(out)  # whole lines only: a cut line goes out once complete
        elif size:
            transport.write(memoryview(data)[:size])  # the usual case: no copy
        self._to_client.inc(size)
        unsent = transport.get_write_buffer_size()
        if self._pump is not None:
            self._pump.expect(self.framer.literal_left)
        if unsent and self._pump is not None:
            self._pump.reusable = False  # the transport may hold views of the buffer
            if unsent > CLIENT_HIGH_WATER and not self._lagging.done():
                self._pump.pause()
                self._lagging.set_result(None)
        if self.framer.at_boundary:
            self._end_response()
        if self._leaving is not None and self._at_rest():
            self.kick(self._leaving, Code.UNAVAILABLE)  # the last reply is out

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
        if name in self._changing:
            self._changing.discard(name)
            if self.gate is not None:
                self.gate.done(self.mailbox)
        if command is not None:
            self._completed(command, rest[:3].upper().rstrip().decode("ascii", "replace"))
            if isinstance(command, c.Select) and "write" not in self.rights:
                # What this delegate may do in it: nothing but \Seen (PERMANENTFLAGS).
                return _READ_WRITE.sub(rb"\g<head>" + _READ_ONLY, line, count=1)
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
        if name == Code.CAPABILITY.encode():
            code = self._capability_code
        elif "write" not in self.rights:
            code = _PERMANENT_SEEN if "read" in self.rights else _PERMANENT_NONE
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
            if self._leaving is not None:  # shutting down: the BYE follows the last reply
                await self._loop.create_future()
            event = parser.next_event()
            if event is None:
                # Read no more commands while the answers to the last ones pile up unread.
                await self.channel.drain()
                try:
                    async with asyncio.timeout(self.config.idle_timeout):
                        if not await self.channel.fill():
                            # gone at rest, not in the middle of a command or literal
                            self._client_left = parser.pending_bytes == 0
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
                        tagged(event.tag or "*", "NO", "the write right is needed", Code.NOPERM)
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
        changes = changes_mailbox(command)
        if right is not None and right not in self.rights:
            self.metrics.rights_refusals.labels("imap", right).inc()
            action = audit_action(command)
            if action is not None:
                self._record_soon(action, audit_detail(command), "refused:noperm")
            await self._local(
                tagged(command.tag, "NO", f"the {right} right is needed for this", Code.NOPERM)
            )
            return None
        if isinstance(command, c.Close) and "write" not in self.rights:
            if "UNSELECT" not in self.up.capabilities:
                await self._local(tagged(command.tag, "NO", "use UNSELECT", Code.CANNOT))
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
            if self.keeper is not None and not self.pending:
                # Answered here, so that the backend session may be kept warm.
                self._client_left = self._logged_out = True
                await self._local(
                    untagged_status("BYE", LOGOUT_BYE) + tagged(command.tag, "OK", LOGOUT_OK)
                )
                return ""
            self.logging_out = True
        if isinstance(command, c.Select):
            self._selected = True
        if isinstance(command, c.Id) and command.parameters:
            self.session.client_id = {k.lower(): v for k, v in command.parameters}
            if self.identified is not None:
                self.identified(self.session.client_id)
        if changes and self.gate is not None:
            try:
                await self.gate.passage(self.mailbox)
            except Held as exc:
                action = audit_action(command)
                if action is not None:
                    self._record_soon(action, audit_detail(command), "failed:held")
                await self._local(tagged(command.tag, "NO", str(exc), Code.UNAVAILABLE))
                return MOVED_BYE if isinstance(exc, Moved) else None
            self.gate.begin(self.mailbox)
            self._changing.add(command.tag)
        await self._to(serialize(command, literal_plus=True), command)
        if isinstance(command, c.Idle):
            return await self._idle(command)
        return None

    async def _idle(self, command: c.Idle) -> str | None:
        try:
            async with asyncio.timeout(self.up.reply_timeout):
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
        """A reply of the gateway's own: between two of the backend's responses."""
        while self._holding:
            await self._at_boundary.wait()
        await self.channel.write(data)

    # -- audit ---------------------------------------------------------------------------
    def _record_soon(self, action: AuditAction, detail: str, result: str) -> None:
        if self.audit.offer(self._audit_record(action, detail, result)):
            return  # queued: no task per event while the sink keeps up
        task = in_background(self._record(action, detail, result))
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    async def _record(self, action: AuditAction, detail: str, result: str) -> None:
        await self.audit.submit(self._audit_record(action, detail, result))

    def _audit_record(self, action: AuditAction, detail: str, result: str) -> AuditRecord:
        return AuditRecord(
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
