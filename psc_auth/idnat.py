"""National identifiers (idNat): a one-digit prefix naming the register, then the number."""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from psc_auth.errors import IdNatError

MAX_IDNAT_LENGTH = 32  # the historic web services' limit, also ours

_ADELI = r"(?:[0-9]{2}|2A|2B)[0-9]{7}"
# Suffix "/<internal id>" used by identifiers of staff registered through an organisation
# (FINESS, SIREN, SIRET, RPPS practice). Its exact form is not public: inferred, bounded.
_SUFFIX = r"(?:/[0-9A-Za-z]{1,20})?"


class IdNatKind(enum.Enum):
    """The register named by the idNat's first digit (DOMAIN.md §3)."""

    ADELI = "0"
    ADELI_PRACTICE = "1"
    FINESS = "3"
    SIREN = "4"
    SIRET = "5"
    RPPS_PRACTICE = "6"
    RPPS = "8"


_NUMBER_PATTERNS: dict[IdNatKind, re.Pattern[str]] = {
    IdNatKind.ADELI: re.compile(_ADELI),
    IdNatKind.ADELI_PRACTICE: re.compile(_ADELI + _SUFFIX),
    IdNatKind.FINESS: re.compile(_ADELI + _SUFFIX),
    IdNatKind.SIREN: re.compile(r"[0-9]{9}" + _SUFFIX),
    IdNatKind.SIRET: re.compile(r"[0-9]{14}" + _SUFFIX),
    IdNatKind.RPPS_PRACTICE: re.compile(r"[0-9]{11}" + _SUFFIX),
    IdNatKind.RPPS: re.compile(r"[0-9]{11}"),
}

_KINDS = {kind.value: kind for kind in IdNatKind}


@dataclass(frozen=True, slots=True)
class IdNat:
    """A validated national identifier, e.g. ``IdNat.parse("810003461033")`` (RPPS 10003461033)."""

    kind: IdNatKind
    number: str

    @classmethod
    def parse(cls, value: str) -> IdNat:
        if not isinstance(value, str) or not value:
            raise IdNatError("empty national identifier")
        if len(value) > MAX_IDNAT_LENGTH:
            raise IdNatError(f"national identifier longer than {MAX_IDNAT_LENGTH} characters")
        return _parse(value)

    @property
    def is_person(self) -> bool:
        """RPPS and ADELI identify a person; the other registers identify staff of a structure."""
        return self.kind in (IdNatKind.RPPS, IdNatKind.ADELI)

    def __str__(self) -> str:
        return self.kind.value + self.number


@functools.lru_cache(maxsize=4096)
def _parse(value: str) -> IdNat:
    """`IdNat.parse` of a bounded string, remembered: the same people log in all day."""
    kind = _KINDS.get(value[0])
    if kind is None:
        raise IdNatError(f"unknown national identifier prefix {value[0]!r}")
    number = value[1:]
    if not _NUMBER_PATTERNS[kind].fullmatch(number):
        raise IdNatError(f"malformed {kind.name} number in national identifier")
    return IdNat(kind, number)
