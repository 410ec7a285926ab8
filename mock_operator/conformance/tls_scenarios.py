"""The TLS scenario ports: the modern platform again (same store, same logins), behind a
certificate an LPS must refuse, one IMAP and one SMTP port per scenario (`SCENARIOS`).

What the runner records there, for the `cert-*` checks: a `connect` event naming the
scenario, then either `tls` (the handshake completed: the LPS accepted the certificate, or
checks it afterwards) or `tls_failed` (the server saw the handshake end: the client's alert,
if it sent one, and whether its ClientHello had come, i.e. whether it saw the certificate at
all), then whatever it did next (AUTHENTICATE / AUTH: it went on despite the certificate).

An LPS that refuses the certificate never logs in, so nothing attributes its connection by
token: at its close the connection goes to the most recent open campaign
(`Observatory.adopt`), unless its login had already found one.

Each connection gets a server context of its own, so that its SNI callback (called for
every ClientHello, SNI or not) tells which connection got as far as the certificate: a
client that sends garbage, or nothing, is told apart from one that hangs up on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, TLSSetupException

from gateway.imap.engine import ImapSession
from gateway.runtime.smtp_server import SmtpServer, TokenSMTP
from gateway.runtime.tls import server_context
from mock_operator.conformance.scenario_certs import SCENARIOS, ScenarioFiles
from mock_operator.conformance.taps import (
    ObservedChannel,
    ObservedImapServer,
    ObservedSubmission,
    SniLog,
    _connection_id,
    tls_facts,
)

ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")
_CLOSED = frozenset({"UNEXPECTED_EOF_WHILE_READING", "EOF_OCCURRED_IN_VIOLATION_OF_PROTOCOL"})


def handshake_failure(error: BaseException, hello: bool) -> dict[str, Any]:
    """What a failed server-side handshake says of the client: `refused` when it had the
    certificate (its ClientHello came) and then sent an alert or hung up."""
    reason = str(getattr(error, "reason", "") or "") or type(error).__name__
    alert = ""
    for prefix in ALERT_PREFIXES:
        if reason.startswith(prefix):
            alert = reason.removeprefix(prefix).lower().replace("_", " ")
    closed = reason in _CLOSED or isinstance(
        error, ConnectionError | ssl.SSLEOFError | ssl.SSLZeroReturnError
    )
    return {
        "hello": hello,
        "refused": hello and bool(alert or closed),
        "alert": alert[:60],
        "reason": reason[:80],
    }


class ScenarioNames(SniLog):
    """The server names asked for on one scenario's contexts (one context per connection);
    `SniLog` to the platform's taps."""

    def __init__(self) -> None:  # no shared context to hook: `watch` hooks each one
        self._names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def watch(self, context: ssl.SSLContext) -> Callable[[], bool]:
        """Record the SNI of `context`'s handshake; the answer tells whether the ClientHello
        came (the server then sent its certificate)."""
        hello = [False]

        def seen(connection: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
            hello[0] = True
            if name:
                self._names[connection] = name[:255]

        context.sni_callback = seen
        return lambda: hello[0]


class ScenarioTls:
    """One scenario: its name and certificate."""

    def __init__(self, name: str, cert: Path, key: Path) -> None:
        self.name = name
        self.cert = cert
        self.key = key
        self.names = ScenarioNames()
        self.context = server_context(cert, key)

    def fresh(self) -> tuple[ssl.SSLContext, Callable[[], bool]]:
        """A context for one connection, and whether its ClientHello came."""
        context = server_context(self.cert, self.key)
        return context, self.names.watch(context)


class ScenarioChannel(ObservedChannel):
    scenario: ScenarioTls | None = None

    async def start_tls(self) -> None:
        scenario = self.scenario
        if scenario is None:
            await super().start_tls()
            return
        self.ssl_context, hello = scenario.fresh()
        try:
            await super().start_tls()
        except Exception as error:
            if self.observatory is not None:
                facts = handshake_failure(error, hello())
                self.observatory.event("imap", self.connection, "tls_failed", **facts)
            raise


class ScenarioImapServer(ObservedImapServer):
    channel_type = ScenarioChannel

    def __init__(self, *args: Any, scenario: ScenarioTls, **kwargs: Any) -> None:
        super().__init__(*args, sni=scenario.names, **kwargs)
        self.scenario = scenario

    def attach(self, channel: ObservedChannel, connection: str) -> None:
        super().attach(channel, connection)
        if isinstance(channel, ScenarioChannel):
            channel.scenario = self.scenario

    def connect_facts(self) -> dict[str, Any]:
        return {"scenario": self.scenario.name}

    def ended(self, session: ImapSession) -> None:
        self.observatory.adopt(session.connection.session_id)
        super().ended(session)


class ScenarioSMTP(TokenSMTP):
    """aiosmtpd's protocol, with a context of its own for STARTTLS and its failure told to
    the handler (`tls_failed`)."""

    async def smtp_STARTTLS(self, arg: str) -> None:
        scenario: ScenarioTls | None = getattr(self.event_handler, "scenario", None)
        hello: Callable[[], bool] | None = None
        if scenario is not None and not arg and self.tls_context is not None:
            self.tls_context, hello = scenario.fresh()
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException as error:
            told = getattr(self.event_handler, "tls_failed", None)
            if told is not None and hello is not None:
                told(self, error.__cause__ or error, hello())
            raise
        done = getattr(self.event_handler, "tls_done", None)
        if done is not None and hello is not None:
            done(self)  # now, not at the next EHLO: a client may leave without one


class ScenarioSmtpServer(SmtpServer):
    protocol_type = ScenarioSMTP


class ScenarioSubmission(ObservedSubmission):
    def __init__(self, *args: Any, scenario: ScenarioTls, **kwargs: Any) -> None:
        super().__init__(*args, sni=scenario.names, **kwargs)
        self.scenario = scenario

    def connection_opened(self, server: SMTP) -> None:
        self._event(server, "connect", secure=False, scenario=self.scenario.name)

    def tls_done(self, server: SMTP) -> None:
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        if ssl_object is not None and not getattr(server, "_conformance_tls", False):
            server._conformance_tls = True  # type: ignore[attr-defined]  # as handle_EHLO's
            self._event(server, "tls", **tls_facts(ssl_object, self.sni))

    def tls_failed(self, server: SMTP, error: BaseException, hello: bool) -> None:
        self._event(server, "tls_failed", **handshake_failure(error, hello))

    def connection_closed(self, server: SMTP) -> None:
        self.observatory.adopt(_connection_id(server))
        super().connection_closed(server)


@dataclasses.dataclass
class ScenarioEndpoint:
    scenario: str
    imap: ScenarioImapServer
    smtp: ScenarioSmtpServer

    def ports(self) -> dict[str, int]:
        return {"imap": self.imap.port, "smtp": self.smtp.port}


class ScenarioPorts:
    """The running scenario endpoints, in `SCENARIOS` order."""

    def __init__(self, files: ScenarioFiles, endpoints: list[ScenarioEndpoint]) -> None:
        self.files = files
        self.endpoints = endpoints

    def ports(self) -> dict[str, dict[str, int]]:
        return {e.scenario: e.ports() for e in self.endpoints}

    def describe(self) -> dict[str, Any]:
        """For the campaign page and the JSON API: where to point the LPS, what to trust."""
        return {"trust": str(self.files.trust), "ports": self.ports()}

    async def stop(self) -> None:
        await asyncio.gather(
            *(e.imap.stop(grace=0.5) for e in self.endpoints),
            *(e.smtp.stop(grace=0.5) for e in self.endpoints),
        )


def scenarios(files: ScenarioFiles) -> list[ScenarioTls]:
    return [ScenarioTls(s, files.cert(s), files.key(s)) for s in SCENARIOS]


# Re-exported for server.py's wiring, so that it needs only this module.
__all__ = [
    "SCENARIOS",
    "ScenarioEndpoint",
    "ScenarioImapServer",
    "ScenarioPorts",
    "ScenarioSmtpServer",
    "ScenarioSubmission",
    "ScenarioTls",
    "handshake_failure",
    "scenarios",
]
