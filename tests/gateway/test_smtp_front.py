"""The gateway's SMTP submission front, end to end: real clients (aiosmtplib, smtplib,
curl) against a real gateway relaying to the mock operator's submission server, or to a
scripted backend when a test needs the backend to misbehave."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import smtplib
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from gateway.backends.base import Backend
from gateway.backends.imap_smtp.backend import ImapSmtpBackend
from gateway.runtime.smtp_server import TokenSMTP
from gateway.settings import BackendSettings, Settings
from tests.mss.builders import letter, seeded_letter, variant
from tests.support.net import closed_port
from tests.support.sasl import xoauth2_b64
from tests.support.smtp_raw import backend_settings
from tests.support.stacks import Stack, gateway_settings
from tests.support.waiting import until

CLAIRE = "claire.martin@medecin.mssante.fr"  # dr-martin's; sec-bernard: read, write, send
JEAN = "jean.dupont@medecin.mssante.fr"  # sec-bernard: read only
EVE = "eve.moreau@medecin.mssante.fr"  # dr-moreau's
LUC = "luc.durand@infirmier.mssante.fr"  # ide-durand's
NIL = "LPS-TEST-0042"
MAX_SIZE = 256 * 1024
HOSTNAME = "smtp.gw.example.fr"


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    """A small size limit, so that the oversize test stays cheap; a name of its own."""
    return gateway_settings(
        tmp_path / "gateway", smtp={"max_message_size": MAX_SIZE, "hostname": HOSTNAME}
    )


async def test_the_service_names_itself_by_its_hostname(stack: Stack) -> None:
    """RFC 5321 §4.1.1.1 and §4.2: the greeting and the EHLO reply begin with the server's
    name, `[smtp] hostname` (else the machine's), not "localhost"."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.smtp_port)
    try:
        greeting = await reader.readline()
        assert greeting.startswith(b"220 " + HOSTNAME.encode() + b" "), greeting
        writer.write(b"EHLO lps.example\r\n")
        assert await reader.readline() == b"250-" + HOSTNAME.encode() + b"\r\n"
    finally:
        writer.close()


# -- helpers -------------------------------------------------------------------------------


@contextlib.contextmanager
def smtplib_session(port: int, user: str, token: str) -> Iterator[smtplib.SMTP]:
    """A blocking smtplib client logged in with XOAUTH2 over loopback plaintext, as an LPS
    on the standard library would be (run it in a thread)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="lps-test", timeout=30) as smtp:
        smtp.ehlo()
        code, _ = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(user, token).decode())
        assert code == 235
        yield smtp


def message(
    sender: str,
    to: str,
    subject: str,
    *,
    body: str = "Bonjour,\n\nCi-joint le compte rendu de consultation.\n\nCordialement\n",
    nil: str | None = NIL,
    headers: dict[str, str] | None = None,
) -> bytes:
    msg = letter(sender, to, subject, nil)
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP_POLICY)


def subject() -> str:
    return f"Compte rendu {uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def client(
    stack: Stack, persona: str = "dr-martin", bal: str = ""
) -> AsyncIterator[aiosmtplib.SMTP]:
    """An aiosmtplib session logged in with XOAUTH2 (plaintext: the loopback exemption)."""
    token = await stack.token(persona)
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=stack.smtp_port,
        start_tls=False,
        local_hostname="lps-test",
        timeout=30,
    )
    await smtp.connect()
    try:
        await smtp.ehlo()
        reply = await smtp.execute_command(b"AUTH", b"XOAUTH2", xoauth2_b64(bal, token))
        assert reply.code == 235, reply
        yield smtp
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException):
            await smtp.quit()
        smtp.close()


async def folder(stack: Stack, address: str, name: str = "INBOX") -> list[bytes]:
    assert stack.mock.platform is not None
    store = stack.mock.platform.store(address)
    state = await store.folder_state(name)
    return [await store.fetch_message(name, meta.uid) for meta in state.messages]


async def received(stack: Stack, address: str, subject: str) -> list[bytes]:
    return [raw for raw in await folder(stack, address) if subject.encode() in raw]


def metric(stack: Stack, name: str, **labels: str) -> float:
    return stack.gateway.metrics.sample(name, **labels)


def set_backend(stack: Stack, **changes: Any) -> Backend:
    """Point the route of every BAL ("modern") elsewhere; returns the original backend."""
    router = stack.gateway.router
    assert router is not None
    original = router.backends["modern"]
    assert isinstance(original, ImapSmtpBackend)
    settings = BackendSettings.model_validate({**original.settings.model_dump(), **changes})
    router.backends["modern"] = ImapSmtpBackend("modern", settings)
    return original


def restore_backend(stack: Stack, original: Backend) -> None:
    assert stack.gateway.router is not None
    stack.gateway.router.backends["modern"] = original


async def until_no_open_session(stack: Stack) -> None:
    await until(
        lambda: metric(stack, "lpsgw_open_sessions", protocol="smtp") == 0,
        "no SMTP session counted as open",
    )


class ScriptedBackend:
    """A submission server that says what the test wants: DATA answered with `data_reply`,
    or never (None). Records commands, messages and connections."""

    def __init__(
        self,
        data_reply: str | None = "250 2.0.0 Queued as FAKE1",
        auth_reply: str = "235 2.7.0 OK",
        chunking: bool = False,
        pipelining: bool = False,
        mail_reply: str = "250 2.1.0 OK",
        hang_up_after_data: bool = False,
        drop_at_mail: int = 0,
    ) -> None:
        self.data_reply = data_reply
        self.chunking = chunking  # CHUNKING said in EHLO, BDAT taken (RFC 3030)
        # PIPELINING said in EHLO, and MAIL answered only once the next command is read:
        # a gateway waiting for that answer before it sends RCPT would wait forever.
        self.pipelining = pipelining
        self.mail_reply = mail_reply
        self.hang_up_after_data = hang_up_after_data  # a server restarted between messages
        self.drop_at_mail = drop_at_mail  # MAILs at which it hangs up without a word
        self.auth_reply = auth_reply
        self.commands: list[str] = []
        self.messages: list[bytes] = []
        self.opened = 0
        self.closed = 0
        self.closed_event = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def backend(self, port: int, **extra: Any) -> dict[str, Any]:
        return backend_settings(port, **extra)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        writer.write(b"220 scripted ESMTP\r\n")
        held: bytes = b""  # a MAIL's reply, said after the next command's
        try:
            while line := await reader.readline():
                command = line.decode("utf-8", "replace").strip()
                verb = command.split(" ", 1)[0].upper()
                self.commands.append(command)
                writer.write(held)
                held = b""
                if verb == "EHLO":
                    chunking = b"250-CHUNKING\r\n" if self.chunking else b""
                    pipelining = b"250-PIPELINING\r\n" if self.pipelining else b""
                    writer.write(
                        b"250-scripted\r\n250-8BITMIME\r\n"
                        + chunking
                        + pipelining
                        + b"250 AUTH PLAIN XOAUTH2\r\n"
                    )
                elif verb == "MAIL" and self.drop_at_mail:
                    self.drop_at_mail -= 1
                    return
                elif verb == "MAIL" and self.pipelining:
                    held = self.mail_reply.encode() + b"\r\n"
                    continue
                elif verb == "RCPT" and not self.mail_reply.startswith("250"):
                    writer.write(b"503 5.5.1 Error: need MAIL command\r\n")
                elif verb == "BDAT" and self.chunking:
                    size, *last = command.split()[1:]
                    self.messages.append(await reader.readexactly(int(size)))
                    assert last == ["LAST"]
                    reply = self.data_reply or "250 2.0.0 never said"
                    writer.write(reply.encode() + b"\r\n")
                elif verb == "AUTH":
                    writer.write(self.auth_reply.encode() + b"\r\n")
                elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                    writer.write(b"250 2.0.0 OK\r\n")
                elif verb == "DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    data = bytearray()
                    while (chunk := await reader.readline()) not in (b".\r\n", b""):
                        data += chunk
                    self.messages.append(bytes(data))
                    if self.data_reply is None:
                        await reader.read()  # never answer: wait for the gateway to hang up
                        return
                    writer.write(self.data_reply.encode() + b"\r\n")
                    if self.hang_up_after_data:
                        await writer.drain()
                        return
                elif verb == "QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"502 5.5.2 What?\r\n")
                await writer.drain()
        finally:
            self.closed += 1
            self.closed_event.set()
            writer.close()


@contextlib.asynccontextmanager
async def scripted(stack: Stack, backend: ScriptedBackend, **extra: Any) -> AsyncIterator[None]:
    port = await backend.start()
    original = set_backend(stack, **backend.backend(port, **extra))
    try:
        yield
    finally:
        restore_backend(stack, original)
        await backend.stop()


# -- sending, as holder and as delegate -----------------------------------------------------


async def test_holder_sends_and_the_message_arrives_unchanged(stack: Stack) -> None:
    title = subject()
    raw = message(CLAIRE, EVE, title)
    async with client(stack, "dr-martin", CLAIRE) as smtp:
        errors, reply = await smtp.sendmail(CLAIRE, [EVE], raw)
    assert errors == {}
    assert reply.startswith("2.0.0"), reply
    assert await received(stack, EVE, title) == [raw]
    assert metric(stack, "lpsgw_messages_total", result="accepted") == 1
    assert metric(stack, "lpsgw_logins_total", protocol="smtp", result="ok") == 1
    assert metric(stack, "lpsgw_relayed_bytes_total", protocol="smtp", direction="to_backend") == (
        len(raw)
    )


async def test_login_with_the_idnat_alone_sends_from_the_own_bal(stack: Stack) -> None:
    title = subject()
    async with client(stack, "ide-durand") as smtp:  # empty SASL user: one's own BAL
        await smtp.sendmail(LUC, [EVE], message(LUC, EVE, title))
    assert len(await received(stack, EVE, title)) == 1


async def test_several_messages_and_recipients_in_one_session(stack: Stack) -> None:
    first, second = subject(), subject()
    async with client(stack, "dr-martin", CLAIRE) as smtp:
        await smtp.sendmail(CLAIRE, [EVE, LUC], message(CLAIRE, f"{EVE}, {LUC}", first))
        await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, second))
    assert len(await received(stack, EVE, first)) == 1
    assert len(await received(stack, LUC, first)) == 1
    assert len(await received(stack, EVE, second)) == 1


async def test_curl_submits_with_a_bearer_token(stack: Stack) -> None:
    title = subject()
    raw = message(CLAIRE, EVE, title)
    token = await stack.token("dr-martin")
    process = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        f"smtp://127.0.0.1:{stack.smtp_port}",
        "--mail-from",
        CLAIRE,
        "--mail-rcpt",
        EVE,
        "--upload-file",
        "-",
        "--oauth2-bearer",
        token,
        "--user",
        f"{CLAIRE}:",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(process.communicate(raw), 30)
    assert process.returncode == 0, err
    delivered = await received(stack, EVE, title)
    assert len(delivered) == 1
    assert delivered[0].split(b"\r\n\r\n", 1)[1] == raw.split(b"\r\n\r\n", 1)[1]


async def test_delegate_sends_as_the_holder_with_a_sender_header(stack: Stack) -> None:
    title = subject()
    raw = message(CLAIRE, EVE, title, headers={"Sender": "someone-else@example.org"})
    async with client(stack, "sec-bernard", CLAIRE) as smtp:
        await smtp.sendmail(CLAIRE, [EVE], raw)
    [delivered] = await received(stack, EVE, title)
    parsed = email.message_from_bytes(delivered)
    # Sophie BERNARD has no BAL of her own: Sender names her, at the BAL she sent from.
    assert parsed.get_all("Sender") == [f"Sophie BERNARD <{CLAIRE}>"]
    assert parsed["From"] == CLAIRE
    assert delivered.endswith(raw.split(b"\r\n\r\n", 1)[1])
    # The holder's Sent folder shows who sent for her.
    [sent_copy] = [m for m in await folder(stack, CLAIRE, "Envoyés") if title.encode() in m]
    assert email.message_from_bytes(sent_copy)["Sender"] == f"Sophie BERNARD <{CLAIRE}>"


async def test_delegate_may_not_send_from_other_bal(stack: Stack) -> None:
    async with client(stack, "sec-bernard", CLAIRE) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as other:
            await smtp.sendmail(EVE, [LUC], message(EVE, LUC, subject()))
        assert other.value.code == 550
        assert other.value.message.startswith("5.7.1")
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as read_only:
            await smtp.sendmail(JEAN, [LUC], message(JEAN, LUC, subject()))
        assert read_only.value.code == 550
        assert "send" in read_only.value.message
        # Still usable for the BAL she may send from.
        title = subject()
        await smtp.sendmail(CLAIRE, [LUC], message(CLAIRE, LUC, title))
    assert len(await received(stack, LUC, title)) == 1
    assert metric(stack, "lpsgw_rights_refusals_total", protocol="smtp", right="send") == 2


async def test_read_only_delegate_logged_in_on_that_bal_may_not_send(stack: Stack) -> None:
    async with client(stack, "sec-bernard", JEAN) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.sendmail(JEAN, [EVE], message(JEAN, EVE, subject()))
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1")


async def test_mail_without_authentication_is_refused(stack: Stack) -> None:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=stack.smtp_port, start_tls=False)
    await smtp.connect()
    try:
        await smtp.ehlo()
        reply = await smtp.execute_command(b"MAIL", b"FROM:<" + CLAIRE.encode() + b">")
        assert (reply.code, reply.message[:5]) == (530, "5.7.0")
        await smtp.quit()
    finally:
        smtp.close()


async def test_bad_token_is_refused_and_counted(stack: Stack) -> None:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=stack.smtp_port, start_tls=False)
    await smtp.connect()
    try:
        await smtp.ehlo()
        reply = await smtp.execute_command(b"AUTH", b"XOAUTH2", xoauth2_b64(CLAIRE, "not-a-token"))
        if reply.code == 334:  # RFC 7628 error challenge
            reply = await smtp.execute_command(b"")
        assert reply.code == 535
        await smtp.quit()
    finally:
        smtp.close()
    assert metric(stack, "lpsgw_logins_total", protocol="smtp", result="authentication") == 1


async def test_starttls_then_auth_with_smtplib(stack: Stack) -> None:
    title = subject()
    raw = message(CLAIRE, EVE, title)
    token = await stack.token("dr-martin")

    def send() -> tuple[bool, bool]:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as smtp:
            smtp.ehlo("lps-test")
            offered = smtp.has_extn("starttls")
            smtp.starttls(context=context)
            smtp.ehlo("lps-test")
            size_advertised = smtp.esmtp_features.get("size") == str(MAX_SIZE)
            assert smtp.esmtp_features["auth"].split() == ["OAUTHBEARER", "PLAIN", "XOAUTH2"]
            code, _ = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_b64(CLAIRE, token).decode())
            assert code == 235
            smtp.sendmail(CLAIRE, [EVE], raw)
        return offered, size_advertised

    offered, size_advertised = await asyncio.to_thread(send)
    assert offered
    assert size_advertised
    assert await received(stack, EVE, title) == [raw]
    # STARTTLS restarts aiosmtpd's session, not ours: one session opened, one closed.
    await until_no_open_session(stack)


async def test_token_login_towards_the_backend(stack: Stack) -> None:
    """The backend may be told to take the user's own token (XOAUTH2) instead of the
    gateway's master login: holder and delegate both get through."""
    original = set_backend(stack, login="token")
    try:
        mine, delegated = subject(), subject()
        async with client(stack, "dr-martin", CLAIRE) as smtp:
            await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, mine))
        async with client(stack, "sec-bernard", CLAIRE) as smtp:
            await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, delegated))
    finally:
        restore_backend(stack, original)
    assert len(await received(stack, EVE, mine)) == 1
    assert len(await received(stack, EVE, delegated)) == 1


