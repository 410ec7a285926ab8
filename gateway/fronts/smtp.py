"""The gateway's SMTP submission front (API LPS, port 1587): authorise, check, relay.

For each message: the envelope sender must be a BAL the logged-in person may send from
(their own, or one delegated with the ``send`` right), the message must follow the MSSanté
rules (``From:`` naming that BAL, X-MSS-* headers), and a delegate is named in ``Sender:``.
The message is then carried to the operator platform holding the BAL.

End-to-end acknowledgement: the client gets ``250`` for a message only once the backend
answered ``250`` to its DATA; anything else is a 4xx or 5xx, so the client keeps the message
and retries. Nothing is acknowledged that the backend did not take, and a DATA is never
replayed from here, so a retry cannot make the gateway deliver twice on its own.

Commands reach the backend's submission path (`Backend.submission`) as the client sends
them (MAIL opens it lazily, each RCPT gets the backend's own verdict), on one backend
session per client session, reused across its messages and closed when the client
leaves. Whatever the platform (an SMTP server, or the historic web services whose one
``sendMessage`` happens at DATA), the rule is the same: 250 only once it took the message.
Replies come from `gateway.fronts.smtp_replies`.

Delivery notices (RFC 3461): RET, ENVID, NOTIFY and ORCPT go to a backend that offers DSN;
for one that does not, the front writes the "relayed" notice itself (`smtp_dsn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import ssl
import time
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session, TLSSetupException

from delegation.audit import AuditAction
from gateway.audit import in_background
from gateway.backends.base import Accepted, Submission
from gateway.backends.errors import (
    BackendCannotCarry,
    BackendError,
    BackendRefused,
    BackendUnavailable,
)
from gateway.bal_migration.gate import Held, Moved
from gateway.card_sessions import CardSessionWatch
from gateway.fronts import smtp_replies as replies
from gateway.fronts.login import FrontAuthenticator, FrontGrant
from gateway.fronts.smtp_dsn import NOTICE_TIMEOUT, relayed_notice, write_to_inbox
from gateway.imap.session import ExternalCredentials
from gateway.metrics import Metrics
from gateway.mss import RuleResult, Violation, add_headers, add_sender, check_message, remove_fields
from gateway.mss.policy import MessagePolicy, Policy
from gateway.psc_sessions import PscSessionWatch
from gateway.runtime.limits import SlotCounter
from gateway.runtime.login import AuthFailed, ConnectionInfo
from gateway.runtime.logs import identified
from gateway.runtime.smtp_auth import CardAuthMixin, connection_info, grant_of
from gateway.runtime.smtp_server import TokenSMTP, mail_dsn, next_rcpt_dsn, recipients_dsn
from gateway.settings import SmtpFrontSettings
from gateway.usage import Interface, UsageRecorder, interface_for
from psc_auth.sasl import Mechanism, TokenCredentials

log = logging.getLogger(__name__)

PROTOCOL = "smtp"
FRESH = 2.0  # seconds: a backend session that answered this recently is taken as alive


@dataclass
class _Client:
    """What one client connection keeps between commands and across its messages."""

    relay: Submission | None = None
    sender: FrontGrant | None = None  # the authorisation of the current MAIL FROM
    delegate_address: dict[str, str] = field(default_factory=dict)  # idNat -> Sender address
    watched: _Watched | None = None
    holds_slot: str | None = None  # the idNat whose session slot this connection holds
    origin: ConnectionInfo | None = None  # who it is, for the backend (XCLIENT)


@dataclass(eq=False)
class _Watched:
    """A logged-in client as the PSC session and card watches see it: ended with 421,
    audited."""

    server: SMTP
    grant: FrontGrant
    front: SubmissionFront
    # made in the session's task: a watcher's kick logs as the session
    logs: contextvars.Context = field(default_factory=contextvars.copy_context)

    def kick(self, reason: str) -> None:
        extra = {"actor": self.grant.actor, "reason": reason}
        self.logs.run(log.info, "smtp.session_kicked", extra=extra)
        session = self.server.session
        connection = _connection(self.server, session) if session is not None else None
        record = self.front.authenticator.event(
            self.grant.actor,
            self.grant.mailbox,
            AuditAction.SESSION_END,
            connection,
            delegation_id=self.grant.delegation_id,
            detail=reason,
        )
        in_background(self.front.authenticator.audit.submit(record))
        if isinstance(self.server, TokenSMTP):
            self.server.kick(reason)


class SubmissionFront(CardAuthMixin):
    """The aiosmtpd handler of the gateway's submission listener (`SmtpServer`)."""

    authenticator: FrontAuthenticator

    def __init__(
        self,
        authenticator: FrontAuthenticator,
        settings: SmtpFrontSettings,
        metrics: Metrics,
        psc: PscSessionWatch | None = None,
        sessions: SlotCounter | None = None,
        usage: UsageRecorder | None = None,
        card_watch: CardSessionWatch | None = None,
        policy: Policy = "enforce",
    ) -> None:
        self.authenticator = authenticator
        self.usage = usage  # who still uses what: EHLO per login, X-MSS-NIL per message
        self.mss = MessagePolicy(policy, usage)  # `[mss] policy`: refuse, or count and relay
        self.settings = settings
        self.metrics = metrics
        self.psc = psc  # ends sessions whose PSC session ended
        self.card_watch = card_watch  # ends sessions whose CPS card is revoked or expired
        self.sessions = sessions  # logged-in sessions per person (the node's)
        self.auth_failure_delay = settings.auth_failure_delay
        self._clients: dict[SMTP, _Client] = {}
        self._closing: set[asyncio.Task[None]] = set()

    # -- connection life (called by TokenSMTP) ------------------------------------------

    def connection_opened(self, server: SMTP) -> None:
        self._clients[server] = _Client(origin=connection_info(server))
        self.metrics.open_sessions.labels(PROTOCOL).inc()

    def connection_closed(self, server: SMTP) -> None:
        """The client left (QUIT, dropped, timed out): let its backend session go too."""
        client = self._clients.pop(server, None)
        if client is None:
            return
        self.metrics.open_sessions.labels(PROTOCOL).dec()
        if client.holds_slot is not None and self.sessions is not None:
            self.sessions.release(client.holds_slot)
        if client.watched is not None and self.authenticator.gate is not None:
            self.authenticator.gate.discard(client.watched.grant.mailbox, client.watched)
        if client.watched is not None and self.psc is not None:
            self.psc.discard(client.watched)
        if client.watched is not None and self.card_watch is not None:
            self.card_watch.discard(client.watched)
        if client.relay is not None:
            task = asyncio.get_running_loop().create_task(client.relay.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _client(self, server: SMTP) -> _Client:
        # setdefault: a handler driven without TokenSMTP's hooks still works (no gauge).
        return self._clients.setdefault(server, _Client())

    # -- AUTH: TokenAuthMixin decides, we count ------------------------------------------

    async def _token_auth(self, server: SMTP, args: list[str], mechanism: Mechanism) -> AuthResult:
        return self._logged_in(server, await super()._token_auth(server, args, mechanism))

    async def auth_EXTERNAL(self, server: SMTP, args: list[str]) -> AuthResult:
        return self._logged_in(server, await super().auth_EXTERNAL(server, args))

    def _logged_in(self, server: SMTP, result: AuthResult) -> AuthResult:
        """Count a successful login; a token login is watched while its PSC session lives,
        a card login while its card stands (not revoked, not expired)."""
        if result.success:
            self.metrics.logins.labels(PROTOCOL, "ok").inc()
            grant = result.auth_data
            if isinstance(grant, FrontGrant):
                identified(grant.actor, grant.mailbox)
            if self.usage is not None and isinstance(grant, FrontGrant):
                ehlo = server.session.host_name if server.session is not None else None
                self.usage.session(grant, _interface(grant), ehlo)
            if self.psc is not None and isinstance(grant, FrontGrant) and grant.token:
                client = self._client(server)
                client.watched = _Watched(server, grant, self)
                self.psc.add(client.watched, grant.token, grant.identity)
            if self.card_watch is not None and isinstance(grant, FrontGrant) and grant.card:
                client = self._client(server)
                client.watched = _Watched(server, grant, self)
                self.card_watch.add(client.watched, grant.card)
            gate = self.authenticator.gate
            if gate is not None and isinstance(grant, FrontGrant):
                client = self._client(server)
                if client.watched is None:
                    client.watched = _Watched(server, grant, self)
                gate.add(grant.mailbox, client.watched, grant.moves)
        return result

    async def _refuse(
        self, server: SMTP, failure: AuthFailed, mechanism: Mechanism | None
    ) -> AuthResult:
        self.metrics.logins.labels(PROTOCOL, failure.kind).inc()
        return await super()._refuse(server, failure, mechanism)

    async def _authenticate(
        self, server: SMTP, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> FrontGrant:
        grant = await self.authenticator.authenticate(credentials, connection, record_success=False)
        return await self._session_open(server, grant)

    async def _authenticate_card(
        self, server: SMTP, credentials: ExternalCredentials, connection: ConnectionInfo
    ) -> FrontGrant:
        grant = await self.authenticator.authenticate_card(
            credentials, connection, record_success=False
        )
        return await self._session_open(server, grant)

    async def _session_open(self, server: SMTP, grant: FrontGrant) -> FrontGrant:
        """The front's decision made, then the person's session cap (`sessions`): the
        login's audit event says which of them had the last word."""
        event = grant.login_event
        assert event is not None
        sessions = self.sessions
        if sessions is not None:
            await self.authenticator.take_session_slot(grant, sessions)
            self._client(server).holds_slot = grant.actor
        await self.authenticator.audit.submit(event)
        return grant

    # -- the transaction -----------------------------------------------------------------

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        login = grant_of(session)
        if not isinstance(login, FrontGrant):
            return replies.AUTH_REQUIRED
        client = self._client(server)
        client.sender = None
        try:
            sender = await self.authenticator.authorise(
                login.identity,
                address,
                login.credentials,
                _connection(server, session),
                action=AuditAction.SEND,
                right="send",
                card=login.card,
            )
        except AuthFailed as refusal:
            if refusal.kind == "unavailable":
                return replies.login_unavailable(refusal.text)
            self.metrics.rights_refusals.labels(PROTOCOL, "send").inc()
            log.info(
                "smtp.sender_refused",
                extra={"actor": login.actor, "bal": replies.safe(address), "detail": refusal.text},
            )
            return replies.not_allowed(refusal.text)
        try:
            relay = await self._relay_for(client, sender)
            await relay.mail(sender.mailbox, options, dsn=mail_dsn(envelope))
        except BackendUnavailable as failure:
            self._backend_failed(sender, failure)
            self.metrics.messages.labels("deferred").inc()
            return replies.unavailable(failure)
        except BackendRefused as refusal:
            self._count_refusal(refusal)
            return replies.refused(refusal)
        client.sender = sender
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return replies.SENDER_OK

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        client = self._client(server)
        sender = client.sender
        if sender is None or client.relay is None:
            return replies.MAIL_FIRST
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if not (address.isascii() or envelope.smtp_utf8):
            return replies.NEEDS_SMTPUTF8
        try:
            await client.relay.rcpt(address, utf8=envelope.smtp_utf8, dsn=next_rcpt_dsn(envelope))
        except BackendUnavailable as failure:
            self._backend_failed(sender, failure)
            return replies.unavailable(failure)
        except BackendRefused as refusal:
            return replies.refused(refusal)  # e.g. 550 5.1.1 from the platform: the client's
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        client = self._client(server)
        sender, client.sender = client.sender, None
        relay = client.relay
        if sender is None or relay is None:
            return replies.MAIL_FIRST
        arrival = dt.datetime.now(dt.UTC)
        refused = await self._still_allowed(server, session, sender)
        if refused is not None:
            await self._abandon(relay)
            return refused
        raw = _content(envelope)
        checked = self._check(raw, sender, envelope.rcpt_tos)
        nil = checked.nil
        refusing = self.mss.judge(
            checked,
            interface=_interface(sender),
            software=nil or session.host_name,
            bal=sender.mailbox,
            actor=sender.actor,
        )
        if refusing:
            self._rejected(sender, [violation.rule for violation in refusing])
            await self._abandon(relay)
            return _violations_reply(refusing)
        message = await self._prepare(raw, checked, sender, client)
        gate = self.authenticator.gate
        offers_dsn = relay.offers_dsn  # as at MAIL: a session lost after DATA says nothing
        try:
            async with gate.writing(sender.mailbox) if gate else contextlib.nullcontext():
                accepted = await relay.data(message, envelope.rcpt_tos)
        except (BackendUnavailable, BackendRefused) as failure:
            return self._not_taken(sender, failure)
        except Held as held:  # the BAL is being moved: nothing was sent, send it again
            await self._abandon(relay)
            return replies.held(str(held))
        extra = {"reference": accepted.reference} if accepted.reference else {}
        self._taken(sender, len(envelope.rcpt_tos), len(message), **extra)
        if self.usage is not None:
            self.usage.message(sender, _interface(sender), _relayed_nil(nil, checked))
        if not accepted.sender_recorded:
            await self._audit_sent(server, session, sender, client, accepted, envelope)
        if not offers_dsn:
            await self._relayed(server, session, sender, envelope, message, arrival)
        return replies.accepted(accepted.text)

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        client = self._client(server)
        client.sender = None
        if client.relay is not None and client.relay.in_transaction:
            await self._abandon(client.relay)
        return replies.OK

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        client = self._client(server)
        relay, client.relay = client.relay, None
        if relay is not None:
            await relay.close()
        return replies.BYE

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd would echo the exception's text to the client: log it, say little. A
        client that breaks its own TLS handshake (plaintext after STARTTLS) is not our
        error: one line, no traceback."""
        if isinstance(error, ssl.SSLError | TLSSetupException | ConnectionError):
            log.info("smtp.connection_failed", extra={"error": type(error).__name__})
        else:
            log.error("smtp.internal_error", exc_info=error)
        return replies.INTERNAL_ERROR

    async def _audit_sent(
        self,
        server: SMTP,
        session: Session,
        sender: FrontGrant,
        client: _Client,
        accepted: Accepted,
        envelope: Envelope,
    ) -> None:
        """A platform that cannot keep Sender (the historic one, called as the trusted
        gateway): this event is what records which delegate wrote the message."""
        detail = f"reference={accepted.reference} recipients={len(envelope.rcpt_tos)}"
        if sender.via == "delegation":
            detail += f" sender={await self._delegate_address(client, sender)}"
        connection = _connection(server, session)
        await self.authenticator.audit.submit(
            self.authenticator.event(
                sender.actor,
                sender.mailbox,
                AuditAction.SENT,
                connection,
                delegation_id=sender.delegation_id,
                detail=detail,
            )
        )

    async def _relayed(
        self,
        server: SMTP,
        session: Session,
        sender: FrontGrant,
        envelope: Envelope,
        message: bytes,
        arrival: dt.datetime,
    ) -> None:
        """The "relayed" notice for the recipients that asked for success notices, into the
        sender BAL's INBOX, audited as a write to it. The message is taken already: a
        notice that cannot be written is logged and audited, never a reason to say no."""
        found = relayed_notice(
            reporting_mta=server.hostname,
            sender=sender.mailbox,
            recipients=envelope.rcpt_tos,
            recipients_dsn=recipients_dsn(envelope),
            mail=mail_dsn(envelope),
            message=message,
            arrival=arrival,
        )
        if found is None:
            return
        notice, count = found
        result = "ok"
        gate = self.authenticator.gate
        try:
            async with (
                asyncio.timeout(NOTICE_TIMEOUT),
                gate.writing(sender.mailbox) if gate else contextlib.nullcontext(),
            ):  # a BAL being moved: the notice waits for the move, or is not written
                await write_to_inbox(sender.route.backend, sender.mailbox, notice)
        except (BackendError, Held, TimeoutError, OSError) as failure:
            kind = _failure_kind(failure)
            result = f"failed:{kind}"
            log.warning(
                "smtp.dsn_not_written",
                extra={"bal": sender.mailbox, "backend": sender.route.name, "kind": kind},
            )
        else:
            log.info("smtp.dsn_relayed", extra={"bal": sender.mailbox, "recipients": count})
        await self.authenticator.audit.submit(
            self.authenticator.event(
                sender.actor,
                sender.mailbox,
                AuditAction.APPEND,
                _connection(server, session),
                result=result,
                delegation_id=sender.delegation_id,
                detail=f"INBOX: delivery status notification, relayed, {count} recipient(s)",
            )
        )

    # -- helpers -------------------------------------------------------------------------

    async def _still_allowed(
        self, server: SMTP, session: Session, sender: FrontGrant
    ) -> str | None:
        """None if the sender may still send from the BAL, else the 550 reply: rights and
        revocation are checked again at DATA, so nothing leaves after a revocation that
        came between MAIL FROM and the end of the message. A session the
        gateway is ending (its PSC session is over) sends nothing more either: 421."""
        kicked = server.kicked if isinstance(server, TokenSMTP) else None
        if kicked is not None:
            return replies.session_ended(kicked)
        refusal = await self.authenticator.recheck(
            sender, _connection(server, session), action=AuditAction.SEND, right="send"
        )
        if refusal is None:
            return None
        self.metrics.rights_refusals.labels(PROTOCOL, "send").inc()
        log.info(
            "smtp.sender_refused_at_data",
            extra={"actor": sender.actor, "bal": sender.mailbox, "reason": refusal},
        )
        return replies.not_allowed(
            f"{sender.actor} may no longer send from {sender.mailbox} ({refusal})"
        )

    def _not_taken(self, sender: FrontGrant, failure: BackendUnavailable | BackendRefused) -> str:
        """The reply for a message the backend did not take, counted and logged."""
        if isinstance(failure, BackendUnavailable):
            self._backend_failed(sender, failure)
            self.metrics.messages.labels("deferred").inc()
        elif isinstance(failure, BackendCannotCarry):
            self._rejected(sender, [failure.kind], detail=failure.text)
        else:
            self._count_refusal(failure)
            log.info(
                "smtp.message_refused_by_backend",
                extra={
                    "bal": sender.mailbox,
                    "backend": sender.route.name,
                    "reply": failure.code or failure.status,
                },
            )
        return replies.not_sent(failure)

    def _taken(self, sender: FrontGrant, recipients: int, size: int, **extra: str) -> None:
        self.metrics.messages.labels("accepted").inc()
        self.metrics.relayed_bytes.labels(PROTOCOL, "to_backend").inc(size)
        log.info(
            "smtp.message_relayed",
            extra={
                "bal": sender.mailbox,
                "actor": sender.actor,
                "via": sender.via,
                "backend": sender.route.name,
                "recipients": recipients,
                "bytes": size,
                **extra,
            },
        )

    def _check(self, raw: bytes, sender: FrontGrant, recipients: list[str]) -> RuleResult:
        """The MSSanté rules (what a broken one gets is `self.mss`'s to say)."""
        return check_message(
            raw,
            sender=sender.mailbox,
            default_nil=self.settings.default_nil,
            max_size=self.settings.max_message_size,
            recipients=recipients,
        )

    def _rejected(self, sender: FrontGrant, rules: list[str], **extra: str) -> None:
        """A message refused for what it is (a rule, or what its backend cannot carry)."""
        self.metrics.messages.labels("rejected").inc()
        log.info(
            "smtp.message_rejected",
            extra={"bal": sender.mailbox, "actor": sender.actor, "rules": rules, **extra},
        )

    async def _relay_for(self, client: _Client, sender: FrontGrant) -> Submission:
        """The client's backend session for this BAL: the current one if it is for the
        same BAL and answers RSET (nothing was sent yet, so reconnecting is safe), else a
        new one."""
        relay = client.relay
        same = relay is not None and relay.key == (sender.route.name, sender.mailbox)
        if relay is not None and same and relay.connected:
            if not relay.in_transaction and time.monotonic() - relay.last_answer < FRESH:
                return relay  # answered a moment ago, nothing pending: no RSET round trip
            try:
                await relay.reset()
                return relay
            except (BackendUnavailable, BackendRefused):
                relay.abort()  # died while idle (the backend's own timeout): reconnect
        if relay is not None:
            client.relay = None
            await relay.close()
        relay = sender.route.backend.submission(
            sender.mailbox,
            sender.token,
            max_size=self.settings.max_message_size,
            client=client.origin,
        )
        await relay.open()
        client.relay = relay
        return relay

    async def _abandon(self, relay: Submission) -> None:
        """End the backend's half-done transaction; a session that cannot is dropped."""
        try:
            await relay.reset()
        except (BackendUnavailable, BackendRefused):
            relay.abort()

    async def _prepare(
        self, raw: bytes, checked: RuleResult, sender: FrontGrant, client: _Client
    ) -> bytes:
        """The message as relayed: the headers the rules add, no Sender of the client's, and
        for a delegate a Sender naming them (RFC 5322 §3.6.2), so recipients see who wrote
        for the holder. The holder needs none: From names the author."""
        message = add_headers(raw, checked.headers_to_add) if checked.headers_to_add else raw
        if sender.via != "delegation":
            return remove_fields(message, "Sender")
        address = await self._delegate_address(client, sender)
        try:  # add_sender drops the client's Sender first
            return add_sender(message, sender.identity.display_name, address)
        except ValueError:  # a name unfit for a header (control characters): address only
            return add_sender(message, "", address)

    async def _delegate_address(self, client: _Client, sender: FrontGrant) -> str:
        """The delegate's own BAL if they hold one, else the BAL sent from: Sender must be a
        real mailbox, and we invent none."""
        idnat = str(sender.identity.idnat)
        known = client.delegate_address.get(idnat)
        if known is None:
            grants = await self.authenticator.registry.accessible(sender.identity)
            own = [grant.mailbox for grant in grants if grant.via == "holder"]
            known = own[0] if own else sender.mailbox
            client.delegate_address[idnat] = known
        return known

    def _backend_failed(self, sender: FrontGrant, failure: BackendUnavailable) -> None:
        self.metrics.backend_errors.labels(sender.route.name, PROTOCOL, failure.kind).inc()
        log.warning(
            "smtp.backend_error",
            extra={
                "bal": sender.mailbox,
                "backend": sender.route.name,
                "kind": failure.kind,
                "detail": failure.detail,
            },
        )

    def _count_refusal(self, refusal: BackendRefused) -> None:
        self.metrics.messages.labels("refused" if refusal.permanent else "deferred").inc()


def _failure_kind(failure: Exception) -> str:
    """A notice's failure, as the audit trail and the log name it."""
    if isinstance(failure, BackendError):
        return failure.kind
    if isinstance(failure, Held):
        return "moved" if isinstance(failure, Moved) else "held"
    return "timeout" if isinstance(failure, TimeoutError) else "unreachable"


def _content(envelope: Envelope) -> bytes:
    content = envelope.original_content or b""
    return content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content


def _interface(grant: FrontGrant) -> Interface:
    """The interface a login counts under in the usage figures."""
    return interface_for("smtp", by_card=grant.means == "card")


def _relayed_nil(nil: str | None, checked: RuleResult) -> str | None:
    """The X-MSS-NIL of the message as relayed, without reading its header block again:
    the client's (`RuleResult.nil`), else the one the rules added (prepended, so first),
    else none."""
    if nil is not None:
        return nil
    added = [value for name, value in checked.headers_to_add if name == "X-MSS-NIL"]
    return added[0].strip() if added else None


def _connection(server: SMTP, session: Session) -> ConnectionInfo:
    return connection_info(server, software=session.host_name or None)


def _violations_reply(refusing: list[Violation]) -> str:
    """Every rule that refuses the message, one line each (RFC 5321 multi-line reply, one
    basic code)."""
    code = refusing[0].smtp_code
    lines = [violation.reply for violation in refusing]
    return "\r\n".join(
        f"{code}{'-' if index < len(lines) - 1 else ' '}{line}" for index, line in enumerate(lines)
    )
