"""Every operation of the historic web services (DOMAIN.md §4), behind `HistoricOperations`.

`HistoricService.call(service, operation, caller, payload)` validates the input (the
content of ``{"<op>Input": {...}}``), authorises the caller on the BAL named by
``email``, runs the operation on the `HistoricStore`, and returns the content of
``{"<op>Output": {...}}``. Inputs may come from JSON or SOAP: integers and booleans are
also accepted as strings ("12", "true"), and a list field given one element may be
that element alone. Every refusal is a `HistoricError` with a code of DOMAIN.md.

Output shapes (the HTTP faces and the gateway's `legacy_ws` backend rely on them):

* listEmails → ``{"emails": ["a@x.fr", ...]}`` (held BAL, then delegated ones on this
  platform; code 34 when there are none)
* searchRecipient(searchString) → ``{"recipients": [{"idNat", "civility", "firstName",
  "lastName", "profession", "addresses": [...], "placesOfPractice": [{"name", "address",
  "city"}]}]}`` (at most 50)
* listFolders(folderId?) → ``{"folders": [Folder]}``: the top-level folders, or the one
  folder asked for, each ``{"id", "name", "unreadCount", "totalCount", "parentId",
  "children": [Folder]}``; top-level folders have ``parentId`` 1 (the root, never listed)
* createFolder(name, parentId?=1) → ``{"folder": Folder}``
* renameFolder(folderId, name), moveFolder(folderId, parentId; alias destinationFolderId),
  deleteFolder(folderId), emptyFolder(folderId), trashFolder(folderId) → ``{}``
* searchMessages(searchCriteria) → ``{"messages": [Message], "total": n}``; total counts
  all matches before offset/limit
* syncMessages(token?, html?) → ``{"token", "modifiedMessages": [Message],
  "deletedMessageIds": [...]}``
* sendMessage(message), draftMessage(message) → ``{"message": Message}`` (the copy in
  Sent, or the draft). In sendMessage, ``messageId`` with a ``replyType`` is the message
  answered or forwarded (flagged REPLIED / FORWARDED, its conversation joined); without,
  it is a draft being sent (then removed from Drafts). In draftMessage it is the draft
  replaced, which keeps its id. Recipients on this platform get it in their Inbox, the
  others are handed to ``deliver_elsewhere`` as RFC 5322 bytes (no Bcc header).
* updateMessages(messageIds, operation), moveMessages(messageIds, destinationFolderId) → ``{}``
* downloadAttachment(messageId, part) → ``{"file": base64, "fileName", "contentType", "size"}``

Message: ``{"messageId", "folderId", "conversationId", "subject", "body", "isHTML",
"size", "date": "dd/MM/yyyy HH:mm:ss" (Europe/Paris), "emails": [{"address", "name",
"type"}], "flags": [...], "priority": "NORMAL"|"HAUTE", "isAccuse", "attachments":
[{"part", "fileName", "contentType", "size"}]}``. ``body`` is the HTML body when the
request asked ``html`` and the message has one (then ``isHTML`` is true), the text body
otherwise. ``isHTML``, ``priority`` and ``isAccuse`` go beyond DOMAIN.md's list so that a
message can be rebuilt as MIME without loss.

Authorisation: the trusted gateway may act on any BAL of this platform; a person on
the BAL they hold, or on one the `resolver` delegates to them, with its rights (read:
listing, search, sync, download, READ/UNREAD; write: folders, other flags, moves,
drafts; send: sendMessage). A BAL unknown here, not theirs, or lacking the right is
refused with code 24: the address is not valid *for this user*, and one code for all
three does not tell a stranger which BAL exist. The message says which case it is.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from gateway.mss import historic_inputs as inputs
from gateway.mss.historic_inputs import (
    MAX_ADDRESS,
    MAX_FOLDER_NAME_INPUT,
    MAX_ID,
    Composed,
    SearchQuery,
    fold,
    need_integer,
    need_text,
)
from gateway.mss.historic_mime import Composition, build_mime
from gateway.mss.historic_shapes import (
    JUNK,
    PARIS,
    ROOT,
    folder_tree,
    format_date,
    message_object,
    recipient,
)
from gateway.mss.historic_ws import (
    DRAFTS,
    EMAIL_INVALID,
    FOLDER_MISSING,
    INBOX,
    INVALID_FORMAT,
    MAX_IDNAT,
    MAX_RECIPIENT_SEARCH,
    MESSAGE_MISSING,
    NO_ADDRESS,
    SENT,
    TRASH,
    Caller,
    HistoricError,
)
from mock_operator.historic.store import HistoricStore, StoredMessage

__all__ = ["HistoricService", "folder_tree", "format_date", "message_object", "recipient"]

log = logging.getLogger(__name__)

Resolver = Callable[[str, str], Awaitable[frozenset[str] | None]]
MailboxesOf = Callable[[str], Awaitable[Collection[str]]]
Directory = Callable[[str], Awaitable[list[dict[str, Any]]]]
DeliverElsewhere = Callable[[str, bytes], Awaitable[None]]
_Handler = Callable[[Caller, dict[str, Any]], Awaitable[dict[str, Any]]]

TECHNICAL_ERROR = 1  # code of TECHNIQUE errors (DOMAIN.md names none)
DEFAULT_MAX_ATTACHMENTS = 10 * 1024 * 1024
MAX_RECIPIENT_RESULTS = 50
MAX_CALLS_KEPT = 1_000


@dataclass(frozen=True)
class CallRecord:
    """One call as the mock's UI shows it: who, with which software, on what, and how it went."""

    at: dt.datetime
    idnat: str | None
    software: str | None
    service: str
    operation: str
    email: str | None
    result: str  # "ok", or "FONCTIONNELLE 45", "TECHNIQUE 1"