# -- MSSanté rules ---------------------------------------------------------------------------


async def test_from_must_name_the_envelope_sender(stack: Stack) -> None:
    title = subject()
    async with client(stack, "dr-martin", CLAIRE) as smtp:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.sendmail(CLAIRE, [EVE], message(EVE, CLAIRE, title))
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1")
    assert "From" in refused.value.message
    assert await received(stack, EVE, title) == []
    assert metric(stack, "lpsgw_messages_total", result="rejected") == 1


async def test_missing_nil_is_refused_without_a_default(stack: Stack) -> None:
    title = subject()
    async with client(stack, "dr-martin", CLAIRE) as smtp:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, title, nil=None))
        assert refused.value.code == 554
        assert refused.value.message.startswith("5.6.0")
        assert "X-MSS-NIL" in refused.value.message
        # The backend transaction was reset: the session carries the next message.
        fixed = subject()
        await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, fixed))
    assert await received(stack, EVE, title) == []
    assert len(await received(stack, EVE, fixed)) == 1


async def test_missing_nil_is_added_from_the_default(stack: Stack) -> None:
    assert stack.gateway.smtp is not None
    front = stack.gateway.smtp.handler
    front.settings = front.settings.model_copy(update={"default_nil": "GW-DEFAULT-7"})
    title = subject()
    raw = message(CLAIRE, EVE, title, nil=None)
    async with client(stack, "dr-martin", CLAIRE) as smtp:
        await smtp.sendmail(CLAIRE, [EVE], raw)
    [delivered] = await received(stack, EVE, title)
    assert delivered == b"X-MSS-NIL: GW-DEFAULT-7\r\n" + raw


