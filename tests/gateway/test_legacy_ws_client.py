"""The historic web-services client against a running mock operator, and against a tiny
server that answers garbage, slowly, never, or too much."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.backends.legacy_ws.client import (
    LegacyAuthError,
    LegacyError,
    LegacyTooLarge,
    LegacyUnavailable,
    LegacyWsClient,
)
from mock_operator.seed import ihe_xdm_zip
from mock_operator.server import MockOperator

DUPONT = "jean.dupont@medecin.mssante.fr"
PETIT = "marie.petit@sage-femme.mssante.fr"
INBOX, TRASH, SENT, DRAFTS = 2, 3, 5, 6


def client_for(
    mock: MockOperator, *, password: str | None = None, **options: float
) -> LegacyWsClient:
    assert mock.master is not None
    return LegacyWsClient(
        f"{mock.http_url}/mss-msg-services/services",
        user=mock.master.user,
        password=mock.master.password if password is None else password,
        numhomologation="LPS-GW-TEST",
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
async def legacy(mock_op: MockOperator) -> AsyncIterator[LegacyWsClient]:
    async with client_for(mock_op) as client:
        yield client


async def test_folders_and_generic_call(legacy: LegacyWsClient, mock_op: MockOperator) -> None:
    folders = await legacy.list_folders(DUPONT)
    assert {2, 3, 5, 6} <= {f["id"] for f in folders}
    output = await legacy.call("Folder", "listFolders", {"email": DUPONT, "folderId": INBOX})
    assert [f["id"] for f in output["folders"]] == [INBOX]
    assert DUPONT in await legacy.list_emails()
    assert mock_op.historic is not None
    assert mock_op.historic.calls[-1].software == "LPS-GW-TEST"

    created = await legacy.create_folder(DUPONT, "Patients")
    child = await legacy.create_folder(DUPONT, "Cardiologie", created["id"])
    await legacy.rename_folder(DUPONT, created["id"], "Patients 2025")
    await legacy.move_folder(DUPONT, child["id"], 1)
    names = {f["name"] for f in await legacy.list_folders(DUPONT)}
    assert {"Patients 2025", "Cardiologie"} <= names
    await legacy.delete_folder(DUPONT, child["id"])
    assert "Cardiologie" not in {f["name"] for f in await legacy.list_folders(DUPONT)}
    with pytest.raises(LegacyError) as refused:
        await legacy.create_folder(DUPONT, "Patients 2025")
    assert refused.value.code == 30


async def test_search_pages_through_everything(
    legacy: LegacyWsClient, mock_op: MockOperator
) -> None:
    everything = await legacy.search_messages(DUPONT, INBOX)
    assert len(everything) >= 3
    for _ in range(5):
        await legacy.send_message(
            DUPONT,
            {"addresses": [{"address": DUPONT, "type": "TO"}], "subject": "Page", "body": "x"},
        )
    paged = await legacy.search_messages(DUPONT, INBOX, page_size=2)
    assert len(paged) == len(everything) + 5
    assert len({m["messageId"] for m in paged}) == len(paged)
    assert all(isinstance(m["messageId"], str) for m in paged)
    subjects = await legacy.search_messages(DUPONT, query={"subject": "page"})
    assert {m["subject"] for m in subjects} == {"Page"}
    assert mock_op.historic is not None
    calls = len(mock_op.historic.calls)
    with pytest.raises(LegacyTooLarge, match="more than 3 messages"):
        await legacy.search_messages(DUPONT, INBOX, page_size=2, max_messages=3)
    assert len(mock_op.historic.calls) == calls + 1  # the first page's total said it


async def test_flags_moves_sync_and_attachments(legacy: LegacyWsClient) -> None:
    start = await legacy.sync_messages(DUPONT)
    inbox = await legacy.search_messages(DUPONT, INBOX)
    letter = next(m for m in inbox if m["attachments"])
    (attachment,) = letter["attachments"]
    assert attachment["fileName"] == "IHE_XDM.ZIP"
    data = await legacy.download_attachment(DUPONT, letter["messageId"], attachment["part"])
    assert data == ihe_xdm_zip()

    await legacy.update_messages(DUPONT, [letter["messageId"]], "FLAGGED")
    changes = await legacy.sync_messages(DUPONT, start.token)
    (changed,) = changes.modified
    assert "FLAGGED" in changed["flags"]
    assert changes.token != start.token

    await legacy.move_messages(DUPONT, [letter["messageId"]], TRASH)
    assert letter["messageId"] in {
        m["messageId"] for m in await legacy.search_messages(DUPONT, TRASH)
    }
    await legacy.update_messages(DUPONT, [letter["messageId"]], "DELETE")
    after = await legacy.sync_messages(DUPONT, changes.token)
    assert letter["messageId"] in after.deleted
    with pytest.raises(ValueError, match="operation"):
        await legacy.update_messages(DUPONT, ["1"], "BURN")


async def test_draft_then_send(legacy: LegacyWsClient) -> None:
    draft = await legacy.draft_message(
        DUPONT,
        {
            "addresses": [{"address": PETIT, "name": "Marie Petit", "type": "TO"}],
            "subject": "Brouillon",
            "body": "<p>Bonjour</p>",
            "isHTML": True,
            "attachments": [{"file": "aGVsbG8=", "fileName": "a.txt", "contentType": "text/plain"}],
        },
    )
    assert draft["folderId"] == DRAFTS
    sent = await legacy.send_message(
        DUPONT,
        {
            "addresses": [{"address": PETIT, "type": "TO"}],
            "subject": "Brouillon",
            "body": "<p>Bonjour</p>",
            "isHTML": True,
            "messageId": draft["messageId"],
            "priority": "HAUTE",
        },
    )
    assert sent["folderId"] == SENT
    assert sent["priority"] == "HAUTE"
    drafts = await legacy.search_messages(DUPONT, DRAFTS)
    assert draft["messageId"] not in {m["messageId"] for m in drafts}
    assert await legacy.search_messages(PETIT, INBOX, query={"subject": "Brouillon"})


async def test_errors_are_mapped(
    legacy: LegacyWsClient, mock_op: MockOperator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LegacyError) as missing:
        await legacy.download_attachment(DUPONT, "999999", "2")
    assert (missing.value.code, missing.value.kind) == (45, "FONCTIONNELLE")
    with pytest.raises(LegacyError) as folder:
        await legacy.search_messages(DUPONT, 4242)
    assert folder.value.code == 41
    with pytest.raises(LegacyError) as unknown_bal:
        await legacy.list_folders("nobody@medecin.mssante.fr")
    assert unknown_bal.value.code == 24

    async with client_for(mock_op, password="wrong-password") as bad:
        with pytest.raises(LegacyAuthError) as refused:
            await bad.list_folders(DUPONT)
    assert refused.value.code == 17
    assert "wrong-password" not in repr(bad)
    assert mock_op.master is not None
    assert mock_op.master.password not in caplog.text
    assert "wrong-password" not in caplog.text

    async with client_for(mock_op) as wrong_path:
        wrong_path.base_url += "/nowhere"
        with pytest.raises(LegacyUnavailable, match="HTTP 404"):
            await wrong_path.list_folders(DUPONT)


# -- a misbehaving server ----------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def tiny_server(handler: Handler) -> AsyncIterator[str]:
    """A server on a free port that reads the request head then runs `handler`."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            with contextlib.suppress(Exception):
                await reader.readuntil(b"\r\n\r\n")
                await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/mss-msg-services/services"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def answer(status: str, body: bytes, *, headers: str = "") -> Handler:
    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    return handle


