"""RFC 9457 problem details: the one error vocabulary of the HTTP API, mapped in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from delegation.errors import Conflict, DelegationError, Invalid, NotFound, NotHolder
from psc_auth import TokenError

PROBLEM = "application/problem+json"
TYPE_BASE = "https://lps-gateway.invalid/problems/"


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + kind if kind else "about:blank",
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def unauthorized(detail: str) -> JSONResponse:
    return problem(
        401,
        "Unauthorized",
        detail,
        kind="invalid-token",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


_TITLES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    422: "Unprocessable Content",
}

# The delegation layer's refusals as HTTP statuses; a subclass takes its nearest ancestor's.
_DELEGATION_STATUSES: dict[type[DelegationError], int] = {
    DelegationError: 400,
    NotHolder: 403,
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
}


def delegation_status(error: DelegationError) -> int:
    """The HTTP status of a refusal of the delegation service."""
    return next(
        _DELEGATION_STATUSES[cls] for cls in type(error).__mro__ if cls in _DELEGATION_STATUSES
    )


PageError = Callable[[Request, int], Response | None]
"""Renders an error as a page for the paths that are pages (None for the others)."""


def no_pages(_request: Request, _status: int) -> Response | None:
    return None


def install(app: FastAPI, pages: PageError = no_pages) -> None:
    """Every error the API can produce leaves as problem+json; on the pages, as a page."""

    @app.exception_handler(DelegationError)
    async def _delegation(request: Request, exc: DelegationError) -> Response:
        status = delegation_status(exc)
        if (page := pages(request, status)) is not None:
            return page
        return problem(status, _TITLES.get(status, "Bad Request"), str(exc), kind=exc.reason)

    @app.exception_handler(TokenError)
    async def _token(request: Request, exc: TokenError) -> Response:
        if (page := pages(request, 503 if exc.failure.temporary else 401)) is not None:
            return page
        if exc.failure.temporary:
            return problem(
                503, "Service Unavailable", "identity provider unreachable", kind="psc-unavailable"
            )
        return unauthorized(f"invalid token: {exc.failure.value}")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        if (page := pages(request, 400)) is not None:
            return page
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        return problem(
            422, "Unprocessable Content", "invalid request", kind="validation", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if (page := pages(request, exc.status_code)) is not None:
            return page
        headers = dict(exc.headers) if exc.headers else None
        return problem(
            exc.status_code, _TITLES.get(exc.status_code, "Error"), str(exc.detail), headers=headers
        )
