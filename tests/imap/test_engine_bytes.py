"""The IMAP engine on exact bytes, without sockets: client bytes through `CommandParser`
into `ImapSession`, served from a `MemoryStore` (tests/support/engine.py).

Where an RFC fixes the reply, the whole line is asserted. The store is seeded with three
messages in INBOX (UIDs 1-3: \\Seen, none, \\Flagged) that a session saw before the test's
(no \\Recent left on them), unless a test says otherwise; INBOX's UIDVALIDITY is 1000,
Corbeille's 1003.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.imap.session import ALL_RIGHTS
from tests.support.engine import EngineClient, EngineServer
from tests.support.memory_store import MemoryStore

M1 = b"From: Claire <claire@a.fr>\r\nSubject: un\r\n\r\nPremier.\r\n"
M2 = b"From: Jean <jean@a.fr>\r\nSubject: deux\r\n\r\nSecond message.\r\n"
M3 = b"From: Luc <luc@a.fr>\r\nSubject: trois\r\n\r\nTroisieme.\r\n"
NEW = b"Subject: nouveau\r\n\r\nArrive.\r\n"
FLAGS = b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)"
ALL_PERMANENT = (
    b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] flags permitted"
)
READ = frozenset({"read"})


def seeded(*, claimed: bool = True) -> EngineServer:
    store = MemoryStore()
    store.deliver(M1, flags=["\\Seen"])
    store.deliver(M2)
    store.deliver(M3, flags=["\\Flagged"])
    server = EngineServer(store)
    if claimed:
        server.config.recent.claim(store.address, "INBOX", 1000, 3)
    return server


@pytest.fixture
def server() -> EngineServer:
    return seeded()


@pytest.fixture
def store(server: EngineServer) -> MemoryStore:
    return server.store


async def selected(server: EngineServer, rights: frozenset[str] = ALL_RIGHTS) -> EngineClient:
    """A new session of `server` with INBOX selected."""
    client = await server.client(rights)
    await client.select()
    return client


# -- SELECT / EXAMINE -------------------------------------------------------------------------


async def test_select_answers_in_rfc_order():
    server = seeded(claimed=False)
    client = await server.client()
    assert await client.lines(b"S SELECT INBOX\r\n") == [
        FLAGS,
        ALL_PERMANENT,
        b"* 3 EXISTS",
        b"* 3 RECENT",  # the first session to see them
        b"* OK [UNSEEN 2] first unseen",
        b"* OK [UIDVALIDITY 1000] UIDs valid",
        b"* OK [UIDNEXT 4] predicted next UID",
        b"S OK [READ-WRITE] SELECT completed",
    ]
    other = await server.client()
    assert b"* 0 RECENT" in await other.lines(b"S SELECT INBOX\r\n"), "claimed already"


async def test_examine_is_read_only_and_claims_nothing():
    server = seeded(claimed=False)
    client = await server.client()
    assert await client.lines(b"E EXAMINE INBOX\r\n") == [
        FLAGS,
        b"* OK [PERMANENTFLAGS ()] flags permitted",
        b"* 3 EXISTS",
        b"* 3 RECENT",
        b"* OK [UNSEEN 2] first unseen",
        b"* OK [UIDVALIDITY 1000] UIDs valid",
        b"* OK [UIDNEXT 4] predicted next UID",
        b"E OK [READ-ONLY] EXAMINE completed",
    ]
    assert await client.lines(b"t STORE 2 +FLAGS (\\Flagged)\r\n") == [
        b"t NO [READ-ONLY] mailbox is read-only"
    ]
    reply = await client.lines(b"f FETCH 2 BODY[TEXT]\r\n")
    assert reply == [
        b"* 2 FETCH (BODY[TEXT] {17}",
        b"Second message.",
        b")",
        b"f OK FETCH completed",
    ]
    assert server.store.flags(2) == frozenset(), "EXAMINE never sets \\Seen"
    selecting = await server.client()
    assert b"* 3 RECENT" in await selecting.lines(b"S SELECT INBOX\r\n"), "still unclaimed"


async def test_a_delegate_who_may_only_read_leaves_recent_to_the_holder():
    """SELECT without the write right is READ-ONLY: like EXAMINE it takes no \\Recent, so
    a secretary reading first does not hide the holder's new mail (RFC 3501 §6.3.2)."""
    server = seeded(claimed=False)
    reader = await server.client(frozenset({"read"}))
    answer = await reader.lines(b"S SELECT INBOX\r\n")
    assert b"* 3 RECENT" in answer
    assert answer[-1] == b"S OK [READ-ONLY] SELECT completed"
    fetched = await reader.lines(b"f FETCH 1 (FLAGS)\r\n")
    assert b"* 1 FETCH (FLAGS (\\Recent \\Seen))" in fetched
    holder = await server.client()
    assert b"* 3 RECENT" in await holder.lines(b"S SELECT INBOX\r\n"), "still the holder's"
    later = await server.client(frozenset({"read"}))
    assert b"* 0 RECENT" in await later.lines(b"S SELECT INBOX\r\n"), "the holder took them"


