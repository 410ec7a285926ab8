"""The historic web services' contract, seen from a client: a `Target` (where, as whom, on
which BAL) and a `HistoricClient` that calls it over REST or SOAP and checks every SOAP
answer and fault against the schema of the service's own WSDL (element names and order).

Any implementation of DOMAIN.md §4 is a target: the mock's historic platform, the
gateway's legacy front over a modern BAL, the gateway passing a historic BAL through. The
suites built on this module use only the contract: they create what they need, never rely
on seeded contents, and read effects elsewhere only through `Target.received`.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from xml.etree.ElementTree import Element, SubElement, tostring

import httpx
from defusedxml.ElementTree import fromstring
from lxml import etree

from gateway.mss import historic_soap
from gateway.mss.historic_ws import NAMESPACE

PREFIX = "/mss-msg-services/services"
ENVELOPE_NS = historic_soap.ENVELOPE_NS
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
XS_NS = "http://www.w3.org/2001/XMLSchema"
SOAP_ADDRESS = "{http://schemas.xmlsoap.org/wsdl/soap/}address"
SOAP_TYPE = "text/xml; charset=utf-8"

Received = Callable[[str, str], Awaitable[dict[str, bytes] | None]]
"""(bal, subject) -> the attachments (file name -> bytes) of the message with this subject
in that BAL's Inbox, or None while it is not there: how a target shows a delivery to a
BAL that its caller cannot read through the contract."""

Face = Literal["rest", "soap"]
Outcome = tuple[Literal["ok", "error"], Any]
"""("ok", the `<op>Output` content) or ("error", (type FONCTIONNELLE|TECHNIQUE, code))."""


@dataclass(frozen=True)
class Target:
    """One implementation of the historic web services, and who acts on which BAL there."""

    name: str
    base_url: str  # scheme://host:port; the services are under `PREFIX`
    headers: Mapping[str, str] = field(repr=False)  # how the caller authenticates
    bal: str  # the BAL acted on, the caller's own (or delegated with every right)
    holder_idnat: str
    other_bal: str  # a BAL to send to
    software: str = "CONTRACT-TEST-1"  # NUMHOMOLOGATION
    recipient_search: tuple[str, str] = ("petit", "marie.petit@sage-femme.mssante.fr")
    """(searchString, an address that searchRecipient must find with it)."""
    attachments_limit: int = 10 * 1024 * 1024  # bytes of attachments per message (32 past it)
    max_body: int = 25 * 1024 * 1024  # request body cap (39 past it)
    received: Received | None = None

    def endpoint(self, service: str, face: Face, operation: str | None = None) -> str:
        tail = f"/{operation}" if operation else ""
        return f"{self.base_url}{PREFIX}/{service}/{face}/v1{tail}"

    def request_headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**self.headers, "NUMHOMOLOGATION": self.software, **(extra or {})}


# -- SOAP as a loose client writes it ------------------------------------------------------


def xml_field(parent: Element, name: str, value: Any) -> None:
    """Append `value` under `parent` as element(s) named `name`, untyped and in dict order
    (lists repeat the name): requests as any client may write them, wrong ones included."""
    if value is None:
        return
    if isinstance(value, list | tuple):
        for item in value:
            xml_field(parent, name, item)
        return
    child = SubElement(parent, name)
    if isinstance(value, Mapping):
        for key, item in value.items():
            xml_field(child, str(key), item)
    elif isinstance(value, bool):
        child.text = "true" if value else "false"
    else:
        child.text = str(value)


def envelope(operation: str, payload: Mapping[str, Any], element: str | None = None) -> bytes:
    root = Element("soap:Envelope", {"xmlns:soap": ENVELOPE_NS})
    body = SubElement(root, "soap:Body")
    wrapper = SubElement(body, f"m:{element or operation + 'Input'}", {"xmlns:m": NAMESPACE})
    for key, value in payload.items():
        xml_field(wrapper, key, value)
    document: bytes = tostring(root, encoding="utf-8", xml_declaration=True)
    return document


# -- the WSDL's schema -----------------------------------------------------------------------


def wsdl_schema(wsdl: bytes) -> etree.XMLSchema:
    """The XSD embedded in a WSDL's ``types``, ready to validate answers and faults."""
    root = etree.fromstring(wsdl, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    schema = root.find(f"{{{WSDL_NS}}}types/{{{XS_NS}}}schema")
    assert schema is not None, "no xs:schema in the WSDL"
    return etree.XMLSchema(etree.fromstring(etree.tostring(schema)))


def soap_address(wsdl: bytes) -> str | None:
    root = fromstring(wsdl)
    address = root.find(f"{{{WSDL_NS}}}service/{{{WSDL_NS}}}port/{SOAP_ADDRESS}")
    return None if address is None else address.get("location")


def assert_schema_valid(schema: etree.XMLSchema, element: Any, what: str) -> None:
    """`element` (an lxml element) is valid against `schema`, order and types included."""
    standalone = etree.fromstring(etree.tostring(element))
    if not schema.validate(standalone):
        raise AssertionError(f"{what} is not valid against the WSDL schema: {schema.error_log}")


def check_soap_document(
    schema: etree.XMLSchema, content: bytes, operation: str, status: int
) -> None:
    """An answer (``<ns:<op>Output>``) or a fault (its ``detail`` child) valid against the
    WSDL's schema."""
    root = etree.fromstring(content, parser=etree.XMLParser(resolve_entities=False))
    body = root.find(f"{{{ENVELOPE_NS}}}Body")
    assert body is not None, content
    assert len(body) == 1, content
    element = body[0]
    if status == 200:
        assert element.tag == f"{{{NAMESPACE}}}{operation}Output", element.tag
        assert_schema_valid(schema, element, f"the {operation} answer")
        return
    assert element.tag == f"{{{ENVELOPE_NS}}}Fault", content
    detail = element.find("detail")
    assert detail is not None, content
    assert len(detail) == 1, content
    assert_schema_valid(schema, detail[0], f"the {operation} fault detail")


# -- the client ----------------------------------------------------------------------------


def normalized(value: Any) -> Any:
    """What both faces can say: XML has no null, no empty list and no empty object."""
    if isinstance(value, dict):
        items = {k: normalized(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


class HistoricClient:
    """Calls a target over one face; SOAP answers and faults are checked against the
    schema of the service's WSDL, fetched from the target once per service."""

    def __init__(self, target: Target, http: httpx.AsyncClient, face: Face) -> None:
        self.target = target
        self.http = http
        self.face = face
        self._schemas: dict[str, etree.XMLSchema] = {}
        self.validated = 0  # SOAP documents checked against the schema

    async def schema(self, service: str) -> etree.XMLSchema:
        if service not in self._schemas:
            answer = await self.http.get(self.target.endpoint(service, "soap") + "?wsdl")
            assert answer.status_code == 200, answer.text
            self._schemas[service] = wsdl_schema(answer.content)
        return self._schemas[service]

    async def post(
        self,
        service: str,
        operation: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request with a raw body, authenticated as the target says (or `headers`)."""
        content_type = "application/json" if self.face == "rest" else SOAP_TYPE
        sent = self.target.request_headers({"Content-Type": content_type})
        if headers is not None:
            sent = {"Content-Type": content_type, **headers}
        answer = await self.http.post(
            self.target.endpoint(service, self.face, operation), content=body, headers=sent
        )
        if self.face == "soap" and answer.status_code in (200, 403, 500):
            check_soap_document(
                await self.schema(service), answer.content, operation, answer.status_code
            )
            self.validated += 1
        return answer

    def encode(self, operation: str, payload: Mapping[str, Any]) -> bytes:
        if self.face == "soap":
            return envelope(operation, payload)
        return httpx.Request("POST", "/", json={f"{operation}Input": payload}).read()

    async def call(
        self,
        service: str,
        operation: str,
        payload: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> Outcome:
        answer = await self.post(service, operation, self.encode(operation, payload), headers)
        return self.outcome(answer, operation)

    def outcome(self, answer: httpx.Response, operation: str) -> Outcome:
        if self.face == "rest":
            body = answer.json()
            if answer.status_code == 200:
                assert list(body) == [f"{operation}Output"], body
                return "ok", normalized(body[f"{operation}Output"])
            error = body["error"]
            if answer.status_code != 403:
                assert answer.status_code == (400 if error["type"] == "FONCTIONNELLE" else 500)
            return "error", (error["type"], error["code"])
        assert answer.headers["content-type"] == SOAP_TYPE, answer.headers
        root = fromstring(answer.content)
        body_element = root.find(f"{{{ENVELOPE_NS}}}Body")
        assert body_element is not None
        if answer.status_code == 200:
            output = body_element.find(f"{{{NAMESPACE}}}{operation}Output")
            assert output is not None, answer.text
            return "ok", normalized(historic_soap.element_fields(output))
        fault = body_element.find(f"{{{ENVELOPE_NS}}}Fault")
        assert fault is not None, answer.text
        detail = fault.find("detail")
        assert detail is not None, answer.text
        assert len(detail) == 1, answer.text
        kind = detail[0].tag.rsplit("}", 1)[-1].removeprefix("Erreur").upper()
        faultcode = fault.findtext("faultcode")
        if answer.status_code != 403:
            assert faultcode == ("soap:Client" if kind == "FONCTIONNELLE" else "soap:Server")
        return "error", (kind, int(detail[0].findtext("code") or "0"))

    async def ok(self, service: str, operation: str, payload: Mapping[str, Any]) -> Any:
        """The output of a call that must succeed."""
        outcome = await self.call(service, operation, payload)
        assert outcome[0] == "ok", (operation, outcome)
        return outcome[1]

    async def code(self, service: str, operation: str, payload: Mapping[str, Any]) -> int:
        """The functional error code of a call that must be refused."""
        outcome = await self.call(service, operation, payload)
        assert outcome[0] == "error", (operation, outcome)
        kind, code = outcome[1]
        assert kind == "FONCTIONNELLE", outcome
        return int(code)

    # -- the operations a suite needs most ----------------------------------------------

    def mine(self, **payload: Any) -> dict[str, Any]:
        return {"email": self.target.bal, **payload}

    async def search(self, **criteria: Any) -> dict[str, Any]:
        """searchMessages on the target's BAL; `query` keys may be given directly."""
        query = {k: criteria.pop(k) for k in list(criteria) if k not in _CRITERIA}
        found = await self.ok(
            "Item", "searchMessages", self.mine(searchCriteria={**criteria, "query": query})
        )
        return {"messages": found.get("messages", []), "total": found.get("total", 0)}

    async def send(self, message: Mapping[str, Any]) -> dict[str, Any]:
        sent: dict[str, Any] = (await self.ok("Item", "sendMessage", self.mine(message=message)))[
            "message"
        ]
        return sent

    async def draft(self, message: Mapping[str, Any]) -> dict[str, Any]:
        saved: dict[str, Any] = (await self.ok("Item", "draftMessage", self.mine(message=message)))[
            "message"
        ]
        return saved

    async def download(self, message_id: str, part: str) -> bytes:
        found = await self.ok(
            "Attachment", "downloadAttachment", self.mine(messageId=message_id, part=part)
        )
        return base64.b64decode(found.get("file", ""))


_CRITERIA = frozenset({"limit", "offset", "html", "sortBy"})


def attachment(name: str, data: bytes, content_type: str = "application/octet-stream") -> dict:
    """A new file for sendMessage/draftMessage."""
    return {
        "file": base64.b64encode(data).decode("ascii"),
        "fileName": name,
        "contentType": content_type,
    }
