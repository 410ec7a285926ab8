"""`lps-gateway migrate copy|verify|status` run as a user runs them (a process of its own)
against a running gateway with the demo's backends: jean.dupont's BAL from the historic
platform (read through its own IMAP) to "modern", provisioned through the mock's operator
API by the gateway itself; and `/admin/migrations` for administrators only."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from gateway.api.admin import LOCAL_ADMIN
from gateway.settings import MockSettings, Settings
from mock_operator.server import MockOperator
from tests.gateway.test_backend_tools import DUPONT, letter
from tests.support.stacks import Stack, gateway_settings, historic_backend, mock_backend
from tests.support.stacks import running_stack as run_stack

pytestmark = pytest.mark.slow

ADMIN = "899700000008"  # persona adm-roux
LPS_GATEWAY = str(Path(sys.executable).parent / "lps-gateway")


def demo_backends(settings: Settings, mock: MockOperator) -> None:
    """As `lps-gateway demo`: "modern" (provisioned by the operator API) and "historic"
    (its web services, and its own IMAP for the operator's tools)."""
    settings.backends = {
        "modern": mock_backend(mock),
        "historic": historic_backend(
            mock,
            historic_imap=True,
            imap_port=mock.historic_imap_port,
            imap_tls="starttls",
            ca_file=mock.tls_cert,
        ),
    }
    settings.routing.default = "modern"


@pytest.fixture
async def demo(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Stack]:
    settings = gateway_settings(tmp_path / "gateway", admin={"idnats": [ADMIN]})
    async with run_stack(settings, mock_settings, tmp_path / "mock", demo_backends) as running:
        yield running


async def migrate(stack: Stack, *args: str, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        LPS_GATEWAY,
        "migrate",
        *args,
        "--data",
        str(stack.gateway.settings.data_dir),
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def count(stack: Stack, backend: str) -> int:
    assert stack.gateway.router is not None
    access = await stack.gateway.router.backends[backend].tools(DUPONT)
    try:
        return sum([len(await access.messages(f.name)) for f in await access.folders()])
    finally:
        await access.aclose()


async def test_copy_verify_copy_again_and_status(demo: Stack, tmp_path: Path) -> None:
    assert not await demo.mock.platform.has_mailbox(DUPONT)  # provisioning's job
    on_historic = await count(demo, "historic")
    assert on_historic > 0

    code, out, err = await migrate(demo, "copy", DUPONT, "--to", "modern", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["failed"] == []
    [job] = summary["jobs"]
    assert (job["bal"], job["source"], job["target"], job["state"]) == (
        DUPONT,
        "historic",
        "modern",
        "done",
    )
    assert job["result"]["provisioned"] is True
    assert job["result"]["appended"] == on_historic
    assert job["progress"]["appended"] == on_historic
    assert await count(demo, "modern") == on_historic

    code, out, err = await migrate(demo, "verify", DUPONT)
    assert code == 0, out + err
    assert f"{DUPONT}: identical (historic -> modern, {on_historic} messages)" in out

    bals = tmp_path / "wave.txt"
    bals.write_text(f"# first wave\n\n{DUPONT.upper()}\n")
    code, out, err = await migrate(
        demo, "copy", "--from-file", str(bals), "--to", "modern", TTY_COMPATIBLE="1"
    )
    assert code == 0, err
    assert f"{DUPONT} " in out  # the progress bar, on a terminal
    assert "0/1 messages" in out
    assert f"{DUPONT}: copied historic -> modern: 0 appended, 0 flag changes, 0 deleted" in out
    assert await count(demo, "modern") == on_historic

    code, out, err = await migrate(demo, "status", "--json")
    assert code == 0, err
    [entry] = json.loads(out)["migrations"]
    assert entry["bal"] == DUPONT
    [record] = entry["copies"]
    assert (record["source"], record["target"], record["state"]) == ("historic", "modern", "copied")
    assert record["messages"] == on_historic
    assert record["bytes"] > 0
    assert None not in (record["started_at"], record["finished_at"], record["verified_at"])
    assert record["last_error"] is None

    # a message on the target only: verify lists it and exits 1
    assert demo.gateway.router is not None
    access = await demo.gateway.router.backends["modern"].tools(DUPONT)
    try:
        await access.append("INBOX", letter("seulement ici"))
    finally:
        await access.aclose()
    code, out, err = await migrate(demo, "verify", DUPONT)
    assert code == 1, out + err
    assert f"{DUPONT}: 1 differences (historic -> modern)" in out
    assert "extra    INBOX -> INBOX" in out

    assert demo.gateway.delegations is not None
    steps = [
        (e.actor_idnat, e.action, e.result, e.detail)
        for e in await demo.gateway.delegations.audit_for(DUPONT)
        if (e.detail or "").startswith("migrate")
    ]
    assert (LOCAL_ADMIN, "admin", "ok", "migrate copy started historic->modern") in steps
    assert [s[3] for s in steps].count("migrate copy done") == 2
    assert [s[3] for s in steps].count("migrate verify done") == 2


async def test_usage_errors_exit_2_with_a_clear_message(demo: Stack) -> None:
    code, _, err = await migrate(demo, "copy", DUPONT, "--to", "nowhere")
    assert code == 2
    assert "unknown backend 'nowhere'" in err
    assert "historic, modern" in err
    code, _, err = await migrate(demo, "copy", DUPONT, "--to", "historic")
    assert code == 2
    assert "is on historic already" in err
    code, _, err = await migrate(demo, "copy", DUPONT)
    assert code == 2
    assert "--to BACKEND" in err
    code, _, err = await migrate(demo, "copy", "not-an-address", "--to", "modern")
    assert code == 2
    assert "not a mailbox address" in err
    code, _, err = await migrate(demo, "verify", DUPONT)
    assert code == 2
    assert "never copied from historic" in err
    code, out, err = await migrate(demo, "status")
    assert (code, out.strip()) == (0, "no migration yet"), err


async def test_a_failed_copy_exits_1_and_is_listed(demo: Stack) -> None:
    # the target platform refuses the provisioning (the master password changed)
    modern = demo.gateway.settings.backends["modern"]
    modern.master_password = SecretStr("not-the-password")
    code, out, err = await migrate(demo, "copy", DUPONT, "--to", "modern", "--json")
    assert code == 1, out + err
    summary = json.loads(out)
    assert summary["failed"] == [DUPONT]
    assert "ProvisioningError" in summary["jobs"][0]["error"]
    assert "not-the-password" not in out + err
    code, out, err = await migrate(demo, "status", "--json")
    [record] = json.loads(out)["migrations"][0]["copies"]
    assert record["state"] == "failed"
    assert record["last_error"].startswith("provisioning:")


async def test_only_administrators(demo: Stack) -> None:
    async with httpx.AsyncClient(base_url=demo.gateway.http_url, timeout=10) as http:
        for persona, expected in [("dr-martin", 403), ("adm-roux", 200)]:
            headers = {"Authorization": f"Bearer {await demo.token(persona)}"}
            listed = await http.get("/admin/migrations", headers=headers)
            assert listed.status_code == expected, listed.text
            started = await http.post(
                "/admin/migrations",
                headers=headers,
                json={"bals": [DUPONT], "to": "nowhere", "action": "copy"},
            )
            assert started.status_code == (403 if expected == 403 else 400), started.text
        assert (await http.get("/admin/migrations")).status_code == 401
        headers = {"Authorization": f"Bearer {await demo.token('adm-roux')}"}
        assert (await http.get("/admin/migrations", headers=headers)).json() == {"migrations": []}
