"""Reading the historic web services' inputs (DOMAIN.md §4), for every implementation.

Inputs come from JSON or SOAP: integers and booleans are also accepted as strings
("12", "true"), and a list field given one element may be that element alone. Every
refusal is a `HistoricError` with a code of DOMAIN.md, so that the mock's historic
platform and the gateway's legacy front refuse the same input the same way.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.mss.historic_shapes import PARIS
from gateway.mss.historic_ws import (
    ATTACHMENTS_TOO_LARGE,
    CONTENT_TOO_LARGE,
    EMAIL_INVALID,
    EMAIL_MISSING,
    FIELD_MISSING,
    INVALID_FORMAT,
    MAX_BODY,
    MAX_SEARCH_STRING,
    MAX_SUBJECT,
    HistoricError,
)

MAX_ADDRESS = 254
MAX_RECIPIENTS = 100
MAX_ATTACHMENTS = 50
MAX_FILE_NAME = 255
MAX_ID = 64
MAX_IDS = 1_000
MAX_PAGE = 1_000
MAX_OFFSET = 1_000_000
MAX_FOLDER_NAME_INPUT = 1_000
DEFAULT_PAGE = 50
DATE_FORMAT = "%d/%m/%Y %H:%M:%S"
UPDATE_OPERATIONS = ("READ", "UNREAD", "FLAGGED", "UNFLAGGED", "SPAM", "UNSPAM", "TRASH", "DELETE")
SORTS: dict[str, tuple[str, bool]] = {
    "DATEDESC": ("date", True),
    "DATEASC": ("date", False),
    "SUBJECTASC": ("subject", False),
    "SUBJASC": ("subject", False),
    "SUBJECTDESC": ("subject", True),
    "SUBJDESC": ("subject", True),
    "SIZEASC": ("size", False),
    "SIZEDESC": ("size", True),
}
_ADDRESS = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
CONTENT_TYPE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
)


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def text(
    data: dict[str, Any], key: str, *, limit: int, required: bool = False, single_line: bool = False
) -> str | None:
    value = data.get(key)
    if missing(value):
        if required:
            raise HistoricError(FIELD_MISSING, f"champ obligatoire manquant: {key}")
        return None if value is None else ""
    if not isinstance(value, str):
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        else:
            raise HistoricError(INVALID_FORMAT, f"{key}: texte attendu")
    if len(value) > limit:
        raise HistoricError(CONTENT_TOO_LARGE, f"{key}: plus de {limit} caractères")
    if single_line and any(c in value for c in "\r\n\0"):
        raise HistoricError(INVALID_FORMAT, f"{key}: retour à la ligne interdit")
    return value


def integer(
    data: dict[str, Any], key: str, *, required: bool = False, low: int = 0, high: int = 2**31
) -> int | None:
    value = data.get(key)
    if missing(value):
        if required:
            raise HistoricError(FIELD_MISSING, f"champ obligatoire manquant: {key}")
        return None
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,10}", value.strip()):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise HistoricError(INVALID_FORMAT, f"{key}: entier entre {low} et {high} attendu")
    return value


def need_text(data: dict[str, Any], key: str, *, limit: int, single_line: bool = False) -> str:
    value = text(data, key, limit=limit, required=True, single_line=single_line)
    assert value is not None
    return value


def need_integer(data: dict[str, Any], key: str, *, low: int = 0, high: int = 2**31) -> int:
    value = integer(data, key, required=True, low=low, high=high)
    assert value is not None
    return value


def boolean(data: dict[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if missing(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise HistoricError(INVALID_FORMAT, f"{key}: booléen attendu")


def items(data: dict[str, Any], key: str, *, limit: int, required: bool = False) -> list[Any]:
    value = data.get(key)
    if value is None or value == "" or value == []:
        if required:
            raise HistoricError(FIELD_MISSING, f"champ obligatoire manquant: {key}")
        return []
    if not isinstance(value, list):
        value = [value]  # SOAP: one repeated element
    if len(value) > limit:
        raise HistoricError(CONTENT_TOO_LARGE, f"{key}: plus de {limit} éléments")
    return value


def mapping(data: dict[str, Any], key: str, *, required: bool = False) -> dict[str, Any]:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise HistoricError(FIELD_MISSING, f"champ obligatoire manquant: {key}")
        return {}
    if not isinstance(value, dict):
        raise HistoricError(INVALID_FORMAT, f"{key}: objet attendu")
    return value


def message_ids(data: dict[str, Any], key: str = "messageIds") -> list[str]:
    ids = []
    for item in items(data, key, limit=MAX_IDS, required=True):
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str) or not item or len(item) > MAX_ID:
            raise HistoricError(INVALID_FORMAT, f"{key}: identifiant de message invalide")
        ids.append(item)
    return ids


def valid_address(value: str) -> bool:
    return len(value) <= MAX_ADDRESS and _ADDRESS.fullmatch(value) is not None


def bal_of(payload: dict[str, Any]) -> str:
    """The BAL acted on (`email`), lower-cased: 23 when missing, 24 when malformed."""
    value = payload.get("email")
    if missing(value):
        raise HistoricError(EMAIL_MISSING, "adresse de messagerie (email) manquante")
    if not isinstance(value, str) or not valid_address(value.strip()):
        raise HistoricError(EMAIL_INVALID, "adresse de messagerie (email) invalide")
    return value.strip().lower()


def paris_date(value: str, key: str) -> dt.datetime:
    for pattern in (DATE_FORMAT, "%d/%m/%Y"):
        try:
            return dt.datetime.strptime(value.strip(), pattern).replace(tzinfo=PARIS)
        except ValueError:
            continue
    raise HistoricError(INVALID_FORMAT, f"{key}: date jj/mm/aaaa [hh:mm:ss] attendue")


def fold(value: str) -> str:
    """Case- and accent-insensitive matching, as a French directory search is."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def update_operation(payload: dict[str, Any]) -> str:
    """updateMessages' `operation`, upper-cased, one of `UPDATE_OPERATIONS` (else 36)."""
    operation = need_text(payload, "operation", limit=16).upper()
    if operation not in UPDATE_OPERATIONS:
        raise HistoricError(INVALID_FORMAT, f"opération inconnue: {operation}")
    return operation


