"""The SMTP client side of the submission front: one backend session per client session.

The gateway logs in to the operator's submission server as the BAL being sent from, either
with its master identity (SASL PLAIN, authzid = the BAL) or with the user's own PSC token
(XOAUTH2), then forwards MAIL, RCPT and DATA one by one so that the client sees the
backend's verdict on each: an unknown recipient's ``550 5.1.1`` is the backend's to give.

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
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import aiosmtplib
from aiosmtplib.typing import SMTPStatus

from gateway.backends.base import Accepted
from gateway.backends.errors import BackendRefused, BackendUnavailable, one_line
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

_T = TypeVar("_T")


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
        self._smtp: aiosmtplib.SMTP | None = None
        self.in_transaction = False  # a MAIL was accepted and no DATA/RSET ended it yet
        self.last_answer = 0.0  # time.monotonic() of the backend's last reply

    @property
    def key(self) -> tuple[str, str]:
        """Which client transactions this session can carry: same backend, same BAL."""
        return self.name, self.mailbox

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    def __repr__(self) -> str:
        return f"<SmtpSubmission {self.mailbox} via {self.name}>"

    async def open(self) -> None:
        """Connect, secure and log in; `BackendUnavailable` when any step fails."""
        backend = self.backend
        tls = backend.smtp_tls
        context = (
            shared_backend_context(backend.ca_file, backend.tls_verify) if tls != "none" else None
        )
        smtp = aiosmtplib.SMTP(
            hostname=backend.smtp_host,
            port=backend.smtp_port,
            local_hostname=LOCAL_HOSTNAME,
            timeout=backend.reply_timeout,
            use_tls=tls == "implicit",
            start_tls=tls == "starttls",
            tls_context=context,
        )
        try:
            await smtp.connect(timeout=backend.connect_timeout)
        except (aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            kind = "tls" if isinstance(exc, ssl.SSLError) or "TLS" in str(exc) else "connect"
            raise BackendUnavailable(kind, _describe(exc)) from None
        try:
            await self._login(smtp)
        except BackendUnavailable:
            smtp.close()
            raise
        self._smtp = smtp
        log.info("smtp.backend_open", extra={"bal": self.mailbox, "backend": self.name})

    async def _login(self, smtp: aiosmtplib.SMTP) -> None:
        backend = self.backend
        if backend.login == "master" or self._token is None:
            secret = f"{self.mailbox}\0{backend.master_user}\0{backend.password()}"
            mechanism = b"PLAIN"
        else:
            secret = f"user={self.mailbox}\x01auth=Bearer {self._token}\x01\x01"
            mechanism = b"XOAUTH2"
        blob = base64.b64encode(secret.encode("utf-8"))
        try:
            if smtp.is_ehlo_or_helo_needed:
                await smtp.ehlo()
            await self._introduce(smtp)
            response = await smtp.execute_command(b"AUTH", mechanism, blob)
            if response.code == 334:  # RFC 7628 error challenge: answer it to get the verdict
                response = await smtp.execute_command(b"")
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise BackendUnavailable("login", _describe(exc)) from None
        if response.code != 235:
            raise BackendUnavailable("login", f"{response.code} {one_line(response.message, 120)}")

    async def _introduce(self, smtp: aiosmtplib.SMTP) -> None:
        """XCLIENT naming the client, when the backend's EHLO offers it (Postfix: the
        server greets again and forgets the EHLO, which is said anew). A refusal is the
        backend's business, not a reason to fail the session."""
        offered = smtp.esmtp_extensions.get("xclient")
        if self._client is None or offered is None:
            return
        arguments = xclient_arguments(self._client, offered.split())
        if arguments is None:
            return
        response = await smtp.execute_command(b"XCLIENT", *(a.encode() for a in arguments))
        if response.code != 220:
            log.info(
                "smtp.backend_xclient_refused",
                extra={"backend": self.name, "reply": f"{response.code} {response.message}"},
            )
            return
        await smtp.ehlo()

    async def reset(self) -> None:
        """RSET: ends any half-done transaction, and proves an idle session still lives."""
        await self._command(lambda smtp: smtp.rset())
        self.in_transaction = False

    @property
    def offers_dsn(self) -> bool:
        """The backend's EHLO said DSN: RFC 3461's parameters go to it, and the notices
        are its to send."""
        return self._smtp is not None and self._smtp.supports_extension("dsn")

    async def mail(
        self, sender: str, client_options: Iterable[str], *, dsn: MailDsn | None = None
    ) -> None:
        """MAIL FROM with the client's BODY/SMTPUTF8 parameters the backend supports (SIZE is
        ours to check: the headers we add change it), and RET/ENVID when it offers DSN."""
        smtp = self._require()
        options = [
            option
            for option in client_options
            if (extension := FORWARDED_MAIL_PARAMS.get(option.upper())) is not None
            and smtp.supports_extension(extension)
        ]
        if dsn is not None and self.offers_dsn:
            options += dsn.parameters()
        self.in_transaction = False
        await self._command(lambda s: s.mail(sender, options=options))
        self.in_transaction = True

    async def rcpt(
        self, recipient: str, *, utf8: bool = False, dsn: RecipientDsn | None = None
    ) -> None:
        """RCPT TO, with NOTIFY/ORCPT when the backend offers DSN."""
        encoding = "utf-8" if utf8 else "ascii"
        options = dsn.parameters() if dsn is not None and self.offers_dsn else []
        await self._command(lambda s: s.rcpt(recipient, options=options, encoding=encoding))

    async def data(self, message: bytes, recipients: Sequence[str] = ()) -> Accepted:
        """DATA (BDAT LAST to a backend offering CHUNKING), once: whatever happens, the
        transaction is over on our side. The envelope went with RCPT already:
        `recipients` is for backends without one."""
        chunking = self._smtp is not None and self._smtp.supports_extension("chunking")
        wire = _bdat(message) if chunking else stuff(message)
        send = _send_bdat if chunking else _send_data
        try:
            response = await self._command(lambda s: send(s, wire))
        except BackendRefused:
            # After a refused BDAT the backend may still hold the transaction (RFC 3030
            # §4): the next message starts with RSET.
            self.in_transaction = chunking
            raise
        except BaseException:
            self.in_transaction = False
            raise
        self.in_transaction = False
        return Accepted(one_line(response.message))

    async def close(self) -> None:
        """QUIT politely when the session is idle; just drop it otherwise."""
        smtp, self._smtp = self._smtp, None
        if smtp is None or not smtp.is_connected:
            return
        try:
            await smtp.quit(timeout=QUIT_TIMEOUT)
        except (aiosmtplib.SMTPException, OSError):  # TimeoutError is an OSError
            pass
        finally:
            smtp.close()

    def abort(self) -> None:
        smtp, self._smtp = self._smtp, None
        self.in_transaction = False
        if smtp is not None:
            smtp.close()

    def _require(self) -> aiosmtplib.SMTP:
        if self._smtp is None or not self._smtp.is_connected:
            self.abort()
            raise BackendUnavailable("disconnected", "no open backend session")
        return self._smtp

    async def _command(self, call: Callable[[aiosmtplib.SMTP], Awaitable[_T]]) -> _T:
        """Run one command; map aiosmtplib's exceptions onto BackendRefused/Unavailable.
        A 421 (the backend is closing) is a lost connection, not an answer to pass on."""
        smtp = self._require()
        try:
            answer = await call(smtp)
            self.last_answer = time.monotonic()
            return answer
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421 or not smtp.is_connected:
                self.abort()
                raise BackendUnavailable(
                    "closed", f"{exc.code} {one_line(exc.message, 120)}"
                ) from None
            raise BackendRefused(exc.message, code=exc.code) from None
        except aiosmtplib.SMTPTimeoutError as exc:
            self.abort()
            raise BackendUnavailable(
                "timeout", _describe(exc), after=self.backend.reply_timeout
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.abort()
            raise BackendUnavailable("disconnected", _describe(exc)) from None


async def _send_data(smtp: aiosmtplib.SMTP, stuffed: bytes) -> aiosmtplib.SMTPResponse:
    """aiosmtplib's DATA with the content stuffed already (`smtp_data.stuff`, the same
    octets as its own regular expressions make, in a fraction of the time): DATA, 354,
    the content, 250; any other reply is `SMTPDataError`. One command at a time on a
    submission session, so nothing else waits for the protocol's lock in between."""
    start = await smtp.execute_command(b"DATA")
    if start.code != SMTPStatus.start_input:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    return await _write_expecting_250(smtp, stuffed)


def _bdat(message: bytes) -> bytes:
    """The whole message as one last chunk (RFC 3030): the command and its octets go in
    one write, and one reply says whether the backend took it: no 354 round trip."""
    content = crlf_lines(message)
    return b"BDAT %d LAST\r\n" % len(content) + content


async def _send_bdat(smtp: aiosmtplib.SMTP, wire: bytes) -> aiosmtplib.SMTPResponse:
    """`_bdat`'s octets to a backend that offers CHUNKING; its 250, else `SMTPDataError`."""
    return await _write_expecting_250(smtp, wire)


async def _write_expecting_250(smtp: aiosmtplib.SMTP, octets: bytes) -> aiosmtplib.SMTPResponse:
    """Write `octets` and read the one reply they call for: 250, else `SMTPDataError`."""
    protocol = smtp.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    protocol.write(octets)  # read_response marks the reply as expected before any arrives
    response = await protocol.read_response(timeout=smtp.timeout)
    if response.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


def _describe(exc: BaseException) -> str:
    """For logs: the exception's class and aiosmtplib's text (which never holds our
    credentials: it quotes server replies and socket errors)."""
    return one_line(f"{type(exc).__name__}: {exc}", 200)
