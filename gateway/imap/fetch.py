"""FETCH: which messages, which data items, and the bytes of each ``* n FETCH (...)``.

A FETCH is planned once (`FetchPlan`: does it need the messages' bytes, does it set
\\Seen, can the structure cache answer it), then served in batches of `FETCH_BATCH`
messages, one store round trip each, so a FETCH of a whole folder never holds the folder
in memory. Item computation (`fetch_items`) is pure: metadata and a parsed message in,
response values out.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.imap import commands as c
from gateway.imap.codes import Code
from gateway.imap.message import ParsedMessage, apply_partial
from gateway.imap.response import Atom, Literal, Raw, Value, encode, untagged
from gateway.imap.selected import bad_sequence, targets
from gateway.imap.structure_cache import CACHEABLE
from gateway.imap.syntax import FetchAttribute, Section
from gateway.imap.view import SelectedView, flag_list

if TYPE_CHECKING:
    from gateway.imap.engine import ImapSession

FETCH_BATCH = 64  # messages loaded per store round trip
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# the items the view's metadata answers: no message bytes needed
_META_ITEMS = ("UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE")
_HEADER_ATOM = re.compile(r"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+")  # astring


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """What a FETCH needs, worked out once for all its messages."""

    attributes: list[FetchAttribute]  # each item once, UID first when the client said UID
    marks_seen: bool  # a body item without PEEK, on a mailbox this session may mark read
    needs_body: bool  # some item needs the message (its bytes, or its cached structures)
    wants_flags: bool  # FLAGS asked: a \Seen just set shows there, not as an extra item
    from_cache: bool  # every body item is a structure the shared cache may hold

    @classmethod
    def of(cls, command: c.Fetch, view: SelectedView, may_read: bool, cache: bool) -> FetchPlan:
        attributes = _unique(command.attributes)
        if command.uid and not any(a.name == "UID" for a in attributes):
            attributes.insert(0, FetchAttribute("UID"))
        return cls(
            attributes=attributes,
            marks_seen=not view.readonly and may_read and any(map(_sets_seen, attributes)),
            needs_body=any(a.name not in _META_ITEMS for a in attributes),
            wants_flags=any(a.name == "FLAGS" for a in attributes),
            # ENVELOPE / BODYSTRUCTURE / BODY alone can come from the cache, without bytes
            from_cache=cache
            and all(
                a.name in _META_ITEMS or (a.name in CACHEABLE and a.section is None)
                for a in attributes
            ),
        )


async def fetch(session: ImapSession, command: c.Fetch) -> None:
    """FETCH / UID FETCH: the responses batch by batch, then OK, or NO [EXPUNGEISSUED]
    when messages vanished under us (RFC 2180 §4.1.2)."""
    view = session.view
    assert view is not None
    if await bad_sequence(session, command, command.sequence, command.uid):
        return
    structures = session.config.structures is not None
    plan = FetchPlan.of(command, view, session.granted.may("read"), structures)
    chosen = targets(session, command.sequence, command.uid)
    missing = False
    for begin in range(0, len(chosen), FETCH_BATCH):
        out, lost = await _fetch_batch(session, plan, chosen[begin : begin + FETCH_BATCH])
        missing = missing or lost
        await session.channel.write(b"".join(out))
    if missing:
        await session.sync_after(command)
        # Dovecot's words, which imaptest's stress mode knows: not a failure of the server
        text = "Some of the requested messages no longer exist"
        await session.reply(command.tag, "NO", text, Code.EXPUNGEISSUED)
        return
    await session.ok(command, "FETCH completed")


async def _fetch_batch(
    session: ImapSession, plan: FetchPlan, batch: list[tuple[int, int]]
) -> tuple[list[bytes], bool]:
    """The responses for one batch of (seq, UID), from one store round trip at most;
    True with them when some message was gone from the store."""
    view = session.view
    assert view is not None
    cached: dict[int, dict[str, bytes]] = {}
    if plan.needs_body and plan.from_cache:
        cached = _cached_structures(session, view, [u for _, u in batch], plan.attributes)
    wanted = [u for _, u in batch if u not in cached] if plan.needs_body else []
    bodies = await session.store.fetch_messages(view.folder, wanted) if wanted else {}
    out: list[bytes] = []
    missing = False
    for seq, uid in batch:
        parsed = None
        if plan.needs_body and uid not in cached:
            if uid not in bodies:
                missing = True
                continue
            parsed = ParsedMessage(bodies[uid])
        out += await _message_response(session, plan, seq, uid, parsed, cached.get(uid))
    return out, missing


async def _message_response(
    session: ImapSession,
    plan: FetchPlan,
    seq: int,
    uid: int,
    parsed: ParsedMessage | None,
    cached: dict[str, bytes] | None,
) -> list[bytes]:
    """``* seq FETCH (...)`` for one message, preceded by FLAGS when setting \\Seen made
    a keyword known."""
    view = session.view
    assert view is not None
    meta = view.meta[uid]
    out: list[bytes] = []
    flags = meta.flags
    if plan.marks_seen and "\\Seen" not in flags and uid not in view.gone:
        flags, out = await _set_seen(session, view, uid, flags)
    shown = view.shown(uid, flags)
    items = fetch_items(plan.attributes, uid, shown, meta.internal_date, meta.size, parsed, cached)
    if parsed is not None and session.config.structures is not None:
        _remember_structures(session, view, uid, items)
    if flags != meta.flags and not plan.wants_flags:
        # RFC 3501 §6.4.5: \Seen was set, the client hears of it
        items += [Atom("FLAGS"), flag_list(shown)]
    out.append(untagged(seq, Atom("FETCH"), items))
    return out


async def _set_seen(
    session: ImapSession, view: SelectedView, uid: int, flags: frozenset[str]
) -> tuple[frozenset[str], list[bytes]]:
    """Set \\Seen in the store before answering, so the reply shows what is stored; returns
    the flags now and the FLAGS updates they call for (none when the message is gone)."""
    changed = await session.store.store_flags(view.folder, [uid], "add", ["\\Seen"])
    if uid not in changed:
        return flags, []
    flags = changed[uid]
    out = view.note_keywords([flags])
    view.set_flags(uid, flags)
    return flags, out


# -- items ------------------------------------------------------------------------------------


def fetch_items(
    attributes: Iterable[FetchAttribute],
    uid: int,
    flags: frozenset[str],
    internal: dt.datetime,
    size: int,
    parsed: ParsedMessage | None,
    cached: dict[str, bytes] | None = None,
) -> list[Value]:
    """The name/value pairs of one FETCH response, in the order asked. `flags` are those
    shown (\\Recent included); `parsed` is needed unless every body item is `cached`."""
    items: list[Value] = []
    for attribute in attributes:
        name = attribute.name
        if cached is not None and name in cached and attribute.section is None:
            items += [Atom(name), Raw(cached[name])]
        elif name == "UID":
            items += [Atom("UID"), uid]
        elif name == "FLAGS":
            items += [Atom("FLAGS"), flag_list(flags)]
        elif name == "INTERNALDATE":
            items += [Atom("INTERNALDATE"), internal_date(internal)]
        elif name == "RFC822.SIZE":
            items += [Atom("RFC822.SIZE"), size]
        else:
            assert parsed is not None
            items += _body_item(attribute, parsed)
    return items


def _body_item(attribute: FetchAttribute, parsed: ParsedMessage) -> list[Value]:
    """An item computed from the message itself: structures, whole text, sections."""
    name = attribute.name
    if name == "ENVELOPE":
        return [Atom("ENVELOPE"), parsed.envelope()]
    if name == "BODYSTRUCTURE":
        return [Atom("BODYSTRUCTURE"), parsed.bodystructure(extensible=True)]
    if name == "BODY" and attribute.section is None:
        return [Atom("BODY"), parsed.bodystructure(extensible=False)]
    if name == "RFC822":
        return [Atom("RFC822"), _literal(parsed.raw)]
    if name in ("RFC822.HEADER", "RFC822.TEXT"):
        section = Section(text="HEADER" if name == "RFC822.HEADER" else "TEXT")
        return [Atom(name), _literal(parsed.section(section) or b"")]
    assert attribute.section is not None
    # A part that does not exist is empty, as Dovecot answers it (``BODY[5] {0}``)
    data = parsed.section(attribute.section) or b""
    return [Atom(_section_name(attribute)), _literal(apply_partial(data, attribute.partial))]


def _section_name(attribute: FetchAttribute) -> str:
    """``BODY[section]<origin>`` as the response names it: PEEK dropped, header names as
    the parser gives them (upper case, as Dovecot echoes them), quoted when not atoms."""
    section = attribute.section
    assert section is not None
    spec = ".".join(str(p) for p in section.part)
    if section.text:
        spec = f"{spec}.{section.text}" if spec else section.text
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        names = [
            name if _HEADER_ATOM.fullmatch(name) else encode(name).decode("ascii")
            for name in section.fields
        ]
        spec += " (" + " ".join(names) + ")"
    origin = f"<{attribute.partial[0]}>" if attribute.partial else ""
    return f"BODY[{spec}]{origin}"


def _literal(data: bytes) -> Literal:
    """IMAP literals may not carry NUL (RFC 3501 CHAR8): sent as 0x80, as Dovecot does."""
    return Literal(data.replace(b"\0", b"\x80") if b"\0" in data else data)


def internal_date(when: dt.datetime) -> str:
    """RFC 3501 date-time: ``"dd-Mon-yyyy hh:mm:ss +zzzz"``. The day is two digits, as
    Dovecot writes it (date-day-fixed allows "02" as well as " 2"); month names are
    English whatever the locale; a naive datetime is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return (
        f"{when.day:02d}-{MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{hours:02d}{minutes:02d}"
    )