async def test_cda_headers_without_an_xdm_attachment_are_refused(stack: Stack) -> None:
    title = subject()
    raw = message(CLAIRE, EVE, title, headers={"X-MSS-CODECDA": "11490-0", "X-MSS-INS": "O"})
    async with client(stack, "dr-martin", CLAIRE) as smtp:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.sendmail(CLAIRE, [EVE], raw)
    assert refused.value.code == 554
    assert "X-MSS-CODECDA" in refused.value.message
    assert "X-MSS-INS" in refused.value.message  # every broken rule is named
    assert await received(stack, EVE, title) == []


async def test_a_letter_with_its_xdm_and_headers_goes_through(stack: Stack) -> None:
    title = subject()
    raw = variant(seeded_letter(), headers={"From": CLAIRE, "To": EVE, "Subject": title})
    async with client(stack, "dr-martin", CLAIRE) as smtp:
        await smtp.sendmail(CLAIRE, [EVE], raw)
    assert await received(stack, EVE, title) == [raw]


async def test_oversize_is_refused(stack: Stack) -> None:
    title = subject()
    big = message(CLAIRE, EVE, title, body=("z" * 76 + "\n") * (MAX_SIZE // 76 + 10))
    assert len(big) > MAX_SIZE
    async with client(stack, "dr-martin", CLAIRE) as smtp:
        with pytest.raises(aiosmtplib.SMTPResponseException) as declared:
            await smtp.mail(CLAIRE, options=[f"SIZE={len(big)}"])
        assert declared.value.code == 552
        # Undeclared: aiosmtpd counts the octets and refuses at the end of DATA.
        await smtp.mail(CLAIRE)
        await smtp.rcpt(EVE)
        with pytest.raises(aiosmtplib.SMTPDataError) as sent:
            await smtp.data(big)
        assert sent.value.code == 552
    assert await received(stack, EVE, title) == []


async def test_too_many_recipients(stack: Stack) -> None:
    assert stack.gateway.smtp is not None
    front = stack.gateway.smtp.handler
    front.settings = front.settings.model_copy(update={"max_recipients": 1})
    async with client(stack, "dr-martin", CLAIRE) as smtp:
        await smtp.mail(CLAIRE)
        await smtp.rcpt(EVE)
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await smtp.rcpt(LUC)
        assert (refused.value.code, refused.value.message[:5]) == (452, "4.5.3")
        await smtp.rset()


# -- the backend's answers, and its failures --------------------------------------------------


async def test_unknown_recipient_gets_the_backends_550(stack: Stack) -> None:
    title = subject()
    nobody = "personne@medecin.mssante.fr"
    async with client(stack, "dr-martin", CLAIRE) as smtp:
        errors, _ = await smtp.sendmail(CLAIRE, [nobody, EVE], message(CLAIRE, EVE, title))
    assert set(errors) == {nobody}
    assert errors[nobody].code == 550
    assert errors[nobody].message.startswith("5.1.1")
    assert len(await received(stack, EVE, title)) == 1


async def test_backend_down_then_back_delivers_exactly_once(stack: Stack) -> None:
    title = subject()
    raw = message(CLAIRE, EVE, title)
    original = set_backend(stack, smtp_port=closed_port())
    try:
        async with client(stack, "dr-martin", CLAIRE) as smtp:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as down:
                await smtp.sendmail(CLAIRE, [EVE], raw)
            assert (down.value.code, down.value.message[:5]) == (451, "4.4.1")
            assert await received(stack, EVE, title) == []
            restore_backend(stack, original)
            errors, _ = await smtp.sendmail(CLAIRE, [EVE], raw)  # the client's retry
            assert errors == {}
    finally:
        restore_backend(stack, original)
    assert await received(stack, EVE, title) == [raw]
    assert (
        metric(
            stack, "lpsgw_backend_errors_total", backend="modern", protocol="smtp", kind="connect"
        )
        == 1
    )
    assert metric(stack, "lpsgw_messages_total", result="deferred") == 1
    assert metric(stack, "lpsgw_messages_total", result="accepted") == 1


async def test_backend_login_failure_is_temporary(stack: Stack) -> None:
    backend = ScriptedBackend(auth_reply="535 5.7.8 Authentication credentials invalid")
    async with scripted(stack, backend), client(stack, "dr-martin", CLAIRE) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, subject()))
    assert (refused.value.code, refused.value.message[:5]) == (451, "4.4.1")
    assert backend.messages == []
    assert (
        metric(stack, "lpsgw_backend_errors_total", backend="modern", protocol="smtp", kind="login")
        == 1
    )


