"""Benchmark helper: a mock operator and a gateway in front of it, each in its own process.

The benchmarks drive both from the outside with their own clients, so that the client's
work is not measured in the servers' event loops, and the gateway's resident memory can be
read alone. Two server roles, each printing one JSON line on stdout once it listens:

  ``python bench/_stack.py mock --data DIR [--big N] [--historic N]``
      the mock operator (plaintext allowed on loopback, no failure delay), with N messages
      of 1 MiB in folder ``Big`` of claire.martin's BAL; with ``--historic N``, the INBOX of
      jean.dupont's historic BAL holds exactly N clinical messages of 1-3 KB
      (`clinical_message`, the seeded ones removed first) and folder ``HistoricTwin`` of
      claire.martin's modern BAL holds the same N messages with the same flags, in the same
      (date) order;
      With ``--migration K --migration-messages N`` (`migration_bals`): K historic BAL of
      N clinical messages each (INBOX), K of N on the modern platform, and K empty modern
      BAL for a direct copy to land in;
  ``python bench/_stack.py gateway --data DIR --mock JSON [--migration JSON] [--database URL]
  [--proxy-from CIDR]``
      the gateway, its own registry seeded with the default personas, the mock's modern
      platform as its default backend (master login, plaintext on loopback) and the mock's
      historic web services as backend ``historic`` (``legacy_ws``, master credentials) for
      the historic personas' BAL (jean.dupont@, marie.petit@). With ``--migration``
      (``{"bals": K, "dovecot": {"host", "port"} or null}``): the migration BAL in its
      registry, the historic platform's own IMAP for the tools, provisioning on the
      modern platform, and a Dovecot as backend ``dovecot`` (master login). With
      ``--database``, the registry is that database (PostgreSQL, which several nodes share)
      instead of SQLite in DIR; with ``--proxy-from CIDR``, IMAP and SMTP connections
      from there start with a PROXY protocol header (a load balancer's).

With ``--backend JSON``, the gateway's default backend (``modern``) is that one instead
of the mock's platform: a private Dovecot, and a Postfix for submission (``Stack(peer=
"dovecot", submission=True)``); ``--settings JSON`` is laid over its settings (a key it
does not know stops it: `GatewayRefused`).

`Stack` starts both (with ``nodes=N``, N gateway nodes, one after the other so that the
first migrates the database; ``database_url`` names their shared registry), and with
``peer="dovecot"`` first a private Dovecot (tests/dovecot.py's configuration, the
limits of `dovecot_limits` appended: user `BAL` with its own password for the direct
path, the gateway's master login), which becomes `Stack.direct`; it cleans up
(processes, Dovecot, Postfix and temporary directories). With ``LPS_BENCH_PROFILE=DIR``
in the environment, each server process runs under cProfile and writes
``DIR/mock.prof`` and ``DIR/gateway.prof`` (``gateway-2.prof``... for other nodes) when
stopped (read them with pstats; ``LPS_BENCH_PROFILE_CLOCK=cpu``: in CPU time, not wall
time): the gateway's own process only, so with several workers
that profile is the supervisor's; profile the gateway's work with ``workers=1``.

The gateway runs with `[server] workers` unset unless the bench says (``workers=``):
one worker per core, as a node deploys it (a single process on one core);
`Endpoints.workers` says how many it runs.

With ``LPS_BENCH_GATEWAY_CPUS=LIST`` (``1``, ``2-3``, ``2,3``), the gateway runs on those
CPUs only and everything else (the peer, the mock, the benchmark and its clients, on
both paths) on the others: the gateway on a node of its own, as operators deploy it,
rather than sharing the peer's cores. Its default worker count follows (one per CPU it
may use). Every benchmark built on `Stack` takes it; each prints which split it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import importlib
import json
import logging
import os
import quopri
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

T = TypeVar("T")

BAL = "claire.martin@medecin.mssante.fr"
PERSONA = "dr-martin"
BIG_FOLDER = "Big"
HISTORIC_BAL = "jean.dupont@medecin.mssante.fr"
HISTORIC_PERSONA = "dr-dupont"
HISTORIC_TWIN = "HistoricTwin"  # claire.martin's modern folder holding the same messages
MIGRATION_DOMAIN = "medecin.mssante.fr"


def migration_bals(count: int) -> dict[str, list[str]]:
    """The BAL of the migration benchmark, `count` of each role: ``historic`` (on the
    historic platform, the messages), ``copy`` (empty on the modern platform: where the
    direct copy of ``historic`` lands), ``modern`` (on the modern platform, the
    messages), ``dovecot`` (Dovecot users only: where the direct copy of ``modern``
    lands; the gateway copies ``modern`` to the Dovecot users of the same name)."""
    roles = {"historic": "historique", "copy": "copie", "modern": "moderne", "dovecot": "dovecot"}
    return {
        role: [f"migration.{word}{i}@{MIGRATION_DOMAIN}" for i in range(count)]
        for role, word in roles.items()
    }


def migration_persons(count: int) -> list[dict[str, Any]]:
    """The registry's persons of the migration BAL that hold messages, each on the
    backend holding it (the gateway's registry; the mock's, for provisioning)."""
    names = migration_bals(count)
    return [
        {
            "idnat": migration_idnat(role, index),
            "given_name": role,
            "family_name": str(index),
            "bal": bal,
            "backend": "historic" if role == "historic" else "modern",
        }
        for role in ("historic", "modern")
        for index, bal in enumerate(names[role])
    ]


def migration_idnat(role: str, index: int) -> str:
    """A distinct national id per migration BAL (the registry wants a holder)."""
    return f"8997009{'hcmd'.index(role[0])}{index:04d}"


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit, and as root both to 262,144 (within the
    kernel's fs.nr_open) first; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < 1 << 18:
        with contextlib.suppress(ValueError, OSError):
            ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
            wanted = min(1 << 18, ceiling)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            soft, hard = wanted, wanted
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (a gateway's workers, Dovecot's imap processes)."""
    from tests.dovecot import descendants

    return [pid, *descendants(pid)]


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its descendants, those already exited and reaped included
    (their time is in their parent's cutime/cstime): Dovecot's short-lived imap and auth
    processes, a gateway's workers."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int:
    """Proportional set size of `pid` and its descendants, KiB (/proc/PID/smaps_rollup):
    pages shared between a parent and its forked workers counted once in all."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


class Costs:
    """The CPU seconds groups of processes spend while some work runs (the nodes of a
    cluster summed, say); each process counted with its descendants (`tree_cpu_seconds`)."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids

    def totals(self) -> dict[str, float]:
        return {who: sum(tree_cpu_seconds(p) for p in pids) for who, pids in self.pids.items()}

    def measure(self, work: Callable[[], T]) -> tuple[T, dict[str, float]]:
        before = self.totals()
        result = work()
        after = self.totals()
        return result, {who: after[who] - before[who] for who in self.pids}


def xoauth2(user: str, token: str) -> str:
    """The base64 SASL XOAUTH2 initial response."""
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def sasl_plain(user: str, password: str, authzid: str = "") -> str:
    """The base64 SASL PLAIN initial response."""
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


# -- the Dovecot peer ----------------------------------------------------------------------

DOVECOT_BAL_PASSWORD = "bench-bal-secret"  # the BAL's own password on the bench's Dovecot


def dovecot_limits(sessions: int, auth_port: int | None = None) -> str:
    """Dovecot settings (appended to tests/dovecot.py's) for `sessions` connections of one
    user from one address at once: process and client limits, the per user+address cap,
    the login processes in high-performance mode (each serves many connections, as on a
    platform); beyond a few hundred sessions, several sessions per imap process (all
    users share one uid; processes kept, ``service_count = 0``) so that 10,000 are not
    10,000 processes. With `auth_port`, the auth service also listens there (Postfix's
    SASL)."""
    clients = 2 * sessions + 1000
    per_process = 1 if sessions <= 500 else 50
    processes = max(256, sessions // per_process + 64)
    auth = (
        f"""  inet_listener auth-bench {{
    address = 127.0.0.1
    port = {auth_port}
  }}
"""
        if auth_port
        else ""
    )
    return f"""# the benchmark's limits (bench/_stack.py)
default_process_limit = {processes}
default_client_limit = {clients}
default_vsz_limit = 1G
mail_max_userip_connections = {clients}
service imap-login {{
  service_count = 0
  process_min_avail = 2
  process_limit = 16
  client_limit = {clients}
}}
service imap {{
  process_limit = {processes}
  client_limit = {per_process}
  service_count = {0 if per_process > 1 else 1}
}}
service anvil {{
  client_limit = {clients + 100}
}}
service auth {{
  client_limit = {clients + 100}
{auth}}}
"""


def start_bench_dovecot(sessions: int = 200, auth_port: int | None = None) -> Any:
    """A private Dovecot (tests/dovecot.py) with user `BAL` (its own password, for the
    direct path) and the gateway's master login, sized for `sessions`."""
    from tests.dovecot import MASTER, MASTER_PW, start_dovecot

    return start_dovecot(
        user=BAL,
        password=DOVECOT_BAL_PASSWORD,
        master_user=MASTER,
        master_password=MASTER_PW,
        extra_config=dovecot_limits(sessions, auth_port),
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` laid over `base`, sections merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# -- the bench side ------------------------------------------------------------------------


@dataclasses.dataclass
class Endpoints:
    host: str
    imap_port: int
    smtp_port: int
    pid: int
    http_url: str = ""
    workers: int = 1  # the gateway's worker processes (`[server] workers`, as it counted them)


class GatewayRefused(RuntimeError):
    """The gateway did not start with the extra settings given (a key it does not know)."""


class Stack:
    """Mock operator and gateway subprocesses, and the peer behind the gateway (the mock or
    a private Dovecot); use as a context manager."""

    def __init__(
        self,
        *,
        big: int = 0,
        historic: int = 0,
        migration: int = 0,
        migration_messages: int = 0,
        dovecot: dict[str, Any] | None = None,
        nodes: int = 1,
        database_url: str | None = None,
        proxy_from: str | None = None,
        peer: str = "mock",
        submission: bool = False,
        sessions: int = 200,
        settings: dict[str, Any] | None = None,
        workers: int | None = None,
    ) -> None:
        """`peer`: the gateway's default backend and the direct path, ``mock`` (the mock
        operator's modern platform) or ``dovecot`` (a private Dovecot sized for
        `sessions` connections, master login; with `submission`, a private Postfix
        authenticating through it as its submission server, see _postfix.py).
        `settings`: laid over the gateway's settings (`merge`; ``backends.modern`` is the
        default backend), an unknown key stopping the gateway (`GatewayRefused`).
        `workers`: the gateway's `[server] workers`; by default none given, so the gateway
        runs as operators deploy it: one worker per core (a single process on one core)."""
        self.peer = peer
        self.submission = submission
        self.sessions = sessions
        self.settings = settings or {}
        if workers is not None:
            self.settings = merge(self.settings, {"server": {"workers": workers}})
        self.dovecot: Any = None
        self.postfix: Any = None
        self.big = big
        self.historic = historic
        self.migration = migration
        self.migration_messages = migration_messages
        self.migration_dovecot = dovecot  # the migration's target (self.dovecot: the peer)
        self.node_count = nodes
        self.database_url = database_url
        self.proxy_from = proxy_from
        self.nodes: list[Endpoints] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="lps-bench-"))
        self._processes: list[subprocess.Popen[str]] = []
        self.mock_info: dict[str, Any] = {}
        self._gateway: Endpoints | None = None
        self._direct: Endpoints | None = None
        self._mock: Endpoints | None = None
        self.gateway_cpus = split_cpus()
        self._affinity: set[int] | None = None

    @property
    def gateway(self) -> Endpoints:
        """The gateway's listeners and process."""
        assert self._gateway is not None, "not started"
        return self._gateway

    @property
    def gateway_data(self) -> Path:
        """The gateway's data directory (its admin secret and URL are there)."""
        return self._tmp / "gateway"

    @property
    def direct(self) -> Endpoints:
        """The mock operator's own listeners and process (the direct path)."""
        assert self._direct is not None, "not started"
        return self._direct

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def mock(self) -> Endpoints:
        """The mock operator's listeners (PSC, its platforms)."""
        assert self._mock is not None, "not started"
        return self._mock

    def login_command(self, endpoint: Endpoints, token: str) -> str:
        """The IMAP command logging in as `BAL` on `endpoint`: XOAUTH2 with the PSC token
        (SASL-IR) on the gateway and the mock, PLAIN with the BAL's password on Dovecot."""
        if self.dovecot is not None and endpoint is self._direct:
            return "AUTHENTICATE PLAIN " + sasl_plain(BAL, DOVECOT_BAL_PASSWORD)
        return "AUTHENTICATE XOAUTH2 " + xoauth2(BAL, token)

    def peer_label(self) -> str:
        if self.dovecot is None:
            return "mock operator"
        return "Dovecot" + (" + Postfix" if self.postfix is not None else "")

    def _start_peer(self) -> dict[str, Any] | None:
        """The Dovecot (and Postfix) peer; the gateway's default backend settings."""
        if self.peer == "mock":
            return None
        from tests.dovecot import MASTER, MASTER_PW

        auth_port = free_port() if self.submission else None
        self.dovecot = start_bench_dovecot(self.sessions, auth_port)
        smtp_port = 0
        if self.submission:
            from _postfix import start_postfix

            assert auth_port is not None
            self.postfix = start_postfix(auth_port)
            smtp_port = self.postfix.port
        return {
            "imap_host": self.dovecot.host,
            "imap_port": self.dovecot.port,
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_port,
            "imap_tls": "none",
            "smtp_tls": "none",
            "login": "master",
            "master_user": MASTER,
            "master_password": MASTER_PW,
            "connect_timeout": 10,
            "reply_timeout": 60,
        }

    def cpus_label(self) -> str:
        """Which CPUs the gateway and the rest ran on (printed by the benchmarks)."""
        if not self.gateway_cpus:
            return "all processes share every CPU"
        others = sorted((self._affinity or set()) - self.gateway_cpus)
        return f"gateway on CPU {_cpu_list(self.gateway_cpus)}, the rest on {_cpu_list(others)}"

    def start(self) -> None:
        raise_fd_limit()
        if self.gateway_cpus:
            self._affinity = os.sched_getaffinity(0)
            others = self._affinity - self.gateway_cpus
            if not others or not self.gateway_cpus <= self._affinity:
                raise SystemExit(
                    f"LPS_BENCH_GATEWAY_CPUS={_cpu_list(self.gateway_cpus)}: not a proper "
                    f"part of the CPUs this process may use ({_cpu_list(self._affinity)})"
                )
            os.sched_setaffinity(0, others)  # the peers and clients started from here
        backend = self._start_peer()
        args = ["mock", "--data", str(self._tmp / "mock"), "--big", str(self.big)]
        args += ["--historic", str(self.historic)]
        if self.migration:
            args += ["--migration", str(self.migration)]
            args += ["--migration-messages", str(self.migration_messages)]
        self.mock_info = self._spawn(args)
        self._mock = self._direct = Endpoints(
            "127.0.0.1",
            self.mock_info["imap_port"],
            self.mock_info["smtp_port"],
            self.mock_info["pid"],
            self.mock_info["http_url"],
        )
        if self.dovecot is not None:
            self._direct = Endpoints(
                self.dovecot.host,
                self.dovecot.port,
                self.postfix.port if self.postfix is not None else 0,
                self.dovecot.master_pid,
            )
        gateway = [
            "gateway",
            "--data",
            str(self.gateway_data),
            "--mock",
            json.dumps(self.mock_info),
        ]
        if self.migration:
            migration = {"bals": self.migration, "dovecot": self.migration_dovecot}
            gateway += ["--migration", json.dumps(migration)]
        if self.database_url:
            gateway += ["--database", self.database_url]
        if self.proxy_from:
            gateway += ["--proxy-from", self.proxy_from]
        if backend is not None:
            gateway += ["--backend", json.dumps(backend)]
        if self.settings:
            gateway += ["--settings", json.dumps(self.settings)]
        for index in range(self.node_count):
            if index:
                gateway[2] = str(self._tmp / f"gateway-{index + 1}")
            info = self._spawn(gateway)
            if os.environ.get("LPS_BENCH_PROFILE") and info.get("workers", 1) > 1:
                print(
                    "_stack: LPS_BENCH_PROFILE profiles the gateway's supervisor only, not its "
                    f"{info['workers']} workers: run with --workers 1 to profile the gateway",
                    file=sys.stderr,
                )
            self.nodes.append(
                Endpoints(
                    "127.0.0.1",
                    info["imap_port"],
                    info["smtp_port"],
                    info["pid"],
                    info["http_url"],
                    info.get("workers", 1),
                )
            )
        self._gateway = self.nodes[0]

    def _spawn(self, args: list[str]) -> dict[str, Any]:
        profile = os.environ.get("LPS_BENCH_PROFILE")
        if profile:  # a directory: each server process writes ROLE.prof there on exit
            Path(profile).mkdir(parents=True, exist_ok=True)
            name = args[0] if not self.nodes else f"{args[0]}-{len(self.nodes) + 1}"
            args = [*args, "--profile", str(Path(profile) / f"{name}.prof")]
        env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("LPSGW_")}
        if args[0] == "gateway" and self.gateway_cpus:
            args = [*args, "--cpus", _cpu_list(self.gateway_cpus)]
        process = subprocess.Popen(
            [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env
        )
        self._processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            if args[0] == "gateway" and self.settings:
                raise GatewayRefused(f"gateway did not start (exit {process.wait(10)})")
            raise RuntimeError(f"{args[0]} did not start (exit {process.wait(10)})")
        info: dict[str, Any] = json.loads(line)
        return info

    def token(self, persona: str = PERSONA, lifetime: int = 3600) -> str:
        """A fresh PSC access token from the mock's test endpoint."""
        answer = httpx.post(
            f"{self.mock_info['http_url']}/_test/token",
            json={"persona": persona, "lifetime": lifetime},
            timeout=10,
        )
        answer.raise_for_status()
        value: str = answer.json()["access_token"]
        return value

    def close(self) -> None:
        try:
            self._close()
        finally:
            if self._affinity is not None:  # this (main) thread's, which start() narrowed
                os.sched_setaffinity(0, self._affinity)
                self._affinity = None

    def _close(self) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self._processes):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self._processes.clear()
        for server in (self.postfix, self.dovecot):
            if server is not None:
                server.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)


def split_cpus() -> set[int]:
    """The gateway's CPUs as ``LPS_BENCH_GATEWAY_CPUS`` says (empty: no split)."""
    return gateway_cpus(os.environ.get("LPS_BENCH_GATEWAY_CPUS", ""))


def gateway_cpus(text: str) -> set[int]:
    """The CPUs of ``LPS_BENCH_GATEWAY_CPUS`` (``1``, ``2-3``, ``0,2``); empty: no split."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        try:
            cpus.update(range(int(first), int(last or first) + 1))
        except ValueError:
            why = f"LPS_BENCH_GATEWAY_CPUS={text!r}: not a CPU list (1, 2-3, 0,2)"
            raise SystemExit(why) from None
    return cpus


def _cpu_list(cpus: set[int] | list[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


class AsyncImap:
    """A small asyncio IMAP client for many concurrent sessions (no literal parsing: the
    commands it sends get no literals back)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.counter = 0

    @classmethod
    async def connect(cls, host: str, port: int) -> AsyncImap:
        reader, writer = await asyncio.open_connection(host, port, limit=64 * 1024)
        client = cls(reader, writer)
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            writer.close()
            raise RuntimeError(f"greeting: {greeting!r}")
        return client

    async def command(self, text: str) -> bytes:
        self.counter += 1
        tag = f"A{self.counter}".encode()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if line.startswith(tag + b" "):
                if not line[len(tag) + 1 :].startswith(b"OK"):
                    raise RuntimeError(f"{text.split()[0]} failed: {line!r}")
                return line

    async def idle(self) -> None:
        self.counter += 1
        self.writer.write(f"A{self.counter} IDLE\r\n".encode())
        line = await self.reader.readline()
        if not line.startswith(b"+"):
            raise RuntimeError(f"IDLE refused: {line!r}")

    def close(self) -> None:
        self.writer.close()


# -- the server side -----------------------------------------------------------------------


def big_message(index: int, size: int = 1 << 20) -> bytes:
    body = (b"A" * 76 + b"\r\n") * (size // 78)
    return (
        b"From: imagerie@ch.mssante.fr\r\nTo: "
        + BAL.encode()
        + b"\r\nSubject: image "
        + str(index).encode()
        + b"\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body
    )


_PATIENTS = (
    ("Mme", "GARNIER", "Louise", "1955"),
    ("M.", "LEFEBVRE", "André", "1948"),
    ("Mme", "BONNET", "Élodie", "1987"),
    ("M.", "FAURE", "Jérôme", "1962"),
    ("Mme", "CHEVALIER", "Françoise", "1941"),
    ("M.", "MERCIER", "Noël", "1979"),
    ("Mme", "LAMBERT", "Inès", "2001"),
    ("M.", "GIRARD", "Stéphane", "1958"),
)
_SENDERS = (
    ("Laboratoire Biomed", "resultats@labo-biomed.mssante.fr"),
    ("CH de Villeneuve - Médecine interne", "medecine-interne@ch-villeneuve.mssante.fr"),
    ("Dr Hélène ROUX", "helene.roux@medecin.mssante.fr"),
    ("Centre d'imagerie Saint-Éloi", "imagerie@st-eloi.mssante.fr"),
    ("Dr François BLANC (cardiologie)", "francois.blanc@medecin.mssante.fr"),
    ("Cabinet infirmier des Lilas", "ide.lilas@infirmier.mssante.fr"),
)
_KINDS = (
    (
        "Résultats d'analyses",
        "Veuillez trouver les résultats du bilan sanguin prélevé le {day}.\n"
        "Hémoglobine : {hb} g/dL (N : 12-16). Leucocytes : {wbc} G/L.\n"
        "Créatinine : {creat} µmol/L, DFG estimé (CKD-EPI) : {dfg} mL/min/1,73 m².\n"
        "HbA1c : {hba1c} %. CRP : {crp} mg/L. TSH : {tsh} mUI/L.\n"
        "Ionogramme sans particularité. Bilan hépatique normal.",
    ),
    (
        "Compte rendu de consultation",
        "J'ai revu ce jour votre patient(e) en consultation de suivi.\n"
        "Motif : contrôle de l'hypertension artérielle et de la fonction rénale.\n"
        "Examen : PA {pas}/{pad} mmHg, FC {fc}/min, poids {kg} kg, auscultation normale.\n"
        "Conclusion : équilibre tensionnel satisfaisant ; poursuite du traitement par "
        "ramipril 5 mg et amlodipine 5 mg. Contrôle biologique dans trois mois.",
    ),
    (
        "Lettre de liaison à la sortie",
        "Votre patient(e) a été hospitalisé(e) du {day} au {day2} dans le service pour "
        "décompensation cardiaque.\nÉvolution favorable sous diurétiques intraveineux.\n"
        "Traitement de sortie : furosémide 40 mg le matin, bisoprolol 2,5 mg, "
        "apixaban 5 mg deux fois par jour.\nRendez-vous de cardiologie prévu à six "
        "semaines ; kinésithérapie de réadaptation à domicile.",
    ),
    (
        "Compte rendu d'imagerie",
        "Échographie abdominale du {day}.\nFoie de taille normale, homogène, sans "
        "lésion focale. Vésicule alithiasique. Voies biliaires non dilatées.\nReins de "
        "taille normale, sans dilatation des cavités. Pas d'épanchement.\nConclusion : "
        "examen sans anomalie significative.",
    ),
    (
        "Transmission infirmière",
        "Passage à domicile du {day} : pansement de l'ulcère de jambe refait, plaie "
        "propre, bourgeonnante, {cm} cm de grand axe.\nGlycémie capillaire à jeun : "
        "{gly} g/L. Pas de douleur. Observance du traitement correcte.\nProchain "
        "passage dans 48 heures.",
    ),
)
_FILLER = (
    "Je reste à votre disposition pour tout renseignement complémentaire.",
    "Le patient a été informé des résultats et de la conduite à tenir.",
    "Merci de me tenir informé de l'évolution clinique.",
    "Une copie de ce courrier a été remise au patient.",
    "Les antécédents notables sont une cholécystectomie en 2009 et une fracture du "
    "poignet droit en 2015 ; pas d'allergie médicamenteuse connue.",
    "Le traitement habituel comporte metformine 1000 mg matin et soir, atorvastatine "
    "20 mg le soir et lévothyroxine 75 µg le matin à jeun.",
    "La vaccination antigrippale de cette saison a été réalisée ; le rappel dTP est à jour.",
)
CLINICAL_BASE_DATE = dt.datetime(2025, 1, 6, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))


def _header_words(text: str) -> str:
    """RFC 2047 (B, UTF-8) encoded words for a non-ASCII header value, folded."""
    if text.isascii():
        return text
    data = text.encode()
    words = []
    while data:  # 45 octets of UTF-8 per word (<= 75 characters), not splitting a character
        cut = min(45, len(data))
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:
            cut -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(data[:cut]).decode()}?=")
        data = data[cut:]
    return "\r\n ".join(words)


def _address(name: str, address: str) -> str:
    return f"{_header_words(name)} <{address}>"


@dataclasses.dataclass(frozen=True)
class ClinicalMessage:
    raw: bytes
    flags: tuple[str, ...]  # IMAP flags
    date: dt.datetime


def clinical_message(index: int, recipient: tuple[str, str]) -> ClinicalMessage:
    """A deterministic French clinical message of 1-3 KB (quoted-printable UTF-8; one in 100
    with a small PDF) and its IMAP flags; message `index` is dated after `index - 1`."""
    rng = random.Random(index)
    civility, family, given, born = rng.choice(_PATIENTS)
    kind, template = rng.choice(_KINDS)
    sender = rng.choice(_SENDERS)
    when = CLINICAL_BASE_DATE + dt.timedelta(hours=3 * index, minutes=rng.randrange(180))
    day = (when - dt.timedelta(days=rng.randrange(1, 5))).strftime("%d/%m/%Y")
    text = template.format(
        day=day,
        day2=when.strftime("%d/%m/%Y"),
        hb=f"{rng.uniform(10, 16):.1f}".replace(".", ","),
        wbc=f"{rng.uniform(4, 11):.1f}".replace(".", ","),
        creat=rng.randrange(55, 140),
        dfg=rng.randrange(35, 110),
        hba1c=f"{rng.uniform(5.2, 8.9):.1f}".replace(".", ","),
        crp=rng.randrange(1, 40),
        tsh=f"{rng.uniform(0.5, 4.5):.2f}".replace(".", ","),
        pas=rng.randrange(115, 165),
        pad=rng.randrange(65, 95),
        fc=rng.randrange(55, 95),
        kg=rng.randrange(50, 110),
        cm=rng.randrange(2, 9),
        gly=f"{rng.uniform(0.8, 1.8):.2f}".replace(".", ","),
    )
    paragraphs = [rng.choice(_FILLER) for _ in range(rng.randrange(2, 12))]
    body = (
        f"Cher confrère,\n\nConcerne : {civility} {family} {given}, né(e) en {born}.\n\n"
        f"{text}\n\n" + "\n".join(paragraphs) + "\n\nBien confraternellement,\n"
        f"{sender[0]}\n"
    )
    encoded = quopri.encodestring(body.encode()).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    headers = [
        f"From: {_address(*sender)}",
        f"To: {_address(*recipient)}",
    ]
    if rng.random() < 0.2:
        headers.append(
            f"Cc: {_address('Secrétariat médical', 'secretariat@ch-villeneuve.mssante.fr')}"
        )
    headers += [
        f"Subject: {_header_words(f'{kind} — {civility} {family} {given}')}",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <bench.{index}.{when:%Y%m%d%H%M}@mock.mssante.fr>",
        "X-MSS-NIL: MOCK-LPS-0001",
        "MIME-Version: 1.0",
    ]
    text_part = (
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded
    )
    if index % 100 == 7:
        pdf = b"%PDF-1.4\n" + rng.randbytes(1500) + b"\n%%EOF\n"
        boundary = f"=_bench_{index}"
        headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
        b = boundary.encode()
        content = (
            b"--" + b + b"\r\n" + text_part + b"\r\n--" + b + b"\r\n"
            b'Content-Type: application/pdf; name="CR-' + family.encode() + b'.pdf"\r\n'
            b'Content-Disposition: attachment; filename="CR-' + family.encode() + b'.pdf"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(pdf).replace(b"\n", b"\r\n")
            + b"--"
            + b
            + b"--\r\n"
        )
        head = "\r\n".join(headers).encode() + b"\r\n\r\n"
    else:
        head = "\r\n".join(headers).encode() + b"\r\n"
        content = text_part
    seen = rng.random() < 0.7
    flags = (("\\Seen",) if seen else ()) + (("\\Flagged",) if rng.random() < 0.1 else ())
    return ClinicalMessage(head + content, flags, when)


async def _seed_historic_twin(mock: Any, count: int) -> dict[str, float]:
    """`count` clinical messages in jean.dupont's historic INBOX (emptied first, then one
    `deliver_many` transaction) and the same ones in claire.martin's modern folder
    `HISTORIC_TWIN` (pipelined appends); returns the seconds each side took."""
    from gateway.mss.historic_ws import INBOX
    from mock_operator.historic.store import Delivery, flags_from_imap

    assert mock.historic is not None
    assert mock.platform is not None
    recipient = ("Dr Jean DUPONT", HISTORIC_BAL)
    messages = [clinical_message(index, recipient) for index in range(count)]
    began = time.perf_counter()
    historic = mock.historic.store
    await historic.empty_folder(HISTORIC_BAL, INBOX)
    await historic.deliver_many(
        HISTORIC_BAL,
        [Delivery(m.raw, flags_from_imap(m.flags, INBOX), m.date) for m in messages],
        INBOX,
    )
    middle = time.perf_counter()
    await mock.platform.store(BAL).create_folder(HISTORIC_TWIN)
    for message in messages:
        await mock.platform.deliver(
            BAL, message.raw, folder=HISTORIC_TWIN, flags=message.flags, internal_date=message.date
        )
    return {"historic": middle - began, "modern": time.perf_counter() - middle}


async def _seed_migration(mock: Any, bals: int, messages: int) -> dict[str, float]:
    """The migration benchmark's BAL (`migration_bals`): each historic and modern one
    with the `messages` first clinical messages in INBOX (three hours apart from 2025:
    in the past, since Dovecot stores a future INTERNALDATE as now); the direct copy's
    targets
    empty; returns the seconds each platform's seeding took."""
    from gateway.mss.historic_ws import INBOX
    from mock_operator.historic.store import Delivery, flags_from_imap

    assert mock.historic is not None
    assert mock.platform is not None

    from delegation.seed import seed

    if mock.delegations is not None:  # who holds them, for the operator API's provisioning
        await seed(mock.delegations, migration_persons(bals))
    names = migration_bals(bals)
    historic = mock.historic.store
    began = time.perf_counter()
    for index, bal in enumerate(names["historic"]):
        await historic.ensure_account(bal, migration_idnat("historic", index), f"Histo {index}")
        batch = [clinical_message(n, ("Dr Migration", bal)) for n in range(messages)]
        await historic.deliver_many(
            bal, [Delivery(m.raw, flags_from_imap(m.flags, INBOX), m.date) for m in batch], INBOX
        )
    middle = time.perf_counter()
    for role in ("copy", "modern"):
        for index, bal in enumerate(names[role]):
            await mock.platform.ensure_mailbox(bal, migration_idnat(role, index), f"{role} {index}")
    for bal in names["modern"]:
        batch = [clinical_message(n, ("Dr Migration", bal)) for n in range(messages)]
        await mock.platform.deliver_many(bal, [(m.raw, m.flags, m.date) for m in batch])
    return {"migration historic": middle - began, "migration modern": time.perf_counter() - middle}


async def _serve_mock(
    data: Path, big: int, historic: int = 0, migration: int = 0, migration_messages: int = 0
) -> None:
    from gateway.runtime.lifecycle import run_until_signalled
    from gateway.settings import MockSettings
    from mock_operator.server import MockOperator

    settings = MockSettings(
        http_port=0,
        imap_port=0,
        smtp_port=0,
        historic_imap_port=0,
        auth_failure_delay=0,
        ciba_auto_approve_after=None,
        access_token_lifetime=3600,
    )
    mock = MockOperator(settings, data)

    async def announce() -> None:
        assert mock.platform is not None
        assert mock.master is not None
        if big:
            await mock.platform.store(BAL).create_folder(BIG_FOLDER)
            for index in range(big):
                await mock.platform.deliver(BAL, big_message(index), folder=BIG_FOLDER)
        seeding = await _seed_historic_twin(mock, historic) if historic else {}
        if migration:
            seeding |= await _seed_migration(mock, migration, migration_messages)
        info = {
            "pid": os.getpid(),
            "http_url": mock.http_url,
            "issuer": mock.issuer,
            "imap_port": mock.imap_port,
            "historic_imap_port": mock.historic_imap_port,
            "smtp_port": mock.smtp_port,
            "master_user": mock.master.user,
            "master_password": mock.master.password,
            "seeding": seeding,
        }
        print(json.dumps(info), flush=True)

    await run_until_signalled([mock], announce)


async def _serve_gateway(
    data: Path,
    mock: dict[str, Any],
    migration: dict[str, Any] | None = None,
    database_url: str | None = None,
    proxy_from: str | None = None,
    peer: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    from pydantic import ValidationError

    from delegation.seed import seed
    from gateway.runtime.lifecycle import run_until_signalled
    from gateway.server import Gateway
    from gateway.settings import BackendSettings, Settings
    from mock_operator.personas import default_personas

    personas = default_personas()
    historic = BackendSettings(
        kind="legacy_ws",
        ws_url=f"{mock['http_url']}/mss-msg-services/services",
        master_user=mock["master_user"],
        master_password=mock["master_password"],
        numhomologation="LPS-GATEWAY-BENCH",
        connect_timeout=10,
        reply_timeout=60,
    )
    backend = BackendSettings(
        imap_port=mock["imap_port"],
        smtp_port=mock["smtp_port"],
        imap_tls="none",
        smtp_tls="none",
        master_user=mock["master_user"],
        master_password=mock["master_password"],
        connect_timeout=10,
        reply_timeout=60,
    )
    if peer is not None:  # the default backend is a Dovecot (and Postfix)
        # Without Postfix, a listening SMTP port all the same (the mock's: no bench sends
        # through it, its master login is not Dovecot's)
        backend = BackendSettings.model_validate(
            {**peer, "smtp_port": peer["smtp_port"] or mock["smtp_port"]}
        )
    backends = {"modern": backend, "historic": historic}
    seeded: list[dict[str, Any]] = [dataclasses.asdict(p) for p in personas]
    if migration is not None:
        seeded += _migration_setup(mock, migration, backends)
    extra = dict(extra or {})
    values: dict[str, Any] = dict(
        data_dir=data,
        database_url=database_url,
        log={"level": "WARNING"},
        http={"port": 0},
        # One load generator on loopback, one person: the caps of a real node would stop it.
        imap={
            "port": 0,
            "auth_failure_delay": 0,
            "max_sessions_per_person": 1_000_000,
            "max_preauth_per_address": 100_000,
            "proxy_protocol_from": [proxy_from] if proxy_from else [],
        },
        smtp={
            "port": 0,
            "auth_failure_delay": 0,
            "max_sessions_per_person": 1_000_000,
            "max_preauth_per_address": 100_000,
            "proxy_protocol_from": [proxy_from] if proxy_from else [],
        },
        limits={"exempt_networks": ["127.0.0.0/8", "::1/128"]},
        psc={"issuer": mock["issuer"], "client_ids": ["lps-demo"]},
        backends=backends,
        routing={
            "default": "modern",
            "mailboxes": {
                p.bal: "historic" for p in personas if p.platform == "historic" and p.bal
            },
        },
    )
    try:
        for name, keys in extra.pop("backends", {}).items():  # validated: unknown keys refused
            current = backends[name].model_dump(exclude_unset=True)
            backends[name] = BackendSettings.model_validate({**current, **keys})
        settings = Settings(**merge(values, extra))
    except ValidationError as exc:  # GatewayRefused on the bench's side: say which key
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"gateway: settings refused: {problems}", file=sys.stderr)
        raise SystemExit(3) from None
    gateway = Gateway(settings)
    registry = await gateway.open_registry()
    await seed(registry, seeded)
    node: Any = gateway
    server: Any = vars(settings).get("server")  # `[server]`: not in every build
    workers = server.count() if server is not None else 1
    if workers > 1:
        # As `lps-gateway serve` runs the node: its supervisor, the workers (one per core
        # unless `[server] workers` says otherwise) this process's children
        supervisor = importlib.import_module("gateway.workers.supervisor")
        node = supervisor.Node(settings)

    def announce() -> None:
        if node is gateway:
            assert gateway.imap is not None
            assert gateway.smtp is not None
            ports = {"imap": gateway.imap.port, "smtp": gateway.smtp.port}
            http_url = f"http://127.0.0.1:{gateway.http_port}"
        else:
            ports = {"imap": node.ports["imap.port"], "smtp": node.ports["smtp.port"]}
            http_url = node.http_url
        info = {
            "pid": os.getpid(),
            "imap_port": ports["imap"],
            "smtp_port": ports["smtp"],
            "http_url": http_url,
            "workers": workers,
        }
        print(json.dumps(info), flush=True)

    await run_until_signalled([node], announce)


def _migration_setup(
    mock: dict[str, Any], migration: dict[str, Any], backends: dict[str, Any]
) -> list[dict[str, Any]]:
    """Backends and registry entries of the migration benchmark: the historic platform's
    tools over its own IMAP, provisioning on the modern platform, a Dovecot (when given);
    returns the persons to seed (each migration BAL on its backend)."""
    from pydantic import SecretStr

    historic, modern = backends["historic"], backends["modern"]
    backends["historic"] = historic.model_copy(
        update={
            "historic_imap": True,
            "imap_port": mock["historic_imap_port"],
            "imap_tls": "none",
            "smtp_tls": "none",
        }
    )
    backends["modern"] = modern.model_copy(
        update={"provision_url": f"{mock['http_url']}/operator/mailboxes"}
    )
    dovecot = migration.get("dovecot")
    if dovecot:
        from gateway.settings import BackendSettings
        from tests.dovecot import MASTER, MASTER_PW

        backends["dovecot"] = BackendSettings(
            imap_host=dovecot["host"],
            imap_port=dovecot["port"],
            imap_tls="none",
            smtp_tls="none",
            login="master",
            master_user=MASTER,
            master_password=SecretStr(MASTER_PW),
            connect_timeout=10,
            reply_timeout=60,
        )
    return migration_persons(int(migration["bals"]))


def main() -> None:
    parser = argparse.ArgumentParser(description="a benchmark server process")
    parser.add_argument("role", choices=["mock", "gateway"])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--big", type=int, default=0)
    parser.add_argument("--historic", type=int, default=0)
    parser.add_argument("--migration", help="mock: K BAL each; gateway: JSON (migration)")
    parser.add_argument("--migration-messages", type=int, default=0)
    parser.add_argument("--mock", help="the mock's JSON line (gateway role)")
    parser.add_argument("--database", help="the registry's URL (gateway role; default SQLite)")
    parser.add_argument(
        "--proxy-from", help="a load balancer's address (CIDR) the PROXY protocol comes from"
    )
    parser.add_argument("--backend", help="the default backend's settings, JSON (a Dovecot)")
    parser.add_argument("--settings", help="JSON laid over the gateway's settings")
    parser.add_argument("--profile", type=Path, help="write a cProfile of this process here")
    parser.add_argument("--cpus", help="run on these CPUs only (LPS_BENCH_GATEWAY_CPUS)")
    args = parser.parse_args()
    if args.cpus:  # first: the workers started later inherit it
        os.sched_setaffinity(0, gateway_cpus(args.cpus))
    raise_fd_limit()

    from gateway.runtime.logs import configure_logging
    from gateway.settings import LogSettings

    configure_logging(LogSettings(level="WARNING"))
    # aiosmtpd warns on every successful AUTH (its own use of Session.login_data): noise here.
    logging.getLogger("mail.log").addFilter(
        lambda record: "login_data is deprecated" not in record.getMessage()
    )
    if args.role == "mock":
        migration = int(args.migration or 0)
        coroutine = _serve_mock(
            args.data, args.big, args.historic, migration, args.migration_messages
        )
    else:
        plan = json.loads(args.migration) if args.migration else None
        coroutine = _serve_gateway(
            args.data,
            json.loads(args.mock),
            plan,
            args.database,
            args.proxy_from,
            json.loads(args.backend) if args.backend else None,
            json.loads(args.settings) if args.settings else None,
        )
    if args.profile is None:
        asyncio.run(coroutine)
        return
    import cProfile

    # LPS_BENCH_PROFILE_CLOCK=cpu: CPU time of the process (its threads included) rather
    # than wall time, so that a send that hands the CPU to the peer is not charged to it
    cpu_clock = os.environ.get("LPS_BENCH_PROFILE_CLOCK") == "cpu"
    profiler = cProfile.Profile(time.process_time) if cpu_clock else cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(coroutine)
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
