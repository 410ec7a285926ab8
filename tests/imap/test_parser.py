"""The sans-I/O command parser: every command and argument form, framing (literals,
pipelining, raw lines), error recovery, every limit, and round trips with `serialize`."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap import commands as c
from gateway.imap.limits import Limits
from gateway.imap.parser import CommandParser, Event, search_codec
from gateway.imap.serialize import serialize
from gateway.imap.syntax import (
    FetchAttribute,
    SearchKey,
    Section,
    SeqRange,
    SequenceSet,
    StoreAction,
)

EVENT_TYPES = (c.Command, c.ContinuationNeeded, c.RawLine, c.CommandError)
UTC = dt.UTC


def events(*chunks: bytes, limits: Limits | None = None) -> list[Event]:
    """Feed `chunks` one by one, draining events after each (literals are accepted)."""
    parser = CommandParser(limits or Limits())
    out: list[Event] = []
    for chunk in chunks:
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not None:
            out.append(event)
    return out


def commands_only(found: list[Event]) -> list[Event]:
    return [e for e in found if not isinstance(e, c.ContinuationNeeded)]


def one(line: bytes, limits: Limits | None = None) -> Event:
    found = commands_only(events(line, limits=limits))
    assert len(found) == 1, found
    return found[0]


def seq(*ranges: tuple[int | None, int | None] | int | None) -> SequenceSet:
    return SequenceSet(
        tuple(SeqRange(*r) if isinstance(r, tuple) else SeqRange(r, r) for r in ranges)
    )


def sset(text: str) -> SequenceSet:
    """A sequence set from its text, without going through the parser under test."""
    ranges = []
    for item in text.split(","):
        a, _, b = item.partition(":")
        start = None if a == "*" else int(a)
        end = start if not b else (None if b == "*" else int(b))
        ranges.append(SeqRange(start, end))
    return SequenceSet(tuple(ranges))


def error(
    event: Event | None, tag: str | None = "a", fatal: bool = False, status: str = "BAD"
) -> str:
    assert isinstance(event, c.CommandError), event
    assert event.tag == tag
    assert event.fatal is fatal
    assert event.status == status
    assert event.message
    return event.message


# -- commands without arguments --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CAPABILITY", c.Capability("a")),
        ("noop", c.Noop("a")),
        ("Logout", c.Logout("a")),
        ("STARTTLS", c.StartTls("a")),
        ("CHECK", c.Check("a")),
        ("close", c.Close("a")),
        ("UNSELECT", c.Unselect("a")),
        ("EXPUNGE", c.Expunge("a")),
        ("IDLE", c.Idle("a")),
        ("NAMESPACE", c.Namespace("a")),
    ],
)
def test_commands_without_arguments(name: str, expected: c.Command) -> None:
    assert one(f"a {name}\r\n".encode()) == expected
    assert "unexpected" in error(one(f"a {name} x\r\n".encode()))


@pytest.mark.parametrize("tag", ["A001", "1", "x.y", "t]", "a-b_c", "!#$&'", "~tag", "a" * 100])
def test_tags(tag: str) -> None:
    assert one(f"{tag} NOOP\r\n".encode()) == c.Noop(tag)


# -- authentication --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a AUTHENTICATE PLAIN", c.Authenticate("a", "PLAIN")),
        (b"a authenticate xoauth2", c.Authenticate("a", "XOAUTH2")),
        (b"a AUTHENTICATE PLAIN =", c.Authenticate("a", "PLAIN", b"=")),
        (
            b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==",
            c.Authenticate("a", "PLAIN", b"AGFsaWNlAHNlY3JldA=="),
        ),
        (b"a AUTHENTICATE EXTERNAL dGVzdA==", c.Authenticate("a", "EXTERNAL", b"dGVzdA==")),
    ],
)
def test_authenticate(line: bytes, expected: c.Command) -> None:
    assert one(line + b"\r\n") == expected


@pytest.mark.parametrize(
    "line",
    [
        b"a AUTHENTICATE",
        b"a AUTHENTICATE PLAIN abc",
        b"a AUTHENTICATE PLAIN a=bc",
        b"a AUTHENTICATE PLAIN ",
    ],
)
def test_authenticate_errors(line: bytes) -> None:
    error(one(line + b"\r\n"))


@pytest.mark.parametrize(
    ("line", "user", "password"),
    [
        (b"a LOGIN alice secret", b"alice", b"secret"),
        (b'a LOGIN "alice smith" "p a\\"ss\\\\"', b"alice smith", b'p a"ss\\'),
        (b'a LOGIN alice ""', b"alice", b""),
        (b"a LOGIN {5}\r\nalice {6+}\r\nsecret", b"alice", b"secret"),
        (b"a LOGIN alice {4+}\r\n\xe9\x00\r\n", b"alice", b"\xe9\x00\r\n"),
        (b'a LOGIN "\xc3\xa9" x]y', "é".encode(), b"x]y"),
    ],
)
def test_login(line: bytes, user: bytes, password: bytes) -> None:
    assert one(line + b"\r\n") == c.Login("a", user, password)


# -- mailboxes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "name"),
    [
        (b"INBOX", "INBOX"),
        (b"inbox", "INBOX"),
        (b'"InBoX"', "INBOX"),
        (b"{5+}\r\niNbOx", "INBOX"),
        (b"INBOX.Sent", "INBOX.Sent"),
        (b"inbox/sub", "inbox/sub"),  # only INBOX itself is case-insensitive
        (b"Entw&APw-rfe", "Entwürfe"),
        (b'"Entw\xc3\xbcrfe"', "Entwürfe"),  # 8-bit UTF-8 accepted as is
        (b'"\xc4\xb1nbox"', "\u0131nbox"),  # dotless i: upper() would give "INBOX"
        (b"&-Co", "&Co"),
        (b'"with space"', "with space"),
        (b"a]b", "a]b"),
        (b'""', ""),
    ],
)
def test_mailbox_names(argument: bytes, name: str) -> None:
    assert one(b"a SELECT " + argument + b"\r\n") == c.Select("a", name)


@pytest.mark.parametrize("argument", [b"a*b", b"a%b", b"(x)", b"\xc3\xa9", b'"a', b"a\\b", b"{x}"])
def test_mailbox_syntax_errors(argument: bytes) -> None:
    error(one(b"a SELECT " + argument + b"\r\n"))


@pytest.mark.parametrize(
    ("argument", "encoding"),
    [
        (b"&AOk", "mUTF-7"),
        (b"&AEE-", "mUTF-7"),  # "A" needs no base64: not the canonical spelling
        (b"a&b", "mUTF-7"),
        (b'"tab\there"', "mUTF-7"),  # a quoted string may hold a TAB; a name may not
        (b"!#$&'+,-.0123456789:;<=>?@^_`|[}", "mUTF-7"),  # imaptest's "atoms"
        (b'"\xff"', "UTF-8"),
    ],
)
def test_undecodable_mailbox_names_are_refused_not_bad(argument: bytes, encoding: str) -> None:
    """An astring is well-formed whatever it holds: a name that is not valid modified
    UTF-7 (or UTF-8) gets NO, as from Dovecot, never BAD (clients drop on BAD)."""
    for line in (
        b"a SELECT " + argument,
        b"a EXAMINE " + argument,
        b"a CREATE " + argument,
        b"a STATUS " + argument + b" (MESSAGES)",
        b"a RENAME INBOX " + argument,
        b"a COPY 1 " + argument,
        b"a UID MOVE 1 " + argument,
    ):
        assert error(one(line + b"\r\n"), status="NO") == f"Mailbox name is not valid {encoding}"
    # a syntax error after the name is still BAD
    error(one(b"a STATUS " + argument + b" (FROB)\r\n"))


def test_append_to_an_undecodable_name_is_refused_after_its_literal() -> None:
    found = events(b"a APPEND a&b {3}\r\n", b"abc\r\n", b"b NOOP\r\n")
    assert isinstance(found[0], c.ContinuationNeeded)
    error(found[1], status="NO")
    assert found[2] == c.Noop("b")


# RFC 3501 §9: ATOM-CHAR is any CHAR but atom-specials = "(" / ")" / "{" / SP / CTL /
# list-wildcards ("%" "*") / quoted-specials (DQUOTE "\") / resp-specials ("]");
# ASTRING-CHAR adds "]", list-char adds "%" "*" "]".
ATOM_SPECIALS = {*b'(){ %*"\\]', *range(0x20), 0x7F}
ATOM_CHARS = [ch for ch in range(0x01, 0x80) if ch not in ATOM_SPECIALS]


@pytest.mark.parametrize("char", range(0x01, 0x80), ids=lambda ch: f"{ch:#04x}")
def test_each_character_in_an_atom_mailbox(char: int) -> None:
    line = b"a SELECT x" + bytes([char]) + b"y\r\n"
    if char in (0x0A, 0x0D):
        return  # ends the line: framing, not the atom
    event = one(line)
    if char in ATOM_CHARS or char == 0x5D:
        if char == 0x26:  # "&" starts a base64 shift: "x&y" is no valid mUTF-7
            error(event, status="NO")
        else:
            assert event == c.Select("a", "x" + chr(char) + "y")
    else:
        error(event)


@pytest.mark.parametrize("char", range(0x01, 0x80), ids=lambda ch: f"{ch:#04x}")
def test_each_character_in_an_atom_list_pattern(char: int) -> None:
    if char in (0x0A, 0x0D):
        return
    event = one(b'a LIST "" x' + bytes([char]) + b"y\r\n")
    if char in ATOM_CHARS or char in b"%*]":
        assert event == c.List("a", "", "x" + chr(char) + "y")
    else:
        error(event)


@pytest.mark.parametrize(
    "pattern",
    [
        b"!#$&'+,-.0123456789:;<=>?@^_`|[}%*",  # imaptest's "atoms" test
        b"~foo",  # not a literal8 (that is "~{")
        b"]%",
        b"a&b*",
        b"&AOk",
        b"%&AOk-",
    ],
)
def test_list_patterns_are_any_list_chars_and_never_refused(pattern: bytes) -> None:
    """A pattern that is not valid mUTF-7 matches literally (Dovecot: OK, nothing listed)."""
    text = pattern.decode("ascii").replace("&AOk-", "é")
    for verb, subscribed in ((b"LIST", False), (b"LSUB", True)):
        line = b"a " + verb + b' "" ' + pattern + b"\r\n"
        assert one(line) == c.List("a", "", text, subscribed)
    assert one(b"a LIST " + pattern.replace(b"%", b"").replace(b"*", b"") + b" %\r\n") == (
        c.List("a", text.replace("%", "").replace("*", ""), "%")
    )
    command = c.List("a", "", text)
    assert one(serialize(command)) == command


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a SELECT INBOX", c.Select("a", "INBOX")),
        (b"a EXAMINE Archive", c.Select("a", "Archive", readonly=True)),
        (b"a CREATE &ZeVnLIqe-", c.Create("a", "日本語")),
        (b"a DELETE old", c.Delete("a", "old")),
        (b"a RENAME old new", c.Rename("a", "old", "new")),
        (b"a RENAME inbox {3+}\r\nnew", c.Rename("a", "INBOX", "new")),
        (b"a SUBSCRIBE news", c.Subscribe("a", "news")),
        (b"a UNSUBSCRIBE news", c.Unsubscribe("a", "news")),
        (b'a LIST "" *', c.List("a", "", "*")),
        (b'a LIST "" %', c.List("a", "", "%")),
        (b"a LIST ~/Mail/ %/Sent*", c.List("a", "~/Mail/", "%/Sent*")),
        (b'a LIST "" "a b*"', c.List("a", "", "a b*")),
        (b'a LIST inbox ""', c.List("a", "inbox", "")),  # reference and pattern kept as sent
        (b"a LIST &AOk- &AOk-*", c.List("a", "é", "é*")),
        (b"a LIST x a]b", c.List("a", "x", "a]b")),
        (b'a LSUB "" *', c.List("a", "", "*", subscribed=True)),
        (b"a LIST {0}\r\n {1}\r\n*", c.List("a", "", "*")),
        (
            b"a STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)",
            c.Status("a", "INBOX", ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN")),
        ),
        (b"a status x (unseen)", c.Status("a", "x", ("UNSEEN",))),
    ],
)
def test_mailbox_commands(line: bytes, expected: c.Command) -> None:
    assert one(line + b"\r\n") == expected


@pytest.mark.parametrize(
    "line",
    [
        b"a SELECT",
        b"a SELECT ",
        b"a SELECT a b",
        b"a RENAME a",
        b"a LIST x",
        b"a LIST x (y)",
        b"a STATUS INBOX ()",
        b"a STATUS INBOX (SIZE)",
        b"a STATUS INBOX MESSAGES",
        b"a STATUS INBOX (MESSAGES",
    ],
)
def test_mailbox_command_errors(line: bytes) -> None:
    error(one(line + b"\r\n"))


# -- APPEND ----------------------------------------------------------------------------


def test_append_forms() -> None:
    message = b"From: a@example.org\r\nSubject: caf\xc3\xa9\r\n\r\nbody \xff\x00\r\n"
    size = str(len(message)).encode()
    when = dt.datetime(2024, 1, 5, 10, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    cases = [
        (b"a APPEND INBOX {%s}\r\n" % size, c.Append("a", "INBOX", (), None, message)),
        (b"a APPEND INBOX {%s+}\r\n" % size, c.Append("a", "INBOX", (), None, message)),
        (
            b"a APPEND Sent (\\Seen \\draft $Forwarded) {%s+}\r\n" % size,
            c.Append("a", "Sent", ("\\Seen", "\\Draft", "$Forwarded"), None, message),
        ),
        (
            b'a APPEND Sent " 5-Jan-2024 10:00:00 +0100" {%s}\r\n' % size,
            c.Append("a", "Sent", (), when, message),
        ),
        (
            b'a APPEND Sent () "05-jan-2024 10:00:00 +0100" {%s+}\r\n' % size,
            c.Append("a", "Sent", (), when, message),
        ),
        (b"a APPEND {4+}\r\nSent {%s+}\r\n" % size, c.Append("a", "Sent", (), None, message)),
    ]
    for head, expected in cases:
        assert commands_only(events(head + message + b"\r\n")) == [expected]


def test_append_date_time_zones() -> None:
    event = one(b'a APPEND x "31-Dec-1999 23:59:59 -0830" {0}\r\n\r\n')
    assert isinstance(event, c.Append)
    assert event.internal_date is not None
    assert event.internal_date.utcoffset() == -dt.timedelta(hours=8, minutes=30)
    assert event.internal_date == dt.datetime(2000, 1, 1, 8, 29, 59, tzinfo=UTC)


@pytest.mark.parametrize(
    "head",
    [
        b'a APPEND x "hello"',  # the message must be a literal
        b"a APPEND x hello",
        b"a APPEND x (\\Seen)",
        b"a APPEND x (\\Recent) {1}",
        b'a APPEND x "32-Jan-2024 10:00:00 +0000" {1}',
        b'a APPEND x "29-Feb-2023 10:00:00 +0000" {1}',
        b'a APPEND x "01-Foo-2024 10:00:00 +0000" {1}',
        b'a APPEND x "01-Jan-2024 24:00:00 +0000" {1}',
        b'a APPEND x "01-Jan-2024 10:00:00 +2400" {1}',
        b'a APPEND x "01-Jan-2024 10:00:00 +0060" {1}',
        b'a APPEND x "1-Jan-2024 10:00:00 +0000" {1}',
        b'a APPEND x "01-Jan-2024 10:00 +0000" {1}',
        b"a APPEND x ~{1}",  # literal8 is refused
    ],
)
def test_append_errors(head: bytes) -> None:
    found = events(head + b"\r\nb NOOP\r\n")
    error(found[0])
    assert found[1:] == [c.Noop("b")]


# -- SEARCH ----------------------------------------------------------------------------

D = dt.date


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("ALL", SearchKey("ALL")),
        ("answered", SearchKey("ANSWERED")),
        ("BCC bob", SearchKey("BCC", ("bob",))),
        ("BEFORE 1-Feb-2024", SearchKey("BEFORE", (D(2024, 2, 1),))),
        ('BEFORE "01-feb-2024"', SearchKey("BEFORE", (D(2024, 2, 1),))),
        ('BODY "hello world"', SearchKey("BODY", ("hello world",))),
        ("CC {5+}\r\nal ce", SearchKey("CC", ("al ce",))),
        ("DELETED", SearchKey("DELETED")),
        ("DRAFT", SearchKey("DRAFT")),
        ("FLAGGED", SearchKey("FLAGGED")),
        ("FROM alice", SearchKey("FROM", ("alice",))),
        ('HEADER Message-ID "<x@y>"', SearchKey("HEADER", ("MESSAGE-ID", "<x@y>"))),
        ('header x-spam ""', SearchKey("HEADER", ("X-SPAM", ""))),
        ("KEYWORD $Label1", SearchKey("KEYWORD", ("$Label1",))),
        ("LARGER 1000", SearchKey("LARGER", (1000,))),
        ("NEW", SearchKey("NEW")),
        ("NOT SEEN", SearchKey("NOT", (SearchKey("SEEN"),))),
        ("OLD", SearchKey("OLD")),
        ("ON 29-Feb-2024", SearchKey("ON", (D(2024, 2, 29),))),
        ("OR SEEN FLAGGED", SearchKey("OR", (SearchKey("SEEN"), SearchKey("FLAGGED")))),
        ("RECENT", SearchKey("RECENT")),
        ("SEEN", SearchKey("SEEN")),
        ("SENTBEFORE 1-Jan-2000", SearchKey("SENTBEFORE", (D(2000, 1, 1),))),
        ("SENTON 1-Jan-2000", SearchKey("SENTON", (D(2000, 1, 1),))),
        ("SENTSINCE 1-Jan-2000", SearchKey("SENTSINCE", (D(2000, 1, 1),))),
        ("SINCE 31-Dec-1999", SearchKey("SINCE", (D(1999, 12, 31),))),
        ("SMALLER 0", SearchKey("SMALLER", (0,))),
        ('SUBJECT "caf\\"e"', SearchKey("SUBJECT", ('caf"e',))),
        ("TEXT x", SearchKey("TEXT", ("x",))),
        ("TO {0}\r\n", SearchKey("TO", ("",))),
        ("UID 1:*", SearchKey("UID", (sset("1:*"),))),
        ("UNANSWERED", SearchKey("UNANSWERED")),
        ("UNDELETED", SearchKey("UNDELETED")),
        ("UNDRAFT", SearchKey("UNDRAFT")),
        ("UNFLAGGED", SearchKey("UNFLAGGED")),
        ("UNKEYWORD foo", SearchKey("UNKEYWORD", ("foo",))),
        ("UNSEEN", SearchKey("UNSEEN")),
        ("1,3:5,*", SearchKey("SEQSET", (sset("1,3:5,*"),))),
        ("*:4", SearchKey("SEQSET", (sset("*:4"),))),
        ("(SEEN)", SearchKey("AND", (SearchKey("SEEN"),))),
        (
            "(SEEN (FROM x))",
            SearchKey("AND", (SearchKey("SEEN"), SearchKey("AND", (SearchKey("FROM", ("x",)),)))),
        ),
    ],
)
def test_every_search_key(text: str, key: SearchKey) -> None:
    event = one(b"a SEARCH " + text.encode() + b"\r\n")
    assert event == c.Search("a", SearchKey("AND", (key,)))


def test_search_tree() -> None:
    line = b'a SEARCH CHARSET UTF-8 OR FROM "\xc3\xa9" (SUBJECT {3}\r\nabc) NOT 2:4\r\n'
    found = events(line)
    assert found[0] == c.ContinuationNeeded("a", 3)
    assert found[1:] == [
        c.Search(
            "a",
            SearchKey(
                "AND",
                (
                    SearchKey(
                        "OR",
                        (
                            SearchKey("FROM", ("é",)),
                            SearchKey("AND", (SearchKey("SUBJECT", ("abc",)),)),
                        ),
                    ),
                    SearchKey("NOT", (SearchKey("SEQSET", (sset("2:4"),)),)),
                ),
            ),
            charset="UTF-8",
        )
    ]


def test_search_multiple_keys_and_uid() -> None:
    event = one(b"a UID SEARCH charset us-ascii UNSEEN SINCE 1-Jan-2024 (OR SEEN DELETED)\r\n")
    assert event == c.Search(
        "a",
        SearchKey(
            "AND",
            (
                SearchKey("UNSEEN"),
                SearchKey("SINCE", (D(2024, 1, 1),)),
                SearchKey("AND", (SearchKey("OR", (SearchKey("SEEN"), SearchKey("DELETED"))),)),
            ),
        ),
        charset="US-ASCII",
        uid=True,
    )


def test_search_charsets() -> None:
    assert search_codec(None) == "utf-8"
    assert search_codec("us-ascii") == "utf-8"
    assert search_codec("ISO-8859-1") == "iso8859-1"
    assert search_codec("X-UNKNOWN") == "latin-1"
    assert search_codec("zlib") == "latin-1"  # a bytes-to-bytes codec is no charset
    event = one(b'a SEARCH CHARSET ISO-8859-1 SUBJECT "caf\xe9"\r\n')
    assert event == c.Search(
        "a", SearchKey("AND", (SearchKey("SUBJECT", ("café",)),)), charset="ISO-8859-1"
    )
    event = one(b'a SEARCH CHARSET X-KLINGON SUBJECT "\xe9"\r\n')
    assert isinstance(event, c.Search)
    assert event.key.args == (SearchKey("SUBJECT", ("\xe9",)),)  # bytes kept for BADCHARSET


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"a SEARCH", "missing"),
        (b"a SEARCH ", "missing"),
        (b"a SEARCH FOO", "unknown search key"),
        (b"a SEARCH SUBJECT caf\xc3\xa9", "8-bit"),
        (b'a SEARCH SUBJECT "\xff"', "charset"),
        (b"a SEARCH ON 31-Feb-2024", "date"),
        (b"a SEARCH ON 1-Foo-2024", "date"),
        (b"a SEARCH ON 1-Jan-24", "date"),
        (b"a SEARCH ON 1-Jan-20245", "date"),
        (b"a SEARCH ON 123-Jan-2024", "date"),
        (b'a SEARCH ON "1-Jan-2024', "date"),
        (b"a SEARCH LARGER x", "number"),
        (b"a SEARCH LARGER 99999999999999999999", "too large"),
        (b"a SEARCH OR SEEN", "missing"),
        (b"a SEARCH NOT", "missing"),
        (b"a SEARCH (SEEN", "')'"),
        (b"a SEARCH ()", "search key"),
        (b"a SEARCH SEEN  UNSEEN", "search key"),
        (b"a SEARCH 0", "0"),
        (b"a SEARCH 1:0", "0"),
        (b"a SEARCH KEYWORD \\Seen", "atom"),
        (b"a SEARCH CHARSET", "unknown search key"),
        (b"a SEARCH CHARSET UTF-8", "missing"),
        (b"a SEARCH HEADER x", "missing"),
        (b"a SEARCH UID", "missing"),
    ],
)
def test_search_errors(line: bytes, message: str) -> None:
    assert message in error(one(line + b"\r\n"))


# -- FETCH -----------------------------------------------------------------------------

FLAGS, UID = FetchAttribute("FLAGS"), FetchAttribute("UID")
FAST = (FLAGS, FetchAttribute("INTERNALDATE"), FetchAttribute("RFC822.SIZE"))


@pytest.mark.parametrize(
    ("text", "attributes"),
    [
        ("ALL", (*FAST, FetchAttribute("ENVELOPE"))),
        ("fast", FAST),
        ("FULL", (*FAST, FetchAttribute("ENVELOPE"), FetchAttribute("BODY"))),
        ("FLAGS", (FLAGS,)),
        ("(FLAGS)", (FLAGS,)),
        ("BODY", (FetchAttribute("BODY"),)),
        ("BODYSTRUCTURE", (FetchAttribute("BODYSTRUCTURE"),)),
        ("ENVELOPE", (FetchAttribute("ENVELOPE"),)),
        ("INTERNALDATE", (FetchAttribute("INTERNALDATE"),)),
        ("RFC822", (FetchAttribute("RFC822"),)),
        ("rfc822.header", (FetchAttribute("RFC822.HEADER"),)),
        ("RFC822.SIZE", (FetchAttribute("RFC822.SIZE"),)),
        ("RFC822.TEXT", (FetchAttribute("RFC822.TEXT"),)),
        ("UID", (UID,)),
        ("BODY[]", (FetchAttribute("BODY", Section()),)),
        ("body.peek[]", (FetchAttribute("BODY", Section(), peek=True),)),
        ("BODY[]<0.1>", (FetchAttribute("BODY", Section(), partial=(0, 1)),)),
        ("BODY[TEXT]<5.10>", (FetchAttribute("BODY", Section(text="TEXT"), partial=(5, 10)),)),
        ("BODY[HEADER]", (FetchAttribute("BODY", Section(text="HEADER")),)),
        ("BODY[1]", (FetchAttribute("BODY", Section((1,))),)),
        ("BODY[1.2.3]", (FetchAttribute("BODY", Section((1, 2, 3))),)),
        ("BODY[2.MIME]", (FetchAttribute("BODY", Section((2,), "MIME")),)),
        ("BODY[2.1.text]", (FetchAttribute("BODY", Section((2, 1), "TEXT")),)),
        ("BODY[3.HEADER]", (FetchAttribute("BODY", Section((3,), "HEADER")),)),
        (
            "BODY.PEEK[1.2.HEADER.FIELDS (From Subject)]<0.100>",
            (
                FetchAttribute(
                    "BODY",
                    Section((1, 2), "HEADER.FIELDS", ("FROM", "SUBJECT")),
                    peek=True,
                    partial=(0, 100),
                ),
            ),
        ),
        (
            'BODY[HEADER.FIELDS.NOT ("x-a" {3}\r\nx-b)]',
            (FetchAttribute("BODY", Section((), "HEADER.FIELDS.NOT", ("X-A", "X-B"))),),
        ),
        (
            "(UID FLAGS BODY.PEEK[HEADER] RFC822.SIZE)",
            (
                UID,
                FLAGS,
                FetchAttribute("BODY", Section(text="HEADER"), peek=True),
                FetchAttribute("RFC822.SIZE"),
            ),
        ),
    ],
)
def test_fetch_attributes(text: str, attributes: tuple[FetchAttribute, ...]) -> None:
    event = one(b"a FETCH 1:2 " + text.encode() + b"\r\n")
    assert event == c.Fetch("a", sset("1:2"), attributes)


def test_uid_fetch_adds_uid() -> None:
    assert one(b"a UID FETCH 1:* (FLAGS)\r\n") == c.Fetch("a", sset("1:*"), (FLAGS, UID), uid=True)
    assert one(b"a UID FETCH 1:* (UID FLAGS)\r\n") == c.Fetch(
        "a", sset("1:*"), (UID, FLAGS), uid=True
    )
    assert one(b"a UID FETCH 5 FAST\r\n") == c.Fetch("a", sset("5"), (*FAST, UID), uid=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("()", "fetch attribute"),
        ("(FLAGS", "')'"),
        ("FOO", "unknown fetch attribute"),
        ("BODY.PEEK", "unknown fetch attribute"),
        ("(ALL)", "unknown fetch attribute"),  # macros only stand alone
        ("ALL FLAGS", "unknown fetch attribute"),
        ("BODY[MIME]", "section"),
        ("BODY[HEADER.FIELDS]", "space"),
        ("BODY[HEADER.FIELDS ()]", "string"),
        ("BODY[HEADER.FIELDS (\xc3\xa9)]", "8-bit"),
        ("BODY[0]", "section part"),
        ("BODY[01]", "section part"),
        ("BODY[1.]", "section"),
        ("BODY[1..2]", "section"),
        ("BODY[TEXT.1]", "section"),
        ("BODY[1.FOO]", "section"),
        ("BODY[1", "']'"),
        ("BODY[]<0.0>", "partial"),
        ("BODY[]<1>", "partial"),
        ("BODY[]<a.b>", "partial"),
        ("BODY[]<99999999999.1>", "too large"),
        ("FLAGS<0.1>", "unexpected"),
    ],
)
def test_fetch_errors(text: str, message: str) -> None:
    assert message in error(one(b"a FETCH 1 " + text.encode("latin-1") + b"\r\n"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", seq(1)),
        ("*", seq(None)),
        ("1:*", seq((1, None))),
        ("*:1", seq((None, 1))),
        ("4:2", seq((4, 2))),  # kept as written: SeqRange.bounds orders it
        ("1:3,5,7:*", seq((1, 3), 5, (7, None))),
        ("4294967295", seq(4294967295)),
    ],
)
def test_sequence_sets(text: str, expected: SequenceSet) -> None:
    assert one(f"a COPY {text} x\r\n".encode()) == c.Copy("a", expected, "x")


@pytest.mark.parametrize(
    "text", ["0", "1:0", "0:*", "01", "4294967296", "1::2", "1:2:3", ",1", "1,", "1,,2", "$", "a"]
)
def test_invalid_sequence_sets(text: str) -> None:
    error(one(f"a FETCH {text} FLAGS\r\n".encode()))


# -- STORE, COPY, MOVE, UID ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("FLAGS (\\Seen)", StoreAction("replace", False, ("\\Seen",))),
        ("FLAGS ()", StoreAction("replace", False, ())),
        ("+FLAGS.SILENT (\\Deleted)", StoreAction("add", True, ("\\Deleted",))),
        (
            "-flags \\seen \\ANSWERED $Junk",
            StoreAction("remove", False, ("\\Seen", "\\Answered", "$Junk")),
        ),
        (
            "FLAGS.SILENT (\\Flagged \\Draft foo)",
            StoreAction("replace", True, ("\\Flagged", "\\Draft", "foo")),
        ),
    ],
)
def test_store(text: str, action: StoreAction) -> None:
    assert one(b"a STORE 1:3,5 " + text.encode() + b"\r\n") == c.Store("a", seq((1, 3), 5), action)


def test_store_example_from_brief() -> None:
    assert one(b"a STORE 1:3,5 +FLAGS.SILENT (\\Deleted)\r\n") == c.Store(
        "a", seq((1, 3), 5), StoreAction("add", True, ("\\Deleted",))
    )


@pytest.mark.parametrize(
    "text",
    [
        "FLAGS (\\*)",  # only in PERMANENTFLAGS
        "FLAGS (\\Recent)",
        "FLAGS (\\Foo)",
        "FLAGS \\",
        "FLAGS (a",
        "FLAGS",
        "FLAGS ",
        "*FLAGS (a)",
        "FLAGS.LOUD (a)",
        "FLAGS.SILENTX (a)",
        "FLAGS (a b)x",
        "FLAGS (caf\xe9)",
        "FLAGS ((a))",
    ],
)
def test_store_errors(text: str) -> None:
    error(one(b"a STORE 1 " + text.encode("latin-1") + b"\r\n"))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a COPY 1:2 Archive", c.Copy("a", seq((1, 2)), "Archive")),
        (b"a MOVE 3 inbox", c.Move("a", seq(3), "INBOX")),
        (b"a UID COPY 1:* Trash", c.Copy("a", seq((1, None)), "Trash", uid=True)),
        (b"a uid move 7 &AOk-", c.Move("a", seq(7), "é", uid=True)),
        (b"a UID STORE 9 FLAGS ()", c.Store("a", seq(9), StoreAction("replace", False, ()), True)),
        (b"a UID SEARCH ALL", c.Search("a", SearchKey("AND", (SearchKey("ALL"),)), uid=True)),
        (b"a UID EXPUNGE 3:5", c.Expunge("a", seq((3, 5)))),
    ],
)
def test_transfer_and_uid_commands(line: bytes, expected: c.Command) -> None:
    assert one(line + b"\r\n") == expected


@pytest.mark.parametrize(
    "line", [b"a UID", b"a UID NOOP", b"a UID EXPUNGE", b"a UID CLOSE", b"a COPY 1", b"a MOVE x y"]
)
def test_uid_errors(line: bytes) -> None:
    error(one(line + b"\r\n"))


# -- ID, ENABLE ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a ID NIL", c.Id("a", None)),
        (b"a ID nil", c.Id("a", None)),
        (b"a ID ()", c.Id("a", ())),
        (
            b'a ID ("name" "Thunderbird" "version" NIL "os" {5}\r\nLinux)',
            c.Id("a", (("name", "Thunderbird"), ("version", None), ("os", "Linux"))),
        ),
        (b'a ID ("x" "' + b"v" * 1024 + b'")', c.Id("a", (("x", "v" * 1024),))),
        (b'a ID ("' + b"f" * 30 + b'" NIL)', c.Id("a", (("f" * 30, None),))),
    ],
)
def test_id(line: bytes, expected: c.Command) -> None:
    assert one(line + b"\r\n") == expected


def test_id_limits() -> None:
    pairs = b" ".join(b'"f%d" "v"' % i for i in range(30))
    assert isinstance(one(b"a ID (" + pairs + b")\r\n"), c.Id)
    assert "too many" in error(one(b"a ID (" + pairs + b' "x" NIL)\r\n'))
    assert "too long" in error(one(b'a ID ("' + b"f" * 31 + b'" NIL)\r\n'))
    assert "too long" in error(one(b'a ID ("x" "' + b"v" * 1025 + b'")\r\n'))
    for bad in (b"a ID", b"a ID (x y)", b'a ID ("x")', b'a ID ("x" "y"', b"a ID NILL"):
        error(one(bad + b"\r\n"))


def test_enable() -> None:
    assert one(b"a ENABLE condstore utf8=accept\r\n") == c.Enable("a", ("CONDSTORE", "UTF8=ACCEPT"))
    error(one(b"a ENABLE\r\n"))
    error(one(b"a ENABLE (x)\r\n"))


# -- syntax errors and recovery --------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "tag", "message"),
    [
        (b"", None, "tag"),
        (b" NOOP", None, "tag"),
        (b"+ NOOP", None, "tag"),
        (b"a+ NOOP", None, "tag"),
        (b"* NOOP", None, "tag"),
        (b"\xff\xfe\xfd", None, "tag"),
        (b"a\x00 NOOP", None, "tag"),
        (b"NOOP", "NOOP", "missing command"),
        (b"a ", "a", "command"),
        (b"a  NOOP", "a", "command"),
        (b"a FROB", "a", "unknown command"),
        (b"a NOOP\x00", "a", "NUL"),
        (b"a LOGIN {3+}\r\n\x00\x00\x00 \x00", "a", "NUL"),
        (b"a SELECT caf\xc3\xa9", "a", "8-bit"),
        (b"a SELECT \x01", "a", "control"),
        (b'a LOGIN "unterminated x', "a", "quoted"),
        (b'a LOGIN "bad \\escape" x', "a", "quoted"),
        (b'a LOGIN "line\nfeed" x', "a", "quoted"),
        (b"a LOGIN x", "a", "missing"),
        (b"a LOGIN x {2} y", "a", "literal"),
        (b"a LOGIN x {2a}", "a", "literal"),
    ],
)
def test_syntax_errors(line: bytes, tag: str | None, message: str) -> None:
    found = events(line + b"\r\nb NOOP\r\n")
    assert message in error(found[0], tag)
    assert found[1:] == [c.Noop("b")]


def test_literal_announced_on_a_bad_command_is_never_awaited() -> None:
    found = events(b"a FROB {5}\r\nb NOOP\r\n")
    assert error(found[0]) == "unknown command"
    assert found[1:] == [c.Noop("b")]
    found = events(b"a SELECT x {5}\r\nb NOOP\r\n")
    assert "unexpected" in error(found[0])
    assert found[1:] == [c.Noop("b")]


def test_literal_plus_data_of_a_bad_command_is_skipped() -> None:
    found = events(b"a FROB {5+}\r\nb NOO\r\nb NOOP\r\n")
    assert error(found[0]) == "unknown command"
    assert found[1:] == [c.Noop("b")]
    # more LITERAL+ in the rest of the rejected command: skipped as well
    found = events(b"a FROB {3+}\r\nx\r\n {4+}\r\n\r\n\r\n\r\nb NOOP\r\n")
    assert [type(e) for e in found] == [c.CommandError, c.Noop]
    # a synchronising literal ends the rejected command: the client never sends it
    found = events(b"a FROB {3+}\r\nabc {4}\r\nb NOOP\r\n")
    assert [type(e) for e in found] == [c.CommandError, c.Noop]


def test_literal8_is_refused() -> None:
    found = events(b"a LOGIN ~{3}\r\nb NOOP\r\n")
    assert "literal8" in error(found[0])
    assert found[1:] == [c.Noop("b")]
    found = events(b"a APPEND x ~{3+}\r\nabc\r\nb NOOP\r\n")
    assert "literal8" in error(found[0])
    assert found[1:] == [c.Noop("b")]


def test_not_a_literal_announcement() -> None:
    assert one(b"a SELECT x}\r\n") == c.Select("a", "x}")
    assert "literal" in error(one(b"a SELECT {x}\r\n"))


# -- framing: literals, pipelining, raw lines ------------------------------------------

SPLIT_MESSAGE = b"line1\r\n\xe9\x00\r\n\r\n"
SPLIT_STREAM = (
    b"a LOGIN {5}\r\nalice {6+}\r\nsecret\r\n"
    b"b APPEND INBOX (\\Seen) {%d}\r\n%s\r\n"
    b"c SEARCH SUBJECT {3+}\r\n{2}\r\n"
    b"d NOOP\r\n"
) % (len(SPLIT_MESSAGE), SPLIT_MESSAGE)
SPLIT_EXPECTED = [
    c.ContinuationNeeded("a", 5),
    c.Login("a", b"alice", b"secret"),
    c.ContinuationNeeded("b", len(SPLIT_MESSAGE), message=True),
    c.Append("b", "INBOX", ("\\Seen",), None, SPLIT_MESSAGE),
    c.Search("c", SearchKey("AND", (SearchKey("SUBJECT", ("{2}",)),))),
    c.Noop("d"),
]


def test_split_at_every_byte_boundary() -> None:
    reference = events(SPLIT_STREAM)
    assert reference == SPLIT_EXPECTED
    for cut in range(len(SPLIT_STREAM) + 1):
        assert events(SPLIT_STREAM[:cut], SPLIT_STREAM[cut:]) == reference, cut
    assert events(*(SPLIT_STREAM[i : i + 1] for i in range(len(SPLIT_STREAM)))) == reference


def test_split_literals_every_two_cuts() -> None:
    stream = b"a LOGIN {2}\r\nab {2+}\r\ncd\r\nb NOOP\r\n"
    expected = [c.ContinuationNeeded("a", 2), c.Login("a", b"ab", b"cd"), c.Noop("b")]
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            assert events(stream[:i], stream[i:j], stream[j:]) == expected, (i, j)


def test_command_with_many_literals() -> None:
    keys = b"".join(b" TEXT {1}\r\n%d" % (i % 10) for i in range(12))
    found = events(b"a SEARCH" + keys + b"\r\n")
    assert found[:12] == [c.ContinuationNeeded("a", 1)] * 12
    texts = tuple(SearchKey("TEXT", (str(i % 10),)) for i in range(12))
    assert found[12:] == [c.Search("a", SearchKey("AND", texts))]
    # past the first literals the command is checked once complete
    found = events(b"a SEARCH" + keys + b" FROB\r\nb NOOP\r\n")
    assert error(found[12]) == "unknown search key"
    assert found[13:] == [c.Noop("b")]
    limits = Limits(max_command_literal_size=1)
    found = events(b"a SEARCH" + keys + b" TEXT {2}\r\nb NOOP\r\n", limits=limits)
    assert found[12:] == [c.CommandError("a", "literal too large"), c.Noop("b")]


def test_literal_containing_crlf_and_braces() -> None:
    stream = b"a LOGIN {7+}\r\n{1}\r\n\r\n {3+}\r\n\r\n}\r\n"
    assert events(stream) == [c.Login("a", b"{1}\r\n\r\n", b"\r\n}")]


def test_pipelined_commands_in_one_chunk() -> None:
    stream = b"a NOOP\r\nb SELECT INBOX\r\nc FETCH 1 FLAGS\r\nd FROB\r\ne LOGOUT\r\n"
    found = events(stream)
    assert found[:3] == [c.Noop("a"), c.Select("b", "INBOX"), c.Fetch("c", seq(1), (FLAGS,))]
    assert error(found[3], "d") == "unknown command"
    assert found[4:] == [c.Logout("e")]


def test_append_literal_plus_then_pipelined_command() -> None:
    message = b"Subject: x\r\n\r\n" + bytes(range(256)) * 40
    stream = b"a APPEND INBOX {%d+}\r\n%s\r\nb NOOP\r\n" % (len(message), message)
    found = events(*(stream[i : i + 1000] for i in range(0, len(stream), 1000)))
    assert found == [c.Append("a", "INBOX", (), None, message), c.Noop("b")]


def test_continuation_is_a_barrier() -> None:
    parser = CommandParser()
    parser.receive_data(b"a APPEND INBOX {5}\r\nhello\r\nb NOOP\r\n")
    assert parser.pending_bytes == len(b"a APPEND INBOX {5}hello\r\nb NOOP\r\n")
    assert parser.next_event() == c.ContinuationNeeded("a", 5, message=True)
    parser.receive_data(b"c NOOP\r\n")  # nothing parsed until the server calls next_event
    assert parser.pending_bytes == len(b"a APPEND INBOX {5}hello\r\nb NOOP\r\nc NOOP\r\n")
    assert parser.next_event() == c.Append("a", "INBOX", (), None, b"hello")
    assert parser.next_event() == c.Noop("b")
    assert parser.next_event() == c.Noop("c")
    assert parser.next_event() is None
    assert parser.pending_bytes == 0


def test_reject_literal_then_next_command() -> None:
    parser = CommandParser()
    parser.receive_data(b"a APPEND Nowhere {100}\r\n")
    assert parser.next_event() == c.ContinuationNeeded("a", 100, message=True)
    parser.reject_literal()  # the server answered "a NO [TRYCREATE]"
    parser.receive_data(b"b SELECT {4}\r\n")
    assert parser.next_event() == c.ContinuationNeeded("b", 4)
    parser.receive_data(b"Sent\r\n")
    assert parser.next_event() == c.Select("b", "Sent")
    assert parser.next_event() is None
    assert parser.pending_bytes == 0


def test_reject_literal_misuse() -> None:
    parser = CommandParser()
    with pytest.raises(RuntimeError):
        parser.reject_literal()
    parser.receive_data(b"a LOGIN {3+}\r\n")  # LITERAL+: nothing to refuse
    assert parser.next_event() is None
    with pytest.raises(RuntimeError):
        parser.reject_literal()


def test_authenticate_and_raw_lines() -> None:
    parser = CommandParser()
    parser.receive_data(b"a AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n")
    assert parser.next_event() == c.Authenticate("a", "PLAIN")
    parser.expect_raw_line()  # after sending "+ "
    assert parser.next_event() == c.RawLine(b"AGFsaWNlAHNlY3JldA==")
    parser.expect_raw_line()  # another challenge
    parser.receive_data(b"{5}\r\n")  # a raw line never announces a literal
    assert parser.next_event() == c.RawLine(b"{5}")
    parser.receive_data(b"b NOOP\r\n")
    assert parser.next_event() == c.Noop("b")


def test_authenticate_without_raw_mode_parses_a_command() -> None:
    parser = CommandParser()
    parser.receive_data(b"a AUTHENTICATE FOO\r\nb NOOP\r\n")
    assert parser.next_event() == c.Authenticate("a", "FOO")
    assert parser.next_event() == c.Noop("b")  # the server refused FOO: no raw line


def test_idle_and_done() -> None:
    parser = CommandParser()
    parser.receive_data(b"a IDLE\r\nDONE\r\nb NOOP\r\n")  # DONE sent early, in one chunk
    assert parser.next_event() == c.Idle("a")
    parser.expect_raw_line()  # after "+ idling"
    assert parser.next_event() == c.RawLine(b"DONE")
    assert parser.next_event() == c.Noop("b")
    assert parser.next_event() is None


def test_idle_ended_by_the_server_makes_the_next_line_a_command() -> None:
    parser = CommandParser()
    parser.receive_data(b"a IDLE\r\n")
    assert parser.next_event() == c.Idle("a")
    parser.expect_raw_line()
    assert parser.next_event() is None
    parser.cancel_raw_line()  # "a NO [UNAVAILABLE]" ended IDLE: no DONE is coming
    parser.receive_data(b"b NOOP\r\n")
    assert parser.next_event() == c.Noop("b")


def test_raw_line_split_and_limits() -> None:
    parser = CommandParser(Limits(max_line_length=10))
    parser.receive_data(b"a IDLE\r\nDO")
    assert parser.next_event() == c.Idle("a")
    parser.expect_raw_line()
    assert parser.next_event() is None
    parser.receive_data(b"NE\r")
    assert parser.next_event() is None
    parser.receive_data(b"\n")
    assert parser.next_event() == c.RawLine(b"DONE")
    parser.receive_data(b"b IDLE\r\n")
    assert parser.next_event() == c.Idle("b")
    parser.expect_raw_line()
    parser.receive_data(b"x" * 12)
    assert error(parser.next_event(), None, fatal=True) == "line too long"


def test_expect_raw_line_misuse() -> None:
    parser = CommandParser()
    parser.receive_data(b"a NOOP\r\nb NOOP\r\n")
    with pytest.raises(RuntimeError):
        parser.expect_raw_line()  # events are waiting: the raw line would be the wrong one


def test_starttls_stops_parsing() -> None:
    parser = CommandParser()
    parser.receive_data(b"a STARTTLS\r\nb LOGIN x y\r\n")  # plaintext injection attempt
    assert parser.next_event() == c.StartTls("a")
    assert parser.pending_bytes == len(b"b LOGIN x y\r\n")  # the server must drop the parser


# -- limits ----------------------------------------------------------------------------


def test_line_too_long_is_fatal() -> None:
    limits = Limits(max_line_length=20)
    assert one(b"a SELECT 12345678901\r\n", limits) == c.Select("a", "12345678901")
    assert error(one(b"a SELECT 123456789012\r\n", limits), "a", fatal=True) == "line too long"
    # detected before the CRLF arrives, and nothing is parsed afterwards
    parser = CommandParser(limits)
    parser.receive_data(b"a SELECT " + b"x" * 100)
    assert error(parser.next_event(), "a", fatal=True) == "line too long"
    assert parser.pending_bytes == 0
    parser.receive_data(b"\r\nb NOOP\r\n")
    assert parser.next_event() is None
    # the text of all the lines of one command counts, literals excluded
    assert one(b"a LOGIN {30+}\r\n" + b"u" * 30 + b" 123456\r\n", limits) == c.Login(
        "a", b"u" * 30, b"123456"
    )
    found = events(b"a LOGIN {3+}\r\nabc 12345678901\r\n", limits=limits)
    assert error(found[0], "a", fatal=True) == "line too long"


def test_command_literal_too_large() -> None:
    limits = Limits(max_command_literal_size=10, max_literal_size=100)
    assert one(b"a LOGIN {10}\r\n0123456789 x\r\n", limits) == c.Login("a", b"0123456789", b"x")
    found = events(b"a LOGIN {11}\r\nb NOOP\r\n", limits=limits)
    assert found == [c.CommandError("a", "literal too large"), c.Noop("b")]
    found = events(b"a LOGIN {11+}\r\n01234567890 x\r\nb NOOP\r\n", limits=limits)
    assert found == [c.CommandError("a", "literal too large", fatal=True)]
    # APPEND's mailbox is a command literal, its message has the larger limit
    found = events(b"a APPEND {11}\r\n", limits=limits)
    assert found == [c.CommandError("a", "literal too large")]
    message = b"m" * 100
    found = events(b"a APPEND x {100}\r\n" + message + b"\r\n", limits=limits)
    assert found == [
        c.ContinuationNeeded("a", 100, message=True),
        c.Append("a", "x", (), None, message),
    ]
    found = events(b"a APPEND x {101}\r\nb NOOP\r\n", limits=limits)
    assert found == [c.CommandError("a", "literal too large"), c.Noop("b")]
    found = events(b"a APPEND x {101+}\r\n", limits=limits)
    assert found == [c.CommandError("a", "literal too large", fatal=True)]
    found = events(b"a APPEND x {99999999999999999999999}\r\nb NOOP\r\n", limits=limits)
    assert found == [c.CommandError("a", "literal too large"), c.Noop("b")]


def test_depth_limit() -> None:
    limits = Limits(max_depth=2)
    assert isinstance(one(b"a SEARCH ((ALL))\r\n", limits), c.Search)
    assert error(one(b"a SEARCH (((ALL)))\r\n", limits)) == "too deeply nested"
    assert isinstance(one(b"a FETCH 1 (BODY[HEADER.FIELDS (X)])\r\n", limits), c.Fetch)
    limits = Limits(max_depth=1)
    assert isinstance(one(b"a STORE 1 FLAGS (a)\r\n", limits), c.Store)
    assert error(one(b"a FETCH 1 (BODY[HEADER.FIELDS (X)])\r\n", limits)) == "too deeply nested"
    assert error(one(b"a SEARCH (ALL (ALL))\r\n", limits)) == "too deeply nested"


def test_search_operator_depth_does_not_recurse_unboundedly() -> None:
    assert "nested" in error(one(b"a SEARCH " + b"NOT " * 10_000 + b"ALL\r\n"))
    assert "nested" in error(one(b"a SEARCH " + b"(" * 10_000 + b"\r\n"))
    limits = Limits(max_search_depth=3)
    assert isinstance(one(b"a SEARCH NOT NOT ALL\r\n", limits), c.Search)
    assert "nested" in error(one(b"a SEARCH NOT NOT NOT ALL\r\n", limits))
    assert isinstance(one(b"a SEARCH OR ALL OR ALL ALL\r\n", limits), c.Search)


def test_sequence_range_limit() -> None:
    limits = Limits(max_sequence_ranges=3)
    assert isinstance(one(b"a FETCH 1,2:3,* FLAGS\r\n", limits), c.Fetch)
    assert "too many" in error(one(b"a FETCH 1,2,3,4 FLAGS\r\n", limits))
    assert "too many" in error(one(b"a SEARCH UID 1,2,3,4\r\n", limits))


def test_search_key_limit() -> None:
    limits = Limits(max_search_keys=4)  # the top-level AND counts as one
    assert isinstance(one(b"a SEARCH ALL NOT SEEN\r\n", limits), c.Search)
    assert "too many" in error(one(b"a SEARCH ALL ALL ALL ALL\r\n", limits))
    assert "too many" in error(one(b"a SEARCH (ALL ALL ALL)\r\n", limits))


def test_pipelining_limit_keeps_input_unparsed() -> None:
    parser = CommandParser(Limits(max_pipelined=2))
    parser.receive_data(b"a NOOP\r\n" * 5)
    assert parser.pending_bytes == 3 * 8  # two commands parsed, three waiting as bytes
    assert [parser.next_event() for _ in range(6)] == [c.Noop("a")] * 5 + [None]
    assert parser.pending_bytes == 0


def test_pending_bound_is_fatal() -> None:
    limits = Limits(max_line_length=20, max_literal_size=30, max_pipelined=1)
    parser = CommandParser(limits)
    parser.receive_data(b"a NOOP\r\n" * 5)  # 32 bytes, 8 parsed: 24 pending
    assert parser.pending_bytes == 32
    parser.receive_data(b"a NOOP\r\n" * 4)
    assert parser.pending_bytes == 0
    found = [parser.next_event() for _ in range(3)]
    assert found[0] == c.Noop("a")
    assert error(found[1], None, fatal=True) == "too much unprocessed input"
    assert found[2] is None


def test_largest_message_fits_the_bound() -> None:
    limits = Limits(max_line_length=40, max_literal_size=1000)
    message = bytes(range(256)) * 3 + b"\r\n" * 116
    stream = b"a APPEND INBOX {1000+}\r\n" + message + b"\r\nb NOOP\r\n"
    parser = CommandParser(limits)
    for offset in range(0, len(stream), 7):
        parser.receive_data(stream[offset : offset + 7])
        assert parser.pending_bytes <= limits.max_pending
    assert parser.next_event() == c.Append("a", "INBOX", (), None, message)
    assert parser.next_event() == c.Noop("b")


def test_limits_validation() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        Limits(max_depth=0)
    with pytest.raises(ValueError, match="max_pipelined"):
        Limits(max_pipelined=True)
    assert Limits().max_pending == 64 * 1024 + 50 * 1024 * 1024


# -- properties ------------------------------------------------------------------------

NUMBERS = st.integers(min_value=1, max_value=2**32 - 1)
SEQ_NUMBERS = st.one_of(st.none(), NUMBERS, st.integers(min_value=1, max_value=20))
SEQUENCE_SETS = st.lists(st.builds(SeqRange, SEQ_NUMBERS, SEQ_NUMBERS), min_size=1, max_size=5).map(
    lambda ranges: SequenceSet(tuple(ranges))
)
TAGS = st.from_regex(r"[A-Za-z0-9.\-!#\]]{1,8}", fullmatch=True)
ATOMS = st.from_regex(r"[A-Za-z$][A-Za-z0-9$_\-]{0,9}", fullmatch=True)
CAPABILITIES = st.from_regex(r"[A-Z][A-Z0-9=+.\-]{0,10}", fullmatch=True)
TEXT = st.text(max_size=12)
BYTES = st.binary(max_size=24)
SYSTEM_FLAGS = st.sampled_from(["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"])
FLAG_LISTS = st.lists(st.one_of(SYSTEM_FLAGS, ATOMS), max_size=4).map(tuple)
MAILBOXES = st.one_of(
    st.just("INBOX"),
    TEXT.filter(lambda name: not (name.isascii() and name.upper() == "INBOX")),
)
UPPER_TEXT = TEXT.map(str.upper).filter(lambda text: text.upper() == text)
HEADER_NAMES = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12
).map(str.upper)
DATES = st.dates()
DATE_TIMES = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=dt.timezone(dt.timedelta(minutes=minutes))),
    st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2100, 1, 1)).map(
        lambda moment: moment.replace(microsecond=0)
    ),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)


@st.composite
def sections(draw: st.DrawFn) -> Section:
    parts = tuple(draw(st.lists(NUMBERS, max_size=3)))
    texts = [None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"]
    text = draw(st.sampled_from([*texts, "MIME"] if parts else texts))
    fields: tuple[str, ...] = ()
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        fields = tuple(draw(st.lists(HEADER_NAMES, min_size=1, max_size=3)))
    return Section(parts, text, fields)  # type: ignore[arg-type]


FETCH_ATTRIBUTES = st.one_of(
    st.sampled_from(
        [
            FetchAttribute(name)
            for name in (
                *("BODY", "BODYSTRUCTURE", "ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822"),
                *("RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT", "UID"),
            )
        ]
    ),
    st.builds(
        FetchAttribute,
        st.just("BODY"),
        sections(),
        st.booleans(),
        st.none() | st.tuples(st.integers(0, 2**32 - 1), NUMBERS),
    ),
)

SEARCH_LEAVES = st.one_of(
    st.sampled_from(
        [
            SearchKey(name)
            for name in (
                *("ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT"),
                *("SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN"),
            )
        ]
    ),
    st.builds(
        lambda name, text: SearchKey(name, (text,)),
        st.sampled_from(["BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"]),
        TEXT,
    ),
    st.builds(
        lambda name, day: SearchKey(name, (day,)),
        st.sampled_from(["BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"]),
        DATES,
    ),
    st.builds(
        lambda name, size: SearchKey(name, (size,)),
        st.sampled_from(["LARGER", "SMALLER"]),
        st.integers(0, 2**63 - 1),
    ),
    st.builds(
        lambda name, word: SearchKey(name, (word,)),
        st.sampled_from(["KEYWORD", "UNKEYWORD"]),
        ATOMS,
    ),
    st.builds(lambda s: SearchKey("UID", (s,)), SEQUENCE_SETS),
    st.builds(lambda s: SearchKey("SEQSET", (s,)), SEQUENCE_SETS),
    st.builds(lambda f, v: SearchKey("HEADER", (f, v)), UPPER_TEXT, TEXT),
)
SEARCH_KEYS = st.recursive(
    SEARCH_LEAVES,
    lambda children: st.one_of(
        st.builds(lambda k: SearchKey("NOT", (k,)), children),
        st.builds(lambda a, b: SearchKey("OR", (a, b)), children, children),
        st.lists(children, min_size=1, max_size=3).map(lambda ks: SearchKey("AND", tuple(ks))),
    ),
    max_leaves=8,
)


def _uid_fetch(tag: str, sequence: SequenceSet, attributes: list[FetchAttribute]) -> c.Fetch:
    if all(a.name != "UID" for a in attributes):
        attributes.append(FetchAttribute("UID"))  # the parser's normalisation
    return c.Fetch(tag, sequence, tuple(attributes), uid=True)


def command_strategies(tag: st.SearchStrategy[str]) -> st.SearchStrategy[c.Command]:
    base64s = st.binary(min_size=1, max_size=30).map(base64.b64encode)
    return st.one_of(
        st.builds(c.Capability, tag),
        st.builds(c.Noop, tag),
        st.builds(c.Logout, tag),
        st.builds(c.StartTls, tag),
        st.builds(
            c.Authenticate,
            tag,
            st.from_regex(r"[A-Z][A-Z0-9\-]{0,12}", fullmatch=True),
            st.none() | st.just(b"=") | base64s,
        ),
        st.builds(c.Login, tag, BYTES, BYTES),
        st.builds(c.Select, tag, MAILBOXES, st.booleans()),
        st.builds(c.Create, tag, MAILBOXES),
        st.builds(c.Delete, tag, MAILBOXES),
        st.builds(c.Rename, tag, MAILBOXES, MAILBOXES),
        st.builds(c.Subscribe, tag, MAILBOXES),
        st.builds(c.Unsubscribe, tag, MAILBOXES),
        st.builds(c.List, tag, TEXT, TEXT, st.booleans()),
        st.builds(
            c.Status,
            tag,
            MAILBOXES,
            st.lists(
                st.sampled_from(["MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN"]),
                min_size=1,
                max_size=5,
            ).map(tuple),
        ),
        st.builds(
            c.Append,
            tag,
            MAILBOXES,
            FLAG_LISTS,
            st.none() | DATE_TIMES,
            st.binary(max_size=200) | st.just(b"Subject: \xe9t\xc3\xa9\r\n\r\nline\r\n.\r\n"),
        ),
        st.builds(c.Check, tag),
        st.builds(c.Close, tag),
        st.builds(c.Unselect, tag),
        st.builds(c.Expunge, tag, st.none() | SEQUENCE_SETS),
        st.builds(
            c.Search,
            tag,
            st.lists(SEARCH_KEYS, min_size=1, max_size=4).map(
                lambda keys: SearchKey("AND", tuple(keys))
            ),
            st.sampled_from([None, "UTF-8", "US-ASCII"]),
            st.booleans(),
        ),
        st.builds(
            c.Fetch,
            tag,
            SEQUENCE_SETS,
            st.lists(FETCH_ATTRIBUTES, min_size=1, max_size=4).map(tuple),
        ),
        st.builds(
            _uid_fetch, tag, SEQUENCE_SETS, st.lists(FETCH_ATTRIBUTES, min_size=1, max_size=4)
        ),
        st.builds(
            c.Store,
            tag,
            SEQUENCE_SETS,
            st.builds(
                StoreAction,
                st.sampled_from(["replace", "add", "remove"]),
                st.booleans(),
                FLAG_LISTS,
            ),
            st.booleans(),
        ),
        st.builds(c.Copy, tag, SEQUENCE_SETS, MAILBOXES, st.booleans()),
        st.builds(c.Move, tag, SEQUENCE_SETS, MAILBOXES, st.booleans()),
        st.builds(c.Idle, tag),
        st.builds(
            c.Id,
            tag,
            st.none()
            | st.lists(
                st.tuples(
                    TEXT.filter(lambda f: len(f.encode()) <= 30),
                    st.none() | st.text(max_size=40),
                ),
                max_size=5,
            ).map(tuple),
        ),
        st.builds(c.Enable, tag, st.lists(CAPABILITIES, min_size=1, max_size=3).map(tuple)),
        st.builds(c.Namespace, tag),
    )


COMMANDS = command_strategies(TAGS)


def feed_in_chunks(data: bytes, sizes: list[int], limits: Limits | None = None) -> list[Event]:
    chunks, offset = [], 0
    for size in sizes:
        chunks.append(data[offset : offset + size])
        offset += size
    chunks.append(data[offset:])
    return events(*chunks, limits=limits)


@settings(deadline=None, max_examples=300)
@given(COMMANDS, st.booleans(), st.lists(st.integers(1, 40), max_size=20))
def test_parse_serialize_round_trip(command: c.Command, plus: bool, sizes: list[int]) -> None:
    data = serialize(command, literal_plus=plus)
    assert data.endswith(b"\r\n")
    found = feed_in_chunks(data, sizes)
    assert commands_only(found) == [command]
    continuations = [e for e in found if isinstance(e, c.ContinuationNeeded)]
    literals = len(serialize(command, literal_plus=True)) - len(serialize(command))  # one "+" each
    assert len(continuations) == (0 if plus else literals)
    assert all(event.tag == command.tag for event in continuations)


@settings(deadline=None, max_examples=100)
@given(st.lists(COMMANDS, min_size=2, max_size=6))
def test_pipelined_round_trip(batch: list[c.Command]) -> None:
    data = b"".join(serialize(command, literal_plus=True) for command in batch)
    assert commands_only(events(data)) == batch


FRAGMENTS = st.sampled_from(
    [
        b"\r\n",
        b"a ",
        b"{3}\r\n",
        b"{5+}\r\n",
        b"~{2}\r\n",
        b"{999999999999}\r\n",
        b"a LOGIN ",
        b"a APPEND INBOX ",
        b"a SEARCH ",
        b"a FETCH 1 ",
        b"a AUTHENTICATE PLAIN\r\n",
        b"a IDLE\r\n",
        b"DONE\r\n",
        b"BODY[1.HEADER.FIELDS (",
        b"(",
        b")",
        b'"',
        b"\\",
        b"\x00",
        b"\xff",
        b"NOT ",
        b"OR ",
        b"*",
        b"1:*",
    ]
)
GARBAGE = st.lists(st.one_of(st.binary(max_size=40), FRAGMENTS), max_size=30).map(b"".join)
SMALL_LIMITS = st.builds(
    Limits,
    max_line_length=st.integers(8, 80),
    max_literal_size=st.integers(1, 64),
    max_command_literal_size=st.integers(1, 16),
    max_depth=st.integers(1, 4),
    max_pipelined=st.integers(1, 4),
    max_sequence_ranges=st.integers(1, 4),
    max_search_keys=st.integers(1, 8),
    max_search_depth=st.integers(1, 6),
)


def drive(
    parser: CommandParser, data: bytes, sizes: list[int], choices: st.DataObject
) -> list[Event]:
    """Feed `data` like a server would, honouring raw lines and refusing some literals, and
    check the pending-bytes bound after every call."""
    found: list[Event] = []
    bound = parser.limits.max_pending
    offset = 0
    for size in [*sizes, len(data)]:
        parser.receive_data(data[offset : offset + size])
        offset += size
        assert parser.pending_bytes <= bound
        while (event := parser.next_event()) is not None:
            assert parser.pending_bytes <= bound
            assert isinstance(event, EVENT_TYPES)
            found.append(event)
            if isinstance(event, c.CommandError):
                assert isinstance(event.message, str)
                assert event.message
                assert event.tag is None or isinstance(event.tag, str)
            elif isinstance(event, c.ContinuationNeeded):
                assert event.size >= 0
                if choices.draw(st.booleans()):
                    parser.reject_literal()
            elif isinstance(event, c.Authenticate | c.Idle | c.RawLine) and choices.draw(
                st.booleans()
            ):
                parser.expect_raw_line()
        if offset >= len(data):
            break
    return found


@settings(deadline=None, max_examples=300)
@given(GARBAGE, st.lists(st.integers(1, 16), max_size=40), st.data())
def test_garbage_never_raises(data: bytes, sizes: list[int], choices: st.DataObject) -> None:
    found = drive(CommandParser(), data, sizes, choices)
    fatal = [
        i for i, event in enumerate(found) if isinstance(event, c.CommandError) and event.fatal
    ]
    assert fatal in ([], [len(found) - 1])  # nothing comes after a fatal error


@settings(deadline=None, max_examples=300)
@given(
    SMALL_LIMITS,
    st.one_of(
        GARBAGE,
        st.lists(command_strategies(st.just("t")), max_size=5).map(
            lambda batch: b"".join(serialize(command, literal_plus=True) for command in batch)
        ),
    ),
    st.lists(st.integers(1, 64), max_size=20),
    st.data(),
)
def test_buffered_data_stays_bounded(
    limits: Limits, data: bytes, sizes: list[int], choices: st.DataObject
) -> None:
    parser = CommandParser(limits)
    found = drive(parser, data, sizes, choices)
    if any(isinstance(event, c.CommandError) and event.fatal for event in found):
        assert parser.pending_bytes == 0
        parser.receive_data(b"a NOOP\r\n")
        assert parser.next_event() is None


def test_limits_can_be_raised_for_what_follows() -> None:
    """A server parses with small limits before login and raises them after."""
    parser = CommandParser(Limits(max_command_literal_size=16, max_literal_size=16))
    parser.receive_data(b"a1 APPEND INBOX {40}\r\n")
    refused = parser.next_event()
    assert isinstance(refused, c.CommandError)
    parser.limits = Limits()
    assert parser.limits == Limits()
    parser.receive_data(b"a2 APPEND INBOX {40}\r\n")
    assert isinstance(parser.next_event(), c.ContinuationNeeded)
