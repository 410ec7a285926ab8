"""What the checks need to know of a submitted message, read once at submission and kept
as a few facts (the message itself is not stored): headers, MSSanté rules broken, DSN and
MDN requests, and whether it is itself a read receipt."""

from __future__ import annotations

import email
import re
from collections.abc import Sequence
from email.header import decode_header, make_header
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from gateway.mss.rules import check_message

MAX_PARTS = 200
MAX_SHOWN = 200
_MESSAGE_ID = re.compile(r"^\s*<[^<>@\s]+@[^<>@\s]+>\s*$")
_MSGIDS = re.compile(r"<[^<>\s]{1,250}>")
_XDM_SUBJECT = re.compile(r"^XDM/1\.0/DDM\+\S")
# The broken MSSanté rules a check reports on, by the requirement they belong to.
XDM_RULES = ("IHE_XDM-unreadable", "CDA-code-missing")
CODECDA_RULES = ("X-MSS-CODECDA-missing", "X-MSS-CODECDA-mismatch", "X-MSS-CODECDA-unexpected")
INS_RULES = (
    "X-MSS-INS-missing",
    "X-MSS-INS-invalid",
    "X-MSS-INS-mismatch",
    "X-MSS-INS-unexpected",
)


def message_facts(
    raw: bytes,
    *,
    bal: str,
    mail_from: str,
    mail_options: Sequence[str] = (),
    recipients: Sequence[tuple[str, Sequence[str]]] = (),
) -> dict[str, Any]:
    header_block = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    message = email.message_from_bytes(raw, policy=compat32)
    from_addresses = [a.lower() for _, a in getaddresses(message.get_all("From", []))]
    facts: dict[str, Any] = {
        "size": len(raw),
        "bal": bal,
        "mail_from": mail_from.lower()[:MAX_SHOWN],
        "from": [a[:MAX_SHOWN] for a in from_addresses[:5]],
        "from_is_bal": from_addresses == [bal.lower()],
        "message_id": _show(message.get("Message-ID")),
        "message_id_ok": bool(_MESSAGE_ID.match(str(message.get("Message-ID") or ""))),
        "date_ok": _date_ok(message.get("Date")),
        "subject": _decoded(message.get("Subject")),
        "headers_8bit": sorted(_eight_bit_fields(header_block))[:10],
        "smtputf8": any(o.upper() == "SMTPUTF8" for o in mail_options),
        "nil": _show(message.get("X-MSS-NIL")),
        "dnt": [
            a.lower()[:MAX_SHOWN]
            for _, a in getaddresses(message.get_all("Disposition-Notification-To", []))
        ][:5],
        "return_receipt_to": message.get("Return-Receipt-To") is not None,
        "in_reply_to": _msgids(message.get("In-Reply-To"))[:5],
        "references": _msgids(message.get("References"))[-20:],
        "recipients": [
            {"address": a.lower()[:MAX_SHOWN], "notify": _param(o, "NOTIFY")}
            for a, o in recipients[:100]
        ],
        "ret": _param(mail_options, "RET"),
        "envid": _param(mail_options, "ENVID") is not None,
    }
    parts = _parts(message)
    facts["xdm"] = any(_is_xdm(p) for p in parts)
    facts["mdn"] = _mdn(message, parts)
    violations = check_message(raw, sender=bal, recipients=[a for a, _ in recipients]).rules
    facts["violations"] = violations[:30]
    facts["xdm_subject_ok"] = bool(_XDM_SUBJECT.match(facts["subject"]))
    return facts


def _show(value: object) -> str | None:
    return None if value is None else str(value).strip()[:MAX_SHOWN]


def _decoded(value: object) -> str:
    if value is None:
        return ""
    try:
        return str(make_header(decode_header(str(value))))[:MAX_SHOWN]
    except (ValueError, LookupError):
        return str(value)[:MAX_SHOWN]


def _date_ok(value: object) -> bool:
    if value is None:
        return False
    try:
        parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return False
    return True


def _msgids(value: object) -> list[str]:
    return _MSGIDS.findall(str(value or ""))


def _param(options: Sequence[str], name: str) -> str | None:
    for option in options:
        key, _, value = option.partition("=")
        if key.upper() == name:
            return value[:MAX_SHOWN]
    return None


def _eight_bit_fields(header_block: bytes) -> set[str]:
    fields: set[str] = set()
    name = ""
    for line in header_block.splitlines():
        if line[:1] not in (b" ", b"\t"):
            name = line.split(b":", 1)[0].decode("ascii", errors="replace")[:60]
        if any(b > 0x7F for b in line):
            fields.add(name)
    return fields


def _parts(message: Message) -> list[Message]:
    found: list[Message] = []
    stack = [message]
    while stack and len(found) < MAX_PARTS:
        part = stack.pop()
        found.append(part)
        if part.is_multipart() and part.get_content_maintype() != "message":
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(p for p in reversed(payload) if isinstance(p, Message))
    return found


def _is_xdm(part: Message) -> bool:
    name = part.get_filename() or part.get_param("name") or ""
    return str(name).strip().lower() == "ihe_xdm.zip"


def _mdn(message: Message, parts: list[Message]) -> dict[str, Any] | None:
    """A read receipt (RFC 8098): its report fields, or None when it is no MDN."""
    if message.get_content_type() != "multipart/report":
        if any(p.get_content_type() == "message/disposition-notification" for p in parts):
            return {"well_formed": False, "original_message_id": None}
        return None
    if str(message.get_param("report-type") or "").lower() != "disposition-notification":
        return None
    report = next(
        (p for p in parts if p.get_content_type() == "message/disposition-notification"), None
    )
    fields: Message | None = None
    if report is not None:
        payload = report.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            fields = payload[0]
        elif isinstance(payload, str):
            fields = email.message_from_string(payload, policy=compat32)
    original = _msgids(fields.get("Original-Message-ID")) if fields is not None else []
    disposition = _show(fields.get("Disposition")) if fields is not None else None
    return {
        "well_formed": fields is not None and disposition is not None,
        "original_message_id": original[0] if original else None,
        "disposition": disposition,
    }
