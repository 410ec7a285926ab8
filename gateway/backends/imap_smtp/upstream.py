"""Logging in to a backend's IMAP server as a BAL, for the front to relay to or for the
operator's tools to read and write.

Two ways in, by configuration: `master` (SASL PLAIN, authzid = the BAL, authcid and
password = the gateway's own credentials: the operator trusts the gateway to have checked
the person) and `token` (SASL XOAUTH2 with the person's own PSC token, user = the BAL).
The dialogue goes through the sans-I/O client codec; after it the connection is handed to
the relay as plain streams.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import ssl
from collections.abc import Sequence

from gateway.backends.base import CLOSE_GRACE, Upstream
from gateway.backends.errors import BackendUnavailable
from gateway.backends.origin import imap_id
from gateway.imap.client import (
    ClientConnection,
    Continuation,
    ProtocolViolation,
    Tagged,
    Untagged,
    parse_capabilities,
)
from gateway.runtime.login import ConnectionInfo
from gateway.runtime.tls import shared_backend_context
from gateway.settings import BackendSettings

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
WARM_PROBE = 5.0  # seconds a warm session has to answer UNSELECT and NOOP before reuse


def _context(backend: BackendSettings) -> ssl.SSLContext:
    return shared_backend_context(backend.ca_file, backend.tls_verify)


class Dialogue:
    """One command at a time over the codec, with the backend's reply timeout."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.codec = ClientConnection(tag_prefix="GW")

    async def event(self) -> Tagged | Untagged | Continuation:
        while True:
            event = self.codec.next_event()
            if isinstance(event, ProtocolViolation):
                raise BackendUnavailable("protocol", f"backend spoke nonsense: {event.message}")
            if event is not None:
                return event
            async with asyncio.timeout(self.timeout):
                data = await self.reader.read(READ_SIZE)
            if not data:
                raise BackendUnavailable("connect", "backend closed the connection")
            self.codec.receive_data(data)

    async def command(self, text: bytes) -> tuple[Tagged, list[Untagged]]:
        tag, data = self.codec.send(text)
        self.writer.write(data)
        await self.writer.drain()
        return await self.completion(tag)

    async def command_with_literal(
        self, text: bytes, literal: bytes, *, synchronising: bool = False
    ) -> tuple[Tagged, list[Untagged]]:
        """`text` then one literal argument (APPEND): LITERAL+ unless `synchronising`, in
        which case the server's continuation is awaited before the octets go."""
        marker = b" {%d}" % len(literal) if synchronising else b" {%d+}" % len(literal)
        tag, data = self.codec.send(text + marker)
        self.writer.write(data)
        if synchronising:
            await self.writer.drain()
            while True:
                event = await self.event()
                if isinstance(event, Continuation):
                    break
                if isinstance(event, Tagged) and event.tag == tag:
                    return event, []
        self.writer.write(literal + b"\r\n")
        await self.writer.drain()
        return await self.completion(tag)

    async def pipelined(
        self, commands: Sequence[tuple[bytes, bytes]]
    ) -> list[tuple[Tagged, list[Untagged]]]:
        """Several commands of one literal argument each (APPENDs) sent at once with
        LITERAL+, then their completions, in the order sent: one round trip for all. The
        caller bounds how many (their answers are small, so the server never blocks on
        writing them while we write)."""
        tags: list[str] = []
        for text, literal in commands:
            tag, data = self.codec.send(text + b" {%d+}" % len(literal))
            self.writer.write(data)
            self.writer.write(literal + b"\r\n")
            await self.writer.drain()
            tags.append(tag)
        wanted = set(tags)
        done: dict[str, tuple[Tagged, list[Untagged]]] = {}
        untagged: list[Untagged] = []
        while len(done) < len(tags):
            event = await self.event()
            if isinstance(event, Tagged) and event.tag in wanted:
                done[event.tag], untagged = (event, untagged), []
            elif isinstance(event, Untagged):
                if event.kind == "BYE":
                    raise BackendUnavailable("connect", f"backend said BYE: {event.text}")
                untagged.append(event)
            elif isinstance(event, Continuation):
                self.writer.write(b"*\r\n")
                await self.writer.drain()
        return [done[tag] for tag in tags]

    async def completion(self, tag: str) -> tuple[Tagged, list[Untagged]]:
        untagged: list[Untagged] = []
        while True:
            event = await self.event()
            if isinstance(event, Tagged) and event.tag == tag:
                return event, untagged
            if isinstance(event, Untagged):
                if event.kind == "BYE":
                    raise BackendUnavailable("connect", f"backend said BYE: {event.text}")
                untagged.append(event)
            elif isinstance(event, Continuation):
                # A SASL challenge we did not expect (e.g. an RFC 7628 error): abort it.
                self.writer.write(b"*\r\n")
                await self.writer.drain()


