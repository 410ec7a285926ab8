"""The production topology on one machine: Debian's HAProxy in front of two `lps-gateway
serve` processes sharing one PostgreSQL database, the mock operator behind them (its
modern platform the backend, its PSC the token issuer). HAProxy passes the client's
address on (PROXY protocol v2 on IMAP and SMTP, X-Forwarded-For on HTTP); the clients
connect from 127.0.0.2, HAProxy from 127.0.0.1.

The tests share one topology (started once for the module) and run in file order: the
last one kills node A.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from delegation.db import asyncpg_dsn
from delegation.seed import seed
from gateway.server import Gateway
from gateway.settings import Settings
from mock_operator.personas import default_personas
from mock_operator.server import MockOperator
from tests.conftest import persona_token, postgres_database, quick_mock_settings
from tests.imap_raw import Raw
from tests.support.haproxy import HAProxy, Node, require_haproxy, running_balancer
from tests.support.proxied import ProxiedIMAP4, ProxiedSMTP
from tests.support.sasl import xoauth2, xoauth2_b64, xoauth2_blob
from tests.support.waiting import eventually, settled, until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

MARTIN = "claire.martin@medecin.mssante.fr"
BERNARD = "899700000003"
CLIENT_ADDRESS = "127.0.0.2"  # the test's clients: not HAProxy's 127.0.0.1
REVOCATION_BOUND = 2.0  # seconds (the issue's), from the revocation's answer to the BYE
REVOCATION_MARGIN = 1.0  # the read waits this much longer, so a slow BYE reports its time
BIN = Path(sys.executable).parent


@dataclass
class GatewayNode:
    process: subprocess.Popen[bytes]
    node: Node
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.node.http_port}"

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of the node's own /metrics."""
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"{self.http_url}/metrics")).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    async def logins(self, protocol: str = "imap") -> float:
        return await self.metric("lpsgw_logins_total", protocol=protocol, result="ok")

    async def open_sessions(self) -> float:
        return await self.metric("lpsgw_open_sessions", protocol="imap")


@dataclass
class Topology:
    mock: MockOperator
    a: GatewayNode
    b: GatewayNode
    haproxy: HAProxy
    database_url: str

    async def token(self, persona: str = "dr-martin") -> str:
        return await persona_token(self.mock, persona)

    async def one_session_on_each(self, persona: str) -> list[Raw]:
        """Two sessions of `persona` on claire.martin's BAL through HAProxy, once each node
        counts one of them (round-robin; those of earlier tests may take a moment to be
        counted as closed)."""
        token = await self.token(persona)
        held = []
        for _ in range(2):
            client = await Raw.open(self.haproxy.frontends.imap)
            await client.ok("AUTHENTICATE XOAUTH2 ", xoauth2(MARTIN, token))
            await client.ok("SELECT INBOX")
            held.append(client)

        async def one_each() -> bool:
            return [await n.open_sessions() for n in (self.a, self.b)] == [1.0, 1.0]

        await eventually(one_each, "one open session on each node")
        return held

    async def audit(self, action: str, interface: str, after: int = 0) -> list[asyncpg.Record]:
        """The audit events of one kind since event `after` (as `audit_mark` returned)."""
        connection = await asyncpg.connect(asyncpg_dsn(self.database_url), timeout=10)
        try:
            return await connection.fetch(
                "SELECT remote, mailbox FROM dlg_audit_events WHERE action = $1 "
                "AND interface = $2 AND id > $3",
                action,
                interface,
                after,
            )
        finally:
            await connection.close()

    async def audited(
        self, action: str, interface: str, after: int, *, count: int
    ) -> list[asyncpg.Record]:
        """`audit`, once `count` events are there (the nodes write them in batches)."""
        rows: list[asyncpg.Record] = []

        async def written() -> bool:
            rows[:] = await self.audit(action, interface, after)
            return len(rows) >= count

        await eventually(written, f"{count} {interface} {action} audit events")
        return rows

    async def audit_mark(self) -> int:
        connection = await asyncpg.connect(asyncpg_dsn(self.database_url), timeout=10)
        try:
            value = await connection.fetchval("SELECT coalesce(max(id), 0) FROM dlg_audit_events")
        finally:
            await connection.close()
        return int(value)


