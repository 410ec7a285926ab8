"""IMAP FETCH data → the historic message object (sans-I/O: parsed values in, views out).

The legacy front builds a message from ENVELOPE, BODYSTRUCTURE, FLAGS, INTERNALDATE and
RFC822.SIZE, plus the decoded text and HTML body parts fetched with ``BODY.PEEK[n]``:
never the whole message, so a page of 50 messages with large attachments costs the
attachments' structure, not their octets. Part numbers are IMAP's (``1``, ``2``, ``1.2``),
which is also how the historic platform numbers attachments.

Every walk is bounded (`MAX_DEPTH`, `MAX_PARTS`): a hostile backend cannot make a message
cost more than a few hundred parts of work.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.errors
import email.header
import email.utils
import quopri
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.imap.client import ParsedValue
from gateway.imap.response import Atom
from gateway.mss.historic_mime import html_to_text
from gateway.mss.historic_shapes import AttachmentInfo, EmailEntry, ordered_flags
from gateway.mss.historic_ws import IMAP_FLAGS

MAX_DEPTH = 12
MAX_PARTS = 200
MAX_ADDRESSES = 500
MAX_SUBJECT = 998
MAX_FILE_NAME = 255


@dataclass(frozen=True)
class Part:
    """A leaf body part: its IMAP number, type, parameters, disposition and size."""

    number: str
    content_type: str  # lower case type/subtype
    params: Mapping[str, str]
    encoding: str  # lower case: 7bit, 8bit, base64, quoted-printable, ...
    size: int
    disposition: str | None  # lower case: inline, attachment
    disposition_params: Mapping[str, str] = field(default_factory=dict)

    @property
    def file_name(self) -> str | None:
        name = self.disposition_params.get("filename") or self.params.get("name")
        return name[:MAX_FILE_NAME] if name else None

    @property
    def charset(self) -> str:
        return self.params.get("charset", "utf-8")


@dataclass(frozen=True)
class Structure:
    """What a message's BODYSTRUCTURE says the legacy front needs: the text and HTML body
    parts (None when absent) and the attachments."""

    text: Part | None
    html: Part | None
    attachments: tuple[Part, ...]


@dataclass(frozen=True)
class Envelope:
    subject: str
    emails: tuple[EmailEntry, ...]
    message_id: str | None
    in_reply_to: str | None
    date: dt.datetime | None = None  # the Date header: what the historic platform shows


@dataclass(frozen=True)
class ImapMessage:
    """A message of a modern BAL as the historic services show it (`MessageView`)."""

    message_id: str
    folder_id: int
    conversation_id: str
    subject: str
    body_text: str
    body_html: str | None
    size: int
    date: dt.datetime
    emails: Sequence[EmailEntry]
    flags: Sequence[str]
    urgent: bool
    read_receipt: bool
    attachments: Sequence[AttachmentInfo]


class StructureError(ValueError):
    """The backend's BODYSTRUCTURE or ENVELOPE is not what RFC 3501 describes."""


def _text(value: ParsedValue) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Atom):
        return value.value
    if isinstance(value, int):
        return str(value)
    return None


def _decoded(value: str | None) -> str:
    """RFC 2047 encoded words decoded; undecodable text kept as it came."""
    if not value:
        return ""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return value


def _params(value: ParsedValue) -> dict[str, str]:
    """``("CHARSET" "utf-8" "NAME" "x.pdf")`` → lower-case keys, RFC 2231/2047 decoded."""
    found: dict[str, str] = {}
    if not isinstance(value, list):
        return found
    for index in range(0, len(value) - 1, 2):
        key, text = _text(value[index]), _text(value[index + 1])
        if key is None or text is None:
            continue
        key = key.lower()
        if key.endswith("*"):  # RFC 2231: charset'language'percent-encoded
            key = key.rstrip("*")
            charset, _, rest = text.partition("'")
            _, _, encoded = rest.partition("'")
            try:
                text = urllib.parse.unquote(encoded, encoding=charset or "utf-8")
            except LookupError:
                text = encoded
        found[key] = _decoded(text)
    return found


