"""Hostile DSN parameters (RFC 3461) on the SMTP front: whatever a client puts in RET, ENVID,
NOTIFY or ORCPT is refused with 501 5.5.4 or carried as printable ASCII, never reaches a
header of a notice as anything else, cannot send a notice anywhere but the sender BAL's
INBOX, and cannot make a notice larger than its caps. The gateway writes the notices
here: its backend is the mock's platform playing a server without DSN."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiosmtplib
import pytest
import pytest_asyncio

from tests.conftest import quick_mock_settings
from tests.gateway.test_smtp_dsn import (
    envelope_id,
    recipient_blocks,
    reports,
    returned_part,
    submit,
    xtext,
)
from tests.gateway.test_smtp_front import client, folder, message, subject
from tests.support.sasl import xoauth2_b64
from tests.support.stacks import Stack, gateway_settings, running_stack

CLAIRE = "claire.martin@medecin.mssante.fr"  # dr-martin's
EVE = "eve.moreau@medecin.mssante.fr"
LUC = "luc.durand@infirmier.mssante.fr"

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plain(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """A gateway whose backend offers no DSN: every notice is the gateway's own."""
    directory = tmp_path_factory.mktemp("dsn-probes")
    settings = quick_mock_settings().model_copy(update={"smtp_dsn": False})
    async with running_stack(
        gateway_settings(directory / "gateway"), settings, directory / "mock"
    ) as running:
        yield running


async def command(smtp: aiosmtplib.SMTP, line: bytes) -> tuple[int, str]:
    verb, _, rest = line.partition(b" ")
    reply = await smtp.execute_command(verb, *rest.split(b" "))
    return reply.code, reply.message


BAD_MAIL = [
    pytest.param(b"RET=PARTIAL", id="ret-unknown"),
    pytest.param(b"RET=FULL RET=HDRS", id="ret-twice"),
    pytest.param(b"ENVID=" + b"x" * 101, id="envid-101"),
    pytest.param(b"ENVID=" + b"+41" * 101, id="envid-101-encoded"),
    pytest.param(b"ENVID=a+2b", id="envid-lower-hex"),
    pytest.param(b"ENVID=a+2", id="envid-short-hex"),
    pytest.param(b"ENVID=a=b", id="envid-equals"),
    pytest.param(b"ENVID=a+0D+0ABcc:+20x@evil.example", id="envid-crlf-injection"),
    pytest.param(b"ENVID=a+00b", id="envid-encoded-nul"),
    pytest.param(b"ENVID=x ENVID=x", id="envid-twice"),
    pytest.param(b"ENVID=", id="envid-empty"),
]
BAD_RCPT = [
    pytest.param(b"NOTIFY=NEVER,SUCCESS", id="never-and-success"),
    pytest.param(b"NOTIFY=SUCCESS,,FAILURE", id="notify-empty-element"),
    pytest.param(b"NOTIFY=SUCCESS NOTIFY=DELAY", id="notify-twice"),
    pytest.param(b"ORCPT=rfc822;" + b"a" * 500, id="orcpt-over-500"),
    pytest.param(b"ORCPT=rfc822;a+0D+0ASubject:+20forged", id="orcpt-crlf-injection"),
    pytest.param(b"ORCPT=eve@x.fr", id="orcpt-without-type"),
    pytest.param(b"ORCPT=rfc822;a ORCPT=rfc822;b", id="orcpt-twice"),
]


@pytest.mark.parametrize("params", BAD_MAIL)
async def test_malformed_mail_parameters_get_501(plain: Stack, params: bytes) -> None:
    async with client(plain, "dr-martin", CLAIRE) as smtp:
        code, text = await command(smtp, b"MAIL FROM:<" + CLAIRE.encode() + b"> " + params)
        assert (code, text[:5]) == (501, "5.5.4")
        # nothing was opened: the session goes on
        assert (await command(smtp, b"MAIL FROM:<" + CLAIRE.encode() + b"> RET=HDRS"))[0] == 250


@pytest.mark.parametrize("params", BAD_RCPT)
async def test_malformed_rcpt_parameters_get_501(plain: Stack, params: bytes) -> None:
    async with client(plain, "dr-martin", CLAIRE) as smtp:
        assert (await command(smtp, b"MAIL FROM:<" + CLAIRE.encode() + b">"))[0] == 250
        code, text = await command(smtp, b"RCPT TO:<" + EVE.encode() + b"> " + params)
        assert (code, text[:5]) == (501, "5.5.4")
        assert (await command(smtp, b"RCPT TO:<" + EVE.encode() + b"> NOTIFY=NEVER"))[0] == 250


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"MAIL FROM:<" + CLAIRE.encode() + b"> FOO=BAR", id="unknown"),
        pytest.param(b"MAIL FROM:<" + CLAIRE.encode() + b"> NOTIFY=SUCCESS", id="notify-on-mail"),
        pytest.param(b"MAIL FROM:<" + CLAIRE.encode() + b"> ORCPT=rfc822;a@b", id="orcpt-on-mail"),
    ],
)
async def test_unknown_parameters_still_get_555(plain: Stack, line: bytes) -> None:
    async with client(plain, "dr-martin", CLAIRE) as smtp:
        assert (await command(smtp, line))[0] == 555


@pytest.mark.parametrize(
    "params", [pytest.param(b"RET=FULL", id="ret"), pytest.param(b"ENVID=x", id="envid")]
)
async def test_mail_parameters_on_rcpt_get_555(plain: Stack, params: bytes) -> None:
    async with client(plain, "dr-martin", CLAIRE) as smtp:
        assert (await command(smtp, b"MAIL FROM:<" + CLAIRE.encode() + b">"))[0] == 250
        assert (await command(smtp, b"RCPT TO:<" + EVE.encode() + b"> " + params))[0] == 555


