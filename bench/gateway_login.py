"""Gateway IMAP login rate: whole short sessions through the gateway vs the backend directly.

The peer is a private Dovecot started by the benchmark (Debian's dovecot-imapd; the
gateway logs in to it with its master login, authzid = the BAL), or the mock operator's
platform with ``--peer mock``; plaintext on loopback, no failure delay. One session is:
connect, greeting, login, ``SELECT INBOX``, ``LOGOUT``, close. The login through the
gateway is ``AUTHENTICATE XOAUTH2`` with an initial response (SASL-IR, the same PSC token
every time, as an LPS reconnecting); directly, ``AUTHENTICATE PLAIN`` with the BAL's
password on Dovecot (XOAUTH2 on the mock). Sessions run back to back from one client
(sequential), then from several client processes at once (concurrent, 8 by default), on
each path in turns after a warm-up. Prints one line per workload,
``name: gateway X logins/s, direct Y logins/s, ratio Z (target T)`` (the gateway's rate
over the direct one), then the CPU milliseconds per login of the gateway (its processes)
and of the peer (Dovecot: its master and every process below it) on each path.

The whole is run twice when the gateway supports warm backend sessions (detected by
trying): with ``[backends.modern] keep_warm = 0`` (cold: a backend login per session),
then ``keep_warm = S`` (``--keep-warm S``, default 30; 0 skips the warm run). A gateway
refusing the key is measured once without it, and reported as not supporting it.

The gateway runs as a node deploys it, one worker per core, unless ``--workers N``
(``--workers 1`` for a profile of the gateway's work); each line names the count.

Run: ``.venv/bin/python bench/gateway_login.py [--logins 400] [--clients 8]
[--peer dovecot|mock] [--keep-warm 30] [--workers N]`` (``LPS_BENCH_PROFILE=DIR``:
cProfile dumps of the server processes, see _stack.py).
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _imap_client import RawImap
from _load import run_clients, shares
from _stack import Costs, Endpoints, GatewayRefused, Stack

TARGET = 0.9  # 8 clients; 1.0 with warm backend sessions
TARGET_WARM = 1.0
BATCHES = 3  # the two paths take turns, so that a passing load hits both alike


def one_session(endpoint: Endpoints, login: str) -> None:
    client = RawImap(endpoint.host, endpoint.imap_port, timeout=60)
    try:
        if not client.greeting.startswith(b"* OK"):
            raise RuntimeError(f"greeting: {client.greeting!r}")
        client.command(login)
        client.command("SELECT INBOX")
        client.command("LOGOUT")
    finally:
        client.sock.close()


def run(endpoint: Endpoints, login: str, logins: int, clients: int) -> float:
    """`logins` sessions spread over `clients` processes; returns the elapsed seconds."""

    def work(_index: int, rounds: int | None, _deadline: float | None) -> int:
        for _ in range(rounds or 0):
            one_session(endpoint, login)
        return rounds or 0

    result = run_clients(work, clients, rounds=shares(logins, clients))
    if result.errors:
        raise RuntimeError(f"{result.errors} client(s) failed: {result.first_error}")
    return result.elapsed


@dataclass
class LoginResult:
    workload: str
    rates: dict[str, float]  # logins per second, per path
    cpu_ms: dict[str, dict[str, float]]  # per path: CPU ms per login of each process group


def compare_logins(
    paths: dict[str, Endpoints],
    costs: Costs,
    logins_by_path: dict[str, str],
    logins: int,
    clients: int,
) -> list[LoginResult]:
    """A warm-up, then `logins` sessions on each path (logging in with the command of
    `logins_by_path`), sequential then from `clients` processes, the paths taking turns."""
    for name, endpoint in paths.items():
        run(endpoint, logins_by_path[name], 30, 3)
    workloads = {"login_sequential": 1, f"login_concurrent_{clients}": clients}
    batch = -(-logins // BATCHES)
    results = []
    for workload, processes in workloads.items():
        elapsed = dict.fromkeys(paths, 0.0)
        cpu = {name: dict.fromkeys(costs.pids, 0.0) for name in paths}
        for begin in range(0, logins, batch):
            count = min(batch, logins - begin)
            for name, endpoint in paths.items():
                seconds, spent = costs.measure(
                    functools.partial(run, endpoint, logins_by_path[name], count, processes)
                )
                elapsed[name] += seconds
                for who, value in spent.items():
                    cpu[name][who] += value * 1000 / logins
        rates = {name: logins / seconds for name, seconds in elapsed.items()}
        results.append(LoginResult(workload, rates, cpu))
    return results


def measure(args: argparse.Namespace, settings: dict[str, Any] | None, label: str) -> None:
    warm = bool(settings and settings["backends"]["modern"]["keep_warm"])
    target = TARGET_WARM if warm else TARGET
    with Stack(peer=args.peer, settings=settings, workers=args.workers) as stack:
        token = stack.token()
        paths = {"gateway": stack.gateway, "direct": stack.direct}
        logins = {name: stack.login_command(endpoint, token) for name, endpoint in paths.items()}
        peer = "dovecot" if stack.dovecot is not None else "mock"
        costs = Costs({"gateway": [stack.gateway.pid], peer: [stack.direct.pid]})
        workers = stack.gateway.workers
        print(
            f"  {label} (peer: {stack.peer_label()}; gateway workers: {workers}; "
            f"{stack.cpus_label()}):"
        )
        for result in compare_logins(paths, costs, logins, args.logins, args.clients):
            rates = result.rates
            concurrent = result.workload != "login_sequential"
            goal = f" (target >= {target})" if concurrent else ""
            print(
                f"{result.workload}{'_warm' if warm else ''}: "
                f"gateway {rates['gateway']:.0f} logins/s, "
                f"direct {rates['direct']:.0f} logins/s, "
                f"ratio {rates['gateway'] / rates['direct']:.2f}{goal}; workers {workers}"
            )
            for name, spent in result.cpu_ms.items():
                shares_ = ", ".join(f"{who} {ms:.2f}" for who, ms in spent.items())
                print(f"  CPU ms per login, {name} path: {shares_}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=400, help="sessions per measurement")
    parser.add_argument("--clients", type=int, default=8, help="processes in the concurrent case")
    parser.add_argument("--peer", choices=["dovecot", "mock"], default="dovecot")
    parser.add_argument(
        "--workers", type=int, help="the gateway's [server] workers (default: one per core)"
    )
    parser.add_argument(
        "--keep-warm",
        type=float,
        default=30,
        metavar="S",
        help="[backends.modern] keep_warm of the warm run (0: the cold run only)",
    )
    args = parser.parse_args()
    print(
        f"gateway_login: connect + login (SASL-IR) + SELECT INBOX + LOGOUT, "
        f"{args.logins} sessions per path and workload, plaintext loopback"
    )
    try:  # cold: keep_warm = 0 said explicitly, a build may keep sessions warm by default
        measure(args, {"backends": {"modern": {"keep_warm": 0}}}, "keep_warm = 0")
    except GatewayRefused:
        measure(args, None, "a build without keep_warm")
        print(
            "login_warm: not supported by this gateway ([backends.modern] keep_warm refused); "
            "only the cold figures above"
        )
        return
    if args.keep_warm > 0:
        warm = {"backends": {"modern": {"keep_warm": args.keep_warm}}}
        measure(args, warm, f"warm backend sessions, keep_warm = {args.keep_warm:g}")


if __name__ == "__main__":
    main()
