"""Historic message objects ↔ RFC 5322 / MIME.

`message_to_rfc5322` rebuilds a message the historic platform keeps only in structured
form (body, addresses, attachments). IMAP clients cache RFC822.SIZE and BODYSTRUCTURE
by UID, so the rebuild is a pure function of the message's *immutable* content: the same
object (whatever its flags or folder) and attachment bytes give the same octets, on every
call, every restart and every Python version. Hence a hand-written serializer rather than
`email.generator` (whose folding has changed between versions):

* header order fixed: Date, From, To, Cc, Bcc, Subject, Message-ID, X-Priority,
  Importance, Disposition-Notification-To, X-LPS-Message-Id, X-LPS-Conversation-Id,
  MIME-Version, Content-Type, Content-Transfer-Encoding; CRLF line ends; a field too long
  folded at fixed points;
* non-ASCII subjects and names as RFC 2047 UTF-8 "B" encoded words (cut on character
  boundaries, at most 64 octets each); attachment names as RFC 2231 ``filename*``
  and ``name*`` (continued when long; plain quoted values when short ASCII);
* text bodies as UTF-8 quoted-printable: 7-bit clean (no 8BITMIME needed on any path),
  still readable, and lines never longer than 76 octets; attachments as base64 in 76-column
  lines;
* a single text part without attachments; otherwise multipart/mixed with the body first
  and the attachments in their ``part`` order (multipart/report when the first of them is a
  delivery or disposition report: RFC 6522 puts it second, after the text for people).
  The boundary is ``=_lps_`` and 32 hex
  digits of a SHA-256 over the content: it cannot occur in quoted-printable or base64
  text (``=`` is always followed by hex digits or a line end there, ``_`` is outside
  base64), yet is the same every time;
* Date from the ``dd/MM/yyyy HH:mm:ss`` Europe/Paris date (the epoch if unusable);
  Message-ID the object's ``headerMessageId`` when it has one, else derived from
  messageId and a hash of the content (historic ids are only unique per BAL).

`rfc5322_to_message` reads mail submitted through SMTP or IMAP APPEND into the
``message`` of sendMessage/draftMessage: one body, text or HTML, and files. The client is
told the message was taken, so none of what it sent may be lost on the way:

* the body is the message's main text only: a single text part, or the first part of a
  multipart (of a multipart/related, its ``start`` root), recursively. Only inside a
  multipart/alternative is one rendering chosen: the HTML when it fits the platform's
  50,000 characters (the platform derives the text), else the plain text, an empty or
  undecodable one last. The other plain and HTML renderings of that alternative are set
  aside; anything else in it (a calendar invitation, an image, a file) is kept;
* every other part is an attachment: a file as its octets, a message/* part whole, a text
  part that is not the body (a second text/plain, an HTML part beside the text, the
  chosen rendering of a later alternative) as UTF-8 ``part-<n>.txt`` or ``.html`` (the
  platform keeps no charset). A body that neither its charset nor UTF-8 decodes is such
  a file too, its octets unchanged, rather than a text with replacement characters. A
  text part of nothing but whitespace holds nothing to keep;
* what the platform cannot hold is a `MimeRejected` with an enhanced status code (the
  SMTP front's 5xx, the IMAP APPEND's ``NO [CANNOT]``), never a part left out: a message
  over the size limit or a body over 50,000 characters (5.3.4); a subject over 250
  characters, a base64 part that decodes to nothing or to garbage, a multipart whose
  parts cannot be found, an empty file, a file name over 255 characters (5.6.0); a
  structure too deep or with too many parts (5.6.3); an invalid address (5.1.3); too
  many recipients (5.5.3).
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email import errors
from email.message import Message
from email.parser import BytesParser
from email.policy import default
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.mss.historic_mime import message_encoding

CRLF = b"\r\n"
MAX_SUBJECT = 250  # the historic platform's limits (DOMAIN.md §4)
MAX_BODY = 50_000
MAX_FILE_NAME = 255
MAX_NAME = 255
MAX_ADDRESS = 254
MAX_ADDRESSES = 500
MAX_ATTACHMENTS = 100
MAX_PARTS = 200
MAX_DEPTH = 10
MAX_HEADER_SUBJECT = 998  # a subject read from the historic side, before it is cut
DEFAULT_MAX_SIZE = 40 * 1024 * 1024
DATE_FORMAT = "%d/%m/%Y %H:%M:%S"
DERIVED_DOMAIN = "historic.lps-gateway.invalid"

try:
    PARIS: dt.tzinfo = ZoneInfo("Europe/Paris")
except ZoneInfoNotFoundError:  # pragma: no cover - a system without tzdata
    PARIS = dt.timezone(dt.timedelta(hours=1))

_ADDR_SPEC = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}$")
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
_ATEXT_PHRASE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MSGID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,250}@[\x21-\x3b\x3d\x3f-\x7e]{1,250}>$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class MimeRejected(ValueError):
    """Mail the historic platform cannot take. `status` is the enhanced status code
    (RFC 3463) for the SMTP front: 5.3.4 too big, 5.6.0 unreadable, 5.6.3 too complex."""

    def __init__(self, reason: str, status: str = "5.6.0") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


# -- historic object → RFC 5322 ----------------------------------------------------------


def historic_date(message: Mapping[str, Any]) -> dt.datetime | None:
    """The message's date (``dd/MM/yyyy HH:mm:ss``, Europe/Paris), aware; None if unusable.
    Also what the IMAP side should give as INTERNALDATE."""
    value = message.get("date")
    if not isinstance(value, str) or len(value) > 32:
        return None
    for pattern in (DATE_FORMAT, "%d/%m/%Y"):
        try:
            return dt.datetime.strptime(value.strip(), pattern).replace(tzinfo=PARIS)
        except ValueError:
            continue
    return None


def content_key(message: Mapping[str, Any]) -> str:
    """A digest of what the rebuild depends on, without downloading attachments (their
    names, types and sizes stand for them). A draft replaced through draftMessage keeps
    its messageId but not its content: when this changes, the message needs a new UID."""
    digest = hashlib.sha256()
    digest.update(json.dumps(_identity(message), sort_keys=True, default=str).encode())
    digest.update(_str(message.get("body")).encode("utf-8", "replace"))
    entries = message.get("attachments")
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            fields = {k: entry.get(k) for k in ("part", "fileName", "contentType", "size")}
            digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def message_to_rfc5322(message: Mapping[str, Any], attachments: Mapping[str, bytes]) -> bytes:
    """The message as RFC 5322 octets, the same every time (see the module docstring).

    `attachments` maps each attachment's ``part`` to its bytes (`downloadAttachment`);
    a part listed by the message but missing there is a `KeyError`. Flags, folderId, size
    and other mutable fields play no part, except URGENT (which never changes)."""
    body = _str(message.get("body"))
    is_html = message.get("isHTML") is True
    entries = _attachment_entries(message)
    files = [(entry, attachments[entry["part"]]) for entry in entries]

    digest = hashlib.sha256()
    digest.update(json.dumps(_identity(message), sort_keys=True, default=str).encode())
    digest.update(hashlib.sha256(body.encode("utf-8", "replace")).digest())
    for entry, data in files:
        digest.update(json.dumps(entry, sort_keys=True).encode())
        digest.update(hashlib.sha256(data).digest())
    fingerprint = digest.hexdigest()

    lines: list[bytes] = []
    when = historic_date(message) or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    lines.append(b"Date: " + email.utils.format_datetime(when).encode("ascii"))
    emails = _emails(message)
    for header, kind in (("From", "FROM"), ("To", "TO"), ("Cc", "CC"), ("Bcc", "BCC")):
        mailboxes = [_mailbox(address, name) for address, name, k in emails if k == kind]
        if mailboxes:
            lines.extend(_address_field(header, mailboxes))
    lines.extend(_unstructured("Subject", _str(message.get("subject"))[:MAX_HEADER_SUBJECT]))
    lines.append(b"Message-ID: " + _message_id(message, fingerprint).encode("ascii"))
    flags = message.get("flags")
    urgent = message.get("priority") == "HAUTE" or (isinstance(flags, list) and "URGENT" in flags)
    if urgent:
        lines.append(b"X-Priority: 1 (Highest)")
        lines.append(b"Importance: high")
    sender = next((address for address, _, kind in emails if kind == "FROM"), None)
    if message.get("isAccuse") is True and sender is not None:
        lines.append(b"Disposition-Notification-To: <" + sender.encode("ascii") + b">")
    for header, key in (
        ("X-LPS-Message-Id", "messageId"),
        ("X-LPS-Conversation-Id", "conversationId"),
    ):
        value = _str(message.get(key))
        if _SAFE_ID.fullmatch(value):
            lines.append(f"{header}: {value}".encode("ascii"))
    lines.append(b"MIME-Version: 1.0")

    text_part = _text_part(body, "html" if is_html else "plain")
    if not files:
        return CRLF.join(lines + text_part)
    boundary = f"=_lps_{fingerprint[:32]}".encode("ascii")
    report = _report_type(entries)
    if report is None:
        lines.append(b"Content-Type: multipart/mixed;")
    else:
        lines.append(b"Content-Type: multipart/report; report-type=" + report.encode() + b";")
    lines.append(b' boundary="' + boundary + b'"')
    lines.append(b"")
    lines.append(b"This is a multi-part message in MIME format.")
    for part in [text_part] + [_attachment_part(entry, data, boundary) for entry, data in files]:
        lines.append(b"--" + boundary)
        lines.extend(part)
    lines.append(b"--" + boundary + b"--")
    lines.append(b"")
    return CRLF.join(lines)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _identity(message: Mapping[str, Any]) -> dict[str, Any]:
    """The immutable fields that make a message this message (not flags, not folder)."""
    return {
        key: message.get(key)
        for key in (
            "messageId",
            "headerMessageId",
            "conversationId",
            "subject",
            "date",
            "emails",
            "isHTML",
            "priority",
            "isAccuse",
        )
    }


def _emails(message: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(address, name, kind) of the usable entries: an invalid address is left out rather
    than let anything like a header into the header."""
    found: list[tuple[str, str, str]] = []
    entries = message.get("emails")
    for entry in entries if isinstance(entries, list) else []:
        if len(found) >= MAX_ADDRESSES:
            break
        if not isinstance(entry, dict):
            continue
        address, name, kind = _str(entry.get("address")), _str(entry.get("name")), entry.get("type")
        if kind in ("FROM", "TO", "CC", "BCC") and _ADDR_SPEC.fullmatch(address):
            found.append((address, name[:MAX_NAME], kind))
    return found


