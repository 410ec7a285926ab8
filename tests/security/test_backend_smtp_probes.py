"""A hostile or broken submission server behind the gateway: its replies are bounded and
checked before anything is read from them, and none of them makes the gateway hang, grow,
or pass on more than one line of their text."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager as AsyncContextManager

import pytest

from gateway.backends.errors import BackendRefused, BackendUnavailable
from gateway.backends.imap_smtp.smtp_wire import MAX_LINE, MAX_LINES
from gateway.backends.imap_smtp.submission import SmtpSubmission
from gateway.settings import BackendSettings
from tests.support.smtp_raw import backend_settings, scripted_server

BAL = "claire.martin@medecin.mssante.fr"


def hostile(
    after_auth: bytes, *, pipelining: bool = True, hang_up: bool = False
) -> AsyncContextManager[int]:
    """A server that logs the gateway in, then answers its first command with
    `after_auth`, then waits for the gateway to hang up (or hangs up itself)."""
    pipelines = b"250-PIPELINING\r\n" if pipelining else b""
    ehlo = b"250-hostile\r\n" + pipelines + b"250 AUTH PLAIN\r\n"
    script = [b"220 hostile ESMTP\r\n", ehlo, b"235 ok\r\n", after_auth]
    return scripted_server(script, hang_up=hang_up)


def submission(port: int) -> SmtpSubmission:
    settings = BackendSettings.model_validate(backend_settings(port, reply_timeout=5))
    return SmtpSubmission("modern", settings, BAL, None)


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (b"250 " + b"x" * (MAX_LINE + 10) + b"\r\n", "protocol"),  # a line over the limit
        (b"250-" + b"x" * 200_000, "protocol"),  # no line end at all
        (b"250-more\r\n" * (MAX_LINES + 1), "protocol"),  # a reply without end
        (b"HTTP/1.1 400 Bad Request\r\n", "protocol"),  # not an SMTP server
        (b"250-cut\r\n", "disconnected"),  # hangs up within a reply
        (b"421 4.3.2 going down\r\n", "closed"),
    ],
)
async def test_a_broken_reply_ends_the_session_and_nothing_else(reply: bytes, kind: str) -> None:
    async with hostile(reply, hang_up=reply.startswith(b"250-cut")) as port:
        relay = submission(port)
        await relay.open()
        await relay.mail(BAL, [])
        with pytest.raises(BackendUnavailable) as lost:
            await relay.rcpt("luc.durand@infirmier.mssante.fr")
        assert lost.value.kind == kind
        assert not relay.connected
        assert len(lost.value.detail) <= 200


async def test_a_refusal_text_reaches_the_client_on_one_bounded_line() -> None:
    text = b"550-5.7.1 " + b"\x1b[31m" + b"y" * 300 + b"\r\n550 5.7.1 \xff\xfe end\r\n"
    async with hostile(b"250 ok\r\n" + text) as port:
        relay = submission(port)
        await relay.open()
        await relay.mail(BAL, [])
        with pytest.raises(BackendRefused) as refused:
            await relay.rcpt("luc.durand@infirmier.mssante.fr")
        assert refused.value.code == 550
        assert "\n" not in refused.value.text
        assert "\x1b" not in refused.value.text
        assert len(refused.value.text) <= 400
        relay.abort()


@pytest.mark.parametrize(
    "address",
    ["a@b.c> SIZE=1", "a@b.c>\r\nRCPT TO:<x@y.z", "a b@c.d", "a@b.c\x00", '"a"b"@c.d'],
)
async def test_an_address_that_would_bend_the_command_is_never_sent(address: str) -> None:
    async with hostile(b"250 ok\r\n", pipelining=False) as port:
        relay = submission(port)
        await relay.open()
        with pytest.raises(ValueError, match="unfit for an SMTP command"):
            await relay.mail(address, [])
        with pytest.raises(ValueError, match="unfit for an SMTP command"):
            await relay.rcpt(address)
        relay.abort()
