"""The authenticated-state commands on folders: SELECT / EXAMINE, CREATE, DELETE, RENAME,
SUBSCRIBE / UNSUBSCRIBE, LIST / LSUB, STATUS and APPEND.

Each handler is a function of the session and its command. Changes need the write right
(NOPERM otherwise); what the store refuses comes back as its `StoreError`, which the
session's dispatcher answers with the error's code.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from gateway.imap import commands as c
from gateway.imap.codes import Code
from gateway.imap.listing import list_entries, lsub_entries, pattern_regex, wire_name
from gateway.imap.mailstore import DELIMITER, FolderExists, FolderNotFound, StoreError
from gateway.imap.response import Atom, Value, untagged, untagged_status
from gateway.imap.session import SessionGrant
from gateway.imap.view import ANY_KEYWORD, RECENT, SYSTEM_FLAGS, SelectedView

if TYPE_CHECKING:
    from gateway.imap.engine import ImapSession


# -- SELECT / EXAMINE -------------------------------------------------------------------------


async def select(session: ImapSession, command: c.Select) -> None:
    """SELECT / EXAMINE: the folder's state becomes the session's view, announced by the
    untagged responses of RFC 3501 §6.3.1, then OK [READ-WRITE] or [READ-ONLY]."""
    bal = session.store.address
    if session.view is not None:
        # The selected mailbox is closed first, without expunge, whatever the outcome
        # (RFC 3501 §6.3.1): a failed SELECT leaves no mailbox selected. [CLOSED] is
        # RFC 7162 / 9051's marker, ignored by IMAP4rev1 clients, sent as Dovecot does.
        session.view = None
        await session.channel.write(untagged_status("OK", "previous mailbox closed", Code.CLOSED))
    version = session.folder_version(bal, command.mailbox)
    try:
        state = await session.store.folder_state(command.mailbox)
    except StoreError:
        await _selected(session, command, "failed:no")
        raise
    permanent = _permanent_flags(session.granted, command.readonly)
    # A mailbox where this grant can change nothing is read-only (RFC 4314 §3.1.1 style)
    readonly = command.readonly or not permanent
    recent_above = session.claim_recent(bal, command.mailbox, state, readonly)
    view = SelectedView.from_state(
        command.mailbox, readonly, state, version, permanent, recent_above
    )
    await session.channel.write(b"".join(_select_responses(view)))
    session.view = view
    # Without the write right the mailbox is read-only to this person, \\Seen aside
    # (PERMANENTFLAGS says so): a client must not offer what would be refused.
    writable = not readonly and session.granted.may("write")
    mode = Code.READ_WRITE if writable else Code.READ_ONLY
    verb = "EXAMINE" if command.readonly else "SELECT"
    await session.reply(command.tag, "OK", f"{verb} completed", mode)
    await _selected(session, command, "ok")


def _select_responses(view: SelectedView) -> list[bytes]:
    """FLAGS, PERMANENTFLAGS, EXISTS, RECENT, UNSEEN (when one is), UIDVALIDITY, UIDNEXT:
    Dovecot's order, which clients and imaptest expect."""
    out = [
        view.flags_response(),
        view.permanent_flags_response(),
        untagged(view.exists, Atom("EXISTS")),
        untagged(len(view.recent), Atom("RECENT")),
    ]
    unseen = view.first_unseen()
    if unseen is not None:
        out.append(untagged_status("OK", "first unseen", f"{Code.UNSEEN} {unseen}"))
    out += [
        untagged_status("OK", "UIDs valid", f"{Code.UIDVALIDITY} {view.uidvalidity}"),
        untagged_status("OK", "predicted next UID", f"{Code.UIDNEXT} {view.uidnext}"),
    ]
    return out


async def _selected(session: ImapSession, command: c.Select, result: str) -> None:
    """Tell the grant's owner (the audit trail) which folder was opened, and how it went."""
    grant = session.granted
    if grant.on_selected is not None:
        await grant.on_selected(command, result)


def _permanent_flags(grant: SessionGrant, readonly: bool) -> tuple[str, ...]:
    """The flags this grant may change: all with write, \\Seen alone with read only."""
    if readonly:
        return ()
    if grant.may("write"):
        return (*SYSTEM_FLAGS, ANY_KEYWORD)
    return ("\\Seen",) if grant.may("read") else ()


# -- folder changes ---------------------------------------------------------------------------


async def create(session: ImapSession, command: c.Create) -> None:
    """CREATE; a trailing delimiter only says the folder will have children (§6.3.3)."""
    if not await session.require(command, "write"):
        return
    name = command.mailbox.rstrip(DELIMITER)
    await session.store.create_folder(name)
    await session.ok(command, "CREATE completed")


async def delete(session: ImapSession, command: c.Delete) -> None:
    """DELETE; deleting the selected folder leaves none selected."""
    if not await session.require(command, "write"):
        return
    await session.store.delete_folder(command.mailbox)
    if session.view is not None and session.view.folder == command.mailbox:
        session.view = None
    await session.ok(command, "DELETE completed")