async def test_backend_refusal_of_data_is_passed_on(stack: Stack) -> None:
    backend = ScriptedBackend(data_reply="554 5.7.0 Contenu refuse par l'operateur")
    async with scripted(stack, backend), client(stack, "dr-martin", CLAIRE) as smtp:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, subject()))
    assert refused.value.code == 554
    assert refused.value.message == "5.7.0 Contenu refuse par l'operateur"
    assert metric(stack, "lpsgw_messages_total", result="refused") == 1


async def test_backend_temporary_refusal_of_data_is_passed_on(stack: Stack) -> None:
    backend = ScriptedBackend(data_reply="452 4.3.1 Insufficient system storage")
    async with scripted(stack, backend), client(stack, "dr-martin", CLAIRE) as smtp:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, subject()))
    assert (refused.value.code, refused.value.message) == (452, "4.3.1 Insufficient system storage")


async def test_backend_silent_after_data_gives_451_within_the_reply_timeout(stack: Stack) -> None:
    backend = ScriptedBackend(data_reply=None)
    async with scripted(stack, backend), client(stack, "dr-martin", CLAIRE) as smtp:
        started = time.monotonic()
        with pytest.raises(aiosmtplib.SMTPDataError) as late:
            await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, subject()))
        elapsed = time.monotonic() - started
        assert (late.value.code, late.value.message[:5]) == (451, "4.4.2")
        assert 0.9 <= elapsed < 5
        # The gateway hung up on the silent backend and did not send the DATA again.
        await asyncio.wait_for(backend.closed_event.wait(), 5)
        assert len(backend.messages) == 1
    assert (
        metric(
            stack, "lpsgw_backend_errors_total", backend="modern", protocol="smtp", kind="timeout"
        )
        == 1
    )
    assert metric(stack, "lpsgw_messages_total", result="deferred") == 1


