"""The SMTP client side of the submission front: one backend session per client session.

The gateway logs in to the operator's submission server as the BAL being sent from, either
with its master identity (SASL PLAIN, authzid = the BAL) or with the user's own PSC token
(XOAUTH2), then forwards RCPT and DATA one by one so that the client sees the backend's
verdict on each: an unknown recipient's ``550 5.1.1`` is the backend's to give. MAIL goes
with the first RCPT when the backend says PIPELINING (RFC 2920), one round trip less per
message: the gateway has checked the sender already, and a refusal of it by the backend
is the answer to that RCPT (and to every later one of the transaction), as a server that
delays its rejections until RCPT would say it (Postfix's ``smtpd_delay_reject``).

Failures are sorted into two kinds, because the client's next move differs:

* `BackendRefused`: the backend answered, with a 4xx or 5xx; its code and text go to the
  client as they are (the client's own retry policy applies);
* `BackendUnavailable`: no usable answer (unreachable, login refused, timed out,
  connection lost); the connection is dropped and the client is told to retry later. A DATA that
  timed out is never sent again from here: only the client may retry, so that a message
  the backend did take is not delivered twice behind its back.

Credentials (the master password, the user's token) only ever go into the AUTH command:
never into a log record or an exception text.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Iterable, Sequence

from gateway.backends.base import Accepted
from gateway.backends.errors import BackendRefused, BackendUnavailable, one_line
from gateway.backends.imap_smtp.smtp_client import CLOSING, SmtpClient, SmtpLost
from gateway.backends.imap_smtp.smtp_wire import Reply
from gateway.backends.origin import xclient_arguments
from gateway.runtime.dsn import MailDsn, RecipientDsn
from gateway.runtime.login import ConnectionInfo
from gateway.runtime.smtp_data import crlf_lines, stuff
from gateway.runtime.tls import shared_backend_context
from gateway.settings import BackendSettings

log = logging.getLogger(__name__)

LOCAL_HOSTNAME = "lps-gateway"  # our EHLO name; socket.getfqdn() may block on DNS
QUIT_TIMEOUT = 2.0
FORWARDED_MAIL_PARAMS = {"BODY=8BITMIME": "8bitmime", "SMTPUTF8": "smtputf8"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_QUOTED_LOCAL_PART = re.compile(r'^"(?:[^"\\\r\n]|\\.)*"')
_OUTSIDE_QUOTES = re.compile(r'[\s<>"]')  # would end the path, or add a parameter


class SmtpSubmission:
    """An authenticated submission session on backend `name`, as BAL `mailbox`."""

    def __init__(
        self,
        name: str,
        backend: BackendSettings,
        mailbox: str,
        token: str | None,
        *,
        client: ConnectionInfo | None = None,
    ) -> None:
        """`client`: who the session is for, named with XCLIENT where the backend offers it
        (`gateway.backends.origin`)."""
        self.name = name
        self.backend = backend
        self.mailbox = mailbox
        self._token = token
        self._client = client
        self._smtp: SmtpClient | None = None
        self.in_transaction = False  # a MAIL was accepted (or is pending) and not ended yet
        self.last_answer = 0.0  # time.monotonic() of the backend's last reply
        self._pending_mail: bytes | None = None  # MAIL to send with the next RCPT
        self._mail_refused: BackendRefused | None = None  # what each RCPT then answers

    @property
    def key(self) -> tuple[str, str]:
        """Which client transactions this session can carry: same backend, same BAL."""
        return self.name, self.mailbox

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.connected

    def __repr__(self) -> str:
        return f"<SmtpSubmission {self.mailbox} via {self.name}>"

    async def open(self) -> None:
        """Connect, secure and log in; `BackendUnavailable` when any step fails."""
        backend = self.backend
        tls = backend.smtp_tls
        context = (
            shared_backend_context(backend.ca_file, backend.tls_verify) if tls != "none" else None
        )
        try:
            smtp = await SmtpClient.connect(
                backend.smtp_host,
                backend.smtp_port,
                tls=tls,
                context=context,
                local_hostname=LOCAL_HOSTNAME,
                connect_timeout=backend.connect_timeout,
                reply_timeout=backend.reply_timeout,
            )
        except SmtpLost as lost:
            raise BackendUnavailable(lost.kind, lost.detail) from None
        try:
            await self._login(smtp)
        except BaseException:
            smtp.abort()
            raise
        self._smtp = smtp
        self.last_answer = time.monotonic()
        log.info("smtp.backend_open", extra={"bal": self.mailbox, "backend": self.name})

    async def _login(self, smtp: SmtpClient) -> None:
        backend = self.backend
        if backend.login == "master" or self._token is None:
            secret = f"{self.mailbox}\0{backend.master_user}\0{backend.password()}"
            mechanism = b"PLAIN"
        else:
            secret = f"user={self.mailbox}\x01auth=Bearer {self._token}\x01\x01"
            mechanism = b"XOAUTH2"
        blob = base64.b64encode(secret.encode("utf-8"))
        try:
            await self._introduce(smtp)
            (response,) = await smtp.exchange([b"AUTH " + mechanism + b" " + blob])
            if response.code == 334:  # RFC 7628 error challenge: answer it to get the verdict
                (response,) = await smtp.exchange([b""])
        except SmtpLost as lost:
            raise BackendUnavailable("login", f"{lost.kind}: {lost.detail}") from None
        if response.code != 235:
            raise BackendUnavailable("login", f"{response.code} {one_line(response.text, 120)}")

    async def _introduce(self, smtp: SmtpClient) -> None:
        """XCLIENT naming the client, when the backend's EHLO offers it (Postfix: the
        server greets again and forgets the EHLO, which is said anew). A refusal is the
        backend's business, not a reason to fail the session."""
        offered = smtp.extensions.get("xclient")
        if self._client is None or offered is None:
            return
        arguments = xclient_arguments(self._client, offered.split())
        if arguments is None:
            return
        (response,) = await smtp.exchange([" ".join(["XCLIENT", *arguments]).encode()])
        if response.code != 220:
            log.info(
                "smtp.backend_xclient_refused",
                extra={"backend": self.name, "reply": f"{response.code} {response.text}"},
            )
            return
        await smtp.ehlo(LOCAL_HOSTNAME)

    async def reset(self) -> None:
        """RSET: ends any half-done transaction, and proves an idle session still lives. A
        MAIL not sent yet is only forgotten."""
        unsent = self._pending_mail is not None
        self._end_transaction()
        if not unsent:
            await self._expect((b"RSET",), (250,))

    @property
    def offers_dsn(self) -> bool:
        """The backend's EHLO said DSN: RFC 3461's parameters go to it, and the notices
        are its to send."""
        return self._smtp is not None and self._smtp.supports("dsn")

    async def mail(
        self, sender: str, client_options: Iterable[str], *, dsn: MailDsn | None = None
    ) -> None:
        """MAIL FROM with the client's BODY/SMTPUTF8 parameters the backend supports (SIZE is
        ours to check: the headers we add change it), and RET/ENVID when it offers DSN;
        kept for the first RCPT when the backend pipelines."""
        smtp = self._require()
        options = [
            option
            for option in client_options
            if (extension := FORWARDED_MAIL_PARAMS.get(option.upper())) is not None
            and smtp.supports(extension)
        ]
        if dsn is not None and self.offers_dsn:
            options += dsn.parameters()
        command = " ".join([f"MAIL FROM:{_path(sender)}", *options]).encode("ascii")
        self._end_transaction()
        if smtp.supports("pipelining"):
            self._pending_mail = command
        else:
            await self._expect((command,), (250,))
        self.in_transaction = True

    async def rcpt(
        self, recipient: str, *, utf8: bool = False, dsn: RecipientDsn | None = None
    ) -> None:
        """RCPT TO, with NOTIFY/ORCPT when the backend offers DSN (and the MAIL before it,
        when it is still to send)."""
        if self._mail_refused is not None:
            raise self._mail_refused
        options = dsn.parameters() if dsn is not None and self.offers_dsn else []
        command = " ".join([f"RCPT TO:{_path(recipient)}", *options])
        encoded = command.encode("utf-8" if utf8 else "ascii")
        mail, self._pending_mail = self._pending_mail, None
        if mail is None:
            await self._expect((encoded,), (250, 251))
            return
        replies = await self._first_rcpt(mail, encoded)
        try:
            _check(replies[0], (250,))
        except BackendRefused as refused:
            self.in_transaction = False
            self._mail_refused = refused
            raise
        _check(replies[1], (250, 251))

    async def _first_rcpt(self, mail: bytes, rcpt: bytes) -> list[Reply]:
        """MAIL and the first RCPT. A session they find closed or lost (not slow: a timeout
        is passed on) is opened again once and they are said again: the backend took
        nothing yet, and a session idle a moment may have died unseen (a restart)."""
        try:
            return await self._exchange((mail, rcpt))
        except BackendUnavailable as lost:
            if lost.kind not in ("disconnected", "closed"):
                raise
            log.info(
                "smtp.backend_reopened",
                extra={"bal": self.mailbox, "backend": self.name, "kind": lost.kind},
            )
        await self.open()
        return await self._exchange((mail, rcpt))

    async def data(self, message: bytes, recipients: Sequence[str] = ()) -> Accepted:
        """DATA (BDAT LAST to a backend offering CHUNKING), once: whatever happens, the
        transaction is over on our side. The envelope went with RCPT already:
        `recipients` is for backends without one."""
        smtp = self._require()
        chunking = smtp.supports("chunking")
        try:
            if chunking:
                content = crlf_lines(message)
                (reply,) = await self._exchange((b"BDAT %d LAST" % len(content),), then=content)
            else:
                await self._expect((b"DATA",), (354,))
                (reply,) = await self._exchange((), then=stuff(message))
            _check(reply, (250,))
        except BackendRefused:
            # After a refused BDAT the backend may still hold the transaction (RFC 3030
            # §4): the next message starts with RSET.
            self.in_transaction = chunking
            raise
        except BaseException:
            self.in_transaction = False
            raise
        self.in_transaction = False
        return Accepted(one_line(reply.text))

    async def close(self) -> None:
        """QUIT politely when the session is idle; just drop it otherwise."""
        smtp, self._smtp = self._smtp, None
        self._end_transaction()
        if smtp is None or not smtp.connected:
            return
        await smtp.quit(within=QUIT_TIMEOUT)

    def abort(self) -> None:
        smtp, self._smtp = self._smtp, None
        self._end_transaction()
        if smtp is not None:
            smtp.abort()

    def _end_transaction(self) -> None:
        self.in_transaction = False
        self._pending_mail = None
        self._mail_refused = None

    def _require(self) -> SmtpClient:
        if self._smtp is None or not self._smtp.connected:
            self.abort()
            raise BackendUnavailable("disconnected", "no open backend session")
        return self._smtp

    async def _expect(self, commands: Sequence[bytes], codes: tuple[int, ...]) -> Reply:
        """One command, its reply one of `codes`, else `BackendRefused`."""
        (reply,) = await self._exchange(commands)
        _check(reply, codes)
        return reply

    async def _exchange(self, commands: Sequence[bytes], *, then: bytes = b"") -> list[Reply]:
        """The replies to `commands` (and `then`'s octets); a lost session, or a 421 among
        them, is `BackendUnavailable` and drops the session."""
        smtp = self._require()
        try:
            replies = await smtp.exchange(commands, then=then)
        except SmtpLost as lost:
            self.abort()
            after = self.backend.reply_timeout if lost.kind == "timeout" else None
            raise BackendUnavailable(lost.kind, lost.detail, after=after) from None
        self.last_answer = time.monotonic()
        closing = next((reply for reply in replies if reply.code == CLOSING), None)
        if closing is not None:
            self.abort()
            raise BackendUnavailable("closed", f"{closing.code} {one_line(closing.text, 120)}")
        return replies


def _check(reply: Reply, codes: tuple[int, ...]) -> None:
    if reply.code not in codes:
        raise BackendRefused(reply.text, code=reply.code)


def _path(address: str) -> str:
    """An address as an SMTP path: ``<address>``. The fronts pass addresses their parser
    read (or the BAL's own); anything that could end the command line or the path is
    refused here all the same."""
    unquoted = _QUOTED_LOCAL_PART.sub("", address, count=1)
    if _CONTROL.search(address) or _OUTSIDE_QUOTES.search(unquoted):
        raise ValueError(f"address unfit for an SMTP command: {address!r}")
    return f"<{address}>"
