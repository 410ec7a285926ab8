"""The IMAP engine over real sockets, checked the way Dovecot's imaptest checks servers:
exact command bytes in, exact responses out, and a client-side model of the sequence
number <-> UID map that every untagged response must keep consistent.

One mock operator serves the whole module; every test gets a BAL of its own (seeded like
Dr Martin's: INBOX UIDs 1..3, one message in "Envoyés") and logs in with the master
credentials (SASL PLAIN, authzid = the BAL), so tests are isolated and fast.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import itertools
import logging
import random
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from gateway.imap import commands as c
from gateway.imap.engine import (
    EngineConfig,
    ImapSession,
    _list_entries,
    _lsub_entries,
    _pattern_regex,
    internal_date,
)
from gateway.imap.mailstore import FolderInfo
from gateway.imap.parser import CommandParser
from gateway.imap.session import SessionGrant
from gateway.runtime.login import AuthFailed, ConnectionInfo
from gateway.settings import MockSettings
from mock_operator.seed import seed_messages
from mock_operator.server import MockOperator
from tests.conftest import persona_token, require_peer
from tests.dovecot import dovecot_available, running_dovecot
from tests.imap_raw import Lit, Raw, Reply
from tests.support.engine import FakeChannel

pytestmark = pytest.mark.asyncio(loop_scope="module")

MARTIN = "claire.martin@medecin.mssante.fr"
# RFC 3501 date-time, date-day-fixed = (SP DIGIT) / 2DIGIT
DATE_TIME = re.compile(
    rb'"[ 0-9][0-9]-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-[0-9]{4} '
    rb'[0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}"'
)


# -- fixtures ---------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mock(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MockOperator]:
    settings = MockSettings(
        http_port=0,
        imap_port=0,
        smtp_port=0,
        historic_imap_port=0,
        ciba_auto_approve_after=None,
        ciba_interval=1,
        auth_failure_delay=0,
    )
    operator = MockOperator(settings, tmp_path_factory.mktemp("engine") / "mock-operator")
    await operator.start()
    try:
        yield operator
    finally:
        await operator.stop()


_bal_numbers = itertools.count(1)


@pytest_asyncio.fixture(loop_scope="module")
async def bal(mock: MockOperator) -> str:
    """A fresh BAL seeded like Dr Martin's: INBOX 1..3 (\\Seen, -, \\Flagged), Envoyés 1."""
    assert mock.platform is not None
    address = f"test{next(_bal_numbers)}@engine.mssante.fr"
    martin = next(p for p in mock.personas if p.key == "dr-martin")
    persona = dataclasses.replace(martin, bal=address)
    await mock.platform.ensure_mailbox(address, "899700009999", "Test ENGINE")
    folders = set()
    for seed in seed_messages(persona):
        await mock.platform.deliver(
            address,
            seed.raw,
            folder=seed.folder,
            flags=seed.flags,
            internal_date=seed.internal_date,
        )
        folders.add(seed.folder)
    # the seeded mail was "seen" by a session before the test's: no \Recent left on it
    assert mock.imap is not None
    for folder in folders:
        state = await mock.platform.store(address).folder_state(folder)
        recent = mock.imap.config.engine.recent
        recent.claim(address, folder, state.uidvalidity, state.messages[-1].uid)
    return address


@pytest_asyncio.fixture(loop_scope="module")
async def clients(mock: MockOperator) -> AsyncIterator[list[Raw]]:
    """Every client a test opens through `connect`/`login` is closed afterwards."""
    opened: list[Raw] = []
    yield opened
    for client in opened:
        await client.close()


@pytest.fixture
def connect(mock: MockOperator, clients: list[Raw]) -> Callable[[], Any]:
    async def open_one() -> Raw:
        client = await Raw.open(mock.imap_port)
        clients.append(client)
        return client

    return open_one


@pytest.fixture
def login(mock: MockOperator, connect: Callable[[], Any], bal: str) -> Callable[..., Any]:
    async def log_in(address: str = bal, select: str | None = None) -> Raw:
        client = await connect()
        assert mock.master is not None
        blob = f"{address}\0{mock.master.user}\0{mock.master.password}".encode()
        await client.ok("AUTHENTICATE PLAIN ", base64.b64encode(blob))
        if select is not None:
            await client.ok("SELECT ", select)
        return client

    return log_in


# -- greeting, capabilities, any-state commands ------------------------------------------------


async def test_greeting_capability_before_and_after_login(mock: MockOperator, connect):
    client = await connect()
    assert client.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    assert client.greeting.isascii(), "resp-text is 7-bit in IMAP4rev1"
    reply = await client.ok("CAPABILITY")
    (line,) = reply.untagged
    before = line.split()[2:]
    assert line.startswith(b"* CAPABILITY IMAP4rev1 ")
    for cap in (b"STARTTLS", b"AUTH=PLAIN", b"AUTH=XOAUTH2", b"AUTH=OAUTHBEARER", b"LITERAL+"):
        assert cap in before
    assert b"LOGINDISABLED" not in before, "loopback plaintext logins are allowed"
    bearer = await persona_token(mock)
    login = await client.command("LOGIN ", MARTIN, " ", bearer)
    assert login.status == "OK"
    assert login.tagged.startswith(login.tagged.split()[0] + b" OK [CAPABILITY IMAP4rev1 ")
    after = (await client.ok("CAPABILITY")).untagged[0].split()[2:]
    for cap in (b"UIDPLUS", b"MOVE", b"IDLE", b"NAMESPACE", b"UNSELECT", b"CHILDREN"):
        assert cap in after
    assert b"SPECIAL-USE" in after
    assert b"STARTTLS" not in after
    assert not any(cap.startswith(b"AUTH=") for cap in after)


async def test_capabilities_depend_on_the_connection(mock: MockOperator):
    assert mock.imap is not None
    config, auth = mock.imap.config.engine, mock.imap.authenticator

    def caps(**info: Any) -> list[str]:
        return ImapSession(config, auth, FakeChannel(), ConnectionInfo(**info)).capabilities()

    remote = caps(peer="192.0.2.1", secure=False, loopback=False, tls_available=True)
    assert "LOGINDISABLED" in remote
    assert "STARTTLS" in remote
    assert not any(cap.startswith("AUTH=") for cap in remote)
    remote_tls = caps(peer="192.0.2.1", secure=True, loopback=False, tls_available=False)
    assert "LOGINDISABLED" not in remote_tls
    assert "STARTTLS" not in remote_tls
    assert "AUTH=PLAIN" in remote_tls
    no_tls = caps(peer="127.0.0.1", secure=False, loopback=True, tls_available=False)
    assert "STARTTLS" not in no_tls


def parse(data: bytes) -> c.Command:
    parser = CommandParser()
    parser.receive_data(data)
    event = parser.next_event()
    assert isinstance(event, c.Command), event
    return event


async def test_plaintext_login_off_loopback_is_refused(mock: MockOperator):
    assert mock.imap is not None
    channel = FakeChannel()
    info = ConnectionInfo(peer="192.0.2.1", secure=False, loopback=False, tls_available=True)
    session = ImapSession(mock.imap.config.engine, mock.imap.authenticator, channel, info)
    await session.execute(parse(b"a LOGIN someone secret\r\n"))
    await session.execute(parse(b"b AUTHENTICATE PLAIN AGEAYg==\r\n"))
    assert channel.take() == [
        b"a NO [PRIVACYREQUIRED] use STARTTLS first",
        b"b NO [PRIVACYREQUIRED] use STARTTLS first",
    ]
    assert session.grant is None


async def test_id_enable_namespace_noop(login, connect):
    anonymous = await connect()
    ident = await anonymous.ok('ID ("name" "pytest" "version" "1")')
    assert ident.untagged == [b'* ID ("name" "mock-operator" "vendor" "lps-gateway")']
    assert (await anonymous.ok("ID NIL")).of(b"ID")
    assert (await anonymous.command("ENABLE IDLE")).status == "BAD", "ENABLE needs login"
    assert (await anonymous.command("NAMESPACE")).status == "BAD"
    assert (await anonymous.ok("NOOP")).untagged == []
    client = await login()
    assert (await client.ok("ENABLE CONDSTORE")).untagged == [b"* ENABLED"]
    namespace = await client.ok("NAMESPACE")
    assert namespace.untagged == [b'* NAMESPACE (("" "/")) NIL NIL']
    assert (await client.ok("NOOP")).untagged == []
    assert (await client.command("CHECK")).status == "BAD", "CHECK needs a selected mailbox"


async def test_logout_says_bye_then_ok_then_closes(login):
    client = await login()
    tag = client.tag()
    await client.send(f"{tag} LOGOUT\r\n".encode())
    assert (await client.line()).startswith(b"* BYE ")
    assert await client.line() == f"{tag} OK LOGOUT completed".encode()
    assert await client.until_closed() == b""