async def test_backend_session_master_login_reuse_and_close(stack: Stack) -> None:
    backend = ScriptedBackend()
    async with scripted(stack, backend):
        async with client(stack, "sec-bernard", CLAIRE) as smtp:
            reply = await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, subject()))
            assert reply == ({}, "2.0.0 Queued as FAKE1")  # the backend's own 250 text
            await smtp.sendmail(CLAIRE, [LUC], message(CLAIRE, LUC, subject()))
            assert backend.opened == 1  # one backend session for the client's two messages
        await asyncio.wait_for(backend.closed_event.wait(), 5)
    assert backend.closed == 1
    [auth] = [c for c in backend.commands if c.upper().startswith("AUTH")]
    mechanism, blob = auth.split(" ")[1:]
    assert mechanism == "PLAIN"
    assert base64.b64decode(blob) == f"{CLAIRE}\0lps-gateway\0s3cret-master".encode()
    verbs = [c.split(" ")[0].upper() for c in backend.commands]
    assert verbs == [
        "EHLO",
        "AUTH",
        "MAIL",
        "RCPT",
        "DATA",
        "MAIL",
        "RCPT",
        "DATA",
        "QUIT",
    ]  # no RSET: fresh
    assert backend.messages[0].startswith(f"Sender: Sophie BERNARD <{CLAIRE}>\r\n".encode())


