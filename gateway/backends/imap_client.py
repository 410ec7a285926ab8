"""Logging in to a backend's IMAP server as a BAL, for the proxy to relay to.

Two ways in, by configuration: `master` (SASL PLAIN, authzid = the BAL, authcid and
password = the gateway's own credentials: the operator trusts the gateway to have checked
the person) and `token` (SASL XOAUTH2 with the person's own PSC token, user = the BAL).
The dialogue goes through the sans-I/O client codec; after it the connection is handed to
the relay as plain streams.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from dataclasses import dataclass

from gateway.backends.routing import Route
from gateway.imap.client import (
    ClientConnection,
    Continuation,
    ProtocolViolation,
    Tagged,
    Untagged,
    parse_capabilities,
)
from gateway.runtime.tls import backend_context
from gateway.settings import BackendSettings

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024


class BackendError(Exception):
    """The backend could not be reached or would not let us in. `kind` is for metrics:
    connect, tls, protocol, login, timeout."""

    def __init__(self, kind: str, text: str) -> None:
        self.kind = kind
        self.text = text
        super().__init__(text)


@dataclass
class Upstream:
    """A logged-in backend connection."""

    route: Route
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    capabilities: frozenset[str]
    leftover: bytes = b""  # received after the login's completion, for the relay

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


def _context(backend: BackendSettings) -> ssl.SSLContext:
    return backend_context(backend.ca_file, backend.tls_verify)


class _Dialogue:
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
                raise BackendError("protocol", f"backend spoke nonsense: {event.message}")
            if event is not None:
                return event
            async with asyncio.timeout(self.timeout):
                data = await self.reader.read(READ_SIZE)
            if not data:
                raise BackendError("connect", "backend closed the connection")
            self.codec.receive_data(data)

    async def command(self, text: bytes) -> tuple[Tagged, list[Untagged]]:
        tag, data = self.codec.send(text)
        self.writer.write(data)
        await self.writer.drain()
        return await self.completion(tag)

    async def completion(self, tag: str) -> tuple[Tagged, list[Untagged]]:
        untagged: list[Untagged] = []
        while True:
            event = await self.event()
            if isinstance(event, Tagged) and event.tag == tag:
                return event, untagged
            if isinstance(event, Untagged):
                if event.kind == "BYE":
                    raise BackendError("connect", f"backend said BYE: {event.text}")
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


def sasl_initial_response(backend: BackendSettings, bal: str, token: str) -> tuple[str, bytes]:
    """(mechanism, base64 response) for logging in to `backend` as `bal`."""
    if backend.login == "master":
        blob = f"{bal}\0{backend.master_user}\0{backend.password()}".encode()
        return "PLAIN", base64.b64encode(blob)
    blob = f"user={bal}\x01auth=Bearer {token}\x01\x01".encode()
    return "XOAUTH2", base64.b64encode(blob)


async def open_upstream(route: Route, bal: str, token: str) -> Upstream:
    """Connect to the route's IMAP server and log in as `bal`; raises `BackendError`."""
    backend = route.backend
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
        raise BackendError("timeout", f"{route.name}: connection timed out") from None
    except ssl.SSLError as exc:
        raise BackendError("tls", f"{route.name}: TLS failed: {exc.reason}") from None
    except OSError as exc:
        raise BackendError("connect", f"{route.name}: {exc.strerror or exc}") from None
    try:
        capabilities, leftover = await _log_in(route, reader, writer, bal, token)
    except BaseException:
        writer.close()
        raise
    return Upstream(route, reader, writer, capabilities, leftover)


async def _log_in(
    route: Route,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    bal: str,
    token: str,
) -> tuple[frozenset[str], bytes]:
    backend = route.backend
    talk = _Dialogue(reader, writer, backend.reply_timeout)
    try:
        greeting = await talk.event()
        if not isinstance(greeting, Untagged) or greeting.kind != "OK":
            raise BackendError("protocol", f"{route.name}: unexpected greeting")
        capabilities = parse_capabilities(greeting)
        if backend.imap_tls == "starttls":
            done, _ = await talk.command(b"STARTTLS")
            if done.status != "OK":
                raise BackendError("tls", f"{route.name}: STARTTLS refused: {done.text}")
            if talk.codec.parser.take_buffer() or reader._buffer:  # type: ignore[attr-defined]
                # Bytes after the OK but before the handshake: injected by whoever sits on
                # the plaintext path (the IMAP flavour of CVE-2011-0411). Never read them.
                raise BackendError("tls", f"{route.name}: data before the TLS handshake")
            try:
                await writer.start_tls(_context(backend), server_hostname=backend.imap_host)
            except ssl.SSLError as exc:
                raise BackendError("tls", f"{route.name}: TLS failed: {exc.reason}") from None
            talk = _Dialogue(reader, writer, backend.reply_timeout)  # a fresh codec after TLS
            capabilities = None  # must not be trusted from before TLS
        if capabilities is None:
            done, events = await talk.command(b"CAPABILITY")
            capabilities = _capabilities_of(events, done) or frozenset()
        mechanism, response = sasl_initial_response(backend, bal, token)
        if "SASL-IR" in capabilities:
            done, events = await talk.command(
                b"AUTHENTICATE " + mechanism.encode() + b" " + response
            )
        else:
            tag, data = talk.codec.send(b"AUTHENTICATE " + mechanism.encode())
            writer.write(data)
            await writer.drain()
            first = await talk.event()
            if not isinstance(first, Continuation):
                raise BackendError("login", f"{route.name}: AUTHENTICATE {mechanism} refused")
            writer.write(response + b"\r\n")
            await writer.drain()
            done, events = await talk.completion(tag)
        if done.status != "OK":
            log.warning(
                "backend.login_refused",
                extra={"backend": route.name, "bal": bal, "reply": done.text[:200]},
            )
            raise BackendError("login", f"{route.name} refused the login to {bal}: {done.text}")
        after = _capabilities_of(events, done)
        if after is None:
            done, events = await talk.command(b"CAPABILITY")
            after = _capabilities_of(events, done) or frozenset()
        return after, talk.codec.parser.take_buffer()
    except TimeoutError:
        raise BackendError("timeout", f"{route.name}: no answer in time") from None
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        raise BackendError("connect", f"{route.name}: connection lost: {exc}") from None
