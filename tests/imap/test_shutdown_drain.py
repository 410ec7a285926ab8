"""`ImapServer.drain`, the IMAP half of a node's shutdown, on real sockets: a session
waiting for its next command hears `* BYE [UNAVAILABLE]` at once; one whose command is
still running gets that command's tagged reply first, then the BYE; the listener is closed
from the start."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from gateway.imap.engine import EngineConfig
from gateway.imap.transport import ImapServer, ServerConfig
from gateway.runtime.asgi_server import bind_tcp
from gateway.runtime.tls import ensure_dev_certificate, server_context
from tests.imap_raw import Raw
from tests.support.engine import Granting
from tests.support.memory_store import MemoryStore

BYE = b"* BYE [UNAVAILABLE] server shutting down"


class HeldStore(MemoryStore):
    """CREATE waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def create_folder(self, name: str) -> None:
        self.entered.set()
        await self.release.wait()
        await super().create_folder(name)


async def test_drain_answers_the_command_in_flight_then_says_bye():
    store = HeldStore()
    config = ServerConfig(engine=EngineConfig(auth_failure_delay=0))
    server = ImapServer(config, Granting(store), None, bind_tcp("127.0.0.1", 0))
    await server.start()
    port = server.port
    try:
        busy, waiting = await Raw.open(port), await Raw.open(port)
        for client in (busy, waiting):
            await client.ok("LOGIN tester secret")
        await busy.send(b"C1 CREATE Dossier\r\n")
        await store.entered.wait()

        draining = asyncio.create_task(server.drain(grace=60))
        assert await waiting.line(wait=30) == BYE, "between commands: BYE at once"
        assert await waiting.until_closed() == b""
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        assert not draining.done(), "the command in flight is waited for"

        store.release.set()
        assert (await busy.line(wait=30)).startswith(b"C1 OK")
        assert await busy.line(wait=30) == BYE
        await asyncio.wait_for(draining, 30)
        assert server.open_sessions == 0
    finally:
        store.release.set()
        await server.stop(grace=1)


async def test_a_connection_accepted_as_the_drain_begins_hears_bye(tmp_path: Path):
    """Its TLS handshake was under way when the listener closed: once it is over, the
    client is sent away like the sessions already open, not greeted."""
    cert, key = ensure_dev_certificate(tmp_path)
    config = ServerConfig(engine=EngineConfig(auth_failure_delay=0), implicit_tls=True)
    server = ImapServer(
        config, Granting(MemoryStore()), server_context(cert, key), bind_tcp("127.0.0.1", 0)
    )
    await server.start()
    client = ssl.create_default_context(cafile=cert)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing, server_hostname="localhost")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:

        async def handshake_step() -> bool:
            """Send what the client has to say, take the server's answer: True when done."""
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            writer.write(outgoing.read())
            if not done:
                incoming.write(await asyncio.wait_for(reader.read(65536), 30))
            return done

        await handshake_step()  # the server answered the ClientHello: it accepted
        await server.drain(grace=30)
        while not await handshake_step():
            pass
        received = b""
        while b"\r\n" not in received:
            try:
                received += tls.read()
            except ssl.SSLWantReadError:
                data = await asyncio.wait_for(reader.read(65536), 30)
                assert data, f"closed after {received!r}"
                incoming.write(data)
        assert received.split(b"\r\n")[0] == BYE, "sent away, not greeted"
    finally:
        writer.close()
        await server.stop(grace=1)
