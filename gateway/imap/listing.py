"""LIST and LSUB: which folders a pattern names, and with which attributes.

Pure functions of the store's folder list, so the hierarchy rules (wildcards, INBOX in any
case, missing parents as ``\\Noselect``) are tested without a store or a session.
"""

from __future__ import annotations

import re

from gateway.imap import mutf7
from gateway.imap.mailstore import DELIMITER, FolderInfo
from gateway.imap.response import Atom, Value

Entry = tuple[str, list[Value]]  # (folder name, its attributes)


def wire_name(name: str) -> str:
    """A folder's name as LIST and STATUS write it: modified UTF-7 (RFC 3501 §5.1.3)."""
    return name if name == "INBOX" else mutf7.encode(name)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """LIST wildcards: `*` matches anything, `%` anything but the hierarchy delimiter."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "%":
            parts.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def _listed(regex: re.Pattern[str], name: str) -> bool:
    """INBOX matches its pattern in any case (RFC 3501 §5.1)."""
    if regex.fullmatch(name):
        return True
    return name == "INBOX" and re.fullmatch(regex.pattern, name, re.IGNORECASE) is not None


def _ancestors(name: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:depth]) for depth in range(1, len(parts))]


def list_entries(folders: list[FolderInfo], regex: re.Pattern[str]) -> list[Entry]:
    """LIST replies: matching folders with CHILDREN and SPECIAL-USE attributes, and the
    missing levels of hierarchy above them as ``(\\Noselect \\HasChildren)`` (RFC 3501
    §6.3.8, as Dovecot lists them), each parent just before its first child."""
    names = {f.name for f in folders}
    parents = {a for f in folders for a in _ancestors(f.name)}
    entries: list[Entry] = []
    shown: set[str] = set()
    for folder in folders:
        for ancestor in _ancestors(folder.name):
            if ancestor not in names and ancestor not in shown and _listed(regex, ancestor):
                shown.add(ancestor)
                entries.append((ancestor, [Atom("\\Noselect"), Atom("\\HasChildren")]))
        if not _listed(regex, folder.name):
            continue
        attributes: list[Value] = [
            Atom("\\HasChildren" if folder.name in parents else "\\HasNoChildren")
        ]
        if folder.special_use:
            attributes.append(Atom(folder.special_use))
        entries.append((folder.name, attributes))
    return entries


def lsub_entries(
    folders: list[FolderInfo], regex: re.Pattern[str], trailing_percent: bool
) -> list[Entry]:
    """LSUB replies: subscribed folders matching; with a trailing ``%``, an unsubscribed
    level above a subscribed folder is listed ``(\\Noselect)`` (RFC 3501 §6.3.9)."""
    subscribed = [f.name for f in folders if f.subscribed]
    chosen = set(subscribed)
    entries: list[Entry] = []
    shown: set[str] = set()
    for name in subscribed:
        if _listed(regex, name):
            entries.append((name, []))
        elif trailing_percent:
            for ancestor in _ancestors(name):
                if ancestor not in chosen and ancestor not in shown and _listed(regex, ancestor):
                    shown.add(ancestor)
                    entries.append((ancestor, [Atom("\\Noselect")]))
    return entries
