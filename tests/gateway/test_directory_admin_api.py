"""`/admin/directory` on a running gateway in front of the mock: the report as JSON, dry
runs, refusals as problem+json, uploads as raw bodies or multipart forms, and a prune
that ends the IMAP sessions opened on the BAL it removes."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest

from delegation.service import DelegationService
from gateway.directory_import import apply
from gateway.directory_import.parse import Format, Limits, Parsed, parse
from gateway.settings import Settings
from tests.support.imap import login
from tests.support.stacks import Stack, gateway_settings

ADMIN = "899700000008"  # persona adm-roux
EXAMPLE = Path(__file__).parents[2] / "examples" / "directory-demo.csv"
CLAIRE = "claire.martin@medecin.mssante.fr"


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return gateway_settings(tmp_path / "gateway", admin={"idnats": [ADMIN]})


def secret(stack: Stack) -> dict[str, str]:
    value = (stack.gateway.settings.data_dir / "admin.secret").read_text().strip()
    return {"Authorization": f"Bearer {value}"}


def registry(stack: Stack) -> DelegationService:
    assert stack.gateway.delegations is not None
    return stack.gateway.delegations


async def post(
    stack: Stack, body: bytes, kind: str, headers: dict[str, str], **params: str
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.gateway.http_url, timeout=30) as http:
        return await http.post(
            "/admin/directory",
            content=body,
            params=params,
            headers={"Content-Type": kind, **headers},
        )


async def test_the_seeded_registry_is_the_example(stack: Stack) -> None:
    """The demo's seed and the example file say the same: importing it changes nothing;
    the backend the gateway does not have ("historic") is warned about."""
    answer = await post(stack, EXAMPLE.read_bytes(), "text/csv", secret(stack), dry_run="true")
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["added"], report["changed"], report["would_remove"]) == ([], [], [])
    assert report["dry_run"] is True
    assert report["written"] is False
    assert {w["at"] for w in report["warnings"]} == {"line 3", "line 6"}
    assert "unknown backend 'historic'" in report["warnings"][0]["message"]


async def test_json_body_imports_and_a_multipart_file_too(stack: Stack) -> None:
    document = {
        "mailboxes": [
            {"address": "secretariat@chu.mssante.fr", "type": "ORG", "organisation": "CHU"}
        ]
    }
    answer = await post(stack, json.dumps(document).encode(), "application/json", secret(stack))
    assert answer.status_code == 200, answer.text
    assert answer.json()["added"] == [
        {"kind": "bal", "key": "secretariat@chu.mssante.fr", "detail": "ORG placed by routing"}
    ]
    box = await registry(stack).mailbox("secretariat@chu.mssante.fr")
    assert box is not None
    assert box.organisation == "CHU"
    async with httpx.AsyncClient(base_url=stack.gateway.http_url, timeout=30) as http:
        form = await http.post(
            "/admin/directory",
            files={
                "file": (
                    "directory.json",
                    json.dumps(document).encode(),
                    "application/octet-stream",
                )
            },
            headers=secret(stack),
        )
    assert form.status_code == 200, form.text
    assert form.json()["written"] is False  # the same file again: no change


async def test_a_refused_file_is_a_problem_and_writes_nothing(stack: Stack) -> None:
    data = (
        EXAMPLE.read_bytes()
        + b"PER|new.person@x.mssante.fr|8|1|899700000009|NEW|Person|10||modern|\n"
    )
    data += b"PER|broken@|8|1|899700000010|BROKEN|Line|10||modern|\n"
    answer = await post(stack, data, "text/csv", secret(stack))
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["refused"] is True
    assert problem["errors"] == [{"at": "line 11", "message": "not a mailbox address: 'broken@'"}]
    assert await registry(stack).mailbox("new.person@x.mssante.fr") is None
    skipped = await post(stack, data, "text/csv", secret(stack), skip_invalid="true")
    assert skipped.status_code == 200
    assert skipped.json()["skipped"][0]["at"] == "line 11"
    assert await registry(stack).mailbox("new.person@x.mssante.fr") is not None


async def test_wrong_types_and_formats_are_refused(stack: Stack) -> None:
    odd = await post(stack, b"<xml/>", "application/xml", secret(stack))
    assert odd.status_code == 415
    assert odd.headers["content-type"].startswith("application/problem+json")
    anonymous = await post(stack, EXAMPLE.read_bytes(), "text/csv", {})
    assert anonymous.status_code == 401
    token = await stack.token("dr-martin")
    holder = await post(
        stack, EXAMPLE.read_bytes(), "text/csv", {"Authorization": f"Bearer {token}"}
    )
    assert holder.status_code == 403
    admin = await stack.token("adm-roux")
    allowed = await post(
        stack, EXAMPLE.read_bytes(), "text/csv", {"Authorization": f"Bearer {admin}"}
    )
    assert allowed.status_code == 200, allowed.text


async def test_a_prune_ends_the_sessions_on_the_removed_bal(stack: Stack) -> None:
    """The holder's and the delegate's IMAP sessions on a BAL pruned from the directory
    end at once, through the registry's events, and the BAL no longer opens."""
    holder = await login(stack, "dr-martin", CLAIRE)
    delegate = await login(stack, "sec-bernard", CLAIRE)
    await holder.ok("SELECT INBOX")
    await delegate.ok("SELECT INBOX")
    without = b"".join(
        line
        for line in EXAMPLE.read_bytes().splitlines(keepends=True)
        if CLAIRE.encode() not in line
    )
    answer = await post(stack, without, "text/csv", secret(stack), prune="true")
    assert answer.status_code == 200, answer.text
    assert {"kind": "bal", "key": CLAIRE, "detail": "PER"} in answer.json()["removed"]
    for client in (delegate, holder):
        bye = await client.line(wait=30.0)
        assert bye.startswith(b"* BYE"), bye
        assert await client.until_closed() == b""
    assert await registry(stack).mailbox(CLAIRE) is None


