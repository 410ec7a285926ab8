"""Which historic messageId each message read through the historic platform's IMAP is
(sans-I/O): what a BAL leaving that platform needs to keep the ids its LPS know.

The platform's IMAP does not say which web-service messageId a message has, and its web
services do not give a message's bytes; both show, for each message of a folder, what the
web services call its `date` (its Date header, else its arrival, to the second, in Paris
time), its `subject` and its sender. Messages are paired folder by folder on that key;
among messages sharing a key (a message and its exact copies) first those of the same
size, then in order (UIDs and messageIds both grow as messages arrive), when both sides
show as many; when one side shows more (a message deleted or arrived between the two
listings), only a size found once on each side pairs. Those left are tried once more
with the arrival as their date, for a platform whose `date` is that. A message left
without a partner gets a new id from the gateway: an id is never guessed.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.mss.historic_mime import parse_mime
from gateway.mss.historic_shapes import format_date
from gateway.mss.historic_ws import INBOX, HistoricError

MAX_HEADER_BYTES = 256 * 1024
SUBJECT_CHARS = 200  # platforms cut subjects (250 on the historic one): compare a prefix
MAX_FOLDER_DEPTH = 64
MAX_FOLDERS = 10_000
MAX_NAME_CHARS = 1_000  # a folder name longer than any platform allows is not followed
MAX_PATH_CHARS = 4_096

Key = tuple[str, str, str]
"""(date "dd/MM/yyyy HH:mm:ss" in Paris time, subject, sender address), normalised."""


@dataclass(frozen=True, slots=True)
class Seen:
    """One message as one side shows it: its key, its size, its order (UID or id)."""

    key: Key
    size: int
    order: int
    arrival: Key | None = None  # the key with the arrival as date (IMAP side)


def _subject(text: str) -> str:
    folded = unicodedata.normalize("NFC", " ".join(text.split())).casefold()
    return folded[:SUBJECT_CHARS]


def imap_seen(uid: int, header: bytes, internal_date: dt.datetime, size: int) -> Seen | None:
    """A message of the platform's IMAP from its header block (None: unreadable)."""
    if len(header) > MAX_HEADER_BYTES:
        return None
    block = header if header.endswith(b"\r\n\r\n") else header.rstrip(b"\r\n") + b"\r\n\r\n"
    try:
        parsed = parse_mime(block, max_bytes=MAX_HEADER_BYTES + 4)
    except HistoricError:
        return None
    sender = next((address for address, _, kind in parsed.emails if kind == "FROM"), "")
    subject, sender = _subject(parsed.subject), sender.lower()
    arrival = (format_date(internal_date), subject, sender)
    if parsed.date is None:
        return Seen(arrival, size, uid)
    return Seen((format_date(parsed.date), subject, sender), size, uid, arrival)


def ws_seen(message: Mapping[str, Any]) -> tuple[int, Seen] | None:
    """(messageId, what it shows) of a web-service message object; None when its id is
    not a decimal number the gateway can serve again, or a field is missing."""
    raw_id, date, subject = message.get("messageId"), message.get("date"), message.get("subject")
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
        return None
    text = str(raw_id)
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    if not isinstance(date, str) or not isinstance(subject, str):
        return None
    emails = message.get("emails")
    sender = ""
    if isinstance(emails, list):
        for entry in emails:
            if isinstance(entry, Mapping) and entry.get("type") == "FROM":
                address = entry.get("address")
                sender = address.lower() if isinstance(address, str) else ""
                break
    size = message.get("size")
    size = size if isinstance(size, int) and not isinstance(size, bool) else -1
    number = int(text)
    return number, Seen((date.strip(), _subject(subject), sender), size, number)


def pair(imap: Iterable[Seen], ws: Iterable[Seen]) -> dict[int, int]:
    """UID → messageId for the messages of one folder (see the module docstring)."""
    mine = list({s.order: s for s in reversed(list(imap))}.values())
    theirs = list({s.order: s for s in reversed(list(ws))}.values())  # an id listed twice
    paired = _pair_on(mine, theirs, lambda s: s.key)
    done = set(paired.values())
    rest = [s for s in mine if s.order not in paired and s.arrival is not None]
    left = [s for s in theirs if s.order not in done]
    paired |= _pair_on(rest, left, lambda s: s.arrival or s.key)
    return paired


def _pair_on(imap: list[Seen], ws: list[Seen], key: Callable[[Seen], Key]) -> dict[int, int]:
    by_key: dict[Key, tuple[list[Seen], list[Seen]]] = defaultdict(lambda: ([], []))
    for seen in imap:
        by_key[key(seen)][0].append(seen)
    for seen in ws:
        by_key[seen.key][1].append(seen)
    paired: dict[int, int] = {}
    for mine, theirs in by_key.values():
        if not mine or not theirs:
            continue
        mine.sort(key=lambda s: s.order)
        theirs.sort(key=lambda s: s.order)
        if len(mine) != len(theirs):
            # one side shows a message the other does not: only a size found once on each
            # side says which is which
            sizes, partners = Counter(s.size for s in mine), Counter(t.size for t in theirs)
            for seen in mine:
                if sizes[seen.size] == 1 and partners[seen.size] == 1:
                    paired[seen.order] = next(t for t in theirs if t.size == seen.size).order
            continue
        taken: set[int] = set()
        left: list[Seen] = []
        for seen in mine:  # the same size first
            match = next(
                (i for i, t in enumerate(theirs) if i not in taken and t.size == seen.size), None
            )
            if match is None:
                left.append(seen)
            else:
                taken.add(match)
                paired[seen.order] = theirs[match].order
        rest = [t for i, t in enumerate(theirs) if i not in taken]
        for seen, partner in zip(left, rest, strict=True):
            paired[seen.order] = partner.order
    return paired


def folder_paths(tree: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """IMAP name → historic folder id, from `listFolders`' tree: the inbox (2) is "INBOX",
    a folder's name is its ancestors' names and its own joined by "/" (the platform's
    IMAP names them so); a top-level folder named like the inbox has no IMAP name."""
    found: dict[str, int] = {}

    def walk(folders: Sequence[Any], prefix: str, depth: int) -> Iterator[tuple[str, int]]:
        if depth > MAX_FOLDER_DEPTH:
            return
        for folder in folders:
            if not isinstance(folder, Mapping):
                continue
            folder_id, name = folder.get("id"), folder.get("name")
            if not isinstance(folder_id, int) or isinstance(folder_id, bool):
                continue
            if folder_id == INBOX:
                path = "INBOX"
            elif not isinstance(name, str) or not name or "/" in name:
                continue
            elif len(name) > MAX_NAME_CHARS or len(prefix) + len(name) > MAX_PATH_CHARS:
                continue  # nor its children: each would repeat it
            else:
                path = prefix + name
                if path.upper() == "INBOX":  # a top-level folder hidden behind the inbox
                    continue
            yield path, folder_id
            children = folder.get("children")
            if isinstance(children, list):
                yield from walk(children, path + "/", depth + 1)

    for path, folder_id in walk(tree, "", 0):
        if len(found) >= MAX_FOLDERS:
            break
        found.setdefault(path, folder_id)
    return found


def imap_name(name: str) -> str:
    """`name` with a first level "INBOX" in upper case, as IMAP compares it."""
    first, sep, rest = name.partition("/")
    return "INBOX" + sep + rest if first.upper() == "INBOX" else name
