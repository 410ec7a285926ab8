"""A target access that lets a test see each APPEND (one by one, or a pipelined batch)
before it starts and once it is done, before its checkpoint: where the migration tests
kill, cancel or announce a copy."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

from gateway.backends.base import MailboxAccess


class WatchedAppends:
    """Forwards everything to `access`; `starting(n)` before n APPENDs, `done(uids)` once
    they returned. A pipelined batch is seen whole, as the copy's checkpoint sees it."""

    def __init__(self, access: MailboxAccess) -> None:
        self.access = access

    def __getattr__(self, name: str) -> object:
        return getattr(self.access, name)

    def starting(self, count: int) -> None:
        """Before `count` APPENDs are sent."""

    def done(self, uids: Sequence[int]) -> None:
        """Once APPENDs returned these UIDs, before the copy checkpoints them."""

    async def append(
        self,
        folder: str,
        message: bytes,
        flags: Collection[str] = (),
        internal_date: dt.datetime | None = None,
    ) -> int:
        self.starting(1)
        uid = await self.access.append(folder, message, flags, internal_date)
        self.done([uid])
        return uid

    async def append_many(
        self, folder: str, messages: Sequence[tuple[bytes, Collection[str], dt.datetime | None]]
    ) -> list[int]:
        many = getattr(self.access, "append_many", None)
        if many is None:
            return [await self.append(folder, m, f, d) for m, f, d in messages]
        self.starting(len(messages))
        uids: list[int] = await many(folder, messages)
        self.done(uids)
        return uids
