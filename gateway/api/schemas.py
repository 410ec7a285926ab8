"""JSON shapes of the `/v1` API. Other tools rely on them: keep them exact."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from delegation.service import Delegation, DirectoryEntry, Grant
from psc_auth import Identity

Right = Literal["read", "write", "send"]
RIGHTS_ORDER: tuple[Right, ...] = ("read", "write", "send")
IDNAT_PATTERN = r"^[0-9][0-9A-Za-z/]{1,31}$"
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"  # no control characters: PostgreSQL refuses NUL in text


def ordered(rights: frozenset[str]) -> list[Right]:
    return [r for r in RIGHTS_ORDER if r in rights]


class Person(BaseModel):
    idnat: str = Field(examples=["899700000001"])
    name: str = Field(examples=["Claire MARTIN"])


class MailboxOut(BaseModel):
    address: str = Field(examples=["claire.martin@medecin.mssante.fr"])
    type: Literal["PER", "ORG", "APP", "CAB"]
    rights: list[Right] = Field(examples=[["read", "write", "send"]])
    via: Literal["holder", "delegation"]
    delegation_id: int | None = Field(examples=[None])
    holder: Person

    @classmethod
    def of(cls, grant: Grant) -> MailboxOut:
        return cls(
            address=grant.mailbox,
            type=grant.mailbox_type,
            rights=ordered(grant.rights),
            via=grant.via,
            delegation_id=grant.delegation_id,
            holder=Person(idnat=grant.holder_idnat or "", name=grant.holder_name),
        )


class DelegationOut(BaseModel):
    id: int = Field(examples=[1])
    mailbox: str = Field(examples=["claire.martin@medecin.mssante.fr"])
    delegate: Person
    rights: list[Right]
    granted_by: str = Field(examples=["899700000001"])
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, delegation: Delegation) -> DelegationOut:
        return cls(
            id=delegation.id,
            mailbox=delegation.mailbox,
            delegate=Person(idnat=delegation.delegate_idnat, name=delegation.delegate_name),
            rights=ordered(delegation.rights),
            granted_by=delegation.granted_by,
            created_at=delegation.created_at,
            expires_at=delegation.expires_at,
            revoked_at=delegation.revoked_at,
        )


class DelegationIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "delegate": "899700000003",
                    "rights": ["read", "write"],
                    "expires_at": "2026-12-31T18:00:00+01:00",
                }
            ]
        },
    )

    delegate: str = Field(pattern=IDNAT_PATTERN, description="the delegate's national id")
    rights: list[Right] = Field(min_length=1, max_length=3)
    expires_at: dt.datetime | None = Field(
        default=None, description="ISO 8601 with a time zone, at most 10 years ahead"
    )


class ProfessionOut(BaseModel):
    code: str = Field(examples=["10"])
    label: str = Field(examples=["médecin"])


class MeOut(BaseModel):
    idnat: str = Field(examples=["899700000001"])
    given_name: str
    family_name: str
    name: str
    professions: list[ProfessionOut]
    auth_means: Literal["card", "e-cps", "unknown"]
    token_expires_at: dt.datetime

    @classmethod
    def of(cls, identity: Identity) -> MeOut:
        return cls(
            idnat=str(identity.idnat),
            given_name=identity.given_name,
            family_name=identity.family_name,
            name=identity.display_name,
            professions=[ProfessionOut(code=p.code, label=p.label) for p in identity.professions],
            auth_means=identity.auth_means.value,
            token_expires_at=identity.expires_at,
        )


class DirectoryEntryOut(BaseModel):
    idnat: str = Field(examples=["899700000003"])
    name: str = Field(examples=["Sophie BERNARD"])
    given_name: str
    family_name: str
    profession: str | None = Field(examples=[None])
    ecps_only: bool
    addresses: list[str]

    @classmethod
    def of(cls, entry: DirectoryEntry) -> DirectoryEntryOut:
        return cls(
            idnat=entry.idnat,
            name=entry.display_name,
            given_name=entry.given_name,
            family_name=entry.family_name,
            profession=entry.profession,
            ecps_only=entry.ecps_only,
            addresses=list(entry.addresses),
        )


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(examples=["https://lps-gateway.invalid/problems/not-holder"])
    title: str = Field(examples=["Forbidden"])
    status: int = Field(examples=[403])
    detail: str | None = Field(default=None, examples=["only the holder manages delegations"])
