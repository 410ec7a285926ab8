"""Seed directory entries, mailboxes and delegations from plain data (e.g. the default personas).

The caller builds the data (the mock operator passes ``dataclasses.asdict`` of its personas):
this package never imports the mock. Seeding is idempotent: people and mailboxes are
upserted, and a delegation is created only if that (mailbox, delegate) pair never had one,
so a restart neither duplicates delegations, nor pushes their expiry further, nor brings
back one the holder revoked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from delegation.service import Delegation, DelegationService


@dataclass(frozen=True, slots=True)
class SeedDelegation:
    """A delegation *to* the person who carries it: rights on someone's `mailbox`."""

    mailbox: str
    rights: tuple[str, ...]
    expires_in_days: int | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SeedDelegation:
        days = data.get("expires_in_days")
        return cls(str(data["mailbox"]), tuple(data["rights"]), None if days is None else int(days))


@dataclass(frozen=True, slots=True)
class SeedPerson:
    """A person of the directory, their own BAL (if any) and the delegations they receive."""

    idnat: str
    given_name: str
    family_name: str
    profession: str | None = None
    ecps_only: bool = False
    bal: str | None = None
    backend: str = "default"
    delegations: tuple[SeedDelegation, ...] = field(default=())

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SeedPerson:
        """Read a persona-like mapping; unknown keys (key, city, role...) are ignored, and
        ``platform`` is accepted as the backend name."""
        raw = data.get("delegations") or ()
        return cls(
            idnat=str(data["idnat"]),
            given_name=str(data["given_name"]),
            family_name=str(data["family_name"]),
            profession=data.get("profession"),
            ecps_only=bool(data.get("ecps_only", False)),
            bal=data.get("bal"),
            backend=str(data.get("backend") or data.get("platform") or "default"),
            delegations=tuple(
                d if isinstance(d, SeedDelegation) else SeedDelegation.from_mapping(d) for d in raw
            ),
        )


async def seed(
    service: DelegationService, personas: Iterable[SeedPerson | Mapping[str, Any]]
) -> list[Delegation]:
    """Provision everyone first (a delegation may name a BAL seeded later in the list), then
    the delegations; returns the delegations as they stand."""
    people = [p if isinstance(p, SeedPerson) else SeedPerson.from_mapping(p) for p in personas]
    for person in people:
        await service.upsert_directory_entry(
            person.idnat,
            person.given_name,
            person.family_name,
            profession=person.profession,
            ecps_only=person.ecps_only,
            addresses=[person.bal] if person.bal else [],
        )
    for person in people:
        if person.bal:
            await service.upsert_mailbox(
                person.bal, type="PER", holder_idnat=person.idnat, backend=person.backend
            )
    now = service.now()
    result = []
    for person in people:
        for wanted in person.delegations:
            expires_at = (
                None
                if wanted.expires_in_days is None
                else now + dt.timedelta(days=wanted.expires_in_days)
            )
            result.append(
                await service.provision_delegation(
                    wanted.mailbox, person.idnat, wanted.rights, expires_at
                )
            )
    return result
