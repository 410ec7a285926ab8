"""A node of several worker processes (`[server] workers = 2`), real processes on ports 0:
the demo keeps its mock operator in the supervisor's process while two workers accept on
the gateway's IMAP and SMTP ports, HTTP on worker 0 alone; IMAP logins land on both; a
revocation through /v1 ends the delegate's sessions on both (a local channel on SQLite,
LISTEN/NOTIFY on PostgreSQL); /metrics sums both workers; a cut-over run by worker 0
holds the BAL in worker 1 too; SIGTERM drains both (`* BYE [UNAVAILABLE]`), exit 0.
`serve`: a worker killed outright is started again, and the node still stops cleanly.
A migration's write hold reaches every worker (their gates, wired in one process)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import AsyncMock, Mock

import httpx
import pytest
from prometheus_client import Gauge

from gateway.bal_migration import jobs
from gateway.bal_migration.copy import CopyReport, VerifyReport
from gateway.bal_migration.gate import MOVED_BYE, BalGate, Held, Moved
from gateway.bal_migration.jobs import Job, MigrationFailed, Migrations, Moves
from gateway.metrics import Metrics
from gateway.runtime.asgi_server import CannotListen
from gateway.runtime.cores import available_cores
from gateway.runtime.lifecycle import run_until_signalled
from gateway.workers import channel as channel_module
from gateway.workers.channel import MAX_LINE, Channel, RelayBus
from gateway.workers.gate import NodeGate
from gateway.workers.supervisor import WORKER_COMMAND, _Worker
from gateway.workers.supervisor import Node as Supervisor
from gateway.workers.throttle import NodeThrottle
from gateway.workers.worker import dispatch
from tests.conftest import fresh_database
from tests.imap_raw import Raw
from tests.support.sasl import xoauth2
from tests.support.smtp_raw import RawSmtp
from tests.support.stacks import gateway_settings
from tests.support.waiting import eventually, until
from tests.test_cli import DEMO_PORTS, command, wait_for_url
from tests.test_shutdown import BYE as SHUTDOWN_BYE

pytestmark = pytest.mark.slow

MARTIN = "claire.martin@medecin.mssante.fr"
DUPONT = "jean.dupont@medecin.mssante.fr"
BERNARD = "899700000003"
WORKERS = {"LPSGW_SERVER__WORKERS": "2", "LPSGW_LOG__AUDIT_TO_LOG": "true"}
STARTED = re.compile(r"workers\.started workers=2 pids=\[(\d+), (\d+)\]")


class Node:
    """A `lps-gateway` command whose log goes to a file (a pipe nobody reads fills up)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.log = cwd / "node.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [command("lps-gateway"), *args],
                cwd=cwd,
                env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env},
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def line(self, pattern: re.Pattern[str], what: str) -> re.Match[str]:
        found: list[re.Match[str]] = []

        async def seen() -> bool:
            found[:] = list(pattern.finditer(self.text()))
            return bool(found) or self.process.poll() is not None

        await eventually(seen, what, bound=60)
        assert found, f"{what}: the node exited\n{self.text()}"
        return found[-1]

    async def workers(self) -> list[int]:
        started = await self.line(STARTED, "both workers started")
        return [int(pid) for pid in started.groups()]

    def banner_port(self, name: str) -> int:
        assert self.process.stdout is not None
        for _ in range(60):
            line = self.process.stdout.readline()
            found = re.search(re.escape(name) + r":\s+127\.0\.0\.1:(\d+)", line)
            if found:
                return int(found.group(1))
        pytest.fail(f"no {name} in the banner")

    async def terminated(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, 60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()


def listening_pids(port: int, candidates: set[int]) -> set[int]:
    """Which of `candidates` hold a socket listening on `port` (read from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    holders = set()
    for pid in candidates:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    holders.add(pid)
            except OSError:
                continue
    return holders


def gone(pids: list[int]) -> bool:
    """None of `pids` lives any more (each was our child or grandchild: no zombie stays,
    the supervisor reaps its workers and the test its node)."""
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def logins_by_worker(log: str) -> dict[str, int]:
    """Successful IMAP logins per worker, from the audit lines of the log."""
    counts: dict[str, int] = {}
    for line in log.splitlines():
        if "lps_gateway.audit" in line and " action=login" in line and " result=ok" in line:
            worker = re.search(r" worker=(\d+)", line)
            assert worker is not None, line
            counts[worker.group(1)] = counts.get(worker.group(1), 0) + 1
    return counts


async def sample(http: httpx.AsyncClient, url: str, name: str) -> float:
    text = (await http.get(f"{url}/metrics")).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return float(found.group(1))


async def sessions_on_both(node: Node, imap: int, token: str) -> list[Raw]:
    """IMAP sessions on Dr MARTIN's BAL with `token`, opened until both workers hold one
    (each login seen in the audit lines before the next)."""
    before = logins_by_worker(node.text())
    opened: list[Raw] = []

    def new() -> dict[str, int]:
        now = logins_by_worker(node.text())
        return {w: n - before.get(w, 0) for w, n in now.items() if n > before.get(w, 0)}

    async def audited() -> bool:
        return sum(new().values()) == len(opened)

    while len(new()) < 2:
        assert len(opened) < 20, "the kernel spreads connections over the workers"
        client = await Raw.open(imap)
        await client.ok("AUTHENTICATE XOAUTH2 ", xoauth2(MARTIN, token))
        opened.append(client)
        await eventually(audited, "the login audited")
    return opened


async def cut_over(data: Path) -> None:
    """`lps-gateway migrate copy`, then `cutover`, of Dr DUPONT's historic BAL to the
    modern platform, as the operator runs them against the node."""
    for action in ("copy", "cutover"):
        args = [command("lps-gateway"), "migrate", action, DUPONT, "--to", "modern"]
        done = await asyncio.to_thread(
            subprocess.run,
            [*args, "--data", str(data), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, tmp_path) as url:
        yield url


async def test_demo_with_two_workers(tmp_path: Path, database: str, nodes: list[Node]) -> None:
    env = {**DEMO_PORTS, **WORKERS, "LPSGW_DATABASE_URL": database}
    node = Node(["demo", "--data", str(tmp_path / "state")], tmp_path, env)
    nodes.append(node)
    mock = wait_for_url(node.process)
    imap = node.banner_port("API LPS IMAP (STARTTLS)")
    pids = await node.workers()
    parent = node.process.pid
    mock_port = int(mock.rsplit(":", 1)[1])
    assert listening_pids(mock_port, {parent, *pids}) == {parent}, "the mock: one process"
    assert set(pids) <= listening_pids(imap, {parent, *pids}), "each worker accepts"
    http_url = re.search(r"gateway\.started http=(http://\S+)", node.text())
    assert http_url is not None
    api = http_url.group(1)
    http_port = int(api.rsplit(":", 1)[1])
    assert listening_pids(http_port, {parent, *pids}) == {parent, pids[0]}, "HTTP: worker 0"

    async with httpx.AsyncClient(timeout=10) as http:

        async def token(persona: str) -> str:
            answer = await http.post(f"{mock}/_test/token", json={"persona": persona})
            value: str = answer.json()["access_token"]
            return value

        sessions = await sessions_on_both(node, imap, await token("sec-bernard"))

        async def summed() -> bool:
            logins = await sample(http, api, 'lpsgw_logins_total{protocol="imap",result="ok"}')
            open_now = await sample(http, api, 'lpsgw_open_sessions{protocol="imap"}')
            return logins == open_now == len(sessions)  # the first logins of the node

        await eventually(summed, "/metrics: both workers' logins and sessions, summed")

        holder = {"Authorization": f"Bearer {await token('dr-martin')}"}
        url = f"{api}/v1/mailboxes/{MARTIN}/delegations"
        listed = (await http.get(url, headers=holder)).json()
        (delegation,) = [d for d in listed if d["delegate"]["idnat"] == BERNARD]
        revoked = await http.delete(f"{url}/{delegation['id']}", headers=holder)
        assert revoked.status_code == 200, revoked.text
        for client in sessions:  # on both workers: worker 1 hears of it from worker 0
            line = await client.line(wait=10)
            assert line.startswith(b"* BYE"), line
            assert b"revoked" in line, line
            await client.close()

        if database.startswith("sqlite"):  # the same channel on PostgreSQL: once is enough
            await cut_over(tmp_path / "state")
            held = rf"migration\.held bal={DUPONT} for_worker=0 .*worker=1"
            assert re.search(held, node.text()), "worker 0's cut-over held the BAL in worker 1"
        holders = await sessions_on_both(node, imap, await token("dr-martin"))

    node.process.send_signal(signal.SIGTERM)
    for client in holders:  # each worker drains its own
        assert await client.line(wait=30) == SHUTDOWN_BYE
    assert await asyncio.to_thread(node.process.wait, 60) == 0, node.text()
    assert gone(pids), "no worker outlives its node"
    assert "gateway.drained worker=0" in node.text()
    assert "gateway.drained worker=1" in node.text()


async def bad_login(port: int) -> bytes:
    """A login with a token that is none, on a new connection: the tagged reply."""
    client = await Raw.open(port)
    tag = client.tag()
    await client.send(f"{tag} AUTHENTICATE XOAUTH2 {xoauth2(MARTIN, 'no-token')}\r\n".encode())
    line = await client.line()
    if line.startswith(b"+"):  # the XOAUTH2 error, to be acknowledged
        await client.send(b"\r\n")
        line = await client.line()
    await client.close()
    return line


async def test_serve_shares_failed_logins_and_restarts_a_dead_worker(
    tmp_path: Path, nodes: list[Node]
) -> None:
    """Two bad logins, on whichever workers: later attempts are throttled, on both (the
    failed-login window is the node's: each worker is told the other's failures). A
    worker killed outright comes back, with the HTTP listener when it is worker 0."""
    env = {
        **WORKERS,
        **{f"LPSGW_{name}__PORT": "0" for name in ("HTTP", "IMAP", "SMTP")},
        "LPSGW_PSC__ACCEPT_ANY_AUDIENCE": "true",
        "LPSGW_DATA_DIR": str(tmp_path / "state"),
        "LPSGW_LIMITS__MAX_FAILED_LOGINS": "2",
        "LPSGW_IMAP__AUTH_FAILURE_DELAY": "0",
        "LPSGW_LOG__LEVEL": "DEBUG",
    }
    node = Node(["serve"], tmp_path, env)
    nodes.append(node)
    imap = node.banner_port("API LPS IMAP (STARTTLS)")
    smtp = node.banner_port("API LPS SMTP (STARTTLS)")
    pids = await node.workers()
    http_url = re.search(r"gateway\.started http=(http://\S+)", node.text())
    assert http_url is not None
    api = http_url.group(1)
    metric = 'lpsgw_logins_total{{protocol="imap",result="{}"}}'
    async with httpx.AsyncClient(timeout=10) as http:

        async def told() -> bool:
            """Each failure so far is known to both workers: the next attempt meets the
            same window wherever it lands."""
            failures = await sample(http, api, metric.format("authentication"))
            return node.text().count("workers.failed_login_heard") == failures

        while {"0", "1"} - set(re.findall(r"login_throttled .*worker=(\d)", node.text())):
            assert await sample(http, api, metric.format("throttled")) < 30, node.text()
            assert b" NO " in await bad_login(imap)
            await eventually(told, "the failure told to the other worker")
        assert await sample(http, api, metric.format("authentication")) == 2

    os.kill(pids[0], signal.SIGKILL)
    restarted = await node.line(
        re.compile(r"workers\.restarted worker=0 pid=(\d+)"), "worker 0 started again"
    )
    replacement = int(restarted.group(1))
    assert "workers.died worker=0" in node.text()
    assert replacement not in pids
    for port in (imap, smtp):
        assert listening_pids(port, {replacement, pids[1]}) == {replacement, pids[1]}
    for _ in range(4):  # whichever worker takes it
        sender = await RawSmtp.open(smtp)
        await sender.command(b"EHLO lps.example", b"250")
        await sender.command(b"QUIT", b"221")
    admin = [command("lps-gateway"), "admin", "status", "--data", str(tmp_path / "state")]
    status = await asyncio.to_thread(
        subprocess.run, admin, capture_output=True, text=True, timeout=30, check=False
    )
    assert status.returncode == 0, status.stderr
    answered = re.compile(r'"GET /admin/status HTTP/1\.1" 200 .*worker=(\d)')
    assert (await node.line(answered, "the command answered")).group(1) == "0"
    http_port = int(http_url.group(1).rsplit(":", 1)[1])
    assert listening_pids(http_port, {replacement, pids[1]}) == {replacement}
    assert await node.terminated() == 0, node.text()
    assert gone([*pids, replacement])


BAL = DUPONT


class _Session:
    def __init__(self) -> None:
        self.told: list[str] = []

    def kick(self, reason: str) -> None:
        self.told.append(reason)


def gates_of_a_node(count: int) -> list[NodeGate]:
    """The gates of `count` workers, wired as the supervisor wires them (a message to the
    worker it names, or to every other one), in this process."""
    gates: list[NodeGate] = []

    def sender(index: int) -> Callable[[dict[str, Any]], None]:
        def send(message: dict[str, Any]) -> None:
            message = {**message, "from": index}
            loop = asyncio.get_running_loop()
            for other, gate in enumerate(gates):
                if other != index and message.get("to") in (None, other):
                    loop.call_soon(gate.received, message)

        return send

    gates.extend(NodeGate(sender(i), i, count, max_wait=5, drain_wait=30) for i in range(count))
    return gates


async def test_a_cut_over_holds_the_bal_in_every_worker() -> None:
    """The hold waits for another worker's change under way, holds that worker's new
    changes, and the move ends its sessions and turns its waiting changes away."""
    holder, other = gates_of_a_node(2)
    session = _Session()
    other.add(BAL, session)
    other.begin(BAL)  # a change on its way to the old backend, in the other worker
    entered, moving = asyncio.Event(), asyncio.Event()

    async def cut_over() -> None:
        async with holder.hold(BAL) as held:
            entered.set()
            await moving.wait()
            held.moved()

    cutting = asyncio.create_task(cut_over())
    await until(lambda: other.held(BAL), "the other worker holds the BAL")
    assert not entered.is_set(), "the hold waits for the other worker's change"
    other.done(BAL)
    await asyncio.wait_for(entered.wait(), 5)
    waiting = asyncio.create_task(other.passage(BAL))
    await until(lambda: other.waiting(BAL) == 1, "the other worker's change waits")
    moving.set()
    await cutting
    with pytest.raises(Moved):
        await waiting
    assert session.told == [MOVED_BYE]
    assert other.epoch(BAL) == 1
    await until(lambda: not other.held(BAL), "the other worker released")


async def test_a_hold_another_worker_cannot_take_is_refused() -> None:
    holder, other = gates_of_a_node(2)
    async with BalGate.hold(other, BAL):  # held there already (its own cut-over)
        with pytest.raises(Held, match="not held in every worker"):
            async with holder.hold(BAL):
                pytest.fail("held")
    assert not holder.held(BAL)
    await other.aclose()


async def test_a_worker_dying_during_a_hold_breaks_it() -> None:
    """A worker that held dies (the supervisor says `gone`): started again, its fresh gate
    would let changes through to the old backend, so the cut-over's handle says the hold
    is broken and the cut-over switches nothing."""
    holder, other, third = gates_of_a_node(3)
    async with holder.hold(BAL) as held:
        assert held.broken() is None
        assert other.held(BAL)
        assert third.held(BAL)
        gone = {"t": "gone", "worker": 1}
        holder.received(gone)
        third.received(gone)
        assert held.broken() == "worker 1 died during the hold"
    await until(lambda: not third.held(BAL), "the third worker released")
    await other.aclose()


EVENT = {
    "kind": "revoked",
    "mailbox": DUPONT,
    "delegate_idnat": BERNARD,
    "delegation_id": 1,
    "at": "2026-01-01T00:00:00+00:00",
}


async def test_a_dead_workers_last_events_are_read_and_its_death_is_a_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that publishes events and exits at once, before the supervisor read them:
    the supervisor reads every line it wrote before closing its channel, and tells its
    subscribers (and the other workers, by `gone`) that events may have been lost."""
    count = 1500  # more than the channel's reader buffers, less than the kernel's too
    node = Supervisor(gateway_settings(tmp_path, server={"workers": 2}))
    assert node.relays
    heard = node.bus.subscribe(queue_size=count + 1)
    other, other_end = socket.socketpair()
    node._workers[1] = _Worker(1, Mock(), await Channel.open(other_end))
    ours, theirs = socket.socketpair()
    line = json.dumps({"t": "event", "event": EVENT}) + "\n"
    speak = (
        f"import socket; socket.socket(fileno={theirs.fileno()}).sendall({line!r}.encode()"
        f" * {count})"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", speak, pass_fds=[theirs.fileno()]
    )
    theirs.close()
    worker = node._workers[0] = _Worker(0, process, await Channel.open(ours))
    receive = worker.channel.receive

    async def once_exited() -> dict[str, Any] | None:
        await process.wait()
        monkeypatch.setattr(worker.channel, "receive", receive)
        return await receive()

    monkeypatch.setattr(worker.channel, "receive", once_exited)
    node._stopping = True  # not started again
    worker.listening = asyncio.create_task(node._listen(worker))
    await node._watch(worker)
    events = 0
    while heard._items:
        await heard.get()
        events += 1
    assert events == count
    assert heard.overflowed
    told = await Channel.open(other)
    passed = [await told.receive() for _ in range(count + 1)]
    assert passed[-1] == {"t": "gone", "worker": 0}
    await told.close()
    await node._workers[1].channel.close()
    await node.bus.close()


async def test_a_line_the_channel_cannot_read_is_skipped() -> None:
    """A line over `MAX_LINE` or not JSON is dropped; the lines after it are read (the
    supervisor keeps hearing a worker that wrote one)."""
    ours, theirs = socket.socketpair()
    channel = await Channel.open(ours)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(theirs, b"x" * (3 * MAX_LINE) + b"\n{not json\n" + b'{"t":"ready"}\n')
    assert await channel.receive() == {"t": "ready"}
    theirs.close()
    assert await channel.receive() is None
    await channel.close()


async def test_a_peer_that_stops_reading_loses_its_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Messages pile up for a peer that reads nothing: past `MAX_BUFFER` the channel is
    closed (the peer sees its end, and stops or is started again) rather than growing."""
    monkeypatch.setattr(channel_module, "MAX_BUFFER", 4 * MAX_LINE)
    ours, theirs = socket.socketpair()
    channel = await Channel.open(ours)
    big = {"t": "event", "event": "x" * (MAX_LINE // 2)}
    for _ in range(1000):
        channel.send(big)
        if channel._writer.is_closing():
            break
        await asyncio.sleep(0)  # the loop writes what the kernel takes
    assert channel._writer.is_closing()
    peer = await Channel.open(theirs)
    while await peer.receive() is not None:  # what the kernel took, then its end
        continue
    await peer.close()
    await channel.close()


async def test_sighup_drains_the_node(tmp_path: Path, nodes: list[Node]) -> None:
    """A closed terminal's SIGHUP stops the node as SIGTERM does (workers drained, exit 0),
    rather than killing the supervisor and leaving its workers to notice alone."""
    env = {
        **WORKERS,
        **{f"LPSGW_{name}__PORT": "0" for name in ("HTTP", "IMAP", "SMTP")},
        "LPSGW_PSC__ACCEPT_ANY_AUDIENCE": "true",
        "LPSGW_DATA_DIR": str(tmp_path / "state"),
    }
    node = Node(["serve"], tmp_path, env)
    nodes.append(node)
    pids = await node.workers()
    node.process.send_signal(signal.SIGHUP)
    assert await asyncio.to_thread(node.process.wait, 60) == 0, node.text()
    assert "workers.failed" not in node.text()
    assert gone(pids)


async def test_sighup_drains_a_single_process_node(tmp_path: Path, nodes: list[Node]) -> None:
    """One process (`[server] workers = 1`, a one-core container): SIGHUP stops it as
    SIGTERM does too (its sessions told BYE, drained, exit 0), not by the signal's default
    death that would cut them and lose the audit events still queued."""
    env = {
        "LPSGW_SERVER__WORKERS": "1",
        **{f"LPSGW_{name}__PORT": "0" for name in ("HTTP", "IMAP", "SMTP")},
        "LPSGW_PSC__ACCEPT_ANY_AUDIENCE": "true",
        "LPSGW_DATA_DIR": str(tmp_path / "state"),
    }
    node = Node(["serve"], tmp_path, env)
    nodes.append(node)
    started = await node.line(re.compile(r"gateway\.started .*imap=(\d+)"), "the node started")
    client = await Raw.open(int(started.group(1)))
    assert client.greeting.startswith(b"* OK")
    node.process.send_signal(signal.SIGHUP)
    assert await client.line(wait=30) == b"* BYE [UNAVAILABLE] server shutting down"
    assert await asyncio.to_thread(node.process.wait, 60) == 0, node.text()
    assert "gateway.drained" in node.text()


class _Stuck:
    """A service whose start never ends (a worker that never says it is ready)."""

    def __init__(self) -> None:
        self.starting = asyncio.Event()
        self.stopped = False

    async def start(self) -> None:
        self.starting.set()
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self.stopped = True


async def test_a_signal_while_starting_stops_the_services() -> None:
    """SIGTERM while a service starts: its start is cancelled and it is stopped, the
    services before it too, and the one after is never started."""
    first, stuck, after = _Stuck(), _Stuck(), _Stuck()
    first.start = AsyncMock()  # type: ignore[method-assign]
    running = asyncio.create_task(run_until_signalled([first, stuck, after]))
    await asyncio.wait_for(stuck.starting.wait(), 30)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, 30)
    assert first.stopped
    assert stuck.stopped
    assert not after.starting.is_set()


async def test_a_worker_spawned_as_the_node_stops_is_stopped(tmp_path: Path) -> None:
    """A worker started again while the node begins to stop is known and told to stop at
    once: none is left running once the node stopped."""
    node = Supervisor(gateway_settings(tmp_path, server={"workers": 2}))
    node._metrics_dir = str(tmp_path / "metrics")
    node._stopping = True  # stop() began while `_spawn` was on its way
    await node._spawn(0)
    process = node._workers[0].process
    code = await asyncio.wait_for(process.wait(), 60)
    assert code in (-signal.SIGTERM, 0), node.failed  # its SIGTERM, before or after its start
    await node.stop()


def test_a_fixed_port_another_node_listens_on_is_refused(tmp_path: Path) -> None:
    """Another node's worker listens on the IMAP port (SO_REUSEPORT, same user): this node
    says it cannot listen there, instead of sharing the port's connections with it."""
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen()
    port = other.getsockname()[1]
    node = Supervisor(gateway_settings(tmp_path, server={"workers": 2}, imap={"port": port}))
    try:
        with pytest.raises(CannotListen, match=rf":{port} \(imap\.port\): address already"):
            node._bind()
    finally:
        node._close_sockets()
        other.close()


def test_every_gauge_is_the_sum_over_the_live_workers() -> None:
    """A gauge (sessions open, warm sessions now) of a node is its live workers' sum: not
    the default `all` (one series per pid) nor a dead worker's last value."""
    gauges = [m for m in vars(Metrics()).values() if isinstance(m, Gauge)]
    assert {g._name for g in gauges} >= {"lpsgw_open_sessions", "lpsgw_warm_open"}
    assert {g._name: g._multiprocess_mode for g in gauges} == dict.fromkeys(
        (g._name for g in gauges), "livesum"
    )


async def test_a_cut_over_whose_hold_broke_switches_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker 1 dies during the final delta (started again, it would let changes through
    to the old backend): the cut-over fails before the registry's record is switched."""
    holder, other = gates_of_a_node(2)
    deltas: list[bool] = []
    moved: list[str] = []

    async def copy(bal: str, *_: Any, **__: Any) -> CopyReport:
        deltas.append(holder.held(bal))
        if holder.held(bal):  # the final delta, under the hold
            holder.received({"t": "gone", "worker": 1})
        return CopyReport(bal)

    async def verify(bal: str, *_: Any) -> VerifyReport:
        return VerifyReport(bal)

    async def move(bal: str, backend: str) -> None:
        moved.append(backend)

    async def nothing(*_: Any) -> None:
        return None

    async def accesses(_: Any, job: Job) -> tuple[Any, Any]:
        return AsyncMock(), AsyncMock()

    monkeypatch.setattr(jobs, "provision", nothing)
    monkeypatch.setattr(jobs, "copy_bal", copy)
    monkeypatch.setattr(jobs, "verify_bal", verify)
    monkeypatch.setattr(Migrations, "_accesses", accesses)
    migrations = Migrations(
        Mock(),
        locate=Mock(),
        backends=dict,
        settings={"modern": Mock()},
        audit=nothing,
        moves=Moves(holder, move, lambda bal: None),
    )
    job = Job("1", BAL, "cutover", "historic", "modern", "ops")
    with pytest.raises(MigrationFailed, match=r"worker 1 died during the hold.*nothing switched"):
        await migrations._cutover(job, None, journal=AsyncMock())
    assert deltas == [False, True]
    assert moved == []
    assert not holder.held(BAL)
    await other.aclose()


async def test_another_workers_death_is_a_gap_in_a_worker() -> None:
    """`gone` from the supervisor: the worker's subscribers (its live sessions, its
    decision cache) re-check, as after events lost; the gate releases what it kept."""
    bus = RelayBus(Mock())
    subscription = bus.subscribe()
    throttle = NodeThrottle(Mock(), 5, 60)
    gate = NodeGate(Mock(), 0, 2, max_wait=5, drain_wait=30)
    dispatch({"t": "event", "event": EVENT}, bus, throttle, gate)
    assert not subscription.overflowed
    dispatch({"t": "gone", "worker": 1}, bus, throttle, gate)
    assert subscription.overflowed
    await bus.close()


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None), ("", None)],
)
def test_workers_by_default_one_per_core_the_quota_allows(
    tmp_path: Path, cpu_max: str, expected: int | None
) -> None:
    """A container's CPU quota (cgroup v2 cpu.max), rounded up, caps the cores counted."""
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    cores = len(os.sched_getaffinity(0))
    assert available_cores(path) == min(cores, expected or cores)


def test_a_module_planted_in_the_working_directory_does_not_run_in_a_worker(
    tmp_path: Path,
) -> None:
    """A worker started from a directory holding a `pickle.py` imports the standard
    library's: the planted one would run before the worker read its settings."""
    marker = tmp_path / "ran"
    (tmp_path / "pickle.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    started = subprocess.run(
        WORKER_COMMAND, cwd=tmp_path, input=b"", capture_output=True, timeout=60, check=False
    )
    assert b"EOFError" in started.stderr, started.stderr  # it read the (empty) settings
    assert not marker.exists()
