"""Client side of CONDSTORE and QRESYNC (RFC 7162): what a backend's answers say about
changes, read from the events of `gateway.imap.client` without any I/O.

A client that remembers a folder's (UIDVALIDITY, HIGHESTMODSEQ) can ask only for what
changed since: `highest_modseq` reads the ``[HIGHESTMODSEQ n]`` code of SELECT/EXAMINE
(and `no_modseq` its ``[NOMODSEQ]`` refusal), `status_values` the ``HIGHESTMODSEQ`` of a
STATUS, `fetch_modseq` the ``MODSEQ (n)`` item of a FETCH, `vanished` a ``* VANISHED
[(EARLIER)] uid-set`` response. UID sets stay ranges (`UidSet`): a server may legally
answer ``VANISHED (EARLIER) 1:4294967295``, which must not become four billion ints.
Limits: mod-sequences are 63-bit, UIDs 32-bit, a set holds at most `MAX_RANGES` ranges.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Final

from gateway.imap.client import ParsedValue, ParseError, Untagged, parse_code
from gateway.imap.response import Atom

__all__ = [
    "MAX_MODSEQ",
    "MAX_RANGES",
    "MAX_UID",
    "UidSet",
    "Vanished",
    "fetch_modseq",
    "highest_modseq",
    "no_modseq",
    "parse_uid_set",
    "status_values",
    "vanished",
]

MAX_MODSEQ: Final = 2**63 - 1  # RFC 7162 mod-sequence-value: 1*DIGIT, < 2^63
MAX_UID: Final = 2**32 - 1
MAX_RANGES: Final = 10_000  # ranges in one UID set (a 64 KiB line holds ~6,000 "n:m,")
MAX_STATUS_ITEMS: Final = 32

_DIGITS = re.compile(r"[1-9][0-9]{0,19}")
_RANGE = re.compile(r"([0-9]{1,10})(?::([0-9]{1,10}))?")


def _modseq(text: str) -> int | None:
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_MODSEQ else None


def highest_modseq(code: str | None) -> int | None:
    """n of a ``HIGHESTMODSEQ n`` response code, else None (also for a bad value)."""
    if code is None:
        return None
    name, rest = parse_code(code)
    return _modseq(rest) if name == "HIGHESTMODSEQ" else None


def no_modseq(code: str | None) -> bool:
    """The ``NOMODSEQ`` code: this mailbox keeps no mod-sequences (no CONDSTORE for it)."""
    return code is not None and parse_code(code)[0] == "NOMODSEQ"


def fetch_modseq(value: ParsedValue) -> int | None:
    """The value of a FETCH ``MODSEQ`` item, parsed as ``[n]`` by `parse_values`."""
    if isinstance(value, list) and len(value) == 1:
        inner = value[0]
        if isinstance(inner, int) and 0 < inner <= MAX_MODSEQ:
            return inner
    return None


def status_values(event: Untagged) -> tuple[ParsedValue, dict[str, int]] | None:
    """``* STATUS mailbox (NAME n ...)`` as (the mailbox as sent, NAME → n); None when the
    event is not a STATUS or not well formed. Values beyond 63 bits are left out."""
    if event.kind != "STATUS":
        return None
    try:
        values = event.values()
    except ParseError:
        return None
    if len(values) != 3 or not isinstance(values[2], list) or len(values[2]) % 2:
        return None
    pairs = values[2]
    if len(pairs) > 2 * MAX_STATUS_ITEMS:
        return None
    found: dict[str, int] = {}
    for index in range(0, len(pairs), 2):
        name, value = pairs[index], pairs[index + 1]
        if isinstance(name, Atom) and isinstance(value, int) and 0 <= value <= MAX_MODSEQ:
            found[name.value.upper()] = value
    return values[1], found


@dataclass(frozen=True)
class UidSet:
    """A set of UIDs as sorted, merged, inclusive ranges."""

    ranges: tuple[tuple[int, int], ...]

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, int):
            return False
        at = bisect.bisect_right(self.ranges, (uid, MAX_UID + 1)) - 1
        return at >= 0 and self.ranges[at][0] <= uid <= self.ranges[at][1]

    def __len__(self) -> int:
        return sum(high - low + 1 for low, high in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __or__(self, other: UidSet) -> UidSet:
        return UidSet(_merged([*self.ranges, *other.ranges]))


def _merged(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for low, high in ranges:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def parse_uid_set(text: str, *, max_ranges: int = MAX_RANGES) -> UidSet:
    """``1:3,7,9:8`` (either order within a range) as a `UidSet`; `ParseError` on anything
    else: ``*``, 0, a UID beyond 32 bits, more than `max_ranges` ranges."""
    pieces = text.split(",")
    if len(pieces) > max_ranges:
        raise ParseError(f"UID set of more than {max_ranges} ranges")
    ranges: list[tuple[int, int]] = []
    for piece in pieces:
        match = _RANGE.fullmatch(piece)
        if match is None:
            raise ParseError(f"bad UID set element {piece[:24]!r}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        low, high = min(low, high), max(low, high)
        if low == 0 or high > MAX_UID:
            raise ParseError(f"UID out of range in {piece[:24]!r}")
        ranges.append((low, high))
    return UidSet(_merged(ranges))


@dataclass(frozen=True)
class Vanished:
    """``* VANISHED [(EARLIER)] uids``: expunged UIDs; `earlier` when they answer a
    CHANGEDSINCE/QRESYNC question (expunged before now), not a live expunge."""

    earlier: bool
    uids: UidSet


def vanished(event: Untagged, *, max_ranges: int = MAX_RANGES) -> Vanished | None:
    """The `Vanished` of a VANISHED response, None for any other event; `ParseError` when
    it is one but malformed (the caller cannot trust what it knows of the folder then)."""
    if event.kind != "VANISHED":
        return None
    values = event.values()
    earlier = False
    if len(values) == 3 and isinstance(values[1], list):
        tags = values[1]
        if len(tags) != 1 or not isinstance(tags[0], Atom) or tags[0].value.upper() != "EARLIER":
            raise ParseError("VANISHED with an unknown tag list")
        earlier = True
        values = [values[0], values[2]]
    if len(values) != 2:
        raise ParseError("VANISHED without one UID set")
    uids = values[1]
    if isinstance(uids, int):
        text = str(uids)
    elif isinstance(uids, Atom):
        text = uids.value
    else:
        raise ParseError("VANISHED without a UID set")
    return Vanished(earlier, parse_uid_set(text, max_ranges=max_ranges))