async def rename(session: ImapSession, command: c.Rename) -> None:
    """RENAME, sub-folders and \\Recent claims following; the selected view follows too
    (its messages and UIDs are the same), except for INBOX, which stays, emptied."""
    if not await session.require(command, "write"):
        return
    old, new = command.old, command.new.rstrip(DELIMITER) or command.new
    if old != "INBOX" and new.startswith(old + DELIMITER):
        await session.reply(command.tag, "NO", "cannot move a folder under itself", Code.CANNOT)
        return
    store = session.store
    folders = {f.name for f in await store.list_folders()}
    if old not in folders:
        raise FolderNotFound(old)
    if new in folders:
        raise FolderExists(new)
    # RFC 3501 §6.3.5: superior hierarchical names of the new name are created too
    parent = new.rpartition(DELIMITER)[0]
    if parent and parent not in folders:
        await store.create_folder(parent)
    await store.rename_folder(old, new)
    if old != "INBOX":  # INBOX's messages go to a new folder, a new UIDVALIDITY
        session.config.recent.rename(store.address, old, new)
    view = session.view
    if view is not None and old != "INBOX":  # INBOX stays: its view sees the messages go
        if view.folder == old:
            view.folder = new
        elif view.folder.startswith(old + DELIMITER):
            view.folder = new + view.folder[len(old) :]
    await session.ok(command, "RENAME completed")


async def subscribe(session: ImapSession, command: c.Subscribe | c.Unsubscribe) -> None:
    """SUBSCRIBE / UNSUBSCRIBE: a change to the BAL, so the write right."""
    if not await session.require(command, "write"):
        return
    await session.store.subscribe(command.mailbox, isinstance(command, c.Subscribe))
    await session.ok(command, f"{type(command).__name__.upper()} completed")


# -- LIST, STATUS -----------------------------------------------------------------------------


async def list_folders(session: ImapSession, command: c.List) -> None:
    """LIST / LSUB; an empty LIST pattern asks for the delimiter and root (§6.3.8)."""
    name = "LSUB" if command.subscribed else "LIST"
    if not command.pattern and not command.subscribed:
        await session.channel.write(untagged(Atom("LIST"), [Atom("\\Noselect")], DELIMITER, ""))
        await session.ok(command, "LIST completed")
        return
    folders = list(await session.store.list_folders())
    regex = pattern_regex(command.reference + command.pattern)
    if command.subscribed:
        entries = lsub_entries(folders, regex, command.pattern.endswith("%"))
    else:
        entries = list_entries(folders, regex)
    out = [
        untagged(Atom(name), attributes, DELIMITER, wire_name(folder))
        for folder, attributes in entries
    ]
    await session.channel.write(b"".join(out))
    await session.ok(command, f"{name} completed")


async def status(session: ImapSession, command: c.Status) -> None:
    """STATUS. RECENT counts the messages no session has claimed yet and, on the folder
    this session has selected, its own recent ones (as Dovecot counts them)."""
    store = session.store
    state = await store.folder_state(command.mailbox)
    unclaimed = session.config.recent.claimed(store.address, command.mailbox, state.uidvalidity)
    view = session.view
    own: set[int] = set()
    if view and (view.folder, view.uidvalidity) == (command.mailbox, state.uidvalidity):
        own = view.recent
    values: dict[str, int] = {
        "MESSAGES": len(state.messages),
        "RECENT": sum(1 for m in state.messages if m.uid > unclaimed or m.uid in own),
        "UIDNEXT": state.uidnext,
        "UIDVALIDITY": state.uidvalidity,
        "UNSEEN": sum(1 for m in state.messages if "\\Seen" not in m.flags),
    }
    items: list[Value] = []
    for item in command.items:
        items += [Atom(item), values[item]]
    await session.channel.write(untagged(Atom("STATUS"), wire_name(command.mailbox), items))
    await session.ok(command, "STATUS completed")


# -- APPEND -----------------------------------------------------------------------------------


async def append(session: ImapSession, command: c.Append) -> None:
    """APPEND with RFC 4315 APPENDUID; a missing folder is NO [TRYCREATE] (§6.3.11), so
    the client may create it and try again. \\Recent cannot be set by a client."""
    if not await session.require(command, "write"):
        return
    store = session.store
    folders = {f.name for f in await store.list_folders()}
    if command.mailbox not in folders:
        await session.reply(command.tag, "NO", "no such folder", Code.TRYCREATE)
        return
    flags = [f for f in command.flags if f != RECENT]
    when = command.internal_date or dt.datetime.now(dt.UTC).astimezone()
    try:
        uidvalidity, uid = await store.append(command.mailbox, command.message, flags, when)
    except FolderNotFound:  # deleted meanwhile
        await session.reply(command.tag, "NO", "no such folder", Code.TRYCREATE)
        return
    await session.ok(command, "APPEND completed", f"{Code.APPENDUID} {uidvalidity} {uid}")