async def test_unknown_command_and_wrong_state_are_bad(connect, login):
    anonymous = await connect()
    assert (await anonymous.command("XYZZY")).status == "BAD"
    for command in ("SELECT INBOX", 'LIST "" *', "FETCH 1 FLAGS", "IDLE", "EXPUNGE"):
        reply = await anonymous.command(command)
        assert reply.status == "BAD", (command, reply)
    client = await login()
    for command in ("LOGIN a b", "AUTHENTICATE PLAIN", "STARTTLS"):
        reply = await client.command(command)
        assert reply.status == "BAD", (command, reply)
    for command in ("FETCH 1 FLAGS", "STORE 1 +FLAGS \\Seen", "CLOSE", "UNSELECT", "EXPUNGE"):
        reply = await client.command(command)
        assert reply.tagged.endswith(b"BAD no mailbox selected"), (command, reply)
    assert (await client.command("UID FROB 1")).status == "BAD"
    assert (await client.ok("NOOP")).status == "OK", "the connection goes on"


async def test_three_failed_logins_end_with_bye(connect):
    client = await connect()
    for attempt in range(3):
        reply = await client.command("LOGIN ", MARTIN, " not-a-token")
        assert reply.status == "NO"
        assert b"[AUTHENTICATIONFAILED]" in reply.tagged
        assert reply.untagged == []
        if attempt < 2:
            assert await client.quiet(0.1) == b""
    rest = await client.until_closed()
    assert rest.startswith(b"* BYE ")


# -- SELECT / EXAMINE -----------------------------------------------------------------------


async def test_select_responses(login):
    client = await login()
    reply = await client.ok("SELECT INBOX")
    lines = reply.untagged
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)"
    assert lines[1].startswith(
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
    )
    assert lines[2:5] == [b"* 3 EXISTS", b"* 0 RECENT", b"* OK [UNSEEN 2] first unseen"]
    assert re.fullmatch(rb"\* OK \[UIDVALIDITY [1-9][0-9]*\] .+", lines[5])
    assert lines[6].startswith(b"* OK [UIDNEXT 4] ")
    assert len(lines) == 7
    assert b" OK [READ-WRITE] " in reply.tagged


async def test_examine_is_read_only(login):
    client = await login()
    writer = await login(select="INBOX")
    await writer.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
    reply = await client.ok("EXAMINE INBOX")
    assert b" OK [READ-ONLY] " in reply.tagged
    assert any(line.startswith(b"* OK [PERMANENTFLAGS ()]") for line in reply.untagged)
    for command in ("STORE 1 +FLAGS (\\Flagged)", "EXPUNGE", "UID EXPUNGE 3", "MOVE 1 Corbeille"):
        refused = await client.command(command)
        assert refused.status == "NO", (command, refused)
        assert b"[READ-ONLY]" in refused.tagged
    body = await client.ok("FETCH 2 BODY[TEXT]")
    assert b"FLAGS" not in body.untagged[0], "EXAMINE never sets \\Seen"
    assert (await client.ok("FETCH 2 FLAGS")).untagged == [b"* 2 FETCH (FLAGS ())"]
    assert (await client.ok("COPY 1 Corbeille")).status == "OK", "COPY out of it is fine"
    assert (await client.ok("CLOSE")).untagged == []
    status = await client.ok("STATUS INBOX (MESSAGES UNSEEN)")
    assert status.untagged == [b'* STATUS "INBOX" (MESSAGES 3 UNSEEN 2)'], "kept, unread"


async def test_failed_select_deselects(login):
    client = await login(select="INBOX")
    reply = await client.command("SELECT Nulle-part")
    assert reply.status == "NO"
    assert b"[NONEXISTENT]" in reply.tagged
    assert reply.untagged[0].startswith(b"* OK [CLOSED] ")
    assert (await client.command("FETCH 1 FLAGS")).status == "BAD"


async def test_select_of_another_folder_closes_without_expunge(login):
    client = await login(select="INBOX")
    await client.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    reply = await client.ok('SELECT "Envoy&AOk-s"')
    assert reply.untagged[0].startswith(b"* OK [CLOSED] ")
    assert b"* 1 EXISTS" in reply.untagged
    assert not reply.of(b"EXPUNGE")
    status = await client.ok("STATUS INBOX (MESSAGES)")
    assert status.untagged == [b'* STATUS "INBOX" (MESSAGES 3)']


# -- FETCH ----------------------------------------------------------------------------------


async def test_fetch_simple_attributes(login):
    client = await login(select="INBOX")
    reply = await client.ok("FETCH 1 (UID FLAGS INTERNALDATE RFC822.SIZE)")
    (line,) = reply.untagged
    match = re.fullmatch(
        rb'\* 1 FETCH \(UID 1 FLAGS \(\\Seen\) INTERNALDATE ("[^"]+") RFC822\.SIZE (\d+)\)', line
    )
    assert match is not None, line
    assert match.group(1) == b'"02-Nov-2026 09:15:00 +0100"'
    assert DATE_TIME.fullmatch(match.group(1))
    full = (await client.ok("FETCH 1 BODY.PEEK[]")).untagged[0]
    body = full.split(b"}\r\n", 1)[1][:-1]
    assert int(match.group(2)) == len(body), "RFC822.SIZE is the size of BODY[]"
    envelope = (await client.ok("FETCH 1 ENVELOPE")).untagged[0]
    assert envelope.startswith(b'* 1 FETCH (ENVELOPE ("Mon, 02 Nov 2026 09:15:00 +0100" ')
    assert b'"resultats" "labo-biomed.mssante.fr"' in envelope
    structure = (await client.ok("FETCH 1 (BODY BODYSTRUCTURE)")).untagged[0]
    assert structure.startswith(b'* 1 FETCH (BODY ("text" "plain" ("charset" "utf-8")')
    assert b" BODYSTRUCTURE (" in structure
    multipart = (await client.ok("FETCH 2 BODYSTRUCTURE")).untagged[0]
    assert b'"mixed" ("boundary" "=_mss_dr-martin")' in multipart
    fast = (await client.ok("FETCH 1 FAST")).untagged[0]
    assert re.fullmatch(
        rb"\* 1 FETCH \(FLAGS \(\\Seen\) INTERNALDATE \"[^\"]+\" RFC822\.SIZE \d+\)", fast
    )
    every = (await client.ok("FETCH 1 ALL")).untagged[0]
    assert b" ENVELOPE (" in every
    assert b"BODY" not in every
    full_macro = (await client.ok("FETCH 1 FULL")).untagged[0]
    assert b" ENVELOPE (" in full_macro
    assert b" BODY (" in full_macro
    deduplicated = (await client.ok("FETCH 1 (FLAGS FLAGS UID UID)")).untagged
    assert deduplicated == [b"* 1 FETCH (FLAGS (\\Seen) UID 1)"]


async def test_fetch_body_sections(login):
    client = await login(select="INBOX")
    full = (await client.ok("FETCH 1 BODY.PEEK[]")).untagged[0]
    raw = full.split(b"}\r\n", 1)[1][:-1]
    header, _, text = raw.partition(b"\r\n\r\n")

    async def section(spec: str) -> bytes:
        (line,) = (await client.ok(f"FETCH 1 BODY.PEEK[{spec}")).untagged
        return line

    assert await section("]<0.10>") == b"* 1 FETCH (BODY[]<0> {10}\r\n" + raw[:10] + b")"
    assert await section("]<5.7>") == b"* 1 FETCH (BODY[]<5> {7}\r\n" + raw[5:12] + b")"
    assert await section("]<99999.10>") == b"* 1 FETCH (BODY[]<99999> {0}\r\n)"
    assert await section("HEADER]") == (
        b"* 1 FETCH (BODY[HEADER] {%d}\r\n" % (len(header) + 4) + header + b"\r\n\r\n)"
    )
    assert await section("TEXT]") == b"* 1 FETCH (BODY[TEXT] {%d}\r\n" % len(text) + text + b")"
    fields = await section("HEADER.FIELDS (From Subject)]")
    assert fields.startswith(b"* 1 FETCH (BODY[HEADER.FIELDS (FROM SUBJECT)] {")
    assert b"\r\nFrom: Laboratoire Biomed <resultats@labo-biomed.mssante.fr>\r\n" in fields
    assert b"Subject: " in fields
    assert b"Date:" not in fields
    assert fields.endswith(b"\r\n\r\n)")
    quoted = await section('HEADER.FIELDS ("X-MSS-NIL" "Not an atom")]')
    assert quoted.startswith(b'* 1 FETCH (BODY[HEADER.FIELDS (X-MSS-NIL "NOT AN ATOM")] {')
    assert b"X-MSS-NIL: MOCK-LPS-0001\r\n" in quoted
    without = await section("HEADER.FIELDS.NOT (Subject)]")
    assert b"Date:" in without
    assert b"Subject:" not in without
    assert await section("1]") == b"* 1 FETCH (BODY[1] {%d}\r\n" % len(text) + text + b")"
    assert await section("7]") == b"* 1 FETCH (BODY[7] {0}\r\n)", "no such part: empty"
    # a multipart message
    (mime,) = (await client.ok("FETCH 2 (BODY.PEEK[1.MIME] BODY.PEEK[2]<0.2>)")).untagged
    assert mime.startswith(b"* 2 FETCH (BODY[1.MIME] {")
    assert b"Content-Type: text/plain" in mime
    assert mime.endswith(b" BODY[2]<0> {2}\r\nUE)"), "base64 of a zip starts with UE"
    # RFC822.* forms
    rfc822 = (await client.ok("FETCH 1 (RFC822.HEADER RFC822)")).untagged[0]
    assert rfc822 == (
        b"* 1 FETCH (RFC822.HEADER {%d}\r\n" % (len(header) + 4)
        + header
        + b"\r\n\r\n RFC822 {%d}\r\n" % len(raw)
        + raw
        + b")"
    )


