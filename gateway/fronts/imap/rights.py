"""Which delegation right an IMAP command needs, and what the audit calls it.

`read` lists, selects, fetches, searches and sets `\\Seen`; `write` is every other change
(other flags, copy, move, expunge, append, folder changes). The proxy refuses a command
the grant lacks the right for with `NO [NOPERM]` before the backend sees it.
"""

from __future__ import annotations

from delegation.audit import AuditAction
from gateway.imap import commands as c

_READS = (c.Select, c.List, c.Status, c.Search, c.Fetch, c.Check, c.Namespace)
# Subscriptions too: the holder's folder list is theirs to change.
_WRITES: tuple[type[c.Command], ...] = (c.Append, c.Expunge, c.Copy, c.Move, c.Create)
_WRITES += (c.Delete, c.Rename, c.Subscribe, c.Unsubscribe)


def required_right(command: c.Command) -> str | None:
    if isinstance(command, c.Store):
        only_seen = command.action.mode != "replace" and set(command.action.flags) <= {"\\Seen"}
        return "read" if only_seen else "write"
    if isinstance(command, _WRITES):
        return "write"
    if isinstance(command, _READS):
        return "read"
    return None


def changes_mailbox(command: c.Command) -> bool:
    """Whether the command changes the BAL (flags included): what a cut-over holds."""
    return isinstance(command, (c.Store, c.Close, *_WRITES))


_ACTIONS: dict[type[c.Command], AuditAction] = {
    c.Store: AuditAction.STORE,
    c.Append: AuditAction.APPEND,
    c.Expunge: AuditAction.EXPUNGE,
    c.Copy: AuditAction.COPY,
    c.Move: AuditAction.MOVE,
    c.Close: AuditAction.CLOSE,  # expunges the \\Deleted messages silently
    c.Create: AuditAction.FOLDER_CREATE,
    c.Delete: AuditAction.FOLDER_DELETE,
    c.Rename: AuditAction.FOLDER_RENAME,
    c.Subscribe: AuditAction.FOLDER_SUBSCRIBE,
    c.Unsubscribe: AuditAction.FOLDER_UNSUBSCRIBE,
}


def audit_action(command: c.Command) -> AuditAction | None:
    """The audit's name for a command recorded one event each (selections and changes);
    None for the reads, which are counted per session instead."""
    if isinstance(command, c.Select):
        return AuditAction.EXAMINE if command.readonly else AuditAction.SELECT
    return _ACTIONS.get(type(command))


def audit_detail(command: c.Command, limit: int = 200) -> str:
    """What the command touched, short: the folder and the message set."""
    match command:
        case (
            c.Select(mailbox=folder)
            | c.Create(mailbox=folder)
            | c.Delete(mailbox=folder)
            | c.Subscribe(mailbox=folder)
            | c.Unsubscribe(mailbox=folder)
        ):
            text = folder
        case c.Rename(old=old, new=new):
            text = f"{old} -> {new}"
        case c.Append(mailbox=folder, message=message):
            text = f"{folder} ({len(message)} bytes)"
        case (
            c.Copy(sequence=seq, mailbox=folder, uid=uid)
            | c.Move(sequence=seq, mailbox=folder, uid=uid)
        ):
            text = f"{'UID ' if uid else ''}{seq} -> {folder}"
        case c.Store(sequence=seq, action=action, uid=uid):
            sign = {"add": "+", "remove": "-", "replace": ""}.get(action.mode, "")
            flags = " ".join(action.flags)
            text = f"{'UID ' if uid else ''}{seq} {sign}FLAGS ({flags})"
        case c.Expunge(uids=uids):
            text = f"UID {uids}" if uids is not None else "all \\Deleted"
        case c.Close():
            text = "expunges the \\Deleted messages"
        case _:
            text = ""
    return text[:limit]
