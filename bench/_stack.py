"""Benchmark helper: a mock operator and a gateway in front of it, each in its own process.

The benchmarks drive both from the outside with their own clients, so that the client's
work is not measured in the servers' event loops, and the gateway's resident memory can be
read alone. Two server roles, each printing one JSON line on stdout once it listens:

  ``python bench/_stack.py mock --data DIR [--big N]``
      the mock operator (plaintext allowed on loopback, no failure delay), with N messages
      of 1 MiB in folder ``Big`` of claire.martin's BAL;
  ``python bench/_stack.py gateway --data DIR --mock JSON``
      the gateway, its own registry seeded with the default personas, the mock's modern
      platform as its only backend (master login, plaintext on loopback).

`Stack` starts both and cleans up (processes and temporary directory). With
``LPS_BENCH_PROFILE=DIR`` in the environment, each server process runs under cProfile and
writes ``DIR/mock.prof`` and ``DIR/gateway.prof`` when stopped (read them with pstats).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BAL = "claire.martin@medecin.mssante.fr"
PERSONA = "dr-martin"
BIG_FOLDER = "Big"


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
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


def xoauth2(user: str, token: str) -> str:
    """The base64 SASL XOAUTH2 initial response."""
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


# -- the bench side ------------------------------------------------------------------------


@dataclasses.dataclass
class Endpoints:
    host: str
    imap_port: int
    smtp_port: int
    pid: int


class Stack:
    """Mock operator and gateway subprocesses; use as a context manager."""

    def __init__(self, *, big: int = 0) -> None:
        self.big = big
        self._tmp = Path(tempfile.mkdtemp(prefix="lps-bench-"))
        self._processes: list[subprocess.Popen[str]] = []
        self.mock_info: dict[str, Any] = {}
        self._gateway: Endpoints | None = None
        self._direct: Endpoints | None = None

    @property
    def gateway(self) -> Endpoints:
        """The gateway's listeners and process."""
        assert self._gateway is not None, "not started"
        return self._gateway

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

    def start(self) -> None:
        raise_fd_limit()
        args = ["mock", "--data", str(self._tmp / "mock"), "--big", str(self.big)]
        self.mock_info = self._spawn(args)
        self._direct = Endpoints(
            "127.0.0.1",
            self.mock_info["imap_port"],
            self.mock_info["smtp_port"],
            self.mock_info["pid"],
        )
        info = self._spawn(
            ["gateway", "--data", str(self._tmp / "gateway"), "--mock", json.dumps(self.mock_info)]
        )
        self._gateway = Endpoints("127.0.0.1", info["imap_port"], info["smtp_port"], info["pid"])

    def _spawn(self, args: list[str]) -> dict[str, Any]:
        profile = os.environ.get("LPS_BENCH_PROFILE")
        if profile:  # a directory: each server process writes ROLE.prof there on exit
            Path(profile).mkdir(parents=True, exist_ok=True)
            args = [*args, "--profile", str(Path(profile) / f"{args[0]}.prof")]
        env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("LPSGW_")}
        process = subprocess.Popen(
            [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env
        )
        self._processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
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
        shutil.rmtree(self._tmp, ignore_errors=True)


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


async def _serve_mock(data: Path, big: int) -> None:
    from gateway.lifecycle import run_until_signalled
    from gateway.settings import MockSettings
    from mock_operator.server import MockOperator

    settings = MockSettings(
        http_port=0,
        imap_port=0,
        smtp_port=0,
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
        info = {
            "pid": os.getpid(),
            "http_url": mock.http_url,
            "issuer": mock.issuer,
            "imap_port": mock.imap_port,
            "smtp_port": mock.smtp_port,
            "master_user": mock.master.user,
            "master_password": mock.master.password,
        }
        print(json.dumps(info), flush=True)

    await run_until_signalled([mock], announce)


async def _serve_gateway(data: Path, mock: dict[str, Any]) -> None:
    from delegation.seed import seed
    from gateway.lifecycle import run_until_signalled
    from gateway.server import Gateway
    from gateway.settings import BackendSettings, Settings
    from mock_operator.personas import default_personas

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
    settings = Settings(
        data_dir=data,
        log={"level": "WARNING"},
        http={"port": 0},
        imap={"port": 0, "auth_failure_delay": 0},
        smtp={"port": 0, "auth_failure_delay": 0},
        psc={"issuer": mock["issuer"]},
        backends={"modern": backend},
        routing={"default": "modern"},
    )
    gateway = Gateway(settings)
    registry = await gateway.open_registry()
    await seed(registry, [dataclasses.asdict(p) for p in default_personas()])

    def announce() -> None:
        assert gateway.imap is not None
        assert gateway.smtp is not None
        info = {"pid": os.getpid(), "imap_port": gateway.imap.port, "smtp_port": gateway.smtp.port}
        print(json.dumps(info), flush=True)

    await run_until_signalled([gateway], announce)


def main() -> None:
    parser = argparse.ArgumentParser(description="a benchmark server process")
    parser.add_argument("role", choices=["mock", "gateway"])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--big", type=int, default=0)
    parser.add_argument("--mock", help="the mock's JSON line (gateway role)")
    parser.add_argument("--profile", type=Path, help="write a cProfile of this process here")
    args = parser.parse_args()
    raise_fd_limit()

    from gateway.logs import configure_logging
    from gateway.settings import LogSettings

    configure_logging(LogSettings(level="WARNING"))
    # aiosmtpd warns on every successful AUTH (its own use of Session.login_data): noise here.
    logging.getLogger("mail.log").addFilter(
        lambda record: "login_data is deprecated" not in record.getMessage()
    )
    if args.role == "mock":
        coroutine = _serve_mock(args.data, args.big)
    else:
        coroutine = _serve_gateway(args.data, json.loads(args.mock))
    if args.profile is None:
        asyncio.run(coroutine)
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        asyncio.run(coroutine)
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