async def test_select_of_an_empty_folder_and_of_none(server: EngineServer):
    client = await server.client()
    assert await client.lines(b"S SELECT Corbeille\r\n") == [
        FLAGS,
        ALL_PERMANENT,
        b"* 0 EXISTS",
        b"* 0 RECENT",
        b"* OK [UIDVALIDITY 1003] UIDs valid",
        b"* OK [UIDNEXT 1] predicted next UID",
        b"S OK [READ-WRITE] SELECT completed",
    ]
    assert await client.lines(b"T SELECT Nulle-part\r\n") == [
        b"* OK [CLOSED] previous mailbox closed",
        b"T NO [NONEXISTENT] no folder Nulle-part",
    ]
    assert await client.lines(b"f FETCH 1 FLAGS\r\n") == [b"f BAD no mailbox selected"]


# -- FETCH ------------------------------------------------------------------------------------


async def test_fetch_metadata(server: EngineServer):
    client = await selected(server)
    reply = await client.lines(b"f FETCH 1:3 (UID FLAGS INTERNALDATE RFC822.SIZE)\r\n")
    date = b'INTERNALDATE "05-Mar-2024 09:30:00 +0100"'
    assert reply == [
        b"* 1 FETCH (UID 1 FLAGS (\\Seen) " + date + b" RFC822.SIZE %d)" % len(M1),
        b"* 2 FETCH (UID 2 FLAGS () " + date + b" RFC822.SIZE %d)" % len(M2),
        b"* 3 FETCH (UID 3 FLAGS (\\Flagged) " + date + b" RFC822.SIZE %d)" % len(M3),
        b"f OK FETCH completed",
    ]
    assert await client.lines(b"u UID FETCH 2:* FLAGS\r\n") == [
        b"* 2 FETCH (FLAGS () UID 2)",  # UID FETCH always carries UID (the parser adds it)
        b"* 3 FETCH (FLAGS (\\Flagged) UID 3)",
        b"u OK FETCH completed",
    ]
    assert await client.lines(b"b FETCH 4 FLAGS\r\n") == [b"b BAD message number out of range"]
    assert await client.lines(b"v UID FETCH 9 FLAGS\r\n") == [b"v OK FETCH completed"]


async def test_fetch_body_sets_seen_and_says_so(server: EngineServer, store: MemoryStore):
    client = await selected(server)
    reply = await client.send(b"f FETCH 2 BODY[]\r\n")
    assert reply == (
        b"* 2 FETCH (BODY[] {%d}\r\n" % len(M2)
        + M2
        + b" FLAGS (\\Seen))\r\nf OK FETCH completed\r\n"  # RFC 3501 §6.4.5
    )
    assert store.flags(2) == frozenset({"\\Seen"})
    again = await client.send(b"g FETCH 2 BODY[]\r\n")
    assert again == b"* 2 FETCH (BODY[] {%d}\r\n" % len(M2) + M2 + b")\r\ng OK FETCH completed\r\n"