async def test_mail_goes_with_the_first_rcpt_to_a_pipelining_backend(stack: Stack) -> None:
    """RFC 2920: the backend answers MAIL only after it read RCPT, and the message goes."""
    backend = ScriptedBackend(pipelining=True)
    async with scripted(stack, backend), client(stack, "dr-martin", CLAIRE) as smtp:
        for to in (EVE, LUC):
            errors, _ = await smtp.sendmail(CLAIRE, [to, JEAN], message(CLAIRE, to, subject()))
            assert errors == {}
        await smtp.rset()
    verbs = [c.split(" ")[0].upper() for c in backend.commands]
    assert verbs[2:] == ["MAIL", "RCPT", "RCPT", "DATA", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    assert len(backend.messages) == 2  # the client's RSET, with no MAIL pending: not sent


async def test_a_backend_that_hung_up_between_messages_is_reconnected(stack: Stack) -> None:
    """The second message, a moment after the first (no RSET to prove the session), goes
    on a new backend session: the first one's EOF says it is over."""
    backend = ScriptedBackend(pipelining=True, hang_up_after_data=True)
    async with scripted(stack, backend), client(stack, "dr-martin", CLAIRE) as smtp:
        await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, subject()))
        await until(lambda: backend.closed == 1, "the backend hung up")
        errors, _ = await smtp.sendmail(CLAIRE, [LUC], message(CLAIRE, LUC, subject()))
        assert errors == {}
    assert backend.opened == 2
    assert len(backend.messages) == 2


