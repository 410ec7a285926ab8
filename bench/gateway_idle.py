"""Gateway memory for idle sessions: thousands of authenticated IMAP sessions in IDLE.

The peer is a private Dovecot started by the benchmark (master login; its process and
connection limits raised for the sessions, several sessions per imap process), or the
mock operator's platform with ``--peer mock``; plaintext on loopback. This process opens N
sessions (default 10,000) with asyncio clients, a bounded number logging in at a time:
connect, ``AUTHENTICATE XOAUTH2`` (SASL-IR, one PSC token), ``SELECT INBOX``, ``IDLE``;
every session then stays open and idle, and holds one backend session of the gateway's.
Memory is the **PSS summed over the gateway's processes** (/proc/PID/smaps_rollup of the
parent and every process below it: the workers of ``[server] workers``, one per core
as a node deploys it unless ``--workers N``), read after a warm-up (the node's idle
baseline) and again with the N sessions open. Prints
``idle_sessions: gateway X MiB for N sessions (Y KiB each), direct Z MiB (W KiB each),
budget used B (target <= 1.0: 0.3 GiB for 10,000)`` (the growth projected to 10,000
sessions over 0.3 GiB) where direct is the peer's own PSS growth for N
sessions opened to it directly (``AUTHENTICATE PLAIN`` on Dovecot; ``--no-direct`` skips
it), then the gateway's CPU milliseconds per session opened, and the peer's growth while
the gateway's sessions were open (its sessions of the gateway's).

The file-descriptor limit (RLIMIT_NOFILE) is raised to the hard limit in every process
(Dovecot inherits it; as root the hard limit too, where the process may); each gateway
session holds two sockets, so a hard limit of 20,000 holds 9,950 sessions in one gateway
process: the benchmark then measures that many and says so. If N sessions cannot be
opened, the figures are for the sessions that were, with the reason (and the exit status
is 1).

Run: ``.venv/bin/python bench/gateway_idle.py [--sessions 10000] [--parallel 32]
[--workers N] [--peer dovecot|mock] [--no-direct]``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import (
    AsyncImap,
    Endpoints,
    GatewayRefused,
    Stack,
    pss_kib,
    raise_fd_limit,
    split_cpus,
    tree_cpu_seconds,
)

TARGET_MIB = 0.3 * 1024  # for TARGET_SESSIONS sessions above the node's idle baseline
TARGET_SESSIONS = 10_000
SETTLE = 3.0  # seconds between the last login and the memory reading


async def open_session(endpoint: Endpoints, login: str) -> AsyncImap:
    client = await AsyncImap.connect(endpoint.host, endpoint.imap_port)
    try:
        await client.command(login)
        await client.command("SELECT INBOX")
        await client.idle()
    except BaseException:
        client.close()
        raise
    return client


async def open_many(
    endpoint: Endpoints, login: str, count: int, parallel: int
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
                clients.append(await open_session(endpoint, login))
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


class Measure:
    """Sessions opened on one path, and what they cost the processes watched."""

    def __init__(self, name: str, opened: int, failure: str | None, seconds: float) -> None:
        self.name = name
        self.opened = opened
        self.failure = failure
        self.seconds = seconds
        self.pss_mib: dict[str, tuple[float, float]] = {}  # who: before, after
        self.cpu: dict[str, float] = {}

    def growth(self, who: str) -> float:
        before, after = self.pss_mib[who]
        return after - before

    def per_session_kib(self, who: str) -> float:
        return self.growth(who) * 1024 / self.opened if self.opened else float("nan")


async def measure(
    name: str, endpoint: Endpoints, login: str, watched: dict[str, int], args: Any
) -> Measure:
    warm, _ = await open_many(endpoint, login, 64, 16)  # warm-up: code paths, caches, pools
    await close_all(warm)
    await asyncio.sleep(SETTLE)
    before = {who: pss_kib(pid) / 1024 for who, pid in watched.items()}
    cpu_before = {who: tree_cpu_seconds(pid) for who, pid in watched.items()}
    began = time.perf_counter()
    clients, failure = await open_many(endpoint, login, args.sessions, args.parallel)
    result = Measure(name, len(clients), failure, time.perf_counter() - began)
    result.cpu = {who: tree_cpu_seconds(pid) - cpu_before[who] for who, pid in watched.items()}
    await asyncio.sleep(SETTLE)
    for who, pid in watched.items():
        result.pss_mib[who] = (before[who], pss_kib(pid) / 1024)
    await close_all(clients)
    await asyncio.sleep(SETTLE)  # the peer lets go of the sessions before the next path
    print(
        f"  {name}: {result.opened} sessions opened in {result.seconds:.1f} s; PSS "
        + ", ".join(f"{who} {b:.0f} -> {a:.0f} MiB" for who, (b, a) in result.pss_mib.items())
    )
    return result


async def run(stack: Stack, args: Any) -> bool:
    token = stack.token()
    peer = "dovecot" if stack.dovecot is not None else "mock"
    gateway_login = stack.login_command(stack.gateway, token)
    gateway = await measure(
        "gateway",
        stack.gateway,
        gateway_login,
        {"gateway": stack.gateway.pid, peer: stack.direct.pid},
        args,
    )
    direct = None
    if not args.no_direct:
        direct_login = stack.login_command(stack.direct, token)
        direct = await measure("direct", stack.direct, direct_login, {peer: stack.direct.pid}, args)
    complete = True
    for result in (gateway, direct):
        if result is not None and result.failure is not None:
            complete = False
            print(
                f"  only {result.opened} of {args.sessions} {result.name} sessions opened: "
                f"{result.failure}"
            )
    projected = gateway.growth("gateway") * TARGET_SESSIONS / max(gateway.opened, 1)
    used = projected / TARGET_MIB
    there = (
        f"direct {direct.growth(peer):.0f} MiB ({direct.per_session_kib(peer):.1f} KiB each, "
        f"{stack.peer_label()})"
        if direct is not None
        else "direct not measured"
    )
    print(
        f"idle_sessions: gateway {gateway.growth('gateway'):.0f} MiB for {gateway.opened} "
        f"sessions ({gateway.per_session_kib('gateway'):.1f} KiB each), {there}, "
        f"budget used {used:.2f} (target <= 1.0: {TARGET_MIB / 1024:g} GiB for "
        f"{TARGET_SESSIONS:,} sessions; {projected:.0f} MiB projected); "
        f"workers {stack.gateway.workers}"
    )
    opened = max(gateway.opened, 1)
    print(
        "  CPU ms per session opened, gateway path: "
        + ", ".join(f"{who} {s * 1000 / opened:.2f}" for who, s in gateway.cpu.items())
    )
    if direct is not None:
        print(
            "  CPU ms per session opened, direct path: "
            + ", ".join(
                f"{who} {s * 1000 / max(direct.opened, 1):.2f}" for who, s in direct.cpu.items()
            )
        )
    print(
        f"  the peer's PSS for the gateway's backend sessions: {gateway.growth(peer):.0f} MiB "
        f"({gateway.per_session_kib(peer):.1f} KiB each)"
    )
    return complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--parallel", type=int, default=32, help="logins in flight at once")
    parser.add_argument(
        "--workers", type=int, help="the gateway's [server] workers (default: one per core)"
    )
    parser.add_argument("--peer", choices=["dovecot", "mock"], default="dovecot")
    parser.add_argument("--no-direct", action="store_true", help="skip the peer's own figure")
    args = parser.parse_args()
    limit = raise_fd_limit()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    print(
        f"gateway_idle: {args.sessions} authenticated sessions in IDLE, PSS of the gateway's "
        f"processes (file descriptors: soft limit {limit}, hard {hard})"
    )
    # A gateway process holds two sockets a session (the client's, the peer's); workers
    # share the sessions between them (each its own descriptors), assumed evenly
    from gateway.runtime.cores import available_cores

    processes = max(args.workers or len(split_cpus()) or available_cores(), 1)
    needed = 2 * -(-args.sessions // processes) + 100
    if limit < needed:
        possible = (limit - 100) // 2 * processes
        print(
            f"  the file-descriptor limit ({limit}) cannot hold {args.sessions} gateway "
            f"sessions in {processes} process(es) (2 sockets each): measuring {possible}"
        )
        args.sessions = possible
    settings: dict[str, Any] = {"imap": {"max_connections": args.sessions + 1000}}
    try:
        with Stack(
            peer=args.peer, sessions=args.sessions, settings=settings, workers=args.workers
        ) as stack:
            print(
                f"  (peer: {stack.peer_label()}; gateway workers: {stack.gateway.workers}; "
                f"{stack.cpus_label()})"
            )
            complete = asyncio.run(run(stack, args))
    except GatewayRefused:
        sys.exit("gateway_idle: the gateway refused [server] workers: not supported by this build")
    if not complete:
        sys.exit(1)


if __name__ == "__main__":
    main()
