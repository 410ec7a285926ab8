"""SMTP submission for a BAL on the historic platform: one message, one ``sendMessage``.

The SMTP front checks the message (MSSanté rules, ``Sender:`` for a delegate) as for a
modern BAL, then `historic_message` turns it into the ``message`` of sendMessage and
`send` hands it over. The envelope says who receives: every RCPT is an address of the
message (BCC when not in To/Cc), header addresses outside the envelope are left out.

What the historic message object cannot carry is lost on the way: ``Sender:`` (the
platform always sends as the BAL, and the gateway calls it as the trusted gateway, so it
does not know the delegate either: the gateway's audit trail is the only record of who
wrote), the X-MSS-* headers, Message-ID, In-Reply-To/References and any other header.

Failures keep the end-to-end rule of the SMTP front (250 only once the platform took the
message, a DATA never sent twice from here), as backend errors the front answers from its
reply table:

* no usable answer (`LegacyUnavailable`) → `BackendUnavailable` (4.4.1): the client keeps
  the message and retries. A timeout after the platform received the request may still mean it was
  sent: before answering 451 the gateway looks in the BAL's Sent folder for this very
  message (same subject, recipients and body, dated from the attempt on) and answers
  250 if it is there, so that a slow platform does not make the client send twice; if
  that search fails too, 451 (a duplicate is then possible, as with an SMTP backend
  that dies after DATA);
* our credentials refused (`LegacyAuthError`) → `BackendUnavailable("credentials")`
  (4.7.0), logged as an error: an operator problem, not the client's;
* the platform's own refusal (`LegacyError`, functional or technical) → `BackendRefused`
  with the enhanced status its code means: a technical error may come after delivery to
  some recipients, so a retry could deliver twice;
* a message the platform cannot represent (`MimeRejected`) → `BackendRefused`, its 5.x.x.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gateway.backends.base import Accepted
from gateway.backends.errors import (
    BackendCannotCarry,
    BackendRefused,
    BackendUnavailable,
    one_line,
)
from gateway.backends.legacy_ws.client import (
    LegacyAuthError,
    LegacyError,
    LegacyUnavailable,
    LegacyWsClient,
)
from gateway.backends.legacy_ws.mime import (
    DATE_FORMAT,
    PARIS,
    MimeRejected,
    rfc5322_to_message,
    valid_recipient,
)
from gateway.runtime.dsn import MailDsn, RecipientDsn

log = logging.getLogger(__name__)

MAX_TEXT = 200
SENT = 5
CLOCK_SKEW = dt.timedelta(seconds=5)  # the platform's clock against ours
# historic functional codes (DOMAIN.md §4) → the RFC 3463 status they mean
_STATUS: dict[int, str] = {
    24: "5.1.3",  # invalid email
    32: "5.3.4",  # attachments too large
    39: "5.3.4",  # content too large
    23: "5.6.0",  # email missing
    28: "5.6.0",  # mandatory field missing
    36: "5.6.0",  # invalid format
}
_STATUS_CODE = re.compile(r"^5\.\d{1,3}\.\d{1,3}$")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


def historic_message(raw: bytes, recipients: Sequence[str], *, max_size: int) -> dict[str, Any]:
    """The sendMessage ``message`` for `raw` sent to the envelope `recipients`;
    `MimeRejected` when the platform could not take it."""
    return rfc5322_to_message(
        raw, max_size=max_size, envelope_recipients=recipients, envelope_only=True
    )


async def send(client: LegacyWsClient, bal: str, message: Mapping[str, Any]) -> dict[str, Any]:
    """sendMessage for `bal`; the copy kept in Sent. `BackendUnavailable` (the client
    retries) or `BackendRefused` otherwise."""
    attempted = dt.datetime.now(PARIS).replace(microsecond=0) - CLOCK_SKEW
    try:
        return await client.send_message(bal, message)
    except LegacyUnavailable as exc:
        sent = await _sent_after_all(client, bal, message, attempted)
        if sent is not None:
            log.warning("smtp.legacy_ws_sent_without_answer", extra={"bal": bal})
            return sent
        raise BackendUnavailable("unavailable", exc.reason) from None
    except LegacyAuthError as exc:
        log.error("smtp.legacy_ws_auth_refused", extra={"bal": bal, "code": exc.code})
        raise BackendUnavailable("credentials", f"X-ErrorCode {exc.code}") from None
    except LegacyError as exc:
        status = "5.3.0" if exc.kind == "TECHNIQUE" else _STATUS.get(exc.code, "5.0.0")
        text = one_line(exc.message, MAX_TEXT) or exc.kind.lower()
        raise BackendRefused(
            f"Historic platform refused the message ({exc.code}): {text}", status=status
        ) from None


async def _sent_after_all(
    client: LegacyWsClient, bal: str, message: Mapping[str, Any], attempted: dt.datetime
) -> dict[str, Any] | None:
    """The Sent copy of `message` if the platform took it without answering in time."""
    query = {"after": attempted.strftime(DATE_FORMAT), "subject": message.get("subject", "")}
    try:
        found = await client.search_messages(
            bal, SENT, query=query, sort_by="DATE_DESC", page_size=50, max_messages=200
        )
    except (LegacyUnavailable, LegacyAuthError, LegacyError):
        return None
    wanted = _fingerprint(message)
    matches = [m for m in found if _fingerprint(m) == wanted]
    return matches[0] if len(matches) == 1 else None


def _fingerprint(message: Mapping[str, Any]) -> tuple[str, frozenset[tuple[str, str]], str]:
    """What a Sent copy shares with the message sent: subject, recipients, body."""
    emails = message.get("emails", message.get("addresses"))
    recipients = frozenset(
        (str(e.get("type", "")), str(e.get("address", "")).lower())
        for e in (emails if isinstance(emails, list) else [])
        if isinstance(e, dict) and e.get("type") in ("TO", "CC", "BCC")
    )
    body = str(message.get("body", "")).replace("\r\n", "\n").strip()
    return str(message.get("subject", "")), recipients, body


def sent_id(sent: Mapping[str, Any]) -> str:
    """The Sent copy's id, fit for a reply line and a log."""
    return _SAFE_ID.sub("_", str(sent.get("messageId", "")))[:64]


