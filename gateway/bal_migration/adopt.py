"""A BAL leaving the historic platform keeps the messageIds its LPS know.

Before the move, the legacy front passes the historic platform's own ids through; after
it, the gateway serves the ids of its tables (`gateway.legacy_front.ids`), numbered per
BAL as the platform numbers them. At the cut-over, under the hold and before the switch,
every message the copy put on the target is given, in those tables under the target's
name, the id it had on the historic platform, and every folder its folder id:

* read through the web services alone (the gateway's `LegacyWsStore`, no
  `historic_imap`), the source tells each UID's messageId exactly;
* read through the platform's IMAP, which does not, each message is paired with its
  messageId by what both show of it (`historic_match`).

A message left unpaired gets an id above every id the platform shows, with room for the
mail that reaches it until the switch (`ID_GAP`), so that no id an LPS holds ever names
another message. The change token is set well above the platform's (`TOKEN_GAP`; far
above any counter when the platform's is unknown or not a number), so an LPS's next
`syncMessages` with a token of the old platform, even one given during the cut-over, is
told to start over (and lists the same ids again). Rows go under the target's name while
the legacy front still serves the BAL from the platform: nothing reads them before the
registry's record moves.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.backends.base import MailboxAccess
from gateway.backends.legacy_ws.client import LegacyTooLarge
from gateway.bal_migration.carry import ID_GAP, TOKEN_GAP, Row, write
from gateway.bal_migration.checkpoint import FolderKey, Journal
from gateway.bal_migration.historic_match import (
    Seen,
    folder_paths,
    imap_name,
    imap_seen,
    pair,
    ws_seen,
)
from gateway.legacy_front.ids import flags_text

log = logging.getLogger(__name__)

UNKNOWN_TOKEN_BASE = 2**40  # past any change counter; below a millisecond clock


class HistoricClient(Protocol):
    """What adopting asks of the platform's web services (`LegacyWsClient`)."""

    async def list_folders(self, bal: str) -> list[dict[str, Any]]: ...

    async def search_messages(
        self, bal: str, folder_id: int | None = None, *, html: bool = True
    ) -> list[dict[str, Any]]: ...

    async def sync_messages(
        self, bal: str, token: str | None = None, *, html: bool = True
    ) -> Any: ...


@runtime_checkable
class KnowsHistoricIds(Protocol):
    """A source that tells each UID's messageId (the gateway's store over the services)."""

    async def historic_folder_ids(self) -> dict[str, int]: ...

    async def historic_ids(self, folder: str) -> dict[int, str]: ...


@runtime_checkable
class ShowsHeaders(Protocol):
    """A source read through IMAP: each message's header block, date and size."""

    async def headers(self, folder: str) -> dict[int, tuple[bytes, dt.datetime, int]]: ...

    async def uidvalidity(self, folder: str) -> int: ...


@dataclass(frozen=True, slots=True)
class Adopted:
    kept: int  # messages that keep their historic id
    new: int  # messages given a new id (no partner found)

    def json(self) -> dict[str, int]:
        return {"kept": self.kept, "new": self.new}


def _number(value: object) -> int | None:
    text = str(value)
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


async def _pairs(
    bal: str,
    folder: FolderKey,
    folder_id: int | None,
    source: MailboxAccess,
    client: HistoricClient,
    seen_ids: set[int],
) -> dict[int, int]:
    """UID → historic messageId for the source folder `folder` as the journal copied it
    (none when the folder has been renumbered since: its UIDs name other messages)."""
    validity = getattr(source, "uidvalidity", None)
    if validity is not None and int(await validity(folder.name)) != folder.uidvalidity:
        return {}
    if isinstance(source, KnowsHistoricIds):
        found = {uid: _number(m) for uid, m in (await source.historic_ids(folder.name)).items()}
        exact = {uid: n for uid, n in found.items() if n is not None}
        seen_ids.update(exact.values())
        return exact
    if folder_id is None or not isinstance(source, ShowsHeaders):
        return {}
    listed = await client.search_messages(bal, folder_id, html=False)
    theirs: list[Seen] = []
    for message in listed:
        shown = ws_seen(message)
        if shown is not None:
            seen_ids.add(shown[0])
            theirs.append(shown[1])
    mine = [
        seen
        for uid, (header, date, size) in (await source.headers(folder.name)).items()
        if (seen := imap_seen(uid, header, date, size)) is not None
    ]
    return pair(mine, theirs)


async def adopt_historic_ids(
    engine: AsyncEngine,
    bal: str,
    journal: Journal,
    source: MailboxAccess,
    target: MailboxAccess,
    client: HistoricClient,
) -> Adopted:
    """Give the copies of `bal` on the journal's target their historic ids (see the module
    docstring); `source` is the platform's access the copy read, `client` its services."""
    bal = bal.lower()
    record = await journal.record()
    seen_ids: set[int] = set()
    try:  # the whole BAL: the platform's current token, and every id it gives
        synced = await client.sync_messages(bal, None, html=False)
    except LegacyTooLarge:  # too many to list at once: the token is not known
        token = None
    else:
        token = _number(getattr(synced, "token", ""))
        for message in getattr(synced, "modified", ()):
            if (number := _number(message.get("messageId", ""))) is not None:
                seen_ids.add(number)
    if isinstance(source, KnowsHistoricIds):
        paths = await source.historic_folder_ids()
    else:
        paths = folder_paths(await client.list_folders(bal))
    seen_ids.update(paths.values())
    folders: dict[str, int] = {}  # target name → historic folder id
    placed: list[tuple[int | None, str, int, int, str]] = []  # (id, folder, validity, uid, flags)
    used: set[int] = set()
    places: set[tuple[str, int, int]] = set()  # one id per copy, as `carry.rebind` keeps
    for folder in await journal.folders():
        folder_id = paths.get(imap_name(folder.name))
        fresh_folder = folder.target not in folders and folder_id not in folders.values()
        if folder_id is not None and fresh_folder:
            folders[folder.target] = folder_id
        pairs = await _pairs(bal, folder, folder_id, source, client, seen_ids)
        validity = int(await target.uidvalidity(folder.target))  # type: ignore[attr-defined]
        for uid, copied in sorted((await journal.copied(folder)).items()):
            if copied.target_uid is None or (folder.target, validity, copied.target_uid) in places:
                continue
            places.add((folder.target, validity, copied.target_uid))
            historic = pairs.get(uid)
            if historic is not None and historic in used:
                historic = None
            if historic is not None:
                used.add(historic)
            placed.append(
                (historic, folder.target, validity, copied.target_uid, flags_text(copied.flags))
            )
    fresh = first_new = max(seen_ids, default=0) + 1 + ID_GAP
    base = token + 1 + TOKEN_GAP if token is not None else UNKNOWN_TOKEN_BASE
    rows: list[Row] = []
    for version, (historic, name, validity, uid, flags) in enumerate(placed, start=base + 1):
        if historic is None:
            historic, fresh = fresh, fresh + 1
        rows.append(Row(historic, name, validity, uid, flags, version))
    counter = base + len(rows)
    async with engine.begin() as db:
        # every token of the old platform is below the floor: its LPS start over
        written = await write(
            db, record.target, bal, list(folders.items()), rows, counter, counter, fresh
        )
    adopted = Adopted(
        sum(1 for row in written if row.message_id < first_new),
        sum(1 for row in written if row.message_id >= first_new),
    )
    log.info("migration.historic_ids_adopted", extra={"bal": bal, **adopted.json()})
    return adopted
