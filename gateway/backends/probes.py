"""Readiness probes of backends: a TCP connect and the server's greeting, no login (a
probe must not spend the master credentials nor fill a backend's logs with failed
logins); for the historic web services, their WSDL. Each answers `ok` or a short reason."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Literal

import httpx

from gateway.runtime.tls import shared_backend_context
from gateway.settings import BackendSettings, TlsMode

OK = "ok"
MAX_PROBE_TIMEOUT = 2.0  # seconds: a probe waits at most this, whatever connect_timeout says
GOODBYE_TIMEOUT = 0.5  # seconds granted to a polite LOGOUT/QUIT; never affects the verdict
CLOSE_TIMEOUT = 0.2
MAX_REASON = 160

MailProtocol = Literal["imap", "smtp"]

# What a healthy server says first, and how to leave without a login.
_GREETING: dict[MailProtocol, bytes] = {"imap": b"* OK", "smtp": b"220"}
_GOODBYE: dict[MailProtocol, bytes] = {"imap": b"ready LOGOUT\r\n", "smtp": b"QUIT\r\n"}


def clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


async def mail_port_check(
    backend: BackendSettings, protocol: MailProtocol, host: str, port: int, mode: TlsMode
) -> str:
    """`backend_check` of one of a backend's listeners, with its TLS settings."""
    context = None
    if mode == "implicit":
        try:
            context = shared_backend_context(backend.ca_file, backend.tls_verify)
        except (OSError, ValueError) as exc:
            return clip(f"tls configuration: {exc}")
    within = min(backend.connect_timeout, MAX_PROBE_TIMEOUT)
    return await backend_check(protocol, host, port, within=within, ssl_context=context)


async def web_services_check(backend: BackendSettings) -> str:
    """`web_service_check` of a historic platform, with its TLS settings."""
    try:
        context = shared_backend_context(backend.ca_file, backend.tls_verify)
    except (OSError, ValueError) as exc:
        return clip(f"tls configuration: {exc}")
    within = min(backend.connect_timeout, MAX_PROBE_TIMEOUT)
    return await web_service_check(backend.ws_url or "", within=within, ssl_context=context)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or type(exc).__name__


async def backend_check(
    protocol: MailProtocol,
    host: str,
    port: int,
    *,
    within: float,
    ssl_context: ssl.SSLContext | None = None,
) -> str:
    """`ok` when `host:port` accepts a connection and greets as an IMAP (`* OK`) or SMTP
    (`220`) server within `within` seconds; otherwise a short reason. `ssl_context` is for
    implicit TLS (the greeting comes after the handshake); STARTTLS servers greet in clear."""
    where = f"{host}:{port}"
    opened: list[asyncio.StreamWriter] = []
    try:
        async with asyncio.timeout(within):  # one deadline for connect, handshake, greeting
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
            )
            opened.append(writer)
            line = await reader.readline()
        if not line:
            return f"{where} closed the connection before greeting"
        if not line.upper().startswith(_GREETING[protocol]):
            shown = line.decode("ascii", "replace").strip()
            return clip(f"unexpected {protocol} greeting from {where}: {shown!r}")
        await _goodbye(protocol, reader, writer)
        return OK
    except TimeoutError:
        if opened:
            return f"no greeting from {where} within {within:g}s"
        return f"timeout after {within:g}s connecting to {where}"
    except OSError as exc:  # before ValueError: a certificate refusal is both
        if opened:
            return clip(f"{type(exc).__name__} reading the greeting of {where}")
        return clip(f"{_os_reason(exc)} ({where})")
    except ValueError:  # a greeting beyond the reader's line limit
        return f"greeting from {where} too long"
    finally:
        for writer in opened:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await writer.wait_closed()


async def web_service_check(
    base_url: str, *, within: float, ssl_context: ssl.SSLContext | None = None
) -> str:
    """`ok` when the historic web services answer their WSDL (no credentials needed) within
    `within` seconds; otherwise a short reason."""
    url = f"{base_url.rstrip('/')}/Folder/soap/v1?wsdl"
    verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
    try:
        async with httpx.AsyncClient(timeout=within, verify=verify, trust_env=False) as http:
            answer = await http.get(url)
    except httpx.HTTPError as exc:
        return clip(f"{type(exc).__name__} reaching {base_url}")
    if answer.status_code != 200:
        return clip(f"{base_url} answered HTTP {answer.status_code}")
    return OK


async def _reason(text: str) -> str:
    return clip(text)


async def _goodbye(
    protocol: MailProtocol, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Log out and wait for the server to close, so that backends do not log a probe as a
    dropped connection; best effort, briefly."""
    with contextlib.suppress(OSError, TimeoutError, ValueError):
        async with asyncio.timeout(GOODBYE_TIMEOUT):
            writer.write(_GOODBYE[protocol])
            await writer.drain()
            while await reader.read(4096):
                pass