async def test_body_peek_and_partials_leave_seen_alone(server: EngineServer, store: MemoryStore):
    client = await selected(server)
    assert await client.send(b"p FETCH 2 (BODY.PEEK[]<0.5> BODY.PEEK[TEXT]<7.100>)\r\n") == (
        b"* 2 FETCH (BODY[]<0> {5}\r\nFrom: BODY[TEXT]<7> {10}\r\nmessage.\r\n)\r\n"
        b"p OK FETCH completed\r\n"
    )
    header = await client.send(b"h FETCH 2 BODY.PEEK[HEADER.FIELDS (subject)]\r\n")
    assert header == (
        b"* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {17}\r\nSubject: deux\r\n\r\n)\r\n"
        b"h OK FETCH completed\r\n"
    )
    beyond = await client.send(b"b FETCH 2 BODY.PEEK[]<500.10>\r\n")
    assert beyond == b"* 2 FETCH (BODY[]<500> {0}\r\n)\r\nb OK FETCH completed\r\n"
    assert store.flags(2) == frozenset()
    assert await client.lines(b"f FETCH 2 FLAGS\r\n") == [
        b"* 2 FETCH (FLAGS ())",
        b"f OK FETCH completed",
    ]


async def test_partial_body_sets_seen(server: EngineServer, store: MemoryStore):
    client = await selected(server)
    assert await client.send(b"p FETCH 2 BODY[TEXT]<0.6>\r\n") == (
        b"* 2 FETCH (BODY[TEXT]<0> {6}\r\nSecond FLAGS (\\Seen))\r\np OK FETCH completed\r\n"
    )
    assert store.flags(2) == frozenset({"\\Seen"})


# -- STORE ------------------------------------------------------------------------------------


async def test_store_answers_the_new_flags(server: EngineServer, store: MemoryStore):
    client = await selected(server)
    assert await client.lines(b"s STORE 2:3 +FLAGS (\\Answered)\r\n") == [
        b"* 2 FETCH (FLAGS (\\Answered))",
        b"* 3 FETCH (FLAGS (\\Answered \\Flagged))",
        b"s OK STORE completed",
    ]
    assert await client.lines(b"t STORE 3 -FLAGS (\\Flagged)\r\n") == [
        b"* 3 FETCH (FLAGS (\\Answered))",
        b"t OK STORE completed",
    ]
    assert await client.lines(b"u UID STORE 1 FLAGS (\\Draft)\r\n") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Draft))",
        b"u OK STORE completed",
    ]
    assert [store.flags(uid) for uid in (1, 2, 3)] == [
        {"\\Draft"},
        {"\\Answered"},
        {"\\Answered"},
    ]


async def test_store_silent_answers_nothing_but_ok(server: EngineServer, store: MemoryStore):
    client = await selected(server)
    assert await client.lines(b"s STORE 1:* +FLAGS.SILENT (\\Deleted)\r\n") == [
        b"s OK STORE completed"
    ]
    assert all("\\Deleted" in store.flags(uid) for uid in (1, 2, 3))
    assert await client.lines(b"n NOOP\r\n") == [b"n OK NOOP completed"], "nothing to report"


async def test_a_new_keyword_is_announced_before_it_is_shown(server: EngineServer):
    client = await selected(server)
    assert await client.lines(b"k STORE 1 +FLAGS ($Urgent)\r\n") == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Urgent)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Urgent \\*)]"
        b" flags permitted",
        b"* 1 FETCH (FLAGS ($Urgent \\Seen))",
        b"k OK STORE completed",
    ]
    assert await client.lines(b"r STORE 2 +FLAGS (\\Recent)\r\n") == [
        b"r BAD invalid system flag"  # \Recent is the server's to set (RFC 3501 §2.3.2)
    ]


# -- SEARCH -----------------------------------------------------------------------------------


async def test_search_and_uid_search(server: EngineServer):
    client = await selected(server)
    assert await client.lines(b"a SEARCH UNSEEN\r\n") == [b"* SEARCH 2 3", b"a OK SEARCH completed"]
    await client.lines(b"x STORE 1 +FLAGS.SILENT (\\Deleted)\r\ny EXPUNGE\r\n")
    assert await client.lines(b"b UID SEARCH FLAGGED\r\n") == [
        b"* SEARCH 3",
        b"b OK SEARCH completed",
    ]
    assert await client.lines(b"c SEARCH FLAGGED\r\n") == [b"* SEARCH 2", b"c OK SEARCH completed"]
    assert await client.lines(b"d UID SEARCH SUBJECT deux\r\n") == [
        b"* SEARCH 2",
        b"d OK SEARCH completed",
    ]
    assert await client.lines(b"e SEARCH ANSWERED\r\n") == [b"* SEARCH", b"e OK SEARCH completed"]
    assert await client.lines(b"f SEARCH CHARSET KOI8-R ALL\r\n") == [
        b"f NO [BADCHARSET (UTF-8 US-ASCII)] unsupported charset KOI8-R"
    ]


