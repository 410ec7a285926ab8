"""`/admin/migrations`: start copies and verifications of BAL in the running gateway, and
follow them (`lps-gateway migrate` drives this). For the gateway's administrators only,
as the rest of `/admin`; each job's steps are audit events on the BAL."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from delegation.errors import Invalid
from delegation.parsing import normal_address
from gateway.api.admin import Admin, AdminCall
from gateway.bal_migration.jobs import MigrationBusy, MigrationRefused, Migrations

MAX_BALS = 1000  # per request: a wave of a few hundred is the operator's usual step
MAX_JOBS = 16

router = APIRouter(prefix="/admin/migrations", tags=["admin"])


class MigrationRequest(BaseModel):
    """What to do, on which BAL, towards which backend."""

    model_config = ConfigDict(extra="forbid")

    bals: list[Annotated[str, Field(max_length=320)]] = Field(
        default_factory=list, max_length=MAX_BALS
    )
    all_on: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    limit: int | None = Field(None, ge=1, le=MAX_BALS)
    to: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    action: Literal["copy", "verify", "cutover", "rollback", "finish"] = "copy"
    jobs: int = Field(1, ge=1, le=MAX_JOBS)
    max_rate: float | None = Field(None, gt=0, le=100_000)

    @model_validator(mode="after")
    def _which(self) -> MigrationRequest:
        if bool(self.bals) == (self.all_on is not None):
            raise ValueError("name the BAL (`bals`) or a backend (`all_on`), not both")
        if self.limit is not None and self.all_on is None:
            raise ValueError("`limit` goes with `all_on`")
        return self

    @field_validator("bals")
    @classmethod
    def _addresses(cls, bals: list[str]) -> list[str]:
        try:
            return [normal_address(bal) for bal in bals]
        except Invalid as exc:
            raise ValueError(str(exc)) from None


def _migrations(call: AdminCall) -> Migrations:
    if call.config.migrations is None:
        raise HTTPException(404, "no migrations on this listener")
    return call.config.migrations


@router.post("", status_code=202)
async def start(request: MigrationRequest, call: Admin) -> dict[str, Any]:
    """Queue, for each BAL (named, or every BAL `all_on` a backend now, at most `limit`):
    a copy (to `to`, provisioned first), a verification (against `to`, or the latest
    copy's target), a cut-over to `to`, a rollback or the end of the trailing sync; `jobs`
    of them at once. 202 with the job ids."""
    if request.action in ("copy", "cutover") and request.to is None:
        raise HTTPException(400, f"a {request.action} needs `to`: the backend to move to")
    migrations = _migrations(call)
    bals = request.bals
    if request.all_on is not None:
        try:
            bals = await migrations.on_backend(request.all_on, request.limit or MAX_BALS)
        except MigrationRefused as exc:
            raise HTTPException(400, str(exc)) from None
        if not bals:
            return {"jobs": []}
    try:
        started = await migrations.start(
            bals,
            request.to,
            request.action,
            actor=call.actor,
            jobs=request.jobs,
            max_rate=request.max_rate,
        )
    except MigrationBusy as exc:
        raise HTTPException(409, str(exc)) from None
    except MigrationRefused as exc:
        raise HTTPException(400, str(exc)) from None
    return {
        "jobs": [
            {"id": j.id, "bal": j.bal, "source": j.source, "target": j.target} for j in started
        ]
    }


@router.get("")
async def every(call: Admin) -> dict[str, Any]:
    """Every BAL with a copy record or a job: its records (state, counts, bytes, last
    error, timings) and its latest job (progress, result, differences)."""
    return {"migrations": await _migrations(call).status()}


@router.get("/{bal}")
async def one(bal: Annotated[str, Path(max_length=320)], call: Admin) -> dict[str, Any]:
    try:
        address = normal_address(bal)
    except Invalid as exc:
        raise HTTPException(400, str(exc)) from None
    found = await _migrations(call).status(address)
    if not found:
        raise HTTPException(404, f"no migration of {address}")
    return found[0]
