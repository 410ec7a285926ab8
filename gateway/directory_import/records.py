"""What a directory file says, once parsed: people, BAL and delegations, each with where
it came from (a CSV line, a JSON record) so that every refusal names its place."""

from __future__ import annotations

from dataclasses import dataclass, field


class DirectoryFileError(ValueError):
    """The whole file is refused (too large, not UTF-8, no header, not JSON...): nothing
    from it can be imported, whatever `--skip-invalid` says."""


@dataclass(frozen=True, slots=True)
class Problem:
    """A refused line or record (`at`: "line 12", "mailboxes[3]"), or a warning."""

    at: str
    message: str

    def __str__(self) -> str:
        return f"{self.at}: {self.message}"


@dataclass(frozen=True, slots=True)
class Person:
    at: str
    idnat: str
    given_name: str
    family_name: str
    profession: str | None


@dataclass(frozen=True, slots=True)
class DelegationSpec:
    """Rights of `delegate_idnat` on the BAL of the line; `expires_in_days` counts from
    the import that creates the delegation (an existing one keeps its expiry)."""

    delegate_idnat: str
    rights: frozenset[str]
    expires_in_days: int | None = None


@dataclass(frozen=True, slots=True)
class Bal:
    """A BAL. `backend` None: the file does not say (the recorded one is kept).
    `delegations` None: the file does not say (the open ones are kept); a tuple, even
    empty, is the whole set of the BAL's delegations."""

    at: str
    address: str
    type: str
    holder_idnat: str | None
    organisation: str | None
    backend: str | None
    delegations: tuple[DelegationSpec, ...] | None


@dataclass(frozen=True, slots=True)
class Parsed:
    """`people`: one per idNat (her first place); `places`: every place she is on, so that
    a person goes with the last of her lines to be refused, not with the first."""

    people: tuple[Person, ...]
    bals: tuple[Bal, ...]
    errors: tuple[Problem, ...]
    places: dict[str, tuple[str, ...]] = field(default_factory=dict)
