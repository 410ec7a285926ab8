"""The commands as a user runs them: real processes, real sockets, ports chosen by the OS."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from psc_auth import TokenError, TokenFailure, TokenValidator, ValidatorConfig

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def command(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is not installed"
    return path


def start(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args,
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_url(process: subprocess.Popen[str], timeout: float = 30) -> str:
    """Read the process's output until it says where it listens."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if found:
            return found.group(1)
    stderr = process.stderr.read() if process.stderr and process.poll() is not None else ""
    pytest.fail(f"no URL announced: {''.join(seen)} {stderr}")


# every listener of `lps-gateway demo` on a port of the OS's choosing
DEMO_PORTS = {
    "LPSGW_HTTP__PORT": "0",
    "LPSGW_IMAP__PORT": "0",
    "LPSGW_SMTP__PORT": "0",
    **{f"LPSGW_MOCK__{p}_PORT": "0" for p in ("HTTP", "IMAP", "SMTP", "HISTORIC_IMAP")},
}


def demo_banner(process: subprocess.Popen[str]) -> str:
    """The rest of the demo's banner, once the mock's URL is read (`wait_for_url`)."""
    assert process.stdout is not None
    lines: list[str] = []
    while len(lines) < 60 and not any("Ctrl-C" in line for line in lines):
        lines.append(process.stdout.readline())
    return "".join(lines)


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("did not stop on SIGINT")


@pytest.fixture
def mock_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = start(
        [
            command("mock-operator"),
            "serve",
            *(f"--{p}-port=0" for p in ("http", "imap", "smtp", "historic-imap")),
        ],
        tmp_path,
    )
    url = wait_for_url(process)
    try:
        yield process, url
    finally:
        if process.poll() is None:
            stop(process)


