"""`/admin`: the operator's figures (who still uses what), for its administrators only:
the idNats listed in `[admin] idnats`; anyone else gets 403."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from gateway.api.deps import CurrentIdentity
from gateway.usage.report import UsageReport
from psc_auth import Identity

UsageSource = Callable[[dt.date | None], Awaitable[UsageReport]]


@dataclass(frozen=True)
class AdminConfig:
    """Who administers this gateway, and where its usage figures come from."""

    idnats: frozenset[str]
    usage: UsageSource

    @classmethod
    def of(cls, idnats: Collection[str], usage: UsageSource) -> AdminConfig:
        return cls(frozenset(idnats), usage)

    def allows(self, identity: Identity) -> bool:
        return str(identity.idnat) in self.idnats


def admin_config(request: Request) -> AdminConfig:
    config: AdminConfig | None = getattr(request.app.state, "admin", None)
    if config is None:
        raise HTTPException(404, "no administration on this listener")
    return config


async def administrator(
    identity: CurrentIdentity, config: Annotated[AdminConfig, Depends(admin_config)]
) -> AdminConfig:
    if not config.allows(identity):
        raise HTTPException(403, "reserved to the operator's administrators ([admin] idnats)")
    return config


Admin = Annotated[AdminConfig, Depends(administrator)]
Since = Annotated[
    dt.date | None, Query(description="first UTC day counted (YYYY-MM-DD); default: all")
]

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/usage")
async def usage(config: Admin, since: Since = None) -> dict[str, Any]:
    """Per software (and version) and interface: BAL, persons, sessions, messages, first
    and last seen; the BAL still on the historic platform; sessions per day and interface."""
    return (await config.usage(since)).as_json()


@router.get("/usage.csv", response_class=Response)
async def usage_csv(config: Admin, since: Since = None) -> Response:
    """The per-software table as CSV (UTF-8, CRLF)."""
    report = await config.usage(since)
    return Response(
        report.as_csv(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
    )
