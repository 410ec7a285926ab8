"""Command events: what `parser.CommandParser` yields for each complete client command.

Mailbox names are decoded from modified UTF-7 (RFC 3501 §5.1.3) into `str`; "INBOX" in
any case is normalised to "INBOX". A LIST reference or pattern that is not valid modified
UTF-7 is kept as written (matched literally); any other such name is refused (NO).
Strings that may carry 8-bit data stay `bytes` where RFC 3501 says they are octets
(APPEND's message, LOGIN's password may be any astring).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from gateway.imap.syntax import FetchAttribute, SearchKey, SequenceSet, StatusItem, StoreAction


@dataclass(frozen=True, slots=True)
class Command:
    tag: str


@dataclass(frozen=True, slots=True)
class Capability(Command):
    pass


@dataclass(frozen=True, slots=True)
class Noop(Command):
    pass


@dataclass(frozen=True, slots=True)
class Logout(Command):
    pass


@dataclass(frozen=True, slots=True)
class StartTls(Command):
    pass


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    """`initial_response` is the SASL-IR argument, still base64 ("=" for empty), or None."""

    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True, slots=True)
class Login(Command):
    user: bytes
    password: bytes


@dataclass(frozen=True, slots=True)
class Select(Command):
    mailbox: str
    readonly: bool = False  # EXAMINE


@dataclass(frozen=True, slots=True)
class Create(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Delete(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename(Command):
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST (or LSUB when `subscribed`). `reference` and `pattern` decoded from mUTF-7, or
    as written when they are not valid mUTF-7 (Dovecot lists nothing for them: no error)."""

    reference: str
    pattern: str
    subscribed: bool = False


@dataclass(frozen=True, slots=True)
class Status(Command):
    mailbox: str
    items: tuple[StatusItem, ...]


@dataclass(frozen=True, slots=True)
class Append(Command):
    mailbox: str
    flags: tuple[str, ...]
    internal_date: dt.datetime | None
    message: bytes


@dataclass(frozen=True, slots=True)
class Check(Command):
    pass


@dataclass(frozen=True, slots=True)
class Close(Command):
    pass


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    pass


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE (RFC 4315) when `uids` is given."""

    uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class Search(Command):
    key: SearchKey  # the top-level keys are ANDed: SearchKey("AND", (...))
    charset: str | None = None
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    """Macros (ALL, FAST, FULL) are expanded by the parser. UID FETCH adds UID itself."""

    sequence: SequenceSet
    attributes: tuple[FetchAttribute, ...]
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Store(Command):
    sequence: SequenceSet
    action: StoreAction
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Copy(Command):
    sequence: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Move(Command):
    sequence: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Idle(Command):
    pass


@dataclass(frozen=True, slots=True)
class Id(Command):
    """RFC 2971: field/value pairs (values may be None), or None for ``ID NIL``."""

    parameters: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class Enable(Command):
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    pass


# -- events that are not commands -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContinuationNeeded:
    """A synchronising literal was announced: the server must send ``+ ...`` (or refuse
    with a tagged BAD / NO, then call `CommandParser.reject_literal`)."""

    tag: str | None
    size: int
    message: bool = False  # the literal is APPEND's message (a proxy may refuse it early)


@dataclass(frozen=True, slots=True)
class RawLine:
    """A line read in raw mode: a SASL response after ``+``, or ``DONE`` ending IDLE."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CommandError:
    """A command that could not be parsed. `tag` is None when not even a tag was read.
    When `fatal`, the connection cannot continue (answer ``* BYE`` and close).

    `status` is the tagged answer: BAD for a syntax error; NO for a well-formed command
    naming a mailbox that cannot exist, its name not being valid modified UTF-7 (or UTF-8):
    the grammar allows it (an astring), so it is refused as Dovecot does, not called bad."""

    tag: str | None
    message: str
    fatal: bool = False
    status: Literal["BAD", "NO"] = "BAD"
