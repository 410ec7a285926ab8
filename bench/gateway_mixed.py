"""Gateway IMAP under a mixed load: the profile of imaptest's stress mode, through the gateway
vs the backend directly.

Dovecot's imaptest (not installed here) runs clients that log in, work on a mailbox with
random commands and log out again. This benchmark runs the same mix from its own client
processes (raw sockets, `_load.run_clients`: one process per client, so that the clients'
Python does not take the servers' cores): each of N clients (default 10) works in a
folder of its own of claire.martin's BAL (50 small clinical messages, kept at 50), session
after session, until the measurement's time is up. One session:

  login, ``LIST "" "*"``, ``STATUS`` (MESSAGES UIDNEXT UNSEEN), ``SELECT``, then 4 times
  ``FETCH 1:* (UID FLAGS RFC822.SIZE)``, ``UID FETCH <newest> BODY.PEEK[]``,
  ``STORE <n> +FLAGS (\\Seen)``, ``APPEND`` (LITERAL+), ``STORE 1 +FLAGS.SILENT
  (\\Deleted)``, ``EXPUNGE``; ``LOGOUT``

(29 commands, each one operation). Through the gateway the login is ``AUTHENTICATE
XOAUTH2`` (SASL-IR, a PSC token); directly, ``AUTHENTICATE PLAIN`` with the BAL's
password on Dovecot. The peer is a private Dovecot started by the benchmark (master
login), or the mock operator's platform with ``--peer mock``. After a warm-up the two
paths take turns (``--rounds`` of ``--seconds`` each). Prints
``mixed_load: gateway X ops/s, direct Y ops/s, ratio Z (target 0.8)``, the errors of each
path (a command answered NO or BAD, a connection lost: there must be none; the benchmark
exits 1 otherwise) and the CPU milliseconds per operation of the gateway and of the peer.

The gateway runs as a node deploys it, one worker per core, unless ``--workers N``
(``--workers 1`` for a profile of the gateway's work); the summary line names the count.

Run: ``.venv/bin/python bench/gateway_mixed.py [--clients 10] [--seconds 15] [--rounds 2]
[--peer dovecot|mock] [--workers N]``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _imap_client import RawImap
from _load import LoadResult, run_clients
from _stack import BAL, Costs, Endpoints, Stack, clinical_message

TARGET = 0.8
MESSAGES = 50  # per client folder, kept there: each round appends one and expunges one
ROUNDS_PER_SESSION = 4
_RECIPIENT = ("Dr Claire MARTIN", BAL)


def folder(index: int) -> str:
    return f"stress{index}"


def seed(stack: Stack, clients: int) -> None:
    """Each client's folder with `MESSAGES` messages, through the direct path (the mock
    is given the same through its own IMAP)."""
    client = RawImap(stack.direct.host, stack.direct.imap_port)
    client.command(stack.login_command(stack.direct, stack.token()))
    for index in range(clients):
        client.command(f"CREATE {folder(index)}")
        client.append_many(
            folder(index), [clinical_message(n, _RECIPIENT).raw for n in range(MESSAGES)]
        )
    client.close()


def one_session(endpoint: Endpoints, login: str, name: str, serial: int) -> int:
    """One session of the mix; returns the commands it sent (all answered OK)."""
    client = RawImap(endpoint.host, endpoint.imap_port, timeout=60)
    done = 0
    try:
        if not client.greeting.startswith(b"* OK"):
            raise RuntimeError(f"greeting: {client.greeting!r}")
        for command in (login, 'LIST "" "*"', f"STATUS {name} (MESSAGES UIDNEXT UNSEEN)"):
            client.command(command)
            done += 1
        client.command(f"SELECT {name}")
        done += 1
        for step in range(ROUNDS_PER_SESSION):
            client.command("FETCH 1:* (UID FLAGS RFC822.SIZE)")
            client.command("UID FETCH * BODY.PEEK[]")
            client.command(f"STORE {1 + (serial + step) % MESSAGES} +FLAGS (\\Seen)")
            message = clinical_message(serial * ROUNDS_PER_SESSION + step, _RECIPIENT).raw
            client.command(f"APPEND {name} () {{{len(message)}+}}\r\n".encode() + message)
            client.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
            client.command("EXPUNGE")
            done += 6
        client.command("LOGOUT")
        done += 1
        return done
    except Exception as exc:
        exc.operations = done  # type: ignore[attr-defined]
        raise
    finally:
        client.sock.close()


def run(endpoint: Endpoints, login: str, clients: int, seconds: float) -> LoadResult:
    def work(
        index: int, _rounds: int | None, deadline: float | None
    ) -> tuple[int, int, str | None]:
        assert deadline is not None
        operations = errors = serial = 0
        first: str | None = None
        while time.monotonic() < deadline:
            serial += 1
            try:
                operations += one_session(endpoint, login, folder(index), serial)
            except Exception as exc:
                operations += getattr(exc, "operations", 0)
                errors += 1
                first = first or f"{type(exc).__name__}: {exc}"
        return operations, errors, first

    return run_clients(work, clients, seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=15, help="per path and round")
    parser.add_argument("--rounds", type=int, default=2, help="turns of the two paths")
    parser.add_argument("--peer", choices=["dovecot", "mock"], default="dovecot")
    parser.add_argument(
        "--workers", type=int, help="the gateway's [server] workers (default: one per core)"
    )
    args = parser.parse_args()
    print(
        f"gateway_mixed: {args.clients} client processes, sessions of login, LIST, STATUS, "
        f"SELECT, {ROUNDS_PER_SESSION} x (FETCH, STORE, APPEND, EXPUNGE), LOGOUT; "
        f"{args.rounds} x {args.seconds:g} s per path, plaintext loopback"
    )
    with Stack(peer=args.peer, workers=args.workers) as stack:
        seed(stack, args.clients)
        token = stack.token()
        paths = {"gateway": stack.gateway, "direct": stack.direct}
        logins = {name: stack.login_command(endpoint, token) for name, endpoint in paths.items()}
        costs = Costs({"gateway": [stack.gateway.pid], args.peer: [stack.direct.pid]})
        workers = stack.gateway.workers
        print(f"  (peer: {stack.peer_label()}; gateway workers: {workers}; {stack.cpus_label()})")
        for name, endpoint in paths.items():  # warm-up
            run(endpoint, logins[name], args.clients, 2)
        operations = dict.fromkeys(paths, 0)
        errors = dict.fromkeys(paths, 0)
        first: dict[str, str | None] = dict.fromkeys(paths)
        elapsed = dict.fromkeys(paths, 0.0)
        cpu = {name: dict.fromkeys(costs.pids, 0.0) for name in paths}
        for _ in range(args.rounds):
            for name, endpoint in paths.items():
                result, spent = costs.measure(
                    functools.partial(run, endpoint, logins[name], args.clients, args.seconds)
                )
                operations[name] += result.operations
                errors[name] += result.errors
                first[name] = first[name] or result.first_error
                elapsed[name] += result.elapsed
                for who, seconds in spent.items():
                    cpu[name][who] += seconds
    rates = {name: operations[name] / elapsed[name] for name in paths}
    print(
        f"mixed_load: gateway {rates['gateway']:.0f} ops/s, direct {rates['direct']:.0f} ops/s, "
        f"ratio {rates['gateway'] / rates['direct']:.2f} (target >= {TARGET}); "
        f"errors: gateway {errors['gateway']}, direct {errors['direct']}; workers {workers}"
    )
    for name in paths:
        shares = ", ".join(
            f"{who} {seconds * 1000 / max(operations[name], 1):.2f}"
            for who, seconds in cpu[name].items()
        )
        print(f"  CPU ms per operation, {name} path: {shares}")
    for name, text in first.items():
        if text:
            print(f"  first error, {name} path: {text}")
    if any(errors.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