async def test_fetch_body_sets_seen_and_peek_does_not(login):
    client = await login(select="INBOX")
    peek = (await client.ok("FETCH 2 (BODY.PEEK[TEXT]<0.5>)")).untagged
    assert peek == [b"* 2 FETCH (BODY[TEXT]<0> {5}\r\n--=_m)"]
    assert (await client.ok("FETCH 2 FLAGS")).untagged == [b"* 2 FETCH (FLAGS ())"]
    header = (await client.ok("FETCH 2 RFC822.HEADER")).untagged[0]
    assert b"FLAGS" not in header, "RFC822.HEADER is BODY.PEEK[HEADER]"
    seen = (await client.ok("FETCH 2 BODY[TEXT]<0.5>")).untagged
    assert seen == [b"* 2 FETCH (BODY[TEXT]<0> {5}\r\n--=_m FLAGS (\\Seen))"]
    again = (await client.ok("FETCH 2 BODY[TEXT]<0.5>")).untagged
    assert again == [b"* 2 FETCH (BODY[TEXT]<0> {5}\r\n--=_m)"], "already \\Seen: no FLAGS"
    text = (await client.ok("FETCH 3 (FLAGS RFC822.TEXT)")).untagged[0]
    assert text.startswith(b"* 3 FETCH (FLAGS (\\Flagged \\Seen) RFC822.TEXT {")
    status = await client.ok("STATUS INBOX (UNSEEN)")
    assert status.untagged == [b'* STATUS "INBOX" (UNSEEN 0)']


async def test_uid_fetch_always_includes_uid(login):
    client = await login(select="INBOX")
    reply = await client.ok("UID FETCH 1:* FLAGS")
    assert reply.untagged == [
        b"* 1 FETCH (FLAGS (\\Seen) UID 1)",
        b"* 2 FETCH (FLAGS () UID 2)",
        b"* 3 FETCH (FLAGS (\\Flagged) UID 3)",
    ]
    assert (await client.ok("UID FETCH 2 (UID FLAGS)")).untagged == [b"* 2 FETCH (UID 2 FLAGS ())"]


async def test_sequence_numbers_and_uid_ranges(login):
    client = await login(select="INBOX")

    async def fetched(command: str) -> list[int]:
        return sorted((await client.ok(command)).fetched())

    for bad in ("FETCH 4 UID", "FETCH 1:4 UID", "FETCH 2,9 UID", "STORE 4 +FLAGS \\Seen"):
        reply = await client.command(bad)
        assert reply.status == "BAD", (bad, reply)
        assert reply.untagged == []
    assert (await client.command("FETCH 0 UID")).status == "BAD"
    assert await fetched("FETCH 3:1 UID") == [1, 2, 3]
    assert await fetched("FETCH *:2 UID") == [2, 3]
    assert await fetched("FETCH 1,* UID") == [1, 3]
    assert (await client.ok("UID FETCH 4:* UID")).untagged == [b"* 3 FETCH (UID 3)"]
    assert (await client.ok("UID FETCH 100:200 UID")).untagged == []
    assert (await client.ok("UID STORE 100 +FLAGS (\\Seen)")).untagged == []
    assert (await client.ok("UID COPY 100 Corbeille")).tagged.endswith(b"nothing to do")
    assert (await client.ok("SEARCH 2:*")).search() == [2, 3]
    # an empty mailbox: "*" is no message (Dovecot: BAD "Invalid messageset")
    await client.ok('SELECT "Brouillons"')
    for bad in ("FETCH 1:* FLAGS", "FETCH * FLAGS", "STORE 1:* +FLAGS \\Seen", "COPY * INBOX"):
        assert (await client.command(bad)).status == "BAD", bad
    assert (await client.ok("UID FETCH 1:* FLAGS")).untagged == []
    assert (await client.ok("UID SEARCH ALL")).search() == []
    assert (await client.ok("SEARCH ALL")).untagged == [b"* SEARCH"]


# -- STORE ----------------------------------------------------------------------------------


async def test_store_variants_and_keywords(login):
    client = await login(select="INBOX")
    assert (await client.ok("STORE 1 +FLAGS (\\Answered)")).untagged == [
        b"* 1 FETCH (FLAGS (\\Answered \\Seen))"
    ]
    assert (await client.ok("STORE 1 -FLAGS \\Seen")).untagged == [
        b"* 1 FETCH (FLAGS (\\Answered))"
    ]
    assert (await client.ok("STORE 1:2 FLAGS (\\Draft)")).untagged == [
        b"* 1 FETCH (FLAGS (\\Draft))",
        b"* 2 FETCH (FLAGS (\\Draft))",
    ]
    assert (await client.ok("STORE 1 FLAGS.SILENT ()")).untagged == []
    assert (await client.ok("FETCH 1 FLAGS")).untagged == [b"* 1 FETCH (FLAGS ())"]
    keyword = await client.ok("STORE 2 +FLAGS ($Urgent)")
    assert keyword.untagged == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Urgent)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Urgent \\*)]"
        b" flags permitted",
        b"* 2 FETCH (FLAGS ($Urgent \\Draft))",
    ]
    assert (await client.ok("STORE 3 +FLAGS ($Urgent)")).untagged == [
        b"* 3 FETCH (FLAGS ($Urgent \\Flagged))"
    ], "a keyword already announced is not announced again"
    silent = await client.ok("STORE 3 +FLAGS.SILENT ($Other)")
    assert silent.untagged[0].startswith(b"* FLAGS ("), "new keywords are announced even silently"
    assert len(silent.untagged) == 2
    assert (await client.ok("UID STORE 3 -FLAGS ($Other $Urgent)")).untagged == [
        b"* 3 FETCH (UID 3 FLAGS (\\Flagged))"
    ]
    assert (await client.command("STORE 1 +FLAGS (\\Recent)")).status == "BAD"
    assert (await client.ok("SEARCH KEYWORD $Urgent")).search() == [2]


# -- SEARCH ---------------------------------------------------------------------------------


async def test_search_keys_through_the_engine(login):
    client = await login(select="INBOX")

    async def search(*parts: str | Lit) -> list[int]:
        return (await client.ok("SEARCH ", *parts)).search()

    assert await search("ALL") == [1, 2, 3]
    assert await search("SEEN") == [1]
    assert await search("UNSEEN") == [2, 3]
    assert await search("FLAGGED") == [3]
    assert await search("OR FLAGGED SEEN") == [1, 3]
    assert await search("NOT SEEN UNFLAGGED") == [2]
    assert await search("2:3 UNFLAGGED") == [2]
    assert await search("SUBJECT analyses") == [1]
    assert await search('FROM "biomed"') == [1]
    assert await search("SINCE 3-Nov-2026") == [2, 3]
    assert await search("BEFORE 3-Nov-2026") == [1]
    assert await search("LARGER 2000") == [2]
    assert await search("HEADER X-MSS-CODECDA 11490") == [2]
    assert (await client.ok("UID SEARCH UID 2:*")).search() == [2, 3]
    accents = "Hémoglobine".encode()
    assert await search("CHARSET UTF-8 BODY ", Lit(accents)) == [1]
    assert (
        await client.ok("SEARCH CHARSET UTF-8 SUBJECT ", Lit("Résultats".encode()))
    ).search() == [1]
    refused = await client.command("SEARCH CHARSET KOI8-R SUBJECT x")
    assert refused.tagged.split(b" ", 1)[1].startswith(b"NO [BADCHARSET (UTF-8 US-ASCII)] ")
    assert (await client.command("SEARCH NONSENSE")).status == "BAD"


# -- APPEND, COPY, MOVE, EXPUNGE, CLOSE -------------------------------------------------------


async def test_append_with_flags_date_and_literal_plus(login):
    client = await login(select="INBOX")
    uidvalidity = re.search(
        rb"UIDVALIDITY (\d+)", b" ".join((await client.ok("STATUS INBOX (UIDVALIDITY)")).untagged)
    )
    assert uidvalidity is not None
    message = b"From: a@b.fr\r\nSubject: append\r\n\r\nBonjour\r\n"
    reply = await client.command(
        'APPEND INBOX (\\Seen $Label) " 4-Jan-2027 08:30:00 -0330" ', Lit(message)
    )
    assert reply.status == "OK", reply
    assert b"[APPENDUID %s 4]" % uidvalidity.group(1) in reply.tagged
    # the selected session hears of its own append: keyword first, then EXISTS
    assert reply.untagged[0].startswith(b"* FLAGS (")
    assert reply.untagged[-2:] == [b"* 4 EXISTS", b"* 1 RECENT"], "its first to hear of it"
    fetched = (await client.ok("FETCH 4 (FLAGS INTERNALDATE RFC822.SIZE)")).untagged
    assert fetched == [
        b'* 4 FETCH (FLAGS ($Label \\Recent \\Seen) INTERNALDATE "04-Jan-2027 08:30:00 -0330"'
        b" RFC822.SIZE %d)" % len(message)
    ]
    plus = await client.command("APPEND INBOX ", Lit(message), plus=True)
    assert plus.status == "OK"
    assert b"[APPENDUID %s 5]" % uidvalidity.group(1) in plus.tagged
    missing = await client.command("APPEND Nulle-part ", Lit(message), plus=True)
    assert missing.status == "NO"
    assert b"[TRYCREATE]" in missing.tagged
    assert (await client.ok("NOOP")).status == "OK", "the connection goes on"