async def test_a_backend_session_found_dead_by_mail_is_opened_again_once(
    stack: Stack,
) -> None:
    """The second message's MAIL and RCPT meet a session that died unseen (the backend
    hangs up on reading MAIL): said again on a new session, the client sees nothing; a
    backend that does it again gets the client a 451 at RCPT, nothing sent."""
    backend = ScriptedBackend(pipelining=True)
    async with scripted(stack, backend), client(stack, "dr-martin", CLAIRE) as smtp:
        await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, subject()))
        backend.drop_at_mail = 1
        errors, _ = await smtp.sendmail(CLAIRE, [LUC], message(CLAIRE, LUC, subject()))
        assert errors == {}
        assert backend.opened == 2
        backend.drop_at_mail = 2
        await smtp.mail(CLAIRE)
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await smtp.rcpt(EVE)
        assert refused.value.code == 451
        await smtp.rset()
    assert len(backend.messages) == 2
    assert backend.opened == 3  # the one dropped twice: reopened once, then given up


async def test_a_sender_the_backend_refuses_is_refused_at_rcpt(stack: Stack) -> None:
    """A refusal of MAIL sent with RCPT is the answer to that RCPT and every later one of
    the transaction; nothing is sent, and the next transaction starts afresh."""
    backend = ScriptedBackend(pipelining=True, mail_reply="550 5.7.1 Expediteur refuse")
    async with scripted(stack, backend), client(stack, "dr-martin", CLAIRE) as smtp:
        await smtp.mail(CLAIRE)  # the gateway's own check: 250
        for to in (EVE, LUC):
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await smtp.rcpt(to)
            assert (refused.value.code, refused.value.message) == (550, "5.7.1 Expediteur refuse")
        reply = await smtp.execute_command(b"DATA")
        assert reply.code == 503, reply
        await smtp.rset()
        backend.mail_reply = "250 2.1.0 OK"
        errors, _ = await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, subject()))
        assert errors == {}
    assert len(backend.messages) == 1
    verbs = [c.split(" ")[0].upper() for c in backend.commands]
    assert verbs[2:] == ["MAIL", "RCPT", "MAIL", "RCPT", "DATA", "QUIT"]  # one RCPT per MAIL


async def test_sender_names_the_delegates_own_bal_when_they_hold_one(stack: Stack) -> None:
    """dr-leroy (holder of paul.leroy) may send for jean.dupont: Sender is his own BAL."""
    backend = ScriptedBackend()
    async with scripted(stack, backend), client(stack, "dr-leroy", JEAN) as smtp:
        await smtp.sendmail(JEAN, [EVE], message(JEAN, EVE, subject()))
    [relayed] = backend.messages
    assert relayed.startswith(b"Sender: Paul LEROY <paul.leroy@medecin.mssante.fr>\r\n")


async def test_client_dropping_closes_the_backend_session(stack: Stack) -> None:
    backend = ScriptedBackend()
    async with scripted(stack, backend):
        token = await stack.token("dr-martin")
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=stack.smtp_port, start_tls=False)
        await smtp.connect()
        await smtp.ehlo()
        await smtp.execute_command(b"AUTH", b"XOAUTH2", xoauth2_b64(CLAIRE, token))
        await smtp.mail(CLAIRE)
        assert metric(stack, "lpsgw_open_sessions", protocol="smtp") == 1
        smtp.close()  # no QUIT
        await asyncio.wait_for(backend.closed_event.wait(), 5)
    await until_no_open_session(stack)


async def test_no_token_or_password_in_logs(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    token = await stack.token("sec-bernard")
    backend = ScriptedBackend()
    async with scripted(stack, backend):
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=stack.smtp_port, start_tls=False)
        await smtp.connect()
        await smtp.ehlo()
        await smtp.execute_command(b"AUTH", b"XOAUTH2", xoauth2_b64(CLAIRE, token))
        await smtp.sendmail(CLAIRE, [EVE], message(CLAIRE, EVE, subject()))
        await smtp.quit()
    text = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert token not in text
    assert base64.b64encode(token.encode()).decode()[:40] not in text
    assert "s3cret-master" not in text
    plain = base64.b64encode(f"{CLAIRE}\0lps-gateway\0s3cret-master".encode()).decode()
    assert plain not in text
    assert any("smtp.message_relayed" in record.getMessage() for record in caplog.records)


