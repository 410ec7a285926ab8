"""`MailboxAccess` over a `MailStore`: the operator's tools on a backend whose only way in
is a store the engine could serve (the historic web services without their IMAP).

What the store cannot do it refuses (`StoreError` → backend errors): on the historic web
services, appending outside Drafts is `BackendCannot`, and a message's bytes are the
rebuild, not the original.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Collection, Iterable, Iterator, Sequence

from gateway.backends.base import ToolFolder, ToolMessage, digest
from gateway.backends.errors import (
    BackendCannot,
    BackendNotFound,
    BackendRefused,
    BackendTooLarge,
    BackendUnavailable,
)
from gateway.imap.codes import Code
from gateway.imap.mailstore import (
    FolderExists,
    FolderNotFound,
    MailStore,
    MessageGone,
    StoreError,
    StoreUnavailable,
    Unsupported,
)

BATCH = 100


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except StoreUnavailable as exc:
        raise BackendUnavailable("unavailable", str(exc)) from None
    except (FolderNotFound, MessageGone) as exc:
        raise BackendNotFound(str(exc)) from None
    except Unsupported as exc:
        raise BackendCannot(str(exc)) from None
    except StoreError as exc:
        if exc.code in (Code.LIMIT, Code.TOOBIG):
            raise BackendTooLarge(str(exc)) from None
        raise BackendRefused(str(exc)) from None


class StoreMailboxAccess:
    def __init__(self, store: MailStore, *, close: bool = True) -> None:
        self.store = store
        self._close = close

    async def folders(self) -> Sequence[ToolFolder]:
        with _translated():
            return [ToolFolder(f.name, f.special_use) for f in await self.store.list_folders()]

    async def messages(self, folder: str) -> Sequence[ToolMessage]:
        with _translated():
            state = await self.store.folder_state(folder)
            found: list[ToolMessage] = []
            metas = list(state.messages)
            for start in range(0, len(metas), BATCH):
                chunk = metas[start : start + BATCH]
                bodies = await self.store.fetch_messages(folder, [m.uid for m in chunk])
                for meta in chunk:
                    body = bodies.get(meta.uid)
                    if body is None:
                        continue  # expunged meanwhile
                    found.append(
                        ToolMessage(
                            meta.uid, meta.flags, meta.internal_date, len(body), digest(body)
                        )
                    )
            return found

    async def uidvalidity(self, folder: str) -> int:
        """The folder's UIDVALIDITY, for tools that keep UIDs across runs."""
        with _translated():
            return (await self.store.folder_state(folder)).uidvalidity

    async def fetch(self, folder: str, uid: int) -> bytes:
        with _translated():
            return await self.store.fetch_message(folder, uid)

    async def append(
        self,
        folder: str,
        message: bytes,
        flags: Collection[str] = (),
        internal_date: dt.datetime | None = None,
    ) -> int:
        with _translated():
            _, uid = await self.store.append(
                folder, message, flags, internal_date or dt.datetime.now(dt.UTC)
            )
            return uid

    async def set_flags(self, folder: str, uid: int, flags: Collection[str]) -> None:
        with _translated():
            await self.store.store_flags(folder, [uid], "replace", flags)

    async def delete(self, folder: str, uids: Iterable[int]) -> None:
        wanted = sorted(set(uids))
        if not wanted:
            return
        with _translated():
            await self.store.store_flags(folder, wanted, "add", ["\\Deleted"])
            await self.store.expunge(folder, wanted)

    async def create_folder(self, name: str) -> None:
        with _translated(), contextlib.suppress(FolderExists):
            await self.store.create_folder(name)

    async def aclose(self) -> None:
        closer = getattr(self.store, "aclose", None)
        if self._close and closer is not None:
            await closer()