def _attachment_entries(message: Mapping[str, Any]) -> list[dict[str, str]]:
    """The attachments as {part, fileName, contentType}, in part order ("2" < "10")."""
    entries = message.get("attachments")
    found: list[dict[str, str]] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("part"), str):
            continue
        content_type = _str(entry.get("contentType")).strip().lower()
        if not _CONTENT_TYPE.fullmatch(content_type):
            content_type = "application/octet-stream"
        found.append(
            {
                "part": entry["part"],
                "fileName": _str(entry.get("fileName"))[:MAX_FILE_NAME] or f"part-{entry['part']}",
                "contentType": content_type,
            }
        )
    if len(found) > MAX_ATTACHMENTS:
        raise ValueError(f"more than {MAX_ATTACHMENTS} attachments")

    def order(entry: dict[str, str]) -> tuple[tuple[int, ...], str]:
        numbers = tuple(int(n) if n.isdigit() else 0 for n in entry["part"].split(".")[:16])
        return numbers, entry["part"]

    return sorted(found, key=order)


def _message_id(message: Mapping[str, Any], fingerprint: str) -> str:
    given = _str(message.get("headerMessageId")).strip()
    if _MSGID.fullmatch(given):
        return given
    historic = _str(message.get("messageId"))
    local = historic if _SAFE_ID.fullmatch(historic) else "message"
    return f"<{local}.{fingerprint[:16]}@{DERIVED_DOMAIN}>"


