"""docker/: images cannot be pulled on these machines, so the files are checked as they
stand: the compose file parses and names the project's real commands, options, ports and
health checks; HAProxy accepts its configuration; the Dockerfile builds the wheel of the
project's packages, runs as non-root and runs what the README documents; the health
checks, run as written, get their answer from a real gateway and a real mock."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from cryptography import x509
from typer.main import get_command
from typer.testing import CliRunner

from gateway.cli import app as gateway_app
from gateway.server import Gateway
from gateway.settings import MockSettings, Settings, load_settings
from mock_operator.cli import app as mock_app
from mock_operator.server import MockOperator
from tests.conftest import quick_mock_settings
from tests.support.haproxy import FORWARDED_HEADERS, require_haproxy
from tests.support.stacks import gateway_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
PROGRAMS: dict[str, typer.Typer] = {"lps-gateway": gateway_app, "mock-operator": mock_app}
GATEWAY_NODES = ("gateway-a", "gateway-b")
DEFAULTS = Settings()
MOCK_DEFAULTS = MockSettings()


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return loaded


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def exec_form(arguments: str) -> list[str]:
    """A Dockerfile exec-form argument list (JSON), as CMD and HEALTHCHECK CMD take."""
    value: list[str] = json.loads(arguments)
    return value


def instruction(keyword: str) -> list[str]:
    return [arguments for key, arguments in dockerfile() if key == keyword]


def subcommand(argv: list[str]) -> Any:
    """The (click) command `argv` runs, its program a console script of the project."""
    program, name = argv[0], argv[1]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert program in project["project"]["scripts"]
    commands = get_command(PROGRAMS[program]).commands  # type: ignore[attr-defined]
    assert name in commands, f"{program} has no command {name}"
    return commands[name]


def gateway_config() -> Settings:
    """docker/gateway.toml as a node loads it, with compose's environment."""
    environment = compose()["services"]["gateway-a"]["environment"]
    return load_settings(DOCKER / "gateway.toml", database_url=environment["LPSGW_DATABASE_URL"])


