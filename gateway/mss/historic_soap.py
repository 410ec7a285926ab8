"""SOAP 1.1 face of the historic web services: envelopes, faults and the dict <-> XML mapping.

Wire choices (the WSDL of `historic_wsdl` says the same; answers and faults are written by
walking its tables, so their element names and order are the schema's, whatever the order
of the dict an implementation returns):

* document/literal, *bare*: the SOAP body holds one element ``<ns:<op>Input>`` in the
  namespace `NAMESPACE` and the answer is ``<ns:<op>Output>`` -- the very names of the
  JSON wrapping, so that one mapping serves both faces. Fields are unqualified children.
* Lists are repeated elements named after the field (``<messageIds>1</messageIds>
  <messageIds>2</messageIds>``); booleans ``true``/``false``; integers in decimal;
  ``None`` is omitted. A field the schema does not declare, or a value of another type, is
  a bug of the implementation: `OutOfSchema`, which the HTTP face turns into a technical
  fault rather than an answer a schema-driven client (zeep, JAX-WS, WCF) would reject.
* Faults: ``soap:Client`` for functional errors (the caller's input), ``soap:Server`` for
  technical ones, with ``<detail><ns:ErreurFonctionnelle>`` (or ``ErreurTechnique``)
  holding ``<code>`` and ``<message>``; HTTP 500 as SOAP 1.1 §6.2 requires (403 for
  authentication, see `historic_http`).

XML is parsed by defusedxml with DTDs forbidden: no entity expansion (billion laughs), no
external entity, no DTD at all -- each refused with functional code 36.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any, Literal
from xml.etree.ElementTree import Element, ParseError, SubElement, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from gateway.mss.historic_ws import INVALID_FORMAT, NAMESPACE, HistoricError
from gateway.mss.historic_wsdl import (
    B64,
    BOOLEAN,
    ERROR,
    INPUTS,
    INT,
    LONG,
    OUTPUTS,
    TYPES,
    Field,
    output_fields,
    type_fields,
)

ENVELOPE_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
MAX_DEPTH = 32
"""Nesting deeper than any operation needs (searchCriteria/query is 3) is refused."""


def _field_kinds() -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
    """(lists, booleans, integers, complex) field names, read from the WSDL's tables of
    inputs and outputs (fault details are never read): the historic schema gives each
    name one meaning, which is what lets a request be typed by its element names alone."""
    fields = [
        field for table in (*TYPES.values(), *INPUTS.values(), *OUTPUTS.values()) for field in table
    ]
    lists = {name for name, _, repeated in fields if repeated}
    booleans = {name for name, kind, _ in fields if kind == BOOLEAN}
    integers = {name for name, kind, _ in fields if kind in (INT, LONG)}
    structured = {name for name, kind, _ in fields if kind.startswith("tns:")}
    plain = {name for name, kind, _ in fields if not kind.startswith("tns:")}
    if booleans & integers:
        raise ValueError(f"fields with two scalar types: {sorted(booleans & integers)}")
    return (
        frozenset(lists),
        frozenset(booleans),
        frozenset(integers),
        frozenset(structured - plain),
    )


LIST_FIELDS, BOOLEAN_FIELDS, INTEGER_FIELDS, COMPLEX_FIELDS = _field_kinds()
"""COMPLEX_FIELDS: names whose empty element means an empty structure, not an empty string."""

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


class OutOfSchema(ValueError):
    """An answer that the WSDL's schema does not describe (an undeclared field, a value of
    another type): a bug of the implementation, never written on the wire."""


_BOUNDS = {INT: (-(2**31), 2**31 - 1), LONG: (-(2**63), 2**63 - 1)}


def _text(value: str) -> str:
    return _XML_INVALID.sub("\ufffd", value)


def _lexical(kind: str, value: Any, where: str) -> str:
    """The XSD lexical form of a simple-typed value; `OutOfSchema` when it is not one."""
    if kind == BOOLEAN:
        if isinstance(value, bool):
            return "true" if value else "false"
    elif kind in _BOUNDS:
        low, high = _BOUNDS[kind]
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return str(value)
    elif kind == B64:
        if isinstance(value, bytes):
            return base64.b64encode(value).decode("ascii")
        if isinstance(value, str):
            return value
    elif isinstance(value, str):
        return _text(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise OutOfSchema(f"{where}: {type(value).__name__} is not {kind}")


def add_fields(
    parent: Element, fields: tuple[Field, ...], values: Mapping[str, Any], where: str
) -> None:
    """Write `values` under `parent` as the schema's `fields` say: their names, their
    order, lists as repeated elements, None omitted. A key the schema does not declare
    raises `OutOfSchema` rather than being written out of schema or silently dropped."""
    declared = {name for name, _, _ in fields}
    unknown = [key for key in values if key not in declared]
    if unknown:
        raise OutOfSchema(f"{where}: fields {unknown} are not in the schema")
    for name, kind, repeated in fields:
        value = values.get(name)
        if value is None:
            continue
        if repeated != isinstance(value, list | tuple):
            expected = "a list" if repeated else "one value"
            raise OutOfSchema(f"{where}.{name}: {expected} expected")
        structure = type_fields(kind)
        for item in value if repeated else (value,):
            child = SubElement(parent, name)
            if structure is None:
                child.text = _lexical(kind, item, f"{where}.{name}")
            elif isinstance(item, Mapping):
                add_fields(child, structure, item, f"{where}.{name}")
            else:
                raise OutOfSchema(f"{where}.{name}: {kind} expected")


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
    """The SOAP answer: ``<ns:<op>Output>`` holding `output` in the schema's order;
    `OutOfSchema` when `output` is not what the WSDL declares."""
    envelope, body = _envelope()
    element = SubElement(body, f"ns:{operation}Output", {"xmlns:ns": NAMESPACE})
    add_fields(element, output_fields(operation), output, f"{operation}Output")
    return _serialize(envelope)


def fault(
    code: int | None,
    message: str,
    kind: Literal["FONCTIONNELLE", "TECHNIQUE"] = "FONCTIONNELLE",
    *,
    client: bool | None = None,
) -> bytes:
    """A SOAP 1.1 fault; the detail carries the historic error as the WSDL declares it
    (``ns:ErreurFonctionnelle`` or ``ns:ErreurTechnique``), omitted without a code."""
    is_client = kind == "FONCTIONNELLE" if client is None else client
    envelope, body = _envelope()
    element = SubElement(body, "soap:Fault")
    SubElement(element, "faultcode").text = "soap:Client" if is_client else "soap:Server"
    SubElement(element, "faultstring").text = _text(message)
    if code is not None:
        detail = SubElement(element, "detail")
        tag = "ErreurFonctionnelle" if kind == "FONCTIONNELLE" else "ErreurTechnique"
        error = SubElement(detail, f"ns:{tag}", {"xmlns:ns": NAMESPACE})
        add_fields(error, ERROR, {"code": code, "message": message}, tag)
    return _serialize(envelope)