# -- COPY / MOVE ------------------------------------------------------------------------------


async def test_copy_answers_copyuid(server: EngineServer, store: MemoryStore):
    client = await selected(server)
    assert await client.lines(b"c COPY 1:2 Corbeille\r\n") == [
        b"c OK [COPYUID 1003 1:2 1:2] COPY completed"
    ]
    assert await client.lines(b"d UID COPY 3,1 Corbeille\r\n") == [
        b"d OK [COPYUID 1003 1,3 3:4] COPY completed"
    ]
    assert store.uids("Corbeille") == [1, 2, 3, 4]
    assert store.flags(4, "Corbeille") == frozenset({"\\Flagged"}), "flags go along"
    assert store.uids() == [1, 2, 3]
    assert await client.lines(b"e COPY 1 Nulle-part\r\n") == [b"e NO [TRYCREATE] no such folder"]
    assert await client.lines(b"f UID COPY 99 Corbeille\r\n") == [b"f OK nothing to do"]


async def test_move_answers_copyuid_then_expunges(server: EngineServer, store: MemoryStore):
    client = await selected(server)
    assert await client.lines(b"m MOVE 2 Corbeille\r\n") == [
        b"* OK [COPYUID 1003 2 1] moved",  # RFC 6851 §4.3: before the EXPUNGE
        b"* 2 EXPUNGE",
        b"m OK MOVE completed",
    ]
    assert store.uids() == [1, 3]
    assert await client.lines(b"f FETCH 2 UID\r\n") == [
        b"* 2 FETCH (UID 3)",
        b"f OK FETCH completed",
    ]


# -- EXPUNGE ----------------------------------------------------------------------------------


async def test_expunge_renumbers_as_rfc_3501_says():
    """RFC 3501 §7.4.1's example: messages 3, 4, 7 and 11 of 11 go as 3, 3, 5, 8."""
    store = MemoryStore()
    for n in range(11):
        store.deliver(
            b"Subject: %d\r\n\r\n." % n, flags=["\\Deleted"] if n in (2, 3, 6, 10) else []
        )
    server = EngineServer(store)
    client = await selected(server)
    assert await client.lines(b"e EXPUNGE\r\n") == [
        b"* 3 EXPUNGE",
        b"* 3 EXPUNGE",
        b"* 5 EXPUNGE",
        b"* 8 EXPUNGE",
        b"e OK EXPUNGE completed",
    ]
    assert store.uids() == [1, 2, 5, 6, 8, 9, 10]
    reply = await client.lines(b"f FETCH 3:5 UID\r\n")
    assert reply[:3] == [b"* 3 FETCH (UID 5)", b"* 4 FETCH (UID 6)", b"* 5 FETCH (UID 8)"]


async def test_uid_expunge_removes_only_those_named(server: EngineServer, store: MemoryStore):
    client = await selected(server)
    await client.lines(b"s STORE 1:3 +FLAGS.SILENT (\\Deleted)\r\n")
    assert await client.lines(b"u UID EXPUNGE 2\r\n") == [
        b"* 2 EXPUNGE",
        b"u OK EXPUNGE completed",
    ]
    assert store.uids() == [1, 3]
    assert await client.lines(b"c CLOSE\r\n") == [b"c OK CLOSE completed"], "silently"
    assert store.uids() == []


