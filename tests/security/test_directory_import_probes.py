"""Hostile directory files and callers of `/admin/directory`: oversized files and lines,
spreadsheet formulas, odd encodings, NUL bytes, JSON depth bombs, addresses carrying CRLF
(an SMTP or IMAP command smuggled in a BAL), and callers who are not administrators.
Each is refused cleanly (never a 500), nothing is written, and the gateway goes on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from typer.testing import CliRunner

from gateway.cli import app
from gateway.directory_import.parse import DirectoryFileError, Limits, parse
from tests.conftest import quick_mock_settings
from tests.security.test_http import raw_exchange, request_head
from tests.support.stacks import Stack, gateway_settings, running_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

HEADER = b"Type BAL|Adresse BAL|Identification nationale PP|Nom d'exercice|Pr\xc3\xa9nom d'exercice"
CAP = 64 * 1024


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway for every probe: a refused file changes nothing the next probe sees."""
    directory = tmp_path_factory.mktemp("directory-probes")
    settings = gateway_settings(
        directory / "gateway", admin={"idnats": ["899700000008"], "directory_max_body": CAP}
    )
    async with running_stack(settings, quick_mock_settings(), directory / "mock") as running:
        yield running


def _secret(stack: Stack) -> dict[str, str]:
    value = (stack.gateway.settings.data_dir / "admin.secret").read_text().strip()
    return {"Authorization": f"Bearer {value}"}


async def _post(
    stack: Stack, body: bytes, kind: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.gateway.http_url, timeout=30) as http:
        return await http.post(
            "/admin/directory",
            content=body,
            headers={"Content-Type": kind, **(_secret(stack) if headers is None else headers)},
        )


async def _unchanged(stack: Stack) -> None:
    registry = stack.gateway.delegations
    assert registry is not None
    state = await registry.registry_state()
    assert len(state.mailboxes) == 6, "the seeded BAL, nothing more, nothing less"
    assert not any(a.startswith(("evil", "=")) for a in state.mailboxes)


async def test_a_file_over_the_cap_is_413_before_parsing(stack: Stack) -> None:
    body = HEADER + b"\n" + b"PER|evil@x.mssante.fr|899700000009|EVIL|Eve\n" * 2000
    assert len(body) > CAP
    answer = await _post(stack, body, "text/csv")
    assert answer.status_code == 413
    assert answer.headers["content-type"].startswith("application/problem+json")
    await _unchanged(stack)