async def test_copy_with_copyuid(login):
    client = await login(select="INBOX")
    status = await client.ok("STATUS Corbeille (UIDVALIDITY)")
    trash = re.search(rb"UIDVALIDITY (\d+)", status.untagged[0])
    assert trash is not None
    first = await client.ok("COPY 1:2 Corbeille")
    assert b"[COPYUID %s 1:2 1:2]" % trash.group(1) in first.tagged
    second = await client.ok("UID COPY 3 Corbeille")
    assert b"[COPYUID %s 3 3]" % trash.group(1) in second.tagged
    missing = await client.command("COPY 1 Nulle-part")
    assert missing.status == "NO"
    assert b"[TRYCREATE]" in missing.tagged
    assert b"* 3 RECENT" in (await client.ok("SELECT Corbeille")).untagged
    flags = (await client.ok("FETCH 1:* FLAGS")).untagged
    assert flags == [  # flags copied; \Recent is the copies' own, as new messages
        b"* 1 FETCH (FLAGS (\\Recent \\Seen))",
        b"* 2 FETCH (FLAGS (\\Recent))",
        b"* 3 FETCH (FLAGS (\\Flagged \\Recent))",
    ]


async def test_move_sends_copyuid_then_expunges(login):
    client = await login(select="INBOX")
    trash = re.search(
        rb"UIDVALIDITY (\d+)", (await client.ok("STATUS Corbeille (UIDVALIDITY)")).untagged[0]
    )
    assert trash is not None
    moved = await client.ok("MOVE 1 Corbeille")
    assert moved.untagged == [
        b"* OK [COPYUID %s 1 1] moved" % trash.group(1),
        b"* 1 EXPUNGE",
    ]
    uid_moved = await client.ok("UID MOVE 3 Corbeille")
    assert uid_moved.untagged == [
        b"* OK [COPYUID %s 3 2] moved" % trash.group(1),
        b"* 2 EXPUNGE",
    ]
    assert (await client.ok("FETCH 1:* UID")).untagged == [b"* 1 FETCH (UID 2)"]
    assert (await client.command("MOVE 1 Nulle-part")).status == "NO"