class HistoricSubmission:
    """`Submission` for a historic BAL: the envelope is collected here (RCPT checked
    against what the platform accepts) and DATA is one sendMessage."""

    def __init__(self, name: str, client: LegacyWsClient, bal: str, *, max_size: int) -> None:
        self.name = name
        self.client = client
        self.bal = bal
        self.max_size = max_size
        self.in_transaction = False
        self.last_answer = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.bal

    @property
    def connected(self) -> bool:
        return True  # nothing held open between messages: HTTP calls

    async def open(self) -> None:
        return None

    @property
    def offers_dsn(self) -> bool:
        return False  # sendMessage knows no DSN: the front sends the "relayed" notice

    async def mail(
        self, sender: str, options: Iterable[str], *, dsn: MailDsn | None = None
    ) -> None:
        self.in_transaction = True

    async def rcpt(
        self, recipient: str, *, utf8: bool = False, dsn: RecipientDsn | None = None
    ) -> None:
        if not valid_recipient(recipient.strip().lower()):
            raise BackendRefused(
                "Recipient address not accepted by the historic platform", status="5.1.3"
            )

    async def data(self, message: bytes, recipients: Sequence[str]) -> Accepted:
        self.in_transaction = False
        try:
            historic = historic_message(message, recipients, max_size=self.max_size)
        except MimeRejected as refusal:
            status = refusal.status if _STATUS_CODE.fullmatch(refusal.status) else "5.6.0"
            raise BackendCannotCarry(one_line(refusal.reason, MAX_TEXT), status=status) from None
        sent = sent_id(await send(self.client, self.bal, historic))
        return Accepted(f"OK sent, historic message {sent}", reference=sent, sender_recorded=False)

    async def reset(self) -> None:
        self.in_transaction = False

    async def close(self) -> None:
        self.in_transaction = False

    def abort(self) -> None:
        self.in_transaction = False
