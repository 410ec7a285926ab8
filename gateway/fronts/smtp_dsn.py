"""The "relayed" notice the submission front sends itself (RFC 3461 §5.2.2).

A client asks for delivery notices with RET, ENVID, NOTIFY and ORCPT (`gateway.runtime.dsn`).
A backend that offers DSN gets them and sends the notices: the gateway does nothing more.
A backend that does not (the historic web services, an SMTP server without DSN) cannot
tell anyone of a success, so RFC 3461 has the relaying MTA say it handed the message over:
for every recipient whose NOTIFY includes SUCCESS, once the backend took the message, a
``multipart/report`` with ``Action: relayed`` (`gateway.mss.dsn_report`) goes into the
sender BAL's INBOX, through the backend's tool access (`Backend.tools`): the BAL's own
platform, where its LPS reads it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from gateway.backends.base import Backend
from gateway.mss.dsn_report import RecipientStatus, delivery_report
from gateway.runtime.dsn import MailDsn, Notify, RecipientDsn

INBOX = "INBOX"
NOTICE_TIMEOUT = 15.0  # seconds to write a notice; the message itself is already taken


def relayed_notice(
    *,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[str],
    recipients_dsn: Sequence[RecipientDsn],
    mail: MailDsn,
    message: bytes,
    arrival: dt.datetime,
) -> tuple[bytes, int] | None:
    """The notice for the recipients that asked for success notices, and how many they
    are; None when none did (NOTIFY absent means failures and delays only)."""
    due = [
        RecipientStatus(recipient, "relayed", "2.0.0", original=params.orcpt)
        for recipient, params in zip(recipients, recipients_dsn, strict=True)
        if params.wants(Notify.SUCCESS)
    ]
    if not due:
        return None
    notice = delivery_report(
        reporting_mta=reporting_mta,
        sender=sender,
        recipients=due,
        message=message,
        arrival=arrival,
        ret=mail.ret,
        envid=mail.envid,
    )
    return notice, len(due)


async def write_to_inbox(backend: Backend, bal: str, notice: bytes) -> int:
    """Append `notice` to the BAL's INBOX, unread; its UID. Backend errors go up."""
    access = await backend.tools(bal)
    try:
        return await access.append(INBOX, notice, (), dt.datetime.now(dt.UTC))
    finally:
        await access.aclose()
