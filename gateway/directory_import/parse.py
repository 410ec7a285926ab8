"""Bytes of a directory file in, records and refusals out: no I/O, no database.

The file is refused whole (`DirectoryFileError`) when it cannot be read at all: larger
than `Limits.max_bytes`, not UTF-8 (a byte order mark is allowed), without a CSV header,
not JSON, too many lines or too deep. Otherwise each line or record is taken or refused
with its place; a BAL listed twice, or a person given two different names, is refused at
its second place, and a refused line gives nothing: neither its person nor its BAL.
"""

from __future__ import annotations

from typing import Literal

from gateway.directory_import import csv_layout, json_schema
from gateway.directory_import.fields import Limits
from gateway.directory_import.records import Bal, DirectoryFileError, Parsed, Person, Problem

Format = Literal["csv", "json"]

__all__ = ["DirectoryFileError", "Format", "Limits", "Parsed", "parse"]


def decode(data: bytes, limits: Limits) -> str:
    if len(data) > limits.max_bytes:
        raise DirectoryFileError(f"larger than {limits.max_bytes} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DirectoryFileError(f"line {line}: not UTF-8 (byte {exc.start})") from None


def parse(data: bytes, format: Format, limits: Limits | None = None) -> Parsed:
    """The file's people and BAL, and the places refused (in file order)."""
    limits = limits or Limits()
    text = decode(data, limits)
    read = csv_layout.parse if format == "csv" else json_schema.parse
    people, bals, errors = read(text, limits)
    return _consolidated(people, bals, errors)


def _consolidated(people: list[Person], bals: list[Bal], errors: list[Problem]) -> Parsed:
    """One person per idNat (the same names wherever she appears), one BAL per address;
    nothing from a refused line: a line skipped whole, its person and its BAL alike."""
    known: dict[str, Person] = {}
    for person in people:
        first = known.setdefault(person.idnat, person)
        if first is not person and (
            (first.given_name, first.family_name, first.profession)
            != (person.given_name, person.family_name, person.profession)
        ):
            errors.append(
                Problem(person.at, f"{person.idnat} differs from {first.at} (names, profession)")
            )
    seen: dict[str, Bal] = {}
    for box in bals:
        first_box = seen.setdefault(box.address, box)
        if first_box is not box:
            errors.append(Problem(box.at, f"{box.address} already listed at {first_box.at}"))
    refused = {problem.at for problem in errors}
    places: dict[str, list[Person]] = {}
    for person in people:
        if person.at not in refused:
            places.setdefault(person.idnat, []).append(person)
    return Parsed(
        tuple(found[0] for found in places.values()),
        tuple(box for box in seen.values() if box.at not in refused),
        tuple(errors),
        {idnat: tuple(p.at for p in found) for idnat, found in places.items()},
    )
