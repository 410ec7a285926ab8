"""The gateway's legacy front on a modern BAL against the historic platform itself: a whole
2,000-message folder read through the historic web services, `searchMessages` (50 per page)
+ each message's attachments (`downloadAttachment` of every part listed).

The mock operator (one process) holds the same N clinical messages of 1-3 KB (default
2,000; one in 100 with a small PDF) in folder ``HistoricTwin`` of claire.martin's BAL on its
modern platform (IMAP) and in the INBOX of jean.dupont's BAL on its historic platform (web
services), with the same flags. The gateway (another process) serves the historic web
services over the modern BAL (`gateway.legacy_front`: IMAP SEARCH/FETCH on the mock's IMAP
with the master login, historic ids assigned in its tables on first sight). One blocking
REST client (this process, one keep-alive connection, ``NUMHOMOLOGATION`` set) walks the
folder as a historic LPS does: ``searchMessages`` with ``limit 50`` at offsets 0, 50, ...
until ``total``, and ``downloadAttachment`` of every attachment each page lists. Paths:

  gateway, cold: the gateway's first walk of that folder (listFolders first, to find the
      folder's id; every message gets its historic id during this walk), as claire.martin
      with ``Authorization: Bearer`` (a PSC token of hers from the mock);
  gateway, warm: the same walk again (ids known; median of ``--runs``);
  direct: the same walk on the mock's historic platform, jean.dupont's INBOX (folder 2),
      as the mock's trusted gateway (HTTP Basic, master credentials): the floor (a first
      run, then the median of ``--runs``).

Each walk must see N distinct messages (``total`` N, N message objects, as many
attachments downloaded as listed, none empty; the run fails otherwise), and each gateway
walk's messages (subject, date, size, flags, attachment names and bytes' digest, in page
order) are compared with the direct walk's (differences are counted and printed). Prints
a table: seconds, messages/s, requests, the ratio of seconds to direct's (gateway/direct,
1.0 = as fast as direct), and the CPU seconds the gateway and the mock spent during the
walk.

Run: ``.venv/bin/python bench/legacy_front.py [--messages 2000] [--runs 3] [--page 50]``
(``LPS_BENCH_PROFILE=DIR`` writes cProfile dumps of both server processes, see _stack.py).

Figures: a 2-core machine shared with other work (timings vary by some 30 % from run to
run), 2,000 messages (20 with a PDF), ``--runs 3``, 60-61 requests per walk, 0 differences:

  path                                 seconds  msg/s  ratio  gateway CPU  mock CPU
  before (UID sets sent as 2,000 single UIDs):
  gateway, cold (listFolders + walk)     31.76     63   3.37         7.43     19.56
  gateway, warm                          31.68     63   3.36         6.50     19.30
  direct (historic platform)              9.42    212   1.00         0.04      4.34
  after (UID sets as ranges, INTERNALDATE parses cached), commit "Legacy front: UID sets":
  gateway, cold (listFolders + walk)      8.85    226   1.50         5.22      2.52
  gateway, warm                           8.64    232   1.47         5.36      2.99
  direct (historic platform), first       5.66    353   0.96         0.04      4.97
  direct (historic platform)              5.88    340   1.00         0.03      5.24
  then (a pooled session keeps each UID's date, size and envelope: a page fetches only
  its own messages), ``--runs 2``:
  gateway, cold (listFolders + walk)      4.22    474   0.92         2.68      1.48
  gateway, warm                           2.99    670   0.65         1.71      1.26
  direct (historic platform), first       4.79    418   1.05         0.03      4.64
  direct (historic platform)              4.56    438   1.00         0.02      4.43

Where the time went (cProfile, ``LPS_BENCH_PROFILE``): at first, 63 % of the mock's time
was its IMAP engine matching every message of the folder against a UID set of 2,000 single
numbers (`gateway.imap.selected.targets` → `SequenceSet.contains`, O(messages * ranges),
296 M `SeqRange.bounds` calls for two walks). Then most of the gateway's CPU (about 90 % of
`ModernBal.search`) was the per-page ``UID FETCH (FLAGS INTERNALDATE RFC822.SIZE)`` of the
*whole* folder, parsed to filter and sort before the page was cut: 40 pages of 2,000 FETCH
lines per walk, O(N²/page). What SEARCH does not decide and the sort needs (date, size,
envelope) never changes for a UID, so a pooled session now keeps it (`Described`, bounded)
and each page costs one UID SEARCH plus the page's own FETCH. The direct floor is the
mock's own searchMessages (about 90 ms of its CPU per page), not a real historic server.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import BAL, HISTORIC_BAL, HISTORIC_TWIN, PERSONA, Stack, tree_cpu_seconds

PREFIX = "/mss-msg-services/services"
INBOX = 2
SOFTWARE = "LPS-BENCH-LEGACY-1"


class BenchFailure(RuntimeError):
    """An answer that is not what the benchmark asked for."""


@dataclasses.dataclass(frozen=True)
class Seen:
    """What is compared between paths, for one message."""

    subject: str
    date: str
    size: int
    flags: frozenset[str]
    attachments: tuple[tuple[str, str], ...]  # (file name, SHA-256 of the bytes)


@dataclasses.dataclass
class Walk:
    seconds: float
    requests: int
    cpu: dict[str, float]
    seen: list[Seen]


class Caller:
    """A historic LPS's REST client on one implementation of the web services."""

    def __init__(self, base_url: str, bal: str, headers: dict[str, str]) -> None:
        self.bal = bal
        self.http = httpx.Client(
            base_url=base_url + PREFIX,
            headers={**headers, "NUMHOMOLOGATION": SOFTWARE},
            timeout=300,
        )
        self.requests = 0

    def call(self, service: str, operation: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.requests += 1
        answer = self.http.post(
            f"/{service}/rest/v1/{operation}",
            json={f"{operation}Input": {"email": self.bal, **payload}},
        )
        if answer.status_code != 200:
            raise BenchFailure(f"{operation}: {answer.status_code} {answer.text[:300]}")
        output: dict[str, Any] = answer.json()[f"{operation}Output"]
        return output

    def folder_id(self, name: str) -> int:
        """The id listFolders gives the folder named `name`."""
        pending = list(self.call("Folder", "listFolders", {}).get("folders", []))
        while pending:
            folder = pending.pop()
            if folder.get("name") == name:
                return int(folder["id"])
            pending.extend(folder.get("children") or [])
        raise BenchFailure(f"no folder {name!r} in listFolders")

    def close(self) -> None:
        self.http.close()


def walk(caller: Caller, folder: int | str, page: int, expected: int, pids: dict[str, int]) -> Walk:
    """searchMessages pages through the folder, then every attachment listed: timed (with
    the listFolders that finds the folder's id when `folder` is a name)."""
    caller.requests = 0
    cpu = {role: tree_cpu_seconds(pid) for role, pid in pids.items()}
    began = time.perf_counter()
    folder_id = caller.folder_id(folder) if isinstance(folder, str) else folder
    seen: list[Seen] = []
    ids: set[str] = set()
    offset, total = 0, None
    while total is None or offset < total:
        criteria = {"limit": page, "offset": offset, "query": {"folderId": folder_id}}
        found = caller.call("Item", "searchMessages", {"searchCriteria": criteria})
        total = int(found.get("total", 0))
        messages = found.get("messages") or []
        if not messages:
            break
        for message in messages:
            ids.add(str(message["messageId"]))
            files = []
            for attachment in message.get("attachments") or []:
                got = caller.call(
                    "Attachment",
                    "downloadAttachment",
                    {"messageId": message["messageId"], "part": attachment["part"]},
                )
                data = base64.b64decode(got.get("file", ""))
                if not data:
                    raise BenchFailure(f"empty attachment {attachment} of {message['messageId']}")
                files.append((str(attachment.get("fileName")), hashlib.sha256(data).hexdigest()))
            seen.append(
                Seen(
                    subject=str(message.get("subject", "")),
                    date=str(message.get("date", "")),
                    size=int(message.get("size", 0)),
                    flags=frozenset(message.get("flags") or ()),
                    attachments=tuple(files),
                )
            )
        offset += len(messages)
    seconds = time.perf_counter() - began
    used = {role: tree_cpu_seconds(pid) - cpu[role] for role, pid in pids.items()}
    if total != expected or len(seen) != expected or len(ids) != expected:
        raise BenchFailure(
            f"expected {expected} messages, got total {total}, {len(seen)} objects, "
            f"{len(ids)} distinct ids"
        )
    return Walk(seconds, caller.requests, used, seen)


def differences(one: list[Seen], other: list[Seen]) -> int:
    """Messages that differ between two walks, page order kept."""
    return sum(a != b for a, b in zip(one, other, strict=True))


def run(stack: Stack, messages: int, runs: int, page: int) -> list[tuple[str, Walk]]:
    info = stack.mock_info
    pids = {"gateway": stack.gateway.pid, "mock": stack.direct.pid}
    master = base64.b64encode(f"{info['master_user']}:{info['master_password']}".encode())
    direct = Caller(
        stack.direct.http_url, HISTORIC_BAL, {"Authorization": f"Basic {master.decode()}"}
    )
    gateway = Caller(
        stack.gateway.http_url, BAL, {"Authorization": f"Bearer {stack.token(PERSONA)}"}
    )
    rows: list[tuple[str, Walk]] = []
    try:
        cold = walk(gateway, HISTORIC_TWIN, page, messages, pids)  # ids assigned here
        folder = gateway.folder_id(HISTORIC_TWIN)
        rows.append(("gateway, cold (listFolders + walk)", cold))
        warm = [walk(gateway, folder, page, messages, pids) for _ in range(runs)]
        rows.append(("gateway, warm", _median(warm)))
        first = walk(direct, INBOX, page, messages, pids)
        rows.append(("direct (historic platform), first", first))
        again = [walk(direct, INBOX, page, messages, pids) for _ in range(runs)]
        rows.append(("direct (historic platform)", _median(again)))
    finally:
        gateway.close()
        direct.close()
    return rows


def _median(walks: list[Walk]) -> Walk:
    ordered = sorted(walks, key=lambda w: w.seconds)
    middle = ordered[len(ordered) // 2]
    return Walk(
        statistics.median(w.seconds for w in walks),
        middle.requests,
        {role: statistics.median(w.cpu[role] for w in walks) for role in middle.cpu},
        middle.seen,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--page", type=int, default=50)
    args = parser.parse_args()
    began = time.perf_counter()
    with Stack(historic=args.messages) as stack:
        seeding = stack.mock_info.get("seeding", {})
        rows = run(stack, args.messages, args.runs, args.page)
    floor = rows[-1][1]  # direct, median
    reference = floor.seen
    print(
        f"legacy front: searchMessages ({args.page} per page) + downloadAttachment of a "
        f"{args.messages}-message folder (median of {args.runs})"
    )
    print(
        f"  {'path':36} {'seconds':>8} {'msg/s':>7} {'requests':>8} {'ratio':>6} "
        f"{'gw CPU':>7} {'mock CPU':>8} {'diff':>5}"
    )
    for what, w in rows:
        print(
            f"  {what:36} {w.seconds:8.2f} {args.messages / w.seconds:7.0f} {w.requests:8d} "
            f"{w.seconds / floor.seconds:6.2f} {w.cpu['gateway']:7.2f} {w.cpu['mock']:8.2f} "
            f"{differences(w.seen, reference):5d}"
        )
    attachments = sum(len(s.attachments) for s in reference)
    print(
        f"  ({attachments} attachments per walk; ratio: seconds over direct's, gateway/direct; "
        "diff: messages whose subject, date, size, flags or attachments differ from direct's)"
    )
    if seeding:
        print(f"  (seeding: {', '.join(f'{k} {v:.1f} s' for k, v in seeding.items())})")
    print(f"  (whole benchmark {time.perf_counter() - began:.1f} s)")


if __name__ == "__main__":
    main()