def test_compose_describes_the_topology() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "mock-operator", *GATEWAY_NODES, "haproxy"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["haproxy"]["image"].startswith("haproxy:")
    haproxy_volumes = services["haproxy"]["volumes"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy_volumes
    for node in GATEWAY_NODES:
        assert services[node]["image"] == services["mock-operator"]["image"]
        assert "./gateway.toml:/etc/lps-gateway/config.toml:ro" in services[node]["volumes"]
    build = services["mock-operator"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"


@pytest.mark.parametrize("service", ["mock-operator", *GATEWAY_NODES])
def test_every_command_is_a_real_subcommand_with_real_options(service: str) -> None:
    argv = compose()["services"][service]["command"]
    command = subcommand(argv)
    options = {opt for param in command.params for opt in param.opts}
    given = [word.split("=")[0] for word in argv[2:] if word.startswith("--")]
    assert given, argv
    assert set(given) <= options, (argv, sorted(options))
    # ... and the program parses them as its users would type them
    result = CliRunner().invoke(PROGRAMS[argv[0]], [*argv[1:], "--help"])
    assert result.exit_code == 0, result.output


def test_ports_are_the_projects_defaults() -> None:
    services = compose()["services"]
    gateway_ports = {DEFAULTS.imap.port, DEFAULTS.smtp.port, DEFAULTS.http.port}
    assert gateway_ports == {1143, 1587, 8080}  # the contract (ARCHITECTURE.md)
    for node in GATEWAY_NODES:
        assert {int(p) for p in services[node]["expose"]} == gateway_ports
    published = {tuple(map(int, p.split(":"))) for p in services["haproxy"]["ports"]}
    assert published == {(port, port) for port in gateway_ports}
    mock_ports = {MOCK_DEFAULTS.imap_port, MOCK_DEFAULTS.smtp_port, MOCK_DEFAULTS.http_port}
    assert {int(p) for p in services["mock-operator"]["expose"]} == mock_ports
    exposed = {int(p) for line in instruction("EXPOSE") for p in line.split()}
    assert exposed == gateway_ports


def test_gateway_config_loads_and_points_at_the_mock() -> None:
    """docker/gateway.toml is a valid configuration (no unknown key) that listens on the
    default ports and reaches the mock service on the mock's default ports."""
    settings = gateway_config()
    mock_env = compose()["services"]["mock-operator"]["environment"]
    mock = MockSettings(public_url=mock_env["LPSGW_MOCK__PUBLIC_URL"])
    assert settings.psc.issuer == mock.issuer()
    assert settings.psc.client_ids
    assert (settings.imap.port, settings.smtp.port, settings.http.port) == (
        DEFAULTS.imap.port,
        DEFAULTS.smtp.port,
        DEFAULTS.http.port,
    )
    modern = settings.backends["modern"]
    assert (modern.imap_host, modern.imap_port, modern.smtp_port) == (
        "mock-operator",
        MOCK_DEFAULTS.imap_port,
        MOCK_DEFAULTS.smtp_port,
    )
    assert modern.master_user == MOCK_DEFAULTS.master_user
    assert settings.backends["historic"].ws_url == f"{mock.base_url()}/mss-msg-services/services"
    assert settings.database().startswith("postgresql://")
    (volume,) = instruction("VOLUME")
    assert exec_form(volume) == [str(settings.data_dir)]


def test_nodes_get_time_to_drain_before_they_are_killed() -> None:
    """The orchestrator's kill comes after `[ops] shutdown_grace` (and the second the node
    takes to cut what is left and write its audit), not at Docker's default 10 s."""
    grace = gateway_config().ops.shutdown_grace
    for node in GATEWAY_NODES:
        period = compose()["services"][node]["stop_grace_period"]
        seconds = re.fullmatch(r"(\d+)s", period)
        assert seconds is not None, period
        assert int(seconds.group(1)) >= grace + 5, (node, period, grace)


def test_haproxy_config_is_valid() -> None:
    """`haproxy -c` accepts it; the node names resolve only inside compose's network, which
    the configuration allows for (init-addr none: a server down until its name resolves)."""
    haproxy = require_haproxy()
    checked = subprocess.run(
        [haproxy, "-c", "-f", str(DOCKER / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    warnings = [line for line in checked.stderr.splitlines() if "[WARNING]" in line]
    assert all("could not resolve address" in line for line in warnings), warnings


def test_haproxy_routes_to_the_nodes_real_ports() -> None:
    text = (DOCKER / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+):(\d+)(.*)$", text, re.MULTILINE)
    assert {name for name, *_ in servers} == set(GATEWAY_NODES)
    for name, host, port, options in servers:
        assert host == name
        assert "check" in options
        assert int(port) in {DEFAULTS.imap.port, DEFAULTS.smtp.port, DEFAULTS.http.port}
        if int(port) != DEFAULTS.http.port:
            assert f"check port {DEFAULTS.http.port}" in options  # /readyz of the node
    assert text.count("option httpchk GET /readyz") == 3
    binds = {int(port) for port in re.findall(r"^\s*bind :(\d+)$", text, re.MULTILINE)}
    assert binds == {DEFAULTS.imap.port, DEFAULTS.smtp.port, DEFAULTS.http.port}


def test_nodes_take_the_client_address_from_haproxy_only() -> None:
    """HAProxy sends a PROXY v2 header on every IMAP and SMTP connection and
    X-Forwarded-For on HTTP, from the fixed address the nodes trust for it, in compose's
    network."""
    text = (DOCKER / "haproxy.cfg").read_text()
    for port in (DEFAULTS.imap.port, DEFAULTS.smtp.port):
        servers = re.findall(rf"^\s*server \S+ \S+:{port} (.*)$", text, re.MULTILINE)
        assert len(servers) == len(GATEWAY_NODES)
        assert all("send-proxy-v2" in options for options in servers)
    http = re.findall(rf"^\s*server \S+ \S+:{DEFAULTS.http.port} (.*)$", text, re.MULTILINE)
    assert not any("send-proxy" in options for options in http)
    frontend = text.split("frontend http", 1)[1].split("backend", 1)[0]
    for line in FORWARDED_HEADERS:  # the client's own are not passed on
        assert line in frontend.splitlines(), line
    project = compose()
    address = ipaddress.ip_address(
        project["services"]["haproxy"]["networks"]["default"]["ipv4_address"]
    )
    (subnet,) = project["networks"]["default"]["ipam"]["config"]
    assert address in ipaddress.ip_network(subnet["subnet"])
    settings = gateway_config()
    for trusting in (
        settings.imap.proxy_protocol_from,
        settings.smtp.proxy_protocol_from,
        settings.http.forwarded_allow_ips,
    ):
        assert [ipaddress.ip_network(n) for n in trusting] == [ipaddress.ip_network(address)]
    assert "option forwardfor" in text.split("backend http_nodes", 1)[1]


def test_dockerfile_builds_the_wheel_and_runs_as_non_root() -> None:
    stages = instruction("FROM")
    assert len(stages) == 2
    assert stages[0].startswith("python:3.11-slim AS builder")
    assert stages[1].startswith("python:3.11-slim")
    runs = instruction("RUN")
    assert any("pip wheel" in run for run in runs)
    assert any("pip install" in run and "--no-index" in run for run in runs)
    (user,) = instruction("USER")
    assert user not in ("root", "0")
    created = [r.split("useradd", 1)[1].split("&&")[0].split() for r in runs if "useradd" in r]
    assert [words[-1] for words in created] == [user]  # the user it runs as is created
    copied = {args.split()[0] for args in instruction("COPY") if not args.startswith("--")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert set(packages) <= copied
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert not set(packages) & set(ignored)


def test_dockerfile_runs_what_the_readme_documents() -> None:
    readme = (ROOT / "README.md").read_text()
    (cmd,) = instruction("CMD")
    argv = exec_form(cmd)
    assert argv[:2] == ["lps-gateway", "serve"]
    subcommand(argv)
    assert shlex.join(argv[:3]) in readme  # "lps-gateway serve --config"
    section = readme.split("## Running with Docker", 1)[1].split("\n## ", 1)[0]
    for documented in ("docker compose up", "docker build -f docker/Dockerfile"):
        assert documented in section
    for service in compose()["services"].values():
        if "command" in service:
            assert shlex.join(service["command"][:2]) in readme


def healthcheck_commands() -> dict[str, list[str]]:
    """Each health check as a container runs it: the Dockerfile's and compose's."""
    (dockerfile_check,) = instruction("HEALTHCHECK")
    image = exec_form(dockerfile_check.split(" CMD ", 1)[1])
    services = compose()["services"]
    checks = {"image": image, "mock-operator": services["mock-operator"]["healthcheck"]["test"]}
    for node in GATEWAY_NODES:
        checks[node] = services[node]["healthcheck"]["test"]
    return {name: (test[1:] if test[0] == "CMD" else test) for name, test in checks.items()}


async def answered(
    argv: list[str], default_port: int, port: int
) -> subprocess.CompletedProcess[str]:
    """A health check run as written (python, so the slim image needs no curl), its port
    moved to where the test's server listens."""
    assert argv[0] == "python"
    code = argv[-1]
    assert f"http://127.0.0.1:{default_port}/healthz" in code
    moved = [sys.executable, *argv[1:-1], code.replace(f":{default_port}/", f":{port}/")]
    return await asyncio.to_thread(
        subprocess.run, moved, capture_output=True, text=True, timeout=30, check=False
    )


async def test_health_checks_get_an_answer(tmp_path: Path) -> None:
    checks = healthcheck_commands()
    gateway = Gateway(gateway_settings(tmp_path / "gateway"))
    mock = MockOperator(quick_mock_settings(), tmp_path / "mock")
    await gateway.start()
    await mock.start()
    gateway_port = gateway.http_port
    try:
        mock_port = urlsplit(mock.http_url).port
        assert mock_port is not None
        runs = {
            name: await answered(argv, DEFAULTS.http.port, gateway_port)
            for name, argv in checks.items()
            if name != "mock-operator"
        }
        runs["mock-operator"] = await answered(
            checks["mock-operator"], MOCK_DEFAULTS.http_port, mock_port
        )
    finally:
        await mock.stop()
        await gateway.stop()
    assert {name: run.returncode for name, run in runs.items()} == dict.fromkeys(checks, 0), runs
    # ... and fail when nothing answers
    failed = await answered(checks["image"], DEFAULTS.http.port, gateway_port)
    assert failed.returncode != 0


async def test_mock_certificate_names_its_compose_service(tmp_path: Path) -> None:
    """The nodes verify the mock's development certificate by the service's name, which
    its public_url (compose's environment) gives it."""
    public_url = compose()["services"]["mock-operator"]["environment"]["LPSGW_MOCK__PUBLIC_URL"]
    settings = quick_mock_settings().model_copy(update={"public_url": public_url})
    mock = MockOperator(settings, tmp_path / "mock")
    await mock.start()
    try:
        pem = await asyncio.to_thread(Path(mock.tls_cert).read_bytes)
    finally:
        await mock.stop()
    certificate = x509.load_pem_x509_certificate(pem)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert set(names.value.get_values_for_type(x509.DNSName)) == {"localhost", "mock-operator"}
    assert gateway_config().backends["modern"].imap_host == urlsplit(public_url).hostname