async def test_expunge_and_uid_expunge(login):
    client = await login(select="INBOX")
    await client.ok("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    assert (await client.ok("UID EXPUNGE 2")).untagged == [b"* 2 EXPUNGE"], "only UID 2"
    assert (await client.ok("FETCH 1:* UID")).untagged == [
        b"* 1 FETCH (UID 1)",
        b"* 2 FETCH (UID 3)",
    ]
    assert (await client.ok("UID EXPUNGE 50:60")).untagged == []
    # two messages, numbers counted after each removal (RFC 3501 §7.4.1 example)
    assert (await client.ok("EXPUNGE")).untagged == [b"* 1 EXPUNGE", b"* 1 EXPUNGE"]
    assert (await client.ok("SEARCH ALL")).untagged == [b"* SEARCH"]


async def test_close_expunges_silently_and_unselect_does_not(login):
    client = await login(select="INBOX")
    await client.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    closed = await client.ok("CLOSE")
    assert closed.untagged == []
    assert (await client.command("FETCH 1 FLAGS")).status == "BAD"
    assert (await client.ok("STATUS INBOX (MESSAGES)")).untagged == [
        b'* STATUS "INBOX" (MESSAGES 2)'
    ]
    await client.ok("SELECT INBOX")
    await client.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert (await client.ok("UNSELECT")).untagged == []
    assert (await client.command("FETCH 1 FLAGS")).status == "BAD"
    assert (await client.ok("STATUS INBOX (MESSAGES)")).untagged == [
        b'* STATUS "INBOX" (MESSAGES 2)'
    ]


# -- mailboxes ------------------------------------------------------------------------------


async def test_create_delete_rename(login):
    client = await login()
    await client.ok("CREATE Patients/Garnier/2026")
    listed = await client.ok('LIST "" "Patients*"')
    assert listed.untagged == [
        b'* LIST (\\HasChildren) "/" "Patients"',
        b'* LIST (\\HasChildren) "/" "Patients/Garnier"',
        b'* LIST (\\HasNoChildren) "/" "Patients/Garnier/2026"',
    ]
    exists = await client.command("CREATE Patients/")
    assert exists.status == "NO"
    assert b"[ALREADYEXISTS]" in exists.tagged
    assert (await client.command("CREATE inbox")).status == "NO"
    missing = await client.command("DELETE Nulle-part")
    assert missing.status == "NO"
    assert b"[NONEXISTENT]" in missing.tagged
    assert (await client.command("DELETE INBOX")).status == "NO"
    await client.ok("DELETE Patients/Garnier/2026")
    await client.ok("RENAME Patients/Garnier Archives/2026/Garnier")
    moved = await client.ok('LIST "" "Archives*"')
    assert sorted(moved.untagged) == [
        b'* LIST (\\HasChildren) "/" "Archives"',
        b'* LIST (\\HasChildren) "/" "Archives/2026"',
        b'* LIST (\\HasNoChildren) "/" "Archives/2026/Garnier"',
    ], "RENAME creates the superior levels"
    under = await client.command("RENAME Archives Archives/Sub")
    assert under.status == "NO"
    assert b"[CANNOT]" in under.tagged
    gone = await client.command("RENAME Nulle-part Ailleurs")
    assert gone.status == "NO"
    assert b"[NONEXISTENT]" in gone.tagged
    taken = await client.command("RENAME Archives Patients")
    assert taken.status == "NO"
    assert b"[ALREADYEXISTS]" in taken.tagged
    assert (await client.ok('LIST "" "Ailleurs"')).untagged == [], "no parent left behind"


async def test_rename_inbox_moves_messages_and_inbox_stays(login):
    client = await login(select="INBOX")
    reply = await client.ok("RENAME INBOX Ancien")
    assert reply.of(b"EXPUNGE") == [b"* 1 EXPUNGE"] * 3, "the selected INBOX empties"
    status = await client.ok("STATUS INBOX (MESSAGES)")
    assert status.untagged == [b'* STATUS "INBOX" (MESSAGES 0)']
    assert (await client.ok("STATUS Ancien (MESSAGES)")).untagged == [
        b'* STATUS "Ancien" (MESSAGES 3)'
    ]
    assert (await client.ok('LIST "" INBOX')).untagged == [b'* LIST (\\HasNoChildren) "/" "INBOX"']


async def test_rename_of_the_selected_folder_keeps_it_selected(login):
    client = await login()
    await client.ok("CREATE Dossier")
    await client.ok("APPEND Dossier ", Lit(b"Subject: z\r\n\r\nz\r\n"), plus=True)
    await client.ok("SELECT Dossier")
    await client.ok("RENAME Dossier Classement")
    assert (await client.ok("NOOP")).untagged == []
    assert (await client.ok("FETCH 1 (UID)")).untagged == [b"* 1 FETCH (UID 1)"]
    await client.ok("STORE 1 +FLAGS (\\Flagged)")
    assert (await client.ok("STATUS Classement (MESSAGES)")).status == "OK"


async def test_subscribe_unsubscribe_lsub(login):
    client = await login()
    await client.ok("CREATE Patients/Garnier")
    assert (await client.ok('LSUB "" "Patients*"')).untagged == [], "CREATE does not subscribe"
    await client.ok("SUBSCRIBE Patients/Garnier")
    await client.ok("UNSUBSCRIBE Corbeille")
    everything = await client.ok('LSUB "" "*"')
    names = [line.rsplit(b" ", 1)[1] for line in everything.untagged]
    assert b'"Corbeille"' not in names
    assert b'"Patients"' not in names
    assert b'"Patients/Garnier"' in names
    assert b'"INBOX"' in names
    top = await client.ok('LSUB "" "%"')
    assert b'* LSUB (\\Noselect) "/" "Patients"' in top.untagged, "RFC 3501 §6.3.9"
    assert b'* LSUB () "/" "INBOX"' in top.untagged
    await client.ok("SUBSCRIBE Patients")
    assert b'* LSUB () "/" "Patients"' in (await client.ok('LSUB "" "%"')).untagged
    assert (await client.command("SUBSCRIBE Nulle-part")).status == "NO"


async def test_list_patterns(login):
    client = await login()
    await client.ok("CREATE Patients/Garnier")
    await client.ok("CREATE Patients/Petitjean/2026")
    root = await client.ok('LIST "" ""')
    assert root.untagged == [b'* LIST (\\Noselect) "/" ""']
    everything = await client.ok('LIST "" "*"')
    assert everything.untagged[:5] == [
        b'* LIST (\\HasNoChildren) "/" "INBOX"',
        b'* LIST (\\HasNoChildren \\Sent) "/" "Envoy&AOk-s"',
        b'* LIST (\\HasNoChildren \\Drafts) "/" "Brouillons"',
        b'* LIST (\\HasNoChildren \\Trash) "/" "Corbeille"',
        b'* LIST (\\HasNoChildren \\Junk) "/" "Ind&AOk-sirables"',
    ]
    assert len(everything.untagged) == 9
    top = await client.ok('LIST "" "%"')
    assert len(top.untagged) == 6
    assert b'* LIST (\\HasChildren) "/" "Patients"' in top.untagged
    children = await client.ok('LIST "" "Patients/%"')
    assert children.untagged == [
        b'* LIST (\\HasNoChildren) "/" "Patients/Garnier"',
        b'* LIST (\\HasChildren) "/" "Patients/Petitjean"',
    ]
    assert (await client.ok('LIST "Patients/" "%"')).untagged == children.untagged
    assert (await client.ok('LIST "" "inbox"')).untagged == [
        b'* LIST (\\HasNoChildren) "/" "INBOX"'
    ]
    sent = await client.ok('LIST "" "Envoy&AOk-s"')
    assert sent.untagged == [b'* LIST (\\HasNoChildren \\Sent) "/" "Envoy&AOk-s"']
    assert (await client.ok('LIST "" "Envoy*"')).untagged == sent.untagged
    assert (await client.ok('LIST "" "*2026"')).untagged == [
        b'* LIST (\\HasNoChildren) "/" "Patients/Petitjean/2026"'
    ]


ATOMS = "!#$&'+,-.0123456789:;<=>?@^_`|[}"  # every ATOM-CHAR class, as imaptest's "atoms"


async def test_atom_names_with_any_atom_char_are_answered_and_the_session_goes_on(login):
    """imaptest "atoms": an undecodable name is NO (it was BAD, and clients hang up on
    BAD), a LIST pattern holding it with wildcards is OK, and the connection stays."""
    client = await login()
    assert (await client.ok('LIST "" ~foo')).untagged == []
    refused = await client.command("SELECT ~foo")
    assert refused.tagged.endswith(b" NO [NONEXISTENT] no folder ~foo")
    for command in (f"SELECT {ATOMS}", f"CREATE {ATOMS}", f"STATUS {ATOMS} (MESSAGES)"):
        refused = await client.command(command)
        assert refused.tagged.endswith(b" NO Mailbox name is not valid mUTF-7"), refused
    assert (await client.ok(f'LIST "" {ATOMS}%*')).untagged == []
    assert (await client.ok(f'LSUB "" {ATOMS}%*')).untagged == []
    assert (await client.ok(f"LIST {ATOMS} %")).untagged == []
    await client.ok("CREATE a]b'c")
    listed = await client.ok('LIST "" a]*')
    assert listed.untagged == [b'* LIST (\\HasNoChildren) "/" "a]b\'c"']
    assert (await client.ok("SELECT a]b'c")).status == "OK"
    assert (await client.ok("NOOP")).status == "OK", "the connection goes on"


async def test_lsub_percent_shows_unsubscribed_parents_as_noselect(login):
    """imaptest "subscribe", and RFC 3501 §6.3.9's example: subscribed a/b/c only, so
    ``LSUB "" %`` gives ``a`` flagged \\Noselect (a exists, but is not subscribed)."""
    client = await login()
    for name in ("a/", "a/b/c", "a/d/", "a/d/e", "a/f"):
        await client.ok("CREATE ", name)
    await client.ok("SUBSCRIBE a/b/c")
    await client.ok("SUBSCRIBE a/d/e")
    await client.ok("SUBSCRIBE a/f")
    assert (await client.ok('LSUB "" %')).untagged[-1] == b'* LSUB (\\Noselect) "/" "a"'
    assert (await client.ok('LSUB "" a/%')).untagged == [
        b'* LSUB (\\Noselect) "/" "a/b"',
        b'* LSUB (\\Noselect) "/" "a/d"',
        b'* LSUB () "/" "a/f"',
    ]
    assert (await client.ok('LSUB "" a/*')).untagged == [
        b'* LSUB () "/" "a/b/c"',
        b'* LSUB () "/" "a/d/e"',
        b'* LSUB () "/" "a/f"',
    ]
    await client.ok("UNSUBSCRIBE a/d/e")
    await client.ok("SUBSCRIBE a/d")
    assert (await client.ok('LSUB "" a/%')).untagged == [
        b'* LSUB (\\Noselect) "/" "a/b"',
        b'* LSUB () "/" "a/d"',
        b'* LSUB () "/" "a/f"',
    ]
    await client.ok("UNSUBSCRIBE a/b/c")
    assert b"a/b" not in b"".join((await client.ok('LSUB "" a/%')).untagged)


async def test_lsub_entries_flag_existing_unsubscribed_levels_noselect():
    folders = [
        FolderInfo("INBOX"),
        FolderInfo("a", subscribed=False),
        FolderInfo("a/b", subscribed=False),
        FolderInfo("a/b/c"),
    ]
    lsub = _lsub_entries(folders, _pattern_regex("%"), trailing_percent=True)
    assert [(name, [a.value for a in attrs]) for name, attrs in lsub] == [  # type: ignore[union-attr]
        ("INBOX", []),
        ("a", ["\\Noselect"]),
    ]
    deeper = _lsub_entries(folders, _pattern_regex("a/%"), trailing_percent=True)
    assert [name for name, _ in deeper] == ["a/b"]
    assert _lsub_entries(folders, _pattern_regex("a/*"), trailing_percent=False)[0][0] == "a/b/c"


async def test_list_phantom_levels():
    folders = [FolderInfo("INBOX"), FolderInfo("A/B/C"), FolderInfo("X", subscribed=False)]
    folders.append(FolderInfo("X/Y"))
    listed = _list_entries(folders, _pattern_regex("*"))
    assert [(name, [a.value for a in attrs]) for name, attrs in listed] == [  # type: ignore[union-attr]
        ("INBOX", ["\\HasNoChildren"]),
        ("A", ["\\Noselect", "\\HasChildren"]),
        ("A/B", ["\\Noselect", "\\HasChildren"]),
        ("A/B/C", ["\\HasNoChildren"]),
        ("X", ["\\HasChildren"]),
        ("X/Y", ["\\HasNoChildren"]),
    ]
    assert [name for name, _ in _list_entries(folders, _pattern_regex("%"))] == ["INBOX", "A", "X"]
    lsub = _lsub_entries(folders, _pattern_regex("%"), trailing_percent=True)
    assert [(name, len(attrs)) for name, attrs in lsub] == [("INBOX", 0), ("A", 1), ("X", 1)]
    assert _lsub_entries(folders, _pattern_regex("*"), trailing_percent=False)[1][0] == "A/B/C"


async def test_status(login):
    client = await login()
    reply = await client.ok("STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
    assert re.fullmatch(
        rb'\* STATUS "INBOX" \(MESSAGES 3 RECENT 0 UIDNEXT 4 UIDVALIDITY \d+ UNSEEN 2\)',
        reply.untagged[0],
    )
    sent = await client.ok('STATUS "Envoy&AOk-s" (UNSEEN MESSAGES)')
    assert sent.untagged == [b'* STATUS "Envoy&AOk-s" (UNSEEN 0 MESSAGES 1)']
    missing = await client.command("STATUS Nulle-part (MESSAGES)")
    assert missing.status == "NO"
    assert b"[NONEXISTENT]" in missing.tagged
    accented = await client.command("STATUS Nul&AOk- (MESSAGES)")
    assert accented.status == "NO"
    assert accented.tagged.isascii(), "8-bit text in a response line breaks IMAP4rev1 clients"


# -- concurrency ------------------------------------------------------------------------------


async def test_recent_belongs_to_the_first_session_to_select(mock: MockOperator, login, bal):
    """RFC 3501 §2.3.2: one session owns a message's \\Recent, the first to select its
    folder after it arrived; EXAMINE and STATUS look without taking it."""
    assert mock.platform is not None
    examiner, first, second = await login(), await login(), await login()
    for subject in (b"one", b"two"):
        await mock.platform.deliver(bal, b"Subject: " + subject + b"\r\n\r\nnew\r\n")
    status = await second.ok("STATUS INBOX (MESSAGES RECENT UNSEEN)")
    assert status.untagged == [b'* STATUS "INBOX" (MESSAGES 5 RECENT 2 UNSEEN 4)']
    examined = await examiner.ok("EXAMINE INBOX")
    assert examined.untagged[2:4] == [b"* 5 EXISTS", b"* 2 RECENT"]
    assert (await examiner.ok("SEARCH RECENT")).search() == [4, 5]
    selected = await first.ok("SELECT INBOX")
    assert selected.untagged[2:4] == [b"* 5 EXISTS", b"* 2 RECENT"], "EXAMINE took nothing"
    assert (await first.ok("FETCH 3:5 FLAGS")).untagged == [
        b"* 3 FETCH (FLAGS (\\Flagged))",
        b"* 4 FETCH (FLAGS (\\Recent))",
        b"* 5 FETCH (FLAGS (\\Recent))",
    ]
    assert (await first.ok("SEARCH RECENT")).search() == [4, 5]
    assert (await first.ok("SEARCH OLD")).search() == [1, 2, 3]
    assert (await first.ok("SEARCH NEW")).search() == [4, 5]
    stored = await first.ok("STORE 4 +FLAGS (\\Seen)")
    assert stored.untagged == [b"* 4 FETCH (FLAGS (\\Recent \\Seen))"]
    assert (await first.ok("SEARCH NEW")).search() == [5], "NEW is RECENT UNSEEN"
    status = await first.ok("STATUS INBOX (RECENT)")
    assert status.untagged == [b'* STATUS "INBOX" (RECENT 2)'], "its own, on its selected folder"
    # the second session comes too late: nothing is recent to it, nor to STATUS
    assert b"* 0 RECENT" in (await second.ok("SELECT INBOX")).untagged
    assert (await second.ok("SEARCH RECENT")).untagged == [b"* SEARCH"]
    assert (await second.ok("FETCH 5 FLAGS")).untagged == [b"* 5 FETCH (FLAGS ())"]
    assert (await examiner.ok("STATUS Brouillons (RECENT)")).untagged[0].endswith(b"(RECENT 0)")
    assert (await second.ok("STATUS INBOX (RECENT)")).untagged[0].endswith(b"(RECENT 0)")
    # new mail while all three have INBOX open: the first to hear of it owns it
    await mock.platform.deliver(bal, b"Subject: three\r\n\r\nnew\r\n")
    assert (await second.ok("NOOP")).untagged == [b"* 6 EXISTS", b"* 1 RECENT"]
    assert (await first.ok("NOOP")).untagged == [b"* 6 EXISTS", b"* 2 RECENT"]
    assert (await examiner.ok("NOOP")).untagged == [b"* 6 EXISTS", b"* 2 RECENT"]
    assert (await second.ok("FETCH 6 FLAGS")).untagged == [b"* 6 FETCH (FLAGS (\\Recent))"]
    assert (await first.ok("FETCH 6 FLAGS")).untagged == [b"* 6 FETCH (FLAGS ())"]
    # recent state is per session: gone once the owner closes, never handed on
    await first.ok("CLOSE")
    assert b"* 0 RECENT" in (await first.ok("SELECT INBOX")).untagged
    status = await (await login()).ok("STATUS INBOX (RECENT)")
    assert status.untagged[0].endswith(b"(RECENT 0)")


async def test_recent_on_messages_appended_copied_and_moved_in(login):
    client = await login(select="INBOX")
    appended = await client.ok("APPEND INBOX ", Lit(b"Subject: a\r\n\r\na\r\n"), plus=True)
    assert appended.untagged == [b"* 4 EXISTS", b"* 1 RECENT"]
    copied = await client.ok("COPY 1:2 INBOX")
    assert copied.untagged == [b"* 6 EXISTS", b"* 3 RECENT"]
    await client.ok("MOVE 1 Corbeille")
    assert (await client.ok("SEARCH RECENT")).search() == [3, 4, 5]
    trash = await client.ok("EXAMINE Corbeille")
    assert b"* 1 RECENT" in trash.untagged, "the moved copy is new in Corbeille, unclaimed"
    assert (await client.ok("FETCH 1 FLAGS")).untagged == [b"* 1 FETCH (FLAGS (\\Recent \\Seen))"]


async def test_expunge_is_held_back_during_fetch_store_search(login):
    first = await login(select="INBOX")
    second = await login(select="INBOX")
    await first.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert (await first.ok("EXPUNGE")).untagged == [b"* 2 EXPUNGE"]
    fetched = await second.ok("FETCH 1:3 (UID FLAGS)")
    assert not fetched.of(b"EXPUNGE")
    assert sorted(fetched.fetched()) == [1, 2, 3], "the client still knows message 2"
    stored = await second.ok("STORE 1 +FLAGS (\\Answered)")
    assert not stored.of(b"EXPUNGE")
    assert (await second.ok("SEARCH ALL")).search() == [1, 2, 3]
    body = await second.command("FETCH 2 BODY[]")
    assert body.tagged.endswith(
        b" NO [EXPUNGEISSUED] Some of the requested messages no longer exist"
    ), body
    assert not body.of(b"EXPUNGE")
    noop = await second.ok("NOOP")
    assert noop.untagged == [b"* 2 EXPUNGE"]
    assert (await second.ok("FETCH 1:* (UID)")).untagged == [
        b"* 1 FETCH (UID 1)",
        b"* 2 FETCH (UID 3)",
    ]


async def test_uid_commands_may_announce_expunges(login):
    first = await login(select="INBOX")
    second = await login(select="INBOX")
    await first.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await first.ok("EXPUNGE")
    reply = await second.ok("UID FETCH 1:* (UID)")
    # data first, with the numbers the client knows, then the EXPUNGE (RFC 3501 §7.4.1)
    assert reply.untagged == [
        b"* 1 FETCH (UID 1)",
        b"* 2 FETCH (UID 2)",
        b"* 3 FETCH (UID 3)",
        b"* 1 EXPUNGE",
    ]
    assert (await second.ok("FETCH 1 UID")).untagged == [b"* 1 FETCH (UID 2)"]


async def test_other_sessions_changes_reach_a_session_at_noop(login):
    first = await login(select="INBOX")
    second = await login(select="INBOX")
    await first.ok("STORE 1 +FLAGS ($Rappel)")
    noop = await second.ok("NOOP")
    assert noop.untagged == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Rappel)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Rappel \\*)]"
        b" flags permitted",
        b"* 1 FETCH (FLAGS ($Rappel \\Seen))",
    ]
    await first.ok("APPEND INBOX ", Lit(b"Subject: new\r\n\r\nnew\r\n"), plus=True)
    # the appending session heard of it first (its APPEND's reply): \Recent is its own
    assert (await second.ok("NOOP")).untagged == [b"* 4 EXISTS", b"* 0 RECENT"]
    # a silent STORE does not hide what another session changed meanwhile
    await first.ok("STORE 3 +FLAGS.SILENT (\\Answered)")
    silent = await second.ok("STORE 3 +FLAGS.SILENT (\\Seen)")
    assert silent.untagged == [b"* 3 FETCH (FLAGS (\\Answered \\Flagged \\Seen))"]
    assert (await second.ok("NOOP")).untagged == []


