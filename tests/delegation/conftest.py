"""Fixtures for the delegation room: a fresh migrated database per test on SQLite and, when
`LPS_TEST_DATABASE_URL` names a server, on PostgreSQL too; a settable clock; personas."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from delegation import DelegationService, LocalBus, create_engine, seed
from psc_auth import Identity
from tests.conftest import postgres_database

PG_URL = os.environ.get("LPS_TEST_DATABASE_URL")
START = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)

# The contract's default personas (ARCHITECTURE.md), as the plain data `seed` takes.
PERSONAS: list[dict[str, Any]] = [
    {
        "idnat": "899700000001",
        "given_name": "Claire",
        "family_name": "MARTIN",
        "profession": "10",
        "bal": "claire.martin@medecin.mssante.fr",
        "platform": "modern",
    },
    {
        "idnat": "899700000002",
        "given_name": "Jean",
        "family_name": "DUPONT",
        "profession": "10",
        "bal": "jean.dupont@medecin.mssante.fr",
        "platform": "historic",
    },
    {
        "idnat": "899700000003",
        "given_name": "Sophie",
        "family_name": "BERNARD",
        "ecps_only": True,
        "delegations": [
            {"mailbox": "claire.martin@medecin.mssante.fr", "rights": ["read", "write", "send"]},
            {"mailbox": "jean.dupont@medecin.mssante.fr", "rights": ["read"]},
        ],
    },
    {
        "idnat": "899700000004",
        "given_name": "Luc",
        "family_name": "DURAND",
        "profession": "60",
        "bal": "luc.durand@infirmier.mssante.fr",
        "platform": "modern",
    },
    {
        "idnat": "899700000005",
        "given_name": "Marie",
        "family_name": "PETIT",
        "profession": "50",
        "bal": "marie.petit@sage-femme.mssante.fr",
        "platform": "historic",
    },
    {
        "idnat": "899700000006",
        "given_name": "Paul",
        "family_name": "LEROY",
        "profession": "10",
        "bal": "paul.leroy@medecin.mssante.fr",
        "platform": "modern",
        "delegations": [
            {
                "mailbox": "jean.dupont@medecin.mssante.fr",
                "rights": ["read", "write", "send"],
                "expires_in_days": 30,
            }
        ],
    },
    {
        "idnat": "899700000007",
        "given_name": "Eve",
        "family_name": "MOREAU",
        "profession": "10",
        "bal": "eve.moreau@medecin.mssante.fr",
        "platform": "modern",
    },
]
MARTIN, DUPONT, BERNARD, DURAND, PETIT, LEROY, MOREAU = (p["idnat"] for p in PERSONAS)
CLAIRE_BAL = "claire.martin@medecin.mssante.fr"
JEAN_BAL = "jean.dupont@medecin.mssante.fr"
PAUL_BAL = "paul.leroy@medecin.mssante.fr"


def identity(idnat: str, given_name: str = "", family_name: str = "") -> Identity:
    claims = {
        "SubjectNameID": idnat,
        "exp": int(START.timestamp()) + 3_600,
        "given_name": given_name,
        "family_name": family_name,
    }
    return Identity.from_claims(claims, token_id="t")


def person(idnat: str) -> Identity:
    found = next(p for p in PERSONAS if p["idnat"] == idnat)
    return identity(idnat, found["given_name"], found["family_name"])


class Clock:
    """A settable clock for expiry tests."""

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def db_url(migrated_db_url: str) -> str:
    """A database migrated to the latest revision."""
    return migrated_db_url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """PostgreSQL only (LISTEN/NOTIFY tests), migrated."""
    async with postgres_database(migrated=True) as url:
        yield url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bus() -> LocalBus:
    return LocalBus()


@pytest.fixture
def service(engine: AsyncEngine, clock: Clock, bus: LocalBus) -> DelegationService:
    return DelegationService(engine, clock=clock, bus=bus)


@pytest.fixture
async def seeded(service: DelegationService) -> DelegationService:
    await seed(service, PERSONAS)
    return service
