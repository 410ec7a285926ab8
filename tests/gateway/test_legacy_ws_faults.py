"""The gateway in front of a historic server that misbehaves (issue 6 §4): garbage instead
of HTTP, a 200 that is not JSON or not the expected JSON, an endless body, a drip, a
silence, a hang-up, an HTTP 500. The BAL jean.dupont is routed (by the registry) to a
legacy_ws backend whose ``ws_url`` is a small asyncio server on port 0 that does so; the
IMAP front must answer ``NO [UNAVAILABLE]`` (``NO [LIMIT]`` for an answer past the caps, or
``* BYE``) within the reply timeout plus a
few seconds, and keep serving every other session meanwhile and afterwards (claire.martin,
on the modern platform, through the same gateway)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import MockSettings, Settings
from tests.gateway.test_legacy_ws_imap import DUPONT
from tests.imap_raw import Raw
from tests.support.imap import login
from tests.support.stacks import Stack, configure_with, start_stack

MARTIN = "claire.martin@medecin.mssante.fr"
REPLY_TIMEOUT = 1.0
POLL = 0.2
BOUND = REPLY_TIMEOUT + 4.0  # what a command may take against a failing server
# Reading 64 MiB takes what it takes on a busy machine: the size cap, not the clock, must
# end those answers, so their timeout only bounds a hung test.
HUGE_REPLY_TIMEOUT = 60.0
IDLE_POLL = 5.0  # the engine's IDLE re-reads the folder this often without a change hub
HUGE = 100 * 1024 * 1024  # more than the client's 64 MiB cap
FOLDERS = {
    "folders": [
        {"id": 2, "name": "Boîte de réception", "unreadCount": 0, "parentId": 1, "children": []},
        {"id": 3, "name": "Corbeille", "unreadCount": 0, "parentId": 1, "children": []},
        {"id": 5, "name": "Envoyés", "unreadCount": 0, "parentId": 1, "children": []},
        {"id": 6, "name": "Brouillons", "unreadCount": 0, "parentId": 1, "children": []},
    ]
}
MESSAGES = {
    "messages": [
        {
            "messageId": "900",
            "folderId": 2,
            "conversationId": "900",
            "subject": "Compte rendu",
            "body": "Bonjour.",
            "isHTML": False,
            "size": 8,
            "date": "02/11/2026 09:15:00",
            "emails": [
                {"address": "helene.roux@medecin.mssante.fr", "name": "H ROUX", "type": "FROM"},
                {"address": DUPONT, "name": "Jean DUPONT", "type": "TO"},
            ],
            "flags": [],
            "attachments": [],
        }
    ],
    "total": 1,
}
CANNED: dict[str, dict[str, Any]] = {"listFolders": FOLDERS, "searchMessages": MESSAGES}
MODES = [
    "garbage",
    "not_json",
    "wrong_wrapper",
    "wrong_shape",
    "huge",
    "huge_declared",
    "drip",
    "silent",
    "close",
    "http500",
]


class FakeHistoric:
    """The historic web services as a raw asyncio server: each operation answered as its
    mode says (`default` for the others); "ok" answers the canned folders and messages."""

    def __init__(self, default: str = "ok", **modes: str) -> None:
        self.default = default
        self.modes = dict(modes)
        self.asked: list[str] = []  # operations, in the order they came
        self.asked_event = asyncio.Event()
        self.connections = 0
        self.huge_sent: list[int] = []  # per "huge" answer: body octets written in all
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/mss-msg-services/services"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            if self.default == "close" and not self.modes:
                return  # accept, then hang up at once
            while True:  # keep-alive: one request after another on the connection
                operation = await self._request(reader)
                if operation is None:
                    return
                self.asked.append(operation)
                self.asked_event.set()
                if not await self._answer(
                    self.modes.get(operation, self.default), operation, writer
                ):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _request(reader: asyncio.StreamReader) -> str | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        await reader.readexactly(length)
        path = head.split(b" ", 2)[1].decode()
        return path.rsplit("/", 1)[-1]

    async def _answer(self, mode: str, operation: str, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays usable."""

        def http(status: str, body: bytes, content_type: str = "application/json") -> bytes:
            return (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body

        if mode == "ok":
            output = CANNED.get(operation, {})
            writer.write(http("200 OK", json.dumps({f"{operation}Output": output}).encode()))
        elif mode == "garbage":
            writer.write(b"\x16\x03\x01\x00\xa5\xff\xfe garbage, not HTTP at all \x00\r\n\r\n")
            await writer.drain()
            return False
        elif mode == "not_json":
            writer.write(http("200 OK", b"<html><body>Service indisponible</body></html>"))
        elif mode == "wrong_wrapper":
            writer.write(http("200 OK", b'{"autreChose": {"folders": []}}'))
        elif mode == "wrong_shape":
            body = {f"{operation}Output": {"folders": "aucun", "messages": {"a": 1}, "total": "?"}}
            writer.write(http("200 OK", json.dumps(body).encode()))
        elif mode in ("huge", "huge_declared"):
            length = f"Content-Length: {HUGE}\r\n" if mode == "huge_declared" else ""
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}"
                "Connection: close\r\n\r\n".encode()
            )
            writer.write(b'{"' + operation.encode() + b'Output": {"folders": [')
            chunk = b" " * 65536
            index = len(self.huge_sent)
            self.huge_sent.append(0)
            while self.huge_sent[index] < HUGE:
                writer.write(chunk)
                await writer.drain()
                self.huge_sent[index] += len(chunk)
            return False
        elif mode == "drip":  # a byte a second, headers included
            for byte in http("200 OK", json.dumps({f"{operation}Output": {}}).encode()):
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)
        elif mode == "silent":
            await asyncio.Event().wait()  # until stopped
        elif mode == "close":
            return False
        elif mode == "http500":
            writer.write(http("500 Internal Server Error", b"<h1>Erreur 500</h1>", "text/html"))
        else:
            raise AssertionError(f"unknown mode {mode}")
        await writer.drain()
        return True