async def test_idle_sees_changes_at_once(login):
    first = await login(select="INBOX")
    second = await login(select="INBOX")
    tag = second.tag()
    await second.send(f"{tag} IDLE\r\n".encode())
    assert (await second.line()).startswith(b"+ ")
    await first.ok("APPEND INBOX ", Lit(b"Subject: idle\r\n\r\nidle\r\n"), plus=True)
    assert await second.line(wait=1.0) == b"* 4 EXISTS"
    # \Recent goes to whichever session hears of it first: this one or the appender
    assert re.fullmatch(rb"\* [01] RECENT", await second.line(wait=1.0))
    await first.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    assert await second.line(wait=1.0) == b"* 1 FETCH (FLAGS (\\Flagged \\Seen))"
    await first.ok("STORE 4 +FLAGS.SILENT (\\Deleted)")
    await first.ok("EXPUNGE")
    lines = [await second.line(wait=1.0)]
    if lines[0].startswith(b"* 4 FETCH"):  # the \Deleted flag may be seen before the expunge
        lines.append(await second.line(wait=1.0))
    assert lines[-1] == b"* 4 EXPUNGE"
    await asyncio.sleep(0.05)
    await second.send(b"DONE\r\n")  # a packet of its own
    assert await second.line() == f"{tag} OK IDLE terminated".encode()
    assert (await second.ok("FETCH 1:* UID")).untagged == [
        b"* 1 FETCH (UID 1)",
        b"* 2 FETCH (UID 2)",
        b"* 3 FETCH (UID 3)",
    ]


async def test_idle_done_in_the_same_packet_and_a_wrong_line(login):
    client = await login(select="INBOX")
    await client.send(b"i1 IDLE\r\nDONE\r\ni2 NOOP\r\n")
    assert (await client.line()).startswith(b"+ ")
    assert await client.line() == b"i1 OK IDLE terminated"
    assert await client.line() == b"i2 OK NOOP completed"
    await client.send(b"i3 IDLE\r\n")
    assert (await client.line()).startswith(b"+ ")
    await client.send(b"i4 NOOP\r\n")
    assert await client.line() == b"i3 BAD expected DONE"
    assert (await client.ok("NOOP")).status == "OK"


@pytest.mark.parametrize("recreate", [False, True])
async def test_deleting_the_folder_another_session_selected_ends_it(login, recreate: bool):
    """Its numbers mean nothing any more, even when a folder of the same name (another
    UIDVALIDITY) replaces it: Dovecot says BYE too."""
    first = await login()
    await first.ok("CREATE Temporaire")
    second = await login(select="Temporaire")
    await first.ok("DELETE Temporaire")
    if recreate:
        await first.ok("CREATE Temporaire")
    tag = second.tag()
    await second.send(f"{tag} NOOP\r\n".encode())
    rest = await second.until_closed()
    assert rest == b"* BYE selected mailbox was deleted, have to disconnect\r\n"


