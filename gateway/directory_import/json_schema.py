"""The JSON layout: ``{"people": [...], "mailboxes": [...]}`` (pydantic models, so the
schema is documented and published in the OpenAPI of ``/admin/directory``).

Each record is validated on its own, so that a bad one is refused by its place
(``mailboxes[3]``) and `--skip-invalid` can leave it out; nesting is bounded before
use, and a depth bomb stops the decoder at its own recursion limit.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from delegation.mailboxes import BACKEND_LENGTH
from delegation.models import ADDRESS_LENGTH, IDNAT_LENGTH, NAME_LENGTH
from gateway.directory_import import fields
from gateway.directory_import.fields import FieldError, Limits
from gateway.directory_import.records import Bal, DirectoryFileError, Person, Problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PersonIn(_Strict):
    """A person of the directory (the holder of a PER BAL, or a delegate)."""

    idnat: str = Field(max_length=IDNAT_LENGTH, examples=["899700000001"])
    given_name: str = Field(default="", max_length=NAME_LENGTH)
    family_name: str = Field(max_length=NAME_LENGTH)
    profession: str | None = Field(default=None, max_length=8, description="PSC code, e.g. 10")


class DelegationIn(_Strict):
    delegate: str = Field(max_length=IDNAT_LENGTH, description="the delegate's idNat")
    rights: list[Literal["read", "write", "send"]] = Field(min_length=1, max_length=3)
    expires_in_days: int | None = Field(
        default=None, ge=1, le=fields.MAX_EXPIRY_DAYS, description="from the import creating it"
    )


class MailboxIn(_Strict):
    """A BAL: PER names its holder (in `people` or already in the registry), the other
    types their organisation."""

    address: str = Field(max_length=ADDRESS_LENGTH)
    type: Literal["PER", "ORG", "APP", "CAB"]
    holder: str | None = Field(default=None, max_length=IDNAT_LENGTH)
    organisation: str | None = Field(default=None, max_length=NAME_LENGTH)
    backend: str | None = Field(
        default=None, max_length=BACKEND_LENGTH, description="absent: the recorded one"
    )
    delegations: list[DelegationIn] | None = Field(
        default=None, description="the BAL's whole set of delegations; absent: left as they are"
    )


class DirectoryIn(_Strict):
    """A directory file: people, then mailboxes."""

    people: list[PersonIn] = Field(default_factory=list)
    mailboxes: list[MailboxIn] = Field(default_factory=list)


def too_deep(document: object, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit` (iterative: no stack to blow)."""
    level: list[tuple[object, int]] = [(document, 1)]
    while level:
        value, depth = level.pop()
        if isinstance(value, (list, dict)):
            if depth > limit:
                return True
            items = value.values() if isinstance(value, dict) else value
            level.extend((item, depth + 1) for item in items)
    return False


def parse(text: str, limits: Limits) -> tuple[list[Person], list[Bal], list[Problem]]:
    deep = DirectoryFileError(f"JSON nested deeper than {limits.max_depth} levels")
    try:
        document = json.loads(text)
    except RecursionError:  # the C decoder counts its depth and stops cleanly
        raise deep from None
    except ValueError as exc:
        raise DirectoryFileError(f"not JSON: {str(exc)[:200]}") from None
    if too_deep(document, limits.max_depth):
        raise deep
    if not isinstance(document, dict) or set(document) - {"people", "mailboxes"}:
        raise DirectoryFileError('an object with "people" and "mailboxes" is expected')
    lists: dict[str, list[Any]] = {}
    for key in ("people", "mailboxes"):
        value = document.get(key, [])
        if not isinstance(value, list):
            raise DirectoryFileError(f'"{key}" is a list')
        lists[key] = value
    if sum(len(v) for v in lists.values()) > limits.max_lines:
        raise DirectoryFileError(f"more than {limits.max_lines} records")
    people: list[Person] = []
    bals: list[Bal] = []
    errors: list[Problem] = []
    for index, raw in enumerate(lists["people"]):
        at = f"people[{index}]"
        try:
            p = PersonIn.model_validate(raw)
            people.append(fields.person(at, p.idnat, p.given_name, p.family_name, p.profession))
        except (ValidationError, FieldError) as exc:
            errors.append(Problem(at, _message(exc)))
    for index, raw in enumerate(lists["mailboxes"]):
        at = f"mailboxes[{index}]"
        try:
            m = MailboxIn.model_validate(raw)
            listed = None
            if m.delegations is not None:
                listed = tuple(
                    fields.delegation(d.delegate, d.rights, d.expires_in_days)
                    for d in m.delegations
                )
            holder = None
            if m.holder is not None:
                holder = fields.text(m.holder, "holder", IDNAT_LENGTH)
            bals.append(
                fields.bal(at, m.address, m.type, holder, m.organisation, m.backend, listed, limits)
            )
        except (ValidationError, FieldError) as exc:
            errors.append(Problem(at, _message(exc)))
    return people, bals, errors


def _message(exc: ValidationError | FieldError) -> str:
    if isinstance(exc, FieldError):
        return str(exc)
    first = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}"
