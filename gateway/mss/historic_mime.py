"""RFC 5322 ↔ the structured message the historic platform keeps (Zimbra/Mailiz style).

The historic platform does not keep raw MIME: it keeps a body (text, and HTML when there
is one), the addresses, and attachments numbered as IMAP numbers body parts ("2", "1.2",
…). `parse_mime` turns delivered mail into that form; `build_mime` turns a composed
message (sendMessage, draftMessage) into RFC 5322 for delivery to recipients, and
`rebuild_mime` gives the platform's IMAP the octets of a message kept without its
original: the same ones every time, since IMAP clients cache size and structure by UID.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import SMTP, default
from html.parser import HTMLParser

from gateway.mss.historic_ws import CONTENT_TOO_LARGE, INVALID_FORMAT, HistoricError

MAX_MIME_BYTES = 40 * 1024 * 1024
MAX_PARTS = 200
MAX_DEPTH = 12
MAX_ADDRESSES = 500
_MSGID = re.compile(r"<[^<>\s]{1,900}>")


@dataclass(frozen=True)
class ParsedAttachment:
    part: str
    file_name: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class ParsedMessage:
    subject: str
    body_text: str
    body_html: str | None
    emails: tuple[tuple[str, str, str], ...]  # (address, name, FROM/TO/CC/BCC)
    date: dt.datetime | None
    urgent: bool
    read_receipt: bool
    attachments: tuple[ParsedAttachment, ...]
    header_message_id: str | None
    references: tuple[str, ...]
    size: int


class _TextOfHtml(HTMLParser):
    """Just enough HTML → text for the `html=false` view of an HTML-only message."""

    _BREAKS = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BREAKS:
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in ("p", "div", "tr", "h1", "h2", "h3"):
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.chunks.append(data)


def html_to_text(html: str) -> str:
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    text = "".join(parser.chunks)
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+\n", "\n", text)).strip() + "\n"


def _text_of(part: Message) -> str:
    """The decoded text of a part, with "\n" line ends (as the web services return it)."""
    text = ""
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            text = content
    except (LookupError, ValueError, AssertionError):
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    return text.replace("\r\n", "\n")


def _leaf_bytes(part: Message) -> bytes:
    """A leaf's octets; a message/* part whole: the message (rfc822), or its blocks of
    fields one after the other (delivery-status, disposition-notification)."""
    if part.get_content_maintype() == "message":
        inner = part.get_payload()
        if isinstance(inner, list):
            blocks = [m.as_bytes(policy=SMTP) for m in inner if isinstance(m, Message)]
            return b"".join(blocks[:1] if part.get_content_type() == "message/rfc822" else blocks)
        raw = part.get_payload(decode=True)
        return raw if isinstance(raw, bytes) else b""
    raw = part.get_payload(decode=True)
    return raw if isinstance(raw, bytes) else b""


def _leaves(message: Message) -> list[tuple[str, Message]]:
    """Leaf parts with their IMAP part numbers ("1" for a single-part message)."""
    found: list[tuple[str, Message]] = []

    def walk(part: Message, number: str, depth: int) -> None:
        if depth > MAX_DEPTH or len(found) >= MAX_PARTS:
            raise HistoricError(INVALID_FORMAT, "structure MIME trop profonde ou trop de parties")
        # a message/* part is one leaf, as IMAP numbers it: a report's fields (an MDN's
        # disposition, a DSN's status) stay one part of their type, not a text/plain
        if part.get_content_maintype() == "multipart" and part.is_multipart():
            children = part.get_payload()
            assert isinstance(children, list)
            for index, child in enumerate(children, 1):
                walk(child, f"{number}.{index}" if number else str(index), depth + 1)
        else:
            found.append((number or "1", part))

    walk(message, "", 0)
    return found


def _is_body_candidate(part: Message) -> bool:
    return (
        part.get_content_maintype() == "text"
        and part.get_content_subtype() in ("plain", "html")
        and part.get_content_disposition() != "attachment"
        and not part.get_filename()
    )


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except (ValueError, IndexError, TypeError):
        return ""
    return " ".join(str(value).split()) if value is not None else ""


def _addresses(message: Message) -> tuple[tuple[str, str, str], ...]:
    emails: list[tuple[str, str, str]] = []
    for header, kind in (("From", "FROM"), ("To", "TO"), ("Cc", "CC"), ("Bcc", "BCC")):
        try:
            values = message.get_all(header) or []
        except (ValueError, IndexError, TypeError):
            continue
        for value in values:
            for address in getattr(value, "addresses", ()):
                if address.addr_spec and len(emails) < MAX_ADDRESSES:
                    emails.append((address.addr_spec.lower(), address.display_name or "", kind))
    return tuple(emails)


def _date(message: Message) -> dt.datetime | None:
    try:
        header = message.get("Date")
        when = getattr(header, "datetime", None)
    except (ValueError, IndexError, TypeError):
        return None
    if not isinstance(when, dt.datetime):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _urgent(message: Message) -> bool:
    priority = _header(message, "X-Priority")
    return (
        priority[:1] in ("1", "2")
        or _header(message, "Importance").lower() == "high"
        or _header(message, "Priority").lower() == "urgent"
    )


def parse_mime(raw: bytes, *, max_bytes: int = MAX_MIME_BYTES) -> ParsedMessage:
    """Parse RFC 5322 bytes into the structured form; refuse oversized or unparsable mail."""
    if len(raw) > max_bytes:
        raise HistoricError(CONTENT_TOO_LARGE, f"message trop volumineux ({len(raw)} octets)")
    try:
        message = BytesParser(policy=default).parsebytes(raw)
        leaves = _leaves(message)
        text: str | None = None
        html: str | None = None
        attachments: list[ParsedAttachment] = []
        for number, part in leaves:
            if _is_body_candidate(part):
                if part.get_content_subtype() == "plain" and text is None:
                    text = _text_of(part)
                    continue
                if part.get_content_subtype() == "html" and html is None:
                    html = _text_of(part)
                    continue
            content_type = part.get_content_type()
            name = part.get_filename() or (
                "message.eml" if content_type == "message/rfc822" else f"part-{number}"
            )
            attachments.append(
                ParsedAttachment(number, name[:255], content_type, _leaf_bytes(part))
            )
        references = tuple(
            _MSGID.findall(_header(message, "In-Reply-To") + " " + _header(message, "References"))
        )[:100]
        header_id = _MSGID.search(_header(message, "Message-ID"))
        return ParsedMessage(
            subject=_header(message, "Subject")[:998],
            body_text=text if text is not None else (html_to_text(html) if html else ""),
            body_html=html,
            emails=_addresses(message),
            date=_date(message),
            urgent=_urgent(message),
            read_receipt=bool(_header(message, "Disposition-Notification-To")),
            attachments=tuple(attachments),
            header_message_id=header_id.group(0) if header_id else None,
            references=references,
            size=len(raw),
        )
    except HistoricError:
        raise
    except (ValueError, TypeError, IndexError, LookupError, AssertionError) as exc:
        raise HistoricError(INVALID_FORMAT, f"message MIME illisible: {exc}") from exc


@dataclass(frozen=True)
class Composition:
    """A message composed through sendMessage or draftMessage, ready to be written as MIME."""

    sender: tuple[str, str] | None  # (address, display name); None: no From (rebuilds only)
    recipients: tuple[tuple[str, str, str], ...]  # (address, name, TO/CC/BCC)
    subject: str
    body: str
    is_html: bool
    urgent: bool
    read_receipt: bool
    attachments: tuple[tuple[str, str, bytes], ...]  # (file name, content type, bytes)
    message_id: str
    date: dt.datetime
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()


def message_encoding(data: bytes, boundary: bytes | None) -> str | None:
    """How a message/* part's octets travel as themselves, as RFC 2046 §5.2 wants them
    ("7bit" or "8bit"); None when they cannot (a NUL, a line over 998 octets, or the
    multipart's boundary, which would end the part early) and must be base64."""
    if b"\0" in data or any(len(line) > 998 for line in data.splitlines()):
        return None
    if boundary is not None and boundary in data:
        return None
    return "7bit" if data.isascii() else "8bit"


def build_mime(composition: Composition, *, with_bcc: bool, boundary: str | None = None) -> bytes:
    """RFC 5322 bytes (CRLF); Bcc is written only for the sender's own copy. A multipart
    gets `boundary` when given, else a random one."""
    message = EmailMessage()
    if composition.sender is not None:
        address, name = composition.sender
        message["From"] = Address(display_name=name, addr_spec=address)
    for header, kind in (("To", "TO"), ("Cc", "CC"), ("Bcc", "BCC")):
        if kind == "BCC" and not with_bcc:
            continue
        entries = [
            Address(display_name=n, addr_spec=a) for a, n, k in composition.recipients if k == kind
        ]
        if entries:
            message[header] = entries
    message["Subject"] = composition.subject
    message["Date"] = composition.date
    message["Message-ID"] = composition.message_id
    if composition.in_reply_to:
        message["In-Reply-To"] = composition.in_reply_to
    if composition.references:
        message["References"] = " ".join(composition.references)
    if composition.urgent:
        message["X-Priority"] = "1 (Highest)"
        message["Importance"] = "high"
    if composition.read_receipt and composition.sender is not None:
        message["Disposition-Notification-To"] = str(Address(display_name=name, addr_spec=address))
    message.set_content(composition.body, subtype="html" if composition.is_html else "plain")
    for file_name, content_type, data in composition.attachments:
        if content_type == "message/rfc822":  # RFC 2046 §5.2.1: as itself, never in base64
            forwarded = BytesParser(policy=SMTP).parsebytes(data)
            message.add_attachment(forwarded, filename=file_name)
            continue
        maintype, _, subtype = content_type.partition("/")
        fence = boundary.encode("utf-8", "replace") if boundary is not None else None
        cte = message_encoding(data, fence) if maintype == "message" else None
        if cte is not None:  # a report's fields (RFC 3464, 8098) as themselves
            message.add_attachment(
                data, maintype=maintype, subtype=subtype, cte=cte, filename=file_name
            )
            continue
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=file_name)
    if boundary is not None and message.is_multipart():
        message.set_boundary(boundary)
    return message.as_bytes(policy=SMTP)


def rebuild_mime(composition: Composition) -> bytes:
    """The octets of a message the store keeps in structured form only (sendMessage's copy,
    drafts): `build_mime` with Bcc and a boundary derived from the content, so that the
    same message gives the same octets on every call and every restart."""
    digest = hashlib.sha256()
    for value in (
        composition.sender,
        composition.recipients,
        composition.subject,
        composition.body,
        composition.is_html,
        composition.urgent,
        composition.read_receipt,
        composition.message_id,
        composition.date.isoformat(),
        composition.in_reply_to,
        composition.references,
    ):
        digest.update(repr(value).encode("utf-8", "surrogatepass") + b"\0")
    for file_name, content_type, data in composition.attachments:
        digest.update(f"{file_name}\0{content_type}\0".encode("utf-8", "surrogatepass"))
        digest.update(hashlib.sha256(data).digest())
    return build_mime(composition, with_bcc=True, boundary=f"=_hist_{digest.hexdigest()[:32]}")
