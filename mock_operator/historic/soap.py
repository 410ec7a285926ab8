"""SOAP 1.1 face of the historic web services: envelopes, faults and the dict <-> XML mapping.

Wire choices (the WSDL of `wsdl.py` says the same):

* document/literal, *bare*: the SOAP body holds one element ``<ns:<op>Input>`` in the
  namespace `NAMESPACE` and the answer is ``<ns:<op>Output>`` -- the very names of the
  JSON wrapping, so that one mapping serves both faces. Fields are unqualified children.
* Lists are repeated elements named after the field (``<messageIds>1</messageIds>
  <messageIds>2</messageIds>``); booleans ``true``/``false``; integers in decimal;
  ``None`` is omitted.
* Faults: ``soap:Client`` for functional errors (the caller's input), ``soap:Server`` for
  technical ones, with ``<detail><ns:ErreurFonctionnelle>`` (or ``ErreurTechnique``)
  holding ``<code>`` and ``<message>``; HTTP 500 as SOAP 1.1 §6.2 requires (403 for
  authentication, see `http.py`).

XML is parsed by defusedxml with DTDs forbidden: no entity expansion (billion laughs), no
external entity, no DTD at all -- each refused with functional code 36.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal
from xml.etree.ElementTree import Element, ParseError, SubElement, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from gateway.mss.historic_ws import INVALID_FORMAT, NAMESPACE, HistoricError

ENVELOPE_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
MAX_DEPTH = 32
"""Nesting deeper than any operation needs (searchCriteria/query is 3) is refused."""

# Field typing, by element name: the historic schema gives each name one meaning.
LIST_FIELDS = frozenset(
    {
        "addresses",
        "attachments",
        "children",
        "deletedMessageIds",
        "emails",
        "flags",
        "folders",
        "messageIds",
        "messages",
        "modifiedMessages",
        "recipients",
        "placesOfPractice",
    }
)
BOOLEAN_FIELDS = frozenset(
    {
        "answered",
        "deleted",
        "draft",
        "flagged",
        "html",
        "includeSubfolders",
        "isAccuse",
        "isHTML",
        "isSent",
        "seen",
    }
)
INTEGER_FIELDS = frozenset(
    {
        "destinationFolderId",
        "folderId",
        "id",
        "larger",
        "limit",
        "offset",
        "parentId",
        "size",
        "smaller",
        "total",
        "totalCount",
        "unreadCount",
    }
)
COMPLEX_FIELDS = frozenset(
    {
        "attachments",
        "children",
        "folder",
        "folders",
        "message",
        "messages",
        "modifiedMessages",
        "placesOfPractice",
        "query",
        "recipients",
        "searchCriteria",
    }
)
"""Names whose empty element means an empty structure rather than an empty string."""

_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def invalid(message: str) -> HistoricError:
    return HistoricError(INVALID_FORMAT, message)


# -- XML -> dict ----------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _scalar(name: str, text: str) -> Any:
    value = text.strip()
    if name in BOOLEAN_FIELDS:
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
        raise invalid(f"{name}: expected true or false")
    if name in INTEGER_FIELDS:
        if not _INTEGER.fullmatch(value):
            raise invalid(f"{name}: expected an integer")
        return int(value)
    return text


def element_value(element: Element, depth: int = 0) -> Any:
    """The JSON value an element stands for (typed by its name, see the module doc)."""
    if depth > MAX_DEPTH:
        raise invalid("XML nested too deeply")
    name = _local(element.tag)
    if element.get(f"{{{XSI_NS}}}nil") in ("true", "1"):
        return None
    children = list(element)
    if not children:
        text = element.text or ""
        if name in COMPLEX_FIELDS and not text.strip():
            return {}
        return _scalar(name, text)
    return element_fields(element, depth)


def element_fields(element: Element, depth: int = 0) -> dict[str, Any]:
    """An element's children as a dict; known list fields and repeated names become lists."""
    fields: dict[str, Any] = {}
    for child in element:
        name = _local(child.tag)
        value = element_value(child, depth + 1)
        if name in LIST_FIELDS:
            fields.setdefault(name, []).append(value)
        elif name in fields:
            previous = fields[name]
            fields[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            fields[name] = value
    return fields


def parse_xml(body: bytes) -> Element:
    """Parse untrusted XML: DTDs, entities and external references are all refused (36)."""
    try:
        return fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise invalid(f"forbidden XML construct ({type(exc).__name__})") from None
    except (ParseError, ValueError, UnicodeError):
        raise invalid("malformed XML") from None


def parse_request(body: bytes) -> tuple[str, dict[str, Any]]:
    """(operation, payload) of a SOAP 1.1 request: the body's single ``<ns:<op>Input>``
    element; a body element named just ``<op>`` (RPC habit) is accepted too."""
    root = parse_xml(body)
    if root.tag != f"{{{ENVELOPE_NS}}}Envelope":
        raise invalid("not a SOAP 1.1 envelope")
    bodies = [child for child in root if child.tag == f"{{{ENVELOPE_NS}}}Body"]
    if len(bodies) != 1:
        raise invalid("a SOAP envelope needs exactly one Body")
    elements = list(bodies[0])
    if len(elements) != 1:
        raise invalid("the SOAP Body must hold exactly one element")
    element = elements[0]
    if not element.tag.startswith(f"{{{NAMESPACE}}}"):
        raise invalid(f"the body element must be in the namespace {NAMESPACE}")
    name = _local(element.tag)
    operation = name.removesuffix("Input")
    if element.text and element.text.strip() and not len(element):
        raise invalid("the body element must hold fields, not text")
    return operation, element_fields(element)


# -- dict -> XML ----------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _XML_INVALID.sub("\ufffd", str(value))


def add_field(parent: Element, name: str, value: Any) -> None:
    """Append `value` under `parent` as element(s) named `name` (lists repeat the name)."""
    if value is None:
        return
    if isinstance(value, list | tuple):
        for item in value:
            add_field(parent, name, item)
        return
    child = SubElement(parent, name)
    if isinstance(value, Mapping):
        for key, item in value.items():
            add_field(child, str(key), item)
    else:
        child.text = _text(value)


def _envelope() -> tuple[Element, Element]:
    # Prefixed names written literally, so the output never depends on ElementTree's
    # global prefix registry.
    envelope = Element("soap:Envelope", {"xmlns:soap": ENVELOPE_NS})
    return envelope, SubElement(envelope, "soap:Body")


def _serialize(envelope: Element) -> bytes:
    document: bytes = tostring(envelope, encoding="utf-8", xml_declaration=True)
    # A bare CR in text would reach the client as LF (XML end-of-line handling); ElementTree
    # writes CR only where our values hold one, so keep it as a character reference.
    return document.replace(b"\r", b"&#13;")


def response(operation: str, output: Mapping[str, Any]) -> bytes:
    """The SOAP answer: ``<ns:<op>Output>`` holding the fields of `output`."""
    envelope, body = _envelope()
    element = SubElement(body, f"ns:{operation}Output", {"xmlns:ns": NAMESPACE})
    for key, value in output.items():
        add_field(element, key, value)
    return _serialize(envelope)


def fault(
    code: int | None,
    message: str,
    kind: Literal["FONCTIONNELLE", "TECHNIQUE"] = "FONCTIONNELLE",
    *,
    client: bool | None = None,
) -> bytes:
    """A SOAP 1.1 fault; the detail carries the historic error (omitted without a code)."""
    is_client = kind == "FONCTIONNELLE" if client is None else client
    envelope, body = _envelope()
    element = SubElement(body, "soap:Fault")
    SubElement(element, "faultcode").text = "soap:Client" if is_client else "soap:Server"
    SubElement(element, "faultstring").text = _text(message)
    if code is not None:
        detail = SubElement(element, "detail")
        tag = "ns:ErreurFonctionnelle" if kind == "FONCTIONNELLE" else "ns:ErreurTechnique"
        error = SubElement(detail, tag, {"xmlns:ns": NAMESPACE})
        SubElement(error, "code").text = str(code)
        SubElement(error, "message").text = _text(message)
    return _serialize(envelope)