@contextlib.asynccontextmanager
async def gateway_before(
    fake: FakeHistoric,
    tmp_path: Path,
    stack_settings: Settings,
    mock_settings: MockSettings,
    reply_timeout: float = REPLY_TIMEOUT,
) -> AsyncIterator[Stack]:
    await fake.start()
    configure = configure_with(
        ws_url=fake.url, reply_timeout=reply_timeout, connect_timeout=1, poll_interval=POLL
    )
    stack = await start_stack(stack_settings, mock_settings, tmp_path / "mock", configure)
    try:
        yield stack
    finally:
        await stack.gateway.stop()
        await stack.mock.stop()
        await fake.stop()


async def refused(
    client: Raw, command: str, code: bytes = b"UNAVAILABLE", bound: float = BOUND
) -> tuple[bytes, float]:
    """Send `command`; its ending (tagged line, or ``* BYE``) and how long it took. Fails
    when the gateway says nothing within `bound` or answers anything but NO [code]/BYE."""
    tag = client.tag()
    started = time.monotonic()
    await client.send(f"{tag} {command}\r\n".encode())
    async with asyncio.timeout(bound):
        while True:
            line = await client.line(wait=bound)
            if line.startswith(b"* BYE"):
                break
            if line.startswith(tag.encode() + b" "):
                assert line.startswith(tag.encode() + b" NO [" + code + b"]"), line
                break
            assert line.startswith(b"* "), line
    return line, time.monotonic() - started


async def modern_session_works(stack: Stack) -> None:
    client = await login(stack, "dr-martin", MARTIN)
    try:
        selected = await asyncio.wait_for(client.ok("SELECT INBOX"), BOUND)
        assert any(line.endswith(b" EXISTS") for line in selected.untagged)
        fetched = await asyncio.wait_for(client.ok("FETCH 1 (FLAGS)"), BOUND)
        assert fetched.of(b"FETCH")
        await client.ok("LOGOUT")
    finally:
        await client.close()