def parse_bodystructure(value: ParsedValue) -> list[Part]:
    """The leaf parts of a BODYSTRUCTURE, in order, with their IMAP part numbers."""
    leaves: list[Part] = []

    def walk(node: ParsedValue, number: str, depth: int) -> None:
        if depth > MAX_DEPTH or len(leaves) >= MAX_PARTS:
            raise StructureError("BODYSTRUCTURE too deep or with too many parts")
        if not isinstance(node, list) or not node:
            raise StructureError("BODYSTRUCTURE: a body is a list")
        if isinstance(node[0], list):  # multipart: children, then the subtype
            children: list[ParsedValue] = []
            for child in node:  # the bodies, then the subtype and extension data
                if not isinstance(child, list):
                    break
                children.append(child)
            for index, child in enumerate(children, 1):
                walk(child, f"{number}.{index}" if number else str(index), depth + 1)
            return
        if len(node) < 7:
            raise StructureError("BODYSTRUCTURE: a leaf has at least 7 fields")
        main, sub = (_text(node[0]) or "application").lower(), (_text(node[1]) or "x").lower()
        size = node[6] if isinstance(node[6], int) else 0
        # the extension data starts after the type-specific fields
        if main == "text":
            extension = 8
        elif main == "message" and sub == "rfc822":
            extension = 10
        else:
            extension = 7
        disposition: str | None = None
        disposition_params: dict[str, str] = {}
        if len(node) > extension + 1 and isinstance(node[extension + 1], list):
            entry = node[extension + 1]
            assert isinstance(entry, list)
            if entry:
                disposition = (_text(entry[0]) or "").lower() or None
                disposition_params = _params(entry[1]) if len(entry) > 1 else {}
        leaves.append(
            Part(
                number or "1",
                f"{main}/{sub}",
                _params(node[2]),
                (_text(node[5]) or "7bit").lower(),
                size,
                disposition,
                disposition_params,
            )
        )

    walk(value, "", 0)
    return leaves


def structure_of(value: ParsedValue) -> Structure:
    """The body parts and attachments, chosen as the historic platform chooses them: the
    first text/plain and text/html leaves that are neither attachments nor named files
    are the body; every other leaf is an attachment."""
    text: Part | None = None
    html: Part | None = None
    attachments: list[Part] = []
    for part in parse_bodystructure(value):
        candidate = part.disposition != "attachment" and part.file_name is None
        if candidate and part.content_type == "text/plain" and text is None:
            text = part
        elif candidate and part.content_type == "text/html" and html is None:
            html = part
        else:
            attachments.append(part)
    return Structure(text, html, tuple(attachments))


def attachment_info(part: Part) -> AttachmentInfo:
    name = part.file_name or (
        "message.eml" if part.content_type == "message/rfc822" else f"part-{part.number}"
    )
    return AttachmentInfo(part.number, name, part.content_type, decoded_size(part))


def decoded_size(part: Part) -> int:
    """The size of the decoded octets (what downloadAttachment gives), estimated from the
    transfer-encoded size as IMAP gives it."""
    if part.encoding == "base64":
        return part.size * 3 // 4
    return part.size


