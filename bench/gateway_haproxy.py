"""The production topology's cost: logins and FETCH through HAProxy and two gateway nodes
vs one node directly, in the same run.

One mock operator (N messages of 1 MiB in folder ``Big`` of claire.martin's BAL), two
gateway nodes in front of it sharing one registry (a fresh PostgreSQL database on
``LPS_TEST_DATABASE_URL``'s server when set, as in production; else each node its own
SQLite, said in the output), and Debian's HAProxy in front of the nodes (TCP,
round-robin, `/readyz` checked every 2 s, PROXY protocol v2 on IMAP, as in
docker/haproxy.cfg: tests/support/haproxy.py).
The workloads of gateway_login.py (connect + AUTHENTICATE XOAUTH2 + SELECT + LOGOUT,
sequential then 8 clients) and gateway_fetch.py (``UID FETCH 1:* BODY.PEEK[]``, best of
the runs) run through HAProxy and against node 1 directly, the paths taking turns.
Prints ``name: haproxy X, node Y, ratio Z`` (HAProxy and two nodes over one node) and
the CPU each process spent per unit (the nodes summed).

Run: ``.venv/bin/python bench/gateway_haproxy.py [--logins 300] [--clients 8]
[--messages 100] [--runs 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
from _stack import BAL, Costs, Endpoints, Stack, xoauth2
from gateway_fetch import fetch_all, open_session
from gateway_login import compare_logins
from sqlalchemy import make_url

from delegation.db import async_url, asyncpg_dsn
from tests.support.haproxy import HAPROXY, Node, running_balancer

# HAProxy connects to the nodes from here, with a PROXY v2 header the nodes trust from this
# address only; the direct client connects from 127.0.0.1, without one.
BALANCER = "127.0.0.3"


@contextlib.contextmanager
def fresh_database() -> Iterator[str | None]:
    """A new database on LPS_TEST_DATABASE_URL's server, dropped afterwards (None without)."""
    server = os.environ.get("LPS_TEST_DATABASE_URL")
    if not server:
        yield None
        return
    name = f"lps_bench_{uuid.uuid4().hex[:12]}"

    async def execute(statement: str) -> None:
        admin = await asyncpg.connect(asyncpg_dsn(server), timeout=10)
        try:
            await admin.execute(statement)
        finally:
            await admin.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(async_url(server)).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def node(endpoint: Endpoints, name: str) -> Node:
    http_port = int(endpoint.http_url.rsplit(":", 1)[1])
    return Node(name, endpoint.imap_port, endpoint.smtp_port, http_port)


def report(
    name: str, unit: str, rates: dict[str, float], cpu: dict[str, dict[str, float]], per: str
) -> None:
    print(
        f"{name}: haproxy {rates['haproxy']:.0f} {unit}, node {rates['node']:.0f} {unit}, "
        f"ratio {rates['haproxy'] / rates['node']:.2f}"
    )
    for path, spent in cpu.items():
        shares = ", ".join(f"{who} {seconds:.2f}" for who, seconds in spent.items())
        print(f"  CPU {per}, {path} path: {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=300, help="sessions per measurement")
    parser.add_argument("--clients", type=int, default=8, help="threads in the concurrent case")
    parser.add_argument("--messages", type=int, default=100, help="1 MiB messages to FETCH")
    parser.add_argument("--runs", type=int, default=3, help="FETCH runs per path (best counts)")
    args = parser.parse_args()
    if HAPROXY is None:
        sys.exit("gateway_haproxy: needs HAProxy (Debian package haproxy)")
    with fresh_database() as database_url, tempfile.TemporaryDirectory() as tmp:
        registry = "one PostgreSQL" if database_url else "SQLite per node (no PostgreSQL)"
        print(
            f"gateway_haproxy: HAProxy + 2 nodes ({registry}) vs 1 node directly; logins "
            f"as gateway_login, {args.logins} sessions; FETCH as gateway_fetch, "
            f"{args.messages} x 1 MiB, best of {args.runs}"
        )
        with (
            Stack(
                big=args.messages, nodes=2, database_url=database_url, proxy_from=f"{BALANCER}/32"
            ) as stack,
            running_balancer(
                Path(tmp),
                [node(e, f"node{i + 1}") for i, e in enumerate(stack.nodes)],
                check_interval_ms=2000,  # as docker/haproxy.cfg
                proxy_protocol=True,
                source=BALANCER,
            ) as haproxy,
        ):
            frontends = haproxy.frontends
            balanced = Endpoints("127.0.0.1", frontends.imap, frontends.smtp, haproxy.process.pid)
            paths = {"haproxy": balanced, "node": stack.nodes[0]}
            costs = Costs(
                {
                    "nodes": [n.pid for n in stack.nodes],
                    "haproxy": [haproxy.process.pid],
                    "mock": [stack.direct.pid],
                }
            )
            token = stack.token()
            blob = xoauth2(BAL, token)
            logins = dict.fromkeys(paths, "AUTHENTICATE XOAUTH2 " + blob)
            for result in compare_logins(paths, costs, logins, args.logins, args.clients):
                report(result.workload, "logins/s", result.rates, result.cpu_ms, "ms per login")

            sessions = {
                path: open_session(endpoint, "AUTHENTICATE XOAUTH2 " + blob)
                for path, endpoint in paths.items()
            }
            best = dict.fromkeys(paths, float("inf"))
            sizes = dict.fromkeys(paths, 0)
            cpu = {path: dict.fromkeys(costs.pids, 0.0) for path in paths}
            for client in sessions.values():
                fetch_all(client)  # warm-up
            for _ in range(args.runs):
                for path, client in sessions.items():
                    (seconds, sizes[path]), spent = costs.measure(lambda c=client: fetch_all(c))
                    best[path] = min(best[path], seconds)
                    for who, value in spent.items():
                        cpu[path][who] += value
            if sizes["haproxy"] != sizes["node"]:
                print(f"  WARNING: sizes differ: {sizes}")
            for path in cpu:
                gib = sizes[path] * args.runs / 2**30
                cpu[path] = {who: seconds / gib for who, seconds in cpu[path].items()}
            for client in sessions.values():
                client.close()
            rates = {path: sizes[path] / seconds / 2**20 for path, seconds in best.items()}
            report("fetch_bodies", "MiB/s", rates, cpu, "seconds per GiB")


if __name__ == "__main__":
    main()
