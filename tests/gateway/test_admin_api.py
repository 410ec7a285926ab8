"""`/admin` authenticated by the local admin secret or an administrator's PSC token, and
`lps-gateway admin status`, the command that proves the plumbing: a real gateway in front
of a running mock, the command run as a user runs it (a process of its own)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from delegation.audit import AuditAction
from gateway import admin_secret
from gateway.admin_client import AdminClient, AdminRefused, AdminTarget, GatewayUnreachable
from gateway.api.admin import LOCAL_ADMIN
from gateway.settings import Settings
from tests.conftest import quick_mock_settings
from tests.support.stacks import Stack, gateway_settings, running_stack

ADMIN = "899700000008"  # persona adm-roux
LPS_GATEWAY = str(Path(sys.executable).parent / "lps-gateway")


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return gateway_settings(tmp_path / "gateway", admin={"idnats": [ADMIN]})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def refusing(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway for the credentials that must be refused (a stack each was nearly all of
    their time): a refusal changes nothing the next one sees. Tests that count what was
    audited or let someone in keep a gateway each."""
    directory = tmp_path_factory.mktemp("admin-refusals")
    settings = gateway_settings(directory / "gateway", admin={"idnats": [ADMIN]})
    async with running_stack(settings, quick_mock_settings(), directory / "mock") as running:
        yield running


def _secret(stack: Stack) -> str:
    return (stack.gateway.settings.data_dir / "admin.secret").read_text().strip()


async def _status(stack: Stack, authorization: str | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with httpx.AsyncClient(base_url=stack.gateway.http_url, timeout=10) as http:
        return await http.get("/admin/status", headers=headers)


def test_the_secret_is_created_private_and_kept(tmp_path: Path) -> None:
    first = admin_secret.ensure_admin_secret(tmp_path)
    path = tmp_path / "admin.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.startswith("lpsgw-admin.")
    assert len(first) > 40
    path.chmod(0o644)  # an operator's careless copy
    assert admin_secret.ensure_admin_secret(tmp_path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = tmp_path / "other"
    other.mkdir()
    assert admin_secret.ensure_admin_secret(other) != first


async def test_the_running_gateway_writes_its_secret_and_url(stack: Stack) -> None:
    data_dir = stack.gateway.settings.data_dir
    assert stat.S_IMODE((data_dir / "admin.secret").stat().st_mode) == 0o600
    url = (data_dir / "admin.url").read_text().strip()
    assert url == f"http://127.0.0.1:{stack.gateway.http_port}"


async def test_the_local_secret_opens_admin_and_is_audited(stack: Stack) -> None:
    answer = await _status(stack, f"Bearer {_secret(stack)}")
    assert answer.status_code == 200, answer.text
    status = answer.json()
    assert status["backends"] == [{"name": "modern", "kind": "imap_smtp"}]
    assert status["routing"] == {"default": "modern"}
    assert status["version"]
    assert status["node"]
    assert stack.gateway.delegations is not None
    events = await stack.gateway.delegations.audit_for("")
    mine = [e for e in events if e.actor_idnat == LOCAL_ADMIN]
    assert mine
    assert mine[0].action == AuditAction.ADMIN.value
    assert mine[0].detail == "GET /admin/status"
    assert mine[0].interface == "http"


@pytest.mark.asyncio(loop_scope="module")
async def test_the_secret_is_compared_in_constant_time(
    refusing: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = refusing
    compared: list[tuple[bytes, bytes]] = []
    real = admin_secret.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin_secret.hmac, "compare_digest", spy)
    secret = _secret(stack)
    assert (await _status(stack, f"Bearer {secret}x")).status_code == 401
    assert compared == [(secret.encode(), (secret + "x").encode())]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer lpsgw-admin.wrong",
        "Bearer lpsgw-admin.",
        "Basic bHBzZ3c6YWRtaW4=",
        "Bearer not-a-token",
    ],
)
async def test_wrong_or_missing_credentials_are_refused(
    refusing: Stack, authorization: str | None
) -> None:
    stack = refusing
    answer = await _status(stack, authorization)
    assert answer.status_code == 401, answer.text
    assert "backends" not in answer.text