async def test_unselect_expunges_nothing(server: EngineServer, store: MemoryStore):
    client = await selected(server)
    await client.lines(b"s STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
    assert await client.lines(b"u UNSELECT\r\n") == [b"u OK UNSELECT completed"]
    assert store.uids() == [1, 2, 3]


# -- APPEND -----------------------------------------------------------------------------------


async def test_append_answers_appenduid(server: EngineServer, store: MemoryStore):
    client = await selected(server)
    command = b'a APPEND Brouillons (\\Draft) "01-Feb-2024 10:00:00 +0000" {%d}\r\n' % len(NEW)
    assert await client.lines(command) == [b"+ ready for literal data"]
    assert await client.lines(NEW + b"\r\n") == [b"a OK [APPENDUID 1002 1] APPEND completed"]
    assert await client.lines(b"b APPEND INBOX {%d+}\r\n" % len(NEW) + NEW + b"\r\n") == [
        b"* 4 EXISTS",  # the selected folder grew: told before the OK
        b"* 1 RECENT",
        b"b OK [APPENDUID 1000 4] APPEND completed",
    ]
    state = await store.folder_state("Brouillons")
    (draft,) = state.messages
    assert draft.flags == frozenset({"\\Draft"})
    assert draft.internal_date == dt.datetime(2024, 2, 1, 10, 0, tzinfo=dt.UTC)
    assert await client.lines(b"f FETCH 4 FLAGS\r\n") == [
        b"* 4 FETCH (FLAGS (\\Recent))",
        b"f OK FETCH completed",
    ]
    missing = b"c APPEND Nulle-part {%d+}\r\n" % len(NEW) + NEW + b"\r\n"
    assert await client.lines(missing) == [b"c NO [TRYCREATE] no such folder"]


# -- other sessions ---------------------------------------------------------------------------


async def test_noop_hears_what_another_session_did(server: EngineServer, store: MemoryStore):
    watcher = await selected(server)
    actor = await selected(server)
    await actor.lines(b"a STORE 2 +FLAGS.SILENT (\\Deleted)\r\nb EXPUNGE\r\n")
    await actor.lines(b"c STORE 2 +FLAGS.SILENT (\\Answered)\r\n")
    assert await watcher.lines(b"n NOOP\r\n") == [
        b"* 2 EXPUNGE",
        b"* 2 FETCH (FLAGS (\\Answered \\Flagged))",
        b"n OK NOOP completed",
    ]
    store.deliver(NEW)
    assert await watcher.lines(b"o NOOP\r\n") == [
        b"* 3 EXISTS",
        b"* 1 RECENT",
        b"o OK NOOP completed",
    ]
    assert await actor.lines(b"p NOOP\r\n") == [
        b"* 3 EXISTS",
        b"* 0 RECENT",  # the watcher claimed it first
        b"p OK NOOP completed",
    ]


async def test_no_expunge_during_fetch_but_expungeissued(server: EngineServer):
    """RFC 3501 §7.4.1 and RFC 2180 §4.1.2: FETCH never reports an expunge (numbers would
    shift under the client); a message gone is NO [EXPUNGEISSUED] until NOOP says so."""
    watcher = await selected(server)
    actor = await selected(server)
    await actor.lines(b"a STORE 2 +FLAGS.SILENT (\\Deleted)\r\nb EXPUNGE\r\n")
    assert await watcher.lines(b"f FETCH 2:3 (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n") == [
        b"* 3 FETCH (UID 3 BODY[HEADER.FIELDS (SUBJECT)] {18}",
        b"Subject: trois",
        b"",
        b")",
        b"f NO [EXPUNGEISSUED] Some of the requested messages no longer exist",
    ]
    assert await watcher.lines(b"g FETCH 2 FLAGS\r\n") == [
        b"* 2 FETCH (FLAGS ())",  # what the view still knows of it
        b"g OK FETCH completed",
    ]
    assert await watcher.lines(b"n NOOP\r\n") == [b"* 2 EXPUNGE", b"n OK NOOP completed"]


async def test_idle_reports_a_delivery_then_done(server: EngineServer, store: MemoryStore):
    client = await selected(server)
    idling = asyncio.create_task(client.send(b"i IDLE\r\n"))
    await client.channel.written(b"+ idling\r\n")
    store.deliver(NEW)
    await client.channel.written(b"* 4 EXISTS\r\n* 1 RECENT\r\n")
    client.channel.feed(b"DONE\r\n")
    assert await idling == b"+ idling\r\n* 4 EXISTS\r\n* 1 RECENT\r\ni OK IDLE terminated\r\n"


# -- rights and refusals ----------------------------------------------------------------------


async def test_a_read_only_grant_may_mark_read_and_nothing_else(
    server: EngineServer, store: MemoryStore
):
    reader = await server.client(READ)
    reply = await reader.lines(b"S SELECT INBOX\r\n")
    assert reply[1] == b"* OK [PERMANENTFLAGS (\\Seen)] flags permitted"
    assert reply[-1] == b"S OK [READ-ONLY] SELECT completed"
    assert await reader.lines(b"a STORE 2 +FLAGS (\\Seen)\r\n") == [
        b"* 2 FETCH (FLAGS (\\Seen))",
        b"a OK STORE completed",
    ]
    for command in (
        b"b STORE 2 +FLAGS (\\Flagged)",
        b"b STORE 2 FLAGS (\\Seen)",  # FLAGS replaces: it would clear the others
        b"b EXPUNGE",
        b"b COPY 1 Corbeille",
        b"b CREATE Dossier",
        b"b APPEND INBOX {1+}\r\nx",
    ):
        assert await reader.lines(command + b"\r\n") == [
            b"b NO [NOPERM] the write right is needed for this"
        ], command
    assert store.flags(2) == frozenset({"\\Seen"})
    assert store.uids("Corbeille") == []
    nobody = await server.client(frozenset())
    reply = await nobody.lines(b"S SELECT INBOX\r\n")
    assert reply[1] == b"* OK [PERMANENTFLAGS ()] flags permitted"
    assert reply[-1] == b"S OK [READ-ONLY] SELECT completed"


async def test_store_errors_carry_their_codes(server: EngineServer, store: MemoryStore):
    client = await server.client()
    assert await client.lines(b"a CREATE Corbeille\r\n") == [
        b"a NO [ALREADYEXISTS] folder Corbeille already exists"
    ]
    assert await client.lines(b"b DELETE INBOX\r\n") == [b"b NO [CANNOT] INBOX cannot be deleted"]
    assert await client.lines(b"c DELETE Envoy&AOk-s\r\n") == [
        b"c NO [CANNOT] Envoyes is a special-use folder"  # resp-text is 7-bit
    ]
    await client.lines(b"d CREATE Dossiers/Patients\r\n")
    assert await client.lines(b"e DELETE Dossiers\r\n") == [
        b"e NO [INUSE] Dossiers has sub-folders"
    ]
    store.down = True
    assert await client.lines(b"f STATUS INBOX (MESSAGES)\r\n") == [
        b"f NO [UNAVAILABLE] memory store switched off"
    ]


# -- folders ----------------------------------------------------------------------------------


async def test_list_lsub_and_status(server: EngineServer):
    client = await server.client()
    await client.lines(b"a CREATE Dossiers/Patients\r\nb SUBSCRIBE Dossiers/Patients\r\n")
    assert await client.lines(b'l LIST "" *\r\n') == [
        b'* LIST (\\HasNoChildren) "/" "INBOX"',
        b'* LIST (\\HasNoChildren \\Sent) "/" "Envoy&AOk-s"',
        b'* LIST (\\HasNoChildren \\Drafts) "/" "Brouillons"',
        b'* LIST (\\HasNoChildren \\Trash) "/" "Corbeille"',
        b'* LIST (\\HasChildren) "/" "Dossiers"',
        b'* LIST (\\HasNoChildren) "/" "Dossiers/Patients"',
        b"l OK LIST completed",
    ]
    assert await client.lines(b'm LSUB "" Dossiers/%\r\n') == [
        b'* LSUB () "/" "Dossiers/Patients"',
        b"m OK LSUB completed",
    ]
    assert await client.lines(b'n LSUB "" %\r\n') == [
        b'* LSUB () "/" "INBOX"',
        b'* LSUB () "/" "Envoy&AOk-s"',
        b'* LSUB () "/" "Brouillons"',
        b'* LSUB () "/" "Corbeille"',
        b'* LSUB (\\Noselect) "/" "Dossiers"',  # RFC 3501 §6.3.9: not subscribed itself
        b"n OK LSUB completed",
    ]
    assert await client.lines(
        b"s STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)\r\n"
    ) == [
        b'* STATUS "INBOX" (MESSAGES 3 RECENT 0 UIDNEXT 4 UIDVALIDITY 1000 UNSEEN 2)',
        b"s OK STATUS completed",
    ]


async def test_rename_keeps_the_selected_view(server: EngineServer, store: MemoryStore):
    client = await server.client()
    await client.lines(b"a CREATE Archives\r\n")
    uid = store.deliver(M1, folder="Archives")
    await client.select(b"Archives")
    assert await client.lines(b"r RENAME Archives Classement/2024\r\n") == [
        b"r OK RENAME completed"
    ]
    names = {f.name for f in await store.list_folders()}
    assert {"Classement", "Classement/2024"} <= names
    assert "Archives" not in names
    assert await client.lines(b"f UID FETCH %d UID\r\n" % uid) == [
        b"* 1 FETCH (UID 1)",
        b"f OK FETCH completed",
    ]


# -- a property: the client's numbering and the store never disagree ----------------------------


class Numbering:
    """What a client knows of the sequence numbers, from the untagged responses only."""

    def __init__(self, uids: list[int]) -> None:
        self.uids: list[int | None] = list(uids)

    def hear(self, reply: bytes, *, expunges_allowed: bool) -> None:
        for line in reply.split(b"\r\n"):
            words = line.split(b" ")
            if len(words) < 3 or words[0] != b"*" or not words[1].isdigit():
                continue
            number, kind = int(words[1]), words[2]
            if kind == b"EXPUNGE":
                assert expunges_allowed, reply
                assert 1 <= number <= len(self.uids), reply
                del self.uids[number - 1]
            elif kind == b"EXISTS":
                assert number >= len(self.uids), reply
                self.uids += [None] * (number - len(self.uids))
            elif kind == b"FETCH" and b"(UID " in line:
                uid = int(line.split(b"(UID ")[1].split(b" ")[0].rstrip(b")"))
                assert number <= len(self.uids), reply
                assert self.uids[number - 1] in (None, uid), (reply, self.uids)
                self.uids[number - 1] = uid


Step = tuple[str, int]
STEPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *("deliver", "flag", "delete", "other-delete", "expunge", "other-expunge"),
                *("uid-expunge", "fetch", "uid-fetch", "search", "noop"),
            ]
        ),
        st.integers(min_value=1, max_value=8),
    ),
    max_size=25,
)