def token_from_cli(url: str, *extra: str) -> str:
    done = subprocess.run(
        [command("mock-operator"), "token", "dr-martin", "--url", url, *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


async def test_serve_then_token_then_expiry(
    mock_process: tuple[subprocess.Popen[str], str], tmp_path: Path
):
    _process, url = mock_process
    issuer = f"{url}/auth/realms/esante-wallet"
    async with httpx.AsyncClient(timeout=10) as http:
        discovery = await http.get(f"{issuer}/.well-known/wallet-openid-configuration")
    assert discovery.json()["issuer"] == issuer
    assert (tmp_path / ".mock-operator" / "clients.toml").is_file()

    token = token_from_cli(url)
    assert token.count(".") == 2
    validator = TokenValidator(ValidatorConfig(issuer=issuer, clock_skew_seconds=0))
    identity = await validator.validate(token)
    assert str(identity.idnat) == "899700000001"

    # The validators read a clock the test turns: no wait, and no race with a busy machine
    # between the token's issue and its first check.
    short = token_from_cli(url, "--lifetime", "3")
    claims = json.loads(base64.urlsafe_b64decode(short.split(".")[1] + "=="))
    assert claims["exp"] - claims["iat"] == 3
    now = [float(claims["iat"])]
    await validator.aclose()
    validator = TokenValidator(
        ValidatorConfig(issuer=issuer, clock_skew_seconds=0), clock=lambda: now[0]
    )
    assert str((await validator.validate(short)).idnat) == "899700000001"
    now[0] = float(claims["exp"])
    fresh = TokenValidator(
        ValidatorConfig(issuer=issuer, clock_skew_seconds=0), clock=lambda: now[0]
    )
    with pytest.raises(TokenError) as caught:
        await fresh.validate(short)
    assert caught.value.failure is TokenFailure.EXPIRED
    with pytest.raises(TokenError) as cached:
        await validator.validate(short)
    assert cached.value.failure is TokenFailure.EXPIRED, "the cache never outlives a token"
    await validator.aclose()
    await fresh.aclose()


def test_token_errors_are_clear(mock_process: tuple[subprocess.Popen[str], str]):
    _process, url = mock_process
    unknown = subprocess.run(
        [command("mock-operator"), "token", "dr-nobody", "--url", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert unknown.returncode == 1
    assert "unknown persona" in unknown.stderr
    assert unknown.stdout == ""
    down = subprocess.run(
        [command("mock-operator"), "token", "dr-martin", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1
    assert "Is it running?" in down.stderr


def test_serve_stops_cleanly_on_sigint(mock_process: tuple[subprocess.Popen[str], str]):
    process, url = mock_process
    assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    assert stop(process) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


async def test_demo_runs_the_mock_psc_and_says_so(tmp_path: Path):
    process = start([command("lps-gateway"), "demo"], tmp_path, env=DEMO_PORTS)
    try:
        url = wait_for_url(process)
        banner = demo_banner(process)
        gateway = re.search(r"lps-gateway listening on (http://127\.0\.0\.1:\d+)", banner)
        assert gateway is not None, banner
        imap = re.search(r"API LPS IMAP \(STARTTLS\): +127\.0\.0\.1:(\d+)", banner)
        smtp = re.search(r"API LPS SMTP \(STARTTLS\): +127\.0\.0\.1:(\d+)", banner)
        assert imap is not None, banner
        historic = re.search(r"historic platform IMAP: +imap://127\.0\.0\.1:(\d+)", banner)
        assert historic is not None, banner
        secret = tmp_path / ".lps-gateway" / "mock-operator" / "master.secret"
        assert await asyncio.to_thread(historic_master_login, int(historic.group(1)), secret)
        assert smtp is not None, banner
        # the mock is not on its default port: every command says where it is
        assert f"TOKEN=$(.venv/bin/mock-operator token sec-bernard --url {url})" in banner
        assert f"mock-operator end-session sec-bernard --url {url})" in banner
        token = token_from_cli(url)
        validator = TokenValidator(
            ValidatorConfig(issuer=f"{url}/auth/realms/esante-wallet", client_ids=["lps-demo"])
        )
        assert str((await validator.validate(token)).idnat) == "899700000001"
        await validator.aclose()
        assert (tmp_path / ".lps-gateway" / "mock-operator" / "clients.toml").is_file()
        async with httpx.AsyncClient(timeout=10) as http:
            secretary = (
                await http.post(f"{url}/_test/token", json={"persona": "sec-bernard"})
            ).json()["access_token"]
            boxes = await http.get(
                f"{gateway.group(1)}/v1/mailboxes",
                headers={"Authorization": f"Bearer {secretary}"},
            )
        assert {b["address"] for b in boxes.json()} == {
            "claire.martin@medecin.mssante.fr",
            "jean.dupont@medecin.mssante.fr",
        }
        await asyncio.to_thread(
            demo_as_secretary, int(imap.group(1)), int(smtp.group(1)), secretary
        )
    finally:
        assert stop(process) == 0


def historic_master_login(port: int, secret: Path) -> bool:
    """The operator's master login on the demo's historic platform IMAP opens jean.dupont."""
    blob = f"jean.dupont@medecin.mssante.fr\0lps-gateway\0{secret.read_text().strip()}"
    with imaplib.IMAP4("127.0.0.1", port) as client:
        client.authenticate("PLAIN", lambda _: blob.encode())
        typ, _ = client.select("INBOX", readonly=True)
    return typ == "OK"


def demo_as_secretary(imap_port: int, smtp_port: int, token: str) -> None:
    """The demo's promise, through the gateway's own ports: Sophie BERNARD opens and sends
    from Dr MARTIN's BAL, and may not open Dr MOREAU's."""
    martin, moreau = "claire.martin@medecin.mssante.fr", "eve.moreau@medecin.mssante.fr"

    def xoauth2(user: str) -> bytes:
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()

    with (
        imaplib.IMAP4("127.0.0.1", imap_port) as refused,
        pytest.raises(imaplib.IMAP4.error, match="AUTHORIZATIONFAILED"),
    ):
        refused.authenticate("XOAUTH2", lambda _: xoauth2(moreau))
    with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
        smtp.ehlo()
        smtp.docmd("AUTH", "XOAUTH2 " + base64.b64encode(xoauth2(martin)).decode())
        smtp.sendmail(
            martin,
            ["luc.durand@infirmier.mssante.fr"],
            f"From: {martin}\r\nTo: luc.durand@infirmier.mssante.fr\r\n"
            "Subject: demo\r\nX-MSS-NIL: DEMO-0001\r\n\r\nBonjour\r\n",
        )
    with imaplib.IMAP4("127.0.0.1", imap_port) as client:
        assert client.authenticate("XOAUTH2", lambda _: xoauth2(martin))[0] == "OK"
        assert client.select("Envoy&AOk-s")[0] == "OK"
        _, found = client.search(None, "SUBJECT", "demo")
        (number,) = found[0].split()
        _, data = client.fetch(number, "(BODY.PEEK[HEADER.FIELDS (SENDER)])")
        assert b"Sophie BERNARD" in data[0][1]  # type: ignore[index]


def test_personas_lists_the_contract_personas():
    """Whole values, each persona on one row, even where COLUMNS says 80 (a pipe)."""
    done = subprocess.run(
        [command("mock-operator"), "personas"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1"},
    )
    rows = {line.split()[1]: line for line in done.stdout.splitlines() if "899700000" in line}
    assert "claire.martin@medecin.mssante.fr" in rows["dr-martin"]
    assert "Claire MARTIN" in rows["dr-martin"]
    assert "marie.petit@sage-femme.mssante.fr" in rows["sf-petit"]
    for key in (
        "dr-martin",
        "dr-dupont",
        "sec-bernard",
        "ide-durand",
        "sf-petit",
        "dr-leroy",
        "adm-roux",
    ):
        assert key in done.stdout
    assert "899700000007" in done.stdout
    assert "899700000008" in done.stdout


def serve_config(tmp_path: Path, mock_process: tuple[subprocess.Popen[str], str]) -> Path:
    """A `lps-gateway serve` configuration in front of the running `mock-operator serve`
    (its modern platform as the one backend), with its state in `tmp_path / "state"`."""
    mock, mock_url = mock_process
    assert mock.stdout is not None
    mock_lines = "".join(mock.stdout.readline() for _ in range(3))
    ports = dict(re.findall(r"(IMAP|SMTP)[^:]*: +\w+://127\.0\.0\.1:(\d+)", mock_lines))
    assert set(ports) == {"IMAP", "SMTP"}, mock_lines
    mock_dir = tmp_path / ".mock-operator"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "state"}"\n'
        "[http]\nport = 0\n[imap]\nport = 0\n[smtp]\nport = 0\n"
        f'[psc]\nissuer = "{mock_url}/auth/realms/esante-wallet"\nclient_ids = ["lps-demo"]\n'
        "[backends.modern]\n"
        f"imap_port = {ports['IMAP']}\nsmtp_port = {ports['SMTP']}\n"
        f'ca_file = "{mock_dir / "tls" / "dev-cert.pem"}"\n'
        'master_user = "lps-gateway"\n'
        f'master_password_file = "{mock_dir / "master.secret"}"\n'
        '[routing]\ndefault = "modern"\n'
    )
    return config


async def test_gateway_serve_alone(tmp_path: Path, mock_process: tuple[subprocess.Popen[str], str]):
    """`lps-gateway serve --config` in front of a separately running `mock-operator serve`."""
    _mock, mock_url = mock_process
    config = serve_config(tmp_path, mock_process)
    process = start([command("lps-gateway"), "serve", "--config", str(config)], tmp_path)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert found, line
        imap_line = process.stdout.readline()
        imap = re.search(r"API LPS IMAP \(STARTTLS\): +127\.0\.0\.1:(\d+)", imap_line)
        assert imap, imap_line
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{found.group(1)}/healthz")).json() == {"status": "ok"}
            ready = (await http.get(f"{found.group(1)}/readyz")).json()
            anonymous = await http.get(f"{found.group(1)}/v1/me")
        assert ready["status"] == "ready", ready
        assert ready["checks"]["backend:modern:imap"] == "ok"
        assert anonymous.status_code == 401
        assert (tmp_path / "state" / "gateway.db").is_file()
        token = token_from_cli(mock_url)

        def login() -> bytes:
            with imaplib.IMAP4("127.0.0.1", int(imap.group(1))) as client:
                try:
                    client.authenticate(
                        "XOAUTH2",
                        lambda _: f"user=\x01auth=Bearer {token}\x01\x01".encode(),
                    )
                except imaplib.IMAP4.error as refused:
                    return str(refused).encode()
            return b"logged in"

        # The token is good, but this gateway's registry knows no mailbox yet.
        assert b"AUTHORIZATIONFAILED" in await asyncio.to_thread(login)
    finally:
        assert stop(process) == 0


def test_serve_refuses_to_start_accepting_any_audience(tmp_path: Path) -> None:
    """No `psc.client_ids`: any PSC client's token would open mailboxes here. `serve` says
    which key to set and exits 1, without a traceback; `accept_any_audience` overrides."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{tmp_path / "state"}"\n[http]\nport = 0\n')
    done = subprocess.run(
        [command("lps-gateway"), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1
    assert "psc.client_ids is empty" in done.stderr
    assert "accept_any_audience" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "state" / "gateway.db").exists()  # refused before opening anything

    config.write_text(
        f'data_dir = "{tmp_path / "state"}"\n[http]\nport = 0\n[imap]\nport = 0\n'
        "[smtp]\nport = 0\n[psc]\naccept_any_audience = true\n"
    )
    process = start([command("lps-gateway"), "serve", "--config", str(config)], tmp_path)
    try:
        assert process.stdout is not None
        assert "listening on http://127.0.0.1:" in process.stdout.readline()
    finally:
        assert stop(process) == 0