def sync_token(payload: dict[str, Any]) -> int | None:
    """syncMessages' `token`: None for a first sync, else a non-negative integer (else 36)."""
    token_text = text(payload, "token", limit=20)
    if not token_text:
        return None
    if not token_text.isdigit():
        raise HistoricError(INVALID_FORMAT, "jeton de synchronisation invalide")
    return int(token_text)


# -- searchMessages ------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchQuery:
    """The `query` of searchCriteria: every given criterion must hold. Texts are folded
    (`fold`); `flags` maps a historic flag to whether it must be present."""

    folder_id: int | None
    include_subfolders: bool
    texts: dict[str, str]  # from, to, cc, bcc, subject, content -> folded needle
    before: dt.datetime | None
    after: dt.datetime | None
    larger: int | None
    smaller: int | None
    seen: bool | None
    flags: dict[str, bool]
    typed: dict[str, str] = field(default_factory=dict)
    """The same needles as typed (stripped, not folded): for a server that searches
    itself (IMAP SEARCH), whose matching of accents is its own."""


@dataclass(frozen=True)
class SearchRequest:
    limit: int
    offset: int
    html: bool
    sort_field: str  # date, subject, size
    descending: bool
    query: SearchQuery


def search_request(payload: dict[str, Any]) -> SearchRequest:
    criteria = mapping(payload, "searchCriteria")
    query = mapping(criteria, "query")
    limit = integer(criteria, "limit", low=1, high=MAX_PAGE) or DEFAULT_PAGE
    offset = integer(criteria, "offset", high=MAX_OFFSET) or 0
    html = bool(boolean(criteria, "html"))
    sort_by = text(criteria, "sortBy", limit=32) or "DATE_DESC"
    sort = SORTS.get(sort_by.upper().replace("_", ""))
    if sort is None:
        raise HistoricError(INVALID_FORMAT, f"sortBy inconnu: {sort_by}")
    return SearchRequest(limit, offset, html, sort[0], sort[1], search_query(query))