async def _run(steps: list[Step]) -> None:
    store = MemoryStore()
    for n in range(4):
        store.deliver(b"Subject: %d\r\n\r\n." % n)
    server = EngineServer(store)
    client = await selected(server)
    other = await selected(server)
    numbering = Numbering(store.uids())
    for action, n in steps:
        seq = min(n, len(numbering.uids))
        command, expunges = _command(action, n, seq)
        if action == "deliver":
            store.deliver(b"Subject: new\r\n\r\n.")
        elif action.startswith("other-"):
            await other.send(command)
        elif command:
            reply = await client.send(command)
            assert b" BAD " not in reply, (command, reply)
            numbering.hear(reply, expunges_allowed=expunges)
    numbering.hear(await client.send(b"n NOOP\r\n"), expunges_allowed=True)
    assert len(numbering.uids) == len(store.uids())
    if store.uids():
        numbering.hear(await client.send(b"f FETCH 1:* UID\r\n"), expunges_allowed=False)
    assert numbering.uids == store.uids()


def _command(action: str, n: int, seq: int) -> tuple[bytes, bool]:
    """The client bytes for a step, and whether its reply may carry EXPUNGE responses."""
    if seq == 0 and action in ("flag", "delete", "fetch"):
        return b"", False  # an empty mailbox has no message number to name
    commands = {
        "flag": (b"a STORE %d +FLAGS (\\Flagged)\r\n" % seq, False),
        "delete": (b"a STORE %d +FLAGS.SILENT (\\Deleted)\r\n" % seq, False),
        "other-delete": (b"a UID STORE %d +FLAGS.SILENT (\\Deleted)\r\n" % n, True),
        "expunge": (b"a EXPUNGE\r\n", True),
        "other-expunge": (b"a EXPUNGE\r\n", True),
        "uid-expunge": (b"a UID EXPUNGE %d:*\r\n" % n, True),
        "fetch": (b"a FETCH %d UID\r\n" % seq, False),
        "uid-fetch": (b"a UID FETCH %d:* FLAGS\r\n" % n, True),
        "search": (b"a SEARCH DELETED\r\n", False),
        "noop": (b"a NOOP\r\n", True),
    }
    return commands.get(action, (b"", False))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_numbering_stays_consistent_with_the_store(steps: list[Step]):
    asyncio.run(_run(steps))
