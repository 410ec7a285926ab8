"""`mock-operator probe` against hostile servers: endless lines, huge lines and literals,
endless SASL challenges, silence, and a server that echoes what it was sent. The probe
ends within its deadlines with a clear verdict, holds little memory, and never shows a
token in any of its outputs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import re
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from rich.console import Console

from mock_operator.cli import _probe_table
from mock_operator.conformance.probe import ProbeTarget, run_probe
from mock_operator.conformance.probe_sasl import LoginPlan, forge_expired, forge_foreign, xoauth2
from mock_operator.conformance.probe_wire import Endpoint, TlsPolicy
from mock_operator.conformance.render import FORMATS, render
from mock_operator.conformance.results import Report, Status

pytestmark = pytest.mark.asyncio(loop_scope="module")

STEP = 1.0  # the probe's deadline per step here
CLAIMS = {"iss": "https://psc.example/realms/x", "sub": "s", "SubjectNameID": "899700000001"}
TOKEN = forge_foreign(CLAIMS, "kid-1")  # what the "valid" token source hands out
PLAN_BAD = (forge_foreign(CLAIMS, "kid-1"), forge_expired(CLAIMS, "kid-1"))
CHUNK = b"A" * 65536
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def fixed_token() -> str:
    return TOKEN


def plan() -> LoginPlan:
    return LoginPlan(
        "dr-martin",
        "claire.martin@medecin.mssante.fr",
        "luc.durand@infirmier.mssante.fr",
        fixed_token,
        *PLAN_BAD,
    )


@contextlib.asynccontextmanager
async def hostile(handle: Handler) -> AsyncIterator[int]:
    """A server on a free loopback port running `handle` for each connection. On leaving,
    its connections end by themselves (the probe hung up on each), or are cancelled."""
    running: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        running.add(task)
        try:
            await handle(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        if running:
            _, stragglers = await asyncio.wait(running, timeout=10)
            for task in stragglers:
                task.cancel()
            assert not stragglers, "the probe left a connection open"


async def flood(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write `data` until the client goes away."""
    while True:
        writer.write(data)
        await writer.drain()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the client hangs up


async def imap_endless_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"* OK ready\r\n")
    await reader.readline()
    await flood(writer, b"* OK more to come\r\n" * 500)


async def imap_huge_capability(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"* OK ready\r\n")
    await reader.readline()
    writer.write(b"* CAPABILITY IMAP4rev1 ")
    for _ in range(160):  # 10 MiB, then the end of the line
        writer.write(CHUNK)
        await writer.drain()
    writer.write(b"\r\nP0001 OK done\r\n")
    await reader.read()


async def imap_huge_literal(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"* OK ready\r\n")
    await reader.readline()
    writer.write(b"* CAPABILITY {50000000}\r\n")
    await flood(writer, CHUNK)


async def imap_huge_greeting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"* OK ")
    await flood(writer, CHUNK)


