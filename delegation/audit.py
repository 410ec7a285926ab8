"""The audit trail's vocabulary and what makes an event fit its row.

Every name an event can carry is an `AuditAction`: callers are typed with it, so a name
the table cannot hold is a type error rather than a batch lost at write time, and a test
walks the whole vocabulary against the column. What comes from clients (software names,
folder names in the detail, addresses) is cleaned and clipped here, one event at a time:
a hostile value costs at most its own event's detail, never the events written with it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from dataclasses import dataclass

from delegation.errors import Invalid
from delegation.models import (
    ADDRESS_LENGTH,
    IDNAT_LENGTH,
    INTERFACES,
    MAX_ID,
    REASON_LENGTH,
    REMOTE_LENGTH,
    RESULT_LENGTH,
    SOFTWARE_LENGTH,
)

# NUL is refused by PostgreSQL in text columns, a lone surrogate (what a decoder with
# surrogateescape makes of a client's 8-bit byte) by every database's encoder; the other
# controls and line separators would let a client forge lines in whoever reads the trail.
_UNWRITABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class AuditAction(enum.StrEnum):
    """What was done: logins and sends, IMAP selections and changes, reads (counted per
    session), delegation changes, and sessions the gateway ended."""

    LOGIN = "login"
    SEND = "send"  # MAIL FROM authorised, or refused, on a BAL
    SENT = "sent"  # a message the historic platform took (it cannot carry Sender:)
    READ = "read"
    SELECT = "select"
    EXAMINE = "examine"
    STORE = "store"
    APPEND = "append"
    EXPUNGE = "expunge"
    COPY = "copy"
    MOVE = "move"
    CLOSE = "close"
    FOLDER_CREATE = "folder-create"
    FOLDER_DELETE = "folder-delete"
    FOLDER_RENAME = "folder-rename"
    FOLDER_SUBSCRIBE = "folder-subscribe"
    FOLDER_UNSUBSCRIBE = "folder-unsubscribe"
    GRANT = "grant"
    REVOKE = "revoke"
    SESSION_END = "session-end"  # the gateway ended a session (revoked, PSC session over)
    ADMIN = "admin"  # an administrator's call to /admin (detail: method and path)


ACTIONS = frozenset(action.value for action in AuditAction)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An audit event to append (see `DelegationService.record_many`)."""

    actor_idnat: str
    mailbox: str
    action: AuditAction
    interface: str
    result: str = "ok"
    delegation_id: int | None = None
    software: str | None = None
    remote: str | None = None
    detail: str | None = None
    at: dt.datetime | None = None


def check_action(action: str) -> AuditAction:
    if action not in ACTIONS:
        raise Invalid(f"unknown audit action {_clean(str(action))[:40]!r}", reason="bad-action")
    return AuditAction(action)


def check_interface(interface: str) -> None:
    if interface not in INTERFACES:
        raise Invalid(f"unknown interface {_clean(str(interface))[:40]!r}", reason="bad-interface")


def fitted(record: AuditRecord) -> tuple[AuditRecord, list[str]]:
    """`record` made fit for its row, and the fields that had to be clipped or cleaned.

    Raises `Invalid` for what cannot be made to fit without changing its meaning (an
    action or interface outside the vocabulary, no actor): that event is quarantined."""
    action = check_action(record.action)
    check_interface(record.interface)
    changed: list[str] = []

    def fit(name: str, value: str | None, length: int) -> str | None:
        if value is None:
            return None
        text = value if isinstance(value, str) else str(value)
        clean = _clean(text)[:length]
        if clean != text:
            changed.append(name)
        return clean or None

    actor = fit("actor_idnat", record.actor_idnat, IDNAT_LENGTH)
    if not actor:
        raise Invalid("audit event without an actor", reason="bad-actor")
    mailbox = record.mailbox.strip().lower() if isinstance(record.mailbox, str) else ""
    delegation_id = record.delegation_id
    if delegation_id is not None and not 0 < delegation_id <= MAX_ID:
        delegation_id = None
        changed.append("delegation_id")
    return (
        dataclasses.replace(
            record,
            actor_idnat=actor,
            mailbox=fit("mailbox", mailbox, ADDRESS_LENGTH) or "",
            action=action,
            result=fit("result", record.result, RESULT_LENGTH) or "ok",
            delegation_id=delegation_id,
            software=fit("software", record.software, SOFTWARE_LENGTH),
            remote=fit("remote", record.remote, REMOTE_LENGTH),
            detail=fit("detail", record.detail, REASON_LENGTH),
        ),
        changed,
    )


def described(record: AuditRecord) -> dict[str, object]:
    """An event as a log line says it (no secret ever travels in one), short."""
    return {
        "actor": _clean(str(record.actor_idnat))[:40],
        "bal": _clean(str(record.mailbox))[:80],
        "action": _clean(str(record.action))[:40],
        "interface": _clean(str(record.interface))[:16],
        "result": _clean(str(record.result))[:64],
    }


def _clean(text: str) -> str:
    return _UNWRITABLE.sub("?", text)