async def test_a_chunked_upload_over_the_cap_is_cut(stack: Stack) -> None:
    """A body that never ends is answered once past the cap, not read to its end."""
    line = b"PER|evil@x.mssante.fr|899700000009|EVIL|Eve\n" * 100
    chunk = f"{len(line):x}\r\n".encode() + line + b"\r\n"
    secret = _secret(stack)["Authorization"]
    answer = await raw_exchange(
        stack.gateway.http_port,
        request_head(
            "/admin/directory",
            f"Authorization: {secret}",
            "Content-Type: text/csv",
            "Transfer-Encoding: chunked",
        ),
        *[chunk] * (CAP // len(line) + 2),
    )
    assert answer.status == 413
    assert answer.headers["connection"] == "close"
    await _unchanged(stack)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            HEADER + b"\nPER|evil@x.mssante.fr|899700000009|" + b"E" * 20_000 + b"|Eve\n",
            "longer than",
        ),
        (HEADER + b"\nPER|evil@x.mssante.fr|899700000009|=CMD('calc')|Eve\n", "formula"),
        (HEADER + b"\nPER|evil@x.mssante.fr|899700000009|+1+1|Eve\n", "formula"),
        (HEADER + b"\nPER|evil@x.mssante.fr|899700000009|EVIL|@SUM(A1)\n", "formula"),
        (HEADER + b"\nPER|evil@x.mssante.fr|899700000009|EV\x00IL|Eve\n", "control characters"),
        (HEADER + b"\nPER|evil@x.mssante.fr\rRCPT TO:<x@y>|899700000009|EVIL|Eve\n", "CSV"),
        (HEADER + b'\nPER|"evil@x.mssante.fr\nA1 LOGOUT"|899700000009|EVIL|Eve\n', "CSV"),
        (HEADER + b"\nPER|evil@x.mssante.fr|899700000009|EVIL|\xc2\x85Eve\n", "control"),
        (HEADER + b"\nPER|evil@x.mssante.fr|899700000009|EVIL|Eve\xe2\x80\xa8\n", "control"),
    ],
)
async def test_hostile_lines_are_refused_with_their_number(
    stack: Stack, body: bytes, says: str
) -> None:
    answer = await _post(stack, body, "text/csv")
    assert answer.status_code == 422, answer.text
    errors = answer.json()["errors"]
    assert errors[0]["at"] in ("line 2", "line 3"), errors
    assert says in errors[0]["message"], errors
    await _unchanged(stack)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (HEADER.decode().encode("utf-16") + b"\n", "not UTF-8"),
        (
            HEADER + "\nPER|evil@x.mssante.fr|899700000009|ÉVIL|Eve\n".encode("latin-1"),
            "line 2: not UTF-8",
        ),
        (b"\x00" * 1000, "Adresse BAL"),
        (b"\xfe\xff" + "Adresse BAL".encode("utf-16-be"), "not UTF-8"),
    ],
)
async def test_odd_encodings_refuse_the_file(stack: Stack, body: bytes, says: str) -> None:
    answer = await _post(stack, body, "text/csv")
    assert answer.status_code == 422, answer.text
    assert says in answer.json()["errors"][0]["message"]
    await _unchanged(stack)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 30_000 + b"]" * 30_000,
        b'{"mailboxes": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
        b'{"mailboxes": [{"address": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}]}',
        json.dumps(
            {
                "mailboxes": [
                    {"address": "evil@x.fr\r\nRCPT TO:<a@b>", "type": "ORG", "organisation": "X"}
                ]
            }
        ).encode(),
        json.dumps(
            {"mailboxes": [{"address": "evil@x.fr", "type": "ORG", "organisation": "=1+1"}]}
        ).encode(),
        json.dumps({"people": [{"idnat": "899700000009", "family_name": "E\u0000"}]}).encode(),
        b'{"people": [], "people": 1}',
        b'{"mailboxes": [1e999999]}',
    ],
)
async def test_hostile_json_is_refused(stack: Stack, body: bytes) -> None:
    answer = await _post(stack, body, "application/json")
    assert answer.status_code == 422, answer.text
    assert answer.json()["refused"] is True
    await _unchanged(stack)


async def test_only_administrators_import(stack: Stack) -> None:
    body = HEADER + b"\nPER|evil@x.mssante.fr|899700000001|MARTIN|Claire\n"
    for headers in (
        {},
        {"Authorization": "Bearer lpsgw-admin.forged"},
        {"Authorization": f"Bearer {await stack.token('dr-martin')}"},
        {"Authorization": f"Bearer {await stack.token('sec-bernard')}"},
    ):
        answer = await _post(stack, body, "text/csv", headers)
        assert answer.status_code in (401, 403), (headers, answer.text)
        assert "evil" not in answer.text
    await _unchanged(stack)


async def test_the_parser_keeps_its_limits_on_huge_input() -> None:
    """Without the HTTP cap: the parser's own (the command line reads at most one byte
    past `max_bytes`)."""
    with pytest.raises(DirectoryFileError, match="larger than"):
        parse(b"x" * (Limits().max_bytes + 1), "csv")
    lines = HEADER + b"\n" + b"\n".join([b"||899700000009|EVIL|Eve"] * 30)
    with pytest.raises(DirectoryFileError, match="more than 20 lines"):
        parse(lines, "csv", Limits(max_lines=20))


async def test_an_unreadable_csv_header_refuses_the_file(stack: Stack, tmp_path: Path) -> None:
    """A header the csv module cannot split is a refused file, never a traceback."""
    body = b'Adresse BAL|"Type BAL"x|idnat|Nom|Prenom\nclaire@x.mssante.fr|PER|899700000009|E|V\n'
    answer = await _post(stack, body, "text/csv")
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"] == [
        {"at": "file", "message": answer.json()["errors"][0]["message"]}
    ]
    assert answer.json()["errors"][0]["message"].startswith("line 1: unreadable CSV")
    await _unchanged(stack)
    (tmp_path / "bad.csv").write_bytes(body)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\ndatabase_url = "sqlite+aiosqlite:///{tmp_path}/db"\n'
    )
    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["directory", "import", str(tmp_path / "bad.csv"), "--config", str(config)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[0].startswith("refused: file: line 1: unreadable CSV")
