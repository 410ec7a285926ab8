"""SMTP submission of the modern platform (aiosmtpd): deliver locally, keep a Sent copy.

`250` is answered only once every copy is committed to the store, so an acknowledged
message is never lost. Unknown recipients get `550 5.1.1`, a sender the login may not use
`550 5.7.1`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.runtime.login import LoginAuthority
from gateway.runtime.smtp_auth import TokenAuthMixin, grant_of
from mock_operator.modern.store import SqlPlatform

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 100


class OtherPlatform(Protocol):
    """The operator's other platform (the historic one): mail between them is delivered."""

    async def has_mailbox(self, address: str) -> bool: ...

    async def deliver_mime(self, address: str, raw: bytes) -> None: ...


class PlatformSubmission(TokenAuthMixin):
    """The aiosmtpd handler of the platform's submission port."""

    def __init__(
        self,
        platform: SqlPlatform,
        authenticator: LoginAuthority,
        auth_failure_delay: float = 1.0,
        other: OtherPlatform | None = None,
        placed: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.platform = platform
        self.authenticator = authenticator
        self.auth_failure_delay = auth_failure_delay
        self.other = other
        self.placed = placed  # the registry's record of a moved BAL says where mail goes

    async def _here(self, recipient: str) -> bool:
        """Whether mail for `recipient` is delivered on this platform: where the registry
        records its BAL (a BAL moved by the gateway), else where the mailbox is."""
        if self.other is None:
            return True
        where = await self.placed(recipient) if self.placed is not None else None
        if where == "historic" and await self.other.has_mailbox(recipient):
            return False
        if where == "modern" and await self.platform.has_mailbox(recipient):
            return True
        return await self.platform.has_mailbox(recipient)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        grant = grant_of(session)
        if grant is None:
            return "530 5.7.0 Authentication required"
        if address.lower() != grant.mailbox:
            return f"550 5.7.1 {grant.actor} may not send as {address}"
        if not grant.may("send"):
            return f"550 5.7.1 {grant.actor} has no send right on {address}"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        if not await self.platform.has_mailbox(address) and not (
            self.other is not None and await self.other.has_mailbox(address)
        ):
            return f"550 5.1.1 {address}: no such mailbox here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        grant = grant_of(session)
        if grant is None or not envelope.mail_from:
            return "503 5.5.1 MAIL first"
        content = envelope.original_content or b""
        if isinstance(content, str):
            content = content.encode("utf-8")
        message = content if content.endswith(b"\r\n") else content + b"\r\n"
        now = dt.datetime.now(dt.UTC).astimezone()
        try:
            for recipient in envelope.rcpt_tos:
                if await self._here(recipient) or self.other is None:
                    await self.platform.deliver(recipient, message, internal_date=now)
                else:
                    await self.other.deliver_mime(recipient, message)
            sent = await self._sent_folder(grant.mailbox)
            if sent is not None:
                await self.platform.deliver(
                    grant.mailbox, message, folder=sent, flags=["\\Seen"], internal_date=now
                )
        except Exception:
            log.exception("mock.delivery_failed")
            return "451 4.3.0 Delivery failed, try again later"
        log.info(
            "mock.delivered",
            extra={"sender": envelope.mail_from, "recipients": len(envelope.rcpt_tos)},
        )
        return "250 2.0.0 Message accepted for delivery"

    async def _sent_folder(self, address: str) -> str | None:
        folders = await self.platform.store(address).list_folders()
        return next((f.name for f in folders if f.special_use == "\\Sent"), None)
