"""The CSV layout: the national directory's MSSanté extraction ("Extraction
correspondance MSSanté" of the Annuaire Santé: one line per BAL, a header line, fields
separated by ``|``), read by column name, plus this project's optional columns.

Columns are found by name, case, accents and punctuation ignored (``Prénom d'exercice``
= ``prenom d exercice``), in any order; the others are ignored. The separator is the
first of ``|``, ``;``, ``,``, tab that splits the header into an ``Adresse BAL`` column.

``delegations`` (this project's): ``idNat:rights[:days]`` separated by ``;``, rights
joined by ``+`` (``899700000003:read+write+send;899700000006:read:30``), ``days`` the
expiry counted from the import that creates the delegation. A line with an empty
``Adresse BAL`` and ``Type BAL`` names a person without a BAL of her own (a delegate).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from delegation.directory import fold
from gateway.directory_import import fields
from gateway.directory_import.fields import FieldError, Limits
from gateway.directory_import.records import (
    Bal,
    DelegationSpec,
    DirectoryFileError,
    Person,
    Problem,
)

DELIMITERS = ("|", ";", ",", "\t")

COLUMNS: dict[str, tuple[str, ...]] = {
    "address": ("Adresse BAL",),
    "type": ("Type BAL", "Type de BAL"),
    "idnat": ("Identification nationale PP", "idnat"),
    "family_name": ("Nom d'exercice", "Nom"),
    "given_name": ("Prénom d'exercice", "Prénom"),
    "profession": ("Code profession",),
    "organisation": ("Raison sociale structure BAL", "Raison sociale structure"),
    "backend": ("backend",),
    "delegations": ("delegations",),
}
"""Our name of a column → the names a header may give it (the extraction's first)."""
REQUIRED = ("address", "type", "idnat", "family_name", "given_name")
_NAMES = {fold(name): key for key, names in COLUMNS.items() for name in names}
_DAYS = re.compile(r"[0-9]{1,4}")


@dataclass(frozen=True, slots=True)
class Header:
    delimiter: str
    columns: dict[str, int]  # our name → index
    width: int


def header(line: str) -> Header:
    """The header's separator and the columns found; DirectoryFileError without the
    required ones."""
    for delimiter in DELIMITERS:
        names = [fold(n) for n in _split(line, delimiter)]
        if fold("Adresse BAL") in names:
            columns: dict[str, int] = {}
            for index, name in enumerate(names):
                key = _NAMES.get(name)
                if key is not None and key not in columns:
                    columns[key] = index
            missing = [COLUMNS[k][0] for k in REQUIRED if k not in columns]
            if missing:
                raise DirectoryFileError(f"line 1: header without {', '.join(missing)}")
            return Header(delimiter, columns, len(names))
    raise DirectoryFileError("line 1: no 'Adresse BAL' column (not the MSSanté extraction?)")


def _split(line: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter, strict=True))
    except (csv.Error, StopIteration) as exc:
        raise FieldError(f"unreadable CSV ({exc})") from None


def delegations(cell: str) -> tuple[DelegationSpec, ...]:
    specs = []
    for item in (part.strip() for part in cell.split(";")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise FieldError(f"delegation {item[:40]!r}: idNat:rights[:days] expected")
        days = None
        if len(parts) == 3:
            if not _DAYS.fullmatch(parts[2]):
                raise FieldError(f"delegation {item[:40]!r}: days is a number")
            days = int(parts[2])
        specs.append(fields.delegation(parts[0], parts[1].split("+"), days))
    return tuple(specs)


def lines(text: str, limits: Limits) -> Iterator[tuple[int, str]]:
    """(number, line) of each non-empty line; DirectoryFileError past `max_lines`."""
    number = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        if number > limits.max_lines + 1:
            raise DirectoryFileError(f"more than {limits.max_lines} lines")
        line = raw[:-1] if raw.endswith("\r") else raw
        if line.strip():
            yield number, line


def parse(text: str, limits: Limits) -> tuple[list[Person], list[Bal], list[Problem]]:
    people: list[Person] = []
    bals: list[Bal] = []
    errors: list[Problem] = []
    head: Header | None = None
    for number, line in lines(text, limits):
        at = f"line {number}"
        if len(line) > limits.max_line:
            if head is None:
                raise DirectoryFileError(f"{at}: longer than {limits.max_line} characters")
            errors.append(Problem(at, f"longer than {limits.max_line} characters"))
            continue
        if head is None:
            try:
                head = header(line)
            except FieldError as exc:  # a header the csv module cannot read refuses the file
                raise DirectoryFileError(f"{at}: {exc}") from None
            continue
        try:
            person, box = _record(at, _split(line, head.delimiter), head, limits)
        except FieldError as exc:
            errors.append(Problem(at, str(exc)))
            continue
        if person is not None:
            people.append(person)
        if box is not None:
            bals.append(box)
    if head is None:
        raise DirectoryFileError("empty file: a header line is expected")
    return people, bals, errors


def _record(
    at: str, cells: Sequence[str], head: Header, limits: Limits
) -> tuple[Person | None, Bal | None]:
    if len(cells) > head.width and any(c.strip() for c in cells[head.width :]):
        raise FieldError(f"{len(cells)} fields, the header has {head.width}")
    listing = head.columns.get("delegations")
    for index, value in enumerate(cells):
        if index == listing:
            fields.text(value, "delegations", limits.max_delegations_cell)
        else:
            fields.text(value, "field", limits.max_field)

    def cell(key: str) -> str | None:
        index = head.columns.get(key)
        if index is None or index >= len(cells):
            return None
        return cells[index].strip() or None

    address, kind, idnat = cell("address"), cell("type"), cell("idnat")
    person = None
    if idnat is not None:
        person = fields.person(
            at, idnat, cell("given_name"), cell("family_name") or "", cell("profession")
        )
    if address is None and kind is None:
        if person is None:
            raise FieldError("neither a BAL nor a person")
        return person, None
    listed = None
    if "delegations" in head.columns:
        listed = delegations(cell("delegations") or "")
    holder = person.idnat if person is not None and (kind or "").upper() == "PER" else None
    box = fields.bal(
        at, address, kind, holder, cell("organisation"), cell("backend"), listed, limits
    )
    return person, box
