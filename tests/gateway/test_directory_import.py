"""`lps-gateway directory import` against a fresh database (SQLite, and PostgreSQL when
LPS_TEST_DATABASE_URL is set): exit codes, dry runs, idempotence, pruning, bad lines,
unknown backends; and what an import publishes (the events that end sessions)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, update
from typer.testing import CliRunner, Result

from delegation import DelegationService, LocalBus, create_engine, migrate
from delegation.events import ChangeEvent
from delegation.loading import RegistryState
from delegation.models import DelegationRow
from gateway.cli import app
from gateway.directory_import.apply import import_directory

EXAMPLE = Path(__file__).parents[2] / "examples" / "directory-demo.csv"
CLAIRE = "claire.martin@medecin.mssante.fr"
JEAN = "jean.dupont@medecin.mssante.fr"
BERNARD, LEROY = "899700000003", "899700000006"


@pytest.fixture
def config(tmp_path: Path, fresh_db_url: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "state"}"\ndatabase_url = "{fresh_db_url}"\n'
        "[backends.modern]\nimap_port = 1\nsmtp_port = 1\n"
        "[backends.historic]\nimap_port = 1\nsmtp_port = 1\n"
    )
    return path


@pytest.fixture
async def service(fresh_db_url: str) -> AsyncIterator[DelegationService]:
    await migrate(fresh_db_url)
    engine = create_engine(fresh_db_url)
    try:
        yield DelegationService(engine, bus=LocalBus())
    finally:
        await engine.dispose()


def run(config: Path, *args: str | Path) -> Result:
    return CliRunner().invoke(
        app,
        ["directory", "import", *map(str, args), "--config", str(config)],
        env={"COLUMNS": "200"},
    )


def state_of(service: DelegationService) -> RegistryState:
    return asyncio.run(service.registry_state())


def edited(tmp_path: Path, name: str, change: dict[str, str | None]) -> Path:
    """The example with lines replaced (by a BAL address) or dropped (None)."""
    lines = EXAMPLE.read_text().splitlines()
    out = []
    for line in lines:
        key = next((k for k in change if f"|{k}|" in line), None)
        if key is None:
            out.append(line)
        elif change[key] is not None:
            out.append(str(change[key]))
    path = tmp_path / name
    path.write_text("\n".join(out) + "\n")
    return path


async def test_import_then_again_changes_nothing(config: Path, service: DelegationService) -> None:
    first = await asyncio.to_thread(run, config, EXAMPLE)
    assert first.exit_code == 0, first.output
    assert "imported: added 17, changed 0, would remove 0" in first.stdout
    assert f"added        delegation {JEAN} → {LEROY}  read,write,send" in first.stdout
    state = await service.registry_state()
    assert state.mailboxes[CLAIRE].backend == "modern"
    assert state.mailboxes[JEAN].backend == "historic"
    assert set(state.delegations[JEAN]) == {BERNARD, LEROY}
    expiry = state.delegations[JEAN][LEROY].expires_at
    assert expiry is not None
    assert dt.timedelta(days=29) < expiry - dt.datetime.now(dt.UTC) <= dt.timedelta(days=30)
    assert (await service.mailbox(CLAIRE)) is not None
    assert (await service.directory_entry(BERNARD)) is not None

    again = await asyncio.to_thread(run, config, EXAMPLE)
    assert again.exit_code == 0, again.output
    assert "no change: added 0, changed 0, would remove 0" in again.stdout
    assert await service.registry_state() == state


async def test_dry_run_writes_nothing(config: Path, service: DelegationService) -> None:
    result = await asyncio.to_thread(run, config, EXAMPLE, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run, nothing written: added 17" in result.stdout
    assert (await service.registry_state()).mailboxes == {}
    assert not await service.any_mailbox()


async def test_a_bad_line_refuses_the_file_unless_skip_invalid(
    config: Path, service: DelegationService, tmp_path: Path
) -> None:
    bad = edited(
        tmp_path,
        "bad.csv",
        {
            "luc.durand@infirmier.mssante.fr": "PER|luc.durand@|8|1|899700000004|DURAND|Luc"
            "|60||modern|"
        },
    )
    refused = await asyncio.to_thread(run, config, bad)
    assert refused.exit_code == 1
    assert "refused: line 5: not a mailbox address" in refused.stderr
    assert "nothing imported" in refused.stderr
    assert (await service.registry_state()).people == {}

    skipped = await asyncio.to_thread(run, config, bad, "--skip-invalid")
    assert skipped.exit_code == 0, skipped.output
    assert "skipped: line 5: not a mailbox address" in skipped.stderr
    state = await service.registry_state()
    assert len(state.mailboxes) == 5
    assert "luc.durand@infirmier.mssante.fr" not in state.mailboxes


async def test_nothing_is_removed_without_prune(
    config: Path, service: DelegationService, tmp_path: Path, fresh_db_url: str
) -> None:
    assert (await asyncio.to_thread(run, config, EXAMPLE)).exit_code == 0
    smaller = edited(
        tmp_path,
        "smaller.csv",
        {
            CLAIRE: None,
            JEAN: f"PER|{JEAN}|8|1|899700000002|DUPONT|Jean|10|Médecin||historic|{LEROY}:read",
        },
    )
    kept = await asyncio.to_thread(run, config, smaller)
    assert kept.exit_code == 0, kept.output
    assert f"would remove bal        {CLAIRE}" in kept.stdout
    assert f"would remove delegation {JEAN} → {BERNARD}" in kept.stdout
    assert f"changed      delegation {JEAN} → {LEROY}  read,write,send → read" in kept.stdout
    assert "(nothing is removed without --prune)" in kept.stdout
    state = await service.registry_state()
    assert CLAIRE in state.mailboxes
    assert set(state.delegations[JEAN]) == {BERNARD, LEROY}
    assert state.delegations[JEAN][LEROY].rights == {"read"}

    pruned = await asyncio.to_thread(run, config, smaller, "--prune")
    assert pruned.exit_code == 0, pruned.output
    assert f"removed      bal        {CLAIRE}" in pruned.stdout
    on_sqlite = fresh_db_url.startswith("sqlite")
    assert ("note: on SQLite a running gateway does not hear" in pruned.stderr) == on_sqlite
    state = await service.registry_state()
    assert CLAIRE not in state.mailboxes
    assert set(state.delegations[JEAN]) == {LEROY}
    assert "removed      person     899700000001  Claire MARTIN" in pruned.stdout
    assert await service.directory_entry("899700000001") is None
    trail = await service.audit_for(JEAN)
    assert any(e.action == "revoke" and e.detail and "removed" in e.detail for e in trail)

    again = await asyncio.to_thread(run, config, smaller, "--prune")
    assert "no change" in again.stdout


async def test_unknown_backend_warns_and_routing_places_the_bal(
    config: Path, service: DelegationService, tmp_path: Path
) -> None:
    moved = edited(
        tmp_path,
        "moved.csv",
        {
            "eve.moreau@medecin.mssante.fr": "PER|eve.moreau@medecin.mssante.fr|8|1"
            "|899700000007|MOREAU|Eve|10|Médecin||elsewhere|"
        },
    )
    result = await asyncio.to_thread(run, config, moved)
    assert result.exit_code == 0, result.output
    assert "warning: line 8: unknown backend 'elsewhere'" in result.stderr
    assert "eve.moreau@medecin.mssante.fr  PER placed by routing" in result.stdout
    assert (await service.registry_state()).mailboxes["eve.moreau@medecin.mssante.fr"].backend == ""


async def test_json_and_its_report(
    config: Path, service: DelegationService, tmp_path: Path
) -> None:
    document = {
        "people": [{"idnat": "899700000001", "given_name": "Claire", "family_name": "MARTIN"}],
        "mailboxes": [
            {"address": CLAIRE, "type": "PER", "holder": "899700000001", "backend": "modern"},
            {"address": "secretariat@chu.mssante.fr", "type": "ORG", "organisation": "CHU"},
        ],
    }
    path = tmp_path / "directory.json"
    path.write_text(json.dumps(document))
    result = await asyncio.to_thread(run, config, path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["written"] is True
    assert {c["key"] for c in report["added"]} == {
        "899700000001",
        CLAIRE,
        "secretariat@chu.mssante.fr",
    }
    state = await service.registry_state()
    assert state.mailboxes["secretariat@chu.mssante.fr"].organisation == "CHU"


def test_a_missing_file_or_bad_format_is_a_usage_error(config: Path) -> None:
    assert run(config, "/nonexistent.csv").exit_code == 2
    assert run(config, EXAMPLE, "--format", "xml").exit_code == 2


async def test_removal_and_changes_publish_their_events(service: DelegationService) -> None:
    """Events are what end sessions on every node: a pruned BAL revokes its delegations
    ("revoked") and is announced gone ("moved"); a changed backend is "moved"."""
    data = EXAMPLE.read_bytes()
    names = ["modern", "historic"]
    await import_directory(service, data, "csv", backends=names, actor="local-admin")
    heard: list[ChangeEvent] = []
    async with service.bus.subscribe() as events:
        smaller = "\n".join(
            line.replace("|historic|", "|modern|") if f"|{JEAN}|" in line else line
            for line in data.decode().splitlines()
            if f"|{CLAIRE}|" not in line
        ).encode()
        report = await import_directory(
            service, smaller, "csv", backends=names, actor="local-admin", prune=True
        )
        assert report.written
        assert report.pruned
        while len(heard) < 3:
            heard.append(await asyncio.wait_for(events.get(), 5))
    assert {(e.kind, e.mailbox, e.delegate_idnat) for e in heard} == {
        ("moved", JEAN, ""),
        ("revoked", CLAIRE, BERNARD),
        ("moved", CLAIRE, ""),
    }


async def test_no_prune_from_a_file_with_skipped_lines(
    config: Path, service: DelegationService, tmp_path: Path
) -> None:
    """A BAL on a line that could not be read looks absent: pruning then would remove it."""
    assert (await asyncio.to_thread(run, config, EXAMPLE)).exit_code == 0
    damaged = edited(tmp_path, "damaged.csv", {CLAIRE: f"PER|{CLAIRE}|8|1|89|MARTIN|Claire"})
    result = await asyncio.to_thread(run, config, damaged, "--prune", "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert "skipped: line 2: bad national identifier" in result.stderr
    assert f"would remove bal        {CLAIRE}" in result.stdout
    assert "(--prune not applied: the file had refused lines)" in result.stdout
    assert CLAIRE in (await service.registry_state()).mailboxes


async def test_a_skipped_line_writes_neither_its_person_nor_its_bal(
    config: Path, service: DelegationService, tmp_path: Path
) -> None:
    """Every way a line is refused (names differing from an earlier line, a BAL listed
    twice, a delegate nobody knows) leaves out the whole line, not half of it."""
    lines = EXAMPLE.read_text().splitlines()
    lines[2] = lines[2].replace("|899700000002|", "|899700000001|")  # Jean on Claire's idNat
    lines += [
        f"PER|{CLAIRE}|8|99700000009|899700000009|NOUVEAU|Nina|10|Médecin||modern|",
        "PER|nina.roy@medecin.mssante.fr|8|99700000010|899700000010|ROY|Nina|10|Médecin"
        "||modern|899700000099:read",
    ]
    path = tmp_path / "skips.csv"
    path.write_text("\n".join(lines) + "\n")
    result = await asyncio.to_thread(run, config, path, "--skip-invalid")
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert [line.split(":")[1].strip() for line in skipped] == ["line 3", "line 10", "line 11"]
    state = await service.registry_state()
    assert JEAN not in state.mailboxes
    assert "nina.roy@medecin.mssante.fr" not in state.mailboxes
    assert state.mailboxes[CLAIRE].holder_idnat == "899700000001"
    assert "899700000009" not in state.people
    assert "899700000010" not in state.people
    assert state.people["899700000001"].given_name == "Claire"


async def test_a_dry_run_never_migrates(config: Path, fresh_db_url: str) -> None:
    """A dry run reads the schema as it stands: on a database not at this build's head it
    refuses, and leaves it as it was (no table created, nothing upgraded)."""
    result = await asyncio.to_thread(run, config, EXAMPLE, "--dry-run")
    assert result.exit_code == 1, result.output
    assert "dry run refused: the database's schema is absent" in result.stderr
    engine = create_engine(fresh_db_url)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    finally:
        await engine.dispose()
    assert tables == []


async def test_an_expired_delegation_the_file_lists_is_renewed(
    config: Path, service: DelegationService, fresh_db_url: str
) -> None:
    """Jean → Leroy (`:30`) past its expiry is still open in the registry: the next
    import listing it grants it again for 30 days (a change), then changes nothing."""
    assert (await asyncio.to_thread(run, config, EXAMPLE)).exit_code == 0
    engine = create_engine(fresh_db_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(DelegationRow)
                .where(DelegationRow.delegate_idnat == LEROY)
                .values(expires_at=service.now() - dt.timedelta(days=1))
            )
    finally:
        await engine.dispose()
    renewed = await asyncio.to_thread(run, config, EXAMPLE)
    assert renewed.exit_code == 0, renewed.output
    assert f"changed      delegation {JEAN} → {LEROY}  expired " in renewed.stdout
    assert "imported: added 0, changed 1" in renewed.stdout
    expires = (await service.registry_state()).delegations[JEAN][LEROY].expires_at
    assert expires is not None
    assert expires > service.now() + dt.timedelta(days=29)
    again = await asyncio.to_thread(run, config, EXAMPLE)
    assert "no change: added 0, changed 0" in again.stdout
