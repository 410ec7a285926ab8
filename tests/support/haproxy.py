"""Debian's HAProxy for tests and benchmarks: `running_haproxy`, in TCP mode in front of a
test's listeners (one route per listener, e.g. with ``send-proxy-v2``), and
`running_balancer`, in front of gateway nodes as an operator runs it: TCP frontends for
IMAP and SMTP balancing round-robin over the nodes, an HTTP frontend, every server checked
with `GET /readyz` on its node's HTTP port (the topology test, the benchmark).

HAProxy cannot bind port 0 and say which port it got, so its frontends are sockets bound
and listening here first, handed to it (``bind fd@N``): bound without SO_REUSEPORT, their
ports are theirs alone (a port found free and bound again later could meanwhile go to
another test's listener, and HAProxy's SO_REUSEPORT would then share it with that one).
The nodes behind it bind port 0 and say theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require_peer
from tests.support.waiting import eventually, settled

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


def require_haproxy() -> str:
    """HAProxy's path; skip (fail under LPS_REQUIRE_PEERS=1) when it is not installed."""
    require_peer(HAPROXY is not None, "haproxy is not installed (Debian package haproxy)")
    assert HAPROXY is not None
    return HAPROXY


def listener() -> socket.socket:
    """A listening socket on a port of its own, for HAProxy to take by its descriptor."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@dataclass(frozen=True)
class Route:
    """HAProxy listens on `port` (the socket `fd`, see `listener`) and sends to
    127.0.0.1:`to`, with the server options `options` (e.g. ``send-proxy-v2``)."""

    to: int
    options: str = "send-proxy-v2"
    port: int = 0
    fd: int = -1


def _config(routes: list[Route]) -> str:
    lines = [
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
    ]
    for index, route in enumerate(routes):
        lines += [
            f"listen route{index}",
            f"    bind fd@{route.fd}",
            f"    server node 127.0.0.1:{route.to} {route.options}",
        ]
    return "\n".join(lines) + "\n"


def _write_config(directory: Path, routes: list[Route]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "haproxy.cfg"
    config.write_text(_config(routes), encoding="utf-8")
    return config


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.transport.abort()
    return True


@contextlib.asynccontextmanager
async def running_haproxy(directory: Path, routes: list[Route]) -> AsyncIterator[list[Route]]:
    """HAProxy with `routes`, listening on each; yields them with their ports."""
    haproxy = require_haproxy()
    with contextlib.ExitStack() as sockets:
        bound = [sockets.enter_context(listener()) for _ in routes]
        chosen = [
            Route(r.to, r.options, sock.getsockname()[1], sock.fileno())
            for r, sock in zip(routes, bound, strict=True)
        ]
        config = _write_config(directory, chosen)
        process = await asyncio.create_subprocess_exec(
            haproxy,
            "-db",
            "-f",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            pass_fds=[r.fd for r in chosen],
        )
    try:  # our copies closed: HAProxy holds the sockets now
        for route in chosen:
            await eventually(lambda port=route.port: _listening(port), f"haproxy on {route.port}")
        yield chosen
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()


PROTOCOLS = ("imap", "smtp", "http")
# the client's own X-Forwarded-* never reach the nodes, which trust HAProxy's (as docker/)
FORWARDED_HEADERS = (
    "    http-request del-header X-Forwarded-For",
    "    http-request set-header X-Forwarded-Proto http",
)


@dataclass(frozen=True)
class Node:
    """One gateway node's listeners, as HAProxy reaches them."""

    name: str
    imap_port: int
    smtp_port: int
    http_port: int
    host: str = "127.0.0.1"

    def port(self, protocol: str) -> int:
        ports = {"imap": self.imap_port, "smtp": self.smtp_port, "http": self.http_port}
        return ports[protocol]


@dataclass(frozen=True)
class Frontends:
    """HAProxy's listening ports, and the descriptors of the sockets it takes them by."""

    imap: int
    smtp: int
    http: int
    fds: dict[str, int] = field(default_factory=dict)
    host: str = "127.0.0.1"

    @classmethod
    def bound(cls, sockets: dict[str, socket.socket]) -> Frontends:
        ports = {name: sock.getsockname()[1] for name, sock in sockets.items()}
        fds = {name: sock.fileno() for name, sock in sockets.items()}
        return cls(ports["imap"], ports["smtp"], ports["http"], fds)