async def garbage(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\x00\xffthis is not HTTP at all\r\n\r\n")
    await writer.drain()


async def never(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
    await reader.read()  # until the client gives up


async def slowly(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Headers at once, then a byte a while: each read is quick, the whole is endless."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(1000):
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.05)


async def too_much(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"[" * 65536
    for _ in range(1000):
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()


DEEP = b"[" * 100 + b"]" * 100
LONG = b'{"folders": [' + b"0," * 30_000 + b"0]}"
CASES: dict[str, tuple[Handler, str, int]] = {
    "garbage": (garbage, "RemoteProtocolError", 1_000_000),
    "never": (never, "no answer within", 1_000_000),
    "slowly": (slowly, "no answer within", 1_000_000),
    "too much (chunked)": (too_much, "larger than", 1_000_000),
    "too much (declared)": (answer("200 OK", b"{}" * 100), "too large", 100),
    "invalid JSON": (answer("200 OK", b"{not json"), "not JSON", 1_000_000),
    "wrong wrapper": (answer("200 OK", b'{"otherOutput": {}}'), "answer is not", 1_000_000),
    "deep JSON": (answer("200 OK", b'{"listFoldersOutput": ' + DEEP + b"}"), "deeply", 1_000_000),
    "long list": (answer("200 OK", b'{"listFoldersOutput": ' + LONG + b"}"), "too long", 1_000_000),
    "5xx page": (answer("502 Bad Gateway", b"<html>proxy error</html>"), "HTTP 502", 1_000_000),
    "403 without code": (answer("403 Forbidden", b""), "X-ErrorCode", 1_000_000),
    "empty 200": (answer("200 OK", b""), "not JSON", 1_000_000),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_misbehaving_server_is_unavailable_within_the_timeout(case: str) -> None:
    handler, reason, cap = CASES[case]
    async with (
        tiny_server(handler) as url,
        LegacyWsClient(
            url,
            user="gw",
            password="secret",
            numhomologation="T",
            timeout=1.0,
            max_response_bytes=cap,
        ) as client,
    ):
        started = time.monotonic()
        with pytest.raises(LegacyUnavailable, match=reason):
            await client.list_folders(DUPONT)
        assert time.monotonic() - started < 3.0


async def test_connection_refused_is_unavailable() -> None:
    async with tiny_server(garbage) as url:
        pass  # closed: nothing listens on that port any more
    async with LegacyWsClient(url, user="gw", password="x", numhomologation="T", timeout=2) as c:
        with pytest.raises(LegacyUnavailable, match="ConnectError"):
            await c.list_folders(DUPONT)


async def test_functional_error_body_from_any_server() -> None:
    body = b'{"error": {"type": "TECHNIQUE", "code": 1, "message": "panne"}}'
    async with (
        tiny_server(answer("500 Internal Server Error", body)) as url,
        LegacyWsClient(url, user="gw", password="x", numhomologation="T") as client,
    ):
        with pytest.raises(LegacyError) as failed:
            await client.list_folders(DUPONT)
    assert (failed.value.code, failed.value.kind, failed.value.message) == (1, "TECHNIQUE", "panne")


@pytest.mark.parametrize("bad_id", ['"66\\u0000x"', '"66\\r\\nX: y"', '""', "true"])
async def test_a_message_id_the_gateway_cannot_store_is_refused(bad_id: str) -> None:
    """NUL breaks PostgreSQL text, CR/LF would reach headers: such an answer is garbage."""
    body = (
        b'{"searchMessagesOutput": {"total": 1, "messages": [{"messageId": '
        + bad_id.encode()
        + b', "folderId": 2, "subject": "x", "date": "01/11/2026 10:00:00"}]}}'
    )
    async with (
        tiny_server(answer("200 OK", body)) as url,
        LegacyWsClient(url, user="gw", password="x", numhomologation="T") as client,
    ):
        with pytest.raises(LegacyUnavailable, match="message id"):
            await client.search_messages(DUPONT, 2)
