"""Delivery status notifications (RFC 3464) as messages, without I/O.

One `delivery_report` writes the ``multipart/report; report-type=delivery-status``
message an MTA sends back to a sender: a text for people (French, as MSSanté users read
it), the ``message/delivery-status`` fields (per message, then per recipient), and what
RET asked of the message: its header block (``text/rfc822-headers``, RFC 6522) or, with
RET=FULL, the whole message (``message/rfc822``) when it fits `max_returned` and can
travel as itself (RFC 2046 §5.2: a message/* part is never base64), its headers
otherwise. The gateway writes "relayed" notices with it, the mock operator's platform
"delivered", "delayed" and "failed" ones.

Every value that goes into a header or a field is checked to hold no control character
(`ValueError` otherwise): the DSN parameters it comes from are printable ASCII already
(`gateway.runtime.dsn`), this is the second lock.
"""

from __future__ import annotations

import base64
import datetime as dt
import quopri
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import Header
from email.utils import format_datetime, make_msgid
from typing import Literal

from gateway.mss.historic_mime import message_encoding

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
MAX_RETURNED = 256 * 1024  # octets of a message returned whole (RET=FULL)
MAX_HEADERS = 64 * 1024  # octets of a returned header block
CRLF = "\r\n"

_SUBJECTS: dict[str, str] = {
    "delivered": "Avis de remise : message remis",
    "relayed": "Avis de remise : message transmis",
    "expanded": "Avis de remise : message remis",
    "delayed": "Avis de remise : remise retardée",
    "failed": "Avis de non-remise : échec de la remise",
}
_TEXTS: dict[str, str] = {
    "delivered": "Votre message a été remis dans la boîte aux lettres de :",
    "relayed": (
        "Votre message a été transmis au serveur de messagerie de destination, qui ne "
        "renvoie pas d'avis de remise : aucun autre avis ne suivra pour :"
    ),
    "expanded": "Votre message a été remis à la liste de diffusion :",
    "delayed": (
        "La remise de votre message est retardée ; de nouvelles tentatives suivront pour :"
    ),
    "failed": "Votre message n'a pas pu être remis à :",
}


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One recipient's block. `recipient` is the address the MTA handled (Final-Recipient),
    `original` the ORCPT (addr-type, address) when the client gave one; `status` an RFC
    3463 code; `diagnostic` the remote reply (``smtp; 550 5.1.1 ...``)."""

    recipient: str
    action: Action
    status: str
    original: tuple[str, str] | None = None
    diagnostic: str | None = None
    will_retry_until: dt.datetime | None = None


def delivery_report(
    *,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[RecipientStatus],
    message: bytes,
    arrival: dt.datetime,
    ret: Literal["FULL", "HDRS"] | None = None,
    envid: str | None = None,
    now: dt.datetime | None = None,
    max_returned: int = MAX_RETURNED,
) -> bytes:
    """The notice to `sender` (the envelope's return path) about `recipients` of `message`
    (as the reporting MTA took it), CRLF line ends."""
    if not recipients:
        raise ValueError("a delivery report names at least one recipient")
    now = now or dt.datetime.now(dt.UTC)
    action = recipients[0].action
    returned, returned_type = _returned(message, ret, max_returned)
    fields = _status_fields(reporting_mta, recipients, arrival, envid)
    text = _human_text(recipients, ret == "FULL" and returned_type != "message/rfc822")
    boundary = _boundary(returned, fields, text)
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{_field(reporting_mta)}>",
        f"To: <{_field(sender)}>",
        f"Subject: {Header(_SUBJECTS[action], 'utf-8').encode(linesep=CRLF)}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: {make_msgid('dsn', domain=_field(reporting_mta))}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    parts = [
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + text,
        b"Content-Type: message/delivery-status\r\n\r\n" + fields,
        _returned_part(returned, returned_type, boundary),
    ]
    out = "\r\n".join(head).encode("ascii") + b"\r\n\r\nThis is a delivery status notification.\r\n"
    for part in parts:
        out += b"\r\n--" + boundary.encode() + b"\r\n" + part
        if not part.endswith(b"\r\n"):
            out += b"\r\n"
    return out + b"\r\n--" + boundary.encode() + b"--\r\n"


def header_block(message: bytes, limit: int = MAX_HEADERS) -> bytes:
    """The message's header block (up to its blank line), at most `limit` octets cut at
    a line end, CRLF line ends."""
    normalised = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head = normalised.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    if len(head) > limit:
        head = head[: head.rfind(b"\r\n", 0, limit) + 2]
    return head


def _returned(
    message: bytes, ret: str | None, max_returned: int
) -> tuple[bytes, Literal["message/rfc822", "text/rfc822-headers"]]:
    """What goes back of the message, and as which type."""
    if ret == "FULL" and len(message) <= max_returned and message_encoding(message, None):
        whole = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return whole, "message/rfc822"
    return header_block(message), "text/rfc822-headers"


def _returned_part(returned: bytes, content_type: str, boundary: str) -> bytes:
    """The third part: as itself in 7bit or 8bit lines; a header block that cannot travel
    so (a NUL, an endless line) in base64, which a text/* part may be (a message/rfc822
    is only ever returned when it can travel as itself)."""
    head = f"Content-Type: {content_type}\r\n".encode()
    encoding = message_encoding(returned, boundary.encode())
    if encoding is None:
        assert content_type == "text/rfc822-headers"
        encoded = base64.encodebytes(returned).replace(b"\n", b"\r\n")
        return head + b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded
    if encoding == "8bit":
        head += b"Content-Transfer-Encoding: 8bit\r\n"
    return head + b"\r\n" + returned


def _status_fields(
    reporting_mta: str,
    recipients: Sequence[RecipientStatus],
    arrival: dt.datetime,
    envid: str | None,
) -> bytes:
    blocks = [[f"Reporting-MTA: dns; {_field(reporting_mta)}"]]
    if envid is not None:
        blocks[0].append(f"Original-Envelope-Id: {_field(envid)}")
    blocks[0].append(f"Arrival-Date: {format_datetime(arrival)}")
    for entry in recipients:
        block = []
        if entry.original is not None:
            kind, address = entry.original
            block.append(f"Original-Recipient: {_field(kind)};{_field(address)}")
        block.append(f"Final-Recipient: {_typed_address(entry.recipient)}")
        block.append(f"Action: {entry.action}")
        block.append(f"Status: {_field(entry.status)}")
        if entry.diagnostic is not None:
            block.append(f"Diagnostic-Code: {_field(entry.diagnostic)}")
        if entry.will_retry_until is not None:
            block.append(f"Will-Retry-Until: {format_datetime(entry.will_retry_until)}")
        blocks.append(block)
    return b"".join("\r\n".join(block).encode("ascii") + b"\r\n\r\n" for block in blocks)[:-2]


def _human_text(recipients: Sequence[RecipientStatus], headers_only: bool) -> bytes:
    lines = [_TEXTS[recipients[0].action], ""]
    lines += [f"  {entry.recipient} ({entry.status})" for entry in recipients]
    if headers_only:
        lines += ["", "Le message n'a pas pu être joint en entier : voici ses en-têtes."]
    plain = "\n".join(lines).encode("utf-8") + b"\n"
    return quopri.encodestring(plain).replace(b"\n", b"\r\n")


def _typed_address(address: str) -> str:
    """Final-Recipient's value: ``rfc822;`` for a printable ASCII address, else RFC 6533's
    ``utf-8;`` with ``\\x{HEX}`` for the rest (a tab in a quoted local part included)."""
    if all(" " <= c <= "~" for c in address):
        return f"rfc822; {address}"
    encoded = "".join(
        c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address
    )
    return f"utf-8; {encoded}"


def _boundary(*contents: bytes) -> str:
    while True:
        boundary = "=_dsn_" + secrets.token_hex(12)
        if not any(boundary.encode() in content for content in contents):
            return boundary


def _field(value: str) -> str:
    """`value`, refused if it holds a control character: it goes into one header line."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("a control character in a delivery report's field")
    return value
