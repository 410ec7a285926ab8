"""What callers hand the service, checked and made canonical before it reaches a query.

BAL addresses, idNats and rights arrive from the API, the pages, the fronts and imports;
each part of the service parses them here, so one address or one idNat has one spelling in
the tables and one refusal (`Invalid` with a stable reason) whichever way it came in.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

from delegation.errors import Invalid
from delegation.models import ADDRESS_LENGTH, RIGHTS
from psc_auth.errors import IdNatError
from psc_auth.idnat import IdNat

_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def normal_address(address: str) -> str:
    """The canonical (lower-case) form of a BAL address; Invalid if it is not one."""
    value = address.strip().lower() if isinstance(address, str) else ""
    if len(value) > ADDRESS_LENGTH or not _ADDRESS.fullmatch(value):
        raise Invalid(f"not a mailbox address: {address!r:.80}", reason="bad-address")
    return value


def parse_idnat(value: str) -> str:
    try:
        return str(IdNat.parse(value))
    except IdNatError as exc:
        raise Invalid(f"bad national identifier: {exc}", reason="bad-idnat") from None


def parse_rights(rights: Collection[str]) -> frozenset[str]:
    """A non-empty subset of read/write/send (a bare string is refused: "read" ≠ {r,e,a,d})."""
    if isinstance(rights, str) or not all(isinstance(r, str) for r in rights):
        raise Invalid("rights must be a list of 'read', 'write', 'send'", reason="bad-rights")
    chosen = frozenset(r.strip().lower() for r in rights)
    if not chosen:
        raise Invalid("at least one right is needed", reason="bad-rights")
    if unknown := chosen - RIGHTS:
        raise Invalid(f"unknown rights: {', '.join(sorted(unknown))}", reason="bad-rights")
    return chosen


def rights_text(rights: Iterable[str]) -> str:
    """Rights as the audit trail's details write them: "read,write,send", in that order."""
    return ",".join(r for r in ("read", "write", "send") if r in set(rights))
