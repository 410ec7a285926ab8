"""The modern platform's operator API (`/operator` on the mock's HTTP port): what the
operator's provisioning tools call, authenticated as the trusted gateway is on the historic
web services (HTTP Basic, the mock's master credentials).

`PUT /operator/mailboxes/{address}` creates the BAL on the modern platform with its default
folders when it is missing (idempotent: 201 created, 200 already there), for the holder
the delegation registry (or the personas) records; `GET` says whether it exists, its
folders and message counts. A migration provisions the target this way before copying.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from mock_operator.modern.auth import MasterCredentials
from mock_operator.modern.store import SqlPlatform

Holder = Callable[[str], Awaitable[tuple[str, str] | None]]
"""BAL -> (holder's idNat, display name), or None for a BAL this operator does not know."""

# an address as the registry holds them: no spaces, no controls, one @, bounded
_ADDRESS = re.compile(r"[^\s@/\\\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]{1,189}")

Address = Annotated[str, Path(description="the BAL's address")]

_basic = HTTPBasic(auto_error=False, realm="mock-operator")


def build_operator_router(
    master: MasterCredentials,
    platform: Callable[[], SqlPlatform | None],
    holder: Holder,
) -> APIRouter:
    router = APIRouter(prefix="/operator", tags=["operator"], include_in_schema=True)

    def trusted(
        credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
    ) -> None:
        if credentials is None or not master.matches(credentials.username, credentials.password):
            raise HTTPException(
                401,
                "the operator API needs the master credentials (HTTP Basic)",
                headers={"WWW-Authenticate": 'Basic realm="mock-operator"'},
            )

    def the_platform() -> SqlPlatform:
        found = platform()
        if found is None:
            raise HTTPException(503, "the modern platform is not started")
        return found

    def checked(address: str) -> str:
        if len(address) > 254 or not _ADDRESS.fullmatch(address):
            raise HTTPException(422, "not a BAL address")
        return address.lower()

    async def describe(modern: SqlPlatform, address: str) -> dict[str, Any]:
        store = modern.store(address)
        folders = []
        for info in await store.list_folders():
            state = await store.folder_state(info.name)
            folders.append(
                {
                    "name": info.name,
                    "special_use": info.special_use,
                    "uidvalidity": state.uidvalidity,
                    "messages": len(state.messages),
                }
            )
        return {
            "address": address,
            "exists": True,
            "holder": await modern.holder_of(address),
            "folders": folders,
            "messages": sum(f["messages"] for f in folders),
        }

    @router.get("/mailboxes/{address}", dependencies=[Depends(trusted)])
    async def mailbox(address: Address) -> JSONResponse:
        """The BAL on the modern platform: its folders and message counts (404 if absent)."""
        address, modern = checked(address), the_platform()
        if not await modern.has_mailbox(address):
            return JSONResponse({"address": address, "exists": False}, status_code=404)
        return JSONResponse(await describe(modern, address))

    @router.put("/mailboxes/{address}", dependencies=[Depends(trusted)])
    async def provision(address: Address) -> JSONResponse:
        """Create the BAL (default folders, empty) if missing: 201, or 200 when it was there."""
        address, modern = checked(address), the_platform()
        if await modern.has_mailbox(address):
            return JSONResponse({**await describe(modern, address), "created": False})
        known = await holder(address)
        if known is None:
            raise HTTPException(404, f"{address}: no such BAL at this operator (registry)")
        created = await modern.ensure_mailbox(address, *known)
        body = {**await describe(modern, address), "created": created}
        return JSONResponse(body, status_code=201 if created else 200)

    return router