async def test_without_login_nothing_is_opened(plain: Stack) -> None:
    """Before AUTH, parameters are read as after it (a malformed one gets 501, as
    aiosmtpd's own checks come first too) and a well-formed MAIL gets 530."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=plain.smtp_port, start_tls=False)
    await smtp.connect()
    try:
        await smtp.ehlo()
        assert smtp.supports_extension("dsn")
        sender = b"MAIL FROM:<" + CLAIRE.encode() + b">"
        assert (await command(smtp, sender + b" ENVID=a+0D+0A"))[0] == 501
        assert (await command(smtp, sender + b" RET=HDRS ENVID=x"))[0] == 530
        assert (await command(smtp, b"RCPT TO:<" + EVE.encode() + b"> NOTIFY=SUCCESS"))[0] == 503
    finally:
        smtp.close()


async def raw_replies(stack: Stack, token: str, *lines: bytes) -> list[bytes]:
    """Each line's reply, the lines written as they are (a NUL that aiosmtplib would not
    send), after EHLO and AUTH XOAUTH2."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.smtp_port)
    try:
        await reader.readline()
        replies = []
        for line in (b"EHLO probe", b"AUTH XOAUTH2 " + xoauth2_b64(CLAIRE, token), *lines):
            writer.write(line + b"\r\n")
            while (reply := await reader.readline())[3:4] == b"-":
                pass
            replies.append(reply)
        return replies[2:]
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("mail", "rcpt"),
    [
        pytest.param(b" ENVID=a\x00b", b"", id="envid"),
        pytest.param(b"", b" ORCPT=rfc822;a\x00b", id="orcpt"),
    ],
)
async def test_a_nul_in_a_parameter_is_refused(plain: Stack, mail: bytes, rcpt: bytes) -> None:
    token = await plain.token("dr-martin")
    replies = await raw_replies(
        plain,
        token,
        b"MAIL FROM:<" + CLAIRE.encode() + b">" + mail,
        b"RCPT TO:<" + EVE.encode() + b">" + rcpt,
    )
    assert [r[:9] for r in replies] == (
        [b"501 5.5.4", b"503 Error"] if mail else [b"250 2.1.0", b"501 5.5.4"]
    )  # with the MAIL refused, the RCPT finds no transaction


async def test_parameters_at_their_limits_fit_the_command_line(plain: Stack) -> None:
    """An ENVID of 100 characters, each encoded (300 on the line), and an ORCPT of 500 go
    past RFC 5321's 512-octet line: RFC 3461 lengthens it, so does the gateway."""
    envid = "+2B" * 100
    orcpt = "rfc822;" + "o" * 493
    async with client(plain, "dr-martin", CLAIRE) as smtp:
        line = b"MAIL FROM:<" + CLAIRE.encode() + b"> RET=HDRS ENVID=" + envid.encode()
        assert (await command(smtp, line))[0] == 250
        line = (
            b"RCPT TO:<" + EVE.encode() + b"> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=" + orcpt.encode()
        )
        assert (await command(smtp, line))[0] == 250
        await smtp.rset()


async def test_a_notice_goes_to_the_sender_bal_only_one_per_message(plain: Stack) -> None:
    """ORCPT names someone else, the recipients are many: one notice, in the sender's
    INBOX; the recipients get the message and no notice."""
    envid = envelope_id()
    await submit(
        plain,
        "dr-martin",
        CLAIRE,
        [EVE, LUC],
        mail_options=[f"ENVID={xtext(envid)}"],
        rcpt_options=["NOTIFY=SUCCESS", f"ORCPT=rfc822;{EVE}"],
    )
    (report,) = await reports(plain, "dr-martin", CLAIRE, envid)
    assert set(recipient_blocks(report)) == {EVE, LUC}
    for address in (EVE, LUC):
        assert not [raw for raw in await folder(plain, address) if envid.encode() in raw]


async def test_a_huge_message_with_ret_full_gets_a_small_notice(plain: Stack) -> None:
    envid = envelope_id()
    title = subject()
    body = "Ligne de compte rendu très longue.\n" * 12_000  # about 430 KB
    raw = message(CLAIRE, EVE, title, body=body)
    assert len(raw) > 400_000
    await submit(
        plain,
        "dr-martin",
        CLAIRE,
        [EVE],
        raw=raw,
        mail_options=["RET=FULL", f"ENVID={xtext(envid)}"],
        rcpt_options=["NOTIFY=SUCCESS"],
    )
    (report,) = await reports(plain, "dr-martin", CLAIRE, envid)
    notice = report[0]
    assert len(notice.as_bytes()) < 20_000
    headers = returned_part(notice)
    assert headers.get_content_type() == "text/rfc822-headers"
    assert title in headers.get_content()
    assert "compte rendu très longue" not in notice.as_string()


async def test_many_clients_asking_at_once_each_get_their_notice(plain: Stack) -> None:
    """Concurrent submissions, each writing its notice through its own tool access."""
    ids = [envelope_id() for _ in range(4)]
    await asyncio.gather(
        *(
            submit(
                plain,
                "dr-martin",
                CLAIRE,
                [EVE],
                mail_options=[f"ENVID={xtext(envid)}"],
                rcpt_options=["NOTIFY=SUCCESS"],
            )
            for envid in ids
        )
    )
    for envid in ids:
        assert len(await reports(plain, "dr-martin", CLAIRE, envid)) == 1
