"""The probe's IMAP exchanges: one connection to see what is offered (in plaintext, then
after STARTTLS), then one connection per login attempt, each recorded for the verdicts of
`probe_checks`. Responses are framed by the gateway's client codec with bounds far below
its defaults: nothing a probe asks for before or just after login is large."""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.imap.client import (
    ClientConnection,
    Continuation,
    Event,
    ProtocolViolation,
    ResponseParser,
    Tagged,
    Untagged,
    parse_capabilities,
    parse_code,
)
from mock_operator.conformance.probe_checks import (
    Answer,
    Attempt,
    Exchange,
    Setup,
    Skipped,
    decode_challenge,
)
from mock_operator.conformance.probe_sasl import oauthbearer, xoauth2
from mock_operator.conformance.probe_wire import (
    ProbeSide,
    TlsPolicy,
    Transcript,
    Wire,
    WireError,
    shown,
)
from mock_operator.conformance.results import Status

MAX_LINE = 16 * 1024
MAX_LITERAL = 64 * 1024
MAX_RESPONSE = 96 * 1024
MAX_UNTAGGED = 500  # responses to one command: a capability list needs one
MAX_CONTINUATIONS = 3  # a SASL exchange needs one at most (the error challenge)
PROBE_USER = "mock-operator-probe"


@dataclass(frozen=True)
class ImapObservations:
    setup: Setup
    plaintext: tuple[Attempt, ...] = ()  # logins tried before TLS (off loopback only)
    logins: Mapping[str, Attempt] = field(default_factory=dict)  # xoauth2, oauthbearer, other-bal
    bad_tokens: Mapping[str, Attempt] = field(default_factory=dict)
    session_capabilities: frozenset[str] | None = None


