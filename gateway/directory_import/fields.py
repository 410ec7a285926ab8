"""One record's fields checked and made canonical, whichever format they came in.

The delegation service's own checks (`check_person`, `check_mailbox`, `parse_rights`)
decide what an idNat, an address or a set of rights is, so a file cannot load what the
API would refuse. On top, what only a file brings: control characters (NUL, CR, LF, the
C1 range, line separators) and spreadsheet formulas (a name starting with ``=``, ``+``,
``-`` or ``@``, which a spreadsheet opening a later export would run) are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from delegation.directory import check_person
from delegation.errors import Invalid
from delegation.mailboxes import BACKEND_LENGTH, check_mailbox
from delegation.models import ADDRESS_LENGTH, IDNAT_LENGTH, NAME_LENGTH
from delegation.parsing import parse_idnat, parse_rights
from gateway.directory_import.records import Bal, DelegationSpec, Person

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_FORMULA = tuple("=+-@")
MAX_EXPIRY_DAYS = 3650  # the registry refuses expiries past 10 years


@dataclass(frozen=True, slots=True)
class Limits:
    """What a directory file may hold; past these it is refused (or the line is)."""

    max_bytes: int = 32 * 1024 * 1024
    max_line: int = 8192  # characters of a CSV line (the extraction's run to ~1,000)
    max_lines: int = 200_000  # lines of a CSV file, records of a JSON one
    max_delegations: int = 100  # per BAL
    max_depth: int = 8  # JSON nesting (the schema needs 5)
    max_field: int = 1024  # any field the gateway ignores
    delegation_text: int = 64
    """Characters one ``idNat:rights:days`` item of a ``delegations`` cell may take, its
    ``;`` included (32 + 1 + 15 + 1 + 4 + 1 = 54, plus spaces): the cell holds
    `max_delegations` of them, and such a line still fits in `max_line`."""

    @property
    def max_delegations_cell(self) -> int:
        return self.max_delegations * self.delegation_text


class FieldError(Invalid):
    """A field of one record is refused."""


def text(value: object, name: str, limit: int, *, formula: bool = False) -> str:
    """A trimmed text field of at most `limit` characters, without control characters
    (and, with `formula`, not starting like a spreadsheet formula)."""
    if not isinstance(value, str):
        raise FieldError(f"{name}: a text is expected")
    if _UNSAFE.search(value):
        raise FieldError(f"{name}: control characters are refused")
    value = value.strip()
    if len(value) > limit:
        raise FieldError(f"{name}: longer than {limit} characters")
    if formula and value.startswith(_FORMULA):
        raise FieldError(f"{name}: looks like a spreadsheet formula ({value[:1]}...)")
    return value


def optional(value: object, name: str, limit: int, *, formula: bool = False) -> str | None:
    if value is None:
        return None
    return text(value, name, limit, formula=formula) or None


def person(at: str, idnat: object, given: object, family: object, profession: object) -> Person:
    try:
        checked = check_person(
            text(idnat, "idNat", IDNAT_LENGTH),
            text(given or "", "given name", NAME_LENGTH, formula=True),
            text(family, "family name", NAME_LENGTH, formula=True),
            optional(profession, "profession", 8, formula=True),
        )
    except FieldError:
        raise
    except Invalid as exc:
        raise FieldError(str(exc)) from None
    return Person(at, *checked)


def delegation(delegate: object, rights: object, expires_in_days: object = None) -> DelegationSpec:
    try:
        idnat = parse_idnat(text(delegate, "delegate idNat", IDNAT_LENGTH))
        if not isinstance(rights, (list, tuple)) or len(rights) > 3:
            raise FieldError("rights: a list of read, write, send")
        chosen = parse_rights([text(r, "right", 8) for r in rights])
    except FieldError:
        raise
    except Invalid as exc:
        raise FieldError(str(exc)) from None
    days: int | None = None
    if expires_in_days is not None:
        if isinstance(expires_in_days, bool) or not isinstance(expires_in_days, int):
            raise FieldError("expiry: a whole number of days")
        if not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
            raise FieldError(f"expiry: between 1 and {MAX_EXPIRY_DAYS} days")
        days = expires_in_days
    return DelegationSpec(idnat, chosen, days)


def bal(
    at: str,
    address: object,
    type: object,
    holder: str | None,
    organisation: object,
    backend: object,
    delegations: tuple[DelegationSpec, ...] | None,
    limits: Limits,
) -> Bal:
    try:
        checked = check_mailbox(
            text(address, "address", ADDRESS_LENGTH),
            text(type, "BAL type", 3).upper(),
            holder,
            optional(organisation, "organisation", NAME_LENGTH, formula=True),
        )
    except FieldError:
        raise
    except Invalid as exc:
        raise FieldError(str(exc)) from None
    chosen = optional(backend, "backend", BACKEND_LENGTH, formula=True)
    if delegations is not None:
        if len(delegations) > limits.max_delegations:
            raise FieldError(f"more than {limits.max_delegations} delegations on one BAL")
        delegates = [d.delegate_idnat for d in delegations]
        if len(set(delegates)) != len(delegates):
            raise FieldError("a delegate is named twice on this BAL")
        if checked[2] is not None and checked[2] in delegates:
            raise FieldError("the holder is delegated her own BAL")
    return Bal(at, *checked, chosen, delegations)