async def test_stop_hangs_up_idle_sessions_with_421(stack: Stack):
    """Shutting down: a session between messages is told 421 at once, not waited for."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.smtp_port)
    assert (await reader.readline()).startswith(b"220")
    writer.write(b"EHLO lps.example\r\n")
    await writer.drain()
    while not (await reader.readline()).startswith(b"250 "):
        pass
    assert stack.gateway.smtp is not None
    started = asyncio.get_running_loop().time()
    await stack.gateway.smtp.stop(grace=5.0)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert (await reader.readline()).startswith(b"421 4.3.2")
    writer.close()


class _FakeTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.peer = peer
        self.sent = bytearray()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer}.get(name, default)

    def write(self, data: Any) -> None:
        self.sent += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("peer", "hidden"), [("192.0.2.2", True), ("127.0.0.1", False)])
async def test_auth_is_not_offered_in_plaintext_off_loopback(peer: str, hidden: bool):
    """RFC 4954 §4: a client sending its token with AUTH (SASL-IR) must not be invited to
    do so before STARTTLS; loopback excepted, as for IMAP."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    protocol = TokenSMTP(object(), tls_context=context, auth_require_tls=False)
    transport = _FakeTransport((peer, 40000))
    protocol.connection_made(transport)
    assert protocol._auth_require_tls is hidden
    protocol.connection_lost(None)


async def test_connections_beyond_the_cap_get_421(stack: Stack):
    assert stack.gateway.smtp is not None
    stack.gateway.smtp._max_connections = 1
    first_reader, first_writer = await asyncio.open_connection("127.0.0.1", stack.smtp_port)
    assert (await first_reader.readline()).startswith(b"220")
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.smtp_port)
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"421")
    assert stack.gateway.smtp.open_sessions == 1
    writer.close()
    first_writer.close()


@pytest.mark.parametrize("nil", ["NIL-7", "", None])
def test_the_nil_counted_is_that_of_the_message_relayed(nil: str | None) -> None:
    """The usage figures' X-MSS-NIL, known without reading the relayed message again."""
    from gateway.fronts.smtp import _relayed_nil
    from gateway.mss import add_headers, add_sender, check_message

    head = f"From: {CLAIRE}\r\nTo: {LUC}\r\n" + (f"X-MSS-NIL: {nil}\r\n" if nil is not None else "")
    raw = (head + "Subject: s\r\n\r\nbody\r\n").encode()
    checked = check_message(raw, sender=CLAIRE, default_nil=" " + NIL)
    assert checked.nil == (nil.strip() if nil is not None else None)
    relayed = add_sender(add_headers(raw, checked.headers_to_add), "Sec", JEAN)
    assert _relayed_nil(checked.nil, checked) == check_message(relayed, sender=CLAIRE).nil


async def test_a_backend_offering_chunking_gets_the_message_by_bdat(stack: Stack) -> None:
    """One BDAT LAST, no DATA round trip: the octets the client meant (dots unstuffed, line
    ends CRLF), and a refusal passed on, the next message after an RSET."""
    backend = ScriptedBackend(chunking=True)
    body = "ligne\r\n.commence par un point\r\n..deux\r\n.\r\nfin"
    raw = message(CLAIRE, EVE, subject(), body=body)
    async with scripted(stack, backend), client(stack, "dr-martin", CLAIRE) as smtp:
        await smtp.sendmail(CLAIRE, [EVE], raw)
        assert [c.split()[0] for c in backend.commands].count("DATA") == 0
        (relayed,) = backend.messages
        assert relayed.endswith(b"\r\n.commence par un point\r\n..deux\r\n.\r\nfin\r\n")
        assert b"BDAT" in backend.commands[-1].encode()
        backend.data_reply = "554 5.7.1 refused by the platform"
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.sendmail(CLAIRE, [EVE], raw)
        assert refused.value.code == 554
        backend.data_reply = "250 2.0.0 Queued as FAKE2"
        await smtp.sendmail(CLAIRE, [EVE], raw)
        verbs = [c.split()[0] for c in backend.commands]
        refused_at = [i for i, verb in enumerate(verbs) if verb == "BDAT"][1]
        after = verbs[refused_at + 1 :]
        assert after.index("RSET") < after.index("MAIL")  # no MAIL into a held transaction
        assert len(backend.messages) == 3
