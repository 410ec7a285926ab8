"""The historic platform's own IMAP (2144 by default, port 0 here): the operator's master
login and CPS cards over STARTTLS, served by the engine over the store the web services
use. Real sockets, Python's imaplib (in a thread) and the raw client for IDLE."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import imaplib
import re
import shutil
import smtplib
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from gateway.imap import mutf7
from gateway.mss.historic_ws import INBOX, SENT, TRASH
from mock_operator.historic.imap import HistoricImap
from mock_operator.historic.store import HistoricStore
from mock_operator.server import MockOperator, sqlite_engine
from tests.conftest import persona_token, require_peer
from tests.historic import historic_call, historic_messages, historic_send
from tests.imap_raw import Raw
from tests.mock_operator.test_platform import curl
from tests.support.cards import Card, authority_of, issue_card, tls_with_card

HOST = "127.0.0.1"
DUPONT = "jean.dupont@medecin.mssante.fr"
PETIT = "marie.petit@sage-femme.mssante.fr"
MARTIN = "claire.martin@medecin.mssante.fr"


# -- clients ------------------------------------------------------------------------------


def connect(mock: MockOperator) -> imaplib.IMAP4:
    return imaplib.IMAP4(HOST, mock.historic_imap_port, timeout=10)


def master_plain(mock: MockOperator, authzid: str, password: str | None = None) -> bytes:
    assert mock.master is not None
    secret = mock.master.password if password is None else password
    return f"{authzid}\0{mock.master.user}\0{secret}".encode()


def as_master(mock: MockOperator, bal: str) -> imaplib.IMAP4:
    client = connect(mock)
    typ, _ = client.authenticate("PLAIN", lambda _: master_plain(mock, bal))
    assert typ == "OK"
    return client


def with_card(mock: MockOperator, card: Card | None, authzid: str = "") -> imaplib.IMAP4:
    client = connect(mock)
    client.starttls(tls_with_card(mock.tls_cert, card))
    client.authenticate("EXTERNAL", lambda _: authzid.encode())
    return client


async def raw_with_card(mock: MockOperator, card: Card) -> Raw:
    """The raw client after STARTTLS, the card presented."""
    client = await Raw.open(mock.historic_imap_port)
    await client.ok("STARTTLS")
    await client.writer.start_tls(tls_with_card(mock.tls_cert, card), server_hostname=HOST)
    return client


Login = Callable[[imaplib.IMAP4], object]


def refusal(mock: MockOperator, login: Login, tls: Card | bool | None = False) -> str:
    """The RFC 5530 code of a refused login on a fresh connection (after STARTTLS, with
    the card or with none, unless `tls` is False)."""
    client = connect(mock)
    try:
        if tls is not False:
            client.starttls(tls_with_card(mock.tls_cert, tls if isinstance(tls, Card) else None))
        with pytest.raises(imaplib.IMAP4.error) as refused:
            login(client)
    finally:
        client.shutdown()
    found = re.search(r"\[([A-Z-]+)\]", str(refused.value))
    assert found, str(refused.value)
    return found.group(1)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode() or "="


def uid_of(client: imaplib.IMAP4, *criteria: str) -> int:
    typ, found = client.uid("SEARCH", *criteria)
    assert typ == "OK"
    (uid,) = found[0].split()
    return int(uid)


def fetched(client: imaplib.IMAP4, uid: int, items: str) -> tuple[bytes, bytes]:
    """(the response line before the literal, the literal) of a UID FETCH ending in one."""
    typ, data = client.uid("FETCH", str(uid), items)
    assert typ == "OK", data
    head, literal = data[0]  # type: ignore[misc]
    return head, literal


def flags_of(client: imaplib.IMAP4, uid: int) -> set[str]:
    """The message's stored flags (\\Recent, a session's own, is tested in tests/imap)."""
    typ, data = client.uid("FETCH", str(uid), "(FLAGS)")
    assert typ == "OK"
    found = re.search(rb"FLAGS \(([^)]*)\)", data[0])  # type: ignore[arg-type]
    assert found, data
    return set(found.group(1).decode().split()) - {"\\Recent"}


async def web_message(mock: MockOperator, bal: str, **query: Any) -> dict[str, Any]:
    (message,) = await historic_messages(mock, bal, **query)
    return message


# -- logins -------------------------------------------------------------------------------


async def test_master_login_lists_the_folders_as_the_web_services_number_them(
    mock_op: MockOperator,
):
    def session() -> tuple[tuple[str, ...], list[bytes]]:
        client = connect(mock_op)
        before = client.capabilities
        typ, _ = client.authenticate("PLAIN", lambda _: master_plain(mock_op, DUPONT))
        assert typ == "OK"
        _, listed = client.list()
        client.logout()
        return before, [line for line in listed if isinstance(line, bytes)]

    before, listed = await asyncio.to_thread(session)
    assert "STARTTLS" in before
    assert "AUTH=PLAIN" in before
    assert "AUTH=EXTERNAL" not in before, "offered only to a client that presented a card"
    special = {}
    for line in listed:
        found = re.fullmatch(rb'\(([^)]*)\) "/" "?([^"]*)"?', line)
        assert found, line
        uses = [a for a in found.group(1).decode().split() if a not in ("\\HasNoChildren",)]
        special[mutf7.decode(found.group(2).decode())] = uses[0] if uses else None
    answer = await historic_call(mock_op, "Folder", "listFolders", {"email": DUPONT})
    names = {f["id"]: f["name"] for f in answer["folders"]}
    assert special == {
        "INBOX": None,
        names[3]: "\\Trash",
        names[4]: "\\Junk",
        names[5]: "\\Sent",
        names[6]: "\\Drafts",
    }


async def test_a_cps_card_opens_its_holders_bal_and_delegated_ones(
    mock_op: MockOperator, tmp_path: Path
):
    dupont = issue_card(authority_of(mock_op), mock_op, "dr-dupont", tmp_path)
    bernard = issue_card(authority_of(mock_op), mock_op, "sec-bernard", tmp_path)
    leroy = issue_card(authority_of(mock_op), mock_op, "dr-leroy", tmp_path)
    inbox = await historic_messages(mock_op, DUPONT, INBOX)

    def holder() -> tuple[tuple[str, ...], int]:
        client = connect(mock_op)
        client.starttls(tls_with_card(mock_op.tls_cert, dupont))
        capabilities = client.capabilities
        typ, _ = client.authenticate("EXTERNAL", lambda _: b"")  # empty: my own BAL
        assert typ == "OK"
        typ, count = client.select("INBOX")  # imaplib raises if it were read-only
        assert typ == "OK"
        client.logout()
        return capabilities, int(count[0] or 0)

    async def delegate(card: Card) -> tuple[bytes, str, bytes]:
        client = await raw_with_card(mock_op, card)
        try:
            await client.ok(f"AUTHENTICATE EXTERNAL {b64(DUPONT)}")
            selected = await client.ok("SELECT INBOX")
            seen = await client.command("STORE 1 +FLAGS (\\Seen)")
            flagged = await client.command("STORE 1 +FLAGS (\\Flagged)")
        finally:
            await client.close()
        return selected.tagged, seen.status, flagged.tagged

    capabilities, count = await asyncio.to_thread(holder)
    assert "AUTH=EXTERNAL" in capabilities
    assert count == len(inbox)
    # sec-bernard: read only on jean.dupont (the seeded delegation)
    selected, seen, flagged = await delegate(bernard)
    assert b"[READ-ONLY]" in selected
    assert seen == "OK"
    assert b" NO [NOPERM]" in flagged
    # dr-leroy: read, write, send on jean.dupont
    selected, seen, flagged = await delegate(leroy)
    assert b"[READ-WRITE]" in selected
    assert seen == "OK"
    assert b" OK " in flagged


async def test_everything_else_is_refused_with_the_right_code(
    mock_op: MockOperator, tmp_path: Path
):
    martin = issue_card(authority_of(mock_op), mock_op, "dr-martin", tmp_path)
    moreau = issue_card(authority_of(mock_op), mock_op, "dr-moreau", tmp_path)
    dupont = issue_card(authority_of(mock_op), mock_op, "dr-dupont", tmp_path)
    token = await persona_token(mock_op, "dr-dupont")

    def plain(blob: bytes) -> Login:
        return lambda client: client.authenticate("PLAIN", lambda _: blob)

    def xoauth2(client: imaplib.IMAP4) -> object:
        blob = f"user={DUPONT}\x01auth=Bearer {token}\x01\x01".encode()
        return client.authenticate("XOAUTH2", lambda _: blob)

    def external(authzid: str = "") -> Login:
        return lambda client: client.authenticate("EXTERNAL", lambda _: authzid.encode())

    def check() -> dict[str, str]:
        def code(login: Login, tls: Card | bool | None = False) -> str:
            return refusal(mock_op, login, tls)

        return {
            "wrong master password": code(plain(master_plain(mock_op, DUPONT, "nope"))),
            "master without authzid": code(plain(master_plain(mock_op, ""))),
            "master, unknown BAL": code(plain(master_plain(mock_op, "nobody@x.fr"))),
            "master, a modern BAL": code(plain(master_plain(mock_op, MARTIN))),
            "PSC token": code(xoauth2),
            "person's password": code(lambda c: c.login("899700000002", "mssante-test")),
            "EXTERNAL without TLS": code(external()),
            "EXTERNAL without card": code(external(), tls=None),
            "card, no BAL here": code(external(), tls=martin),
            "card, not delegated": code(external(DUPONT), tls=moreau),
            "card, someone else's": code(external(PETIT), tls=dupont),
        }

    assert await asyncio.to_thread(check) == {
        "wrong master password": "AUTHENTICATIONFAILED",
        "master without authzid": "AUTHORIZATIONFAILED",
        "master, unknown BAL": "AUTHORIZATIONFAILED",
        "master, a modern BAL": "AUTHORIZATIONFAILED",
        "PSC token": "AUTHENTICATIONFAILED",
        "person's password": "AUTHENTICATIONFAILED",
        "EXTERNAL without TLS": "AUTHENTICATIONFAILED",
        "EXTERNAL without card": "AUTHENTICATIONFAILED",
        "card, no BAL here": "AUTHORIZATIONFAILED",
        "card, not delegated": "AUTHORIZATIONFAILED",
        "card, someone else's": "AUTHORIZATIONFAILED",
    }


# -- messages -----------------------------------------------------------------------------


async def test_append_keeps_bytes_flags_and_date_and_the_web_services_see_it(
    mock_op: MockOperator,
):
    raw = (
        b"Date: Mon, 02 Nov 2026 10:15:00 +0100\r\n"
        b"From: Luc DURAND <luc.durand@infirmier.mssante.fr>\r\n"
        b"To: jean.dupont@medecin.mssante.fr\r\n"
        b"Subject: Pansement du 2 novembre\r\n"
        b"Message-ID: <append-0001@infirmier.mssante.fr>\r\n"
        b"X-MSS-NIL:   MOCK-LPS-0001  \r\n"
        b"\r\n"
        b"Pansement refait.   \r\n"
    )
    date = '"03-Nov-2026 08:30:00 +0100"'

    def session() -> tuple[bytes, bytes, bytes, set[str], int]:
        client = as_master(mock_op, DUPONT)
        flags = "(\\Seen \\Flagged $MDNSent $Forwarded)"
        typ, answer = client.append("INBOX", flags, date, raw)
        assert typ == "OK", answer
        code = re.search(rb"APPENDUID (\d+) (\d+)", answer[0])  # type: ignore[arg-type]
        assert code
        client.select("INBOX")
        head, body = fetched(client, int(code.group(2)), "(INTERNALDATE RFC822.SIZE BODY.PEEK[])")
        flags_now = flags_of(client, int(code.group(2)))
        _, status = client.status("INBOX", "(UIDVALIDITY)")
        client.logout()
        return head, body, status[0], flags_now, int(code.group(1))  # type: ignore[return-value]

    head, body, status, flags, uidvalidity = await asyncio.to_thread(session)
    assert body == raw
    assert f"INTERNALDATE {date}".encode() in head
    assert f"RFC822.SIZE {len(raw)}".encode() in head
    assert f"UIDVALIDITY {uidvalidity}".encode() in status
    assert flags == {"\\Seen", "\\Flagged", "$MDNSent", "$Forwarded"}
    message = await web_message(mock_op, DUPONT, folder_id=INBOX, subject="Pansement")
    assert message["flags"] == ["FLAGGED", "FORWARDED"]
    assert message["date"] == "02/11/2026 10:15:00"  # the web services' date: the header's
    assert message["size"] == len(raw)
    assert message["body"] == "Pansement refait.   \n"


async def test_a_delivered_message_keeps_its_headers_byte_for_byte(mock_op: MockOperator):
    raw = (
        b"From: Claire MARTIN <claire.martin@medecin.mssante.fr>\r\n"
        b"To: jean.dupont@medecin.mssante.fr\r\n"
        b"Subject: Compte rendu\r\n"
        b"Date: Tue, 03 Nov 2026 09:00:00 +0100\r\n"
        b"Message-ID: <cr-2026-0042@medecin.mssante.fr>\r\n"
        b"In-Reply-To: <q-2026-0041@medecin.mssante.fr>\r\n"
        b"References: <q-2026-0040@medecin.mssante.fr>\r\n"
        b"\t<q-2026-0041@medecin.mssante.fr>\r\n"
        b"X-MSS-NIL: MOCK-LPS-0001\r\n"
        b"x-mss-dest-idnat:  899700000002 \r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
        b"\r\n"
        b"Bonjour Jean,\r\n"
        b"\r\n"
        b"Ci-joint le compte rendu.  \r\n"
    )
    token = await persona_token(mock_op, "dr-martin")

    def send() -> None:
        with smtplib.SMTP(HOST, mock_op.smtp_port, timeout=10) as smtp:
            smtp.ehlo()
            blob = f"user={MARTIN}\x01auth=Bearer {token}\x01\x01".encode()
            smtp.docmd("AUTH", "XOAUTH2 " + base64.b64encode(blob).decode())
            smtp.sendmail(MARTIN, [DUPONT], raw)

    def read() -> tuple[bytes, bytes]:
        client = as_master(mock_op, DUPONT)
        client.select("INBOX", readonly=True)
        uid = uid_of(client, "HEADER", "Message-ID", "cr-2026-0042")
        _, body = fetched(client, uid, "(BODY.PEEK[])")
        _, fields = fetched(client, uid, "(BODY.PEEK[HEADER.FIELDS (REFERENCES X-MSS-NIL)])")
        client.logout()
        return body, fields

    await asyncio.to_thread(send)
    body, fields = await asyncio.to_thread(read)
    assert body == raw
    assert fields == (
        b"References: <q-2026-0040@medecin.mssante.fr>\r\n"
        b"\t<q-2026-0041@medecin.mssante.fr>\r\n"
        b"X-MSS-NIL: MOCK-LPS-0001\r\n\r\n"
    )
    message = await web_message(mock_op, DUPONT, folder_id=INBOX, subject="Compte rendu")
    assert {k: message[k] for k in ("subject", "body", "size", "flags", "date", "isHTML")} == {
        "subject": "Compte rendu",
        "body": "Bonjour Jean,\n\nCi-joint le compte rendu.  \n",
        "size": len(raw),
        "flags": ["UNREAD"],
        "date": "03/11/2026 09:00:00",
        "isHTML": False,
    }
    assert message["emails"] == [
        {"address": MARTIN, "name": "Claire MARTIN", "type": "FROM"},
        {"address": DUPONT, "name": "", "type": "TO"},
    ]


async def test_composed_messages_are_rebuilt_the_same_every_time(mock_op: MockOperator):
    sent = await historic_send(mock_op, DUPONT, PETIT, "Rendez-vous de contrôle", "À jeudi.")
    await historic_call(
        mock_op,
        "Item",
        "draftMessage",
        {"email": DUPONT, "message": {"subject": "Brouillon", "body": "Pas fini."}},
    )

    def read() -> tuple[list[tuple[bytes, bytes]], set[str], set[str], bytes]:
        client = as_master(mock_op, DUPONT)
        client.select(mutf7.encode("Envoyés"))
        uid = uid_of(client, "SUBJECT", "Rendez-vous")
        twice = [fetched(client, uid, "(RFC822.SIZE BODY.PEEK[])") for _ in range(2)]
        sent_flags = flags_of(client, uid)
        client.select("Brouillons")
        draft_flags = flags_of(client, uid_of(client, "SUBJECT", "Brouillon"))
        client.logout()
        petit = as_master(mock_op, PETIT)
        petit.select("INBOX", readonly=True)
        uid = uid_of(petit, "SUBJECT", "Rendez-vous")
        _, delivered = fetched(petit, uid, "(BODY.PEEK[])")
        petit.logout()
        return twice, sent_flags, draft_flags, delivered

    twice, sent_flags, draft_flags, delivered = await asyncio.to_thread(read)
    (head, first), (again_head, again) = twice
    assert first == again
    assert head == again_head
    assert f"RFC822.SIZE {len(first)}".encode() in head
    rebuilt = BytesParser(policy=default).parsebytes(first)
    received = BytesParser(policy=default).parsebytes(delivered)
    assert rebuilt["Subject"] == "Rendez-vous de contrôle"
    assert rebuilt.get_content().strip() == "À jeudi."  # type: ignore[attr-defined]
    assert rebuilt["Message-ID"] == received["Message-ID"], "the one the recipient got"
    assert sent_flags == {"\\Seen"}
    assert draft_flags == {"\\Seen", "\\Draft"}
    assert sent["folderId"] == SENT


# -- one store, two faces -----------------------------------------------------------------


async def test_flags_travel_both_ways_and_expunge_deletes(mock_op: MockOperator):
    assert mock_op.historic is not None
    raw = b"From: luc.durand@infirmier.mssante.fr\r\nSubject: Deux faces\r\n\r\nCorps.\r\n"
    stored = await mock_op.historic.store.deliver_mime(DUPONT, raw)
    token = (await historic_call(mock_op, "Item", "syncMessages", {"email": DUPONT}))["token"]

    def imap_sets() -> int:
        client = as_master(mock_op, DUPONT)
        client.select("INBOX")
        uid = uid_of(client, "SUBJECT", '"Deux faces"')
        client.uid("STORE", str(uid), "+FLAGS", "(\\Seen \\Flagged \\Answered)")
        client.logout()
        return uid

    uid = await asyncio.to_thread(imap_sets)
    message = await web_message(mock_op, DUPONT, folder_id=INBOX, subject="Deux faces")
    assert message["messageId"] == stored.message_id
    assert message["flags"] == ["FLAGGED", "REPLIED"]
    synced = await historic_call(mock_op, "Item", "syncMessages", {"email": DUPONT, "token": token})
    assert [m["messageId"] for m in synced["modifiedMessages"]] == [stored.message_id]

    for operation in ("UNREAD", "UNFLAGGED"):
        await historic_call(
            mock_op,
            "Item",
            "updateMessages",
            {"email": DUPONT, "messageIds": [stored.message_id], "operation": operation},
        )

    def imap_reads_then_expunges() -> tuple[set[str], str]:
        client = as_master(mock_op, DUPONT)
        client.select("INBOX")
        flags = flags_of(client, uid)
        client.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")
        typ, _ = client.expunge()
        client.logout()
        return flags, typ

    flags, typ = await asyncio.to_thread(imap_reads_then_expunges)
    assert flags == {"\\Answered"}
    assert typ == "OK"
    assert await historic_messages(mock_op, DUPONT, INBOX, subject="Deux faces") == []
    synced = await historic_call(
        mock_op, "Item", "syncMessages", {"email": DUPONT, "token": synced["token"]}
    )
    assert synced["deletedMessageIds"] == [stored.message_id]


async def test_idle_and_noop_see_what_the_web_services_change(mock_op: MockOperator):
    assert mock_op.historic is not None
    raw = b"From: luc.durand@infirmier.mssante.fr\r\nSubject: Vu en IDLE\r\n\r\nCorps.\r\n"
    stored = await mock_op.historic.store.deliver_mime(DUPONT, raw)
    client = await Raw.open(mock_op.historic_imap_port)
    try:
        blob = base64.b64encode(master_plain(mock_op, DUPONT)).decode()
        await client.ok(f"AUTHENTICATE PLAIN {blob}")
        selected = await client.ok("SELECT INBOX")
        (exists,) = [int(line.split()[1]) for line in selected.of(b"EXISTS")]
        found = (await client.ok('UID SEARCH SUBJECT "Vu en IDLE"')).search()
        assert len(found) == 1
        await client.send(b"I1 IDLE\r\n")
        assert (await client.line()).startswith(b"+ ")
        await historic_call(
            mock_op,
            "Item",
            "updateMessages",
            {"email": DUPONT, "messageIds": [stored.message_id], "operation": "READ"},
        )
        pushed = await client.line()  # the event itself, within Raw's timeout
        # delivered before this first SELECT: recent to this session (RFC 3501 §2.3.2)
        assert pushed == b"* %d FETCH (UID %d FLAGS (\\Recent \\Seen))" % (exists, found[0])
        await client.send(b"DONE\r\n")
        assert (await client.collect("I1")).status == "OK"
        await historic_call(
            mock_op,
            "Item",
            "moveMessages",
            {"email": DUPONT, "messageIds": [stored.message_id], "destinationFolderId": TRASH},
        )
        noop = await client.ok("NOOP")
        assert noop.of(b"EXPUNGE") == [b"* %d EXPUNGE" % exists]
    finally:
        await client.close()


async def test_folders_created_renamed_and_deleted_on_both_sides(mock_op: MockOperator):
    created = await historic_call(
        mock_op, "Folder", "createFolder", {"email": DUPONT, "name": "Vu du web"}
    )

    def session() -> dict[str, Any]:
        client = as_master(mock_op, DUPONT)
        out: dict[str, Any] = {}
        out["create"] = client.create("Patients/Garnier")[0]
        client.select("INBOX")
        client.uid("COPY", "1:2", "Patients/Garnier")
        out["copy"] = client.response("COPYUID")[1][0]
        out["rename"] = client.rename("Patients/Garnier", "Archives/Garnier-2026")[0]
        out["delete_parent"] = client.delete("Archives")
        out["delete_inbox"] = client.delete("INBOX")
        out["delete_empty"] = client.delete("Patients")[0]
        out["subscribe"] = client.unsubscribe('"Vu du web"')[0]
        out["list"] = client.list()[1]
        out["lsub"] = client.lsub()[1]
        client.select("Archives/Garnier-2026")
        out["move"] = client.uid("MOVE", "1", "INBOX")
        client.logout()
        return out

    out = await asyncio.to_thread(session)
    assert out["create"] == "OK"
    assert re.fullmatch(rb"\d+ 1:2 1:2", out["copy"]), out["copy"]
    assert out["rename"] == "OK"
    assert out["delete_parent"][0] == "NO"
    assert b"[INUSE]" in out["delete_parent"][1][0]
    assert out["delete_inbox"][0] == "NO"
    assert b"[CANNOT]" in out["delete_inbox"][1][0]
    assert out["delete_empty"] == "OK"
    assert out["subscribe"] == "OK"
    listed = b"\n".join(out["list"])
    assert b'"Archives/Garnier-2026"' in listed
    assert b'"Vu du web"' in listed
    assert b"Patients" not in listed
    assert b'"Vu du web"' not in b"\n".join(out["lsub"])
    assert out["move"][0] == "OK"
    tree = (await historic_call(mock_op, "Folder", "listFolders", {"email": DUPONT}))["folders"]
    archives = next(f for f in tree if f["name"] == "Archives")
    (garnier,) = archives["children"]
    assert garnier["name"] == "Garnier-2026"
    assert garnier["totalCount"] == 1, "two copied, one moved back to INBOX"
    assert any(f["id"] == created["folder"]["id"] for f in tree)


# -- the store ----------------------------------------------------------------------------


async def test_an_older_data_directory_gets_uids_and_rebuilt_messages(tmp_path: Path):
    """A store made before the IMAP: its tables lack the new columns and originals."""
    engine = sqlite_engine(tmp_path / "historic.db")
    old = HistoricStore(engine)
    await old.create_schema()
    await old.ensure_account(DUPONT, "899700000002", "Jean DUPONT")
    for subject in ("Premier", "Second"):
        await old.deliver_mime(DUPONT, f"From: a@b.fr\r\nSubject: {subject}\r\n\r\nx\r\n".encode())
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE hist_originals"))
        for table, columns in (
            ("hist_folders", ("uidvalidity", "uidnext", "subscribed")),
            ("hist_messages", ("imap_uid", "received", "keywords")),
        ):
            for column in columns:
                await conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    try:
        store = HistoricStore(engine)
        await store.create_schema()
        mailbox = HistoricImap(store).mailbox(DUPONT)
        state = await mailbox.folder_state("INBOX")
        assert [m.uid for m in state.messages] == [1, 2]
        assert state.uidnext == 3
        first = await mailbox.fetch_message("INBOX", 1)
        assert BytesParser(policy=default).parsebytes(first)["Subject"] == "Premier"
        assert state.messages[0].size == len(first)
        assert state.messages[0].internal_date <= dt.datetime.now(dt.UTC)
        assert (
            await mailbox.append("INBOX", b"Subject: new\r\n\r\n.\r\n", [], dt.datetime.now(dt.UTC))
        )[1] == 3
        assert (await store.message(DUPONT, "258")).subject == "Second"
    finally:
        await engine.dispose()


async def test_uids_survive_a_restart(mock_op: MockOperator):
    def status(port: int) -> bytes:
        client = imaplib.IMAP4(HOST, port, timeout=10)
        client.authenticate("PLAIN", lambda _: master_plain(mock_op, DUPONT))
        _, data = client.status("INBOX", "(UIDVALIDITY UIDNEXT MESSAGES)")
        client.logout()
        return data[0]  # type: ignore[return-value]

    before = await asyncio.to_thread(status, mock_op.historic_imap_port)
    await mock_op.stop()
    again = MockOperator(mock_op.settings, mock_op.data_dir)
    await again.start()
    try:
        assert again.master is not None
        assert mock_op.master is not None
        assert again.master.password == mock_op.master.password
        after = await asyncio.to_thread(status, again.historic_imap_port)
    finally:
        await again.stop()
    assert before == after


async def test_curl_logs_in_as_the_operator_and_with_a_card(mock_op: MockOperator, tmp_path: Path):
    """curl, a real client: PLAIN with --sasl-authzid, and EXTERNAL with --cert."""
    require_peer(shutil.which("curl") is not None, "curl is not installed")
    assert mock_op.master is not None
    assert mock_op.tls_cert is not None
    url = f"imap://{HOST}:{mock_op.historic_imap_port}/INBOX"
    card = issue_card(authority_of(mock_op), mock_op, "dr-dupont", tmp_path)
    as_operator = await asyncio.to_thread(
        curl,
        "--login-options",
        "AUTH=PLAIN",
        "--sasl-authzid",
        DUPONT,
        "--user",
        f"{mock_op.master.user}:{mock_op.master.password}",
        url,
        "-X",
        "FETCH 1:* (FLAGS)",
    )
    with_a_card = await asyncio.to_thread(
        curl,
        "--ssl-reqd",
        "--cacert",
        str(mock_op.tls_cert),
        "--cert",
        str(card.certificate),
        "--key",
        str(card.key),
        "--login-options",
        "AUTH=EXTERNAL",
        "--user",
        f"{DUPONT}:",
        url,
        "-X",
        "FETCH 1:* (FLAGS)",
    )
    inbox = await historic_messages(mock_op, DUPONT, INBOX)
    for answer in (as_operator, with_a_card):
        assert answer.returncode == 0, answer.stderr
        assert len(answer.stdout.splitlines()) == len(inbox)
    # the first session took the messages' \\Recent (RFC 3501 §2.3.2); the rest is the same
    assert (
        as_operator.stdout.replace("\\Recent ", "").replace(" \\Recent", "").replace("\\Recent", "")
        == with_a_card.stdout
    )