def _clean(text: str) -> str:
    """One line: control characters (CR, LF, NUL, ...) become spaces."""
    return _CONTROL.sub(" ", text)


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 "B" words of at most 64 octets (one fits after ``Subject: ``), never
    splitting a character."""
    words: list[str] = []
    chunk = ""
    for char in text:
        if len((chunk + char).encode("utf-8")) > 39:  # 39 octets → a word of 64 characters
            words.append(chunk)
            chunk = ""
        chunk += char
    if chunk:
        words.append(chunk)
    return [
        "=?utf-8?b?" + base64.b64encode(w.encode("utf-8")).decode("ascii") + "?=" for w in words
    ]


def _needs_encoding(text: str) -> bool:
    return not text.isascii() or "=?" in text or any(len(word) > 70 for word in text.split(" "))


def _fold(name: str, tokens: Sequence[str]) -> list[bytes]:
    """``name: t1 t2 ...``, a new line (starting with a space) before a token that would
    pass 78 columns."""
    return _fold_raw(f"{name}:", tokens)


def _unstructured(name: str, value: str) -> list[bytes]:
    text = " ".join(_clean(value).split())
    if not text:
        return [f"{name}: ".encode("ascii")]
    if _needs_encoding(text):
        return _fold(name, _encoded_words(text))
    return _fold(name, text.split(" "))


def _phrase(name: str) -> str:
    name = " ".join(_clean(name).split())
    if not name:
        return ""
    if _needs_encoding(name):
        return " ".join(_encoded_words(name))
    if _ATEXT_PHRASE.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mailbox(address: str, name: str) -> str:
    phrase = _phrase(name)
    return f"{phrase} <{address}>" if phrase else address


def _address_field(name: str, mailboxes: Sequence[str]) -> list[bytes]:
    """One mailbox per line after the first (encoded names may be long)."""
    lines = [f"{name}: {mailboxes[0]}"]
    for mailbox in mailboxes[1:]:
        lines[-1] += ","
        lines.append(f" {mailbox}")
    folded: list[bytes] = []
    for line in lines:  # a long encoded name: break between its encoded words
        head, *words = line.split(" ")
        folded.extend(_fold_raw(head, words))
    return folded


def _fold_raw(head: str, words: Sequence[str]) -> list[bytes]:
    lines: list[str] = []
    current = head
    for word in words:
        if current != head and len(current) + 1 + len(word) > 78:
            lines.append(current)
            current = " " + word
        else:
            current += " " + word
    lines.append(current)
    return [line.encode("ascii") for line in lines]


def _quoted_printable(text: str) -> list[bytes]:
    """UTF-8 quoted-printable lines (RFC 2045 §6.7), soft breaks at 76 octets.

    The bytes must never change (RFC822.SIZE and BODYSTRUCTURE hang on them): each line is
    what a greedy encoder gives, one token (a byte or its ``=XX``) at a time, at most 75
    octets before a soft break; the regular expression only makes it fast."""
    out: list[bytes] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        encoded = _QP_ESCAPE.sub(_qp_escape, line.encode("utf-8", "replace"))
        if encoded[-1:] in (b" ", b"\t"):  # whitespace ending a line is escaped
            encoded = encoded[:-1] + b"=%02X" % encoded[-1]
        while len(encoded) > 75:
            cut = 75
            if encoded[74:75] == b"=":
                cut = 74  # never split an =XX
            elif encoded[73:74] == b"=":
                cut = 73
            out.append(encoded[:cut] + b"=")
            encoded = encoded[cut:]
        out.append(encoded)
    if out and out[-1] == b"":
        out.pop()  # the body's own last line end; one is written after the part anyway
    return out


_QP_ESCAPE = re.compile(rb"[^\x21-\x3c\x3e-\x7e\t ]")


def _qp_escape(match: re.Match[bytes]) -> bytes:
    return b"=%02X" % match[0][0]


def _text_part(body: str, subtype: str) -> list[bytes]:
    return [
        f"Content-Type: text/{subtype}; charset=utf-8".encode("ascii"),
        b"Content-Transfer-Encoding: quoted-printable",
        b"",
        *_quoted_printable(body),
        b"",
    ]


def _rfc2231(param: str, value: str) -> list[str]:
    """``param*=utf-8''...`` or, when long, ``param*0*=utf-8''...; param*1*=...``."""
    encoded = quote(value, safe="!#$&+-.^_`|~")
    if len(encoded) <= 50:
        return [f"{param}*=utf-8''{encoded}"]
    pieces: list[str] = []
    while encoded:
        cut = min(50, len(encoded))
        while 0 < cut < len(encoded) and "%" in encoded[max(0, cut - 2) : cut]:
            cut -= 1  # never cut inside a %XX
        pieces.append(encoded[:cut])
        encoded = encoded[cut:]
    return [
        f"{param}*{index}*=" + ("utf-8''" if index == 0 else "") + piece
        for index, piece in enumerate(pieces)
    ]


REPORT_TYPES = {
    "message/delivery-status": "delivery-status",
    "message/global-delivery-status": "global-delivery-status",
    "message/disposition-notification": "disposition-notification",
    "message/global-disposition-notification": "global-disposition-notification",
}


def _report_type(entries: Sequence[Mapping[str, str]]) -> str | None:
    """A delivery or read report (RFC 6522) the platform keeps as a body and files: its
    second part says so, and the message is a multipart/report again, as it was sent, so
    that the LPS reads it as a report and not as a letter with attachments."""
    if not entries:
        return None
    kind = entries[0]["contentType"].split(";")[0].strip().lower()
    return REPORT_TYPES.get(kind)


def _attachment_part(entry: Mapping[str, str], data: bytes, boundary: bytes) -> list[bytes]:
    """An attachment's MIME part: base64, but a message/* part (a forwarded message, a
    report's fields) as itself, as RFC 2046 §5.2 wants, when its lines allow it."""
    file_name = " ".join(_clean(entry["fileName"]).split()) or f"part-{entry['part']}"
    simple = (
        file_name.isascii()
        and len(file_name) <= 60
        and '"' not in file_name
        and "\\" not in file_name
    )
    if simple:
        type_params, disposition_params = [f'name="{file_name}"'], [f'filename="{file_name}"']
    else:
        type_params = _rfc2231("name", file_name)
        disposition_params = _rfc2231("filename", file_name)
    lines = _params_field("Content-Type", entry["contentType"], type_params)
    lines += _params_field("Content-Disposition", "attachment", disposition_params)
    kind = entry["contentType"].split(";")[0].strip().lower()
    as_itself = kind.startswith("message/") or kind == "text/rfc822-headers"
    cte = message_encoding(data, boundary) if as_itself else None
    if cte is not None:
        lines.append(b"Content-Transfer-Encoding: " + cte.encode("ascii"))
        lines.append(b"")
        lines.extend(data.splitlines())
        if data.endswith((b"\n", b"\r")):
            lines.append(b"")
        return lines
    lines.append(b"Content-Transfer-Encoding: base64")
    lines.append(b"")
    encoded = base64.b64encode(data)
    lines.extend(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    lines.append(b"")
    return lines


def _params_field(name: str, value: str, params: Sequence[str]) -> list[bytes]:
    """``Name: value;`` then each parameter on its own line."""
    lines = [f"{name}: {value}" + (";" if params else "")]
    lines += [f" {param}" + (";" if i < len(params) - 1 else "") for i, param in enumerate(params)]
    return [line.encode("ascii") for line in lines]


# -- RFC 5322 → historic message input ---------------------------------------------------


def rfc5322_to_message(
    raw: bytes,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    envelope_recipients: Sequence[str] = (),
    envelope_only: bool = False,
) -> dict[str, Any]:
    """The ``message`` of sendMessage / draftMessage for `raw` (RFC 5322 octets).

    addresses from To, Cc and Bcc (From is not sent: the historic platform always sends
    as the BAL acted on; the caller checks it), plus `envelope_recipients` absent from
    them as BCC. With `envelope_only` (SMTP submission) the envelope alone says who
    receives, as SMTP would deliver: header addresses outside it are left out, since the
    platform sends to every address it is given. Then the body and the attachments as the
    module docstring says (the main text only; every other part kept); HAUTE priority for
    X-Priority 1 or 2, ``Importance: high`` or ``Priority: urgent``; isAccuse when
    Disposition-Notification-To is present. What the platform cannot hold,
    `MimeRejected`."""
    if len(raw) > max_size:
        raise MimeRejected(f"message larger than {max_size} octets", "5.3.4")
    try:
        parsed = BytesParser(policy=default).parsebytes(raw)
        return _read(parsed, envelope_recipients, envelope_only=envelope_only)
    except MimeRejected:
        raise
    except (ValueError, TypeError, IndexError, LookupError, AssertionError, RecursionError) as exc:
        raise MimeRejected(f"unreadable message: {type(exc).__name__}") from exc


@dataclass(frozen=True)
class _Leaf:
    """A leaf part and its IMAP number; `text` is the decoded text of an inline plain or
    HTML part (None for any other part, and for one that does not decode)."""

    number: str
    part: Message
    text: str | None


@dataclass(frozen=True)
class _Split:
    """What a part gives: its main text (an inline plain or HTML leaf, or None) and the
    leaves to keep besides it."""

    main: _Leaf | None
    kept: tuple[_Leaf, ...]

    def leaves(self) -> tuple[_Leaf, ...]:
        return self.kept if self.main is None else (self.main, *self.kept)


def _read(
    parsed: Message, envelope_recipients: Sequence[str], *, envelope_only: bool
) -> dict[str, Any]:
    subject = _header_text(parsed, "Subject")
    if len(subject) > MAX_SUBJECT:
        raise MimeRejected(f"subject longer than {MAX_SUBJECT} characters", "5.6.0")
    split = _split(parsed, "", 0, [0])
    main, kept = split.main, list(split.kept)
    body, is_html = "", False
    if main is not None and main.text is not None:
        body, is_html = main.text, main.part.get_content_subtype() == "html"
    elif main is not None:
        kept.append(main)  # its charset does not decode it: its octets, as a file
    if len(body) > MAX_BODY:
        raise MimeRejected(f"body longer than {MAX_BODY} characters", "5.3.4")
    kept.sort(key=lambda leaf: _part_order(leaf.number))
    message: dict[str, Any] = {
        "addresses": _addresses(parsed, envelope_recipients, envelope_only=envelope_only),
        "subject": subject,
        "body": body,
        "isHTML": is_html,
        "priority": "HAUTE" if _urgent(parsed) else "NORMAL",
        "isAccuse": parsed.get("Disposition-Notification-To") is not None,
        "attachments": [_attachment(leaf) for leaf in kept if not _blank(leaf)],
    }
    conversation = _header_text(parsed, "X-LPS-Conversation-Id")
    if _SAFE_ID.fullmatch(conversation):
        message["conversationId"] = conversation
    return message


def _split(part: Message, number: str, depth: int, seen: list[int]) -> _Split:
    """`part`'s main text and the leaves kept besides it. Deeper than `MAX_DEPTH` or more
    than `MAX_PARTS` parts is refused; a message/* part is one leaf (attached whole)."""
    seen[0] += 1
    if depth > MAX_DEPTH or seen[0] > MAX_PARTS:
        raise MimeRejected("MIME structure too deep or with too many parts", "5.6.3")
    if part.get_content_maintype() != "multipart":
        number = number or "1"
        if _is_body(part):
            return _Split(_Leaf(number, part, _text(number, part)), ())
        return _Split(None, (_Leaf(number, part, None),))
    children = part.get_payload()
    if not isinstance(children, list):
        raise MimeRejected(
            f"part {number or '1'}: {part.get_content_type()} whose parts cannot be found "
            "(boundary missing or wrong)"
        )
    parts = [child for child in children if isinstance(child, Message)]
    if len(parts) != len(children):
        raise MimeRejected("unreadable MIME structure")
    splits = [
        _split(child, f"{number}.{index}" if number else str(index), depth + 1, seen)
        for index, child in enumerate(parts, 1)
    ]
    if part.get_content_subtype() == "alternative":
        return _alternative(splits)
    if not splits:
        return _Split(None, ())
    first = _root(part, parts) if part.get_content_subtype() == "related" else 0
    kept = list(splits[first].kept)
    for index, other in enumerate(splits):
        if index != first:
            kept.extend(other.leaves())
    return _Split(splits[first].main, tuple(kept))


def _alternative(splits: Sequence[_Split]) -> _Split:
    """The one rendering of a multipart/alternative that `_rank` prefers, the last of
    equals (RFC 2046 puts the preferred last). The plain and HTML renderings of the other
    alternatives are set aside; anything else in them (a calendar invitation, an image)
    is kept, and so is every alternative when none is plain or HTML."""
    renderings = [split for split in splits if split.main is not None]
    if not renderings:
        return _Split(None, tuple(leaf for split in splits for leaf in split.kept))
    chosen = max(reversed(renderings), key=_rank)
    kept = list(chosen.kept)
    for other in splits:
        if other is not chosen:
            kept.extend(leaf for leaf in other.kept if not _is_body(leaf.part))
    return _Split(chosen.main, tuple(kept))


def _rank(split: _Split) -> tuple[bool, bool, bool]:
    """Usable as the body (decoded, not blank, within the limit), then holding anything,
    then HTML (the platform derives the text from it)."""
    assert split.main is not None
    text = split.main.text
    holds = text is None or bool(text.strip())
    usable = text is not None and holds and len(text) <= MAX_BODY
    return usable, holds, split.main.part.get_content_subtype() == "html"


def _root(part: Message, children: Sequence[Message]) -> int:
    """The root of a multipart/related: the part its ``start`` names, else the first."""
    start = part.get_param("start")
    if isinstance(start, str) and start.strip():
        for index, child in enumerate(children):
            if str(child.get("Content-ID", "")).strip() == start.strip():
                return index
    return 0


def _part_order(number: str) -> tuple[int, ...]:
    return tuple(int(n) for n in number.split("."))


def _is_body(part: Message) -> bool:
    return (
        part.get_content_maintype() == "text"
        and part.get_content_subtype() in ("plain", "html")
        and part.get_content_disposition() != "attachment"
        and not part.get_filename()
    )


def _blank(leaf: _Leaf) -> bool:
    """An inline text part with nothing but whitespace: nothing to keep."""
    return leaf.text is not None and not leaf.text.strip()


def _text(number: str, part: Message) -> str | None:
    """The part's text with LF line ends: decoded with its charset, else as UTF-8 (a
    missing or wrong label on UTF-8 text is common); None when neither decodes it, rather
    than a text with replacement characters."""
    data = _octets(number, part)
    for charset in (part.get_content_charset() or "us-ascii", "utf-8"):
        try:
            return data.decode(charset).replace("\r\n", "\n")
        except (LookupError, ValueError):
            continue
    return None


def _octets(number: str, part: Message) -> bytes:
    """The part's content, transfer encoding undone. Base64 that gives nothing, or that no
    decoder can use (the email package then returns the encoded text), is refused: sent
    on, the part would arrive emptied or garbled."""
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return b""
    encoded = part.get_payload()
    unusable = any(isinstance(d, errors.InvalidBase64LengthDefect) for d in part.defects)
    emptied = (
        not data
        and isinstance(encoded, str)
        and bool(encoded.strip())
        and str(part.get("Content-Transfer-Encoding", "")).strip().lower() == "base64"
    )
    if unusable or emptied:
        raise MimeRejected(f"part {number}: its base64 content cannot be decoded", "5.6.0")
    return data


def _header_text(message: Message, name: str) -> str:
    value = message.get(name)
    return " ".join(str(value).split()) if value is not None else ""


def _urgent(message: Message) -> bool:
    return (
        _header_text(message, "X-Priority")[:1] in ("1", "2")
        or _header_text(message, "Importance").lower() == "high"
        or _header_text(message, "Priority").lower() == "urgent"
    )


def valid_recipient(address: str) -> bool:
    """Whether the historic platform can take `address` as a recipient."""
    return len(address) <= MAX_ADDRESS and _ADDR_SPEC.fullmatch(address) is not None


def _addresses(
    message: Message, envelope: Sequence[str], *, envelope_only: bool
) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    seen: set[str] = set()
    wanted = {e.strip().lower() for e in envelope}
    for header, kind in (("To", "TO"), ("Cc", "CC"), ("Bcc", "BCC")):
        for value in message.get_all(header) or []:
            for address in getattr(value, "addresses", ()):
                spec = (address.addr_spec or "").lower()
                if not spec or spec in seen or (envelope_only and spec not in wanted):
                    continue
                if not valid_recipient(spec):
                    raise MimeRejected(f"invalid address in {header}: {spec[:80]}", "5.1.3")
                seen.add(spec)
                found.append(
                    {"address": spec, "name": (address.display_name or "")[:MAX_NAME], "type": kind}
                )
    for spec in (e.strip().lower() for e in envelope):
        if spec and spec not in seen:
            if not valid_recipient(spec):
                raise MimeRejected(f"invalid recipient: {spec[:80]}", "5.1.3")
            seen.add(spec)
            found.append({"address": spec, "name": "", "type": "BCC"})
    if len(found) > MAX_ADDRESSES:
        raise MimeRejected(f"more than {MAX_ADDRESSES} recipients", "5.5.3")
    return found


_EXTENSIONS = {"text/plain": ".txt", "text/html": ".html", "text/calendar": ".ics"}


def _attachment(leaf: _Leaf) -> dict[str, str]:
    """The attachment entry for `leaf`: a message/* part whole, an inline text part as
    UTF-8 (the platform keeps no charset label), any other part as its octets."""
    part = leaf.part
    content_type = part.get_content_type()
    if part.get_content_maintype() == "message":
        inner = part.get_payload()
        if isinstance(inner, list):
            data = b"".join(m.as_bytes() for m in inner if isinstance(m, Message))
        else:
            data = _octets(leaf.number, part)
    elif leaf.text is not None:
        data = leaf.text.encode("utf-8")
    else:
        data = _octets(leaf.number, part)
    name = part.get_filename() or part.get_param("name", header="content-type")
    if not isinstance(name, str) or not name.strip():
        name = (
            "message.eml"
            if content_type == "message/rfc822"
            else f"part-{leaf.number}{_EXTENSIONS.get(content_type, '')}"
        )
    name = " ".join(_clean(name).split())
    if len(name) > MAX_FILE_NAME:
        raise MimeRejected(f"attachment name longer than {MAX_FILE_NAME} characters", "5.6.0")
    if not data:  # the platform reads an empty file as a reference to a stored part
        raise MimeRejected(f"empty attachment {name[:80]!r}: the historic platform refuses it")
    return {
        "file": base64.b64encode(data).decode("ascii"),
        "fileName": name,
        "contentType": content_type,
    }
