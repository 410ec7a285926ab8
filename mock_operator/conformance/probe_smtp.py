"""The probe's SMTP submission exchanges: what EHLO offers (in plaintext, then after
STARTTLS), one login per connection, and a sender the login may not use. No message is
ever sent: a transaction stops at MAIL FROM (then RSET). Replies are read with bounds on
line length and on the lines of one reply (smtplib bounds neither the lines of a reply
nor the time a whole reply takes)."""

from __future__ import annotations

import base64
import contextlib
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

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

MAX_LINE = 4096  # RFC 5321 §4.5.3.1.5: 512; room for long EHLO and error texts
MAX_REPLY_LINES = 100
MAX_CHALLENGES = 3
EHLO_NAME = "probe.mock-operator.invalid"
_REPLY = re.compile(rb"([2-5][0-9][0-9])([ -])(.*)")
_ENHANCED = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$)")


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]  # the text of each line, after the code and separator

    @property
    def enhanced(self) -> str | None:
        match = _ENHANCED.match(self.lines[0]) if self.lines else None
        return match.group(1) if match else None

    def answer(self) -> Answer:
        text = self.lines[0] if self.lines else ""
        enhanced = self.enhanced
        if enhanced is not None:
            text = text[len(enhanced) :].strip()
        return Answer(200 <= self.code < 300, str(self.code), enhanced, text[:200])

    def keywords(self) -> dict[str, str]:
        """EHLO's extensions: keyword (upper case) → its parameters."""
        found: dict[str, str] = {}
        for line in self.lines[1:]:
            keyword, _, params = line.strip().partition(" ")
            if keyword:
                found[keyword.upper()] = params.strip()
        return found


@dataclass(frozen=True)
class SmtpObservations:
    setup: Setup
    keywords: Mapping[str, str] | None = None  # EHLO after TLS (plaintext without TLS)
    plaintext: tuple[Attempt, ...] = ()
    logins: Mapping[str, Attempt] = field(default_factory=dict)  # xoauth2, oauthbearer
    bad_tokens: Mapping[str, Attempt] = field(default_factory=dict)
    sender: Attempt = field(default_factory=lambda: Skipped(Status.NOT_OBSERVED, "pas de session"))


class SmtpClient:
    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self._buffer = bytearray()
        self.challenges: list[bytes] = []

    async def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end]).rstrip(b"\r")
                del self._buffer[: end + 1]
                if len(line) > MAX_LINE:
                    raise WireError("limit", f"ligne de réponse de plus de {MAX_LINE} octets")
                return line
            if len(self._buffer) > MAX_LINE:
                raise WireError("limit", f"ligne de réponse de plus de {MAX_LINE} octets")
            data = await self.wire.receive()
            if not data:
                raise WireError("closed", "connexion fermée par le serveur")
            self._buffer += data

    async def reply(self, what: str) -> Reply:
        """One reply, multi-line included, under one deadline."""
        lines: list[str] = []
        async with self.wire.step(what):
            while True:
                raw = await self._line()
                match = _REPLY.fullmatch(raw)
                if match is None:
                    self.wire.transcript.server(shown(raw))
                    raise WireError("protocol", "réponse SMTP invalide (pas de code à 3 chiffres)")
                if len(lines) < 20:
                    self.wire.transcript.server(shown(raw))
                lines.append(match.group(3).decode("utf-8", "replace")[:MAX_LINE])
                if match.group(2) == b" ":
                    return Reply(int(match.group(1)), tuple(lines))
                if len(lines) >= MAX_REPLY_LINES:
                    raise WireError("limit", f"réponse de plus de {MAX_REPLY_LINES} lignes")

    async def command(self, line: str, shown_as: str | None = None) -> Reply:
        await self.wire.send(line.encode() + b"\r\n", shown_as or line)
        return await self.reply(line.split(" ", 1)[0])

    async def greeting(self) -> None:
        reply = await self.reply("accueil")
        if reply.code != 220:
            raise WireError("refused", f"le serveur n'accueille pas la connexion ({reply.code})")

    async def ehlo(self) -> Reply:
        reply = await self.command(f"EHLO {EHLO_NAME}")
        if reply.code != 250:
            raise WireError("protocol", f"EHLO refusé : {reply.code}")
        return reply

    async def starttls(self, policy: TlsPolicy, context: ssl.SSLContext, host: str) -> None:
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            raise WireError("tls", f"STARTTLS refusé : {reply.code} {reply.lines[0][:100]}")
        if self._buffer:
            raise WireError("protocol", "données en clair reçues après le 220 de STARTTLS")
        await self.wire.start_tls(context, policy.server_name or host)

    async def authenticate(self, mechanism: str, response: bytes | None) -> Reply:
        """AUTH with the initial response on the line (RFC 4954 §4); each ``334`` after it
        is a challenge, recorded and answered as RFC 7628 §3.2.3 says (``AQ==``, a lone
        ^A). Without a response, a ``334`` is recorded and the exchange cancelled."""
        self.challenges = []
        line, shown_as = f"AUTH {mechanism}", f"AUTH {mechanism}"
        if response is not None:
            encoded = base64.b64encode(response).decode()
            self.wire.transcript.hide(encoded)
            line, shown_as = f"{line} {encoded}", f"{shown_as} <masqué>"
        reply = await self.command(line, shown_as)
        while reply.code == 334:
            if len(self.challenges) > MAX_CHALLENGES:  # cancelled, and it goes on
                raise WireError("protocol", "le serveur relance l'échange SASL sans fin")
            text = reply.lines[0].encode() if reply.lines else b""
            self.challenges.append(decode_challenge(text))
            if text.strip():
                challenge = self.challenges[-1][:200].decode("utf-8", "replace")
                self.wire.transcript.note(f"défi décodé : {challenge}")
            if response is None or len(self.challenges) > MAX_CHALLENGES:
                reply = await self.command("*", "* (abandon)")
            else:
                reply = await self.command("AQ==")
        return reply

    async def quit(self) -> None:
        with contextlib.suppress(WireError):
            await self.command("QUIT")