def node_config(directory: Path, database_url: str, mock: MockOperator) -> Path:
    """A node's configuration file, as an operator writes it (ports 0: the node says them)."""
    assert mock.master is not None
    # HAProxy's PROXY header and X-Forwarded-For name the client, trusted from its address
    trusted = '["127.0.0.1/32"]'
    path = directory / "gateway.toml"
    path.write_text(
        f'data_dir = "{directory / "state"}"\n'
        f'database_url = "{database_url}"\n'
        f"[http]\nport = 0\nforwarded_allow_ips = {trusted}\n"
        f"[imap]\nport = 0\nauth_failure_delay = 0\nproxy_protocol_from = {trusted}\n"
        f"[smtp]\nport = 0\nauth_failure_delay = 0\nproxy_protocol_from = {trusted}\n"
        f'[psc]\nissuer = "{mock.issuer}"\nclient_ids = ["lps-demo"]\n'
        "[backends.modern]\n"
        f"imap_port = {mock.imap_port}\nsmtp_port = {mock.smtp_port}\n"
        f'ca_file = "{mock.tls_cert}"\n'
        f'master_user = "{mock.master.user}"\n'
        f'master_password_file = "{mock.data_dir / "master.secret"}"\n'
        '[routing]\ndefault = "modern"\n'
    )
    return path


ANNOUNCED = {
    "http": re.compile(r"listening on http://127\.0\.0\.1:(\d+)"),
    "imap": re.compile(r"API LPS IMAP \(STARTTLS\): +127\.0\.0\.1:(\d+)"),
    "smtp": re.compile(r"API LPS SMTP \(STARTTLS\): +127\.0\.0\.1:(\d+)"),
}


def spawn_node(directory: Path, config: Path) -> subprocess.Popen[bytes]:
    """`lps-gateway serve --config`, its output in files (a pipe nobody reads would fill
    and stop it)."""
    with (
        (directory / "stdout").open("wb") as stdout,
        (directory / "gateway.log").open("wb") as stderr,
    ):
        return subprocess.Popen(
            [str(BIN / "lps-gateway"), "serve", "--config", str(config)],
            cwd=directory,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"},
        )


async def started_node(name: str, directory: Path, process: subprocess.Popen[bytes]) -> GatewayNode:
    """The node once it has said its ports."""
    out, log = directory / "stdout", directory / "gateway.log"
    ports: dict[str, int] = {}

    def announced() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"node {name} exited: {log.read_text()}")
        text = out.read_text()
        ports.update({k: int(m.group(1)) for k, p in ANNOUNCED.items() if (m := p.search(text))})
        return len(ports) == len(ANNOUNCED)

    await until(announced, f"node {name} says its ports")
    return GatewayNode(process, Node(name, ports["imap"], ports["smtp"], ports["http"]), log)


