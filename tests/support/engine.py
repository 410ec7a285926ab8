"""The IMAP engine driven on bytes, without sockets (the h11 habit).

`EngineClient` feeds client bytes through a `CommandParser` into an `ImapSession`, the way
`gateway.imap.transport` does, and returns what the server wrote. Logged in on a
`MemoryStore` by `Granting` (any credentials get the store, with the rights asked), two
clients on one store see each other's changes through the store's `ChangeHub`.
"""

from __future__ import annotations

import asyncio
import base64

from gateway.imap.commands import Command, CommandError, ContinuationNeeded, RawLine
from gateway.imap.engine import EngineConfig, ImapSession, Logout
from gateway.imap.parser import CommandParser
from gateway.imap.response import continuation, tagged, untagged_status
from gateway.imap.session import ALL_RIGHTS, SessionGrant
from gateway.runtime.login import ConnectionInfo
from psc_auth.sasl import TokenCredentials
from tests.support.memory_store import MemoryStore
from tests.support.waiting import BOUND

LOOPBACK = ConnectionInfo(peer="127.0.0.1", secure=False, loopback=True, tls_available=False)
PLAIN_LOGIN = b"AUTHENTICATE PLAIN " + base64.b64encode(b"\0tester\0token")


class FakeChannel:
    """A `Channel` whose raw lines (SASL responses, DONE) are given in advance."""

    def __init__(self, lines: list[bytes] | None = None) -> None:
        self.out = bytearray()
        self.lines = list(lines or [])

    async def write(self, data: bytes) -> None:
        self.out += data

    async def read_raw_line(self) -> bytes | None:
        return self.lines.pop(0) if self.lines else None

    async def start_tls(self) -> None:
        raise AssertionError("no TLS here")

    def take(self) -> list[bytes]:
        lines = bytes(self.out).split(b"\r\n")
        self.out.clear()
        return [line for line in lines if line]


class WireChannel:
    """A `Channel` reading raw lines from the same parser as the commands, waiting for the
    client's bytes when none are there (an IDLE waits for DONE), as `StreamChannel` does."""

    def __init__(self) -> None:
        self.parser = CommandParser()
        self.out = bytearray()
        self.closed = False
        self._changed = asyncio.Event()  # set at each feed, write or hang-up

    def feed(self, data: bytes) -> None:
        """Bytes from the client."""
        self.parser.receive_data(data)
        self._changed.set()

    def hang_up(self) -> None:
        """The client is gone: a raw line awaited is None."""
        self.closed = True
        self._changed.set()

    async def _next_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def write(self, data: bytes) -> None:
        self.out += data
        self._changed.set()

    async def read_raw_line(self) -> bytes | None:
        self.parser.expect_raw_line()
        try:
            while True:
                event = self.parser.next_event()
                if isinstance(event, RawLine):
                    return event.data
                assert event is None, event
                if self.closed:
                    return None
                await self._next_change()
        except asyncio.CancelledError:
            self.parser.cancel_raw_line()
            raise

    async def written(self, data: bytes) -> None:
        """Wait until the server has written `data` (bounded: only a failure waits long)."""
        async with asyncio.timeout(BOUND):
            while data not in self.out:
                await self._next_change()

    async def start_tls(self) -> None:
        raise AssertionError("no TLS here")


class Granting:
    """An authenticator granting any credentials the store, with `rights`."""

    def __init__(self, store: MemoryStore, rights: frozenset[str] = ALL_RIGHTS) -> None:
        self.store = store
        self.rights = rights

    async def authenticate(
        self, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> SessionGrant:
        return SessionGrant(self.store, self.rights, actor="tester")


class EngineServer:
    """What the sessions of one server share: the store, its change hub, the \\Recent
    registry (one `EngineConfig`, as `ImapServer` gives every session the same)."""

    def __init__(self, store: MemoryStore, config: EngineConfig | None = None) -> None:
        self.store = store
        self.config = config or EngineConfig(
            auth_failure_delay=0, hub_version=store.hub.version, hub_wait=store.hub.wait
        )

    async def client(self, rights: frozenset[str] = ALL_RIGHTS) -> EngineClient:
        """A new session, logged in with `rights` on the store."""
        return await EngineClient(self, rights).login()


class EngineClient:
    """One session of the engine, spoken to in bytes."""

    def __init__(self, server: EngineServer, rights: frozenset[str] = ALL_RIGHTS) -> None:
        self.channel = WireChannel()
        authenticator = Granting(server.store, rights)
        self.session = ImapSession(server.config, authenticator, self.channel, LOOPBACK)
        self.logged_out = False

    async def send(self, data: bytes) -> bytes:
        """Feed `data`, run every command complete in it, return what the server wrote."""
        self.channel.feed(data)
        while not self.logged_out:
            event = self.channel.parser.next_event()
            if event is None:
                break
            await self._answer(event)
        return self.take()

    async def _answer(self, event: object) -> None:
        """What `ImapServer._step` does with each parser event."""
        channel = self.channel
        if isinstance(event, ContinuationNeeded):
            await channel.write(continuation("ready for literal data"))
        elif isinstance(event, CommandError):
            if event.fatal:
                await channel.write(untagged_status("BYE", event.message))
                self.logged_out = True
            elif event.tag is None:
                await channel.write(untagged_status("BAD", event.message))
            else:
                await channel.write(tagged(event.tag, event.status, event.message))
        elif isinstance(event, Command):
            try:
                await self.session.execute(event)
            except Logout:
                self.logged_out = True

    async def lines(self, data: bytes) -> list[bytes]:
        """`send`, the reply cut into lines (CRLF dropped; a literal's lines split too)."""
        return (await self.send(data)).split(b"\r\n")[:-1]

    def take(self) -> bytes:
        """What the server wrote since last asked."""
        out = bytes(self.channel.out)
        self.channel.out.clear()
        return out

    async def login(self) -> EngineClient:
        reply = await self.lines(b"L " + PLAIN_LOGIN + b"\r\n")
        assert reply[-1].startswith(b"L OK "), reply
        return self

    async def select(self, folder: bytes = b"INBOX") -> list[bytes]:
        reply = await self.lines(b"S SELECT " + folder + b"\r\n")
        assert reply[-1].startswith(b"S OK "), reply
        return reply