class SmtpProbe(ProbeSide):
    """The SMTP side of a probe run."""

    async def observe(self) -> SmtpObservations:
        setup, keywords, plaintext = await self._setup()
        if setup.plaintext_capabilities is None:
            reason = f"première connexion échouée : {setup.error}"
            return SmtpObservations(setup, keywords, plaintext, *_all_skipped(reason))
        why = setup.tokens_may_go
        if why is not None:
            return SmtpObservations(setup, keywords, plaintext, *_all_skipped(why))
        offered = set((keywords or {}).get("AUTH", "").upper().split())
        logins: dict[str, Attempt] = {}
        sender: Attempt = Skipped(Status.NOT_OBSERVED, "AUTH XOAUTH2 impossible : pas de session")
        for mechanism in ("XOAUTH2", "OAUTHBEARER"):
            if mechanism not in offered:
                logins[mechanism.lower()] = Skipped(
                    Status.FAILED, f"AUTH {mechanism} n'est pas annoncé : aucun jeton envoyé"
                )
                continue
            token = await self.plan.tokens()
            other = self.plan.other_bal if mechanism == "XOAUTH2" else None
            logins[mechanism.lower()], mail = await self._attempt(mechanism, token, sender=other)
            if other is not None:
                sender = mail
        # a bad token goes even where the mechanism is not announced: it reveals nothing
        bad, _ = await self._attempt("XOAUTH2", self.plan.foreign)
        return SmtpObservations(
            setup, keywords, plaintext, logins, {FOREIGN_KEY_ATTEMPT: bad}, sender
        )

    async def _setup(self) -> tuple[Setup, dict[str, str] | None, tuple[Attempt, ...]]:
        transcript = Transcript(self.plan.bad)
        wire: Wire | None = None
        loopback = offered = False
        plain: dict[str, str] | None = None
        keywords: dict[str, str] | None = None
        plaintext: list[Attempt] = []
        error: str | None = None
        tls_error: str | None = None
        try:
            wire = await Wire.connect(self.endpoint, transcript, self.step)
            loopback = wire.loopback
            client = SmtpClient(wire)
            await client.greeting()
            plain = (await client.ehlo()).keywords()
            offered = "STARTTLS" in plain
            if not loopback:
                await self._plaintext_login(client, plaintext)
            if offered:
                try:
                    await client.starttls(self.policy, self.context, self.endpoint.host)
                except WireError as exc:
                    tls_error = exc.text
                    raise
                self.tls = True
                keywords = (await client.ehlo()).keywords()
            else:
                keywords = plain
            await client.quit()
        except WireError as exc:
            error = exc.text
        finally:
            if wire is not None:
                await wire.close()
        setup = Setup(
            loopback,
            frozenset(plain) if plain is not None else None,
            offered,
            wire.tls if wire is not None else None,
            tls_error,
            frozenset(keywords) if keywords is not None else None,
            error,
            transcript.excerpt(),
        )
        return setup, keywords, tuple(plaintext)

    async def _plaintext_login(self, client: SmtpClient, attempts: list[Attempt]) -> None:
        """Before TLS, off loopback: AUTH without a response must be refused outright (a
        ``334`` asks for credentials in the clear)."""
        start = len(client.wire.transcript.lines)
        try:
            reply = await client.authenticate("XOAUTH2", None)
        except WireError as exc:
            lines = tuple(client.wire.transcript.lines[start:])
            attempts.append(Exchange(None, tuple(client.challenges), exc.text, lines))
            raise
        lines = tuple(client.wire.transcript.lines[start:])
        attempts.append(Exchange(reply.answer(), tuple(client.challenges), None, lines))

    async def _open(self, transcript: Transcript) -> tuple[Wire, SmtpClient]:
        wire = await Wire.connect(self.endpoint, transcript, self.step)
        try:
            client = SmtpClient(wire)
            await client.greeting()
            await client.ehlo()
            if self.tls:
                await client.starttls(self.policy, self.context, self.endpoint.host)
                await client.ehlo()
        except BaseException:
            await wire.close()
            raise
        return wire, client

    async def _attempt(
        self, mechanism: str, token: str, *, sender: str | None = None
    ) -> tuple[Attempt, Attempt]:
        """One login on a connection of its own; with `sender`, once logged in, MAIL FROM
        that address (then RSET whatever the answer: nothing is sent)."""
        transcript = Transcript(self.plan.bad)
        transcript.hide(token)
        bal = self.plan.bal
        response = (
            xoauth2(bal, token)
            if mechanism == "XOAUTH2"
            else oauthbearer(bal, token, self.policy.name_for(self.endpoint), self.endpoint.port)
        )
        client: SmtpClient | None = None
        wire: Wire | None = None
        start = 0
        mail: Attempt = Skipped(Status.NOT_OBSERVED, "connexion avec un jeton valide échouée")
        try:
            wire, client = await self._open(transcript)
            start = len(transcript.lines)
            reply = await client.authenticate(mechanism, response)
            answer = reply.answer()
            login = Exchange(answer, tuple(client.challenges), None, transcript.excerpt(start))
            if answer.ok and sender is not None:
                mail = await self._mail_from(client, sender)
            await client.quit()
            return login, mail
        except WireError as exc:
            challenges = tuple(client.challenges) if client is not None else ()
            return Exchange(None, challenges, exc.text, transcript.excerpt(start)), mail
        finally:
            if wire is not None:
                await wire.close()

    async def _mail_from(self, client: SmtpClient, sender: str) -> Attempt:
        start = len(client.wire.transcript.lines)
        try:
            reply = await client.command(f"MAIL FROM:<{sender}>")
        except WireError as exc:
            lines = tuple(client.wire.transcript.lines[start:])
            return Exchange(None, (), exc.text, lines)
        with contextlib.suppress(WireError):
            await client.command("RSET")
        lines = tuple(client.wire.transcript.lines[start:])
        return Exchange(reply.answer(), (), None, lines)


FOREIGN_KEY_ATTEMPT = "jeton signé par une autre clé (XOAUTH2)"


def _all_skipped(
    reason: str,
) -> tuple[Mapping[str, Attempt], Mapping[str, Attempt], Attempt]:
    skipped = Skipped(Status.NOT_OBSERVED, reason)
    return (
        dict.fromkeys(("xoauth2", "oauthbearer"), skipped),
        {FOREIGN_KEY_ATTEMPT: skipped},
        skipped,
    )