async def test_the_route_is_in_the_openapi(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.http_url, timeout=30) as http:
        schema = (await http.get("/openapi.json")).json()
    operation = schema["paths"]["/admin/directory"]["post"]
    content = operation["requestBody"]["content"]
    assert set(content) == {"text/csv", "application/json", "multipart/form-data"}
    assert "mailboxes" in content["application/json"]["schema"]["properties"]
    assert "$ref" not in json.dumps(content["application/json"])
    assert {p["name"] for p in operation["parameters"]} >= {"dry_run", "prune", "skip_invalid"}


async def test_the_loop_answers_while_a_large_file_is_parsed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parse is held (in its thread) until /healthz has answered: were it on the event
    loop, the loop would be stuck in it and /healthz would answer only after the import."""
    started, release, resumed = threading.Event(), threading.Event(), threading.Event()

    def held(data: bytes, format: Format, limits: Limits | None = None) -> Parsed:
        started.set()
        release.wait(10)
        resumed.set()
        return parse(data, format, limits)

    monkeypatch.setattr(apply, "parse", held)
    lines = [EXAMPLE.read_text().splitlines()[0]] + [
        "|".join(["ORG", f"service{n}@hopital.mssante.fr", *[""] * 7, "Hôpital", "modern", ""])
        for n in range(20_000)
    ]
    body = "\n".join(lines).encode()
    importing = asyncio.create_task(post(stack, body, "text/csv", secret(stack), dry_run="true"))
    assert await asyncio.to_thread(started.wait, 30), "the import never started parsing"
    try:
        async with httpx.AsyncClient(base_url=stack.gateway.http_url, timeout=30) as http:
            health = await http.get("/healthz")
        assert health.status_code == 200
        assert not resumed.is_set(), "/healthz waited for the parse to end"
        assert not importing.done()
    finally:
        release.set()
    answer = await importing
    assert answer.status_code == 200, answer.text[:500]
    assert len(answer.json()["added"]) == 20_000