def _capabilities_of(events: list[Untagged], tagged: Tagged | None) -> frozenset[str] | None:
    if tagged is not None:
        found = parse_capabilities(tagged)
        if found is not None:
            return found
    for event in events:
        found = parse_capabilities(event)
        if found is not None:
            return found
    return None


def _introduction(client: ConnectionInfo | None, capabilities: frozenset[str]) -> bytes | None:
    """The ID command naming the client before login (`gateway.backends.origin`), when the
    backend offers ID (capabilities are upper-cased)."""
    if client is None or "ID" not in capabilities:
        return None
    return imap_id(client)


def _identified(name: str, done: Tagged) -> None:
    """A refused ID is the backend's business, not a reason to fail the login."""
    if done.status != "OK":
        log.info("backend.id_refused", extra={"backend": name, "reply": done.text[:200]})


async def _introduced_login(
    talk: Dialogue, name: str, introduction: bytes, login: bytes
) -> tuple[Tagged, list[Untagged]]:
    """ID then AUTHENTICATE (SASL-IR) in one write, then their answers in turn: one round
    trip of the backend login less (RFC 9051 lets a client pipeline them: neither
    depends on the other's answer)."""
    id_tag, introducing = talk.codec.send(introduction)
    tag, logging_in = talk.codec.send(login)
    talk.writer.write(introducing + logging_in)
    await talk.writer.drain()
    identified, _ = await talk.completion(id_tag)
    _identified(name, identified)
    return await talk.completion(tag)


def sasl_initial_response(
    backend: BackendSettings, bal: str, token: str, *, master: bool = False
) -> tuple[str, bytes]:
    """(mechanism, base64 response) for logging in to `backend` as `bal` (`master`: with
    the gateway's own credentials whatever `login` says, as the operator's tools do)."""
    if master or backend.login == "master":
        blob = f"{bal}\0{backend.master_user}\0{backend.password()}".encode()
        return "PLAIN", base64.b64encode(blob)
    blob = f"user={bal}\x01auth=Bearer {token}\x01\x01".encode()
    return "XOAUTH2", base64.b64encode(blob)


async def open_upstream(
    name: str,
    backend: BackendSettings,
    bal: str,
    token: str,
    *,
    master: bool = False,
    client: ConnectionInfo | None = None,
) -> Upstream:
    """Connect to the backend's IMAP server and log in as `bal`, for `client` (named to
    the backend with ID first, when it offers ID); raises `BackendUnavailable`."""
    implicit = backend.imap_tls == "implicit"
    try:
        async with asyncio.timeout(backend.connect_timeout):
            reader, writer = await asyncio.open_connection(
                backend.imap_host,
                backend.imap_port,
                ssl=_context(backend) if implicit else None,
                server_hostname=backend.imap_host if implicit else None,
                limit=READ_SIZE,
            )
    except TimeoutError:
        raise BackendUnavailable("timeout", f"{name}: connection timed out") from None
    except ssl.SSLError as exc:
        raise BackendUnavailable("tls", f"{name}: TLS failed: {exc.reason}") from None
    except OSError as exc:
        raise BackendUnavailable("connect", f"{name}: {exc.strerror or exc}") from None
    try:
        capabilities, leftover = await _log_in(
            name, backend, reader, writer, bal, token, master, client
        )
    except BaseException:
        writer.close()
        raise
    return Upstream(name, backend.reply_timeout, reader, writer, capabilities, leftover)


