"""Schemathesis drives the API from its OpenAPI document: no input makes the server fail."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.conftest import Api

pytestmark = pytest.mark.slow


def schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert found, "schemathesis is a test dependency"
    return found


async def test_openapi_is_complete(api: Api):
    document = (await api.http.get("/openapi.json")).json()
    paths = document["paths"]
    for path in (
        "/v1/me",
        "/v1/mailboxes",
        "/v1/mailboxes/{address}/delegations",
        "/v1/mailboxes/{address}/delegations/{delegation_id}",
        "/v1/delegations/received",
        "/v1/directory",
    ):
        assert path in paths, path
    assert "examples" in str(document["components"]["schemas"]["DelegationIn"])
    assert "401" in paths["/v1/me"]["get"]["responses"]


async def test_no_server_error_under_schemathesis(api: Api, tmp_path: Path):
    token = await api.token("dr-martin")
    command = [
        schemathesis(),
        "run",
        f"{api.base}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "40",
        "--seed",
        "20261126",
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in done.stdout.lower()