Placed = Callable[[str], Awaitable[str | None]]
"""Where the operator's MTA delivers mail for an address ("modern", "historic"), from
the registry's record; None when the record says nothing (the platform holding the
mailbox then)."""


class HistoricService:
    """The historic platform's operations over one `HistoricStore`.

    The mock wires in what lives elsewhere: `resolver(idnat, bal)` gives delegated rights
    (None: none), `mailboxes_of(idnat)` the BAL delegated to a person (for listEmails),
    `directory(search)` the professionals for searchRecipient (default: this platform's
    accounts), and `deliver_elsewhere(recipient, raw)` carries mail to recipients not on
    this platform (without it, such recipients are dropped and logged).
    """

    def __init__(
        self,
        store: HistoricStore,
        *,
        resolver: Resolver | None = None,
        mailboxes_of: MailboxesOf | None = None,
        directory: Directory | None = None,
        deliver_elsewhere: DeliverElsewhere | None = None,
        max_attachments_bytes: int = DEFAULT_MAX_ATTACHMENTS,
        domain: str = "historique.mssante.fr",
        placed: Placed | None = None,
    ) -> None:
        self.store = store
        self.placed = placed  # a BAL moved to the modern platform gets its mail there
        self.resolver = resolver
        self.mailboxes_of = mailboxes_of
        self.directory = directory
        self.deliver_elsewhere = deliver_elsewhere
        self.max_attachments_bytes = max_attachments_bytes
        self.domain = domain
        self.calls: list[CallRecord] = []
        self._handlers: dict[tuple[str, str], _Handler] = {
            ("Annuaire", "listEmails"): self._list_emails,
            ("Annuaire", "searchRecipient"): self._search_recipient,
            ("Folder", "listFolders"): self._list_folders,
            ("Folder", "createFolder"): self._create_folder,
            ("Folder", "renameFolder"): self._rename_folder,
            ("Folder", "moveFolder"): self._move_folder,
            ("Folder", "deleteFolder"): self._delete_folder,
            ("Folder", "emptyFolder"): self._empty_folder,
            ("Folder", "trashFolder"): self._trash_folder,
            ("Item", "searchMessages"): self._search_messages,
            ("Item", "syncMessages"): self._sync_messages,
            ("Item", "sendMessage"): self._send_message,
            ("Item", "draftMessage"): self._draft_message,
            ("Item", "updateMessages"): self._update_messages,
            ("Item", "moveMessages"): self._move_messages,
            ("Attachment", "downloadAttachment"): self._download_attachment,
        }

    async def call(
        self, service: str, operation: str, caller: Caller, payload: dict[str, Any]
    ) -> dict[str, Any]:
        email = payload.get("email") if isinstance(payload, dict) else None
        result = "ok"
        try:
            handler = self._handlers.get((service, operation))
            if handler is None:
                raise HistoricError(INVALID_FORMAT, f"opération inconnue: {service}/{operation}")
            if not isinstance(payload, dict):
                raise HistoricError(INVALID_FORMAT, "entrée: objet attendu")
            if caller.idnat is not None and len(caller.idnat) > MAX_IDNAT:
                raise HistoricError(INVALID_FORMAT, "idNat trop long")
            return await handler(caller, payload)
        except HistoricError as error:
            result = f"{error.kind} {error.code}"
            raise
        except Exception as exc:
            log.exception("historic %s/%s failed", service, operation)
            result = f"TECHNIQUE {TECHNICAL_ERROR}"
            raise HistoricError(TECHNICAL_ERROR, "erreur technique", "TECHNIQUE") from exc
        finally:
            self.calls.append(
                CallRecord(
                    dt.datetime.now(dt.UTC),
                    caller.idnat,
                    caller.software,
                    service,
                    operation,
                    email[:MAX_ADDRESS] if isinstance(email, str) else None,
                    result,
                )
            )
            del self.calls[:-MAX_CALLS_KEPT]

    # -- authorisation -------------------------------------------------------------------

    async def _authorise(self, caller: Caller, payload: dict[str, Any], right: str) -> str:
        address = inputs.bal_of(payload)
        account = await self.store.account(address)
        if caller.trusted_gateway:
            if account is None:
                raise HistoricError(EMAIL_INVALID, f"{address}: BAL inconnue sur cette plateforme")
            return address
        if not caller.idnat:
            raise HistoricError(NO_ADDRESS, "aucun utilisateur authentifié")
        refusal = f"{address}: BAL non accessible à cet utilisateur"
        if account is None:
            raise HistoricError(EMAIL_INVALID, refusal)
        if account.holder_idnat == caller.idnat:
            return address
        rights = await self.resolver(caller.idnat, address) if self.resolver else None
        if not rights:
            raise HistoricError(EMAIL_INVALID, refusal)
        if right not in rights:
            raise HistoricError(
                EMAIL_INVALID, f"{address}: droit « {right} » non délégué à cet utilisateur"
            )
        return address

    # -- Annuaire ------------------------------------------------------------------------

    async def _list_emails(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        """The person's BAL here: held ones, then delegated ones. The trusted gateway
        without a person sees every BAL of the platform (for migration)."""
        if caller.idnat is None:
            if not caller.trusted_gateway:
                raise HistoricError(NO_ADDRESS, "aucun utilisateur authentifié")
            emails = [a.address for a in await self.store.accounts()]
        else:
            emails = [a.address for a in await self.store.accounts(caller.idnat)]
            if self.mailboxes_of is not None:
                for address in sorted(await self.mailboxes_of(caller.idnat)):
                    address = address.lower()
                    if address not in emails and await self.store.account(address):
                        emails.append(address)
        if not emails:
            raise HistoricError(NO_ADDRESS, "l'utilisateur n'a aucune adresse de messagerie")
        return {"emails": emails}

    async def _search_recipient(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        if caller.idnat is None and not caller.trusted_gateway:
            raise HistoricError(NO_ADDRESS, "aucun utilisateur authentifié")
        if not inputs.missing(payload.get("email")):
            await self._authorise(caller, payload, "read")
        search = need_text(payload, "searchString", limit=MAX_RECIPIENT_SEARCH)
        if self.directory is not None:
            found = [e for e in await self.directory(search.strip()) if isinstance(e, dict)]
        else:
            wanted = fold(search.strip())
            found = []
            for account in await self.store.accounts():
                if wanted in fold(account.display_name) or wanted in account.address:
                    first, _, last = account.display_name.partition(" ")
                    found.append(
                        recipient(first, last, [account.address], idnat=account.holder_idnat)
                    )
        return {"recipients": found[:MAX_RECIPIENT_RESULTS]}

    # -- Folder --------------------------------------------------------------------------

    async def _list_folders(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        address = await self._authorise(caller, payload, "read")
        folder_id = inputs.integer(payload, "folderId")
        folders = await self.store.folders(address)
        if folder_id is not None and not any(f.id == folder_id for f in folders):
            raise HistoricError(FOLDER_MISSING, f"le dossier {folder_id} n'existe pas")
        return {"folders": folder_tree(folders, folder_id)}

    async def _create_folder(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        address = await self._authorise(caller, payload, "write")
        name = need_text(payload, "name", limit=MAX_FOLDER_NAME_INPUT)
        parent = inputs.integer(payload, "parentId")
        folder = await self.store.create_folder(address, ROOT if parent is None else parent, name)
        return {"folder": folder_tree([folder], folder.id)[0]}

    async def _rename_folder(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        address = await self._authorise(caller, payload, "write")
        folder_id = need_integer(payload, "folderId")
        name = need_text(payload, "name", limit=MAX_FOLDER_NAME_INPUT)
        await self.store.rename_folder(address, folder_id, name)
        return {}

    async def _move_folder(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        address = await self._authorise(caller, payload, "write")
        folder_id = need_integer(payload, "folderId")
        alias = inputs.missing(payload.get("parentId")) and not inputs.missing(
            payload.get("destinationFolderId")
        )
        key = "destinationFolderId" if alias else "parentId"
        destination = need_integer(payload, key)
        await self.store.move_folder(address, folder_id, destination)
        return {}

    async def _delete_folder(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        address = await self._authorise(caller, payload, "write")
        folder_id = need_integer(payload, "folderId")
        await self.store.delete_folder(address, folder_id)
        return {}

    async def _empty_folder(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        address = await self._authorise(caller, payload, "write")
        folder_id = need_integer(payload, "folderId")
        await self.store.empty_folder(address, folder_id)
        return {}

    async def _trash_folder(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        address = await self._authorise(caller, payload, "write")
        folder_id = need_integer(payload, "folderId")
        await self.store.move_folder(address, folder_id, TRASH)
        return {}

    # -- Item: reading -------------------------------------------------------------------

    async def _search_messages(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        address = await self._authorise(caller, payload, "read")
        request = inputs.search_request(payload)
        query = request.query
        parents = await self.store.folder_parents(address)
        folder_id = query.folder_id
        if folder_id is not None:
            if folder_id not in parents or folder_id == ROOT:
                raise HistoricError(FOLDER_MISSING, f"le dossier {folder_id} n'existe pas")
            within = (
                HistoricStore.subtree(parents, folder_id)
                if query.include_subfolders
                else [folder_id]
            )
        else:  # as Zimbra: everything but Trash and Junk
            hidden = set(
                HistoricStore.subtree(parents, TRASH) + HistoricStore.subtree(parents, JUNK)
            )
            within = [f for f in parents if f not in hidden and f != ROOT]
        match = _matcher(query)
        matches = [m for m in await self.store.messages(address, within) if match(m)]
        field, reverse, html = request.sort_field, request.descending, request.html
        if field == "subject":
            matches.sort(key=lambda m: (fold(m.subject), int(m.message_id)), reverse=reverse)
        elif field == "size":
            matches.sort(key=lambda m: (m.size, int(m.message_id)), reverse=reverse)
        else:
            matches.sort(key=lambda m: (m.date, int(m.message_id)), reverse=reverse)
        page = matches[request.offset : request.offset + request.limit]
        return {"messages": [message_object(m, html=html) for m in page], "total": len(matches)}

    async def _sync_messages(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        address = await self._authorise(caller, payload, "read")
        token = inputs.sync_token(payload)
        html = bool(inputs.boolean(payload, "html"))
        changes = await self.store.changes_since(address, token)
        return {
            "token": str(changes.token),
            "modifiedMessages": [message_object(m, html=html) for m in changes.modified],
            "deletedMessageIds": changes.deleted,
        }

    async def _download_attachment(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        address = await self._authorise(caller, payload, "read")
        message_id = need_text(payload, "messageId", limit=MAX_ID)
        part = need_text(payload, "part", limit=MAX_ID)
        info, data = await self.store.attachment(address, message_id, part)
        return {
            "file": base64.b64encode(data).decode("ascii"),
            "fileName": info.file_name,
            "contentType": info.content_type,
            "size": info.size,
        }

    # -- Item: changing ------------------------------------------------------------------

    async def _update_messages(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        operation = inputs.update_operation(payload)
        right = "read" if operation in ("READ", "UNREAD") else "write"
        address = await self._authorise(caller, payload, right)
        ids = inputs.message_ids(payload)
        store = self.store
        if operation == "READ":
            await store.update_flags(address, ids, remove={"UNREAD"})
        elif operation == "UNREAD":
            await store.update_flags(address, ids, add={"UNREAD"})
        elif operation == "FLAGGED":
            await store.update_flags(address, ids, add={"FLAGGED"})
        elif operation == "UNFLAGGED":
            await store.update_flags(address, ids, remove={"FLAGGED"})
        elif operation == "SPAM":
            await store.move_messages(address, ids, JUNK)
        elif operation == "UNSPAM":
            await store.move_messages(address, ids, INBOX)
        elif operation == "TRASH":
            await store.move_messages(address, ids, TRASH)
        else:
            await store.delete_messages(address, ids)
        return {}

    async def _move_messages(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        address = await self._authorise(caller, payload, "write")
        ids = inputs.message_ids(payload)
        destination = need_integer(payload, "destinationFolderId")
        await self.store.move_messages(address, ids, destination)
        return {}

    def _composed(self, payload: dict[str, Any], *, sending: bool) -> Composed:
        return inputs.composed(payload, sending=sending)

    async def _attachment_files(
        self, address: str, entries: tuple[dict[str, Any], ...]
    ) -> tuple[tuple[str, str, bytes], ...]:
        """Decode new files and fetch forwarded parts, within the size limit (32)."""

        async def stored(source: str, part: str) -> tuple[str, str, bytes]:
            info, data = await self.store.attachment(address, source, part)
            return info.file_name, info.content_type, data

        return await inputs.attachment_files(entries, self.max_attachments_bytes, stored)

    def _composition(
        self,
        sender: tuple[str, str],
        composed: Composed,
        files: tuple[tuple[str, str, bytes], ...],
        original: StoredMessage | None,
    ) -> Composition:
        references: tuple[str, ...] = ()
        if original is not None and original.header_message_id:
            references = (original.header_message_id,)
        return Composition(
            sender=sender,
            recipients=composed.recipients,
            subject=composed.subject,
            body=composed.body,
            is_html=composed.is_html,
            urgent=composed.urgent,
            read_receipt=composed.read_receipt,
            attachments=files,
            message_id=f"<{uuid.uuid4().hex}@{self.domain}>",
            date=dt.datetime.now(PARIS).replace(microsecond=0),
            in_reply_to=references[0] if references else None,
            references=references,
        )

    async def _send_message(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        address = await self._authorise(caller, payload, "send")
        if inputs.forwards_stored_parts(payload):  # attaching a stored part reads it
            await self._authorise(caller, payload, "read")
        composed = self._composed(payload, sending=True)
        account = await self.store.account(address)
        assert account is not None
        original = draft = None
        if composed.reply_type and composed.message_id:
            original = await self.store.message(address, composed.message_id)
        elif composed.message_id:
            draft = await self.store.message(address, composed.message_id)
            if "DRAFT" not in draft.stored_flags:
                raise HistoricError(MESSAGE_MISSING, f"aucun brouillon {composed.message_id}")
        files = await self._attachment_files(address, composed.attachments)
        composition = self._composition((address, account.display_name), composed, files, original)
        own_copy = build_mime(composition, with_bcc=True)
        outgoing = build_mime(composition, with_bcc=False)
        for rcpt in dict.fromkeys(a for a, _, _ in composed.recipients):
            moved = self.placed is not None and await self.placed(rcpt) == "modern"
            if not moved and await self.store.account(rcpt) is not None:
                await self.store.deliver_mime(rcpt, outgoing, INBOX, {"UNREAD"})
            elif self.deliver_elsewhere is not None:
                try:
                    await self.deliver_elsewhere(rcpt, outgoing)
                except HistoricError:
                    raise
                except Exception as exc:
                    raise HistoricError(
                        TECHNICAL_ERROR, f"remise impossible à {rcpt}", "TECHNIQUE"
                    ) from exc
            else:
                log.warning("historic: no route to %s, message dropped", rcpt)
        conversation = composed.conversation_id or (original.conversation_id if original else None)
        sent = await self.store.deliver_mime(
            address,
            own_copy,
            SENT,
            {"SENT_BY_ME"},
            conversation_id=conversation,
            keep_original=False,  # composed here: kept structured only, IMAP rebuilds it
        )
        if original is not None:
            flag = "FORWARDED" if composed.reply_type == "FORWARD" else "REPLIED"
            await self.store.update_flags(address, [original.message_id], add={flag})
        if draft is not None:
            await self.store.delete_messages(address, [draft.message_id])
        return {"message": message_object(sent, html=True)}

    async def _draft_message(self, caller: Caller, payload: dict[str, Any]) -> dict[str, Any]:
        """Save a draft; with the messageId of an existing draft, replace it (same id)."""
        address = await self._authorise(caller, payload, "write")
        if inputs.forwards_stored_parts(payload):
            await self._authorise(caller, payload, "read")
        composed = self._composed(payload, sending=False)
        account = await self.store.account(address)
        assert account is not None
        replace = None
        if composed.message_id:
            previous = await self.store.message(address, composed.message_id)
            if "DRAFT" not in previous.stored_flags:
                raise HistoricError(MESSAGE_MISSING, f"aucun brouillon {composed.message_id}")
            replace = previous.message_id
        files = await self._attachment_files(address, composed.attachments)
        composition = self._composition((address, account.display_name), composed, files, None)
        stored = await self.store.deliver_mime(
            address,
            build_mime(composition, with_bcc=True),
            DRAFTS,
            {"DRAFT"},
            replace_id=replace,
            conversation_id=composed.conversation_id,
            keep_original=False,
        )
        return {"message": message_object(stored, html=True)}


def _matcher(query: SearchQuery) -> Callable[[StoredMessage], bool]:
    """The query of searchCriteria as a predicate (all given criteria must hold)."""

    def matches(message: StoredMessage) -> bool:
        for key, needle in query.texts.items():
            if key == "subject":
                haystack = message.subject
            elif key == "content":
                haystack = f"{message.body_text}\n{message.body_html or ''}"
            else:
                haystack = " ".join(
                    f"{e.address} {e.name}" for e in message.emails if e.type == key.upper()
                )
            if needle not in fold(haystack):
                return False
        if query.before is not None and not message.date < query.before:
            return False
        if query.after is not None and not message.date > query.after:
            return False
        if query.larger is not None and not message.size > query.larger:
            return False
        if query.smaller is not None and not message.size < query.smaller:
            return False
        if query.seen is not None and query.seen == ("UNREAD" in message.stored_flags):
            return False
        return all((flag in message.stored_flags) == value for flag, value in query.flags.items())

    return matches