def search_query(query: dict[str, Any]) -> SearchQuery:
    texts: dict[str, str] = {}
    typed: dict[str, str] = {}
    for key in ("from", "to", "cc", "bcc", "subject", "content"):
        value = text(query, key, limit=MAX_SEARCH_STRING)
        if value:
            texts[key] = fold(value.strip())
            typed[key] = value.strip()
    before = text(query, "before", limit=32)
    after = text(query, "after", limit=32)
    flags = {
        flag: wanted
        for key, flag in (
            ("flagged", "FLAGGED"),
            ("answered", "REPLIED"),
            ("deleted", "DELETED"),
            ("draft", "DRAFT"),
            ("isSent", "SENT_BY_ME"),
        )
        if (wanted := boolean(query, key)) is not None
    }
    return SearchQuery(
        folder_id=integer(query, "folderId"),
        include_subfolders=bool(boolean(query, "includeSubfolders")),
        texts=texts,
        before=paris_date(before, "before") if before else None,
        after=paris_date(after, "after") if after else None,
        larger=integer(query, "larger"),
        smaller=integer(query, "smaller"),
        seen=boolean(query, "seen"),
        flags=flags,
        typed=typed,
    )


# -- sendMessage / draftMessage ------------------------------------------------------------


@dataclass(frozen=True)
class Composed:
    """The `message` of sendMessage/draftMessage, checked. `recipients` are (address,
    name, TO|CC|BCC): a FROM entry is ignored, the sender is always the BAL acted on.
    `attachments` are still raw entries: a new file ({file, fileName, contentType}) or a
    part of a stored message ({part, messageId}); see `new_file`."""

    recipients: tuple[tuple[str, str, str], ...]
    subject: str
    body: str
    is_html: bool
    urgent: bool
    read_receipt: bool
    reply_type: str | None
    message_id: str | None
    conversation_id: str | None
    attachments: tuple[dict[str, Any], ...]


def composed(payload: dict[str, Any], *, sending: bool) -> Composed:
    message = mapping(payload, "message", required=True)
    recipients: list[tuple[str, str, str]] = []
    for entry in items(message, "addresses", limit=MAX_RECIPIENTS, required=sending):
        if isinstance(entry, str):
            entry = {"address": entry}
        if not isinstance(entry, dict):
            raise HistoricError(INVALID_FORMAT, "addresses: objets {address, name, type}")
        address = need_text(entry, "address", limit=MAX_ADDRESS, single_line=True)
        if not valid_address(address.strip()):
            raise HistoricError(EMAIL_INVALID, f"adresse invalide: {address}")
        name = text(entry, "name", limit=255, single_line=True) or ""
        kind = (text(entry, "type", limit=8) or "TO").upper()
        if kind not in ("FROM", "TO", "CC", "BCC"):
            raise HistoricError(INVALID_FORMAT, f"type d'adresse inconnu: {kind}")
        if kind != "FROM":
            recipients.append((address.strip().lower(), name, kind))
    if sending and not recipients:
        raise HistoricError(FIELD_MISSING, "aucun destinataire")
    priority = (text(message, "priority", limit=16) or "NORMAL").upper()
    if priority not in ("NORMAL", "HAUTE"):
        raise HistoricError(INVALID_FORMAT, f"priorité inconnue: {priority}")
    reply_type = text(message, "replyType", limit=16)
    if reply_type:
        reply_type = reply_type.upper()
        if reply_type not in ("REPLY", "REPLY_ALL", "FORWARD"):
            raise HistoricError(INVALID_FORMAT, f"replyType inconnu: {reply_type}")
    attachments = items(message, "attachments", limit=MAX_ATTACHMENTS)
    if not all(isinstance(a, dict) for a in attachments):
        raise HistoricError(INVALID_FORMAT, "attachments: objets attendus")
    return Composed(
        recipients=tuple(recipients),
        subject=text(message, "subject", limit=MAX_SUBJECT, single_line=True) or "",
        body=text(message, "body", limit=MAX_BODY) or "",
        is_html=bool(boolean(message, "isHTML")),
        urgent=priority == "HAUTE",
        read_receipt=bool(boolean(message, "isAccuse")),
        reply_type=reply_type or None,
        message_id=text(message, "messageId", limit=MAX_ID) or None,
        conversation_id=text(message, "conversationId", limit=MAX_ID) or None,
        attachments=tuple(attachments),
    )


