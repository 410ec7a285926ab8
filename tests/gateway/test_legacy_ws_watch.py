"""The syncMessages watch of a historic BAL, against a scripted client: what it forgets,
when it tells the sessions, how it backs off, when it stops."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any, cast

from gateway.backends.legacy_ws.client import (
    LegacyError,
    LegacyTooLarge,
    LegacyUnavailable,
    LegacyWsClient,
    SyncResult,
)
from gateway.backends.legacy_ws.watch import BalWatch, Kept, Watches
from gateway.imap.mailstore import FolderState

BAL = "jean.dupont@medecin.mssante.fr"
POLL = 0.02


class Scripted:
    """sync_messages answering what `answer` returns for each (call number, token)."""

    def __init__(self, answer: Callable[[int, str | None], SyncResult]) -> None:
        self.answer = answer
        self.tokens: list[str | None] = []

    async def sync_messages(self, bal: str, token: str | None = None, *, html: bool = True):
        assert bal == BAL
        assert html is False  # the watch needs no bodies
        self.tokens.append(token)
        return self.answer(len(self.tokens), token)


def kept(folder_id: int, *ids: str) -> Kept:
    return Kept(FolderState(1, 1, ()), {}, {}, frozenset(ids), time.monotonic())


def watch_of(client: Scripted, watches: Watches | None = None) -> BalWatch:
    registry = watches or Watches()
    return registry.watch(cast(LegacyWsClient, client), BAL, POLL)


async def until(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    """Poll a counter the scripted client bumps (it has no event of its own to wait on)."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(POLL / 4)


class User:
    """Stands for a session's store: the watch holds it weakly."""


async def test_changes_forget_the_folders_they_touch_and_wake_the_sessions() -> None:
    def answer(call: int, token: str | None) -> SyncResult:
        if call == 3:  # a message arrives in 2, one kept in 5 is deleted
            return SyncResult(str(call), [{"messageId": "9", "folderId": 2}], ["50"])
        return SyncResult(str(call))

    client = Scripted(answer)
    watch = watch_of(client)
    user = User()
    watch.join(user)
    await until(lambda: len(client.tokens) >= 1)
    watch.states = {2: kept(2, "1"), 5: kept(5, "50"), 6: kept(6, "60")}
    version = watch.version
    waiter = asyncio.create_task(watch.wait(version))
    await until(lambda: len(client.tokens) >= 3)
    await asyncio.wait_for(waiter, 1)
    assert watch.version > version
    assert set(watch.states) == {6}  # only the untouched folder is still trusted
    assert client.tokens[:3] == [None, "1", "2"]  # one chain of tokens
    watch.leave(user)
    await watch.aclose()


async def test_a_failing_platform_is_asked_less_and_less_often() -> None:
    client = Scripted(lambda call, token: (_ for _ in ()).throw(LegacyUnavailable("down")))
    watch = watch_of(client)
    user = User()
    watch.join(user)
    start, began = watch.version, time.monotonic()
    await until(lambda: len(client.tokens) >= 5, seconds=10)
    # the fifth attempt comes after 1 + 1 + 2 + 4 intervals at least, not after 4
    assert time.monotonic() - began >= POLL * 8
    # yet the sessions hear every interval that they must look again
    assert watch.version - start >= 8
    watch.leave(user)
    await watch.aclose()


async def test_a_refused_token_starts_a_new_chain() -> None:
    def answer(call: int, token: str | None) -> SyncResult:
        if call == 2:
            raise LegacyError(36, "jeton inconnu", "FONCTIONNELLE")
        return SyncResult(str(call))

    client = Scripted(answer)
    watch = watch_of(client)
    user = User()
    watch.join(user)
    await until(lambda: len(client.tokens) >= 1)
    watch.states = {2: kept(2, "1")}
    await until(lambda: len(client.tokens) >= 4)
    assert client.tokens[:4] == [None, "1", None, "3"]  # refused, then started over
    assert watch.states == {}  # everything forgotten at the reset
    watch.leave(user)
    await watch.aclose()


def test_a_state_read_before_the_chain_began_is_trusted_for_one_interval_only() -> None:
    watch = BalWatch(cast(LegacyWsClient, None), BAL, 60.0, lambda _: None)
    early = kept(2, "1")
    assert watch.fresh(early)  # no token yet: trusted poll_interval seconds
    early.at -= 61
    assert not watch.fresh(early)


async def test_the_watch_ends_with_its_last_session() -> None:
    watches = Watches()
    client = Scripted(lambda call, token: SyncResult(str(call)))
    watch = watch_of(client, watches)
    user: Any = User()
    watch.join(user)
    await until(lambda: len(client.tokens) >= 2)
    assert watches.version(BAL, "INBOX") == watch.version
    del user  # a session gone without saying so (its store collected) ends it too
    gc.collect()
    await until(lambda: watches.watch(cast(LegacyWsClient, client), BAL, POLL) is not watch)
    calls = len(client.tokens)
    await asyncio.sleep(POLL * 5)
    assert len(client.tokens) == calls  # no poller left behind


async def test_a_session_coming_back_resumes_the_chain_of_tokens() -> None:
    """The first sync of a BAL carries all its messages: a BAL watched again (a client
    that connects briefly and often) goes on from the last token instead."""
    watches = Watches()
    client = Scripted(lambda call, token: SyncResult(f"t{call}"))
    first = watch_of(client, watches)
    user = User()
    first.join(user)
    await until(lambda: len(client.tokens) >= 2)
    first.leave(user)
    await until(lambda: watches.watch(cast(LegacyWsClient, client), BAL, POLL) is not first)
    again = watches.watch(cast(LegacyWsClient, client), BAL, POLL)
    last = client.tokens[-1]
    again.join(user)
    await until(lambda: len(client.tokens) >= 4)
    assert client.tokens[0] is None
    assert None not in client.tokens[1:]  # never a first sync again
    assert last is not None
    again.leave(user)
    await again.aclose()


async def test_too_many_changes_since_the_token_start_a_new_chain() -> None:
    def answer(call: int, token: str | None) -> SyncResult:
        if call == 2:
            raise LegacyTooLarge("syncMessages: answer with a list too long")
        return SyncResult(str(call))

    client = Scripted(answer)
    watch = watch_of(client)
    user = User()
    watch.join(user)
    await until(lambda: len(client.tokens) >= 3)
    assert client.tokens[:3] == [None, "1", None]  # the same token would fail the same way
    watch.leave(user)
    await watch.aclose()