def config(
    nodes: Sequence[Node],
    frontends: Frontends,
    stats_socket: Path,
    *,
    proxy_protocol: bool = False,
    check_interval_ms: int = 300,
    source: str | None = None,
) -> str:
    """The HAProxy configuration: a node leaves the rotation after three failed checks
    (one slow answer on a busy machine is no reason) and comes back after one good one; a
    connection refused by a node is retried on another. HTTP requests get an
    `X-Forwarded-For`; with `proxy_protocol`, IMAP and SMTP connections a PROXY v2
    header (the client's address). HAProxy connects to the nodes from `source` when
    given (so that a node may trust that address alone with the header)."""
    send_proxy = " send-proxy-v2" if proxy_protocol else ""
    lines = [
        "global",
        f"    stats socket {stats_socket} mode 600 level admin",
        "    maxconn 4096",
        "defaults",
        "    timeout connect 5s",
        "    timeout client 120s",
        "    timeout server 120s",
        "    timeout check 5s",
        "    retries 2",
        "    option redispatch",
        f"    default-server inter {check_interval_ms}ms fall 3 rise 1",
        *([f"    source {source}"] if source else []),
    ]
    for protocol in PROTOCOLS:
        mode = "http" if protocol == "http" else "tcp"
        lines += [
            f"frontend {protocol}",
            f"    mode {mode}",
            f"    bind fd@{frontends.fds[protocol]}",
            *(FORWARDED_HEADERS if protocol == "http" else ()),
            f"    default_backend {protocol}_nodes",
            f"backend {protocol}_nodes",
            f"    mode {mode}",
            "    balance roundrobin",
            "    option httpchk GET /readyz",
            "    http-check expect status 200",
        ]
        if protocol == "http":
            lines.append("    option forwardfor")
        for node in nodes:
            address = f"{node.host}:{node.port(protocol)}"
            if protocol == "http":
                lines.append(f"    server {node.name} {address} check")
            else:
                lines.append(
                    f"    server {node.name} {address} check port {node.http_port}{send_proxy}"
                )
    return "\n".join(lines) + "\n"


@dataclass
class HAProxy:
    """A running HAProxy (foreground, `-db`) and its admin socket."""

    process: subprocess.Popen[bytes]
    frontends: Frontends
    stats_socket: Path
    log: Path
    nodes: list[str] = field(default_factory=list)

    def command(self, text: str) -> str:
        """One command on the admin socket (`show stat`, `disable server imap_nodes/a`)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stat(self) -> list[dict[str, str]]:
        """`show stat` as rows (pxname, svname, status, scur, stot...)."""
        text = self.command("show stat").lstrip("# ")
        return list(csv.DictReader(line for line in text.splitlines() if line))

    def servers(self, field_name: str = "status") -> dict[tuple[str, str], str]:
        """A field of every server row: {("imap_nodes", "a"): "UP", ...}."""
        return {
            (row["pxname"], row["svname"]): row[field_name]
            for row in self.stat()
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def status_of(self, node: str) -> set[str]:
        """The states HAProxy gives a node in its backends: {"UP L7OK"} once a check of
        each passed (a server counts as UP before its first check), {"DOWN ..."} once
        marked down."""
        return {
            f"{row['status']} {row['check_status']}" for row in self.stat() if row["svname"] == node
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running_balancer(
    directory: Path,
    nodes: Sequence[Node],
    *,
    proxy_protocol: bool = False,
    check_interval_ms: int = 300,
    source: str | None = None,
) -> Iterator[HAProxy]:
    """HAProxy in front of `nodes` (configured by `config`), once every node is UP in
    every backend; stopped on leaving (skipped when HAProxy is not installed, see
    `require_haproxy`). Its log (stderr) goes to `directory/haproxy.log`. Tests check
    often, to see a node go down quickly; a benchmark as production does (every 2 s: each
    check costs the node a /readyz)."""
    haproxy = require_haproxy()
    directory.mkdir(parents=True, exist_ok=True)
    stats = directory / "haproxy.sock"
    path = directory / "haproxy.cfg"
    log = directory / "haproxy.log"
    with contextlib.ExitStack() as sockets:
        frontends = Frontends.bound(
            {protocol: sockets.enter_context(listener()) for protocol in PROTOCOLS}
        )
        path.write_text(
            config(
                nodes,
                frontends,
                stats,
                proxy_protocol=proxy_protocol,
                check_interval_ms=check_interval_ms,
                source=source,
            )
        )
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [haproxy, "-db", "-f", str(path)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                pass_fds=list(frontends.fds.values()),
            )
    proxy = HAProxy(process, frontends, stats, log, [node.name for node in nodes])
    try:

        def all_up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"haproxy exited: {log.read_text()}")
            return stats.exists() and all(proxy.status_of(n.name) == {"UP L7OK"} for n in nodes)

        settled(all_up, "haproxy sees every node UP")
        yield proxy
    finally:
        proxy.stop()
