"""Gateway SMTP submission throughput: messages through the gateway vs the backend directly.

The peer is a private Postfix started by the benchmark (Debian's package, installed first
when missing and possible, see _postfix.py: its own configuration and queue, every
message queued then discarded), authenticating through a private Dovecot's auth service:
the gateway logs in to it with its master login (SASL PLAIN, authzid = the BAL), the
direct client with the BAL's password. Where Postfix cannot be had (not root, no apt),
or with ``--peer mock``, the mock operator's submission server instead; the first line
says which. One smtplib client per path logs in (through the gateway ``AUTH XOAUTH2``
with a PSC token, user = the BAL) and sends N messages of 50 KiB (default 1,000) one after
the other on that connection: MAIL, RCPT, DATA, each waiting for its reply (through the
gateway, 250 comes only once the backend accepted the message). The messages follow the
MSSanté rules the gateway checks (``From:`` = the sending BAL, ``X-MSS-NIL``; no CDA, so
no X-MSS-CODECDA/INS), from claire.martin to luc.durand. After a warm-up the two paths
take turns in batches (so that a passing load on the machine hits both alike). Prints
``smtp_submission: gateway X msg/s, direct Y msg/s, ratio Z (target 0.8)``, and the CPU
milliseconds per message of the gateway and of the peer (Postfix and Dovecot: every
process of each) on each path.

Run: ``.venv/bin/python bench/gateway_smtp.py [--messages 1000] [--size 51200]
[--peer postfix|mock] [--workers N]`` (``--workers 1`` with ``LPS_BENCH_PROFILE=DIR`` for a
profile of the gateway's work).
"""

from __future__ import annotations

import argparse
import functools
import smtplib
import sys
import time
from email.utils import formatdate
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _postfix import ensure_postfix
from _stack import BAL, DOVECOT_BAL_PASSWORD, Costs, Endpoints, Stack

TARGET = 0.8
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


def connect(endpoint: Endpoints, token: str | None) -> smtplib.SMTP:
    """A session logged in as `BAL`: XOAUTH2 with `token`, else PLAIN with its password."""
    client = smtplib.SMTP(endpoint.host, endpoint.smtp_port, local_hostname="bench-lps", timeout=60)
    client.ehlo()
    if token is None:
        client.login(BAL, DOVECOT_BAL_PASSWORD)
        return client
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
    parser.add_argument("--peer", choices=["postfix", "mock"], default="postfix")
    parser.add_argument(
        "--workers", type=int, help="the gateway's [server] workers (default: one per core)"
    )
    args = parser.parse_args()
    peer = args.peer
    if peer == "postfix" and (why := ensure_postfix()) is not None:
        print(f"  Postfix unavailable ({why}): the mock's submission server instead")
        peer = "mock"
    print(
        f"gateway_smtp: {args.messages} messages of {args.size // 1024} KiB, one connection "
        f"per path, plaintext loopback"
    )
    messages = [message(i, args.size) for i in range(args.messages)]
    postfix = peer == "postfix"
    stack = Stack(peer="dovecot" if postfix else "mock", submission=postfix, workers=args.workers)
    with stack:
        print(
            f"  (peer: {stack.peer_label()}; gateway workers: {stack.gateway.workers}; "
            f"{stack.cpus_label()})"
        )
        token = stack.token()
        paths = {"gateway": stack.gateway, "direct": stack.direct}
        groups = {"gateway": [stack.gateway.pid], "mock": [stack.mock.pid]}
        if postfix:
            assert stack.postfix is not None
            assert stack.postfix.master_pid is not None
            groups = {
                "gateway": [stack.gateway.pid],
                "postfix": [stack.postfix.master_pid],
                "dovecot": [stack.dovecot.master_pid],
            }
        costs = Costs(groups)
        clients = {
            "gateway": connect(stack.gateway, token),
            "direct": connect(stack.direct, None if postfix else token),
        }
        for client in clients.values():
            send(client, messages[:20])  # warm-up
        elapsed = dict.fromkeys(paths, 0.0)
        cpu = {name: dict.fromkeys(groups, 0.0) for name in paths}
        step = -(-args.messages // BATCHES)
        for begin in range(0, args.messages, step):
            for name, client in clients.items():
                seconds, spent = costs.measure(
                    functools.partial(send, client, messages[begin : begin + step])
                )
                elapsed[name] += seconds
                for who, value in spent.items():
                    cpu[name][who] += value
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
            f"{who} {seconds / args.messages * 1000:.2f}" for who, seconds in cpu[name].items()
        )
        print(f"  CPU ms per message, {name} path: {shares}")


if __name__ == "__main__":
    main()
