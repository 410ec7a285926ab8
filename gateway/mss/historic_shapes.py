"""The historic web services' output objects (DOMAIN.md §4), for every implementation.

The mock's historic platform builds them from its store, the gateway's legacy front from
IMAP (ENVELOPE, BODYSTRUCTURE): both through these functions, so that a message, a folder
or a recipient has one shape whoever answers. Field order is the WSDL schema's order (a
schema-driven SOAP client rejects another).

Message: ``{"messageId", "folderId", "conversationId", "subject", "body", "isHTML",
"priority": "NORMAL"|"HAUTE", "isAccuse", "size", "date": "dd/MM/yyyy HH:mm:ss"
(Europe/Paris), "emails": [{"address", "name", "type"}], "flags": [...], "attachments":
[{"part", "fileName", "contentType", "size"}]}``. ``body`` is the HTML body when the
request asked ``html`` and the message has one (then ``isHTML`` is true), the text body
otherwise. ``isHTML``, ``priority`` and ``isAccuse`` go beyond DOMAIN.md's list so that a
message can be rebuilt as MIME without loss.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

try:
    PARIS: dt.tzinfo = ZoneInfo("Europe/Paris")
except ZoneInfoNotFoundError:  # pragma: no cover - a system without tzdata
    PARIS = dt.timezone(dt.timedelta(hours=1))

DATE_FORMAT = "%d/%m/%Y %H:%M:%S"
ROOT = 1  # Zimbra's USER_ROOT: the parent of top-level folders, never listed
JUNK = 4
FLAG_ORDER = (
    "UNREAD",
    "FLAGGED",
    "ATTACHMENT",
    "REPLIED",
    "SENT_BY_ME",
    "DELETED",
    "DRAFT",
    "FORWARDED",
    "URGENT",
)


@dataclass(frozen=True)
class EmailEntry:
    address: str
    name: str
    type: str  # FROM, TO, CC, BCC


@dataclass(frozen=True)
class AttachmentInfo:
    part: str
    file_name: str
    content_type: str
    size: int


@dataclass(frozen=True)
class Folder:
    id: int
    name: str
    parent_id: int
    unread: int
    total: int


class MessageView(Protocol):
    """What a message object is built from (the mock's `StoredMessage`, the gateway's
    view of an IMAP message)."""

    @property
    def message_id(self) -> str: ...
    @property
    def folder_id(self) -> int: ...
    @property
    def conversation_id(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def body_text(self) -> str: ...
    @property
    def body_html(self) -> str | None: ...
    @property
    def size(self) -> int: ...
    @property
    def date(self) -> dt.datetime: ...
    @property
    def emails(self) -> Sequence[EmailEntry]: ...
    @property
    def flags(self) -> Sequence[str]: ...
    @property
    def urgent(self) -> bool: ...
    @property
    def read_receipt(self) -> bool: ...
    @property
    def attachments(self) -> Sequence[AttachmentInfo]: ...


def ordered_flags(present: Collection[str]) -> tuple[str, ...]:
    """Historic flags in their fixed order."""
    return tuple(flag for flag in FLAG_ORDER if flag in present)


def format_date(when: dt.datetime) -> str:
    """Paris time, as the platform shows dates; a date at the edge of the calendar
    (``31 Dec 9999 -1200`` in a Date header) that Paris time cannot hold is shown as
    written, never an error that would stop a listing."""
    try:
        return when.astimezone(PARIS).strftime(DATE_FORMAT)
    except (OverflowError, ValueError):
        return when.strftime(DATE_FORMAT)


def message_object(message: MessageView, *, html: bool = False) -> dict[str, Any]:
    as_html = html and message.body_html is not None
    return {
        "messageId": message.message_id,
        "folderId": message.folder_id,
        "conversationId": message.conversation_id,
        "subject": message.subject,
        "body": message.body_html if as_html else message.body_text,
        "isHTML": as_html,
        "priority": "HAUTE" if message.urgent else "NORMAL",
        "isAccuse": message.read_receipt,
        "size": message.size,
        "date": format_date(message.date),
        "emails": [{"address": e.address, "name": e.name, "type": e.type} for e in message.emails],
        "flags": list(message.flags),
        "attachments": [
            {"part": a.part, "fileName": a.file_name, "contentType": a.content_type, "size": a.size}
            for a in message.attachments
        ],
    }


def folder_tree(folders: Sequence[Folder], root: int | None = None) -> list[dict[str, Any]]:
    """Nested folder objects: the top level (children of the root), or one subtree."""
    children: dict[int, list[Folder]] = {}
    for folder in folders:
        children.setdefault(folder.parent_id, []).append(folder)

    def node(folder: Folder) -> dict[str, Any]:
        return {
            "id": folder.id,
            "name": folder.name,
            "unreadCount": folder.unread,
            "totalCount": folder.total,
            "parentId": folder.parent_id,
            "children": [node(c) for c in children.get(folder.id, [])],
        }

    if root is None:
        return [node(f) for f in children.get(ROOT, [])]
    return [node(f) for f in folders if f.id == root]


def recipient(
    first_name: str,
    last_name: str,
    addresses: Collection[str],
    *,
    idnat: str | None = None,
    civility: str | None = None,
    profession: str | None = None,
    places: Collection[tuple[str, str, str]] = (),
) -> dict[str, Any]:
    """A searchRecipient entry; `places` are (name, address, city)."""
    return {
        "idNat": idnat,
        "civility": civility,
        "firstName": first_name,
        "lastName": last_name,
        "profession": profession,
        "addresses": list(addresses),
        "placesOfPractice": [{"name": n, "address": a, "city": c} for n, a, c in places],
    }
