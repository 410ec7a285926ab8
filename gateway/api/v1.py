"""`/v1`: who am I, which BAL may I open, delegations, directory search."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status

from delegation.models import MAX_ID
from gateway.api.deps import CurrentIdentity, Service
from gateway.api.schemas import (
    PRINTABLE,
    DelegationIn,
    DelegationOut,
    DirectoryEntryOut,
    MailboxOut,
    MeOut,
    Problem,
)
from gateway.runtime.forwarded import client_address

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing, invalid or expired PSC token"},
    403: {"model": Problem, "description": "not the holder of this mailbox"},
    404: {"model": Problem, "description": "no such mailbox, delegation or person"},
    409: {"model": Problem, "description": "conflicting change"},
    422: {"model": Problem, "description": "the request breaks a rule"},
}
Address = Annotated[
    str,
    Path(max_length=254, pattern=PRINTABLE, examples=["claire.martin@medecin.mssante.fr"]),
]

router = APIRouter(prefix="/v1", responses={401: ERRORS[401]})


def _software(request: Request) -> str | None:
    return request.headers.get("user-agent", "")[:128] or None


def _remote(request: Request) -> str | None:
    return client_address(request)


@router.get("/me", response_model=MeOut, tags=["me"])
async def me(identity: CurrentIdentity) -> MeOut:
    """The person behind the token."""
    return MeOut.of(identity)


@router.get("/mailboxes", response_model=list[MailboxOut], tags=["mailboxes"])
async def mailboxes(identity: CurrentIdentity, service: Service) -> list[MailboxOut]:
    """Every BAL the caller may open: their own, then those delegated to them."""
    return [MailboxOut.of(g) for g in await service.accessible(identity)]


@router.get(
    "/mailboxes/{address}/delegations",
    response_model=list[DelegationOut],
    tags=["delegations"],
    responses={403: ERRORS[403], 404: ERRORS[404]},
)
async def list_delegations(
    address: Address, identity: CurrentIdentity, service: Service
) -> list[DelegationOut]:
    """The delegations of a BAL (its holder only), active and past."""
    delegations = await service.delegations_of(identity, address, include_revoked=True)
    return [DelegationOut.of(d) for d in delegations]


@router.post(
    "/mailboxes/{address}/delegations",
    response_model=DelegationOut,
    status_code=status.HTTP_201_CREATED,
    tags=["delegations"],
    responses={k: ERRORS[k] for k in (403, 404, 409, 422)},
)
async def grant(
    address: Address,
    body: DelegationIn,
    identity: CurrentIdentity,
    service: Service,
    request: Request,
) -> DelegationOut:
    """Grant (or update) a delegate's rights on the caller's BAL; an expiry lies in the next
    10 years."""
    delegation = await service.grant(
        identity,
        address,
        body.delegate,
        body.rights,
        body.expires_at,
        software=_software(request),
        remote=_remote(request),
    )
    return DelegationOut.of(delegation)


@router.delete(
    "/mailboxes/{address}/delegations/{delegation_id}",
    response_model=DelegationOut,
    tags=["delegations"],
    responses={k: ERRORS[k] for k in (403, 404, 409)},
)
async def revoke(
    address: Address,
    delegation_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    identity: CurrentIdentity,
    service: Service,
    request: Request,
) -> DelegationOut:
    """Revoke a delegation now; the delegate's open sessions are closed."""
    delegation = await service.revoke(
        identity, address, delegation_id, software=_software(request), remote=_remote(request)
    )
    return DelegationOut.of(delegation)


@router.get("/delegations/received", response_model=list[DelegationOut], tags=["delegations"])
async def received(identity: CurrentIdentity, service: Service) -> list[DelegationOut]:
    """The active delegations the caller holds."""
    return [DelegationOut.of(d) for d in await service.received(identity)]


@router.get(
    "/directory",
    response_model=list[DirectoryEntryOut],
    tags=["directory"],
    responses={422: ERRORS[422]},
)
async def directory(
    identity: CurrentIdentity,
    service: Service,
    q: Annotated[str, Query(min_length=3, max_length=64, examples=["bernard"])],
) -> list[DirectoryEntryOut]:
    """Search people by name or national id (at least 3 characters, at most 20 results)."""
    return [DirectoryEntryOut.of(e) for e in await service.directory_search(q, limit=20)]
