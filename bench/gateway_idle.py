"""Gateway memory per idle session: thousands of authenticated IMAP sessions held open.

The mock operator and the gateway run in two processes (plaintext on loopback, no failure
delay; the gateway logs in to the mock with its master login), so that the gateway's
resident memory is read alone. This process opens N sessions (default 5,000) with asyncio
clients, a bounded number logging in at a time: connect, ``AUTHENTICATE XOAUTH2`` (SASL-IR,
one PSC token), ``SELECT INBOX``, ``IDLE``; every session then stays open and idle. The
gateway's VmRSS (/proc/PID/status) is read after a warm-up and again with all N sessions
open; the difference over N is the memory a session costs. Prints
``idle_sessions: gateway X KiB/session, target 64 KiB, ratio target/X`` (>= 1.0 meets
the target), then the same measure for the mock's own IMAP server (N sessions opened
directly, before the gateway's) as a point of comparison.

The file-descriptor limit is raised to the hard limit in every process; each gateway
session holds two sockets. If N sessions cannot be opened, the figure is given for the
sessions that were, with the reason.

Run: ``.venv/bin/python bench/gateway_idle.py [--sessions 5000] [--parallel 32]``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import BAL, AsyncImap, Endpoints, Stack, raise_fd_limit, rss_kib, xoauth2

TARGET_KIB = 64
SETTLE = 2.0  # seconds between the last login and the memory reading


async def open_session(endpoint: Endpoints, blob: str) -> AsyncImap:
    client = await AsyncImap.connect(endpoint.host, endpoint.imap_port)
    try:
        await client.command("AUTHENTICATE XOAUTH2 " + blob)
        await client.command("SELECT INBOX")
        await client.idle()
    except BaseException:
        client.close()
        raise
    return client


async def open_many(
    endpoint: Endpoints, blob: str, count: int, parallel: int
) -> tuple[list[AsyncImap], str | None]:
    """Open up to `count` idle sessions, `parallel` logging in at a time; stop at the
    first failure and return the sessions opened with the reason."""
    clients: list[AsyncImap] = []
    failure: str | None = None
    queue = iter(range(count))

    async def worker() -> None:
        nonlocal failure
        for _ in queue:
            if failure is not None:
                return
            try:
                clients.append(await open_session(endpoint, blob))
            except Exception as exc:
                failure = failure or f"{type(exc).__name__}: {exc}"
                return

    await asyncio.gather(*(worker() for _ in range(parallel)))
    return clients, failure


async def close_all(clients: list[AsyncImap]) -> None:
    for client in clients:
        client.close()
    await asyncio.gather(*(c.writer.wait_closed() for c in clients), return_exceptions=True)
    clients.clear()


async def measure(
    name: str, endpoint: Endpoints, server_pid: int, blob: str, args: argparse.Namespace
) -> tuple[float, int, str | None]:
    """KiB of the server process per idle session, sessions opened, failure if any."""
    warm, _ = await open_many(endpoint, blob, 64, 16)  # warm-up: code paths, caches, pools
    await close_all(warm)
    await asyncio.sleep(SETTLE)
    before = rss_kib(server_pid)
    began = time.perf_counter()
    clients, failure = await open_many(endpoint, blob, args.sessions, args.parallel)
    opened = len(clients)
    elapsed = time.perf_counter() - began
    await asyncio.sleep(SETTLE)
    after = rss_kib(server_pid)
    print(
        f"  {name}: {opened} sessions opened in {elapsed:.1f} s, "
        f"server RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB"
    )
    await close_all(clients)
    per_session = (after - before) / opened if opened else float("nan")
    return per_session, opened, failure


async def run(stack: Stack, args: argparse.Namespace) -> None:
    blob = xoauth2(BAL, stack.token())
    direct = None
    if not args.no_direct:
        direct = await measure("direct (mock IMAP)", stack.direct, stack.direct.pid, blob, args)
    gateway = await measure("gateway", stack.gateway, stack.gateway.pid, blob, args)
    per_session, opened, failure = gateway
    if failure is not None:
        print(f"  only {opened} of {args.sessions} gateway sessions opened: {failure}")
    print(
        f"idle_sessions: gateway {per_session:.1f} KiB/session ({opened} sessions), "
        f"target {TARGET_KIB} KiB, ratio {TARGET_KIB / per_session:.2f}"
    )
    if direct is not None:
        per_session, opened, failure = direct
        if failure is not None:
            print(f"  only {opened} of {args.sessions} direct sessions opened: {failure}")
        print(
            f"idle_sessions_direct: mock IMAP server {per_session:.1f} KiB/session "
            f"({opened} sessions), target {TARGET_KIB} KiB, "
            f"ratio {TARGET_KIB / per_session:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--parallel", type=int, default=32, help="logins in flight at once")
    parser.add_argument("--no-direct", action="store_true", help="skip the mock's own figure")
    args = parser.parse_args()
    limit = raise_fd_limit()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    print(
        f"gateway_idle: {args.sessions} authenticated sessions in IDLE, resident memory per "
        f"session (file descriptors: soft limit {limit}, hard {hard})"
    )
    needed = 2 * args.sessions + 100  # the gateway: one socket to the client, one to the mock
    if limit < needed:
        possible = (limit - 100) // 2
        print(
            f"  the file-descriptor limit ({limit}) cannot hold {args.sessions} gateway "
            f"sessions (2 sockets each): measuring {possible}"
        )
        args.sessions = possible
    with Stack() as stack:
        asyncio.run(run(stack, args))


if __name__ == "__main__":
    main()