# -- each misbehaviour, from the start ------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_misbehaving_historic_server_is_a_clean_no(
    mode: str, tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    fake = FakeHistoric(mode)
    # an answer past the caps would come again the same: no "try again later"
    huge = mode.startswith("huge")
    code = b"LIMIT" if huge else b"UNAVAILABLE"
    timeout = HUGE_REPLY_TIMEOUT if huge else REPLY_TIMEOUT
    bound = timeout + 4.0
    async with gateway_before(fake, tmp_path, stack_settings, mock_settings, timeout) as stack:
        client = await login(stack, "dr-dupont", DUPONT)
        try:
            # the historic session waits on the bad server while another session is served
            pending = asyncio.ensure_future(refused(client, 'LIST "" "*"', code, bound))
            await modern_session_works(stack)
            line, took = await pending
            assert took < bound
            if line.startswith(b"* BYE"):
                return  # the gateway chose to end the session: acceptable, and done
            line, took = await refused(client, "SELECT INBOX", code, bound)
            assert took < bound
            if not line.startswith(b"* BYE"):
                await asyncio.wait_for(client.ok("NOOP"), bound)  # the session goes on
        finally:
            await client.close()
        assert fake.connections  # the gateway did go to the bad server
        assert mode == "close" or fake.asked
        if mode == "huge":
            assert fake.huge_sent
            assert max(fake.huge_sent) < HUGE  # it stopped reading: the answers were cut short
        # afterwards: a new historic session is refused the same way, the modern one works
        again = await login(stack, "dr-dupont", DUPONT)
        try:
            _, took = await refused(again, "SELECT INBOX", code, bound)
            assert took < bound
        finally:
            await again.close()
        await modern_session_works(stack)


# -- good, then bad mid-session -------------------------------------------------------------


async def test_search_goes_garbage_after_the_folders_were_listed(
    tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    fake = FakeHistoric("ok")
    async with gateway_before(fake, tmp_path, stack_settings, mock_settings) as stack:
        client = await login(stack, "dr-dupont", DUPONT)
        try:
            listed = await asyncio.wait_for(client.ok('LIST "" "*"'), BOUND)
            assert b'"INBOX"' in b"\n".join(listed.of(b"LIST"))
            fake.modes["searchMessages"] = "garbage"
            line, took = await refused(client, "SELECT INBOX")
            assert took < BOUND
            assert not line.startswith(b"* BYE"), line
            assert "searchMessages" in fake.asked
            # the historic platform comes back: the same session selects
            fake.modes["searchMessages"] = "ok"
            selected = await asyncio.wait_for(client.ok("SELECT INBOX"), BOUND)
            assert b"* 1 EXISTS" in selected.untagged
        finally:
            await client.close()
        await modern_session_works(stack)


@pytest.mark.parametrize("mode", ["garbage", "silent"])
async def test_idle_outlives_a_historic_outage(
    mode: str, tmp_path: Path, stack_settings: Settings, mock_settings: MockSettings
):
    """Idling on a working server, which then answers searchMessages badly: the gateway
    keeps asking, says nothing tagged before DONE (RFC 2177), and once the platform is
    back DONE ends IDLE and the session goes on."""
    fake = FakeHistoric("ok")
    async with gateway_before(fake, tmp_path, stack_settings, mock_settings) as stack:
        client = await login(stack, "dr-dupont", DUPONT)
        try:
            selected = await asyncio.wait_for(client.ok("SELECT INBOX"), BOUND)
            assert b"* 1 EXISTS" in selected.untagged
            tag = client.tag()
            await client.send(f"{tag} IDLE\r\n".encode())
            assert (await client.line()).startswith(b"+ ")
            fake.modes["searchMessages"] = mode
            fake.asked.clear()
            async with asyncio.timeout(IDLE_POLL + BOUND):
                while fake.asked.count("searchMessages") < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # the fake's log has no event to wait on
            with pytest.raises(TimeoutError):  # nothing may come before DONE
                await client.line(wait=0.5)
            fake.modes["searchMessages"] = "ok"  # the historic platform is back
            await client.send(b"DONE\r\n")
            async with asyncio.timeout(BOUND):
                while not (line := await client.line()).startswith(tag.encode()):
                    assert line.startswith(b"* "), line
            assert line.startswith(tag.encode() + b" OK"), line
            fetched = await asyncio.wait_for(client.ok("UID FETCH 1:* (FLAGS)"), BOUND)
            assert fetched.of(b"FETCH")
        finally:
            await client.close()
        await modern_session_works(stack)
