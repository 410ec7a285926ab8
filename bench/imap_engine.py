"""IMAP engine benchmark: our engine (the mock operator's modern platform) beside Dovecot.

Two workloads on the same messages, each on both servers in one run:
  * ``FETCH 1:* (FLAGS ENVELOPE)`` on a 5,000-message folder;
  * ``FETCH 1:* BODY.PEEK[]`` of 100 messages of 1 MiB.
Each is timed three times after a warm-up; the best time counts. Prints, per workload,
``name: ours X s, dovecot Y s, ratio Z`` where the ratio is Dovecot's time over ours
(1.0 = as fast as Dovecot). Without Dovecot installed, prints our figures alone.

Run: ``.venv/bin/python bench/imap_engine.py [--messages 5000] [--big 100]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _imap_client import RawImap

from tests.dovecot import dovecot_available, start_dovecot

BAL = "claire.martin@medecin.mssante.fr"
SMALL, BIG = "Bench5000", "Big100"


def small_messages(count: int) -> list[bytes]:
    out = []
    start = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    for i in range(count):
        message = EmailMessage()
        message["From"] = f"Laboratoire {i % 17} <labo{i % 17}@labo.mssante.fr>"
        message["To"] = f"Claire MARTIN <{BAL}>"
        message["Cc"] = "secretariat@cabinet-martin.mssante.fr"
        message["Subject"] = f"Résultats d'analyses n°{i} — patient {i % 311}"
        message["Date"] = format_datetime(start + dt.timedelta(minutes=7 * i))
        message["Message-ID"] = f"<bench.{i}@labo.mssante.fr>"
        message.set_content("Bonjour,\n\n" + "Résultat normal. " * 60 + "\n")
        out.append(message.as_bytes(policy=SMTP))
    return out


def big_messages(count: int) -> list[bytes]:
    body = (b"A" * 76 + b"\r\n") * (1024 * 1024 // 78)
    return [
        b"From: imagerie@ch.mssante.fr\r\nTo: "
        + BAL.encode()
        + b"\r\nSubject: image "
        + str(i).encode()
        + b"\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body
        for i in range(count)
    ]


def start_ours(data: Path) -> tuple[subprocess.Popen[str], int]:
    command = [
        str(Path(sys.executable).parent / "mock-operator"),
        "serve",
        "--data",
        str(data),
        "--http-port=0",
        "--imap-port=0",
        "--smtp-port=0",
        "--historic-imap-port=0",
    ]
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "LPSGW_LOG__LEVEL": "WARNING"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        found = re.search(r"IMAP \(STARTTLS\):\s+imap://127\.0\.0\.1:(\d+)", line)
        if found:
            return process, int(found.group(1))
    process.kill()
    raise RuntimeError("the mock operator did not start")


def best_of(runs: int, action: Callable[[], int]) -> tuple[float, int]:
    action()  # warm-up
    best, size = float("inf"), 0
    for _ in range(runs):
        began = time.perf_counter()
        size = action()
        best = min(best, time.perf_counter() - began)
    return best, size


def measure(client: RawImap, runs: int) -> dict[str, tuple[float, int]]:
    results = {}
    client.command(f"SELECT {SMALL}")
    results["envelope"] = best_of(runs, lambda: client.command("FETCH 1:* (FLAGS ENVELOPE)")[1])
    client.command(f"SELECT {BIG}")
    results["bodies"] = best_of(runs, lambda: client.command("FETCH 1:* BODY.PEEK[]")[1])
    return results


def seed(client: RawImap, small: list[bytes], big: list[bytes]) -> None:
    for folder in (SMALL, BIG):
        client.command(f"CREATE {folder}")
    for begin in range(0, len(small), 500):
        client.append_many(SMALL, small[begin : begin + 500])
    client.append_many(BIG, big)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--big", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    small, big = small_messages(args.messages), big_messages(args.big)
    print(f"imap_engine: {args.messages} small messages, {args.big} x 1 MiB, best of {args.runs}")

    with tempfile.TemporaryDirectory() as tmp:
        process, port = start_ours(Path(tmp))
        try:
            password = (Path(tmp) / "master.secret").read_text().strip()
            client = RawImap("127.0.0.1", port)
            client.login_plain(BAL, "lps-gateway", password)
            seed(client, small, big)
            ours = measure(client, args.runs)
            client.close()
        finally:
            process.terminate()
            process.wait(30)

    theirs = None
    if dovecot_available():
        server = start_dovecot(user=BAL, password="bench")
        try:
            client = RawImap(server.host, server.port)
            client.command(f"LOGIN {BAL} bench")
            seed(client, small, big)
            theirs = measure(client, args.runs)
            client.close()
        finally:
            server.stop()
    else:
        print("(Dovecot is not installed: apt-get install dovecot-imapd to compare)")

    names = {
        "envelope": f"FETCH 1:* (FLAGS ENVELOPE) x{args.messages}",
        "bodies": f"FETCH 1:* BODY.PEEK[] x{args.big} (1 MiB)",
    }
    for key, label in names.items():
        our_time, size = ours[key]
        line = f"{label}: ours {our_time:.3f} s ({size / our_time / 2**20:.0f} MiB/s)"
        if theirs is not None:
            their_time, _ = theirs[key]
            line += f", dovecot {their_time:.3f} s, ratio {their_time / our_time:.2f}"
        print(line)


if __name__ == "__main__":
    main()
