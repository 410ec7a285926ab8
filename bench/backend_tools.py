"""The operator's tool access (`Backend.tools`): list every message of a 2,000-message
folder with its flags, date, size and digest (so every message's bytes are read), for
each kind of backend, against the direct path.

The mock operator (one process) holds the same N clinical messages (default 2,000) in
folder ``HistoricTwin`` of claire.martin's BAL on its modern platform and in jean.dupont's
historic INBOX. This process builds the gateway's backends as `lps-gateway serve` would
and times, per path, one whole read of the folder (median of ``--runs``):

  modern, tools: `ImapSmtpBackend.tools(bal).messages(folder)` (the client codec, master
      login, UID FETCH in batches, a SHA-256 per message);
  modern, direct: a minimal raw IMAP client on the mock's IMAP, master login, one
      ``UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])`` and a SHA-256 per
      message (the floor: no parsing beyond framing);
  historic, tools: `LegacyWsBackend.tools(bal).messages("INBOX")` over the web services
      (searchMessages pages, each message rebuilt, attachments downloaded), cold (the first
      read: nothing cached) and warm;
  historic, direct: the historic platform's own IMAP, as the modern direct path, when the
      mock serves it (``historic_imap_port`` in its announcement), else the web services'
      searchMessages alone (listing only: the services give no message bytes).

Prints a table (seconds, messages/s, ratio to the kind's direct path) and checks that
each path found N messages (the run fails otherwise).

Run: ``.venv/bin/python bench/backend_tools.py [--messages 2000] [--runs 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _imap_client import RawImap
from _stack import BAL, HISTORIC_BAL, HISTORIC_TWIN, Stack

from delegation.db import create_engine
from gateway.backends.kinds import Backends
from gateway.backends.legacy_ws.client import LegacyWsClient
from gateway.db import migrate_gateway
from gateway.settings import BackendSettings


class BenchFailure(RuntimeError):
    """A path that did not read what the benchmark asked for."""


def raw_direct(port: int, user: str, password: str, bal: str, folder: str) -> int:
    client = RawImap("127.0.0.1", port, timeout=300)
    try:
        client.login_plain(bal, user, password)
        client.command(f'EXAMINE "{folder}"')
        bodies: list[bytes] = []
        client.command("UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])", bodies)
        digests = {hashlib.sha256(body).hexdigest() for body in bodies}
        return len(bodies) if digests else 0
    finally:
        client.close()


async def timed(what: Callable[[], Awaitable[int]], expected: int) -> float:
    began = time.perf_counter()
    found = await what()
    seconds = time.perf_counter() - began
    if found != expected:
        raise BenchFailure(f"expected {expected} messages, found {found}")
    return seconds


async def run(stack: Stack, messages: int, runs: int) -> list[tuple[str, float, str]]:
    info = stack.mock_info
    user, password = info["master_user"], info["master_password"]
    modern = BackendSettings(
        imap_port=info["imap_port"],
        smtp_port=info["smtp_port"],
        imap_tls="none",
        smtp_tls="none",
        master_user=user,
        master_password=password,
        reply_timeout=300,
    )
    ws_url = f"{info['http_url']}/mss-msg-services/services"
    historic = BackendSettings(
        kind="legacy_ws",
        ws_url=ws_url,
        master_user=user,
        master_password=password,
        numhomologation="LPS-GATEWAY-BENCH",
        reply_timeout=300,
    )
    configured = {"modern": modern, "historic": historic}
    historic_port = info.get("historic_imap_port")
    if historic_port:
        configured["historic-imap"] = historic.model_copy(
            update={"historic_imap": True, "imap_port": historic_port, "imap_tls": "none"}
        )
    with tempfile.TemporaryDirectory(prefix="lps-bench-tools-") as data:
        url = f"sqlite+aiosqlite:///{data}/gateway.db"
        await migrate_gateway(url)
        engine = create_engine(url)
        backends = Backends(configured, engine)
        try:
            return await _paths(backends, info, messages, runs, historic_port, ws_url)
        finally:
            await backends.aclose()
            await engine.dispose()


async def _paths(
    backends: Backends,
    info: dict[str, object],
    messages: int,
    runs: int,
    historic_port: object,
    ws_url: str,
) -> list[tuple[str, float, str]]:
    user, password = str(info["master_user"]), str(info["master_password"])

    async def through(name: str, bal: str, folder: str) -> int:
        access = await backends.by_name[name].tools(bal)
        try:
            return len(await access.messages(folder))
        finally:
            await access.aclose()

    def direct(port: object, bal: str, folder: str) -> Callable[[], Awaitable[int]]:
        return lambda: asyncio.to_thread(raw_direct, int(str(port)), user, password, bal, folder)

    async def search_only() -> int:
        client = LegacyWsClient(
            ws_url, user=user, password=password, numhomologation="LPS-BENCH", timeout=300
        )
        try:
            return len(await client.search_messages(HISTORIC_BAL, 2, max_messages=100_000))
        finally:
            await client.aclose()

    async def median(what: Callable[[], Awaitable[int]]) -> float:
        return statistics.median([await timed(what, messages) for _ in range(runs)])

    rows: list[tuple[str, float, str]] = []
    modern_direct = await median(direct(info["imap_port"], BAL, HISTORIC_TWIN))
    rows.append(("modern, direct IMAP", modern_direct, "modern"))
    rows.append(
        (
            "modern, tools",
            await median(lambda: through("modern", BAL, HISTORIC_TWIN)),
            "modern",
        )
    )
    if historic_port:
        rows.append(
            (
                "historic, direct IMAP",
                await median(direct(historic_port, HISTORIC_BAL, "INBOX")),
                "historic",
            )
        )
        rows.append(
            (
                "historic, tools over its IMAP",
                await median(lambda: through("historic-imap", HISTORIC_BAL, "INBOX")),
                "historic",
            )
        )
    else:
        rows.append(("historic, direct searchMessages", await median(search_only), "historic"))
    cold = await timed(lambda: through("historic", HISTORIC_BAL, "INBOX"), messages)
    rows.append(("historic, tools over web services, cold", cold, "historic"))
    warm = await median(lambda: through("historic", HISTORIC_BAL, "INBOX"))
    rows.append(("historic, tools over web services, warm", warm, "historic"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    began = time.perf_counter()
    with Stack(historic=args.messages) as stack:
        rows = asyncio.run(run(stack, args.messages, args.runs))
    floors = {kind: seconds for what, seconds, kind in rows if "direct" in what}
    print(f"backend tool access: list + read {args.messages} messages (median of {args.runs})")
    print(f"  {'path':44} {'seconds':>8} {'msg/s':>8} {'ratio':>6}")
    for what, seconds, kind in rows:
        ratio = floors[kind] / seconds if seconds else 0.0
        print(f"  {what:44} {seconds:8.2f} {args.messages / seconds:8.0f} {ratio:6.2f}")
    print("  (ratio: the direct path's time over this path's; 1.0 = as fast as direct)")
    print(f"  (whole benchmark {time.perf_counter() - began:.1f} s)")


if __name__ == "__main__":
    main()
