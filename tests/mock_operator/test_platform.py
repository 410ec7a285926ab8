"""The modern platform of the mock operator, over real sockets with real clients:
imaplib, aioimaplib, smtplib and curl (XOAUTH2 / OAUTHBEARER), plaintext on loopback and
after STARTTLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import imaplib
import re
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mock_operator.server import MockOperator
from tests.conftest import persona_token, require_peer
from tests.support.sasl import xoauth2_blob

MARTIN = "claire.martin@medecin.mssante.fr"
MOREAU = "eve.moreau@medecin.mssante.fr"
DURAND = "luc.durand@infirmier.mssante.fr"


def tls_context(mock: MockOperator) -> ssl.SSLContext:
    assert mock.tls_cert is not None
    return ssl.create_default_context(cafile=str(mock.tls_cert))


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """imaplib and smtplib block: run them off the event loop the mock runs on."""
    return await asyncio.to_thread(function, *args)


@pytest.fixture
async def martin_token(mock_op: MockOperator) -> str:
    return await persona_token(mock_op, "dr-martin")


def imap_login(mock: MockOperator, user: str, bearer: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", mock.imap_port, timeout=10)
    client.login(user, bearer)
    return client


async def test_login_select_fetch_with_imaplib(mock_op: MockOperator, martin_token: str):
    def session() -> dict[str, Any]:
        client = imap_login(mock_op, MARTIN, martin_token)
        caps = client.capability()[1][0].decode().split()
        typ, data = client.select("INBOX")
        assert typ == "OK"
        exists = int(data[0])
        _, fetched = client.fetch("1:*", "(UID FLAGS ENVELOPE)")
        _, found = client.search("UTF-8", "SUBJECT", b'"analyses"')
        _, body = client.fetch("2", "(BODY.PEEK[HEADER.FIELDS (X-MSS-CODECDA X-MSS-INS)])")
        client.logout()
        return {"caps": caps, "exists": exists, "fetched": fetched, "found": found, "body": body}

    result = await in_thread(session)
    assert "UIDPLUS" in result["caps"]
    assert "MOVE" in result["caps"]
    assert result["exists"] == 3
    assert b"Laboratoire Biomed" in result["fetched"][0]
    assert result["found"] == [b"1"]
    header = result["body"][0][1]
    assert b"X-MSS-CODECDA: 11490-0" in header
    assert b"X-MSS-INS: O" in header


async def test_authenticate_xoauth2_and_wrong_token(mock_op: MockOperator, martin_token: str):
    def session() -> tuple[str, str]:
        client = imaplib.IMAP4("127.0.0.1", mock_op.imap_port, timeout=10)
        typ, _ = client.authenticate("XOAUTH2", lambda _: xoauth2_blob(MARTIN, martin_token))
        client.logout()
        bad = imaplib.IMAP4("127.0.0.1", mock_op.imap_port, timeout=10)
        try:
            bad.authenticate("XOAUTH2", lambda _: xoauth2_blob(MARTIN, martin_token[:-4] + "AAAA"))
        except imaplib.IMAP4.error as exc:
            refusal = str(exc)
        else:
            refusal = "accepted"
        bad.logout()
        return typ, refusal

    typ, refusal = await in_thread(session)
    assert typ == "OK"
    assert "AUTHENTICATIONFAILED" in refusal


async def test_someone_elses_bal_is_refused(mock_op: MockOperator):
    bearer = await persona_token(mock_op, "dr-moreau")

    def session() -> str:
        client = imaplib.IMAP4("127.0.0.1", mock_op.imap_port, timeout=10)
        try:
            client.login(MARTIN, bearer)
        except imaplib.IMAP4.error as exc:
            return str(exc)
        finally:
            client.shutdown()
        return "accepted"

    assert "AUTHORIZATIONFAILED" in await in_thread(session)


async def test_starttls_then_login(mock_op: MockOperator, martin_token: str):
    def session() -> tuple[list[str], list[str]]:
        client = imaplib.IMAP4("127.0.0.1", mock_op.imap_port, timeout=10)
        before = list(client.capabilities)
        client.starttls(tls_context(mock_op))
        after = list(client.capabilities)
        client.login(MARTIN, martin_token)
        client.select("INBOX")
        client.logout()
        return before, after

    before, after = await in_thread(session)
    assert "STARTTLS" in before
    assert "STARTTLS" not in after


async def test_list_status_and_special_use(mock_op: MockOperator, martin_token: str):
    def session() -> tuple[list[bytes], list[bytes]]:
        client = imap_login(mock_op, MARTIN, martin_token)
        _, folders = client.list()
        _, status = client.status("INBOX", "(MESSAGES UNSEEN UIDNEXT UIDVALIDITY)")
        client.logout()
        return folders, status

    folders, status = await in_thread(session)
    text = b"\n".join(folders)
    assert b'(\\HasNoChildren \\Sent) "/" "Envoy&AOk-s"' in text
    assert b"\\Drafts" in text
    assert b"Ind&AOk-sirables" in text
    assert re.search(rb"MESSAGES 3 UNSEEN 2 UIDNEXT 4 UIDVALIDITY \d+", status[0])


async def test_append_copy_move_store_expunge(mock_op: MockOperator, martin_token: str):
    def session() -> dict[str, Any]:
        client = imap_login(mock_op, MARTIN, martin_token)
        out: dict[str, Any] = {}
        out["create"] = client.create("Patients/Garnier")
        message = b"From: a@b.fr\r\nSubject: brouillon\r\n\r\nTexte \xc3\xa9\r\n"
        out["append"] = client.append("Brouillons", "(\\Draft)", None, message)
        client.select("INBOX")
        client.uid("COPY", "1:2", "Patients/Garnier")
        out["copy"] = client.response("COPYUID")
        out["store"] = client.store("3", "+FLAGS", "(\\Deleted \\Answered)")
        out["move"] = client.uid("MOVE", "1", "Corbeille")
        out["expunge"] = client.expunge()
        out["after"] = client.fetch("1:*", "(UID FLAGS)")
        client.select("Patients/Garnier")
        out["copied"] = client.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        client.logout()
        return out

    out = await in_thread(session)
    assert out["create"][0] == "OK"
    assert re.search(rb"APPENDUID \d+ 1", out["append"][1][0])
    assert re.fullmatch(rb"\d+ 1:2 1:2", out["copy"][1][0])
    assert b"\\Deleted" in out["store"][1][0]
    assert out["move"][0] == "OK"
    # MOVE removed message 1, EXPUNGE the \Deleted one (then message 2): one message left.
    assert out["expunge"][1] == [b"1", b"2"], "MOVE's EXPUNGE, then the \\Deleted one's"
    # \Recent if this was the first session of the module to select INBOX (seeded mail)
    assert out["after"][1] in ([b"1 (UID 2 FLAGS ())"], [b"1 (UID 2 FLAGS (\\Recent))"])
    assert b"Avis" not in b"".join(p[1] for p in out["copied"][1] if isinstance(p, tuple))


async def test_smtp_delivery_sent_copy_and_refusals(mock_op: MockOperator, martin_token: str):
    message = EmailMessage()
    message["From"] = f"Claire MARTIN <{MARTIN}>"
    message["To"] = MOREAU
    message["Subject"] = "Compte rendu de consultation"
    message["X-MSS-NIL"] = "TEST-0001"
    message.set_content("Bonjour,\nvoici le compte rendu.\n")

    def send() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with smtplib.SMTP("127.0.0.1", mock_op.smtp_port, timeout=10) as smtp:
            smtp.ehlo("lps.test")
            smtp.starttls(context=tls_context(mock_op))
            smtp.ehlo("lps.test")
            out["auth"] = smtp.auth("XOAUTH2", lambda: xoauth2_blob(MARTIN, martin_token).decode())
            out["refused"] = smtp.send_message(message)
            try:
                smtp.sendmail(MARTIN, ["nobody@medecin.mssante.fr"], message.as_bytes())
            except smtplib.SMTPRecipientsRefused as exc:
                out["unknown"] = exc.recipients
            try:
                smtp.sendmail(MOREAU, [MARTIN], message.as_bytes())
            except smtplib.SMTPSenderRefused as exc:
                out["sender"] = (exc.smtp_code, exc.smtp_error)
        return out

    out = await in_thread(send)
    assert out["auth"][0] == 235
    assert out["refused"] == {}
    assert out["unknown"]["nobody@medecin.mssante.fr"][0] == 550
    assert b"5.1.1" in out["unknown"]["nobody@medecin.mssante.fr"][1]
    assert out["sender"][0] == 550
    assert b"5.7.1" in out["sender"][1]
    moreau = await persona_token(mock_op, "dr-moreau")

    def check() -> tuple[bytes, bytes]:
        client = imap_login(mock_op, MOREAU, moreau)
        client.select("INBOX", readonly=True)
        _, inbox = client.fetch("*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        client.logout()
        sender = imap_login(mock_op, MARTIN, martin_token)
        sender.select("Envoy&AOk-s", readonly=True)
        _, sent = sender.fetch("*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        sender.logout()
        return inbox[0][1], sent[0][0] + sent[0][1]

    inbox, sent = await in_thread(check)
    assert b"Compte rendu de consultation" in inbox
    assert b"Compte rendu de consultation" in sent
    assert b"\\Seen" in sent


async def test_idle_sees_a_message_delivered_by_smtp(mock_op: MockOperator, martin_token: str):
    import aioimaplib

    client = aioimaplib.IMAP4(host="127.0.0.1", port=mock_op.imap_port, timeout=10)
    await client.wait_hello_from_server()
    assert (await client.login(MARTIN, martin_token)).result == "OK"
    assert (await client.select("INBOX")).result == "OK"
    idle = await client.idle_start(timeout=30)  # returns once the server said "+ idling"
    assert client.has_pending_idle()
    moreau = await persona_token(mock_op, "dr-moreau")

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", mock_op.smtp_port, timeout=10) as smtp:
            smtp.ehlo("lps.test")
            smtp.auth("XOAUTH2", lambda: xoauth2_blob(MOREAU, moreau).decode())
            smtp.sendmail(MOREAU, [MARTIN], b"Subject: urgent\r\n\r\nRappelez-moi.\r\n")

    await in_thread(send)
    push = await asyncio.wait_for(client.wait_server_push(), 10)
    client.idle_done()
    await asyncio.wait_for(idle, 10)
    assert any(b"4 EXISTS" in (line if isinstance(line, bytes) else line.encode()) for line in push)
    await client.logout()


async def test_concurrent_expunge_is_announced(mock_op: MockOperator, martin_token: str):
    def session() -> tuple[list[Any], list[Any]]:
        first = imap_login(mock_op, MARTIN, martin_token)
        second = imap_login(mock_op, MARTIN, martin_token)
        first.select("INBOX")
        second.select("INBOX")
        first.store("1", "+FLAGS", "(\\Deleted)")
        first.expunge()
        second.noop()
        untagged = second.untagged_responses.copy()
        _, fetched = second.fetch("1:*", "(UID)")
        first.logout()
        second.logout()
        return [untagged], fetched

    untagged, fetched = await in_thread(session)
    assert untagged[0].get("EXPUNGE") == [b"1"]
    assert fetched == [b"1 (UID 2)", b"2 (UID 3)"]


async def test_uidvalidity_survives_a_restart(mock_op: MockOperator, martin_token: str):
    def status(port: int, bearer: str) -> bytes:
        client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
        client.login(MARTIN, bearer)
        _, data = client.status("INBOX", "(UIDVALIDITY UIDNEXT)")
        client.logout()
        return data[0]

    before = await in_thread(status, mock_op.imap_port, martin_token)
    await mock_op.stop()
    again = MockOperator(mock_op.settings, mock_op.data_dir)
    await again.start()
    try:
        after = await in_thread(status, again.imap_port, await persona_token(again, "dr-martin"))
    finally:
        await again.stop()
    assert before == after


async def test_master_login_opens_any_bal(mock_op: MockOperator):
    assert mock_op.master is not None
    blob = f"{DURAND}\0{mock_op.master.user}\0{mock_op.master.password}".encode()

    def session() -> tuple[str, int]:
        client = imaplib.IMAP4("127.0.0.1", mock_op.imap_port, timeout=10)
        typ, _ = client.authenticate("PLAIN", lambda _: blob)
        _, data = client.select("INBOX", readonly=True)
        client.logout()
        return typ, int(data[0])

    assert await in_thread(session) == ("OK", 3)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True
    )


@pytest.fixture
def has_curl() -> None:
    require_peer(shutil.which("curl") is not None, "curl is not installed")


@pytest.mark.usefixtures("has_curl")
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_curl_lists_inbox_and_sends(
    mock_op: MockOperator, martin_token: str, mechanism: str, tmp_path: Path
):
    url = f"imap://127.0.0.1:{mock_op.imap_port}/INBOX"
    options = f"AUTH={mechanism}"
    listing = await in_thread(
        curl,
        "--oauth2-bearer",
        martin_token,
        "--user",
        f"{MARTIN}:",
        "--login-options",
        options,
        url,
    )
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.strip() == '* LIST (\\HasNoChildren) "/" "INBOX"'
    assert mock_op.tls_cert is not None
    fetched = await in_thread(
        curl,
        "--ssl-reqd",
        "--cacert",
        str(mock_op.tls_cert),
        "--oauth2-bearer",
        martin_token,
        "--user",
        f"{MARTIN}:",
        f"{url};UID=1",
    )
    assert fetched.returncode == 0, fetched.stderr
    assert "Laboratoire Biomed" in fetched.stdout
    message = tmp_path / "message.eml"
    subject = f"via curl {mechanism}"
    message.write_bytes(
        f"From: {MARTIN}\r\nTo: {DURAND}\r\nSubject: {subject}\r\n\r\nBonjour\r\n".encode()
    )
    sent = await in_thread(
        curl,
        f"smtp://127.0.0.1:{mock_op.smtp_port}",
        "--ssl-reqd",
        "--cacert",
        str(mock_op.tls_cert),
        "--oauth2-bearer",
        martin_token,
        "--user",
        f"{MARTIN}:",
        "--login-options",
        options,
        "--mail-from",
        MARTIN,
        "--mail-rcpt",
        DURAND,
        "--upload-file",
        str(message),
    )
    assert sent.returncode == 0, sent.stderr
    durand = await persona_token(mock_op, "ide-durand")
    search = await in_thread(
        curl,
        "--oauth2-bearer",
        durand,
        "--user",
        f"{DURAND}:",
        "-X",
        f'SEARCH SUBJECT "via curl {mechanism}"',
        f"imap://127.0.0.1:{mock_op.imap_port}/INBOX",
    )
    assert re.search(r"\* SEARCH \d+", search.stdout), search.stdout + search.stderr


async def test_plaintext_login_refused_off_loopback(mock_op: MockOperator):
    """Seen from a non-loopback address the server must advertise LOGINDISABLED."""
    from gateway.runtime.login import ConnectionInfo

    assert mock_op.imap is not None
    info = ConnectionInfo(peer="192.0.2.1", secure=False, loopback=False, tls_available=True)
    from gateway.imap.engine import ImapSession

    session = ImapSession(mock_op.imap.config.engine, mock_op.imap.authenticator, None, info)  # type: ignore[arg-type]
    caps = session.capabilities()
    assert "LOGINDISABLED" in caps
    assert "STARTTLS" in caps
    assert not any(c.startswith("AUTH=") for c in caps)


async def test_deliver_many_in_one_transaction(mock_op: MockOperator, martin_token: str):
    """Seeding many messages at once: consecutive UIDs, each with its flags and date, as
    an IMAP client then reads them."""
    assert mock_op.platform is not None
    await mock_op.platform.store(MARTIN).create_folder("Lot")
    when = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    batch = [
        (b"Subject: lot %d\r\n\r\ncorps\r\n" % n, ("\\Seen",) * (n % 2), when) for n in range(5)
    ]
    uids = await mock_op.platform.deliver_many(MARTIN, batch, folder="Lot")
    assert uids == list(range(uids[0], uids[0] + 5))

    def session() -> list[Any]:
        client = imap_login(mock_op, MARTIN, martin_token)
        client.select("Lot", readonly=True)
        _, fetched = client.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
        client.logout()
        return [item for item in fetched if isinstance(item, tuple)]

    fetched = await in_thread(session)
    assert [body for _, body in fetched] == [raw for raw, _, _ in batch]
    assert [b"\\Seen" in head for head, _ in fetched] == [n % 2 == 1 for n in range(5)]
    assert all(b'"04-Mar-2025 05:06:07 +0000"' in head for head, _ in fetched)
