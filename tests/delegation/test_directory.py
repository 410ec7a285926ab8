"""Directory search (names or idNat, case and accents ignored) and provisioning rules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from delegation import DelegationService, Invalid, LocalBus, NotFound, create_engine, migrate, seed
from delegation.service import fold
from tests.conftest import fresh_database
from tests.delegation.conftest import BERNARD, CLAIRE_BAL, MARTIN, PERSONAS, Clock


async def with_entries(service: DelegationService) -> DelegationService:
    await service.upsert_directory_entry("899700000010", "Hélène", "LEFÈVRE-DUPRÉ", profession="60")
    await service.upsert_directory_entry("899700000011", "Zoé", "Œuvray")
    await service.upsert_directory_entry("899700000012", "Ana", "100%_Martinez")
    return service


@pytest.fixture
async def directory(seeded: DelegationService) -> DelegationService:
    return await with_entries(seeded)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgresql"])
async def searched(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DelegationService]:
    """The same directory as `directory`, made once per database for the tests that only
    search it (a database each was nearly all of their time)."""
    async with fresh_database(request.param, tmp_path_factory.mktemp("search")) as url:
        await migrate(url)
        engine = create_engine(url)
        try:
            service = DelegationService(engine, clock=Clock(), bus=LocalBus())
            await seed(service, PERSONAS)
            yield await with_entries(service)
        finally:
            await engine.dispose()


def test_fold() -> None:
    assert fold("  Hélène LEFÈVRE-Dupré ") == "helene lefevre dupre"
    assert fold("Œuvray Straße") == "oeuvray strasse"
    assert fold("%_%") == ""


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("martin", ["899700000012", "899700000001"]),
        ("MARTIN", ["899700000012", "899700000001"]),
        ("claire martin", ["899700000001"]),
        ("Martin Claire", ["899700000001"]),
        ("lefevre", ["899700000010"]),
        ("LEFÈVRE", ["899700000010"]),
        ("hélène dupre", ["899700000010"]),
        ("oeuv", ["899700000011"]),
        ("œuvray", ["899700000011"]),
        ("899700000003", [BERNARD]),
        ("8997000000", None),  # every seeded person: checked through the limit below
        ("martin%", ["899700000012", "899700000001"]),  # "%" is no wildcard
        ("xyz", []),
    ],
)
@pytest.mark.asyncio(loop_scope="module")
async def test_search(searched: DelegationService, query: str, expected: list[str] | None) -> None:
    found = await searched.directory_search(query)
    if expected is not None:
        assert [e.idnat for e in found] == expected
    else:
        assert len(found) == 10


@pytest.mark.asyncio(loop_scope="module")
async def test_search_results_carry_names_and_addresses(searched: DelegationService) -> None:
    [claire] = await searched.directory_search("claire")
    assert (claire.given_name, claire.family_name, claire.display_name) == (
        "Claire",
        "MARTIN",
        "Claire MARTIN",
    )
    assert claire.profession == "10"
    assert not claire.ecps_only
    assert claire.addresses == (CLAIRE_BAL,)


@pytest.mark.asyncio(loop_scope="module")
async def test_search_limit_and_order(searched: DelegationService) -> None:
    found = await searched.directory_search("899700", limit=3)
    assert [e.family_name for e in found] == ["100%_Martinez", "BERNARD", "DUPONT"]
    with pytest.raises(Invalid):
        await searched.directory_search("899700", limit=0)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("query", ["", "ab", " a b ", "%_", "é-è", "x" * 257])
async def test_short_or_long_queries_are_refused(searched: DelegationService, query: str) -> None:
    with pytest.raises(Invalid) as raised:
        await searched.directory_search(query)
    assert raised.value.reason == "bad-query"


async def test_upsert_entry_updates_names_and_search(directory: DelegationService) -> None:
    entry = await directory.upsert_directory_entry(
        MARTIN, "Claire", "MARTIN-NOËL", profession="10", addresses=["C.Martin@Medecin.MSSante.fr"]
    )
    assert entry.addresses == ("c.martin@medecin.mssante.fr",)
    assert [e.idnat for e in await directory.directory_search("noel")] == [MARTIN]
    unchanged = await directory.upsert_directory_entry(MARTIN, "Claire", "MARTIN-NOËL")
    assert unchanged.addresses == ("c.martin@medecin.mssante.fr",)  # None keeps the list


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"idnat": "999", "given_name": "A", "family_name": "B"}, Invalid),
        ({"idnat": "899700000020", "given_name": "A", "family_name": " "}, Invalid),
        (
            {"idnat": "899700000020", "given_name": "A", "family_name": "B", "addresses": ["x"]},
            Invalid,
        ),
    ],
)
async def test_upsert_entry_rules(
    directory: DelegationService, kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await directory.upsert_directory_entry(**kwargs)  # type: ignore[arg-type]


async def test_mailbox_provisioning_rules(directory: DelegationService) -> None:
    with pytest.raises(NotFound):
        await directory.upsert_mailbox("x@medecin.mssante.fr", holder_idnat="899700000099")
    with pytest.raises(Invalid):
        await directory.upsert_mailbox("x@medecin.mssante.fr")  # PER without holder
    with pytest.raises(Invalid):
        await directory.upsert_mailbox("x@clinique.fr", type="ORG")  # no organisation
    with pytest.raises(Invalid):
        await directory.upsert_mailbox("x@clinique.fr", type="XYZ", organisation="C")
    with pytest.raises(Invalid):
        await directory.upsert_mailbox(CLAIRE_BAL, holder_idnat=MARTIN, state="gone")
    moved = await directory.upsert_mailbox(
        "Claire.Martin@medecin.mssante.fr", holder_idnat=MARTIN, backend="modern", state="migrated"
    )
    assert (moved.address, moved.state, moved.holder_name) == (
        CLAIRE_BAL,
        "migrated",
        "Claire MARTIN",
    )
    new = await directory.upsert_mailbox(
        "h.lefevre@infirmier.mssante.fr", holder_idnat="899700000010"
    )
    assert new.backend == "default"
    entry = await directory.directory_entry("899700000010")
    assert entry is not None
    assert entry.addresses == ("h.lefevre@infirmier.mssante.fr",)
