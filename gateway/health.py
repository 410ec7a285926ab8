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
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import quote

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from delegation.service import DelegationService
from gateway.backends.base import Backend
from gateway.backends.kinds import backends_from_settings
from gateway.backends.probes import OK, backend_check, clip
from gateway.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["OK", "Readiness", "backend_check", "database_check"]

DATABASE_TIMEOUT = 2.0
REGISTRY = "registry"
REGISTRY_EMPTY = "empty: no mailboxes yet (run lps-gateway directory import)"
ADVISORY = frozenset({REGISTRY})
"""Checks said in the body that do not make the node unready: an empty registry is no
reason for a balancer to take a node out (an import makes it useful, no restart needed)."""
CACHE_SECONDS = 1.0

Checks = dict[str, str]


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
        return clip(reason)
    return OK


async def registry_check(registry: DelegationService, *, within: float = DATABASE_TIMEOUT) -> str:
    """`ok`, or `REGISTRY_EMPTY` when the registry holds no mailbox (advisory: the
    database check says whether the database answers)."""
    try:
        async with asyncio.timeout(within):
            return OK if await registry.any_mailbox() else REGISTRY_EMPTY
    except Exception:
        return "unknown"


class Readiness:
    """The gateway's readiness verdict: `(ready, checks)`, with checks such as
    `{"database": "ok", "backend:modern:imap": "ok", "backend:modern:smtp": "connection
    refused (127.0.0.1:2587)"}`; ready when every check is `ok`."""

    def __init__(
        self,
        settings: Settings,
        registry: DelegationService,
        *,
        backends: Mapping[str, Backend] | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._registry = registry
        self._backends = (
            dict(backends) if backends is not None else backends_from_settings(settings.backends)
        )
        self._secret = _database_secret(settings.database())
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cached: tuple[float, bool, Checks] | None = None
        self._lock = asyncio.Lock()
        self._was_ready: bool | None = None
        self.draining = False  # the node is shutting down: no new sessions to it

    async def check(self) -> tuple[bool, dict[str, str]]:
        """Probe everything at once, or answer from the last second's probe. Concurrent
        callers wait for the probe in flight instead of starting their own. A node that
        shuts down is unready at once, so that its balancer sends clients elsewhere."""
        if self.draining:
            return False, {"shutdown": "draining sessions"}
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
        probes[REGISTRY] = registry_check(self._registry)
        for name, backend in self._backends.items():
            for check, probe in backend.probes().items():
                probes[f"backend:{name}:{check}"] = probe
        results = await asyncio.gather(*probes.values(), return_exceptions=True)
        checks: Checks = {}
        for key, result in zip(probes, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancellation and the like are not a verdict
                log.exception("readiness.probe_failed", exc_info=result, extra={"check": key})
                checks[key] = clip(f"probe error: {type(result).__name__}")
            else:
                checks[key] = result
        ready = all(value == OK for key, value in checks.items() if key not in ADVISORY)
        return ready, checks

    def _log_transition(self, ready: bool, checks: Checks) -> None:
        if ready == self._was_ready:
            return
        if ready:
            log.info("gateway.ready")
        else:
            failed = {key: value for key, value in checks.items() if value != OK}
            log.warning("gateway.unready", extra={"failed": failed})
        self._was_ready = ready
