"""One SMTP client connection to a submission server: the asyncio side of `smtp_wire`.

`exchange` writes a group of commands in one write and reads their replies in order: one
command at a time for most, MAIL with the first RCPT when the server says PIPELINING
(RFC 2920). A reply not read within `reply_timeout`, a malformed one, or a lost
connection ends the session (`SmtpLost`): past any of them the replies no longer pair
with the commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence

from gateway.backends.errors import one_line
from gateway.backends.imap_smtp.smtp_wire import (
    MAX_LINE,
    Reply,
    ReplyError,
    ReplyReader,
    extensions,
)

CLOSING = 421  # RFC 5321 §3.8: the server is closing the session
READ_LIMIT = 64 * 1024  # the stream's buffer; lines are bounded by MAX_LINE
_FORBIDDEN = (b"\r", b"\n", b"\0")


class SmtpLost(Exception):
    """The session cannot go on: connection lost or refused, timed out, malformed reply.
    `kind` is the backend error kind: connect, tls, timeout, protocol, disconnected."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


class SmtpClient:
    """A connected, greeted and EHLO'd session; `extensions` as the last EHLO said."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply_timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.reply_timeout = reply_timeout
        self.extensions: dict[str, str] = {}
        self._replies = ReplyReader()

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        tls: str,
        context: ssl.SSLContext | None,
        local_hostname: str,
        connect_timeout: float,
        reply_timeout: float,
    ) -> SmtpClient:
        """Connect (TLS at once when `tls` is "implicit"), read the greeting, EHLO, and
        STARTTLS then EHLO again when `tls` is "starttls"."""
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=context if tls == "implicit" else None,
                    server_hostname=host if tls == "implicit" else None,
                    limit=READ_LIMIT,
                )
        except ssl.SSLError as error:
            raise SmtpLost("tls", _describe(error)) from None
        except (OSError, TimeoutError) as error:
            raise SmtpLost("connect", _describe(error)) from None
        client = cls(reader, writer, reply_timeout)
        try:
            (greeting,) = await client.exchange([])
            if greeting.code != 220:
                raise SmtpLost("connect", f"greeting {greeting.code} {greeting.text[:120]}")
            await client.ehlo(local_hostname)
            if tls == "starttls":
                await client._start_tls(host, context, local_hostname, within=connect_timeout)
        except BaseException:
            client.abort()
            raise
        return client

    async def _start_tls(
        self, host: str, context: ssl.SSLContext | None, local_hostname: str, *, within: float
    ) -> None:
        if "starttls" not in self.extensions:
            raise SmtpLost("tls", "the server does not offer STARTTLS")
        (reply,) = await self.exchange([b"STARTTLS"])
        if reply.code != 220:
            raise SmtpLost("tls", f"STARTTLS refused: {reply.code} {reply.text[:120]}")
        try:
            async with asyncio.timeout(within):
                await self._writer.start_tls(
                    context or ssl.create_default_context(), server_hostname=host
                )
        except ssl.SSLError as error:
            raise SmtpLost("tls", _describe(error)) from None
        except (OSError, TimeoutError) as error:
            raise SmtpLost("tls", _describe(error)) from None
        await self.ehlo(local_hostname)

    async def ehlo(self, local_hostname: str) -> None:
        (reply,) = await self.exchange([b"EHLO " + local_hostname.encode("ascii")])
        if reply.code != 250:
            raise SmtpLost("protocol", f"EHLO refused: {reply.code} {reply.text[:120]}")
        self.extensions = extensions(reply)

    def supports(self, extension: str) -> bool:
        return extension in self.extensions

    @property
    def connected(self) -> bool:
        """Open both ways: the server has not hung up (an EOF read leaves a plain TCP
        transport open for writing)."""
        reader = self._reader
        return not (self._writer.is_closing() or reader.at_eof() or reader.exception())

    async def exchange(self, commands: Sequence[bytes], *, then: bytes = b"") -> list[Reply]:
        """Write `commands` (each without its CRLF) and `then` (octets sent as they are:
        a BDAT chunk) in one write; one reply per command, or per `then` alone (a
        greeting when both are empty), fewer when one is a 421 (the last then)."""
        for command in commands:
            if any(octet in command for octet in _FORBIDDEN):
                raise ValueError("an SMTP command holds CR, LF or NUL")
        if commands or then:
            self._writer.write(b"".join(command + b"\r\n" for command in commands) + then)
        count = len(commands) or 1
        replies: list[Reply] = []
        try:
            async with asyncio.timeout(self.reply_timeout):
                while len(replies) < count:
                    replies.append(reply := await self._reply())
                    if reply.code == CLOSING:  # the server hangs up: nothing else comes
                        return replies
                return replies
        except TimeoutError:
            self.abort()
            raise SmtpLost("timeout", f"no reply within {self.reply_timeout:g} s") from None
        except ReplyError as error:
            self.abort()
            raise SmtpLost("protocol", str(error)) from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            self.abort()
            raise SmtpLost("disconnected", _describe(error)) from None

    async def _reply(self) -> Reply:
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise ReplyError(f"reply line over {MAX_LINE} octets") from None
            reply = self._replies.line(line)
            if reply is not None:
                return reply

    async def quit(self, within: float) -> None:
        """QUIT, and close whatever it answers (or not, `within` seconds)."""
        with contextlib.suppress(SmtpLost, OSError, ValueError):
            self.reply_timeout = min(self.reply_timeout, within)
            await self.exchange([b"QUIT"])
        self.abort()

    def abort(self) -> None:
        self._writer.close()


def _describe(error: BaseException) -> str:
    """For logs: the exception's class and text (socket and TLS errors: no credential)."""
    return one_line(f"{type(error).__name__}: {error}", 200)
