"""Change buses: bounded subscriptions, the local bus, and PostgreSQL LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import asyncpg
import pytest

from delegation import (
    ChangeEvent,
    DelegationService,
    LocalBus,
    PostgresBus,
    Subscription,
    bus_for_url,
    create_engine,
    seed,
)
from delegation.db import asyncpg_dsn
from delegation.events import CHANNEL
from tests.delegation.conftest import CLAIRE_BAL, DURAND, MARTIN, PERSONAS, START, Clock, person


def event(n: int, kind: str = "granted") -> ChangeEvent:
    return ChangeEvent(kind, CLAIRE_BAL, DURAND, n, START)  # type: ignore[arg-type]


async def next_event(subscription: Subscription, within: float = 1.0) -> ChangeEvent:
    return await asyncio.wait_for(anext(subscription), within)


def test_event_json_round_trip() -> None:
    original = ChangeEvent("revoked", CLAIRE_BAL, DURAND, 3, START)
    assert ChangeEvent.from_json(original.to_json()) == original
    paris = dt.timezone(dt.timedelta(hours=1))
    shifted = {**original.to_json(), "at": START.astimezone(paris).isoformat()}
    assert ChangeEvent.from_json(shifted).at == START


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        {
            "kind": "deleted",
            "mailbox": "m",
            "delegate_idnat": "d",
            "delegation_id": 1,
            "at": "2026-01-01T00:00:00+00:00",
        },
        {
            "kind": "granted",
            "mailbox": "m",
            "delegate_idnat": "d",
            "delegation_id": True,
            "at": "2026-01-01T00:00:00+00:00",
        },
        {
            "kind": "granted",
            "mailbox": "m",
            "delegate_idnat": "d",
            "delegation_id": 1,
            "at": "2026-01-01T00:00:00",
        },
        {
            "kind": "granted",
            "mailbox": "m",
            "delegate_idnat": "d",
            "delegation_id": 1,
            "at": "yesterday",
        },
        {
            "kind": "granted",
            "delegate_idnat": "d",
            "delegation_id": 1,
            "at": "2026-01-01T00:00:00+00:00",
        },
    ],
)
def test_event_json_rejects_garbage(payload: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError subclass
        ChangeEvent.from_json(payload)


async def test_local_bus_delivers_to_every_subscriber() -> None:
    bus = LocalBus()
    async with bus.subscribe() as one, bus.subscribe() as two:
        assert bus.subscribers == 2
        await bus.publish(event(1))
        assert await next_event(one) == event(1)
        assert await next_event(two) == event(1)
    assert bus.subscribers == 0
    await bus.publish(event(2))  # nobody listening: fine


async def test_slow_subscriber_loses_the_oldest_and_knows_it() -> None:
    bus = LocalBus(queue_size=3)
    async with bus.subscribe() as slow:
        for n in range(1, 6):
            await bus.publish(event(n))
        assert slow.overflowed
        assert slow.dropped == 2
        assert [(await next_event(slow)).delegation_id for _ in range(3)] == [3, 4, 5]
        assert slow.clear_overflow() == 2
        assert not slow.overflowed
        async with bus.subscribe(queue_size=1000) as roomy:
            for n in range(2000):
                await bus.publish(event(n))
            assert len(roomy._items) == 1000
            assert roomy.dropped == 1000
            assert len(slow._items) == 3


async def test_closing_ends_iteration() -> None:
    bus = LocalBus()
    subscription = bus.subscribe()
    received: list[ChangeEvent] = []

    async def consume() -> None:
        async for item in subscription:
            received.append(item)

    task = asyncio.create_task(consume())
    await bus.publish(event(1))
    await asyncio.sleep(0)
    await bus.close()
    await asyncio.wait_for(task, 1)
    assert received == [event(1)]
    assert subscription.closed
    assert bus.subscribers == 0


def test_bus_factory_follows_the_database() -> None:
    assert isinstance(bus_for_url("sqlite:///x.db"), LocalBus)
    pg = bus_for_url("postgresql+asyncpg://u:p@db.example/lps")
    assert isinstance(pg, PostgresBus)


async def test_service_publishes_every_kind_on_the_local_bus(
    seeded: DelegationService, bus: LocalBus, clock: Clock
) -> None:
    claire = person(MARTIN)
    async with bus.subscribe() as subscription:
        first = await seeded.grant(
            claire, CLAIRE_BAL, DURAND, ["read"], START + dt.timedelta(days=1)
        )
        await seeded.grant(claire, CLAIRE_BAL, DURAND, ["send"], START + dt.timedelta(hours=1))
        clock.advance(hours=2)
        await seeded.expire_due()
        await seeded.revoke(claire, CLAIRE_BAL, first.id)
        received = [await next_event(subscription) for _ in range(4)]
    assert [(e.kind, e.delegation_id, e.at) for e in received] == [
        ("granted", first.id, START),
        ("updated", first.id, START),
        ("expired", first.id, START + dt.timedelta(hours=1)),
        ("revoked", first.id, START + dt.timedelta(hours=2)),
    ]


# -- PostgreSQL LISTEN/NOTIFY --------------------------------------------------------------


async def test_two_nodes_receive_a_third_ones_event(pg_url: str) -> None:
    dsn = asyncpg_dsn(pg_url)
    async with (
        PostgresBus(dsn) as node_a,
        PostgresBus(dsn) as node_b,
        PostgresBus(dsn) as node_c,
        node_a.subscribe() as sub_a,
        node_b.subscribe() as sub_b,
        node_c.subscribe() as sub_c,
    ):
        sent = event(42, "revoked")
        await node_c.publish(sent)
        assert await next_event(sub_a) == sent
        assert await next_event(sub_b) == sent
        assert await next_event(sub_c) == sent  # local delivery...
        with pytest.raises(TimeoutError):  # ...and not once more through the echo
            await next_event(sub_c, within=0.3)


async def test_a_node_reconnects_after_losing_its_listener(pg_url: str) -> None:
    dsn = asyncpg_dsn(pg_url)
    async with (
        PostgresBus(dsn, backoff_min=0.05, probe_interval=0.2) as listener,
        PostgresBus(dsn) as publisher,
        listener.subscribe() as subscription,
    ):
        old_pid = listener.listener_pid
        assert old_pid is not None
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", old_pid)
        finally:
            await admin.close()
        for _ in range(250):
            if listener.listening and listener.listener_pid not in (None, old_pid):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the listener did not reconnect within 5 seconds")
        assert subscription.overflowed  # notifications may have been missed meanwhile
        await publisher.publish(event(7))
        assert await next_event(subscription) == event(7)


async def test_foreign_or_malformed_notifications_are_ignored(pg_url: str) -> None:
    dsn = asyncpg_dsn(pg_url)
    async with PostgresBus(dsn) as bus, bus.subscribe() as subscription:
        await bus.start()
        other = await asyncpg.connect(dsn)
        try:
            await other.execute("SELECT pg_notify($1, 'not json')", CHANNEL)
            await other.execute('SELECT pg_notify($1, \'{"kind": "bogus"}\')', CHANNEL)
            payload = ChangeEvent("updated", CLAIRE_BAL, DURAND, 5, START).to_json()
            await other.execute("SELECT pg_notify($1, $2)", CHANNEL, json.dumps(payload))
        finally:
            await other.close()
        assert await next_event(subscription) == ChangeEvent(
            "updated", CLAIRE_BAL, DURAND, 5, START
        )


async def test_service_on_postgres_reaches_another_node(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        async with bus_for_url(pg_url) as ours, bus_for_url(pg_url) as theirs:
            service = DelegationService(engine, bus=ours)
            await seed(service, PERSONAS)
            async with theirs.subscribe() as subscription:
                await theirs.start()
                delegation = await service.grant(person(MARTIN), CLAIRE_BAL, DURAND, ["read"], None)
                received = await next_event(subscription)
                while received.delegate_idnat != DURAND:  # the seeded delegations come first
                    received = await next_event(subscription)
        assert (received.kind, received.delegation_id) == ("granted", delegation.id)
    finally:
        await engine.dispose()


async def test_publishing_without_a_server_raises(unused_tcp_port: int) -> None:
    bus = PostgresBus(f"postgresql://nobody@127.0.0.1:{unused_tcp_port}/none", connect_timeout=1)
    async with bus.subscribe() as local:
        with pytest.raises(ConnectionRefusedError):
            await bus.publish(event(1))
        assert await next_event(local) == event(1)  # local subscribers still got it
    await bus.close()