class SeqMap:
    """What a client knows: sequence number -> UID, maintained from untagged responses only
    (EXISTS, EXPUNGE, FETCH ... UID), with every response checked against it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.uids: list[int | None] = []
        self.expunges = 0

    def feed(self, line: bytes) -> None:
        match = re.match(rb"\* (\d+) (EXISTS|EXPUNGE|FETCH)\b(.*)", line, re.DOTALL)
        if match is None:
            return
        number, kind = int(match.group(1)), match.group(2)
        if kind == b"EXISTS":
            assert number >= len(self.uids), f"{self.name}: EXISTS shrank: {line!r}"
            self.uids += [None] * (number - len(self.uids))
            return
        assert 1 <= number <= len(self.uids), f"{self.name}: no message {number}: {line!r}"
        if kind == b"EXPUNGE":
            del self.uids[number - 1]
            self.expunges += 1
            return
        uid_match = re.search(rb"\bUID (\d+)", match.group(3))
        if uid_match is None:
            return
        uid = int(uid_match.group(1))
        known = self.uids[number - 1]
        assert known in (None, uid), f"{self.name}: {number} was UID {known}, now {line!r}"
        self.uids[number - 1] = uid
        known_uids = [u for u in self.uids if u is not None]
        assert known_uids == sorted(set(known_uids)), f"{self.name}: UIDs out of order"


@dataclass
class Model:
    client: Raw
    seqs: SeqMap
    rng: random.Random
    log: list[str] = field(default_factory=list)

    async def run(self, *parts: str | Lit, plus: bool = False) -> Reply:
        self.log.append(" ".join(p if isinstance(p, str) else "<literal>" for p in parts))
        return await self.client.command(*parts, plus=plus)

    def seq(self) -> int | None:
        return self.rng.randint(1, len(self.seqs.uids)) if self.seqs.uids else None


async def a_step(a: Model, counter: itertools.count[int]) -> None:
    """Session A changes the mailbox."""
    choice = a.rng.choice(["append", "append", "expunge", "uid-expunge", "flags", "move", "copy"])
    seq = a.seq()
    if choice == "append" or seq is None:
        body = b"Subject: message %d\r\n\r\ntext\r\n" % next(counter)
        assert (await a.run("APPEND INBOX ", Lit(body), plus=True)).status == "OK"
    elif choice == "expunge":
        await a.run(f"STORE {seq} +FLAGS.SILENT (\\Deleted)")
        assert (await a.run("EXPUNGE")).status == "OK"
    elif choice == "uid-expunge":
        await a.run(f"STORE {seq} +FLAGS.SILENT (\\Deleted)")
        uid = a.seqs.uids[seq - 1]
        if uid is not None:
            assert (await a.run(f"UID EXPUNGE {uid}")).status == "OK"
    elif choice == "flags":
        flag = a.rng.choice(["\\Flagged", "\\Seen", "$Suivi", "$Urgent"])
        sign = a.rng.choice("+-")
        assert (await a.run(f"STORE {seq}:* {sign}FLAGS ({flag})")).status == "OK"
    elif choice == "move":
        assert (await a.run(f"MOVE {seq} Corbeille")).status == "OK"
    else:
        assert (await a.run(f"COPY {seq} INBOX")).status == "OK"


async def b_step(b: Model) -> None:
    """Session B reads and writes; EXPUNGE must never come during FETCH/STORE/SEARCH."""
    choice = b.rng.choice(["noop", "fetch", "body", "store", "search", "uid", "idle", "check"])
    seq = b.seq()
    if choice in ("fetch", "body", "store", "search") and seq is not None:
        command = {
            "fetch": "FETCH 1:* (UID FLAGS)",
            "body": f"FETCH {seq} (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
            "store": f"STORE {seq} +FLAGS ($Lu)",
            "search": "SEARCH ALL",
        }[choice]
        known = len(b.seqs.uids)
        reply = await b.run(command)
        assert reply.status in ("OK", "NO"), reply
        assert not reply.of(b"EXPUNGE"), f"EXPUNGE during {command}: {reply}"
        if reply.status == "NO":
            assert b"[EXPUNGEISSUED]" in reply.tagged, reply
        if choice == "search":
            assert reply.search() == list(range(1, known + 1))
    elif choice == "uid":
        reply = await b.run("UID FETCH 1:* (FLAGS)")
        assert reply.status == "OK"
    elif choice == "idle":
        tag = b.client.tag()
        await b.client.send(f"{tag} IDLE\r\n".encode())
        untagged: list[bytes] = []
        while not (line := await b.client.line()).startswith(b"+ "):
            untagged.append(line)
        await asyncio.sleep(b.rng.choice([0, 0.01, 0.03]))
        await b.client.send(b"DONE\r\n")
        assert (await b.client.collect(tag, untagged)).status == "OK"
    else:
        assert (await b.run("CHECK" if choice == "check" else "NOOP")).status == "OK"


async def check_view(b: Model) -> None:
    """UID FETCH and FETCH of every message agree with B's model (the model raises on the
    first response that contradicts it); then every number's UID is known."""
    await b.run("UID FETCH 1:* (UID)")
    if b.seqs.uids:
        await b.run("FETCH 1:* (UID)")
    assert None not in b.seqs.uids


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_randomized_interleaving_keeps_numbers_and_uids_in_step(
    mock: MockOperator, login, bal: str, seed: int
):
    rng = random.Random(seed)
    a = Model(await login(select="INBOX"), SeqMap("A"), random.Random(seed * 7919))
    b = Model(await login(select="INBOX"), SeqMap("B"), random.Random(seed * 104729))
    for model in (a, b):
        model.client.observer = model.seqs.feed
        model.seqs.uids = [1, 2, 3]
    counter = itertools.count(1)
    try:
        for _ in range(60):
            mode = rng.choice(["a", "b", "both", "both"])
            if mode == "a":
                await a_step(a, counter)
            elif mode == "b":
                await b_step(b)
            else:  # A and B at once: A's changes land in the middle of B's command
                await asyncio.gather(a_step(a, counter), b_step(b))
            # not after every step: unannounced expunges must build up in B's session
            if rng.random() < 0.3:
                await check_view(b)
            await check_view(a)
        await b.run("NOOP")
        await a.run("NOOP")
        await check_view(b)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nA: {a.log[-6:]}\nB: {b.log[-6:]}") from None
    assert mock.platform is not None
    state = await mock.platform.store(bal).folder_state("INBOX")
    truth = [m.uid for m in state.messages]
    assert b.seqs.uids == truth
    assert a.seqs.uids == truth
    assert b.seqs.expunges > 0 or a.seqs.expunges > 0, "the run expunged something"


# -- limits and robustness -------------------------------------------------------------------


async def test_a_line_over_the_limit_gets_bye_and_close(connect, login):
    client = await connect()
    await client.send(b"a NOOP " + b"x" * (70 * 1024))
    rest = await client.until_closed()
    assert rest == b"* BYE line too long\r\n"
    idling = await login(select="INBOX")
    await idling.send(b"i IDLE\r\n")
    assert (await idling.line()).startswith(b"+ ")
    await idling.send(b"x" * (70 * 1024))  # in place of DONE
    assert await idling.until_closed() == b"* BYE line too long\r\n"


async def test_a_literal_too_big_is_refused_and_the_connection_goes_on(login):
    client = await login()
    await client.send(b"a APPEND INBOX {60000000}\r\n")
    assert await client.line() == b"a BAD literal too large", "no '+' for it"
    await client.send(b"b SEARCH SUBJECT {70000}\r\n")
    assert (await client.line()).startswith(b"b BAD ")
    assert (await client.ok("NOOP")).status == "OK"
    # after login a LITERAL+ message larger than the pre-login limit is fine
    big = b"Subject: big\r\n\r\n" + b"x" * 30000 + b"\r\n"
    assert (await client.ok("APPEND INBOX ", Lit(big), plus=True)).status == "OK"


async def test_unauthenticated_literals_are_capped(connect):
    client = await connect()
    await client.send(b"a LOGIN {20000}\r\n")
    reply = await client.line()
    assert reply.startswith((b"a BAD ", b"a NO ")), reply
    assert (await client.ok("CAPABILITY")).status == "OK", "the connection goes on"
    small = await client.command("LOGIN ", Lit(b"nobody"), " ", Lit(b"x" * 100))
    assert small.status == "NO", "a small literal is accepted (and the login fails)"
    other = await connect()
    await other.send(b"b LOGIN {20000+}\r\n" + b"x" * 20000 + b" y\r\n")
    rest = await other.until_closed()
    assert rest.startswith(b"* BYE "), rest[:80]
    assert b"b OK" not in rest


async def test_garbage_gets_bad_never_a_crash(connect, caplog: pytest.LogCaptureFixture):
    client = await connect()
    rng = random.Random(20261102)
    samples = [
        b"\x00\xff\xfe garbage",
        b"a",
        b"a ",
        b"* NOOP",
        b"+ NOOP",
        b"a FETCH",
        b"a LOGIN",
        b'a LOGIN "unterminated',
        b"a SELECT (",
        b"a UID",
        b"\xc3\xa9 NOOP",
        b"a NOOP \x01",
        b"a LOGIN {5+}",
    ]
    samples += [
        bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 60))) for _ in range(150)
    ]
    caplog.set_level(logging.INFO, logger="gateway.imap")
    for index, sample in enumerate(samples, 1):
        line = sample.replace(b"\r", b"").replace(b"\n", b"").rstrip(b"}") or b"x"
        await client.send(line + b"\r\n")
        answer = await client.line()
        assert answer.split(b" ", 2)[1] in (b"BAD", b"NO", b"OK"), (line, answer)
        if answer.startswith(b"+"):
            raise AssertionError(f"{line!r} got a continuation")
        if index % 50 == 0:  # no client needs more than 64 commands before login
            assert (await client.ok("NOOP")).status == "OK"
            client = await connect()
    assert (await client.ok("NOOP")).status == "OK"
    assert not any("crash" in record.getMessage() for record in caplog.records)


