"""What a new user trips over first, as they run the commands: a busy port is one line
naming it, `demo --config` adds backends to the demo's own, `/ui` says which setting its
login lacks (`mock-operator personas` printing whole values: tests/test_cli.py)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_cli import DEMO_PORTS, command, demo_banner, start, stop, wait_for_url

pytestmark = pytest.mark.slow

SERVE_PORTS = {"LPSGW_HTTP__PORT": "0", "LPSGW_IMAP__PORT": "0", "LPSGW_SMTP__PORT": "0"}
ANY_AUDIENCE = {"LPSGW_PSC__ACCEPT_ANY_AUDIENCE": "true"}


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize(
    ("program", "variable", "setting"),
    [
        ("serve", "LPSGW_IMAP__PORT", "imap.port"),
        ("serve", "LPSGW_SMTP__PORT", "smtp.port"),
        ("demo", "LPSGW_HTTP__PORT", "http.port"),
        ("demo", "LPSGW_MOCK__IMAP_PORT", "mock.imap_port"),
        ("mock-operator", "--imap-port", "mock.imap_port"),
    ],
)
def test_a_busy_port_is_one_line(
    tmp_path: Path, busy_port: int, program: str, variable: str, setting: str
):
    if program == "mock-operator":
        ports = [f"--{p}-port=0" for p in ("http", "smtp", "historic-imap")]
        args = [command("mock-operator"), "serve", *ports, f"{variable}={busy_port}"]
        env = {}
    else:
        args = [command("lps-gateway"), program]
        env = {**DEMO_PORTS, **ANY_AUDIENCE, variable: str(busy_port)}
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, **env},
        check=False,
    )
    name = "mock-operator" if program == "mock-operator" else "lps-gateway"
    said = f"{name}: cannot listen on 127.0.0.1:{busy_port} ({setting}): address already in use"
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == said
    assert "Traceback" not in done.stderr + done.stdout


def test_demo_config_adds_backends_to_the_demo_ones(tmp_path: Path):
    config = tmp_path / "demo.toml"
    config.write_text(
        '[backends.modern]\nimap_host = "127.0.0.1"\nimap_port = 10143\nsmtp_port = 10587\n'
        "[backends.archive]\nimap_port = 11143\nsmtp_port = 11587\n"
    )
    process = start(
        [command("lps-gateway"), "demo", "--config", str(config)], tmp_path, env=DEMO_PORTS
    )
    try:
        mock = wait_for_url(process)
        banner = demo_banner(process)
        backends = dict(re.findall(r"backend (\w+): +(.*)", banner))
        assert backends == {
            "modern": "imap_smtp, imap 127.0.0.1:10143, smtp 127.0.0.1:10587 (default)",
            "historic": f"legacy_ws, {mock}/mss-msg-services/services",
            "archive": "imap_smtp, imap 127.0.0.1:11143, smtp 127.0.0.1:11587",
        }, banner
    finally:
        assert stop(process) == 0


async def test_ui_login_names_the_missing_client_secret(tmp_path: Path):
    env = {**SERVE_PORTS, **ANY_AUDIENCE, "LPSGW_DATA_DIR": str(tmp_path / "state")}
    process = start([command("lps-gateway"), "serve"], tmp_path, env=env)
    try:
        url = wait_for_url(process)
        async with httpx.AsyncClient(timeout=10) as http:
            login = await http.get(f"{url}/ui/login")
        assert login.status_code == 503
        assert "ui.client_secret" in login.text
        assert "LPSGW_UI__CLIENT_SECRET" in login.text
    finally:
        assert stop(process) == 0
    assert process.stderr is not None
    log = process.stderr.read()
    assert "ui.client_secret_missing" in log, "said at start-up, before anyone tries"
    assert "web.login_unconfigured" in log
    assert "HTTPStatusError" not in log
