"""Command events back to client command lines, for the gateway to talk to IMAP backends.

The inverse of `parser.CommandParser`: ``parse(serialize(c)) == c`` for every command the
parser can produce. Strings become atoms when the grammar allows, quoted strings when they
are 7-bit, literals otherwise; mailbox names are sent in modified UTF-7.
"""

from __future__ import annotations

import datetime as dt
import re

from gateway.imap import commands as cmd
from gateway.imap import mutf7
from gateway.imap.parser import MONTHS, search_codec
from gateway.imap.syntax import FetchAttribute, SearchKey, Section, SequenceSet, StoreAction

__all__ = ["serialize"]

_ASTRING_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+")
_LIST_ATOM = re.compile(rb"[\x21\x23-\x27\x2a-\x5b\x5d-\x7a\x7c-\x7e]+")
_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]{0,1024}")
_STORE_PREFIX = {"replace": b"", "add": b"+", "remove": b"-"}


class _Writer:
    __slots__ = ("literal_plus", "out")

    def __init__(self, literal_plus: bool) -> None:
        self.out = bytearray()
        self.literal_plus = literal_plus

    def add(self, *items: bytes) -> None:
        for item in items:
            self.out += item

    def literal(self, data: bytes) -> None:
        marker = b"+" if self.literal_plus else b""
        self.out += b"{%d%s}\r\n" % (len(data), marker)
        self.out += data

    def string(self, data: bytes) -> None:
        if _QUOTABLE.fullmatch(data):
            self.out += b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        else:
            self.literal(data)

    def nstring(self, data: bytes | None) -> None:
        if data is None:
            self.out += b"NIL"
        else:
            self.string(data)

    def astring(self, data: bytes) -> None:
        if _ASTRING_ATOM.fullmatch(data):
            self.out += data
        else:
            self.string(data)

    def mailbox(self, name: str) -> None:
        self.astring(mutf7.encode(name).encode("ascii"))

    def list_mailbox(self, pattern: str) -> None:
        data = mutf7.encode(pattern).encode("ascii")
        if _LIST_ATOM.fullmatch(data):
            self.out += data
        else:
            self.string(data)

    def flags(self, flags: tuple[str, ...]) -> None:
        self.out += b"(" + " ".join(flags).encode("ascii") + b")"

    def sequence(self, sequence: SequenceSet) -> None:
        if not sequence.ranges:
            raise ValueError("empty sequence set")
        self.out += str(sequence).encode("ascii")


def serialize(command: cmd.Command, *, literal_plus: bool = False) -> bytes:
    """`command` as one CRLF-terminated client command, literals included.

    With `literal_plus`, literals are non-synchronising (``{n+}``, RFC 7888); otherwise they
    are ``{n}`` and the transport must wait for the server's ``+`` before sending each one.
    Raises ValueError for a command no client could send (an empty fetch list, ...).
    """
    w = _Writer(literal_plus)
    w.add(command.tag.encode("ascii"), b" ")
    match command:
        case cmd.Capability():
            w.add(b"CAPABILITY")
        case cmd.Noop():
            w.add(b"NOOP")
        case cmd.Logout():
            w.add(b"LOGOUT")
        case cmd.StartTls():
            w.add(b"STARTTLS")
        case cmd.Authenticate(mechanism=mechanism, initial_response=initial):
            w.add(b"AUTHENTICATE ", mechanism.encode("ascii"))
            if initial is not None:
                w.add(b" ", initial)
        case cmd.Login(user=user, password=password):
            w.add(b"LOGIN ")
            w.astring(user)
            w.add(b" ")
            w.astring(password)
        case cmd.Select(mailbox=mailbox, readonly=readonly):
            w.add(b"EXAMINE " if readonly else b"SELECT ")
            w.mailbox(mailbox)
        case cmd.Create(mailbox=mailbox):
            w.add(b"CREATE ")
            w.mailbox(mailbox)
        case cmd.Delete(mailbox=mailbox):
            w.add(b"DELETE ")
            w.mailbox(mailbox)
        case cmd.Rename(old=old, new=new):
            w.add(b"RENAME ")
            w.mailbox(old)
            w.add(b" ")
            w.mailbox(new)
        case cmd.Subscribe(mailbox=mailbox):
            w.add(b"SUBSCRIBE ")
            w.mailbox(mailbox)
        case cmd.Unsubscribe(mailbox=mailbox):
            w.add(b"UNSUBSCRIBE ")
            w.mailbox(mailbox)
        case cmd.List(reference=reference, pattern=pattern, subscribed=subscribed):
            w.add(b"LSUB " if subscribed else b"LIST ")
            w.mailbox(reference)
            w.add(b" ")
            w.list_mailbox(pattern)
        case cmd.Status(mailbox=mailbox, items=items):
            if not items:
                raise ValueError("STATUS needs at least one item")
            w.add(b"STATUS ")
            w.mailbox(mailbox)
            w.add(b" (", " ".join(items).encode("ascii"), b")")
        case cmd.Append():
            _append(w, command)
        case cmd.Check():
            w.add(b"CHECK")
        case cmd.Close():
            w.add(b"CLOSE")
        case cmd.Unselect():
            w.add(b"UNSELECT")
        case cmd.Expunge(uids=uids):
            if uids is None:
                w.add(b"EXPUNGE")
            else:
                w.add(b"UID EXPUNGE ")
                w.sequence(uids)
        case cmd.Search(key=key, charset=charset, uid=uid):
            w.add(b"UID SEARCH " if uid else b"SEARCH ")
            if charset is not None:
                w.add(b"CHARSET ")
                w.astring(charset.encode("ascii"))
                w.add(b" ")
            if key.name != "AND":
                key = SearchKey("AND", (key,))
            _search_keys(w, key.args, search_codec(charset))
        case cmd.Fetch(sequence=sequence, attributes=attributes, uid=uid):
            if not attributes:
                raise ValueError("FETCH needs at least one attribute")
            w.add(b"UID FETCH " if uid else b"FETCH ")
            w.sequence(sequence)
            w.add(b" (")
            for index, attribute in enumerate(attributes):
                if index:
                    w.add(b" ")
                _fetch_attribute(w, attribute)
            w.add(b")")
        case cmd.Store(sequence=sequence, action=action, uid=uid):
            w.add(b"UID STORE " if uid else b"STORE ")
            w.sequence(sequence)
            w.add(b" ", _store_name(action), b" ")
            w.flags(action.flags)
        case cmd.Copy(sequence=sequence, mailbox=mailbox, uid=uid):
            w.add(b"UID COPY " if uid else b"COPY ")
            w.sequence(sequence)
            w.add(b" ")
            w.mailbox(mailbox)
        case cmd.Move(sequence=sequence, mailbox=mailbox, uid=uid):
            w.add(b"UID MOVE " if uid else b"MOVE ")
            w.sequence(sequence)
            w.add(b" ")
            w.mailbox(mailbox)
        case cmd.Idle():
            w.add(b"IDLE")
        case cmd.Id(parameters=parameters):
            _id(w, parameters)
        case cmd.Enable(capabilities=capabilities):
            if not capabilities:
                raise ValueError("ENABLE needs at least one capability")
            w.add(b"ENABLE ", " ".join(capabilities).encode("ascii"))
        case cmd.Namespace():
            w.add(b"NAMESPACE")
        case _:
            raise TypeError(f"not a command event: {command!r}")
    w.add(b"\r\n")
    return bytes(w.out)