async def test_pipelined_commands_are_answered_in_order(login):
    client = await login()
    await client.send(
        b"p1 NOOP\r\np2 SELECT INBOX\r\np3 FETCH 1 (UID)\r\np4 STORE 2 +FLAGS (\\Seen)\r\n"
        b"p5 SEARCH SEEN\r\np6 LOGOUT\r\n"
    )
    data = await client.until_closed()
    tags = re.findall(rb"^(p\d) (?:OK|NO|BAD)", data, re.MULTILINE)
    assert tags == [b"p1", b"p2", b"p3", b"p4", b"p5", b"p6"]
    assert b"* SEARCH 1 2\r\np5 OK" in data


async def test_starttls_drops_commands_pipelined_in_plaintext(mock: MockOperator, connect):
    assert mock.tls_cert is not None
    client = await connect()
    await client.send(b"s1 STARTTLS\r\ns2 CAPABILITY\r\ns3 LOGIN x y\r\n")
    assert await client.line() == b"s1 OK begin TLS negotiation now"
    context = ssl.create_default_context(cafile=str(mock.tls_cert))
    await client.writer.start_tls(context, server_hostname="127.0.0.1")
    await client.send(b"s4 CAPABILITY\r\n")
    lines = [await client.line()]
    while not lines[-1].startswith(b"s4 "):
        lines.append(await client.line())
    assert not any(line.startswith((b"s2 ", b"s3 ")) for line in lines), lines
    assert lines[-1] == b"s4 OK CAPABILITY completed"
    caps = lines[0].split()
    assert b"STARTTLS" not in caps
    assert b"AUTH=PLAIN" in caps
    assert (await client.command("STARTTLS")).status == "BAD", "TLS is already on"


# -- unit checks of pieces the socket tests cannot reach ----------------------------------------


async def test_internal_date_format():
    paris = dt.timezone(dt.timedelta(hours=1))
    assert internal_date(dt.datetime(2026, 11, 2, 9, 15, tzinfo=paris)) == (
        "02-Nov-2026 09:15:00 +0100"
    )
    minus = dt.timezone(-dt.timedelta(hours=3, minutes=30))
    assert internal_date(dt.datetime(2027, 1, 14, 23, 5, 9, tzinfo=minus)) == (
        "14-Jan-2027 23:05:09 -0330"
    )
    assert internal_date(dt.datetime(2026, 5, 1, 0, 0)) == "01-May-2026 00:00:00 +0000"
    assert DATE_TIME.fullmatch(b'"%s"' % internal_date(dt.datetime(2026, 3, 9)).encode())


async def test_internal_date_matches_dovecot(login):
    """Dovecot 2.3 writes the day with two digits ("02-Nov-..."), one of the two forms of
    RFC 3501 date-day-fixed: we answer the same bytes for the same APPEND date."""
    require_peer(dovecot_available(), "Dovecot is not installed")
    when = '" 2-Nov-2026 09:15:00 +0100"'

    def dovecot_internaldate() -> bytes:
        import imaplib

        with running_dovecot() as server:
            client = imaplib.IMAP4(server.host, server.port, timeout=10)
            client.login(server.user, server.password)
            client.append("INBOX", None, when, b"Subject: x\r\n\r\nx\r\n")
            client.select("INBOX")
            _, data = client.fetch("1", "(INTERNALDATE)")
            client.logout()
        return data[0]  # type: ignore[return-value]

    theirs = DATE_TIME.search(await asyncio.to_thread(dovecot_internaldate))
    client = await login()
    await client.ok(f"APPEND Brouillons {when} ", Lit(b"Subject: x\r\n\r\nx\r\n"), plus=True)
    await client.ok("SELECT Brouillons")
    (line,) = (await client.ok("FETCH 1 (INTERNALDATE)")).untagged
    ours = DATE_TIME.search(line)
    assert theirs is not None
    assert ours is not None
    assert ours.group()[1:4] == theirs.group()[1:4] == b"02-", "the day as Dovecot writes it"

    def instant(match: re.Match[bytes]) -> dt.datetime:
        return dt.datetime.strptime(match.group().decode().strip('"'), "%d-%b-%Y %H:%M:%S %z")

    assert instant(ours) == instant(theirs)


class _ReadOnlyAuthenticator:
    """Grants a BAL of the mock with chosen rights (as a delegation would)."""

    def __init__(self, mock: MockOperator, bal: str, rights: frozenset[str]) -> None:
        self.mock, self.bal, self.rights = mock, bal, rights

    async def authenticate(self, credentials: object, connection: ConnectionInfo) -> SessionGrant:
        assert self.mock.platform is not None
        if self.rights is None:
            raise AuthFailed("authentication", "no")
        return SessionGrant(self.mock.platform.store(self.bal), self.rights, "delegate")


async def delegated_session(
    mock: MockOperator, bal: str, rights: set[str]
) -> tuple[ImapSession, FakeChannel]:
    assert mock.platform is not None
    hub = mock.platform.hub
    config = EngineConfig(auth_failure_delay=0, hub_version=hub.version, hub_wait=hub.wait)
    channel = FakeChannel()
    info = ConnectionInfo(peer="127.0.0.1", secure=False, loopback=True, tls_available=False)
    authenticator = _ReadOnlyAuthenticator(mock, bal, frozenset(rights))
    session = ImapSession(config, authenticator, channel, info)  # type: ignore[arg-type]
    token = base64.b64encode(b"\0user\0token").decode()
    await session.execute(parse(f"a AUTHENTICATE PLAIN {token}\r\n".encode()))
    assert channel.take()[0].startswith(b"a OK")
    return session, channel


async def test_rights_limit_what_a_delegate_may_change(mock: MockOperator, bal: str):
    reader, channel = await delegated_session(mock, bal, {"read"})
    await reader.execute(parse(b"s SELECT INBOX\r\n"))
    lines = channel.take()
    assert b"* OK [PERMANENTFLAGS (\\Seen)] flags permitted" in lines
    assert lines[-1].startswith(b"s OK [READ-ONLY]")  # \Seen aside: PERMANENTFLAGS
    for command, expected in [
        (b"t1 STORE 2 +FLAGS (\\Seen)\r\n", b"t1 OK"),
        (b"t2 STORE 2 FLAGS (\\Seen)\r\n", b"t2 NO [NOPERM]"),  # would clear \Flagged & co
        (b"t3 STORE 2 +FLAGS (\\Flagged)\r\n", b"t3 NO [NOPERM]"),
        (b"t4 EXPUNGE\r\n", b"t4 NO [NOPERM]"),
        (b"t5 CLOSE\r\n", b"t5 OK"),
    ]:
        await reader.execute(parse(command))
        assert channel.take()[-1].startswith(expected), command
    nothing, channel = await delegated_session(mock, bal, set())
    await nothing.execute(parse(b"s SELECT INBOX\r\n"))
    lines = channel.take()
    assert b"* OK [PERMANENTFLAGS ()] flags permitted" in lines
    assert lines[-1].startswith(b"s OK [READ-ONLY]")


async def test_no_change_hub_means_every_command_rereads(mock: MockOperator, bal: str, login):
    """A store without a ChangeHub: the session cannot be told, so it re-reads each time."""
    assert mock.imap is not None
    assert mock.platform is not None
    channel = FakeChannel()
    info = ConnectionInfo(peer="127.0.0.1", secure=False, loopback=True, tls_available=False)
    store = mock.platform.store(bal)
    grant = SessionGrant(store, frozenset({"read", "write"}), "x")

    class Fixed:
        async def authenticate(self, credentials: object, connection: object) -> SessionGrant:
            return grant

    session = ImapSession(EngineConfig(auth_failure_delay=0), Fixed(), channel, info)  # type: ignore[arg-type]
    token = base64.b64encode(b"\0user\0token").decode()
    await session.execute(parse(f"a AUTHENTICATE PLAIN {token}\r\n".encode()))
    await session.execute(parse(b"b SELECT INBOX\r\n"))
    channel.take()
    other = await login(select="INBOX")
    await other.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    await other.ok("EXPUNGE")
    await session.execute(parse(b"c NOOP\r\n"))
    assert channel.take() == [b"* 2 EXPUNGE", b"c OK NOOP completed"]


async def test_nul_bytes_never_reach_a_literal(mock: MockOperator, login, bal: str):
    """RFC 3501 literals are CHAR8 (no NUL): a stored NUL goes out as 0x80, as Dovecot sends it."""
    assert mock.platform is not None
    await mock.platform.deliver(bal, b"Subject: nul\r\n\r\nA\x00B\r\n")
    client = await login(select="INBOX")
    reply = await client.ok("FETCH 4 (BODY.PEEK[TEXT])")
    (line,) = reply.of(b"FETCH")
    assert b"{5}\r\nA\x80B\r\n" in line
    assert b"\x00" not in line
