"""The historic operations on a BAL of a modern (IMAP/SMTP) platform.

Folders are IMAP mailboxes (LIST with special-use; ids from `ids.BalIds`), messages are
IMAP messages seen through ENVELOPE and BODYSTRUCTURE (`structure`), changes are STORE,
MOVE, APPEND, EXPUNGE, and sendMessage goes through the backend's SMTP submission. Input
is read by `gateway.mss.historic_inputs` before anything reaches IMAP; what does reach it
(folder names, part numbers) is checked again here, since it ends up in a command line.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.backends.base import Submission
from gateway.backends.errors import BackendError, BackendNotFound, BackendRefused
from gateway.imap import mutf7
from gateway.imap.client import ParsedValue
from gateway.legacy_front.ids import BalIds, Location, Mark, flags_text
from gateway.legacy_front.sessions import ImapBal, Selected, flag_names
from gateway.legacy_front.structure import (
    ImapMessage,
    Part,
    Structure,
    StructureError,
    attachment_info,
    body_texts,
    decode_part,
    header_fields,
    historic_flags,
    parse_bodystructure,
    parse_envelope,
    structure_of,
    urgent_of,
)
from gateway.mss import XdmError, add_headers, add_sender, check_message, read_xdm
from gateway.mss import historic_inputs as inputs
from gateway.mss.historic_inputs import MAX_FOLDER_NAME_INPUT, MAX_ID, Composed, fold
from gateway.mss.historic_mime import Composition, build_mime
from gateway.mss.historic_shapes import (
    JUNK,
    PARIS,
    ROOT,
    AttachmentInfo,
    EmailEntry,
    Folder,
    folder_tree,
    message_object,
)
from gateway.mss.historic_ws import (
    ATTACHMENT_MISSING,
    CONTENT_TOO_LARGE,
    DRAFTS,
    EMAIL_INVALID,
    FIELD_MISSING,
    FOLDER_DUPLICATE,
    FOLDER_MISSING,
    INBOX,
    INVALID_FORMAT,
    MESSAGE_MISSING,
    SENT,
    TRASH,
    HistoricError,
)
from gateway.mss.policy import MessagePolicy

log = logging.getLogger(__name__)

TECHNICAL_ERROR = 1
MAX_FOLDER_NAME = 128
MAX_FOLDER_DEPTH = 10
MAX_ATTACHMENTS_BYTES = 10 * 1024 * 1024
WELL_KNOWN = {"\\Trash": TRASH, "\\Junk": JUNK, "\\Sent": SENT, "\\Drafts": DRAFTS}
_PART = re.compile(r"[1-9][0-9]{0,4}(\.[1-9][0-9]{0,4}){0,11}")
TEXT_PART_BYTES = 256 * 1024  # of a text or HTML part shown as a body (MAX_BODY is 50,000)
_HEADERS = b"BODY.PEEK[HEADER.FIELDS (X-PRIORITY IMPORTANCE PRIORITY DISPOSITION-NOTIFICATION-TO)]"
_DESCRIBE = b"FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE " + _HEADERS
_IMAP_OF = {"READ": "\\Seen", "UNREAD": "\\Seen", "FLAGGED": "\\Flagged", "UNFLAGGED": "\\Flagged"}


@dataclass(frozen=True)
class BalFolder:
    name: str  # "/"-separated path, "INBOX" for the inbox
    id: int
    parent_id: int


@dataclass(frozen=True)
class Settings:
    """What the operations need of the backend and the gateway."""

    backend: str
    keeps_sent_copy: bool
    max_message_size: int
    domain: str
    mss: MessagePolicy = field(default_factory=MessagePolicy)  # `[mss] policy`, sendMessage


SubmissionOpener = Callable[[], Submission]


def _parse_date(value: ParsedValue) -> dt.datetime:
    parsed = _internaldate(value) if isinstance(value, bytes) else None
    return parsed if parsed is not None else dt.datetime.now(dt.UTC)


@functools.lru_cache(maxsize=8192)
def _internaldate(value: bytes) -> dt.datetime | None:
    """An INTERNALDATE; cached because a search sorts a whole folder by it on every page
    (strptime was a tenth of the legacy front's CPU in bench/legacy_front.py)."""
    try:
        return dt.datetime.strptime(value.decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z")
    except (ValueError, UnicodeDecodeError):
        return None


def check_folder_name(name: str) -> None:
    """The mock's rules for a folder name, plus what IMAP must never see in one."""
    if not name.strip():
        raise HistoricError(FIELD_MISSING, "nom de dossier manquant")
    if len(name) > MAX_FOLDER_NAME:
        raise HistoricError(CONTENT_TOO_LARGE, f"nom de dossier trop long (> {MAX_FOLDER_NAME})")
    if (
        "/" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or name != name.strip()
        or any(c in name for c in "*%")
        or any(0xD800 <= ord(c) <= 0xDFFF for c in name)
    ):
        raise HistoricError(INVALID_FORMAT, f"nom de dossier invalide: {name!r}")


def check_part(part: str) -> str:
    """A part number as IMAP writes them (``1``, ``2.1``); anything else is no such part."""
    if not _PART.fullmatch(part):
        raise HistoricError(ATTACHMENT_MISSING, f"la pièce jointe {part[:20]!r} n'existe pas")
    return part


def historic_ids(values: Iterable[str]) -> list[int]:
    """messageIds as the gateway's integers; one that is not one of ours is missing (45)."""
    found: list[int] = []
    for value in values:
        text = value.strip()
        if not text.isdigit() or len(text) > 10 or int(text) > 2**31 - 1 or int(text) == 0:
            raise HistoricError(MESSAGE_MISSING, f"le message {value[:MAX_ID]} n'existe pas")
        found.append(int(text))
    return found


class ModernBal:
    """The historic operations on one BAL over one leased IMAP session."""

    def __init__(
        self,
        bal: str,
        imap: ImapBal,
        ids: BalIds,
        settings: Settings,
        *,
        display_name: str = "",
        submission: SubmissionOpener | None = None,
    ) -> None:
        self.bal = bal
        self.imap = imap
        self.ids = ids
        self.settings = settings
        self.display_name = display_name
        self.submission = submission
        self._folders: list[BalFolder] | None = None

    # -- folders ---------------------------------------------------------------------------

    async def folders(self, *, fresh: bool = False) -> list[BalFolder]:
        if self._folders is not None and not fresh:
            return self._folders
        listed = await self.imap.access.folders()
        wanted: dict[str, int | None] = {}
        for folder in listed:
            if folder.name == "INBOX":
                wanted[folder.name] = INBOX
            elif folder.special_use in WELL_KNOWN and WELL_KNOWN[folder.special_use] not in (
                wanted.values()
            ):
                wanted[folder.name] = WELL_KNOWN[folder.special_use]
            else:
                wanted[folder.name] = None
        ids = await self.ids.folder_ids(wanted)
        found: list[BalFolder] = []
        for name in wanted:
            parent, _, _ = name.rpartition("/")
            found.append(BalFolder(name, ids[name], ids.get(parent, ROOT) if parent else ROOT))
        found.sort(key=lambda f: f.id)
        self._folders = found
        return found

    async def folder(self, folder_id: int) -> BalFolder:
        for folder in await self.folders():
            if folder.id == folder_id:
                return folder
        raise HistoricError(FOLDER_MISSING, f"le dossier {folder_id} n'existe pas")

    async def _named(self, name: str) -> BalFolder | None:
        return next((f for f in await self.folders() if f.name == name), None)

    def subtree(self, folders: Sequence[BalFolder], root: int) -> list[BalFolder]:
        result = [f for f in folders if f.id == root]
        for current in result:
            result.extend(f for f in folders if f.parent_id == current.id and f.id != current.id)
        return result

    async def list_folders(self, folder_id: int | None) -> dict[str, Any]:
        folders = await self.folders()
        if folder_id is not None and not any(f.id == folder_id for f in folders):
            raise HistoricError(FOLDER_MISSING, f"le dossier {folder_id} n'existe pas")
        shown: list[Folder] = []
        for folder in folders:
            total, unseen = await self.imap.status(folder.name)
            shown.append(
                Folder(folder.id, folder.name.rpartition("/")[2], folder.parent_id, unseen, total)
            )
        return {"folders": folder_tree(shown, folder_id)}

    def _protected(self, folder: BalFolder) -> None:
        if folder.id in (INBOX, TRASH, JUNK, SENT, DRAFTS):
            raise HistoricError(
                INVALID_FORMAT, f"le dossier système {folder.id} ne peut être modifié"
            )

    async def _check_sibling(self, parent_id: int, name: str, exclude: int | None = None) -> None:
        for folder in await self.folders():
            if (
                folder.parent_id == parent_id
                and folder.id != exclude
                and folder.name.rpartition("/")[2].casefold() == name.casefold()
            ):
                raise HistoricError(FOLDER_DUPLICATE, f"un dossier « {name} » existe déjà ici")

    async def _path_under(self, parent_id: int, name: str) -> str:
        if parent_id == ROOT:
            return name
        parent = await self.folder(parent_id)
        if parent.name.count("/") + 2 > MAX_FOLDER_DEPTH:
            raise HistoricError(INVALID_FORMAT, "arborescence trop profonde")
        return f"{parent.name}/{name}"

    async def create_folder(self, parent_id: int, name: str) -> dict[str, Any]:
        check_folder_name(name)
        path = await self._path_under(parent_id, name)
        await self._check_sibling(parent_id, name)
        self._no_delimiter(name)
        await self._imap_name_fits(path)
        await self.imap.run(b"CREATE " + self.imap.access.mailbox_name(path))
        folders = await self.folders(fresh=True)
        created = next((f for f in folders if f.name == path), None)
        if created is None:
            raise HistoricError(TECHNICAL_ERROR, "dossier non créé", "TECHNIQUE")
        shown = Folder(created.id, name, created.parent_id, 0, 0)
        return {"folder": folder_tree([shown], created.id)[0]}

    def _no_delimiter(self, name: str) -> None:
        """The server's hierarchy delimiter (".", for one) inside a name would make a
        folder within a folder where the client asked for one name."""
        delimiter = self.imap.access.delimiter
        if delimiter != "/" and delimiter in name:
            raise HistoricError(INVALID_FORMAT, f"nom de dossier invalide: {name!r}")

    async def _imap_name_fits(self, path: str) -> None:
        if len(mutf7.encode(path)) > 1000:
            raise HistoricError(CONTENT_TOO_LARGE, "nom de dossier trop long")

    async def relocate_folder(self, folder_id: int, parent_id: int, name: str | None) -> None:
        """renameFolder (`name`), moveFolder and trashFolder (`parent_id`): IMAP RENAME."""
        if name is not None:
            check_folder_name(name)
        folder = await self.folder(folder_id)
        self._protected(folder)
        folders = await self.folders()
        if name is not None:
            self._no_delimiter(name)
        if parent_id in [f.id for f in self.subtree(folders, folder_id)]:
            raise HistoricError(INVALID_FORMAT, "un dossier ne peut aller sous lui-même")
        leaf = name if name is not None else folder.name.rpartition("/")[2]
        path = await self._path_under(parent_id, leaf)
        if path == folder.name:
            return
        await self._check_sibling(parent_id, leaf, exclude=folder_id)
        await self._imap_name_fits(path)
        await self.imap.run(
            b"RENAME "
            + self.imap.access.mailbox_name(folder.name)
            + b" "
            + self.imap.access.mailbox_name(path)
        )
        await self.ids.renamed(folder.name, path)
        self._folders = None

    async def delete_folder(self, folder_id: int) -> None:
        folder = await self.folder(folder_id)
        self._protected(folder)
        doomed = self.subtree(await self.folders(), folder_id)
        for victim in sorted(doomed, key=lambda f: -f.name.count("/")):
            await self.imap.run(b"DELETE " + self.imap.access.mailbox_name(victim.name))
        await self.ids.forget_folders(f.name for f in doomed)
        self._folders = None

    async def empty_folder(self, folder_id: int) -> None:
        """Delete a folder's messages; emptying Trash also removes the folders inside it."""
        if folder_id == ROOT:
            raise HistoricError(INVALID_FORMAT, "la racine ne peut être vidée")
        folder = await self.folder(folder_id)
        selected = await self.imap.select(folder.name, write=True)
        uids = await self.imap.all_uids()
        await self.imap.expunge(uids)
        await self.ids.observe(folder.name, selected.uidvalidity, {}, complete=True)
        if folder_id == TRASH:
            inner = [f for f in self.subtree(await self.folders(), TRASH) if f.id != TRASH]
            for victim in sorted(inner, key=lambda f: -f.name.count("/")):
                await self.imap.run(b"DELETE " + self.imap.access.mailbox_name(victim.name))
            await self.ids.forget_folders(f.name for f in inner)
            self._folders = None

    # -- reading ---------------------------------------------------------------------------

    async def search(self, payload: dict[str, Any]) -> dict[str, Any]:
        request = inputs.search_request(payload)
        query = request.query
        folders = await self.folders()
        if query.folder_id is not None:
            if query.folder_id == ROOT or not any(f.id == query.folder_id for f in folders):
                raise HistoricError(FOLDER_MISSING, f"le dossier {query.folder_id} n'existe pas")
            within = (
                self.subtree(folders, query.folder_id)
                if query.include_subfolders
                else [f for f in folders if f.id == query.folder_id]
            )
        else:  # as Zimbra: everything but Trash and Junk
            hidden = {f.id for f in self.subtree(folders, TRASH) + self.subtree(folders, JUNK)}
            within = [f for f in folders if f.id not in hidden]
        criteria = [b"ALL"]
        for flag, wanted in query.flags.items():
            key = {
                "FLAGGED": b"FLAGGED",
                "REPLIED": b"ANSWERED",
                "DELETED": b"DELETED",
                "DRAFT": b"DRAFT",
            }.get(flag)
            if key is not None:
                criteria.append(key if wanted else b"UN" + key)
        if query.seen is not None:
            criteria.append(b"SEEN" if query.seen else b"UNSEEN")
        if query.larger is not None:
            criteria.append(b"LARGER %d" % query.larger)
        if query.smaller is not None:
            criteria.append(b"SMALLER %d" % query.smaller)
        literal: bytes | None = None
        content = query.typed.get("content")  # as typed: the server folds in its own way
        if content:
            literal = content.encode("utf-8")
            criteria.insert(0, b"CHARSET UTF-8")
            criteria.append(b"BODY")
        sent_wanted = query.flags.get("SENT_BY_ME")
        needs_envelope = request.sort_field == "subject" or any(
            k in query.texts for k in ("from", "to", "cc", "bcc", "subject")
        )
        candidates: list[tuple[BalFolder, int, int, dict[str, ParsedValue]]] = []
        for folder in within:
            if sent_wanted is not None and (folder.id == SENT) != sent_wanted:
                continue
            selected = await self.imap.select(folder.name)
            if selected.exists == 0:
                continue
            uids = await self.imap.search(b" ".join(criteria), literal)
            if not uids:
                continue
            # what SEARCH did not decide and the sort need never change for a UID: asked
            # only for messages this session has not described yet
            described = self.imap.described
            items = ("INTERNALDATE", "RFC822.SIZE", *(("ENVELOPE",) if needs_envelope else ()))
            known = {
                uid: data
                for uid in uids
                if (data := described.get(folder.name, selected.uidvalidity, uid)) is not None
                and all(k in data for k in items)
            }
            missing = [uid for uid in uids if uid not in known]
            if missing:
                fetched = await self.imap.fetch(missing, " ".join(items).encode())
                for uid, data in fetched.items():
                    described.put(folder.name, selected.uidvalidity, uid, data)
                    known[uid] = data
            for uid in uids:
                if uid in known:
                    candidates.append((folder, selected.uidvalidity, uid, known[uid]))
        matches = [c for c in candidates if _matches(query, c[3])]
        if request.sort_field == "subject":

            def subject(c: tuple[BalFolder, int, int, dict[str, ParsedValue]]) -> str:
                try:
                    return fold(parse_envelope(c[3].get("ENVELOPE")).subject)
                except StructureError:
                    return ""

            matches.sort(key=lambda c: (subject(c), c[1], c[2]), reverse=request.descending)
        elif request.sort_field == "size":
            matches.sort(
                key=lambda c: (_int(c[3].get("RFC822.SIZE")), c[2]), reverse=request.descending
            )
        else:
            matches.sort(
                key=lambda c: (_parse_date(c[3].get("INTERNALDATE")), c[2]),
                reverse=request.descending,
            )
        page = matches[request.offset : request.offset + request.limit]
        messages = await self.describe([(f, v, u) for f, v, u, _ in page])
        return {
            "messages": [message_object(m, html=request.html) for m in messages],
            "total": len(matches),
        }

    async def describe(self, wanted: Sequence[tuple[BalFolder, int, int]]) -> list[ImapMessage]:
        """Message objects for (folder, UIDVALIDITY, UID), in the order given; ids assigned."""
        by_folder: dict[str, list[int]] = {}
        folders: dict[str, BalFolder] = {}
        for folder, _, uid in wanted:
            by_folder.setdefault(folder.name, []).append(uid)
            folders[folder.name] = folder
        built: dict[tuple[str, int], ImapMessage] = {}
        for name, uids in by_folder.items():
            folder = folders[name]
            selected = await self.imap.select(name)
            fetched = await self.imap.fetch(uids, _DESCRIBE)
            ids = await self.ids.observe(
                name,
                selected.uidvalidity,
                {uid: flags_text(flag_names(d.get("FLAGS"))) for uid, d in fetched.items()},
            )
            structures: dict[int, Structure] = {}
            for uid, data in fetched.items():
                try:
                    structures[uid] = structure_of(data.get("BODYSTRUCTURE"))
                except StructureError:
                    structures[uid] = Structure(None, None, ())
            texts = await self._body_parts(structures)
            for uid, data in fetched.items():
                if uid not in ids:
                    continue
                built[(name, uid)] = self._message(
                    ids[uid], folder, data, structures[uid], texts.get(uid, {})
                )
        return [built[(f.name, u)] for f, _, u in wanted if (f.name, u) in built]

    async def _body_parts(self, structures: dict[int, Structure]) -> dict[int, dict[str, bytes]]:
        """The text and HTML parts' octets, one FETCH per distinct set of part numbers."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for uid, structure in structures.items():
            numbers = tuple(p.number for p in (structure.text, structure.html) if p is not None)
            if numbers:
                groups.setdefault(numbers, []).append(uid)
        found: dict[int, dict[str, bytes]] = {}
        for numbers, uids in groups.items():
            # at most TEXT_PART_BYTES of each: a page of 20 MB bodies must not fill memory
            items = b" ".join(
                b"BODY.PEEK[%s]<0.%d>" % (n.encode(), TEXT_PART_BYTES) for n in numbers
            )
            for uid, data in (await self.imap.fetch(uids, items)).items():
                found[uid] = {
                    n: value
                    for n in numbers
                    if isinstance(value := data.get(f"BODY[{n}]<0>", data.get(f"BODY[{n}]")), bytes)
                }
        return found

    def _message(
        self,
        message_id: int,
        folder: BalFolder,
        data: dict[str, ParsedValue],
        structure: Structure,
        texts: dict[str, bytes],
    ) -> ImapMessage:
        try:
            envelope = parse_envelope(data.get("ENVELOPE"))
            subject, emails, written = envelope.subject, envelope.emails, envelope.date
        except StructureError:
            subject, emails, written = "", (), None
        headers: dict[str, str] = {}
        for key, value in data.items():
            if key.startswith("BODY[HEADER.FIELDS") and isinstance(value, bytes):
                headers = header_fields(value)
        urgent = urgent_of(headers)
        body_text, body_html = body_texts(structure, texts)
        return ImapMessage(
            message_id=str(message_id),
            folder_id=folder.id,
            conversation_id=str(message_id),
            subject=subject,
            body_text=body_text,
            body_html=body_html,
            size=_int(data.get("RFC822.SIZE")),
            date=written or _parse_date(data.get("INTERNALDATE")),  # arrival: no Date
            emails=emails,
            flags=historic_flags(
                flag_names(data.get("FLAGS")),
                sent=folder.id == SENT,
                attachment=bool(structure.attachments),
                urgent=urgent,
            ),
            urgent=urgent,
            read_receipt=bool(headers.get("disposition-notification-to")),
            attachments=[attachment_info(p) for p in structure.attachments],
        )

    async def _located(self, values: Iterable[str]) -> dict[int, tuple[BalFolder, Location]]:
        """Each historic id's folder and place; 45 when one is unknown or gone."""
        ids = historic_ids(values)
        found = await self.ids.locate(ids)
        folders = {f.name: f for f in await self.folders()}
        located: dict[int, tuple[BalFolder, Location]] = {}
        for message_id in ids:
            where = found.get(message_id)
            if where is None or where.folder not in folders:
                raise HistoricError(MESSAGE_MISSING, f"le message {message_id} n'existe pas")
            located[message_id] = (folders[where.folder], where)
        return located

    async def _selected_for(self, folder: BalFolder, where: Location, *, write: bool) -> None:
        selected = await self.imap.select(folder.name, write=write)
        if selected.uidvalidity != where.uidvalidity:
            raise HistoricError(MESSAGE_MISSING, "le message n'existe plus")

    async def attachment(self, message_id: str, part: str) -> tuple[Part, bytes]:
        check_part(part)
        located = await self._located([message_id])
        folder, where = next(iter(located.values()))
        await self._selected_for(folder, where, write=False)
        data = (await self.imap.fetch([where.uid], b"BODYSTRUCTURE")).get(where.uid)
        if data is None:
            raise HistoricError(MESSAGE_MISSING, f"le message {message_id} n'existe pas")
        try:
            leaves = parse_bodystructure(data.get("BODYSTRUCTURE"))
        except StructureError:
            leaves = []
        found = next((p for p in leaves if p.number == part), None)
        if found is None:
            raise HistoricError(ATTACHMENT_MISSING, f"la pièce jointe {part} n'existe pas")
        octets = (await self.imap.fetch([where.uid], b"BODY.PEEK[%s]" % part.encode())).get(
            where.uid, {}
        )
        raw = octets.get(f"BODY[{part}]")
        if not isinstance(raw, bytes):
            raise HistoricError(ATTACHMENT_MISSING, f"la pièce jointe {part} n'existe pas")
        return found, decode_part(found, raw)

    async def download(self, message_id: str, part: str) -> dict[str, Any]:
        found, data = await self.attachment(message_id, part)
        info = attachment_info(found)
        return {
            "file": base64.b64encode(data).decode("ascii"),
            "fileName": info.file_name,
            "contentType": info.content_type,
            "size": len(data),
        }

    # -- changing --------------------------------------------------------------------------

    async def update(self, operation: str, values: list[str]) -> None:
        located = await self._located(values)
        if operation in ("TRASH", "SPAM", "UNSPAM"):
            target = {"TRASH": TRASH, "SPAM": JUNK, "UNSPAM": INBOX}[operation]
            await self.move(values, target)
            return
        groups = _by_folder(located)
        for folder, entries in groups:
            await self._selected_for(folder, entries[0][1], write=True)
            uids = [where.uid for _, where in entries]
            if operation == "DELETE":
                await self.imap.expunge(uids)
                await self.ids.gone([i for i, _ in entries])
                continue
            sign = b"-" if operation in ("UNREAD", "UNFLAGGED") else b"+"
            flag = _IMAP_OF[operation].encode()
            await self.imap.store(uids, sign + b"FLAGS.SILENT (" + flag + b")")
            await self.ids.touched([i for i, _ in entries])

    async def move(self, values: list[str], destination_id: int) -> None:
        if destination_id == ROOT:
            raise HistoricError(FOLDER_MISSING, "la racine ne contient pas de messages")
        destination = await self.folder(destination_id)
        located = await self._located(values)
        for folder, entries in _by_folder(located):
            if folder.id == destination.id:
                continue
            await self._selected_for(folder, entries[0][1], write=True)
            uids = [where.uid for _, where in entries]
            validity, pairs = await self.imap.move(uids, destination.name)
            moves = {
                message_id: Location(destination.name, validity, pairs[where.uid])
                for message_id, where in entries
                if where.uid in pairs and validity
            }
            await self.ids.moved(moves)
            lost = [i for i, _ in entries if i not in moves]
            if lost:  # no COPYUID: new ids at the destination, the old ones deleted
                await self.ids.gone(lost)

    async def _files(self, entries: Sequence[dict[str, Any]]) -> tuple[tuple[str, str, bytes], ...]:
        """Decode new files and fetch forwarded parts, within the size limit (32)."""

        async def stored(source: str, part: str) -> tuple[str, str, bytes]:
            found, data = await self.attachment(source, part)
            info = attachment_info(found)
            return info.file_name, info.content_type, data

        return await inputs.attachment_files(entries, MAX_ATTACHMENTS_BYTES, stored)

    def _composition(
        self,
        composed: Composed,
        files: tuple[tuple[str, str, bytes], ...],
        reference: str | None,
    ) -> Composition:
        return Composition(
            sender=(self.bal, self.display_name),
            recipients=composed.recipients,
            subject=composed.subject,
            body=composed.body,
            is_html=composed.is_html,
            urgent=composed.urgent,
            read_receipt=composed.read_receipt,
            attachments=files,
            message_id=f"<{uuid.uuid4().hex}@{self.settings.domain}>",
            date=dt.datetime.now(PARIS).replace(microsecond=0),
            in_reply_to=reference,
            references=(reference,) if reference else (),
        )

    async def _draft_of(self, message_id: str) -> tuple[int, BalFolder, Location]:
        located = await self._located([message_id])
        historic_id, (folder, where) = next(iter(located.items()))
        await self._selected_for(folder, where, write=False)
        flags = (await self.imap.fetch([where.uid], b"FLAGS")).get(where.uid, {})
        if folder.id != DRAFTS or "\\draft" not in {
            f.lower() for f in flag_names(flags.get("FLAGS"))
        }:
            raise HistoricError(MESSAGE_MISSING, f"aucun brouillon {message_id}")
        return historic_id, folder, where

    async def _append(
        self, folder: BalFolder, raw: bytes, flags: Sequence[str], when: dt.datetime
    ) -> tuple[int, int]:
        """APPEND; (UIDVALIDITY, UID) of the new message."""
        uid = await self.imap.access.append(folder.name, raw, flags, when)
        self.imap.selected = None
        selected = await self.imap.select(folder.name)
        return selected.uidvalidity, uid

    async def draft(self, payload: dict[str, Any]) -> dict[str, Any]:
        composed = inputs.composed(payload, sending=False)
        replaced = await self._draft_of(composed.message_id) if composed.message_id else None
        files = await self._files(composed.attachments)
        composition = self._composition(composed, files, None)
        drafts = await self.folder(DRAFTS)
        validity, uid = await self._append(
            drafts, build_mime(composition, with_bcc=True), ("\\Draft", "\\Seen"), composition.date
        )
        if replaced is not None:
            historic_id, folder, where = replaced
            await self.imap.select(folder.name, write=True)
            await self.imap.expunge([where.uid])
            await self.ids.moved({historic_id: Location(drafts.name, validity, uid)})
        return {
            "message": message_object(
                (await self.describe([(drafts, validity, uid)]))[0], html=True
            )
        }

    async def send(
        self,
        payload: dict[str, Any],
        *,
        software: str | None,
        delegate: tuple[str, str] | None,
        user_agent: str | None = None,
        actor: str = "",
    ) -> dict[str, Any]:
        """sendMessage; `software` (NUMHOMOLOGATION) is the message's X-MSS-NIL, and with
        `user_agent` what its non-conformities are counted under."""
        composed = inputs.composed(payload, sending=True)
        original: tuple[int, BalFolder, Location] | None = None
        draft: tuple[int, BalFolder, Location] | None = None
        reference: str | None = None
        if composed.reply_type and composed.message_id:
            located = await self._located([composed.message_id])
            historic_id, (folder, where) = next(iter(located.items()))
            original = (historic_id, folder, where)
            await self._selected_for(folder, where, write=False)
            data = (await self.imap.fetch([where.uid], b"ENVELOPE")).get(where.uid, {})
            try:
                reference = parse_envelope(data.get("ENVELOPE")).message_id
            except StructureError:
                reference = None
        elif composed.message_id:
            draft = await self._draft_of(composed.message_id)
        files = await self._files(composed.attachments)
        composition = self._composition(composed, files, reference)
        derived = xdm_headers(files)
        outgoing = build_mime(composition, with_bcc=False)
        if derived:
            outgoing = add_headers(outgoing, derived)
        recipients = list(dict.fromkeys(a for a, _, _ in composed.recipients))
        nil = software if software and _one_ascii_line(software) else None
        checked = check_message(
            outgoing,
            sender=self.bal,
            default_nil=nil,
            max_size=self.settings.max_message_size,
            recipients=recipients,
        )
        refusing = self.settings.mss.judge(
            checked,
            interface="historic-ws",
            software=software or user_agent,
            bal=self.bal,
            actor=actor,
        )
        if refusing:
            raise HistoricError(
                INVALID_FORMAT,
                "message refusé: " + ", ".join(violation.rule for violation in refusing),
            )
        if checked.headers_to_add:
            outgoing = add_headers(outgoing, checked.headers_to_add)
        if delegate is not None:  # (name, address) of who sends for the holder
            name, address = delegate
            try:
                outgoing = add_sender(outgoing, name, address)
            except ValueError:  # a name unfit for a header: the address alone
                outgoing = add_sender(outgoing, "", address)
        sent = await self.folder(SENT)  # before anything leaves: a BAL without Sent fails here
        await self._submit(outgoing, recipients)
        # The message has left: whatever fails now must not make the client send it again.
        copy: tuple[int, int] | None = None
        try:
            if not self.settings.keeps_sent_copy:
                own = build_mime(composition, with_bcc=True)
                if derived or checked.headers_to_add:
                    own = add_headers(own, [*derived, *checked.headers_to_add])
                copy = await self._append(sent, own, ("\\Seen",), composition.date)
            else:
                selected = await self.imap.select(sent.name)
                uids = await self.imap.search(
                    b"HEADER Message-ID " + _quoted(composition.message_id)
                )
                if uids:
                    copy = (selected.uidvalidity, uids[-1])
            if original is not None:
                historic_id, folder, where = original
                flag = b"$Forwarded" if composed.reply_type == "FORWARD" else b"\\Answered"
                await self._selected_for(folder, where, write=True)
                await self.imap.store([where.uid], b"+FLAGS.SILENT (" + flag + b")")
                await self.ids.touched([historic_id])
            if draft is not None:
                historic_id, folder, where = draft
                await self.imap.select(folder.name, write=True)
                await self.imap.expunge([where.uid])
                await self.ids.gone([historic_id])
        except (BackendError, HistoricError) as failure:
            log.warning(
                "legacy_front.after_send_failed",
                extra={"bal": self.bal, "error": type(failure).__name__},
            )
        described: list[ImapMessage] = []
        if copy is not None:
            try:
                described = await self.describe([(sent, copy[0], copy[1])])
            except (BackendError, HistoricError):
                log.warning("legacy_front.after_send_failed", extra={"bal": self.bal})
        if not described:
            # the platform keeps the copy but has not filed it yet: the message left (an
            # error now would make the client send it again); the copy gets its id later
            described = [_unfiled(composition, len(outgoing))]
        return {"message": message_object(described[0], html=True)}

    async def _submit(self, message: bytes, recipients: list[str]) -> None:
        """MAIL, RCPT, DATA on the backend's submission path: returns once it took it."""
        if self.submission is None:
            raise HistoricError(TECHNICAL_ERROR, "envoi impossible", "TECHNIQUE")
        session = self.submission()
        try:
            await session.open()
            await session.mail(self.bal, [])
            for recipient in recipients:
                try:
                    await session.rcpt(recipient)
                except BackendRefused as refusal:
                    raise HistoricError(
                        EMAIL_INVALID, f"destinataire refusé: {recipient}"
                    ) from refusal
            await session.data(message, recipients)
        except BackendError as failure:
            raise HistoricError(
                TECHNICAL_ERROR, "envoi refusé par la plateforme", "TECHNIQUE"
            ) from failure
        finally:
            await session.close()

    # -- syncMessages ----------------------------------------------------------------------

    async def sync(self, token: int | None, html: bool) -> dict[str, Any]:
        """Bring the id table up to date with every folder, then report what changed after
        `token` (the BAL's change counter). With CONDSTORE, per folder only what changed
        since the last sync (`_catch_up`); otherwise a snapshot of its UIDs and flags."""
        folders = await self.folders(fresh=True)
        marks = await self.ids.marks() if self.imap.condstore else {}
        if marks:
            await self.imap.deselect()  # STATUS answers now, not as this session last saw
        for folder in folders:
            try:
                if self.imap.condstore:
                    await self._catch_up(folder, marks.get(folder.name))
                else:
                    await self._snapshot(folder)
            except BackendNotFound:
                continue
        changes = await self.ids.changes_since(token)
        by_name = {f.name: f for f in folders}
        wanted = [
            (by_name[where.folder], where.uidvalidity, where.uid)
            for where in changes.modified.values()
            if where.folder in by_name
        ]
        messages = await self.describe(wanted)
        return {
            "token": str(changes.token),
            "modifiedMessages": [message_object(m, html=html) for m in messages],
            "deletedMessageIds": [str(i) for i in changes.deleted],
        }

    async def _snapshot(
        self, folder: BalFolder, selected: Selected | None = None, mark: Mark | None = None
    ) -> None:
        """Every UID and its flags against the table (what a backend without CONDSTORE
        gets at every sync); `selected` and `mark` when the caller just read them (before
        this FETCH: a mark older than what the FETCH saw only costs a little more later)."""
        if selected is None:
            selected = await self.imap.select(folder.name, fresh=True)
        current = await self.imap.all_uids()
        await self.ids.observe(
            folder.name,
            selected.uidvalidity,
            {uid: flags_text(flags) for uid, flags in current.items()},
            complete=True,
            mark=mark,
        )
        log.debug("legacy_front.sync_folder", extra={"folder": folder.id, "how": "snapshot"})

    async def _catch_up(self, folder: BalFolder, mark: Mark | None) -> None:
        """CONDSTORE (RFC 7162): a folder whose (UIDVALIDITY, HIGHESTMODSEQ) did not move
        since `mark` is not even selected; else only the messages changed since (FETCH
        CHANGEDSINCE), and the UIDs gone (VANISHED with QRESYNC, else UID SEARCH ALL
        against the table). No mark yet, another UIDVALIDITY, a mod-sequence gone back
        or a folder without mod-sequences: a snapshot of that folder."""
        if mark is not None:
            status = await self.imap.modseq_status(folder.name)
            if status is not None and Mark(status.uidvalidity, status.highestmodseq) == mark:
                log.debug("legacy_front.sync_folder", extra={"folder": folder.id, "how": "same"})
                return
        selected = await self.imap.select(folder.name, fresh=True)
        if selected.highestmodseq is None:  # NOMODSEQ: this folder keeps none
            return await self._snapshot(folder, selected)
        now = Mark(selected.uidvalidity, selected.highestmodseq)
        if (
            mark is None
            or mark.uidvalidity != now.uidvalidity
            or mark.highestmodseq > now.highestmodseq
        ):
            return await self._snapshot(folder, selected, now)
        if selected.exists == 0:
            await self.ids.observe(folder.name, now.uidvalidity, {}, complete=True, mark=now)
            return None
        if now == mark:
            return None
        changed, gone = await self.imap.changed_since(mark.highestmodseq)
        present = None if gone is not None else set(await self.imap.search(b"ALL"))
        await self.ids.observe(
            folder.name,
            now.uidvalidity,
            {uid: flags_text(flags) for uid, flags in changed.items()},
            vanished=gone if gone is not None else (),
            present=present,
            mark=now,
        )
        log.debug(
            "legacy_front.sync_folder",
            extra={"folder": folder.id, "how": "changes", "changed": len(changed)},
        )
        return None


def _unfiled(composition: Composition, size: int) -> ImapMessage:
    """The sent message as composed, for a platform that files its copy in Sent itself
    and has not yet: no historic id yet ("0")."""
    kinds = {"TO", "CC", "BCC"}
    return ImapMessage(
        message_id="0",
        folder_id=SENT,
        conversation_id="0",
        subject=composition.subject,
        body_text=composition.body if not composition.is_html else "",
        body_html=composition.body if composition.is_html else None,
        size=size,
        date=composition.date,
        emails=[
            *([EmailEntry(*composition.sender, "FROM")] if composition.sender else []),
            *(EmailEntry(a, n, k) for a, n, k in composition.recipients if k in kinds),
        ],
        flags=historic_flags(
            {"\\Seen"},
            sent=True,
            attachment=bool(composition.attachments),
            urgent=composition.urgent,
        ),
        urgent=composition.urgent,
        read_receipt=composition.read_receipt,
        attachments=[
            AttachmentInfo(str(index), name, kind, len(data))
            for index, (name, kind, data) in enumerate(composition.attachments, 2)
        ],
    )


def xdm_headers(files: Sequence[tuple[str, str, bytes]]) -> list[tuple[str, str]]:
    """X-MSS-CODECDA and X-MSS-INS for the CDA documents of IHE_XDM.ZIP attachments: a
    historic message cannot carry headers, so the gateway writes what its rules require
    from the archives themselves (an unreadable one is left for the rules to refuse)."""
    codes: set[str] = set()
    qualified = True
    for name, _, data in files:
        if name.upper() != "IHE_XDM.ZIP":
            continue
        try:
            content = read_xdm(data)
        except XdmError:
            continue
        if content.documents:
            codes.update(content.codes)
            qualified = qualified and content.ins_qualified
    if not codes:
        return []
    return [("X-MSS-CODECDA", ",".join(sorted(codes))), ("X-MSS-INS", "O" if qualified else "N")]


def _by_folder(
    located: dict[int, tuple[BalFolder, Location]],
) -> list[tuple[BalFolder, list[tuple[int, Location]]]]:
    groups: dict[str, tuple[BalFolder, list[tuple[int, Location]]]] = {}
    for message_id, (folder, where) in located.items():
        groups.setdefault(folder.name, (folder, []))[1].append((message_id, where))
    return list(groups.values())


def _int(value: ParsedValue) -> int:
    return value if isinstance(value, int) else 0


def _one_ascii_line(text: str) -> bool:
    return text.isascii() and text.isprintable() and len(text) <= 64


def _quoted(text: str) -> bytes:
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii", "replace") + b'"'


def _matches(query: inputs.SearchQuery, data: dict[str, ParsedValue]) -> bool:
    """What IMAP SEARCH did not decide: texts (accents and case folded, as the historic
    platform matches) and exact date bounds."""
    date = _parse_date(data.get("INTERNALDATE"))
    if query.before is not None and not date < query.before:
        return False
    if query.after is not None and not date > query.after:
        return False
    texts = {k: v for k, v in query.texts.items() if k != "content"}
    if not texts:
        return True
    try:
        envelope = parse_envelope(data.get("ENVELOPE"))
    except StructureError:
        return False
    for key, needle in texts.items():
        if key == "subject":
            haystack = envelope.subject
        else:
            haystack = " ".join(
                f"{e.address} {e.name}" for e in envelope.emails if e.type == key.upper()
            )
        if needle not in fold(haystack):
            return False
    return True


__all__ = [
    "MAX_FOLDER_NAME_INPUT",
    "BalFolder",
    "ModernBal",
    "Settings",
    "check_folder_name",
    "check_part",
    "historic_ids",
]
