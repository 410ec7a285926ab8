"""Gateway SMTP submission throughput: messages through the gateway vs directly.

The mock operator and the gateway run in two processes (plaintext on loopback, no failure
delay; the gateway relays to the mock's submission port with its master login). One
smtplib client per path logs in with the same PSC token (``AUTH XOAUTH2``, user = the BAL)
and sends N messages of 50 KiB (default 1,000) one after the other on that connection:
MAIL, RCPT, DATA, each waiting for its reply (through the gateway, 250 comes only once the
mock accepted the message). The messages follow the MSSanté rules the gateway checks
(``From:`` = the sending BAL, ``X-MSS-NIL``; no CDA, so no X-MSS-CODECDA/INS), from
claire.martin to luc.durand, both on the mock's platform. After a warm-up the two paths
take turns in batches (so that a passing load on the machine hits both alike). Prints
``smtp_submission: gateway X msg/s, direct Y msg/s, ratio Z`` where the ratio is the
gateway's rate over the direct one (1.0 = no overhead; target >= 0.7), and the CPU time
each server process spent per message.

Run: ``.venv/bin/python bench/gateway_smtp.py [--messages 1000] [--size 51200]``.
"""

from __future__ import annotations

import argparse
import smtplib
import sys
import time
from email.utils import formatdate
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import BAL, Endpoints, Stack, cpu_seconds

TARGET = 0.7
RECIPIENT = "luc.durand@infirmier.mssante.fr"
BATCHES = 4


def message(index: int, size: int) -> bytes:
    head = (
        f"From: {BAL}\r\n"
        f"To: {RECIPIENT}\r\n"
        f"Subject: Compte rendu de consultation {index}\r\n"
        f"Date: {formatdate(localtime=True)}\r\n"
        f"Message-ID: <bench.{index}.{time.time_ns()}@medecin.mssante.fr>\r\n"
        "X-MSS-NIL: BENCH-LPS-0001\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n\r\n"
    ).encode()
    line = b"Examen clinique sans particularite, patient revu dans trois mois. RAS.  \r\n"
    body = line * (max(0, size - len(head)) // len(line) + 1)
    return head + body[: max(0, size - len(head) - 2)] + b"\r\n"


def connect(endpoint: Endpoints, token: str) -> smtplib.SMTP:
    client = smtplib.SMTP(endpoint.host, endpoint.smtp_port, local_hostname="bench-lps", timeout=60)
    client.ehlo()
    client.auth(
        "XOAUTH2",
        lambda challenge=None: f"user={BAL}\x01auth=Bearer {token}\x01\x01",
        initial_response_ok=True,
    )
    return client


def send(client: smtplib.SMTP, messages: list[bytes]) -> float:
    began = time.perf_counter()
    for raw in messages:
        refused = client.sendmail(BAL, [RECIPIENT], raw)
        if refused:
            raise RuntimeError(f"recipients refused: {refused}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=50 * 1024, help="bytes per message")
    args = parser.parse_args()
    print(
        f"gateway_smtp: {args.messages} messages of {args.size // 1024} KiB, one connection "
        f"per path, AUTH XOAUTH2, plaintext loopback"
    )
    messages = [message(i, args.size) for i in range(args.messages)]
    with Stack() as stack:
        token = stack.token()
        paths = {"gateway": stack.gateway, "direct": stack.direct}
        pids = {"gateway": stack.gateway.pid, "mock": stack.direct.pid}
        clients = {name: connect(endpoint, token) for name, endpoint in paths.items()}
        for client in clients.values():
            send(client, messages[:20])  # warm-up
        elapsed = dict.fromkeys(paths, 0.0)
        cpu = {name: dict.fromkeys(pids, 0.0) for name in paths}
        step = -(-args.messages // BATCHES)
        for begin in range(0, args.messages, step):
            for name, client in clients.items():
                before = {who: cpu_seconds(pid) for who, pid in pids.items()}
                elapsed[name] += send(client, messages[begin : begin + step])
                for who, pid in pids.items():
                    cpu[name][who] += cpu_seconds(pid) - before[who]
        for client in clients.values():
            client.quit()
    rates = {name: args.messages / seconds for name, seconds in elapsed.items()}
    print(
        f"smtp_submission: gateway {rates['gateway']:.0f} msg/s, "
        f"direct {rates['direct']:.0f} msg/s, "
        f"ratio {rates['gateway'] / rates['direct']:.2f} (target >= {TARGET})"
    )
    for name in paths:
        shares = ", ".join(
            f"{who} {seconds / args.messages * 1000:.1f}" for who, seconds in cpu[name].items()
        )
        print(f"  CPU ms per message, {name} path: {shares}")


if __name__ == "__main__":
    main()
