"""Parsed forms of IMAP arguments (RFC 3501 §9 grammar), shared by parser, engine, encoder.

Everything is immutable, so a command event can be queued, logged or compared freely.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

STAR = None  # "*" in a sequence set: the largest number in use


@dataclass(frozen=True, slots=True)
class SeqRange:
    """`start:end`, either end may be `*` (None). A single number is `SeqRange(n, n)`."""

    start: int | None
    end: int | None

    def bounds(self, largest: int) -> tuple[int, int]:
        low = largest if self.start is None else self.start
        high = largest if self.end is None else self.end
        return (low, high) if low <= high else (high, low)


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A sequence set of message numbers or UIDs, e.g. ``1:4,7,10:*``."""

    ranges: tuple[SeqRange, ...]

    def contains(self, number: int, largest: int) -> bool:
        for item in self.ranges:
            low, high = item.bounds(largest)
            if low <= number <= high:
                return True
        return False

    def iter_numbers(self, largest: int) -> Iterator[int]:
        """Numbers 1..largest in the set, ascending, each once (for message numbers)."""
        wanted: set[int] = set()
        for item in self.ranges:
            low, high = item.bounds(largest)
            wanted.update(range(max(low, 1), min(high, largest) + 1))
        return iter(sorted(wanted))

    def __str__(self) -> str:
        def one(n: int | None) -> str:
            return "*" if n is None else str(n)

        return ",".join(
            one(r.start) if r.start == r.end else f"{one(r.start)}:{one(r.end)}"
            for r in self.ranges
        )


SectionText = Literal["HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"]


@dataclass(frozen=True, slots=True)
class Section:
    """A body section: ``BODY[1.2.HEADER.FIELDS (From To)]`` is part (1, 2), text
    "HEADER.FIELDS", fields ("FROM", "TO"). `BODY[]` is `Section()`."""

    part: tuple[int, ...] = ()
    text: SectionText | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        spec = ".".join(str(p) for p in self.part)
        if self.text:
            spec = f"{spec}.{self.text}" if spec else self.text
        if self.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            spec += " (" + " ".join(self.fields) + ")"
        return spec


FetchName = Literal[
    "BODY",  # with a section: BODY[...]; without: the non-extensible BODYSTRUCTURE
    "BODYSTRUCTURE",
    "ENVELOPE",
    "FLAGS",
    "INTERNALDATE",
    "RFC822",
    "RFC822.HEADER",
    "RFC822.SIZE",
    "RFC822.TEXT",
    "UID",
]


@dataclass(frozen=True, slots=True)
class FetchAttribute:
    """One fetch attribute. `section` is None except for BODY[...] / BODY.PEEK[...];
    `partial` is ``(offset, length)`` from ``<offset.length>``."""

    name: FetchName
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None

    def response_name(self) -> str:
        """How the attribute is named in the FETCH response (PEEK dropped, partial origin)."""
        if self.section is None:
            return self.name
        origin = f"<{self.partial[0]}>" if self.partial else ""
        return f"BODY[{self.section}]{origin}"


@dataclass(frozen=True, slots=True)
class SearchKey:
    """A search key (RFC 3501 §6.4.4). `name` is upper case (ALL, FROM, OR, NOT, AND for a
    parenthesised list, SEQSET for a bare sequence set, UID, ...); `args` are its operands:
    strings for text keys, `dt.date` for date keys, int for LARGER/SMALLER, a SequenceSet
    for SEQSET/UID, SearchKey children for AND/OR/NOT, (field, text) for HEADER."""

    name: str
    args: tuple[str | int | dt.date | SequenceSet | SearchKey, ...] = field(default=())


StoreMode = Literal["replace", "add", "remove"]


@dataclass(frozen=True, slots=True)
class StoreAction:
    """``FLAGS``, ``+FLAGS``, ``-FLAGS`` (and their ``.SILENT`` forms) with the flags."""

    mode: StoreMode
    silent: bool
    flags: tuple[str, ...]


StatusItem = Literal["MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN"]
