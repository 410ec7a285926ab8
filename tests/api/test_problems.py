"""The delegation layer's refusals as RFC 9457 problems: one status per class, one body."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from delegation.errors import Conflict, DelegationError, Invalid, NotFound, NotHolder
from gateway.api.problems import delegation_status, install


class Renewed(Invalid):
    """A refusal the table does not name: it answers as its nearest ancestor."""


ANSWERS: list[tuple[DelegationError, int, bytes]] = [
    (
        DelegationError("odd"),
        400,
        b'{"type":"https://lps-gateway.invalid/problems/error","title":"Bad Request",'
        b'"status":400,"detail":"odd"}',
    ),
    (
        NotHolder("not yours"),
        403,
        b'{"type":"https://lps-gateway.invalid/problems/not-holder","title":"Forbidden",'
        b'"status":403,"detail":"not yours"}',
    ),
    (
        NotFound("no mailbox x", reason="unknown-mailbox"),
        404,
        b'{"type":"https://lps-gateway.invalid/problems/unknown-mailbox","title":"Not Found",'
        b'"status":404,"detail":"no mailbox x"}',
    ),
    (
        Conflict("concurrent change"),
        409,
        b'{"type":"https://lps-gateway.invalid/problems/conflict","title":"Conflict",'
        b'"status":409,"detail":"concurrent change"}',
    ),
    (
        Invalid("bad", reason="bad-rights"),
        422,
        b'{"type":"https://lps-gateway.invalid/problems/bad-rights",'
        b'"title":"Unprocessable Content","status":422,"detail":"bad"}',
    ),
    (
        Renewed("later"),
        422,
        b'{"type":"https://lps-gateway.invalid/problems/invalid",'
        b'"title":"Unprocessable Content","status":422,"detail":"later"}',
    ),
]


@pytest.mark.parametrize(("error", "status", "body"), ANSWERS)
async def test_a_refusal_leaves_as_its_problem(
    error: DelegationError, status: int, body: bytes
) -> None:
    app = FastAPI()
    install(app)

    @app.get("/refused")
    async def refused() -> None:
        raise error

    assert delegation_status(error) == status
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        answer = await http.get("/refused")
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.content == body
