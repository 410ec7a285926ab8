"""Readiness: may a load balancer send this node traffic? (`GET /readyz`)

Liveness (`/healthz`) only says the process answers; readiness says its dependencies do:
the delegation registry's database, and the IMAP and SMTP listeners of every configured
backend (a TCP connect and the server's greeting, no login: a probe must not spend the
master credentials nor fill a backend's logs with failed logins). All checks run at once,
each bounded by a short timeout, and the verdict is cached for a second, so that a storm
of probes from several balancers and scrapers costs the backends one probe per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Literal
from urllib.parse import quote

import httpx
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from delegation.service import DelegationService
from gateway.runtime.tls import backend_context
from gateway.settings import BackendSettings, Settings

log = logging.getLogger(__name__)

OK = "ok"
MAX_PROBE_TIMEOUT = 2.0  # seconds: a probe waits at most this, whatever connect_timeout says
DATABASE_TIMEOUT = 2.0
CACHE_SECONDS = 1.0
GOODBYE_TIMEOUT = 0.5  # seconds granted to a polite LOGOUT/QUIT; never affects the verdict
CLOSE_TIMEOUT = 0.2
MAX_REASON = 160

MailProtocol = Literal["imap", "smtp"]
Checks = dict[str, str]

# What a healthy server says first, and how to leave without a login.
_GREETING: dict[MailProtocol, bytes] = {"imap": b"* OK", "smtp": b"220"}
_GOODBYE: dict[MailProtocol, bytes] = {"imap": b"ready LOGOUT\r\n", "smtp": b"QUIT\r\n"}


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def _database_secret(url: str) -> str | None:
    try:
        password = make_url(url).password
    except ArgumentError:
        return None
    return str(password) if password else None


async def database_check(
    registry: DelegationService, *, secret: str | None = None, within: float = DATABASE_TIMEOUT
) -> str:
    """`ok`, or why the registry's database does not answer (short; `secret`, the URL's
    password, is masked should a driver echo it)."""
    try:
        async with asyncio.timeout(within):
            await registry.ping()
    except TimeoutError:
        return f"timeout after {within:g}s"
    except Exception as exc:
        # SQLAlchemy wraps the driver's error and appends the SQL and a link: keep the cause.
        cause = getattr(exc, "orig", None) or exc
        lines = str(cause).strip().splitlines()
        reason = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
        if secret:
            for form in (secret, quote(secret, safe="")):
                reason = reason.replace(form, "***")
        return _clip(reason)
    return OK


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
            return _clip(f"unexpected {protocol} greeting from {where}: {shown!r}")
        await _goodbye(protocol, reader, writer)
        return OK
    except TimeoutError:
        if opened:
            return f"no greeting from {where} within {within:g}s"
        return f"timeout after {within:g}s connecting to {where}"
    except OSError as exc:  # before ValueError: a certificate refusal is both
        if opened:
            return _clip(f"{type(exc).__name__} reading the greeting of {where}")
        return _clip(f"{_os_reason(exc)} ({where})")
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
        return _clip(f"{type(exc).__name__} reaching {base_url}")
    if answer.status_code != 200:
        return _clip(f"{base_url} answered HTTP {answer.status_code}")
    return OK


async def _reason(text: str) -> str:
    return _clip(text)


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


class Readiness:
    """The gateway's readiness verdict: `(ready, checks)`, with checks such as
    `{"database": "ok", "backend:modern:imap": "ok", "backend:modern:smtp": "connection
    refused (127.0.0.1:2587)"}`; ready when every check is `ok`."""

    def __init__(
        self,
        settings: Settings,
        registry: DelegationService,
        *,
        clock: Callable[[], float] = time.monotonic,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._registry = registry
        self._backends = dict(settings.backends)
        self._secret = _database_secret(settings.database())
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cached: tuple[float, bool, Checks] | None = None
        self._lock = asyncio.Lock()
        self._tls: dict[str, ssl.SSLContext] = {}
        self._was_ready: bool | None = None

    async def check(self) -> tuple[bool, dict[str, str]]:
        """Probe everything at once, or answer from the last second's probe. Concurrent
        callers wait for the probe in flight instead of starting their own."""
        async with self._lock:
            cached = self._cached
            if cached is not None and self._clock() - cached[0] < self._cache_seconds:
                return cached[1], dict(cached[2])
            ready, checks = await self._probe()
            self._cached = (self._clock(), ready, checks)
            self._log_transition(ready, checks)
            return ready, dict(checks)

    async def _probe(self) -> tuple[bool, Checks]:
        probes: dict[str, Awaitable[str]] = {
            "database": database_check(self._registry, secret=self._secret)
        }
        for name, backend in self._backends.items():
            if backend.kind == "legacy_ws":
                within = min(backend.connect_timeout, MAX_PROBE_TIMEOUT)
                try:
                    context = self._tls_context(name, backend)
                except (OSError, ValueError) as exc:
                    probes[f"backend:{name}:ws"] = _reason(f"tls configuration: {exc}")
                    continue
                probes[f"backend:{name}:ws"] = web_service_check(
                    backend.ws_url or "", within=within, ssl_context=context
                )
                continue
            probes[f"backend:{name}:imap"] = self._backend(name, backend, "imap")
            probes[f"backend:{name}:smtp"] = self._backend(name, backend, "smtp")
        results = await asyncio.gather(*probes.values(), return_exceptions=True)
        checks: Checks = {}
        for key, result in zip(probes, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancellation and the like are not a verdict
                log.exception("readiness.probe_failed", exc_info=result, extra={"check": key})
                checks[key] = _clip(f"probe error: {type(result).__name__}")
            else:
                checks[key] = result
        return all(value == OK for value in checks.values()), checks

    async def _backend(self, name: str, backend: BackendSettings, protocol: MailProtocol) -> str:
        if protocol == "imap":
            host, port, mode = backend.imap_host, backend.imap_port, backend.imap_tls
        else:
            host, port, mode = backend.smtp_host, backend.smtp_port, backend.smtp_tls
        context = None
        if mode == "implicit":
            try:
                context = self._tls_context(name, backend)
            except (OSError, ValueError) as exc:
                return _clip(f"tls configuration: {exc}")
        timeout = min(backend.connect_timeout, MAX_PROBE_TIMEOUT)
        return await backend_check(protocol, host, port, within=timeout, ssl_context=context)

    def _tls_context(self, name: str, backend: BackendSettings) -> ssl.SSLContext:
        """One context per backend: loading a CA bundle every second would cost more than
        the probe itself."""
        if name not in self._tls:
            self._tls[name] = backend_context(backend.ca_file, backend.tls_verify)
        return self._tls[name]

    def _log_transition(self, ready: bool, checks: Checks) -> None:
        if ready == self._was_ready:
            return
        if ready:
            log.info("gateway.ready")
        else:
            failed = {key: value for key, value in checks.items() if value != OK}
            log.warning("gateway.unready", extra={"failed": failed})
        self._was_ready = ready
