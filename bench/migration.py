"""Moving mailboxes (issue 14 §3): the gateway's migration of K BAL x N messages with
`--jobs K`, copy then verify, against a plain copy of the same messages, in one run.

The mock operator (one process) holds K historic BAL (``migration.historiqueI@``) and K
modern BAL (``migration.moderneI@``) of N clinical messages each (defaults 4 x 2,000);
the gateway (another process) has them in its registry, reads the historic platform
through its own IMAP for its tools and provisions BAL on the modern platform through the
operator API. Two comparisons, each path on BAL of its own so that neither finds the
other's messages:

  historic → modern
    gateway: ``POST /admin/migrations`` (the local admin secret, as `lps-gateway migrate
        copy --jobs K` sends it) copying the K historic BAL to "modern" (provisioned
        first, checkpointed), then the same with ``action=verify``; the time counted runs
        until every verification has ended, identical;
    direct: a plain copy in this process, K BAL at once: the historic web services
        (``searchMessages`` pages with the content, attachments downloaded, each message
        rebuilt as the gateway's legacy_ws client rebuilds it) appended to fresh modern
        BAL (``migration.copieI@``) over IMAP (master login, pipelined APPEND with
        flags and date); no checkpoint, no verification.
  modern → Dovecot (skipped, saying so, when Dovecot is not installed)
    gateway: the same requests, the K modern BAL to backend "dovecot" (a private
        Dovecot, master login, users of the same names);
    direct: ``UID FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[])`` from the modern platform,
        pipelined APPEND with flags and date to other Dovecot users
        (``migration.dovecotI@``).

Every target BAL must then hold N messages in INBOX, and every verification be identical,
or the run fails (exit 1). Prints seconds, messages a second, the ratio gateway/direct
(messages a second) and the target (≥ 0.8).

Run: ``.venv/bin/python bench/migration.py [--messages 2000] [--bals 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from imaplib import Time2Internaldate
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _imap_client import RawImap
from _stack import Stack, migration_bals, tree_cpu_seconds

from gateway import admin_secret
from gateway.admin_client import AdminClient, AdminTarget
from gateway.backends.legacy_ws.client import LegacyWsClient
from gateway.backends.legacy_ws.mime import historic_date, message_to_rfc5322
from gateway.backends.legacy_ws.store import imap_flags
from gateway.mss.historic_ws import INBOX
from tests.dovecot import MASTER, MASTER_PW, DovecotServer, dovecot_available, start_dovecot

TARGET = 0.8
POLL = 0.05  # seconds between two looks at the jobs
ENDED = ("done", "failed")
DOVECOT_PASSWORD = "bench-dovecot-secret"
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_DATE = re.compile(rb'INTERNALDATE ("[^"]*")')
_LIST = re.compile(rb'^\* LIST \([^)]*\) (?:"[^"]*"|NIL) (?:"((?:[^"\\]|\\.)*)"|(\S+))\r\n$')
_EXISTS = re.compile(rb"^\* (\d+) EXISTS")
_MESSAGES = re.compile(rb"MESSAGES (\d+)")


class BenchFailure(RuntimeError):
    """A path that did not copy what the benchmark asked for."""


@dataclass(frozen=True)
class Row:
    what: str
    seconds: float
    messages: int
    pair: str  # the comparison it belongs to
    cpu: tuple[float, float, float]  # CPU seconds of the mock, the gateway, this process
    direct: bool = False
    counted: bool = True  # False: shown for information, not in the ratio

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


class Meter:
    """Wall and CPU time of the mock, the gateway and this process since the last mark."""

    def __init__(self, stack: Stack) -> None:
        self.pids = (stack.direct.pid, stack.gateway.pid)
        self.last = self._now()

    def _now(self) -> tuple[float, float, float, float]:
        mine = os.times()
        return (
            time.perf_counter(),
            tree_cpu_seconds(self.pids[0]),
            tree_cpu_seconds(self.pids[1]),
            mine.user + mine.system,
        )

    def mark(self) -> tuple[float, tuple[float, float, float]]:
        """(seconds, (mock, gateway, this process CPU seconds)) since the last mark."""
        now = self._now()
        wall, mock, gateway, mine = (a - b for a, b in zip(now, self.last, strict=True))
        self.last = now
        return wall, (mock, gateway, mine)


# -- the gateway's path --------------------------------------------------------------------


def admin(stack: Stack) -> AdminClient:
    """The running gateway's `/admin`, with its local admin secret (as `lps-gateway
    migrate` finds it in the data directory)."""
    data = stack.gateway_data
    url = (data / admin_secret.URL_FILE).read_text(encoding="utf-8").strip()
    secret = admin_secret.read_admin_secret(data)
    return AdminClient(AdminTarget(url, secret, data), timeout=60)


def run_jobs(client: AdminClient, bals: Sequence[str], body: dict[str, Any]) -> list[Any]:
    """Start `body` on `bals` and wait until each of its jobs has ended; their last state."""
    started = client.post("/migrations", json={"bals": list(bals), **body})["jobs"]
    ids = {job["id"] for job in started}
    while True:
        jobs = {
            entry["job"]["id"]: entry["job"]
            for entry in client.get("/migrations")["migrations"]
            if entry["job"] is not None and entry["job"]["id"] in ids
        }
        if len(jobs) == len(ids) and all(j["state"] in ENDED for j in jobs.values()):
            return list(jobs.values())
        time.sleep(POLL)


Measure = tuple[float, tuple[float, float, float]]


def gateway_migration(
    stack: Stack, bals: Sequence[str], to: str, messages: int, jobs: int
) -> tuple[Measure, Measure]:
    """Copy then verify `bals` to backend `to` through the gateway; the copy's and the
    verification's wall and CPU seconds."""
    with admin(stack) as client:
        meter = Meter(stack)
        copies = run_jobs(client, bals, {"action": "copy", "to": to, "jobs": jobs})
        copied = meter.mark()
        failed = [f"{j['bal']}: {j['error']}" for j in copies if j["state"] != "done"]
        if failed:
            raise BenchFailure(f"gateway copy to {to} failed: {'; '.join(failed)}")
        checks = run_jobs(client, bals, {"action": "verify", "to": to, "jobs": jobs})
        verified = meter.mark()
    for job in checks:
        result = job["result"]
        if job["state"] != "done" or not result.get("identical"):
            first = job["differences"][0] if job["differences"] else {}
            found = job["error"] or f"{job['difference_count']} differences, first {first}"
            raise BenchFailure(f"gateway verify of {job['bal']} on {to}: {found}")
        if result["messages"] != messages:
            raise BenchFailure(f"{job['bal']}: verified {result['messages']}, not {messages}")
    return copied, verified


# -- the direct paths ----------------------------------------------------------------------


def _walk(folders: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for folder in folders:
        yield folder
        yield from _walk(folder.get("children") or [])


def _flag_list(flags: Sequence[str]) -> str:
    return " ".join(sorted(f for f in flags if f != "\\Recent"))


async def direct_historic(
    info: dict[str, Any], sources: Sequence[str], targets: Sequence[str]
) -> None:
    """A plain copy of each source BAL (historic web services) to its target (modern
    IMAP), all at once: every folder's messages, rebuilt, appended with flags and date."""
    client = LegacyWsClient(
        f"{info['http_url']}/mss-msg-services/services",
        user=info["master_user"],
        password=info["master_password"],
        numhomologation="LPS-BENCH-DIRECT",
        timeout=300,
    )

    async def one(source: str, target: str) -> None:
        for folder in _walk(await client.list_folders(source)):
            if not folder.get("totalCount"):
                continue
            entries = []
            for message in await client.search_messages(source, folder["id"]):
                files = {
                    entry["part"]: await client.download_attachment(
                        source, message["messageId"], entry["part"]
                    )
                    for entry in message.get("attachments") or []
                }
                when = historic_date(message)
                entries.append(
                    (
                        message_to_rfc5322(message, files),
                        _flag_list(sorted(imap_flags(message))),
                        Time2Internaldate(when) if when is not None else "",
                    )
                )
            name = "INBOX" if folder["id"] == INBOX else str(folder["name"])
            await asyncio.to_thread(
                _append, info["imap_port"], info["master_user"], info["master_password"],
                target, name, entries,
            )  # fmt: skip

    try:
        await asyncio.gather(*(one(s, t) for s, t in zip(sources, targets, strict=True)))
    finally:
        await client.aclose()


def _append(
    port: int,
    user: str,
    password: str,
    bal: str,
    folder: str,
    entries: list[tuple[bytes, str, str]],
) -> None:
    client = RawImap("127.0.0.1", port, timeout=300)
    try:
        client.login_plain(bal, user, password)
        if folder != "INBOX":
            client.command(f'CREATE "{folder}"')
        client.append_entries(folder, entries)
    finally:
        client.close()


def _lines(client: RawImap, command: str) -> list[bytes]:
    """The untagged lines of a command without literals in its answer."""
    tag = client.tag()
    client.sock.sendall(f"{tag} {command}\r\n".encode())
    lines: list[bytes] = []
    while True:
        line = client._line()
        if line.startswith(f"{tag} ".encode()):
            if not line[len(tag) + 1 :].startswith(b"OK"):
                raise BenchFailure(f"{command}: {line!r}")
            return lines
        lines.append(line)


def imap_to_imap(source: tuple[int, str], target: tuple[int, str], credentials: Any) -> None:
    """A plain IMAP-to-IMAP copy of one BAL: every folder, UID FETCH of flags, date and
    bytes, pipelined APPEND with them."""
    (source_port, source_bal), (target_port, target_bal) = source, target
    (source_user, source_pw), (target_user, target_pw) = credentials
    reader = RawImap("127.0.0.1", source_port, timeout=300)
    writer = RawImap("127.0.0.1", target_port, timeout=300)
    try:
        reader.login_plain(source_bal, source_user, source_pw)
        writer.login_plain(target_bal, target_user, target_pw)
        for folder in [
            (m.group(1) or m.group(2)).decode()
            for m in map(_LIST.match, _lines(reader, 'LIST "" "*"'))
            if m is not None
        ]:
            exists = [_EXISTS.match(line) for line in _lines(reader, f'EXAMINE "{folder}"')]
            if not any(m is not None and int(m.group(1)) for m in exists):
                continue
            bodies: list[bytes] = []
            heads: list[bytes] = []
            reader.command("UID FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[])", bodies, heads)
            entries = []
            for head, body in zip(heads, bodies, strict=True):
                flags, date = _FLAGS.search(head), _DATE.search(head)
                listed = flags.group(1).decode().split() if flags else []
                entries.append((body, _flag_list(listed), date.group(1).decode() if date else ""))
            if folder != "INBOX":
                writer.command(f'CREATE "{folder}"')
            writer.append_entries(folder, entries)
    finally:
        reader.close()
        writer.close()


def inbox_count(port: int, user: str, password: str, bal: str) -> int:
    client = RawImap("127.0.0.1", port, timeout=60)
    try:
        client.login_plain(bal, user, password)
        for line in _lines(client, 'STATUS "INBOX" (MESSAGES)'):
            if found := _MESSAGES.search(line):
                return int(found.group(1))
        raise BenchFailure(f"{bal}: no MESSAGES in STATUS")
    finally:
        client.close()


def check_counts(
    port: int, user: str, password: str, bals: Sequence[str], messages: int, where: str
) -> None:
    for bal in bals:
        found = inbox_count(port, user, password, bal)
        if found != messages:
            raise BenchFailure(f"{where}: {bal} holds {found} messages, not {messages}")


# -- the run -------------------------------------------------------------------------------


def timed(stack: Stack, what: Callable[[], object]) -> Measure:
    meter = Meter(stack)
    what()
    return meter.mark()


def gateway_rows(pair: str, jobs: int, total: int, copy: Measure, verify: Measure) -> list[Row]:
    both = (copy[1][0] + verify[1][0], copy[1][1] + verify[1][1], copy[1][2] + verify[1][2])
    return [
        Row(f"{pair}, gateway copy + verify, jobs {jobs}", copy[0] + verify[0], total, pair, both),
        Row("  of which copy", copy[0], total, pair, copy[1], counted=False),
        Row("  of which verify", verify[0], total, pair, verify[1], counted=False),
    ]


def historic_to_modern(stack: Stack, messages: int, bals: int, jobs: int) -> list[Row]:
    info = stack.mock_info
    names = migration_bals(bals)
    total = messages * bals
    master = (info["master_user"], info["master_password"])
    direct = timed(
        stack, lambda: asyncio.run(direct_historic(info, names["historic"], names["copy"]))
    )
    check_counts(info["imap_port"], *master, names["copy"], messages, "historic → modern, direct")
    copy, verify = gateway_migration(stack, names["historic"], "modern", messages, jobs)
    check_counts(info["imap_port"], *master, names["historic"], messages, "historic → modern")
    pair = "historic → modern"
    what = f"{pair}, direct (web services → IMAP)"
    return [
        Row(what, direct[0], total, pair, direct[1], direct=True),
        *gateway_rows(pair, jobs, total, copy, verify),
    ]


def modern_to_dovecot(
    stack: Stack, server: DovecotServer, messages: int, bals: int, jobs: int
) -> list[Row]:
    info = stack.mock_info
    names = migration_bals(bals)
    total = messages * bals
    credentials = ((info["master_user"], info["master_password"]), (MASTER, MASTER_PW))

    def direct() -> None:
        with ThreadPoolExecutor(bals) as pool:
            for done in [
                pool.submit(
                    imap_to_imap, (info["imap_port"], source), (server.port, target), credentials
                )
                for source, target in zip(names["modern"], names["dovecot"], strict=True)
            ]:
                done.result()

    seconds = timed(stack, direct)
    check_counts(server.port, MASTER, MASTER_PW, names["dovecot"], messages, "modern → Dovecot")
    copy, verify = gateway_migration(stack, names["modern"], "dovecot", messages, jobs)
    check_counts(server.port, MASTER, MASTER_PW, names["modern"], messages, "modern → Dovecot")
    pair = "modern → Dovecot"
    return [
        Row(f"{pair}, direct (IMAP → IMAP)", seconds[0], total, pair, seconds[1], direct=True),
        *gateway_rows(pair, jobs, total, copy, verify),
    ]


def start_private_dovecot(bals: int) -> DovecotServer | None:
    if not dovecot_available():
        return None
    names = migration_bals(bals)
    users = {bal: DOVECOT_PASSWORD for bal in names["modern"] + names["dovecot"]}
    first = next(iter(users))
    return start_dovecot(
        user=first,
        password=DOVECOT_PASSWORD,
        extra_users=users,
        master_user=MASTER,
        master_password=MASTER_PW,
    )


def print_table(rows: Sequence[Row], messages: int, bals: int, seconds: float) -> None:
    floors = {row.pair: row.rate for row in rows if row.direct}
    print(f"moving mailboxes: {bals} BAL x {messages} messages, copy + verify vs a plain copy")
    print(
        f"  {'path':52} {'seconds':>8} {'msg/s':>8} {'ratio':>6} {'target':>7}"
        f"   {'CPU s: mock':>11} {'gateway':>8} {'bench':>6}"
    )
    for row in rows:
        ratio, target = "", ""
        if row.counted and not row.direct:
            ratio = f"{row.rate / floors[row.pair]:.2f}"
            target = f"≥ {TARGET}"
        mock, gateway, mine = row.cpu
        print(
            f"  {row.what:52} {row.seconds:8.2f} {row.rate:8.0f} {ratio:>6} {target:>7}"
            f"   {mock:11.2f} {gateway:8.2f} {mine:6.2f}"
        )
    print("  (ratio: the gateway's messages a second over the direct copy's; 1.0 = as fast;")
    print("   CPU s: each process's CPU time during the path; Dovecot's not counted)")
    print(f"  (whole benchmark {seconds:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="per BAL")
    parser.add_argument("--bals", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=0, help="parallel copies (default: --bals)")
    args = parser.parse_args()
    if args.messages < 1 or not 1 <= args.bals <= 16:
        parser.error("--messages at least 1, --bals 1 to 16")
    jobs = args.jobs or args.bals
    began = time.perf_counter()
    server = start_private_dovecot(args.bals)
    try:
        dovecot = {"host": server.host, "port": server.port} if server is not None else None
        with Stack(migration=args.bals, migration_messages=args.messages, dovecot=dovecot) as stack:
            seeding = stack.mock_info["seeding"]
            print(
                f"(seeded: historic {seeding['migration historic']:.1f} s, "
                f"modern {seeding['migration modern']:.1f} s)",
                flush=True,
            )
            rows = historic_to_modern(stack, args.messages, args.bals, jobs)
            if server is not None:
                rows += modern_to_dovecot(stack, server, args.messages, args.bals, jobs)
    finally:
        if server is not None:
            server.stop()
    print_table(rows, args.messages, args.bals, time.perf_counter() - began)
    if server is None:
        print("  modern → Dovecot skipped: Dovecot (dovecot-imapd) not installed or not root")


if __name__ == "__main__":
    try:
        main()
    except BenchFailure as failure:
        print(f"migration benchmark failed: {failure}", file=sys.stderr)
        sys.exit(1)
