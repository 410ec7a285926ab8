"""The shared HTTP faces over any `HistoricOperations` and any `HistoricAuthenticator` (here
small ones of the test's own, over real sockets): the authenticator's outcomes reach the
wire, the WSDL names the public URL, and an answer out of the WSDL's schema becomes a
technical fault on SOAP instead of XML that a schema-driven client would reject."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from gateway.mss.historic_http import HistoricAuthenticator, build_historic_router
from gateway.mss.historic_ws import (
    AUTH_INVALID_SESSION,
    SESSION_COOKIE,
    Authenticated,
    AuthRefused,
    Caller,
    HistoricSession,
)
from gateway.runtime.asgi_server import AsgiServer, bind_tcp
from tests.support.historic_contract import (
    HistoricClient,
    Target,
    soap_address,
    wsdl_schema,
)

PUBLIC = "https://mss.example.fr"


class BearerAuth:
    """Bearer "good" is a person; "new" opens a session; anything else is refused (26)."""

    session_lifetime = 1234

    async def authenticate(self, request: Request) -> Authenticated:
        value = request.headers.get("authorization", "")
        if value == "Bearer good":
            return Authenticated(Caller("899700000002", request.headers.get("numhomologation")))
        if value == "Bearer new":
            session = HistoricSession("opaque-session", "899700000002", 0.0)
            return Authenticated(Caller("899700000002"), new_session=session)
        raise AuthRefused(AUTH_INVALID_SESSION, "refused")


class Sloppy:
    """Operations whose listEmails answer carries a field the schema does not declare."""

    def __init__(self) -> None:
        self.callers: list[Caller] = []

    async def call(
        self, service: str, operation: str, caller: Caller, payload: dict[str, Any]
    ) -> dict[str, Any]:
        self.callers.append(caller)
        if operation == "listEmails":
            return {"emails": ["a@medecin.mssante.fr"], "internalNote": "not in the WSDL"}
        return {}


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Sloppy]]:
    operations = Sloppy()
    auth: HistoricAuthenticator = BearerAuth()
    app = FastAPI()
    app.include_router(build_historic_router(operations, auth, public_url=PUBLIC))
    server = AsgiServer(app, bind_tcp("127.0.0.1", 0))
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", operations
    finally:
        await server.stop()


def target_at(url: str, token: str) -> Target:
    return Target(
        name="faces",
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        bal="a@medecin.mssante.fr",
        holder_idnat="899700000002",
        other_bal="b@medecin.mssante.fr",
    )


async def test_out_of_schema_answer_is_a_technical_fault_on_soap(
    served: tuple[str, Sloppy],
) -> None:
    url, operations = served
    async with httpx.AsyncClient(timeout=10) as http:
        soap = HistoricClient(target_at(url, "good"), http, "soap")
        outcome = await soap.call("Annuaire", "listEmails", {"email": "a@medecin.mssante.fr"})
        assert outcome == ("error", ("TECHNIQUE", 1))
        assert soap.validated == 1  # the fault itself is valid against the schema
        rest = HistoricClient(target_at(url, "good"), http, "rest")
        kind, output = await rest.call("Annuaire", "listEmails", {"email": "x@y.fr"})
    assert kind == "ok"
    assert output["emails"] == ["a@medecin.mssante.fr"]
    assert operations.callers[0].software == "CONTRACT-TEST-1"


async def test_the_authenticators_outcomes_reach_the_wire(served: tuple[str, Sloppy]) -> None:
    url, _ = served
    async with httpx.AsyncClient(timeout=10) as http:
        refused = HistoricClient(target_at(url, "bad"), http, "soap")
        answer = await refused.post("Folder", "renameFolder", refused.encode("renameFolder", {}))
        assert answer.status_code == 403
        assert answer.headers["X-ErrorCode"] == str(AUTH_INVALID_SESSION)
        assert refused.validated == 1
        opened = HistoricClient(target_at(url, "new"), http, "rest")
        answer = await opened.post("Folder", "renameFolder", b"")
    assert answer.status_code == 200
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=opaque-session")
    assert "Max-Age=1234" in cookie
    assert "HttpOnly" in cookie


async def test_wsdl_names_the_public_url(served: tuple[str, Sloppy]) -> None:
    url, _ = served
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{url}/mss-msg-services/services/Item/soap/v1?wsdl")
    assert answer.status_code == 200
    assert soap_address(answer.content) == f"{PUBLIC}/mss-msg-services/services/Item/soap/v1"
    wsdl_schema(answer.content)  # its embedded XSD compiles
