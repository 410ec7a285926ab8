"""Debian's HAProxy in front of a test's listeners, in TCP mode (`running_haproxy`)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require_peer
from tests.support.net import closed_port
from tests.support.waiting import eventually

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


@dataclass(frozen=True)
class Route:
    """HAProxy listens on `port` (chosen free) and sends to 127.0.0.1:`to`, with the
    server options `options` (e.g. ``send-proxy-v2``)."""

    to: int
    options: str = "send-proxy-v2"
    port: int = 0


def _config(routes: list[Route]) -> str:
    lines = [
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
    ]
    for index, route in enumerate(routes):
        lines += [
            f"listen route{index}",
            f"    bind 127.0.0.1:{route.port}",
            f"    server node 127.0.0.1:{route.to} {route.options}",
        ]
    return "\n".join(lines) + "\n"


def _write_config(directory: Path, routes: list[Route]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "haproxy.cfg"
    config.write_text(_config(routes), encoding="utf-8")
    return config


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.transport.abort()
    return True


@contextlib.asynccontextmanager
async def running_haproxy(directory: Path, routes: list[Route]) -> AsyncIterator[list[Route]]:
    """HAProxy with `routes`, listening on each; yields them with their ports."""
    require_peer(HAPROXY is not None, "haproxy is not installed (Debian package haproxy)")
    assert HAPROXY is not None
    chosen = [Route(r.to, r.options, r.port or closed_port()) for r in routes]
    config = _write_config(directory, chosen)
    process = await asyncio.create_subprocess_exec(
        HAPROXY, "-db", "-f", str(config), stdout=asyncio.subprocess.DEVNULL
    )
    try:
        for route in chosen:
            await eventually(lambda port=route.port: _listening(port), f"haproxy on {route.port}")
        yield chosen
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()