def decode_part(part: Part, data: bytes) -> bytes:
    """A part's octets with its transfer encoding undone."""
    if part.encoding == "base64":
        encoded = b"".join(data.split())
        encoded = encoded[: len(encoded) // 4 * 4]  # a part read only in its beginning
        try:
            return base64.b64decode(encoded, validate=False)
        except (binascii.Error, ValueError):
            return b""
    if part.encoding == "quoted-printable":
        return quopri.decodestring(data)
    return data


def part_text(part: Part, data: bytes) -> str:
    """A text part decoded to str with "\\n" line ends (as the web services return it)."""
    raw = decode_part(part, data)
    try:
        text = raw.decode(part.charset, "replace")
    except LookupError:
        text = raw.decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


def _addresses(value: ParsedValue, kind: str) -> list[EmailEntry]:
    found: list[EmailEntry] = []
    if not isinstance(value, list):
        return found
    for entry in value:
        if not isinstance(entry, list) or len(entry) < 4:
            continue
        mailbox, host = _text(entry[2]), _text(entry[3])
        if not mailbox or not host:  # group syntax markers
            continue
        name = _decoded(_text(entry[0]))
        found.append(EmailEntry(f"{mailbox}@{host}".lower(), name, kind))
    return found


def parse_envelope(value: ParsedValue) -> Envelope:
    """ENVELOPE: (date subject from sender reply-to to cc bcc in-reply-to message-id)."""
    if not isinstance(value, list) or len(value) < 10:
        raise StructureError("ENVELOPE: 10 fields expected")
    emails: list[EmailEntry] = []
    for index, kind in ((2, "FROM"), (5, "TO"), (6, "CC"), (7, "BCC")):
        emails.extend(_addresses(value[index], kind))
    return Envelope(
        _decoded(_text(value[1]))[:MAX_SUBJECT],
        tuple(emails[:MAX_ADDRESSES]),
        _text(value[9]),
        _text(value[8]),
        _date(value[0]),
    )


def _date(value: ParsedValue) -> dt.datetime | None:
    """ENVELOPE's date (the Date header); None when missing or unreadable."""
    if not isinstance(value, bytes):
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.decode("ascii", "replace"))
    except (ValueError, TypeError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def historic_flags(
    imap_flags: Collection[str], *, sent: bool, attachment: bool, urgent: bool
) -> tuple[str, ...]:
    """IMAP flags → historic flags (historic_ws.IMAP_FLAGS; UNREAD when not \\Seen;
    SENT_BY_ME for a message in Sent; ATTACHMENT and URGENT derived)."""
    lowered = {f.lower() for f in imap_flags}
    present = {historic for imap, historic in IMAP_FLAGS if imap.lower() in lowered}
    if "\\seen" not in lowered:
        present.add("UNREAD")
    if sent:
        present.add("SENT_BY_ME")
    if attachment:
        present.add("ATTACHMENT")
    if urgent:
        present.add("URGENT")
    return ordered_flags(present)


def urgent_of(headers: Mapping[str, str]) -> bool:
    """The priority headers as the historic platform reads them (X-Priority 1 or 2,
    Importance: high, Priority: urgent)."""
    return (
        headers.get("x-priority", "")[:1] in ("1", "2")
        or headers.get("importance", "").lower() == "high"
        or headers.get("priority", "").lower() == "urgent"
    )


def header_fields(data: bytes) -> dict[str, str]:
    """``BODY[HEADER.FIELDS (...)]`` octets → lower-case name → unfolded value (first)."""
    found: dict[str, str] = {}
    current: str | None = None
    for line in data.decode("utf-8", "replace").replace("\r\n", "\n").split("\n"):
        if line[:1] in (" ", "\t") and current is not None:
            found[current] = f"{found[current]} {line.strip()}".strip()
            continue
        name, colon, value = line.partition(":")
        if not colon:
            current = None
            continue
        current = name.strip().lower()
        if current in found:
            current = None  # the first occurrence counts
            continue
        found[current] = value.strip()
    return found


def body_texts(structure: Structure, texts: Mapping[str, bytes]) -> tuple[str, str | None]:
    """(text body, HTML body) from the fetched parts (`texts`: part number → octets); an
    HTML-only message gets a text body made from its HTML, as the historic platform does."""
    html = (
        part_text(structure.html, texts.get(structure.html.number, b""))
        if structure.html is not None
        else None
    )
    if structure.text is not None:
        text = part_text(structure.text, texts.get(structure.text.number, b""))
    else:
        text = html_to_text(html) if html else ""
    return text, html
