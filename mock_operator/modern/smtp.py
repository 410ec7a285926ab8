"""SMTP submission of the modern platform (aiosmtpd): deliver locally, keep a Sent copy.

`250` is answered only once every copy is committed to the store, so an acknowledged
message is never lost. Unknown recipients get `550 5.1.1`, a sender the login may not use
`550 5.7.1`. Delivery notices (DSN) go to the sender's INBOX (`mock_operator.modern.dsn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.runtime.dsn import RecipientDsn
from gateway.runtime.login import LoginAuthority
from gateway.runtime.smtp_auth import TokenAuthMixin, grant_of
from gateway.runtime.smtp_server import mail_dsn, recipients_dsn
from mock_operator.modern.dsn import Transaction, notice, trigger_of
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
        dsn_delay: float = 5.0,
    ) -> None:
        self.platform = platform
        self.authenticator = authenticator
        self.auth_failure_delay = auth_failure_delay
        self.other = other
        self.placed = placed  # the registry's record of a moved BAL says where mail goes
        self.dsn_delay = dsn_delay  # seconds the delay test address holds a message
        self._later: set[asyncio.Task[None]] = set()

    @property
    def held(self) -> int:
        """Messages the delay test address holds, to deliver later."""
        return len(self._later)

    async def aclose(self) -> None:
        """Forget the messages still held by the delay test address."""
        for task in list(self._later):
            task.cancel()
        for task in list(self._later):
            with contextlib.suppress(asyncio.CancelledError):
                await task

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
        if trigger_of(address) is not None:
            pass  # a test address: accepted, what happens next is its notices' to tell
        elif not await self.platform.has_mailbox(address) and not (
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
        delivered: list[tuple[str, RecipientDsn]] = []
        delayed: list[tuple[str, RecipientDsn]] = []
        failed: list[tuple[str, RecipientDsn]] = []
        try:
            for recipient, dsn in zip(envelope.rcpt_tos, recipients_dsn(envelope), strict=True):
                trigger = trigger_of(recipient)
                if trigger is not None:
                    (delayed if trigger == "delay" else failed).append((recipient, dsn))
                    continue
                if await self._here(recipient) or self.other is None:
                    await self.platform.deliver(recipient, message, internal_date=now)
                else:
                    await self.other.deliver_mime(recipient, message)
                delivered.append((recipient, dsn))
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
        transaction = Transaction(server.hostname, grant.mailbox, message, now, mail_dsn(envelope))
        await self._notify(transaction, "delivered", delivered)
        await self._notify(transaction, "failed", failed)
        if delayed:
            await self._notify(transaction, "delayed", delayed)
            task = asyncio.get_running_loop().create_task(self._deliver_later(transaction, delayed))
            self._later.add(task)
            task.add_done_callback(self._later.discard)
        return "250 2.0.0 Message accepted for delivery"

    async def _deliver_later(
        self, transaction: Transaction, recipients: list[tuple[str, RecipientDsn]]
    ) -> None:
        """The delay test address delivers after `dsn_delay` (the message goes nowhere)."""
        await asyncio.sleep(self.dsn_delay)
        log.info("mock.delivered_late", extra={"recipients": len(recipients)})
        await self._notify(transaction, "delivered", recipients)

    async def _notify(
        self,
        transaction: Transaction,
        action: Literal["delivered", "delayed", "failed"],
        recipients: list[tuple[str, RecipientDsn]],
    ) -> None:
        """The notice of `action` into the sender's INBOX, on whichever platform holds it,
        when a recipient's NOTIFY asks for it. The message is delivered already: a notice
        that cannot be written is logged."""
        raw = notice(transaction, action, recipients) if recipients else None
        if raw is None:
            return
        sender = transaction.sender
        try:
            if await self._here(sender) or self.other is None:
                await self.platform.deliver(sender, raw)
            else:
                await self.other.deliver_mime(sender, raw)
        except Exception:
            log.exception("mock.dsn_failed", extra={"action": action})
            return
        log.info("mock.dsn_sent", extra={"action": action, "recipients": len(recipients)})

    async def _sent_folder(self, address: str) -> str | None:
        folders = await self.platform.store(address).list_folders()
        return next((f.name for f in folders if f.special_use == "\\Sent"), None)
