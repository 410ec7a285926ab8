"""Gateway IMAP relay throughput: FETCH of big messages through the gateway vs directly.

The peer is a private Dovecot started by the benchmark (Debian's dovecot-imapd; the
gateway logs in to it with its master login), or the mock operator's platform with
``--peer mock``; plaintext on loopback. Folder ``Big`` of claire.martin's BAL holds N
messages of 1 MiB (default 200: APPENDed to Dovecot, seeded in the mock). One blocking
client (this process) logs in through the gateway (``AUTHENTICATE XOAUTH2``, a PSC
token) and directly (Dovecot: ``AUTHENTICATE PLAIN``, the BAL's password), selects the
folder and times ``UID FETCH 1:* BODY.PEEK[]``: a warm-up each, then the runs alternate
between the two paths; the best time of each counts. Prints
``fetch_bodies: gateway X MiB/s, direct Y MiB/s, ratio Z (target 0.95)`` where the ratio
is the gateway's throughput over the direct one, then the CPU seconds each party
(gateway, peer with all its processes, this client) spent per GiB on each path: client,
gateway and peer share the machine's cores, so the gateway's own CPU cost is what the
ratio pays for, and what shows a regression the ratio hides.

Run: ``.venv/bin/python bench/gateway_fetch.py [--messages 200] [--runs 3]
[--peer dovecot|mock] [--workers N]`` (``LPS_BENCH_PROFILE=DIR`` writes cProfile dumps of
the server processes, see _stack.py: with ``--workers 1``, the gateway's work).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _imap_client import RawImap
from _stack import BIG_FOLDER, Endpoints, Stack, big_message, tree_cpu_seconds

TARGET = 0.95
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


def open_session(endpoint: Endpoints, login: str) -> RawImap:
    """A session logged in with the command `login`, folder Big selected."""
    client = RawImap(endpoint.host, endpoint.imap_port, timeout=300)
    client.command(login)
    client.command(f"SELECT {BIG_FOLDER}")
    return client


def seed_dovecot(stack: Stack, messages: int) -> None:
    """Folder Big on the Dovecot peer with `messages` of 1 MiB (the mock seeds its own)."""
    client = RawImap(stack.direct.host, stack.direct.imap_port, timeout=300)
    client.command(stack.login_command(stack.direct, ""))
    client.command(f"CREATE {BIG_FOLDER}")
    for start in range(0, messages, 20):
        client.append_many(
            BIG_FOLDER, [big_message(i) for i in range(start, min(start + 20, messages))]
        )
    client.close()


def fetch_all(client: RawImap) -> tuple[float, int]:
    """``UID FETCH 1:* BODY.PEEK[]``, read into one reused buffer: literals are counted and
    skipped, not copied, so that the client (on the same 2 cores) costs as little as it can.
    Returns the time to the tagged OK and the bytes received."""
    assert not client.buffer
    tag = client.tag().encode()
    sock = client.sock
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    line = bytearray()
    skip = received = 0
    began = time.perf_counter()
    sock.sendall(tag + b" UID FETCH 1:* BODY.PEEK[]\r\n")
    while True:
        size = sock.recv_into(buffer)
        if not size:
            raise ConnectionError("server closed the connection")
        received += size
        position = 0
        while position < size:
            if skip:
                taken = min(skip, size - position)
                skip -= taken
                position += taken
                continue
            end = buffer.find(b"\n", position, size)
            if end < 0:
                line += view[position:size]
                break
            line += view[position : end + 1]
            position = end + 1
            literal = _LITERAL.search(line)
            if literal:
                skip = int(literal.group(1))
            elif line.startswith(tag + b" "):
                if position != size or not line[len(tag) + 1 :].startswith(b"OK"):
                    raise RuntimeError(f"unexpected end of FETCH: {bytes(line)!r}")
                return time.perf_counter() - began, received
            line.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peer", choices=["dovecot", "mock"], default="dovecot")
    parser.add_argument(
        "--workers", type=int, help="the gateway's [server] workers (default: one per core)"
    )
    args = parser.parse_args()
    print(
        f"gateway_fetch: UID FETCH 1:* BODY.PEEK[] of {args.messages} x 1 MiB, "
        f"plaintext loopback, best of {args.runs}"
    )
    began = time.perf_counter()
    dovecot = args.peer == "dovecot"
    with Stack(big=0 if dovecot else args.messages, peer=args.peer, workers=args.workers) as stack:
        if dovecot:
            seed_dovecot(stack, args.messages)
        print(
            f"  (peer: {stack.peer_label()}; gateway workers: {stack.gateway.workers}; "
            f"{stack.cpus_label()}; stack up and seeded in {time.perf_counter() - began:.1f} s)"
        )
        token = stack.token()
        paths = {"gateway": stack.gateway, "direct": stack.direct}
        clients = {
            name: open_session(endpoint, stack.login_command(endpoint, token))
            for name, endpoint in paths.items()
        }
        best = dict.fromkeys(paths, float("inf"))
        sizes = dict.fromkeys(paths, 0)
        pids = {"gateway": stack.gateway.pid, args.peer: stack.direct.pid}
        cpu = {name: dict.fromkeys([*pids, "client"], 0.0) for name in paths}
        for client in clients.values():
            fetch_all(client)  # warm-up
        for _ in range(args.runs):
            for name, client in clients.items():
                before = {who: tree_cpu_seconds(pid) for who, pid in pids.items()}
                client_before = time.process_time()
                elapsed, size = fetch_all(client)
                for who, pid in pids.items():
                    cpu[name][who] += tree_cpu_seconds(pid) - before[who]
                cpu[name]["client"] += time.process_time() - client_before
                best[name] = min(best[name], elapsed)
                sizes[name] = size
        for client in clients.values():
            client.close()
    # The tagged completions differ (Dovecot's says how long it took): bytes, not messages
    if abs(sizes["gateway"] - sizes["direct"]) > 1024:
        print(f"  WARNING: sizes differ: gateway {sizes['gateway']}, direct {sizes['direct']}")
    rate = {name: sizes[name] / best[name] / 2**20 for name in paths}
    ratio = rate["gateway"] / rate["direct"]
    print(
        f"fetch_bodies: gateway {rate['gateway']:.0f} MiB/s ({best['gateway']:.3f} s), "
        f"direct {rate['direct']:.0f} MiB/s ({best['direct']:.3f} s), ratio {ratio:.2f} "
        f"(target >= {TARGET})"
    )
    for name in paths:
        gib = sizes[name] * args.runs / 2**30
        shares = ", ".join(f"{who} {seconds / gib:.2f}" for who, seconds in cpu[name].items())
        print(f"  CPU seconds per GiB fetched, {name} path: {shares}")


if __name__ == "__main__":
    main()