def stop_node(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def seed_registry(url: str, directory: Path) -> None:
    """The registry as the demo seeds it, once, before the nodes start (they then find it
    migrated: two nodes migrating one fresh database at once would race)."""
    seeder = Gateway(Settings(data_dir=directory, database_url=url))
    try:
        registry = await seeder.open_registry()
        await seed(registry, [dataclasses.asdict(p) for p in default_personas()])
    finally:
        await seeder.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def topology(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Topology]:
    require_haproxy()
    root = tmp_path_factory.mktemp("topology")
    async with postgres_database() as url:
        mock = MockOperator(quick_mock_settings(), root / "mock-operator")
        processes: dict[str, subprocess.Popen[bytes]] = {}
        try:
            # one after the other: both run Alembic, whose context is one per process
            await seed_registry(url, root / "seed")
            await mock.start()
            for name in ("a", "b"):  # started together: each takes seconds to import
                (root / name).mkdir()
                processes[name] = spawn_node(root / name, node_config(root / name, url, mock))
            nodes = [await started_node(n, root / n, p) for n, p in processes.items()]
            with ExitStack() as stack:
                haproxy = await asyncio.to_thread(
                    stack.enter_context,
                    running_balancer(
                        root / "haproxy", [n.node for n in nodes], proxy_protocol=True
                    ),
                )
                yield Topology(mock, nodes[0], nodes[1], haproxy, url)
        finally:
            for process in processes.values():
                stop_node(process)
            await mock.stop()


def imap_session(port: int, token: str, bal: str = MARTIN) -> str:
    """An LPS's short session through HAProxy: XOAUTH2, SELECT, LOGOUT."""
    with ProxiedIMAP4(port, b"", source=CLIENT_ADDRESS, timeout=30) as client:
        client.authenticate("XOAUTH2", lambda _: xoauth2_blob(bal, token))
        status, _ = client.select("INBOX")
    return status


def smtp_login(port: int, token: str) -> int:
    with ProxiedSMTP(port, b"", source=CLIENT_ADDRESS) as smtp:
        smtp.ehlo("lps.example")
        code, _ = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(MARTIN, token).decode())
    return code


async def sessions(port: int, token: str, count: int) -> list[str]:
    """`count` sessions one after the other (round-robin alternates them)."""
    return [await asyncio.to_thread(imap_session, port, token) for _ in range(count)]


async def test_logins_spread_over_both_nodes(topology: Topology) -> None:
    frontends = topology.haproxy.frontends
    token = await topology.token()
    before = [await node.logins() for node in (topology.a, topology.b)]
    assert await sessions(frontends.imap, token, 6) == ["OK"] * 6
    after = [await node.logins() for node in (topology.a, topology.b)]
    gained = [int(late - early) for early, late in zip(before, after, strict=True)]
    assert sum(gained) == 6, gained
    assert min(gained) >= 2, f"round-robin left a node idle: {gained}"

    smtp_before = [await node.logins("smtp") for node in (topology.a, topology.b)]
    codes = [await asyncio.to_thread(smtp_login, frontends.smtp, token) for _ in range(2)]
    assert codes == [235, 235]
    smtp_after = [await node.logins("smtp") for node in (topology.a, topology.b)]
    assert [late - early for early, late in zip(smtp_before, smtp_after, strict=True)] == [1, 1]

    async with httpx.AsyncClient(timeout=10) as http:
        url = f"http://127.0.0.1:{frontends.http}"
        answers = [await http.get(f"{url}/readyz") for _ in range(4)]
        me = await http.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert {a.status_code for a in answers} == {200}
    assert {a.json()["status"] for a in answers} == {"ready"}
    assert me.json()["idnat"] == "899700000001"


async def test_audit_shows_the_clients_address(topology: Topology) -> None:
    """The clients connect from 127.0.0.2; HAProxy from 127.0.0.1. The PROXY v2 header
    carries the former to the node, and it is what the audit keeps, on both nodes."""
    mark = await topology.audit_mark()
    token = await topology.token()
    assert await sessions(topology.haproxy.frontends.imap, token, 2) == ["OK"] * 2
    codes = [await asyncio.to_thread(smtp_login, topology.haproxy.frontends.smtp, token)]
    codes.append(await asyncio.to_thread(smtp_login, topology.haproxy.frontends.smtp, token))
    assert codes == [235, 235]
    for interface in ("imap", "smtp"):
        # at least these two: a login of an earlier test may be committed after the mark
        # (each node writes its audit in batches), and it came through HAProxy as well
        rows = await topology.audited("login", interface, mark, count=2)
        assert {row["remote"] for row in rows} == {CLIENT_ADDRESS}, (interface, rows)