class ImapClient:
    """Commands and their responses over a `Wire`, one deadline per command."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        parser = ResponseParser(
            max_line_length=MAX_LINE, max_literal_size=MAX_LITERAL, max_response_size=MAX_RESPONSE
        )
        self.conn = ClientConnection(parser, tag_prefix="P")
        self.challenges: list[bytes] = []  # every continuation of the current SASL exchange

    async def _event(self) -> Event:
        while True:
            event = self.conn.next_event()
            if isinstance(event, ProtocolViolation):
                raise WireError("protocol", f"réponse IMAP invalide : {event.message}")
            if event is not None:
                return event
            data = await self.wire.receive()
            self.conn.receive_data(data)
            if not data:
                event = self.conn.next_event()
                if event is None:
                    raise WireError("closed", "connexion fermée par le serveur")
                if isinstance(event, ProtocolViolation):
                    raise WireError("closed", f"connexion fermée par le serveur ({event.message})")
                return event

    async def greeting(self) -> None:
        async with self.wire.step("accueil"):
            event = await self._event()
        self.wire.transcript.server(shown(getattr(event, "raw", b"")))
        if not isinstance(event, Untagged) or event.kind not in ("OK", "PREAUTH"):
            raise WireError("refused", "le serveur n'accueille pas la connexion (pas de * OK)")

    async def command(
        self,
        command: bytes,
        shown_as: str,
        *,
        sasl: bool = False,
        response: bytes | None = None,
        ack: bytes = b"",
    ) -> tuple[Tagged, frozenset[str] | None]:
        """Send `command`, read to its tagged completion; returns it and the capabilities
        announced on the way. Only a `sasl` exchange takes continuations: the first is
        answered with `response` (the SASL response of an AUTHENTICATE without SASL-IR),
        then each is recorded as a challenge and answered with `ack`; past
        `MAX_CONTINUATIONS`, the exchange is cancelled with ``*``."""
        tag, data = self.conn.send(command)
        await self.wire.send(data, f"{tag} {shown_as}")
        capabilities: frozenset[str] | None = None
        untagged = 0
        async with self.wire.step(shown_as.split(" ", 1)[0]):
            while True:
                event = await self._event()
                if isinstance(event, Tagged):  # the codec refuses tags we did not send
                    self.wire.transcript.server(shown(event.raw))
                    return event, parse_capabilities(event) or capabilities
                if isinstance(event, Continuation):
                    self.wire.transcript.server(shown(event.raw))
                    if not sasl:
                        verb = shown_as.split(" ", 1)[0]
                        raise WireError("protocol", f"« + » inattendu en réponse à {verb}")
                    response = await self._continue(event, response, ack)
                    continue
                if isinstance(event, Untagged):
                    untagged += 1
                    if untagged > MAX_UNTAGGED:
                        raise WireError("limit", f"plus de {MAX_UNTAGGED} réponses à une commande")
                    if untagged <= 20:
                        self.wire.transcript.server(shown(event.raw))
                    found = parse_capabilities(event)
                    if found is not None:
                        capabilities = found

    async def _continue(
        self, event: Continuation, response: bytes | None, ack: bytes
    ) -> bytes | None:
        """Answer a continuation; returns the response still to send (None: sent)."""
        if response is not None:
            await self._write(response + b"\r\n", "<masqué>")
            return None
        if len(self.challenges) > MAX_CONTINUATIONS:  # cancelled, and it goes on
            raise WireError("protocol", "le serveur relance l'échange SASL sans fin")
        self.challenges.append(decode_challenge(event.text))
        if len(self.challenges) > MAX_CONTINUATIONS:
            await self._write(b"*\r\n", "* (abandon)")
            return None
        if event.text.strip():
            self.wire.transcript.note(
                "défi décodé : " + self.challenges[-1][:200].decode("utf-8", "replace")
            )
        await self._write(ack + b"\r\n", ack.decode() or "(réponse vide)")
        return None

    async def _write(self, data: bytes, shown_as: str) -> None:
        self.wire.transcript.client(shown_as)
        self.wire.writer.write(data)
        await self.wire.writer.drain()

    async def capability(self) -> frozenset[str]:
        tagged, found = await self.command(b"CAPABILITY", "CAPABILITY")
        if tagged.status != "OK":
            raise WireError("protocol", f"CAPABILITY refusé : {tagged.status} {tagged.text[:100]}")
        return found or frozenset()

    async def starttls(self, policy: TlsPolicy, context: ssl.SSLContext, host: str) -> None:
        tagged, _ = await self.command(b"STARTTLS", "STARTTLS")
        if tagged.status != "OK":
            raise WireError("tls", f"STARTTLS refusé : {tagged.status} {tagged.text[:100]}")
        if self.conn.parser.take_buffer():
            # RFC 3501 §6.2.1: what came before the handshake must not be read as after it
            raise WireError("protocol", "données en clair reçues après l'OK de STARTTLS")
        await self.wire.start_tls(context, policy.server_name or host)

    async def authenticate(self, mechanism: str, response: bytes | None, *, inline: bool) -> Tagged:
        """AUTHENTICATE `mechanism`; `response` (the SASL response, not yet base64) goes on
        the command line with `inline` (SASL-IR), else after the server's ``+``. Without a
        response, any ``+`` is recorded and the exchange cancelled."""
        self.challenges = []
        encoded = base64.b64encode(response) if response is not None else None
        if encoded is not None:
            self.wire.transcript.hide(encoded.decode())
        command = f"AUTHENTICATE {mechanism}".encode()
        shown_as = f"AUTHENTICATE {mechanism}"
        if inline and encoded is not None:
            command += b" " + encoded
            shown_as += " <masqué>"
            encoded = None
        ack = b"AQ==" if mechanism == "OAUTHBEARER" else b""  # RFC 7628 §3.2.3; XOAUTH2: empty
        if response is None:
            ack = b"*"
        tagged, _ = await self.command(command, shown_as, sasl=True, response=encoded, ack=ack)
        return tagged

    async def logout(self) -> None:
        with contextlib.suppress(WireError):
            await self.command(b"LOGOUT", "LOGOUT")


def answer_of(tagged: Tagged) -> Answer:
    code = parse_code(tagged.code)[0] if tagged.code else None
    return Answer(tagged.status == "OK", tagged.status, code, tagged.text[:200])


class ImapProbe(ProbeSide):
    """The IMAP side of a probe run."""

    sasl_ir = False  # the server offers SASL-IR: learnt by the setup connection

    def _transcript(self) -> Transcript:
        return Transcript(self.plan.bad)

    async def observe(self) -> ImapObservations:
        setup, plaintext = await self._setup()
        if setup.plaintext_capabilities is None:
            reason = f"première connexion échouée : {setup.error}"
            return ImapObservations(setup, plaintext, *_all_skipped(reason))
        why = setup.tokens_may_go
        if why is not None:
            return ImapObservations(setup, plaintext, *_all_skipped(why))
        offered = setup.capabilities or frozenset()
        self.sasl_ir = "SASL-IR" in offered
        logins: dict[str, Attempt] = {}
        session: frozenset[str] | None = None
        for mechanism in ("XOAUTH2", "OAUTHBEARER"):
            if f"AUTH={mechanism}" not in offered:
                logins[mechanism.lower()] = Skipped(
                    Status.FAILED, f"AUTH={mechanism} n'est pas annoncé : aucun jeton envoyé"
                )
                continue
            first = mechanism == "XOAUTH2"
            logins[mechanism.lower()], caps = await self._login(mechanism, self.plan.bal, first)
            session = session or caps
        usable = [m for m in ("XOAUTH2", "OAUTHBEARER") if f"AUTH={m}" in offered]
        if usable:
            logins["other-bal"], _ = await self._login(usable[0], self.plan.other_bal, False)
        else:
            logins["other-bal"] = Skipped(
                Status.NOT_OBSERVED, "aucun mécanisme à jeton annoncé : rien à demander"
            )
        # bad tokens go even where the mechanism is not announced: they reveal nothing
        foreign, _ = await self._attempt("XOAUTH2", self.plan.bal, self.plan.foreign)
        expired, _ = await self._attempt("OAUTHBEARER", self.plan.bal, self.plan.expired)
        bad = dict(zip(BAD_TOKEN_NAMES, (foreign, expired), strict=True))
        return ImapObservations(setup, plaintext, logins, bad, session)

    async def _setup(self) -> tuple[Setup, tuple[Attempt, ...]]:
        transcript = self._transcript()
        wire: Wire | None = None
        loopback = offered = False
        plain: frozenset[str] | None = None
        caps: frozenset[str] | None = None
        plaintext: list[Attempt] = []
        error: str | None = None
        tls_error: str | None = None
        try:
            wire = await Wire.connect(self.endpoint, transcript, self.step)
            loopback = wire.loopback
            client = ImapClient(wire)
            await client.greeting()
            plain = await client.capability()
            offered = "STARTTLS" in plain
            if not loopback:
                await self._plaintext_logins(client, plaintext)
            if offered:
                try:
                    await client.starttls(self.policy, self.context, self.endpoint.host)
                except WireError as exc:
                    tls_error = exc.text
                    raise
                self.tls = True
                caps = await client.capability()
            else:
                caps = plain
            await client.logout()
        except WireError as exc:
            error = exc.text
        finally:
            if wire is not None:
                await wire.close()
        tls = wire.tls if wire is not None else None
        setup = Setup(loopback, plain, offered, tls, tls_error, caps, error, transcript.excerpt())
        return setup, tuple(plaintext)

    async def _plaintext_logins(self, client: ImapClient, attempts: list[Attempt]) -> None:
        """Before TLS, off loopback: AUTHENTICATE (no response: a ``+`` is already a fault)
        and LOGIN with a user and password of no one. Each must be refused outright. A
        broken connection ends the setup (`WireError`), the attempt recorded first."""
        login = f'LOGIN "{PROBE_USER}" "not-a-password"'
        for command in ("AUTHENTICATE", "LOGIN"):
            start = len(client.wire.transcript.lines)
            try:
                if command == "AUTHENTICATE":
                    tagged = await client.authenticate("XOAUTH2", None, inline=False)
                else:
                    tagged, _ = await client.command(login.encode(), login)
            except WireError as exc:
                lines = tuple(client.wire.transcript.lines[start:])
                attempts.append(Exchange(None, tuple(client.challenges), exc.text, lines))
                raise
            lines = tuple(client.wire.transcript.lines[start:])
            challenges = tuple(client.challenges) if command == "AUTHENTICATE" else ()
            attempts.append(Exchange(answer_of(tagged), challenges, None, lines))

    async def _open(self, transcript: Transcript) -> tuple[Wire, ImapClient]:
        wire = await Wire.connect(self.endpoint, transcript, self.step)
        try:
            client = ImapClient(wire)
            await client.greeting()
            if self.tls:
                await client.starttls(self.policy, self.context, self.endpoint.host)
        except BaseException:
            await wire.close()
            raise
        return wire, client

    async def _login(
        self, mechanism: str, bal: str, capabilities: bool
    ) -> tuple[Attempt, frozenset[str] | None]:
        """Log in with a fresh token; with `capabilities`, also read the session's."""
        token = await self.plan.tokens()
        return await self._attempt(mechanism, bal, token, capabilities=capabilities)

    async def _attempt(
        self, mechanism: str, bal: str, token: str, *, capabilities: bool = False
    ) -> tuple[Attempt, frozenset[str] | None]:
        """One login on a connection of its own (servers end a session after a few
        failures): the exchange, and the session's capabilities when asked and logged in."""
        transcript = self._transcript()
        transcript.hide(token)
        host = self.policy.name_for(self.endpoint)
        response = (
            xoauth2(bal, token)
            if mechanism == "XOAUTH2"
            else oauthbearer(bal, token, host, self.endpoint.port)
        )
        client: ImapClient | None = None
        wire: Wire | None = None
        start = 0
        try:
            wire, client = await self._open(transcript)
            start = len(transcript.lines)
            tagged = await client.authenticate(mechanism, response, inline=self.sasl_ir)
            answer = answer_of(tagged)
            session: frozenset[str] | None = None
            if answer.ok:
                if capabilities:
                    session = parse_capabilities(tagged) or await client.capability()
                await client.logout()
            return Exchange(
                answer, tuple(client.challenges), None, transcript.excerpt(start)
            ), session
        except WireError as exc:
            challenges = tuple(client.challenges) if client is not None else ()
            return Exchange(None, challenges, exc.text, transcript.excerpt(start)), None
        finally:
            if wire is not None:
                await wire.close()


BAD_TOKEN_NAMES = (
    "jeton signé par une autre clé (XOAUTH2)",
    "jeton expiré depuis une heure (OAUTHBEARER)",
)


def _all_skipped(reason: str) -> tuple[Mapping[str, Attempt], Mapping[str, Attempt]]:
    skipped = Skipped(Status.NOT_OBSERVED, reason)
    return (
        dict.fromkeys(("xoauth2", "oauthbearer", "other-bal"), skipped),
        dict.fromkeys(BAD_TOKEN_NAMES, skipped),
    )