def _append(w: _Writer, command: cmd.Append) -> None:
    w.add(b"APPEND ")
    w.mailbox(command.mailbox)
    if command.flags:
        w.add(b" ")
        w.flags(command.flags)
    if command.internal_date is not None:
        w.add(b' "', _date_time(command.internal_date), b'"')
    w.add(b" ")
    w.literal(command.message)


def _date_time(value: dt.datetime) -> bytes:
    """RFC 3501 date-time; a naive datetime is taken as UTC."""
    offset = value.utcoffset() or dt.timedelta()
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    date = f"{value.day:02d}-{MONTHS[value.month - 1]}-{value.year:04d}"
    return f"{date} {value:%H:%M:%S} {sign}{hours:02d}{minutes:02d}".encode("ascii")


def _search_keys(w: _Writer, keys: tuple[object, ...], codec: str) -> None:
    if not keys:
        raise ValueError("empty search key list")
    for index, key in enumerate(keys):
        if index:
            w.add(b" ")
        if not isinstance(key, SearchKey):
            raise TypeError(f"not a search key: {key!r}")
        _search_key(w, key, codec)


def _search_key(w: _Writer, key: SearchKey, codec: str) -> None:
    if key.name == "AND":
        w.add(b"(")
        _search_keys(w, key.args, codec)
        w.add(b")")
        return
    if key.name != "SEQSET":
        w.add(key.name.encode("ascii"))
    for index, arg in enumerate(key.args):
        if index or key.name != "SEQSET":
            w.add(b" ")
        if isinstance(arg, SearchKey):
            _search_key(w, arg, codec)
        elif isinstance(arg, SequenceSet):
            w.sequence(arg)
        elif isinstance(arg, dt.date):
            w.add(f"{arg.day}-{MONTHS[arg.month - 1]}-{arg.year:04d}".encode("ascii"))
        elif isinstance(arg, int):
            w.add(str(arg).encode("ascii"))
        else:
            w.astring(arg.encode(codec))


def _fetch_attribute(w: _Writer, attribute: FetchAttribute) -> None:
    if attribute.section is None:
        if attribute.peek or attribute.partial is not None:
            raise ValueError("PEEK and partial fetches need a section")
        w.add(attribute.name.encode("ascii"))
        return
    if attribute.name != "BODY":
        raise ValueError(f"{attribute.name} takes no section")
    w.add(b"BODY.PEEK[" if attribute.peek else b"BODY[")
    _section(w, attribute.section)
    w.add(b"]")
    if attribute.partial is not None:
        w.add(b"<%d.%d>" % attribute.partial)


def _section(w: _Writer, section: Section) -> None:
    w.add(".".join(str(part) for part in section.part).encode("ascii"))
    if section.text is not None:
        w.add(b"." if section.part else b"", section.text.encode("ascii"))
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        if not section.fields:
            raise ValueError("HEADER.FIELDS needs at least one field name")
        w.add(b" (")
        for index, field in enumerate(section.fields):
            if index:
                w.add(b" ")
            w.astring(field.encode("ascii"))
        w.add(b")")


def _store_name(action: StoreAction) -> bytes:
    return _STORE_PREFIX[action.mode] + (b"FLAGS.SILENT" if action.silent else b"FLAGS")


def _id(w: _Writer, parameters: tuple[tuple[str, str | None], ...] | None) -> None:
    w.add(b"ID ")
    if parameters is None:
        w.add(b"NIL")
        return
    w.add(b"(")
    for index, (field, value) in enumerate(parameters):
        if index:
            w.add(b" ")
        w.string(field.encode("utf-8"))
        w.add(b" ")
        w.nstring(None if value is None else value.encode("utf-8"))
    w.add(b")")
