"""The modern platform's delivery notices (RFC 3461, 3464), and its test addresses.

The platform's SMTP offers DSN (`mock.smtp_dsn`): for each message it sends the sender's
INBOX the notices its recipients' NOTIFY asks for (without NOTIFY: failures and delays
only), as ``multipart/report`` messages (`gateway.mss.dsn_report`): "delivered" for a
recipient whose BAL got it (on this platform or the historic one), and, for two reserved
addresses of the test domain that have no BAL, what a real operator's mail system says
when things go wrong:

* `DELAY_ADDRESS` is accepted, a "delayed" notice (4.4.1) goes at once, and after
  `mock.dsn_delay` seconds the message is delivered (kept nowhere) and, if asked, a
  "delivered" notice follows;
* `FAIL_ADDRESS` is accepted at RCPT, then cannot be delivered: a "failed" notice (5.2.2,
  mailbox full).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.mss.dsn_report import Action, RecipientStatus, delivery_report
from gateway.runtime.dsn import MailDsn, Notify, RecipientDsn

TEST_DOMAIN = "test-dsn.mssante.fr"
DELAY_ADDRESS = f"retard@{TEST_DOMAIN}"
FAIL_ADDRESS = f"echec@{TEST_DOMAIN}"
RETRY_FOR = dt.timedelta(days=5)  # how long a delayed message would be tried

Trigger = Literal["delay", "fail"]
_EVENT: dict[Action, Notify] = {
    "delivered": Notify.SUCCESS,
    "delayed": Notify.DELAY,
    "failed": Notify.FAILURE,
}
_STATUS: dict[Action, tuple[str, str | None]] = {
    "delivered": ("2.0.0", None),
    "delayed": ("4.4.1", "smtp; 451 4.4.1 No answer from the recipient's server, will retry"),
    "failed": ("5.2.2", "smtp; 552 5.2.2 Mailbox full"),
}


def trigger_of(address: str) -> Trigger | None:
    """What a reserved test address plays, None for any other."""
    wanted = address.strip().lower()
    if wanted == DELAY_ADDRESS:
        return "delay"
    if wanted == FAIL_ADDRESS:
        return "fail"
    return None


@dataclass(frozen=True, slots=True)
class Transaction:
    """What a notice about one message needs to know of it."""

    reporting_mta: str
    sender: str
    message: bytes
    arrival: dt.datetime
    mail: MailDsn


def notice(
    transaction: Transaction, action: Action, recipients: Sequence[tuple[str, RecipientDsn]]
) -> bytes | None:
    """The notice of `action` for those of `recipients` whose NOTIFY asks for it; None
    when none does."""
    status, diagnostic = _STATUS[action]
    retry = transaction.arrival + RETRY_FOR if action == "delayed" else None
    due = [
        RecipientStatus(address, action, status, params.orcpt, diagnostic, retry)
        for address, params in recipients
        if params.wants(_EVENT[action])
    ]
    if not due:
        return None
    return delivery_report(
        reporting_mta=transaction.reporting_mta,
        sender=transaction.sender,
        recipients=due,
        message=transaction.message,
        arrival=transaction.arrival,
        ret=transaction.mail.ret,
        envid=transaction.mail.envid,
    )
