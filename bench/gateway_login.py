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

Measured both ways: the gateway's backend sessions closed with their client
(``keep_warm = 0``), then kept warm ``--keep-warm S`` seconds (default 30, the setting's
default), so that an LPS's next login takes its last session over instead of logging in
to the backend anew (`gateway/fronts/imap/warm.py`); ``--keep-warm 0`` measures the
first way only.

Run: ``.venv/bin/python bench/gateway_login.py [--logins 300] [--clients 8] [--keep-warm 30]``
(``LPS_BENCH_PROFILE=DIR`` writes cProfile dumps of both server processes, see _stack.py).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _imap_client import RawImap
from _stack import BAL, Costs, Endpoints, Stack, xoauth2

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


@dataclass
class LoginResult:
    workload: str
    rates: dict[str, float]  # logins per second, per path
    cpu_ms: dict[str, dict[str, float]]  # per path: CPU ms per login of each process group


def compare_logins(
    paths: dict[str, Endpoints], costs: Costs, blob: str, logins: int, clients: int
) -> list[LoginResult]:
    """A warm-up, then `logins` sessions on each path, sequential then from `clients`
    threads, the paths taking turns."""
    for endpoint in paths.values():
        run(endpoint, blob, 30, 3)
    workloads = {"login_sequential": 1, f"login_concurrent_{clients}": clients}
    batch = -(-logins // BATCHES)
    results = []
    for workload, threads in workloads.items():
        elapsed = dict.fromkeys(paths, 0.0)
        cpu = {name: dict.fromkeys(costs.pids, 0.0) for name in paths}
        for begin in range(0, logins, batch):
            count = min(batch, logins - begin)
            for name, endpoint in paths.items():
                seconds, spent = costs.measure(
                    lambda e=endpoint, c=count, t=threads: run(e, blob, c, t)
                )
                elapsed[name] += seconds
                for who, value in spent.items():
                    cpu[name][who] += value * 1000 / logins
        rates = {name: logins / seconds for name, seconds in elapsed.items()}
        results.append(LoginResult(workload, rates, cpu))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=300, help="sessions per measurement")
    parser.add_argument("--clients", type=int, default=8, help="threads in the concurrent case")
    parser.add_argument(
        "--keep-warm",
        type=float,
        default=30.0,
        metavar="S",
        help="[backends.modern] keep_warm of the second run (0: one run, without)",
    )
    args = parser.parse_args()
    print(
        f"gateway_login: connect + AUTHENTICATE XOAUTH2 (SASL-IR) + SELECT INBOX + LOGOUT, "
        f"{args.logins} sessions, plaintext loopback"
    )
    for keep_warm in dict.fromkeys([0.0, args.keep_warm]):
        print(f"keep_warm = {keep_warm:g}:")
        measure(args.logins, args.clients, keep_warm)


def measure(logins: int, clients: int, keep_warm: float) -> None:
    with Stack(keep_warm=keep_warm) as stack:
        blob = xoauth2(BAL, stack.token())
        paths = {"gateway": stack.gateway, "direct": stack.direct}
        costs = Costs({"gateway": [stack.gateway.pid], "mock": [stack.direct.pid]})
        for result in compare_logins(paths, costs, blob, logins, clients):
            rates = result.rates
            print(
                f"{result.workload}: gateway {rates['gateway']:.0f} logins/s, "
                f"direct {rates['direct']:.0f} logins/s, "
                f"ratio {rates['gateway'] / rates['direct']:.2f} (target >= {TARGET})"
            )
            for name, spent in result.cpu_ms.items():
                shares = ", ".join(f"{who} {ms:.1f}" for who, ms in spent.items())
                print(f"  CPU ms per login, {name} path: {shares}")


if __name__ == "__main__":
    main()
