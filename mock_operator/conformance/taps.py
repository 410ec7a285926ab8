"""Where the runner watches the mock's platform: its IMAP server, its SMTP handler and the
TLS handshakes of both. Each tap hands small facts to the `Observatory`; none changes what
the platform answers."""

from __future__ import annotations

import asyncio
import re
import secrets
import ssl
import weakref
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.imap import commands as c
from gateway.imap.engine import ImapSession
from gateway.imap.session import SessionGrant
from gateway.imap.transport import ImapServer, StreamChannel
from gateway.runtime.login import AuthFailed, ConnectionInfo, Login
from gateway.runtime.smtp_server import mail_dsn, next_rcpt_dsn
from mock_operator.conformance.events import imap_command, token_claims
from mock_operator.conformance.message_facts import message_facts
from mock_operator.conformance.observatory import Observatory
from mock_operator.modern.auth import PlatformAuthenticator
from mock_operator.modern.smtp import PlatformSubmission
from psc_auth.sasl import TokenCredentials

_UPDATE = re.compile(rb"^\* (\d{1,10}) (EXISTS|EXPUNGE)\r?$", re.MULTILINE)
MAX_SCANNED_WRITE = 8192  # untagged updates come in small writes; bodies are not scanned


class SniLog:
    """The server name each TLS client asked for (RFC 6066), kept per TLS connection."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        previous = context.sni_callback

        def seen(connection: Any, name: str | None, ctx: ssl.SSLContext) -> int | None:
            if name:
                self._names[connection] = name[:255]
            return previous(connection, name, ctx) if previous else None  # type: ignore[arg-type]

        context.sni_callback = seen

    def name(self, ssl_object: Any) -> str:
        return self._names.get(ssl_object, "") if ssl_object is not None else ""


def tls_facts(ssl_object: Any, sni: SniLog | None) -> dict[str, Any]:
    if ssl_object is None:
        return {}
    cipher = ssl_object.cipher()
    return {
        "version": ssl_object.version() or "",
        "cipher": cipher[0] if cipher else "",
        "sni": sni.name(ssl_object) if sni else "",
    }


class ObservedChannel(StreamChannel):
    observatory: Observatory | None = None
    sni: SniLog | None = None
    connection = ""
    answering = ""  # the command being answered: SELECT's EXISTS is a count, not news

    async def write(self, data: bytes) -> None:
        await super().write(data)
        if (
            self.observatory is not None
            and self.observatory.active
            and len(data) <= MAX_SCANNED_WRITE
            and self.answering not in ("SELECT", "EXAMINE")
        ):
            for match in _UPDATE.finditer(data):
                line = match.group(0).decode("ascii").strip()
                kind = match.group(2).decode("ascii")
                self.observatory.event("imap", self.connection, "update", update=kind, line=line)

    async def start_tls(self) -> None:
        await super().start_tls()
        if self.observatory is not None:
            facts = tls_facts(self.writer.get_extra_info("ssl_object"), self.sni)
            self.observatory.event("imap", self.connection, "tls", **facts)


class ObservedImapServer(ImapServer):
    channel_type = ObservedChannel

    def __init__(self, *args: Any, observatory: Observatory, sni: SniLog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.observatory = observatory
        self.sni = sni

    def opened(self, session: ImapSession) -> None:
        connection = session.connection.session_id
        if isinstance(session.channel, ObservedChannel):
            self.attach(session.channel, connection)
        facts = self.connect_facts()
        self.observatory.event(
            "imap", connection, "connect", secure=session.connection.secure, **facts
        )

    def attach(self, channel: ObservedChannel, connection: str) -> None:
        """Give the session's channel what it needs to report its TLS and updates."""
        channel.observatory = self.observatory
        channel.sni = self.sni
        channel.connection = connection

    def connect_facts(self) -> dict[str, Any]:
        """What a connection's first event says of the listener it came to."""
        return {}

    def executing(self, session: ImapSession, command: c.Command) -> None:
        if isinstance(session.channel, ObservedChannel):
            session.channel.answering = type(command).__name__.upper()
        if not self.observatory.active:
            return
        self.observatory.event(
            "imap", session.connection.session_id, "command", **imap_command(command)
        )

    def ended(self, session: ImapSession) -> None:
        self.observatory.closed("imap", session.connection.session_id)


def _login_facts(credentials: TokenCredentials, secure: bool) -> dict[str, Any]:
    claims = token_claims(credentials.token)
    return {
        "client_id": str(claims.get("client_id", "")),
        "idnat": str(claims.get("idnat", "")),
        "mechanism": credentials.mechanism.value,
        "user": credentials.user[:200],
        "jti": claims.get("jti", ""),
        "sid": claims.get("sid", ""),
        "exp": claims.get("exp"),
        "iat": claims.get("iat"),
        "secure": secure,
    }