def _unique(attributes: Iterable[FetchAttribute]) -> list[FetchAttribute]:
    """Each FETCH data item once, in the order first asked (``FLAGS FLAGS``: one FLAGS)."""
    seen: set[FetchAttribute] = set()
    out: list[FetchAttribute] = []
    for attribute in attributes:
        if attribute not in seen:
            seen.add(attribute)
            out.append(attribute)
    return out


def _sets_seen(attribute: FetchAttribute) -> bool:
    """RFC 3501 §6.4.5: BODY[...] (not BODY.PEEK) and RFC822, RFC822.TEXT set \\Seen."""
    if attribute.name == "BODY" and attribute.section is not None:
        return not attribute.peek
    return attribute.name in ("RFC822", "RFC822.TEXT")


# -- the structure cache ----------------------------------------------------------------------


def _cached_structures(
    session: ImapSession, view: SelectedView, uids: list[int], attributes: list[FetchAttribute]
) -> dict[int, dict[str, bytes]]:
    """The encoded structures of the messages whose every asked structure is cached."""
    cache = session.config.structures
    assert cache is not None
    names = [a.name for a in attributes if a.name in CACHEABLE]
    address = session.store.address
    found: dict[int, dict[str, bytes]] = {}
    for uid in uids:
        entry: dict[str, bytes] = {}
        for name in names:
            value = cache.get((address, view.folder, view.uidvalidity, uid, name))
            if value is None:
                break
            entry[name] = value
        else:
            found[uid] = entry
    return found


def _remember_structures(
    session: ImapSession, view: SelectedView, uid: int, items: list[Value]
) -> None:
    """Keep the structures just computed: a message's bytes never change under its
    (folder, UIDVALIDITY, UID), so neither do they, for every session of the server."""
    cache = session.config.structures
    assert cache is not None
    address = session.store.address
    for index in range(0, len(items) - 1, 2):
        name = items[index]
        if isinstance(name, Atom) and name.value in CACHEABLE:
            value = items[index + 1]
            encoded = value.value if isinstance(value, Raw) else encode(value)
            cache.put((address, view.folder, view.uidvalidity, uid, name.value), encoded)
