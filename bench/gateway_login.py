"""Gateway IMAP login rate: whole short sessions through the gateway vs directly.

The mock operator and the gateway run in two processes (plaintext on loopback, no failure
delay; the gateway logs in to the mock with its master login). One session is: connect,
greeting, ``AUTHENTICATE XOAUTH2`` with an initial response (SASL-IR, the same PSC token
every time, as an LPS reconnecting), ``SELECT INBOX``, ``LOGOUT``, close. Sessions are run
back to back by one client (sequential), then by several client threads at once
(concurrent), against the gateway and against the mock directly (in turns, after a
warm-up). Prints
one line per workload, ``name: gateway X logins/s, direct Y logins/s, ratio Z`` where the
ratio is the gateway's rate over the direct one (1.0 = no overhead; target >= 0.7), and
the CPU time each server process spent per login.

Run: ``.venv/bin/python bench/gateway_login.py [--logins 300] [--clients 8]``
(``LPS_BENCH_PROFILE=DIR`` writes cProfile dumps of both server processes, see _stack.py).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _imap_client import RawImap
from _stack import BAL, Endpoints, Stack, cpu_seconds, xoauth2

TARGET = 0.7
BATCHES = 3  # the two paths take turns, so that a passing load hits both alike


def one_session(endpoint: Endpoints, blob: str) -> None:
    client = RawImap(endpoint.host, endpoint.imap_port, timeout=60)
    try:
        if not client.greeting.startswith(b"* OK"):
            raise RuntimeError(f"greeting: {client.greeting!r}")
        client.command("AUTHENTICATE XOAUTH2 " + blob)
        client.command("SELECT INBOX")
        client.command("LOGOUT")
    finally:
        client.sock.close()


def run(endpoint: Endpoints, blob: str, logins: int, clients: int) -> float:
    """`logins` sessions spread over `clients` threads; returns the elapsed seconds."""
    errors: list[BaseException] = []
    shares = [logins // clients + (1 if i < logins % clients else 0) for i in range(clients)]

    def worker(count: int) -> None:
        try:
            for _ in range(count):
                one_session(endpoint, blob)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=300, help="sessions per measurement")
    parser.add_argument("--clients", type=int, default=8, help="threads in the concurrent case")
    args = parser.parse_args()
    print(
        f"gateway_login: connect + AUTHENTICATE XOAUTH2 (SASL-IR) + SELECT INBOX + LOGOUT, "
        f"{args.logins} sessions, plaintext loopback"
    )
    with Stack() as stack:
        blob = xoauth2(BAL, stack.token())
        paths = {"gateway": stack.gateway, "direct": stack.direct}
        pids = {"gateway": stack.gateway.pid, "mock": stack.direct.pid}
        for endpoint in paths.values():
            run(endpoint, blob, 30, 3)  # warm-up
        workloads = {"login_sequential": 1, f"login_concurrent_{args.clients}": args.clients}
        batch = -(-args.logins // BATCHES)
        for workload, clients in workloads.items():
            elapsed = dict.fromkeys(paths, 0.0)
            cpu = {name: dict.fromkeys(pids, 0.0) for name in paths}
            for begin in range(0, args.logins, batch):  # the paths take turns
                count = min(batch, args.logins - begin)
                for name, endpoint in paths.items():
                    before = {who: cpu_seconds(pid) for who, pid in pids.items()}
                    elapsed[name] += run(endpoint, blob, count, clients)
                    for who, pid in pids.items():
                        cpu[name][who] += cpu_seconds(pid) - before[who]
            rates = {name: args.logins / seconds for name, seconds in elapsed.items()}
            print(
                f"{workload}: gateway {rates['gateway']:.0f} logins/s, "
                f"direct {rates['direct']:.0f} logins/s, "
                f"ratio {rates['gateway'] / rates['direct']:.2f} (target >= {TARGET})"
            )
            for name in paths:
                costs = ", ".join(
                    f"{who} {seconds / args.logins * 1000:.1f}"
                    for who, seconds in cpu[name].items()
                )
                print(f"  CPU ms per login, {name} path: {costs}")


if __name__ == "__main__":
    main()