async def test_audit_shows_the_http_clients_address(topology: Topology) -> None:
    """HAProxy adds X-Forwarded-For (the client's own dropped); the nodes trust it from
    HAProxy's address only."""
    mark = await topology.audit_mark()
    holder = {
        "Authorization": f"Bearer {await topology.token('dr-martin')}",
        "X-Forwarded-For": "198.51.100.66, 127.0.0.1",  # forged: a trusted hop to skip
        "X-Forwarded-Proto": "https",
    }
    url = f"http://127.0.0.1:{topology.haproxy.frontends.http}/v1/mailboxes/{MARTIN}/delegations"
    transport = httpx.AsyncHTTPTransport(local_address=CLIENT_ADDRESS)
    async with httpx.AsyncClient(timeout=10, headers=holder, transport=transport) as http:
        granted = await http.post(url, json={"delegate": "899700000004", "rights": ["read"]})
    assert granted.status_code == 201, granted.text
    rows = await topology.audited("grant", "http", mark, count=1)
    assert [row["remote"] for row in rows] == [CLIENT_ADDRESS], rows


async def test_revocation_through_node_a_ends_the_session_on_node_b(topology: Topology) -> None:
    """The delegate holds one session on each node (round-robin); the holder revokes
    through node A's API; node B learns it through PostgreSQL (LISTEN/NOTIFY) and ends its
    session, within two seconds of the revocation's answer."""
    held = await topology.one_session_on_each("sec-bernard")

    holder = {"Authorization": f"Bearer {await topology.token('dr-martin')}"}
    url = f"{topology.a.http_url}/v1/mailboxes/{MARTIN}/delegations"
    async with httpx.AsyncClient(timeout=10, headers=holder) as http:
        (delegation,) = [
            d for d in (await http.get(url)).json() if d["delegate"]["idnat"] == BERNARD
        ]
        revoked = await http.delete(f"{url}/{delegation['id']}")
    answered = time.monotonic()
    assert revoked.status_code == 200, revoked.text

    async def bye(client: Raw) -> float:
        line = await client.line(wait=REVOCATION_BOUND + REVOCATION_MARGIN)
        assert line.startswith(b"* BYE"), line
        assert b"revoked" in line, line
        return time.monotonic() - answered

    delays = await asyncio.gather(*(bye(client) for client in held))
    assert max(delays) < REVOCATION_BOUND, delays
    for client in held:
        await client.close()


async def test_killing_node_a_moves_new_logins_to_node_b(topology: Topology) -> None:
    """SIGKILL node A: its sessions die with it; once HAProxy's checks mark it down, every
    new login lands on node B, and B's sessions never notice."""
    frontends = topology.haproxy.frontends
    token = await topology.token()
    held = await topology.one_session_on_each("dr-martin")

    topology.a.process.send_signal(signal.SIGKILL)
    topology.a.process.wait(10)

    def a_down() -> bool:
        return all(state.startswith("DOWN") for state in topology.haproxy.status_of("a"))

    await asyncio.to_thread(settled, a_down, "HAProxy marks node A down")
    assert all(state.startswith("UP") for state in topology.haproxy.status_of("b"))

    outcomes = []
    for client in held:
        try:
            await client.ok("NOOP")
            outcomes.append("alive")
        except (ConnectionError, AssertionError, asyncio.IncompleteReadError):
            outcomes.append("killed")
    assert sorted(outcomes) == ["alive", "killed"], outcomes

    before = await topology.b.logins()
    assert await sessions(frontends.imap, token, 4) == ["OK"] * 4
    assert await topology.b.logins() - before == 4
    async with httpx.AsyncClient(timeout=10) as http:
        url = f"http://127.0.0.1:{frontends.http}/healthz"
        answers = [await http.get(url) for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4
    for client in held:
        await client.close()