async def _log_in(
    name: str,
    backend: BackendSettings,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    bal: str,
    token: str,
    master: bool,
    client: ConnectionInfo | None,
) -> tuple[frozenset[str], bytes]:
    talk = Dialogue(reader, writer, backend.reply_timeout)
    try:
        greeting = await talk.event()
        if not isinstance(greeting, Untagged) or greeting.kind != "OK":
            raise BackendUnavailable("protocol", f"{name}: unexpected greeting")
        capabilities = parse_capabilities(greeting)
        if backend.imap_tls == "starttls":
            done, _ = await talk.command(b"STARTTLS")
            if done.status != "OK":
                raise BackendUnavailable("tls", f"{name}: STARTTLS refused: {done.text}")
            if talk.codec.parser.take_buffer() or reader._buffer:  # type: ignore[attr-defined]
                # Bytes after the OK but before the handshake: injected by whoever sits on
                # the plaintext path (the IMAP flavour of CVE-2011-0411). Never read them.
                raise BackendUnavailable("tls", f"{name}: data before the TLS handshake")
            try:
                await writer.start_tls(_context(backend), server_hostname=backend.imap_host)
            except ssl.SSLError as exc:
                raise BackendUnavailable("tls", f"{name}: TLS failed: {exc.reason}") from None
            talk = Dialogue(reader, writer, backend.reply_timeout)  # a fresh codec after TLS
            capabilities = None  # must not be trusted from before TLS
        if capabilities is None:
            done, events = await talk.command(b"CAPABILITY")
            capabilities = _capabilities_of(events, done) or frozenset()
        introduction = _introduction(client, capabilities)
        mechanism, response = sasl_initial_response(backend, bal, token, master=master)
        if "SASL-IR" in capabilities:
            login = b"AUTHENTICATE " + mechanism.encode() + b" " + response
            if introduction is not None:
                done, events = await _introduced_login(talk, name, introduction, login)
            else:
                done, events = await talk.command(login)
        else:
            if introduction is not None:
                identified, _ = await talk.command(introduction)
                _identified(name, identified)
            tag, data = talk.codec.send(b"AUTHENTICATE " + mechanism.encode())
            writer.write(data)
            await writer.drain()
            first = await talk.event()
            if not isinstance(first, Continuation):
                raise BackendUnavailable("login", f"{name}: AUTHENTICATE {mechanism} refused")
            writer.write(response + b"\r\n")
            await writer.drain()
            done, events = await talk.completion(tag)
        if done.status != "OK":
            log.warning(
                "backend.login_refused",
                extra={"backend": name, "bal": bal, "reply": done.text[:200]},
            )
            raise BackendUnavailable("login", f"{name} refused the login to {bal}: {done.text}")
        after = _capabilities_of(events, done)
        if after is None:
            done, events = await talk.command(b"CAPABILITY")
            after = _capabilities_of(events, done) or frozenset()
        return after, talk.codec.parser.take_buffer()
    except TimeoutError:
        raise BackendUnavailable("timeout", f"{name}: no answer in time") from None
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        raise BackendUnavailable("connect", f"{name}: connection lost: {exc}") from None


async def refreshed(upstream: Upstream, *, selected: bool) -> Upstream:
    """A warm session made like a freshly logged-in one, for its next client: UNSELECT
    when a mailbox may be selected (any answer leaves it unselected), then a NOOP that
    proves it alive, in one round trip; raises `BackendUnavailable`."""
    talk = Dialogue(upstream.reader, upstream.writer, min(upstream.reply_timeout, WARM_PROBE))
    try:
        unselect = None
        if selected:
            unselect, data = talk.codec.send(b"UNSELECT")
            upstream.writer.write(data)
        noop, data = talk.codec.send(b"NOOP")
        upstream.writer.write(data)
        await upstream.writer.drain()
        if unselect is not None:
            await talk.completion(unselect)
        done, _ = await talk.completion(noop)
    except TimeoutError:
        raise BackendUnavailable("timeout", f"{upstream.backend}: no answer in time") from None
    except (ConnectionError, ssl.SSLError) as exc:
        raise BackendUnavailable("connect", f"{upstream.backend}: connection lost: {exc}") from None
    if done.status != "OK":
        raise BackendUnavailable("protocol", f"{upstream.backend}: NOOP refused: {done.text}")
    return dataclasses.replace(upstream, leftover=talk.codec.parser.take_buffer())


async def log_out(upstream: Upstream) -> None:
    """LOGOUT, then the connection closed once the backend has closed its end (so that it
    counts the session gone) or after `CLOSE_GRACE`."""
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            upstream.writer.write(b"GW0 LOGOUT\r\n")
            await upstream.writer.drain()
            while await upstream.reader.read(READ_SIZE):
                pass
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    finally:
        await upstream.close()
