"""The modern platform's operator API (`/operator` on the mock's HTTP port): what the
operator's provisioning tools call, authenticated as the trusted gateway is on the historic
web services (HTTP Basic, the mock's master credentials).

`PUT /operator/mailboxes/{address}` creates the BAL on the modern platform with its default
folders when it is missing (idempotent: 201 created, 200 already there), for the holder
the delegation registry (or the personas) records; `GET` says whether it exists, its
folders and message counts. A migration provisions the target this way before copying.

Import with kept UIDs, as Dovecot's dsync does, so that a client's cache survives a move:
`PUT .../{address}/import/uidvalidity` (JSON `{"folder", "uidvalidity"}`) gives a folder
holding no message the source's UIDVALIDITY; `POST .../{address}/import/messages?folder=
&uid=&flag=&internal_date=` stores the body (the message's exact bytes) under that UID,
which must be at least the folder's UIDNEXT (UIDNEXT then becomes uid + 1). What the
folder's state forbids is a 409, a body over `max_message` bytes a 413.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, Field

from gateway.imap.mailstore import FolderNotFound, StoreError
from mock_operator.modern.auth import MasterCredentials
from mock_operator.modern.store import MAX_FOLDER_NAME, MAX_UID, ImportConflict, SqlPlatform

Holder = Callable[[str], Awaitable[tuple[str, str] | None]]
"""BAL -> (holder's idNat, display name), or None for a BAL this operator does not know."""

# an address as the registry holds them: no spaces, no controls, one @, bounded
_ADDRESS = re.compile(r"[^\s@/\\\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]{1,189}")

Address = Annotated[str, Path(description="the BAL's address")]

_basic = HTTPBasic(auto_error=False, realm="mock-operator")

MAX_MESSAGE = 50 * 1024 * 1024  # as the platform's IMAP APPEND
MAX_FLAGS = 64
# a flag as IMAP carries it: a system flag or a keyword atom
_FLAG = re.compile(r"\\?[!#$&'+\-.0-9:;<=>?@A-Z^_`a-z|~]{1,64}")
Folder = Annotated[str, Query(min_length=1, max_length=MAX_FOLDER_NAME)]


class UidValidity(BaseModel):
    folder: str = Field(min_length=1, max_length=MAX_FOLDER_NAME)
    uidvalidity: int = Field(ge=1, le=MAX_UID, strict=True)


def build_operator_router(
    master: MasterCredentials,
    platform: Callable[[], SqlPlatform | None],
    holder: Holder,
    *,
    max_message: int = MAX_MESSAGE,
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

    async def existing(address: str) -> SqlPlatform:
        address, modern = checked(address), the_platform()
        if not await modern.has_mailbox(address):
            raise HTTPException(404, f"{address}: no such BAL on the modern platform")
        return modern

    @router.put("/mailboxes/{address}/import/uidvalidity", dependencies=[Depends(trusted)])
    async def import_uidvalidity(address: Address, wanted: UidValidity) -> JSONResponse:
        """Give an empty folder the UIDVALIDITY it had on the source platform."""
        modern = await existing(address)
        try:
            validity, uidnext = await modern.store(address).import_uidvalidity(
                wanted.folder, wanted.uidvalidity
            )
        except FolderNotFound:
            raise HTTPException(404, "no such folder") from None
        except ImportConflict as conflict:
            raise HTTPException(409, str(conflict)) from None
        return JSONResponse({"folder": wanted.folder, "uidvalidity": validity, "uidnext": uidnext})

    @router.post("/mailboxes/{address}/import/messages", dependencies=[Depends(trusted)])
    async def import_message(
        address: Address,
        request: Request,
        folder: Folder,
        uid: Annotated[int, Query(ge=1, lt=MAX_UID)],
        internal_date: Annotated[dt.datetime, Query()],
        flag: Annotated[list[str] | None, Query(max_length=MAX_FLAGS)] = None,
    ) -> JSONResponse:
        """Store the body, a message's exact bytes, under `uid` with its flags and date."""
        modern = await existing(address)
        flags = flag or []
        if len(flags) > MAX_FLAGS or not all(_FLAG.fullmatch(f) for f in flags):
            raise HTTPException(422, "flags: at most 64 IMAP flags or keywords")
        if internal_date.tzinfo is None:
            raise HTTPException(422, "internal_date needs its UTC offset")
        message = await _body(request, max_message)
        if not message:
            raise HTTPException(422, "an empty message")
        try:
            validity, stored = await modern.store(address).import_message(
                folder, uid, message, flags, internal_date
            )
        except FolderNotFound:
            raise HTTPException(404, "no such folder") from None
        except ImportConflict as conflict:
            raise HTTPException(409, str(conflict)) from None
        except StoreError as refusal:
            raise HTTPException(422, str(refusal)) from None
        return JSONResponse(
            {"folder": folder, "uidvalidity": validity, "uid": stored}, status_code=201
        )

    return router


async def _body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"a message is at most {limit} bytes")
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise HTTPException(413, f"a message is at most {limit} bytes")
    return bytes(received)
