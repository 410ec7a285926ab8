"""Historic BAL through the gateway: SELECT + FETCH 1:* (FLAGS ENVELOPE), cold and warm, vs modern.

The mock operator (one process) holds the same N clinical messages of 1-3 KB (default
2,000; one in 100 with a small PDF) in the INBOX of jean.dupont's BAL on its historic
platform (web services only) and in folder ``HistoricTwin`` of claire.martin's BAL on its
modern platform (IMAP), with the same flags. The gateway (another process) relays the
modern BAL to the mock's IMAP (master login) and serves the historic one with its own IMAP
engine over the historic web services (``legacy_ws``). One blocking client (this process)
runs whole sessions: connect, ``AUTHENTICATE XOAUTH2`` (a PSC token of the BAL's holder),
then, timed, ``SELECT`` and ``FETCH 1:* (FLAGS ENVELOPE)``, then ``LOGOUT``. Paths:

  historic via gateway, cold: the first session of the gateway process on that BAL
      (nothing cached: folder list, searchMessages, UIDs assigned, messages rebuilt);
  historic via gateway, warm: new sessions right after (median of ``--warm`` runs);
  modern direct: the mock's own IMAP (a first run, then the median of ``--runs``);
  modern via gateway: the same BAL through the gateway's relay (same).

Every answer is checked (N FETCH items, sequence numbers 1..N, FLAGS and a 10-field
ENVELOPE each, EXISTS N; the run fails otherwise), and each path's Message-IDs and flags
are compared with the modern direct ones (differences are printed). Prints a table:
seconds (SELECT, FETCH, both), messages/s, the ratio of the total to modern direct's,
and the CPU seconds the gateway and the mock spent per run; then one summary line.

Run: ``.venv/bin/python bench/gateway_historic.py [--messages 2000] [--runs 5] [--warm 5]``
(``LPS_BENCH_PROFILE=DIR`` writes cProfile dumps of both server processes, see _stack.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from email.header import decode_header, make_header
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _imap_client import RawImap
from _stack import (
    BAL,
    HISTORIC_BAL,
    HISTORIC_PERSONA,
    HISTORIC_TWIN,
    PERSONA,
    Endpoints,
    Stack,
    tree_cpu_seconds,
    xoauth2,
)

_TOKEN = re.compile(rb' |\(|\)|"(?:[^"\\]|\\.)*"|\{(\d+)\+?\}\r\n|\r\n|[^ ()"\r\n{]+')
_EXISTS = re.compile(rb"^\* (\d+) EXISTS\r$", re.MULTILINE)


class BenchFailure(RuntimeError):
    """An answer that is not what the benchmark asked for."""


@dataclasses.dataclass(frozen=True)
class Item:
    """What is compared between paths, for one message."""

    message_id: str | None
    subject: str  # decoded
    flags: frozenset[str]  # \\Recent left out


@dataclasses.dataclass
class Run:
    select: float
    fetch: float
    cpu: dict[str, float]
    items: list[Item]  # by sequence number

    @property
    def total(self) -> float:
        return self.select + self.fetch


def parse(data: bytes) -> list[list[object]]:
    """IMAP responses as nested lists (atoms and strings as str, NIL as None)."""
    responses: list[list[object]] = []
    stack: list[list[object]] = [[]]
    position = 0
    while position < len(data):
        match = _TOKEN.match(data, position)
        if match is None:
            raise BenchFailure(
                f"unparsable answer at {position}: {data[position : position + 80]!r}"
            )
        token = match.group()
        position = match.end()
        if token == b" ":
            continue
        if token == b"(":
            stack.append([])
        elif token == b")":
            if len(stack) < 2:
                raise BenchFailure("unbalanced ')' in the answer")
            done = stack.pop()
            stack[-1].append(done)
        elif token == b"\r\n":
            if len(stack) != 1:
                raise BenchFailure("unbalanced '(' in the answer")
            responses.append(stack[0])
            stack = [[]]
        elif match.group(1) is not None:
            size = int(match.group(1))
            stack[-1].append(data[position : position + size].decode("utf-8", "replace"))
            position += size
        elif token.startswith(b'"'):
            text = re.sub(rb"\\(.)", rb"\1", token[1:-1])
            stack[-1].append(text.decode("utf-8", "replace"))
        else:
            stack[-1].append(None if token == b"NIL" else token.decode("utf-8", "replace"))
    if stack != [[]]:
        raise BenchFailure("the answer ends in the middle of a response")
    return responses


def command_raw(client: RawImap, text: str) -> bytes:
    """Send one command; return every byte of the answer, the tagged line included (read in
    big chunks: framing and parsing come after the clock stops)."""
    assert not client.buffer
    tag = client.tag().encode()
    sock = client.sock
    data = bytearray()
    sock.sendall(tag + b" " + text.encode() + b"\r\n")
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
        if data.endswith(b"\r\n"):
            start = data.rfind(b"\r\n", 0, len(data) - 2) + 2
            if data.startswith(tag + b" ", start):
                if not data.startswith(tag + b" OK", start):
                    raise BenchFailure(f"{text.split()[0]} failed: {bytes(data[start:])!r}")
                return bytes(data)


def check_fetch(data: bytes, expected: int, what: str) -> list[Item]:
    """The (Message-ID, flags) of each message, by sequence number; fails loudly unless the
    answer has exactly `expected` FETCH items, numbered 1..expected, with FLAGS and an
    ENVELOPE each."""
    found: dict[int, Item] = {}
    for response in parse(data)[:-1]:
        if len(response) < 4 or response[0] != "*" or response[2] != "FETCH":
            continue  # another untagged answer (EXISTS, FLAGS...)
        seq = int(str(response[1]))
        items = response[3]
        if not isinstance(items, list) or len(items) % 2:
            raise BenchFailure(f"{what}: malformed FETCH item {seq}: {items!r}")
        pairs = dict(zip(items[::2], items[1::2], strict=True))
        flags, envelope = pairs.get("FLAGS"), pairs.get("ENVELOPE")
        if not isinstance(flags, list) or not isinstance(envelope, list) or len(envelope) != 10:
            raise BenchFailure(f"{what}: FETCH item {seq} lacks FLAGS or ENVELOPE: {items!r}")
        if seq in found:
            raise BenchFailure(f"{what}: message {seq} fetched twice")
        message_id, subject = envelope[9], envelope[1]
        found[seq] = Item(
            message_id if isinstance(message_id, str) else None,
            str(make_header(decode_header(subject))) if isinstance(subject, str) else "",
            frozenset(str(f) for f in flags) - {"\\Recent"},
        )
    if sorted(found) != list(range(1, expected + 1)):
        raise BenchFailure(
            f"{what}: {len(found)} FLAGS+ENVELOPE items, numbered "
            f"{min(found, default=0)}..{max(found, default=0)}, expected 1..{expected}"
        )
    return [found[seq] for seq in range(1, expected + 1)]


def session(
    endpoint: Endpoints,
    bal: str,
    token: str,
    folder: str,
    expected: int,
    what: str,
    pids: dict[str, int],
) -> Run:
    client = RawImap(endpoint.host, endpoint.imap_port, timeout=300)
    try:
        client.command("AUTHENTICATE XOAUTH2 " + xoauth2(bal, token))
        before = {who: tree_cpu_seconds(pid) for who, pid in pids.items()}
        began = time.perf_counter()
        selected = command_raw(client, f"SELECT {folder}")
        middle = time.perf_counter()
        fetched = command_raw(client, "FETCH 1:* (FLAGS ENVELOPE)")
        ended = time.perf_counter()
        cpu = {who: tree_cpu_seconds(pid) - before[who] for who, pid in pids.items()}
        client.command("LOGOUT")
    finally:
        client.sock.close()
    exists = [int(m) for m in _EXISTS.findall(selected)]
    if exists[-1:] != [expected]:
        raise BenchFailure(f"{what}: SELECT {folder} says EXISTS {exists}, expected {expected}")
    items = check_fetch(fetched, expected, what)
    return Run(middle - began, ended - middle, cpu, items)


def compare(reference: list[Item], run: Run, what: str, *, message_ids: bool = True) -> None:
    """Print the messages whose subject or flags (and Message-ID, unless the path rebuilds
    messages from the historic services, which do not give it) differ from `reference`."""
    differing = [
        (seq, mine, theirs)
        for seq, (mine, theirs) in enumerate(zip(run.items, reference, strict=True), 1)
        if (mine.subject, mine.flags) != (theirs.subject, theirs.flags)
        or (message_ids and mine.message_id != theirs.message_id)
    ]
    if differing:
        seq, mine, theirs = differing[0]
        print(
            f"  MISMATCH {what}: {len(differing)} of {len(reference)} messages differ from "
            f"modern direct; first, message {seq}: {mine} vs {theirs}"
        )


def median_run(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.total)
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5, help="modern runs per path (median)")
    parser.add_argument("--warm", type=int, default=5, help="warm historic runs (median)")
    args = parser.parse_args()
    if min(args.messages, args.runs, args.warm) < 1:
        parser.error("--messages, --runs and --warm must be at least 1")
    n = args.messages
    print(
        f"gateway_historic: SELECT + FETCH 1:* (FLAGS ENVELOPE) of {n} messages of 1-3 KB, "
        "historic (web services) vs modern (IMAP), plaintext loopback"
    )
    began = time.perf_counter()
    with Stack(historic=n) as stack:
        seeding = stack.mock_info.get("seeding", {})
        print(
            f"  (stack up and seeded in {time.perf_counter() - began:.1f} s: historic "
            f"deliver_many {seeding.get('historic', 0):.1f} s, modern appends "
            f"{seeding.get('modern', 0):.1f} s)"
        )
        pids = {"gateway": stack.gateway.pid, "mock": stack.direct.pid}
        modern_token = stack.token(PERSONA)
        historic_token = stack.token(HISTORIC_PERSONA)

        def historic() -> Run:
            return session(
                stack.gateway, HISTORIC_BAL, historic_token, "INBOX", n, "historic", pids
            )

        def modern(endpoint: Endpoints, what: str) -> Run:
            return session(endpoint, BAL, modern_token, HISTORIC_TWIN, n, what, pids)

        # cold first: the gateway process has served no session on the historic BAL yet
        cold = historic()
        warm = [historic() for _ in range(args.warm)]
        paths = {"modern direct": stack.direct, "modern via gateway": stack.gateway}
        first = {name: modern(endpoint, name) for name, endpoint in paths.items()}
        runs: dict[str, list[Run]] = {name: [] for name in paths}
        for _ in range(args.runs):  # the two paths take turns
            for name, endpoint in paths.items():
                runs[name].append(modern(endpoint, name))
    reference = first["modern direct"].items
    for name, path_runs in runs.items():
        for run in [first[name], *path_runs]:
            compare(reference, run, name)
    for what, run in [("historic cold", cold), *(("historic warm", r) for r in warm)]:
        compare(reference, run, what, message_ids=False)
    direct = median_run(runs["modern direct"])
    rows = [
        ("modern direct, first run", first["modern direct"]),
        (f"modern direct, median of {args.runs}", direct),
        ("modern via gateway, first run", first["modern via gateway"]),
        (f"modern via gateway, median of {args.runs}", median_run(runs["modern via gateway"])),
        ("historic via gateway, cold", cold),
        (f"historic via gateway, warm, median of {args.warm}", median_run(warm)),
    ]
    width = max(len(label) for label, _ in rows)
    print(
        f"  {'path':<{width}}  {'SELECT s':>8}  {'FETCH s':>8}  {'total s':>8}  "
        f"{'msg/s':>7}  {'/direct':>7}  {'CPU s gw':>8}  {'CPU s mock':>10}"
    )
    for label, run in rows:
        print(
            f"  {label:<{width}}  {run.select:8.3f}  {run.fetch:8.3f}  {run.total:8.3f}  "
            f"{n / run.total:7.0f}  {run.total / direct.total:7.2f}  "
            f"{run.cpu['gateway']:8.2f}  {run.cpu['mock']:10.2f}"
        )
    warm_run = median_run(warm)
    relayed = median_run(runs["modern via gateway"])
    print(
        f"historic_fetch: modern direct {direct.total:.3f} s; historic via gateway: cold "
        f"{cold.total:.3f} s (ratio {cold.total / direct.total:.1f}; "
        f"{cold.total / first['modern direct'].total:.1f} vs modern direct's first run), "
        f"warm {warm_run.total:.3f} s (ratio {warm_run.total / direct.total:.1f}); "
        f"modern via gateway {relayed.total:.3f} s (ratio {relayed.total / direct.total:.2f})"
    )
    print(f"  (whole benchmark {time.perf_counter() - began:.1f} s)")


if __name__ == "__main__":
    try:
        main()
    except BenchFailure as exc:
        sys.exit(f"gateway_historic: FAILED: {exc}")