def is_new_file(entry: dict[str, Any]) -> bool:
    """An attachment entry that carries a file, rather than naming a stored part."""
    return not missing(entry.get("file"))


def new_file(entry: dict[str, Any], budget: int, limit: int) -> tuple[str, str, bytes]:
    """(fileName, contentType, bytes) of a new file; 32 past `budget` bytes (of `limit`
    in all), 36 for bad base64 or a bad content type."""
    encoded = entry["file"]
    if not isinstance(encoded, str):
        raise HistoricError(INVALID_FORMAT, "attachments.file: base64 attendu")
    if len(encoded) > (budget * 4) // 3 + 8:
        raise HistoricError(ATTACHMENTS_TOO_LARGE, "pièces jointes trop volumineuses")
    try:
        data = base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HistoricError(INVALID_FORMAT, "attachments.file: base64 invalide") from exc
    name = need_text(entry, "fileName", limit=MAX_FILE_NAME, single_line=True)
    content_type = content_type_of(
        text(entry, "contentType", limit=255) or "application/octet-stream"
    )
    if len(data) > budget:
        raise HistoricError(
            ATTACHMENTS_TOO_LARGE, f"pièces jointes trop volumineuses (> {limit} octets)"
        )
    return name, content_type, data


def stored_part(entry: dict[str, Any]) -> tuple[str, str]:
    """(messageId, part) of an attachment entry naming a part of a stored message."""
    part = need_text(entry, "part", limit=MAX_ID)
    return need_text(entry, "messageId", limit=MAX_ID), part


def content_type_of(value: str) -> str:
    """A checked, lower-cased type/subtype (36 otherwise)."""
    if not CONTENT_TYPE.fullmatch(value.strip()):
        raise HistoricError(INVALID_FORMAT, f"contentType invalide: {value}")
    return value.strip().lower()


StoredPart = Callable[[str, str], Awaitable[tuple[str, str, bytes]]]
"""(messageId, part) -> (fileName, contentType, bytes) of a part of a stored message."""


async def attachment_files(
    entries: Sequence[dict[str, Any]], limit: int, stored: StoredPart
) -> tuple[tuple[str, str, bytes], ...]:
    """The (fileName, contentType, bytes) of sendMessage/draftMessage's attachments: new
    files decoded, stored parts fetched (their name and type unless the entry gives its
    own), within `limit` bytes in all (32 past it)."""
    budget = limit
    files: list[tuple[str, str, bytes]] = []
    for entry in entries:
        if is_new_file(entry):
            name, content_type, data = new_file(entry, budget, limit)
        else:
            source, part = stored_part(entry)
            stored_name, stored_type, data = await stored(source, part)
            name = text(entry, "fileName", limit=MAX_FILE_NAME, single_line=True) or stored_name
            content_type = content_type_of(text(entry, "contentType", limit=255) or stored_type)
            if len(data) > budget:
                raise HistoricError(
                    ATTACHMENTS_TOO_LARGE, f"pièces jointes trop volumineuses (> {limit} octets)"
                )
        budget -= len(data)
        files.append((name, content_type, data))
    return tuple(files)


def forwards_stored_parts(payload: dict[str, Any]) -> bool:
    """Whether sendMessage/draftMessage's message attaches parts of stored messages: that
    reads those messages, so it needs the right to read, not only to send or write."""
    message = payload.get("message")
    entries = message.get("attachments") if isinstance(message, dict) else None
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        return False
    return any(isinstance(e, dict) and not is_new_file(e) for e in entries)