@pytest.mark.asyncio(loop_scope="module")
async def test_a_secret_with_the_wrong_prefix_case_is_a_token_not_a_secret(
    refusing: Stack,
) -> None:
    stack = refusing
    secret = _secret(stack)
    answer = await _status(stack, f"Bearer {secret.upper()}")
    assert answer.status_code == 401


async def test_psc_tokens_of_administrators_only(stack: Stack) -> None:
    admin = await _status(stack, f"Bearer {await stack.token('adm-roux')}")
    assert admin.status_code == 200, admin.text
    assert admin.json()["routing"]["default"] == "modern"
    other = await _status(stack, f"Bearer {await stack.token('dr-martin')}")
    assert other.status_code == 403
    assert stack.gateway.delegations is not None
    events = await stack.gateway.delegations.audit_for("")
    assert [e.actor_idnat for e in events if e.action == "admin"] == [ADMIN]


async def _command(*args: str, cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        LPS_GATEWAY,
        *args,
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_reports_the_running_gateway(stack: Stack, tmp_path: Path) -> None:
    data_dir = stack.gateway.settings.data_dir
    code, out, err = await _command("admin", "status", "--data", str(data_dir), cwd=tmp_path)
    assert code == 0, err
    assert "modern (imap_smtp)  (default)" in out
    assert _secret(stack) not in out + err
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{data_dir}"\n')
    code, out, err = await _command(
        "admin", "status", "--config", str(config), "--json", cwd=tmp_path
    )
    assert code == 0, err
    assert '"kind": "imap_smtp"' in out
    # from the data directory's parent, as in the demo's directory: ./.lps-gateway
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    (demo_dir / ".lps-gateway").symlink_to(data_dir)
    code, out, err = await _command("admin", "status", "--json", cwd=demo_dir)
    assert code == 0, err
    assert '"default": "modern"' in out


async def test_the_command_with_an_administrators_token(stack: Stack, tmp_path: Path) -> None:
    target = AdminTarget.locate(
        data=stack.gateway.settings.data_dir, token=await stack.token("adm-roux")
    )
    result = await asyncio.to_thread(lambda: AdminClient(target).get("/status"))
    assert result["backends"][0]["name"] == "modern"
    other = AdminTarget.locate(
        data=stack.gateway.settings.data_dir, token=await stack.token("dr-martin")
    )
    with pytest.raises(AdminRefused, match="403"):
        await asyncio.to_thread(lambda: AdminClient(other).get("/status"))


async def test_a_wrong_secret_in_the_data_directory_is_refused(
    stack: Stack, tmp_path: Path
) -> None:
    data_dir = stack.gateway.settings.data_dir
    target = AdminTarget.locate(data=data_dir)
    forged = AdminTarget(target.url, "lpsgw-admin.forged", data_dir)
    with pytest.raises(AdminRefused, match="401"):
        await asyncio.to_thread(lambda: AdminClient(forged).get("/status"))


def test_the_command_when_nothing_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [LPS_GATEWAY, "admin", "status"],
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "lps-gateway serve" in done.stderr
    assert "no gateway is running" in done.stderr
    missing = subprocess.run(
        [LPS_GATEWAY, "admin", "status", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "not found" in missing.stderr


async def test_a_stopped_gateway_leaves_no_url_and_a_stale_one_is_unreachable(
    stack: Stack, tmp_path: Path
) -> None:
    data_dir = stack.gateway.settings.data_dir
    url = (data_dir / "admin.url").read_text().strip()
    await stack.gateway.stop()
    assert not (data_dir / "admin.url").exists()
    with pytest.raises(GatewayUnreachable, match="no gateway is running"):
        AdminTarget.locate(data=data_dir)
    (data_dir / "admin.url").write_text(url + "\n")  # left by a gateway that crashed
    with pytest.raises(GatewayUnreachable, match="does not answer"):
        await asyncio.to_thread(
            lambda: AdminClient(AdminTarget.locate(data=data_dir)).get("/status")
        )