async def imap_continuation_on_capability(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(b"* OK ready\r\n")
    await reader.readline()
    writer.write(b"+ send me your password\r\n")
    await reader.read()


async def imap_starttls_injection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Plaintext after the OK of STARTTLS, that a careless client reads as said over TLS."""
    writer.write(b"* OK ready\r\n")
    tag = (await reader.readline()).split(b" ")[0]
    writer.write(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n" + tag + b" OK done\r\n")
    tag = (await reader.readline()).split(b" ")[0]
    writer.write(tag + b" OK go\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
    await reader.read()


def imap_server(
    on_authenticate: Callable[[bytes, asyncio.StreamWriter], Awaitable[None]],
) -> Handler:
    """A plaintext IMAP server offering the token mechanisms (on loopback the probe logs
    in without TLS), whose AUTHENTICATE does `on_authenticate`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK ready\r\n")
        while line := await reader.readline():
            tag, _, rest = line.partition(b" ")
            command = rest.split(b" ", 1)[0].strip().upper()
            if command == b"CAPABILITY":
                caps = b"IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER IDLE UIDPLUS"
                writer.write(b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n")
            elif command == b"AUTHENTICATE":
                await on_authenticate(line, writer)
                if tag.startswith(b"P"):
                    writer.write(tag + b" NO [AUTHENTICATIONFAILED] no\r\n")
            elif command == b"LOGOUT":
                writer.write(b"* BYE\r\n" + tag + b" OK bye\r\n")
            await writer.drain()

    return handle


async def echo_everything(line: bytes, writer: asyncio.StreamWriter) -> None:
    """Say back what came, base64 and decoded, whole and in pieces."""
    encoded = line.split()[-1]
    decoded = base64.b64decode(encoded + b"=" * (-len(encoded) % 4))
    writer.write(b"* OK you sent " + line.strip() + b"\r\n")
    writer.write(b"* OK which is " + decoded.replace(b"\x01", b" ") + b"\r\n")
    writer.write(b"* OK piece " + TOKEN.encode()[30:90] + b"\r\n")
    writer.write(b"+ " + base64.b64encode(decoded) + b"\r\n")


async def endless_challenges(line: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(b"+ " + base64.b64encode(b'{"status":"invalid_token"}') + b"\r\n" * 1)
    writer.write(b"+ more\r\n" * 2000)


def smtp_server(after_ehlo: Callable[[asyncio.StreamWriter], Awaitable[None]] | None) -> Handler:
    """A plaintext submission server offering the token mechanisms; AUTH echoes the line
    back, base64 and all; with `after_ehlo`, EHLO is answered by it instead."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hostile ESMTP\r\n")
        while line := await reader.readline():
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"EHLO":
                if after_ehlo is not None:
                    await after_ehlo(writer)
                    return
                writer.write(b"250-hostile\r\n250-SIZE 1000\r\n250 AUTH XOAUTH2 OAUTHBEARER\r\n")
            elif verb == b"AUTH":
                if line.split()[-1] in (b"XOAUTH2", b"OAUTHBEARER"):
                    writer.write(b"334 \r\n")
                else:
                    writer.write(b"535 5.7.8 you sent " + line.strip() + b"\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
            else:
                writer.write(b"250 " + line.strip() + b"\r\n")
            await writer.drain()

    return handle


async def smtp_endless_ehlo(writer: asyncio.StreamWriter) -> None:
    await flood(writer, b"250-MORE\r\n" * 500)


async def smtp_huge_line(writer: asyncio.StreamWriter) -> None:
    await flood(writer, b"250-" + CHUNK)


async def smtp_endless_challenges(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(b"220 hostile\r\n")
    while line := await reader.readline():
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb == b"EHLO":
            writer.write(b"250-hostile\r\n250 AUTH XOAUTH2 OAUTHBEARER\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
        else:
            writer.write(b"334 bW9yZQ==\r\n")
        await writer.drain()


async def run(port: int, protocol: str) -> tuple[Report, float, int]:
    """The probe's report, how long it took, and its peak of traced memory."""
    at = Endpoint("127.0.0.1", port)
    target = ProbeTarget(
        at if protocol == "imap" else None, at if protocol == "smtp" else None, TlsPolicy(), STEP
    )
    tracemalloc.start()
    started = time.monotonic()
    try:
        report = await run_probe(target, plan())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return report, time.monotonic() - started, peak


def outputs(report: Report) -> str:
    table = io.StringIO()
    _probe_table(report, Console(file=table, width=300))
    return table.getvalue() + "".join(render(report, name) for name in FORMATS)


@pytest.mark.parametrize(
    ("handler", "protocol", "why"),
    [
        (silent, "imap", "accueil : pas de réponse en 1 s"),
        (imap_huge_greeting, "imap", "longer than 16384 octets"),
        (imap_endless_lines, "imap", "plus de 500 réponses"),
        (imap_huge_capability, "imap", "longer than 16384 octets"),
        (imap_huge_literal, "imap", "literal of 50000000 octets"),
        (imap_continuation_on_capability, "imap", "« + » inattendu en réponse à CAPABILITY"),
        (imap_starttls_injection, "imap", "données en clair reçues après l'OK de STARTTLS"),
        (silent, "smtp", "accueil : pas de réponse en 1 s"),
        (smtp_server(smtp_endless_ehlo), "smtp", "plus de 100 lignes"),
        (smtp_server(smtp_huge_line), "smtp", "plus de 4096 octets"),
    ],
)
async def test_a_hostile_server_fails_the_first_check_quickly(
    handler: Handler, protocol: str, why: str
) -> None:
    async with hostile(handler) as port:
        report, took, peak = await run(port, protocol)
    assert took < 6 * STEP
    assert peak < 4 * 1024 * 1024
    assert report.failed
    ran = [r for r in report.results if r.check.key.startswith(protocol)]
    first, rest = ran[0], ran[1:]
    assert first.status is Status.FAILED
    assert why in first.detail
    assert {result.status for result in rest} == {Status.NOT_OBSERVED}
    logins = [r for r in rest if "oauth" in r.check.key or "token" in r.check.key]
    assert logins
    for result in logins:  # nothing was sent after a broken first connection
        assert re.search("première connexion échouée|STARTTLS a échoué", result.detail)


async def test_endless_sasl_challenges_end_each_login() -> None:
    async with hostile(imap_server(endless_challenges)) as port:
        report, took, peak = await run(port, "imap")
    assert took < 10 * STEP
    assert peak < 4 * 1024 * 1024
    results = {result.check.key: result for result in report.results}
    assert results["imap-xoauth2"].status is Status.FAILED
    assert "sans fin" in results["imap-xoauth2"].detail
    assert results["imap-bad-token"].status is Status.FAILED


async def test_endless_smtp_challenges_end_each_login() -> None:
    async with hostile(smtp_endless_challenges) as port:
        report, took, _ = await run(port, "smtp")
    assert took < 10 * STEP
    results = {result.check.key: result for result in report.results}
    assert results["smtp-xoauth2"].status is Status.FAILED
    assert "sans fin" in results["smtp-xoauth2"].detail
    assert results["smtp-sender-not-allowed"].status is Status.NOT_OBSERVED


async def test_a_server_echoing_the_token_never_gets_it_shown() -> None:
    async with hostile(imap_server(echo_everything)) as imap, hostile(smtp_server(None)) as smtp:
        target = ProbeTarget(
            Endpoint("127.0.0.1", imap), Endpoint("127.0.0.1", smtp), TlsPolicy(), STEP
        )
        report = await run_probe(target, plan())
    text = outputs(report)
    results = {result.check.key: result for result in report.results}
    assert results["imap-xoauth2"].status is Status.FAILED  # refused: the probe went on
    assert "you sent" in text  # what the server said is shown...
    for secret in (TOKEN, *PLAN_BAD):
        for piece in (secret, secret[:40], secret[30:90], secret[-40:]):
            assert piece not in text  # ...but none of what it was given
        blob = base64.b64encode(xoauth2("claire.martin@medecin.mssante.fr", secret)).decode()
        assert blob[40:80] not in text
