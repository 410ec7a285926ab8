"""Campaigns and their events, in the mock's database (SQLAlchemy Core, no ORM: events
are written in batches and read back whole for a report)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from mock_operator.conformance.events import Event

metadata = MetaData()
campaigns = Table(
    "conformance_campaign",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("software", String(200), nullable=False),
    Column("version", String(100), nullable=False, default=""),
    Column("client_id", String(128), nullable=True),
    Column("personas", Text, nullable=False, default="[]"),  # JSON list of persona keys
    Column("created", Float, nullable=False),
    Column("closed", Float, nullable=True),
)
events = Table(
    "conformance_event",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("campaign", String(32), ForeignKey("conformance_campaign.id"), index=True),
    Column("at", Float, nullable=False),
    Column("interface", String(8), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("connection", String(64), nullable=False, default=""),
    Column("data", Text, nullable=False, default="{}"),
)


@dataclasses.dataclass(frozen=True)
class Campaign:
    id: str
    software: str
    version: str
    client_id: str | None
    personas: tuple[str, ...]
    created: float
    closed: float | None = None

    @property
    def started(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.created, dt.UTC)


class CampaignStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create_schema(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def add(self, campaign: Campaign) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(campaigns).values(
                    id=campaign.id,
                    software=campaign.software,
                    version=campaign.version,
                    client_id=campaign.client_id,
                    personas=json.dumps(list(campaign.personas)),
                    created=campaign.created,
                )
            )

    async def close(self, campaign_id: str, when: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(campaigns).where(campaigns.c.id == campaign_id).values(closed=when)
            )

    async def all(self) -> list[Campaign]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(campaigns).order_by(campaigns.c.created))).all()
        return [_campaign(row._mapping) for row in rows]

    async def get(self, campaign_id: str) -> Campaign | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(campaigns).where(campaigns.c.id == campaign_id))
            ).first()
        return _campaign(row._mapping) if row else None

    async def write(self, batch: Sequence[tuple[str, Event]]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(events),
                [
                    {
                        "campaign": campaign_id,
                        "at": event.at,
                        "interface": event.interface,
                        "kind": event.kind,
                        "connection": event.connection,
                        "data": json.dumps(dict(event.data), ensure_ascii=False),
                    }
                    for campaign_id, event in batch
                ],
            )

    async def events(self, campaign_id: str) -> list[Event]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(events).where(events.c.campaign == campaign_id).order_by(events.c.seq)
                )
            ).all()
        return [Event(r.interface, r.kind, r.connection, json.loads(r.data), r.at) for r in rows]


def _campaign(row: Any) -> Campaign:
    return Campaign(
        id=row["id"],
        software=row["software"],
        version=row["version"] or "",
        client_id=row["client_id"],
        personas=tuple(json.loads(row["personas"] or "[]")),
        created=row["created"],
        closed=row["closed"],
    )
