"""Who is being tested: attributes what the mock sees to the open campaign it belongs to.

A connection's events are held until its login says whose session it is (the token's
client id and person, or the BAL opened), then written to the campaign that matches, the
most recent first; a connection that matches none, or never logs in, is forgotten (except
on the TLS scenario ports: `adopt`). PSC calls carry their client id and person, and are
attributed at once. Writes go to the database in batches from one task, so an observation
costs the protocol code a list append.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from mock_operator.conformance.events import Event
from mock_operator.conformance.store import Campaign, CampaignStore
from mock_operator.personas import PersonaBook

log = logging.getLogger(__name__)

MAX_PENDING = 200  # events of a connection before its login (CAPABILITY, STARTTLS, ID...)
MAX_CONNECTIONS = 5_000  # connections followed at once; the oldest is forgotten beyond
MAX_EVENTS = 50_000  # per campaign: a runaway client cannot fill the disk
MAX_OPEN_CAMPAIGNS = 100
MAX_ADOPTED = 1_000  # per campaign: connections without login a flood cannot exceed
FLUSH_EVERY = 0.2

Delivery = Callable[[Campaign, str], Coroutine[Any, Any, None]]


class Observatory:
    def __init__(self, store: CampaignStore, personas: PersonaBook) -> None:
        self.store = store
        self.personas = personas
        self._open: list[Campaign] = []
        self._pending: OrderedDict[str, list[Event]] = OrderedDict()
        self._owner: OrderedDict[str, str | None] = OrderedDict()
        self._queue: list[tuple[str, Event]] = []
        self._counts: dict[str, int] = {}
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()  # a reader waits for the batch being written
        self._seeded: set[tuple[str, str]] = set()
        self._adopted: dict[str, int] = {}
        self.on_first_login: Delivery | None = None  # the runner's test messages

    async def start(self) -> None:
        await self.store.create_schema()
        self._open = [c for c in await self.store.all() if c.closed is None][-MAX_OPEN_CAMPAIGNS:]
        self._writer = asyncio.create_task(self._write_loop())

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self.flush()

    # -- campaigns ---------------------------------------------------------------------

    async def open(
        self, software: str, version: str, client_id: str | None, personas: Iterable[str]
    ) -> Campaign:
        campaign = Campaign(
            id=f"c{time.strftime('%Y%m%d')}-{secrets.token_hex(3)}",
            software=software,
            version=version,
            client_id=client_id or None,
            personas=tuple(dict.fromkeys(personas)),
            created=time.time(),
        )
        await self.store.add(campaign)
        self._open = [*self._open, campaign][-MAX_OPEN_CAMPAIGNS:]
        self._record(campaign.id, Event("runner", "campaign_opened", data={"id": campaign.id}))
        log.info("conformance.opened", extra={"campaign": campaign.id, "software": software})
        return campaign

    async def close(self, campaign_id: str) -> None:
        await self.flush()
        await self.store.close(campaign_id, time.time())
        self._open = [c for c in self._open if c.id != campaign_id]
        self._adopted.pop(campaign_id, None)

    def open_campaigns(self) -> list[Campaign]:
        return list(self._open)

    # -- observations (synchronous, never raise) ----------------------------------------

    def event(self, interface: str, connection: str, kind: str, /, **data: Any) -> None:
        """An event of a connection: written to its campaign, or held until its login."""
        owner = self._owner.get(connection, "")
        if owner is None:  # its login matched no campaign
            return
        event = Event(interface, kind, connection, data)
        if owner:
            self._record(owner, event)
            return
        pending = self._pending.get(connection)
        if pending is None:
            if not self._open:
                return  # nobody is being tested: nothing to hold
            pending = self._pending[connection] = []
            while len(self._pending) > MAX_CONNECTIONS:
                self._pending.popitem(last=False)
        if len(pending) < MAX_PENDING:
            pending.append(event)

    def login(
        self,
        interface: str,
        connection: str,
        *,
        client_id: str,
        idnat: str,
        bal: str,
        **data: Any,
    ) -> Campaign | None:
        """A login (accepted or refused): decides the connection's campaign, once."""
        owner = self._owner.get(connection, "")
        campaign = (
            self._find(owner) if owner else self._match(client_id=client_id, idnat=idnat, bal=bal)
        )
        if not owner:
            self._owner[connection] = campaign.id if campaign else None
            while len(self._owner) > MAX_CONNECTIONS:
                self._owner.popitem(last=False)
        held = self._pending.pop(connection, [])
        if campaign is None:
            return None
        for event in held:
            self._record(campaign.id, event)
        login = {"client_id": client_id, "idnat": idnat, "bal": bal, **data}
        self._record(campaign.id, Event(interface, "login", connection, login))
        if data.get("ok") and interface == "imap" and bal:
            self._first_login(campaign, bal)
        return campaign

    @property
    def active(self) -> bool:
        """Whether any campaign is open: when none is, the taps skip their work."""
        return bool(self._open)

    def watching(self, connection: str) -> bool:
        """Whether the connection belongs to a campaign (worth reading its messages)."""
        return bool(self._owner.get(connection))

    def adopt(self, connection: str) -> Campaign | None:
        """A connection that may never log in (the TLS scenario ports, where an LPS that
        refuses the certificate never does): unless its login already decided, it belongs
        to the most recent open campaign, nothing else saying whose it is. Its held events
        go there, and so do the next ones (its close); past `MAX_ADOPTED` connections a
        campaign takes no more, so that a flood cannot crowd out its record."""
        owner = self._owner.get(connection, "")
        if owner is None:
            return None
        if owner:
            return self._find(owner)
        held = self._pending.pop(connection, [])
        if not held or not self._open:
            return None
        campaign = self._open[-1]
        adopted = self._adopted.get(campaign.id, 0)
        if adopted >= MAX_ADOPTED:
            return None
        self._adopted[campaign.id] = adopted + 1
        self._owner[connection] = campaign.id
        while len(self._owner) > MAX_CONNECTIONS:
            self._owner.popitem(last=False)
        for event in held:
            self._record(campaign.id, event)
        return campaign

    def closed(self, interface: str, connection: str, /, **data: Any) -> None:
        self.event(interface, connection, "close", **data)
        self._pending.pop(connection, None)
        self._owner.pop(connection, None)

    def psc(self, kind: str, /, *, client_id: str, idnat: str, **data: Any) -> None:
        """A PSC call; without a client id (a session ended by the mock, for all of the
        person's applications) it goes to the person's campaign whatever its client."""
        campaign = self._match(client_id=client_id or None, idnat=idnat, bal="")
        if campaign is not None:
            event = Event("psc", kind, "", {"client_id": client_id, "idnat": idnat, **data})
            self._record(campaign.id, event)

    def runner(self, campaign: Campaign, kind: str, /, **data: Any) -> None:
        self._record(campaign.id, Event("runner", kind, "", data))

    # -- reading -------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write what is queued; once it returns, every event recorded before the call is
        in the database, including a batch the write loop was writing meanwhile."""
        async with self._flushing:
            batch, self._queue = self._queue, []
            if batch:
                await self.store.write(batch)

    async def events(self, campaign_id: str) -> list[Event]:
        await self.flush()
        return await self.store.events(campaign_id)

    # -- inside --------------------------------------------------------------------------

    def _find(self, campaign_id: str) -> Campaign | None:
        return next((c for c in self._open if c.id == campaign_id), None)

    def _match(self, *, client_id: str | None, idnat: str, bal: str) -> Campaign | None:
        for campaign in reversed(self._open):
            if campaign.client_id and client_id is not None and campaign.client_id != client_id:
                continue
            if campaign.personas and not self._concerns(campaign, idnat, bal):
                continue
            return campaign
        return None

    def _concerns(self, campaign: Campaign, idnat: str, bal: str) -> bool:
        for key in campaign.personas:
            persona = self.personas.get(key)
            if persona is None:
                continue
            if persona.idnat == idnat or (bal and (persona.bal or "").lower() == bal.lower()):
                return True
        return False

    def _record(self, campaign_id: str, event: Event) -> None:
        count = self._counts.get(campaign_id, 0) + 1
        self._counts[campaign_id] = count
        if count > MAX_EVENTS:
            if count == MAX_EVENTS + 1:
                log.warning("conformance.too_many_events", extra={"campaign": campaign_id})
                self._queue.append((campaign_id, Event("runner", "truncated")))
            return
        self._queue.append((campaign_id, event))
        self._wake.set()

    def _first_login(self, campaign: Campaign, bal: str) -> None:
        key = (campaign.id, bal.lower())
        if key in self._seeded or self.on_first_login is None:
            return
        self._seeded.add(key)
        task = asyncio.get_running_loop().create_task(self.on_first_login(campaign, bal.lower()))
        task.add_done_callback(_logged)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("conformance.write_failed")
            await asyncio.sleep(FLUSH_EVERY)


def _logged(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("conformance.delivery_failed", exc_info=task.exception())
