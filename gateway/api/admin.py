"""`/admin`: the operator's figures and the gateway's state, for its administrators only:
the idNats listed in `[admin] idnats` (a PSC token), or the local administrator (the
secret the gateway keeps in its data directory, `gateway.admin_secret`, which the
`lps-gateway` commands present); anyone else gets 401 or 403. Every call an administrator
makes is an audit event (action `admin`, the method and path in its detail)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials

from delegation.audit import AuditAction
from delegation.service import DelegationService
from gateway import admin_secret
from gateway.api.deps import bearer, current_identity, get_service, get_validator
from gateway.runtime.forwarded import client_address
from gateway.usage.report import CsvTable, UsageReport
from psc_auth import Identity, TokenValidator

if TYPE_CHECKING:
    from gateway.bal_migration.jobs import Migrations

log = logging.getLogger(__name__)

UsageSource = Callable[[dt.date | None], Awaitable[UsageReport]]
StatusSource = Callable[[], dict[str, Any]]

LOCAL_ADMIN = "local-admin"
"""The actor of the local administrator's calls in the audit trail (not an idNat: those
are digits with a one-character prefix)."""


@dataclass(frozen=True)
class DirectoryImports:
    """What `/admin/directory` needs beyond the registry: the configured backends' names
    (an unknown one in a file is warned about) and the cap on a posted file."""

    backends: frozenset[str]
    max_body: int


@dataclass(frozen=True)
class AdminConfig:
    """Who administers this gateway, and where its usage figures come from."""

    idnats: frozenset[str]
    usage: UsageSource
    local_secret: str | None = None
    status: StatusSource | None = None
    migrations: Migrations | None = None
    directory: DirectoryImports | None = None

    @classmethod
    def of(
        cls,
        idnats: Collection[str],
        usage: UsageSource,
        *,
        local_secret: str | None = None,
        status: StatusSource | None = None,
        migrations: Migrations | None = None,
        directory: DirectoryImports | None = None,
    ) -> AdminConfig:
        return cls(frozenset(idnats), usage, local_secret, status, migrations, directory)

    def allows(self, identity: Identity) -> bool:
        return str(identity.idnat) in self.idnats


def admin_config(request: Request) -> AdminConfig:
    config: AdminConfig | None = getattr(request.app.state, "admin", None)
    if config is None:
        raise HTTPException(404, "no administration on this listener")
    return config


@dataclass(frozen=True)
class AdminCall:
    """An administrator's call: the configuration, and who made it (an idNat, or
    `LOCAL_ADMIN`)."""

    config: AdminConfig
    actor: str


async def administrator(
    request: Request,
    config: Annotated[AdminConfig, Depends(admin_config)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    validator: Annotated[TokenValidator, Depends(get_validator)],
    service: Annotated[DelegationService, Depends(get_service)],
) -> AdminCall:
    if credentials is not None and admin_secret.is_local(credentials.credentials):
        if config.local_secret is None or not admin_secret.matches(
            config.local_secret, credentials.credentials
        ):
            log.warning("admin.local_refused", extra={"path": request.url.path})
            raise HTTPException(
                401, "invalid local admin secret", headers={"WWW-Authenticate": "Bearer"}
            )
        actor = LOCAL_ADMIN
    else:
        identity: Identity = await current_identity(validator, credentials)
        if not config.allows(identity):
            raise HTTPException(403, "reserved to the operator's administrators ([admin] idnats)")
        actor = str(identity.idnat)
    await service.record(
        actor,
        "",
        AuditAction.ADMIN,
        interface="http",
        remote=client_address(request),
        detail=f"{request.method} {request.url.path}",
    )
    return AdminCall(config, actor)


Admin = Annotated[AdminCall, Depends(administrator)]
Since = Annotated[
    dt.date | None, Query(description="first UTC day counted (YYYY-MM-DD); default: all")
]

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/usage")
async def usage(config: Admin, since: Since = None) -> dict[str, Any]:
    """Per software (and version) and interface: BAL, persons, sessions, messages, first
    and last seen; the BAL still on the historic platform; sessions per day and interface;
    the MSSanté rules each software broke (refused, or reported: let through)."""
    return (await config.config.usage(since)).as_json()


@router.get("/usage.csv", response_class=Response)
async def usage_csv(
    config: Admin,
    since: Since = None,
    table: Annotated[
        CsvTable, Query(description="software (default), or nonconformities per software and rule")
    ] = "software",
) -> Response:
    """The per-software table, or the non-conformities, as CSV (UTF-8, CRLF)."""
    report = await config.config.usage(since)
    name = "usage.csv" if table == "software" else "usage-nonconformities.csv"
    return Response(
        report.as_csv(table),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/status")
async def status(call: Admin) -> dict[str, Any]:
    """The gateway as its commands need to know it: node, version, backends (name and
    kind) and the routing's default backend."""
    if call.config.status is None:
        raise HTTPException(404, "no status on this listener")
    return call.config.status()