class ObservedAuthenticator:
    """The platform's IMAP authenticator, with each login told to the observatory."""

    def __init__(self, inner: PlatformAuthenticator, observatory: Observatory) -> None:
        self.inner = inner
        self.observatory = observatory

    async def authenticate(
        self, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> SessionGrant:
        facts = _login_facts(credentials, connection.secure)
        try:
            grant = await self.inner.authenticate(credentials, connection)
        except AuthFailed as failure:
            self.observatory.login(
                "imap", connection.session_id, bal=credentials.user.lower(), ok=False,
                failure=failure.kind, **facts,
            )  # fmt: skip
            raise
        self.observatory.login(
            "imap", connection.session_id, bal=grant.mailbox, ok=True, via=grant.via, **facts
        )
        return grant


def _connection_id(server: SMTP) -> str:
    found: str | None = getattr(server, "_conformance_id", None)
    if found is None:
        found = f"smtp-{secrets.token_hex(6)}"
        server._conformance_id = found  # type: ignore[attr-defined]
    return found


class ObservedSubmission(PlatformSubmission):
    """The platform's submission handler, with the client's envelope, TLS and messages told
    to the observatory."""

    def __init__(self, *args: Any, observatory: Observatory, sni: SniLog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.observatory = observatory
        self.sni = sni

    def _event(self, server: SMTP, kind: str, **data: Any) -> None:
        self.observatory.event("smtp", _connection_id(server), kind, **data)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        connection = _connection_id(server)
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        if ssl_object is not None and not getattr(server, "_conformance_tls", False):
            server._conformance_tls = True  # type: ignore[attr-defined]
            self.observatory.event("smtp", connection, "tls", **tls_facts(ssl_object, self.sni))
        self._event(server, "command", name="EHLO", line=f"EHLO {hostname[:100]}")
        parent = getattr(super(), "handle_EHLO", None)
        if parent is not None:
            answer: list[str] = await parent(server, session, envelope, hostname, responses)
            return answer
        session.host_name = hostname
        return responses

    async def _authenticate(
        self, server: SMTP, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> Login:
        facts = _login_facts(credentials, connection.secure)
        name = f"AUTH {credentials.mechanism.value}"
        self._event(server, "command", name="AUTH", line=f"{name} <masqué>")
        try:
            grant = await super()._authenticate(server, credentials, connection)
        except AuthFailed as failure:
            self.observatory.login(
                "smtp", _connection_id(server), bal=credentials.user.lower(), ok=False,
                failure=failure.kind, **facts,
            )  # fmt: skip
            raise
        self.observatory.login(
            "smtp",
            _connection_id(server),
            bal=grant.mailbox,
            ok=True,
            via=getattr(grant, "via", ""),
            **facts,
        )
        return grant

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        shown = [*options, *mail_dsn(envelope).parameters()]  # RET, ENVID: off `options`
        line = " ".join([f"MAIL FROM:<{address[:200]}>", *shown[:10]])
        self._event(server, "command", name="MAIL", line=line[:300])
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        shown = [*options, *next_rcpt_dsn(envelope).parameters()]  # NOTIFY, ORCPT
        line = " ".join([f"RCPT TO:<{address[:200]}>", *shown[:10]])
        self._event(server, "command", name="RCPT", line=line[:300])
        answer = await super().handle_RCPT(server, session, envelope, address, options)
        if answer.startswith("250"):
            recipients = session.__dict__.setdefault("_conformance_rcpt", [])
            recipients.append((address, shown))
        return answer

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        grant = getattr(session, "auth_data", None)
        content = envelope.original_content or b""
        if isinstance(content, str):
            content = content.encode("utf-8")
        watched = self.observatory.watching(_connection_id(server))
        if watched and grant is not None and envelope.mail_from:
            facts = await asyncio.to_thread(
                message_facts,
                content,
                bal=str(getattr(grant, "mailbox", "")),
                mail_from=envelope.mail_from,
                mail_options=[*envelope.mail_options, *mail_dsn(envelope).parameters()],
                recipients=list(session.__dict__.get("_conformance_rcpt", [])),
            )
            self._event(server, "message", **facts)
        session.__dict__.pop("_conformance_rcpt", None)
        return await super().handle_DATA(server, session, envelope)

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        session.__dict__.pop("_conformance_rcpt", None)
        parent = getattr(super(), "handle_RSET", None)
        return str(await parent(server, session, envelope)) if parent else "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._event(server, "command", name="QUIT", line="QUIT")
        parent = getattr(super(), "handle_QUIT", None)
        return str(await parent(server, session, envelope)) if parent else "221 Bye"

    def connection_closed(self, server: SMTP) -> None:
        self.observatory.closed("smtp", _connection_id(server))
