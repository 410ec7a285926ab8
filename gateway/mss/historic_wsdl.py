"""WSDL 1.1 of each historic service, and the schema tables it is generated from.

The tables (`TYPES`, `INPUTS`, `OUTPUTS`, `ERROR`) are the one source of truth of the
SOAP wire format: `historic_soap` writes every answer and fault by walking them (element
names and order), so a SOAP answer cannot drift from the WSDL a client was generated
from, nor from the operations list (`OPERATIONS`).

document/literal bare: operation ``op`` takes the element ``tns:<op>Input`` and answers
``tns:<op>Output``; faults ``tns:ErreurFonctionnelle`` / ``tns:ErreurTechnique``. Fields
are unqualified (``elementFormDefault="unqualified"``), all optional (the services answer
missing mandatory fields with code 28 rather than with a schema error), lists unbounded.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement, tostring

from gateway.mss.historic_ws import NAMESPACE, OPERATIONS

Field = tuple[str, str, bool]
"""(name, XSD type -- ``xs:…`` or a complex type of `TYPES` --, repeated)."""

STRING, INT, LONG, BOOLEAN, B64 = (
    "xs:string",
    "xs:int",
    "xs:long",
    "xs:boolean",
    "xs:base64Binary",
)
S, L, B = STRING, LONG, BOOLEAN  # short names for the tables below


def _f(name: str, kind: str = S, repeated: bool = False) -> Field:
    return (name, kind, repeated)


TYPES: dict[str, tuple[Field, ...]] = {
    "email": (_f("address"), _f("name"), _f("type")),
    "attachment": (
        _f("part"),
        _f("fileName"),
        _f("contentType"),
        _f("size", L),
        _f("file", B64),
        _f("messageId"),
    ),
    "message": (
        _f("messageId"),
        _f("folderId", INT),
        _f("conversationId"),
        _f("subject"),
        _f("body"),
        _f("isHTML", B),
        _f("priority"),
        _f("isAccuse", B),
        _f("replyType"),
        _f("size", L),
        _f("date"),
        _f("addresses", "tns:email", True),
        _f("emails", "tns:email", True),
        _f("flags", S, True),
        _f("attachments", "tns:attachment", True),
    ),
    "folder": (
        _f("id", INT),
        _f("name"),
        _f("unreadCount", INT),
        _f("totalCount", INT),
        _f("parentId", INT),
        _f("children", "tns:folder", True),
    ),
    "query": (
        _f("folderId", INT),
        _f("includeSubfolders", B),
        _f("from"),
        _f("to"),
        _f("cc"),
        _f("bcc"),
        _f("subject"),
        _f("content"),
        _f("before"),
        _f("after"),
        _f("seen", B),
        _f("flagged", B),
        _f("answered", B),
        _f("deleted", B),
        _f("draft", B),
        _f("larger", L),
        _f("smaller", L),
        _f("isSent", B),
    ),
    "searchCriteria": (
        _f("limit", INT),
        _f("offset", INT),
        _f("html", B),
        _f("sortBy"),
        _f("query", "tns:query"),
    ),
    "placeOfPractice": (_f("name"), _f("address"), _f("city")),
    "recipient": (
        _f("idNat"),
        _f("civility"),
        _f("firstName"),
        _f("lastName"),
        _f("profession"),
        _f("addresses", S, True),
        _f("placesOfPractice", "tns:placeOfPractice", True),
    ),
}

_EMAIL = _f("email")
_FOLDER = _f("folderId", INT)

INPUTS: dict[str, tuple[Field, ...]] = {
    "listEmails": (_EMAIL,),
    "searchRecipient": (_EMAIL, _f("searchString")),
    "listFolders": (_EMAIL, _FOLDER),
    "createFolder": (_EMAIL, _f("parentId", INT), _f("name")),
    "renameFolder": (_EMAIL, _FOLDER, _f("name")),
    "moveFolder": (_EMAIL, _FOLDER, _f("parentId", INT), _f("destinationFolderId", INT)),
    "deleteFolder": (_EMAIL, _FOLDER),
    "emptyFolder": (_EMAIL, _FOLDER),
    "trashFolder": (_EMAIL, _FOLDER),
    "searchMessages": (_EMAIL, _f("searchCriteria", "tns:searchCriteria")),
    "syncMessages": (_EMAIL, _f("token"), _f("html", B)),
    "sendMessage": (_EMAIL, _f("message", "tns:message")),
    "draftMessage": (_EMAIL, _f("message", "tns:message")),
    "updateMessages": (_EMAIL, _f("messageIds", S, True), _f("operation")),
    "moveMessages": (_EMAIL, _f("messageIds", S, True), _f("destinationFolderId", INT)),
    "downloadAttachment": (_EMAIL, _f("messageId"), _f("part")),
}

_MESSAGES = _f("messages", "tns:message", True)
OUTPUTS: dict[str, tuple[Field, ...]] = {
    "listEmails": (_f("emails", S, True),),
    "searchRecipient": (_f("recipients", "tns:recipient", True),),
    "listFolders": (_f("folders", "tns:folder", True),),
    "createFolder": (_f("folder", "tns:folder"),),
    "searchMessages": (_MESSAGES, _f("total", INT)),
    "syncMessages": (
        _f("token"),
        _f("modifiedMessages", "tns:message", True),
        _f("deletedMessageIds", S, True),
    ),
    "sendMessage": (_f("message", "tns:message"),),
    "draftMessage": (_f("message", "tns:message"),),
    "downloadAttachment": (_f("file", B64), _f("fileName"), _f("contentType"), _f("size", L)),
}
"""Outputs not listed here are empty."""

ERROR: tuple[Field, ...] = (_f("code", INT), _f("message"))
"""The content of the fault details ``tns:ErreurFonctionnelle`` and ``tns:ErreurTechnique``."""
FAULT_ELEMENTS = ("ErreurFonctionnelle", "ErreurTechnique")


def output_fields(operation: str) -> tuple[Field, ...]:
    """The fields of ``<op>Output``, in schema order."""
    return OUTPUTS.get(operation, ())


def type_fields(kind: str) -> tuple[Field, ...] | None:
    """The fields of a complex type (``tns:name``), in schema order; None for a simple type."""
    return TYPES[kind.removeprefix("tns:")] if kind.startswith("tns:") else None


_XS = "http://www.w3.org/2001/XMLSchema"
_WSDL = "http://schemas.xmlsoap.org/wsdl/"
_SOAP = "http://schemas.xmlsoap.org/wsdl/soap/"


def _complex(parent: Element, fields: tuple[Field, ...], **attributes: str) -> None:
    complex_type = SubElement(parent, "xs:complexType", attributes)
    sequence = SubElement(complex_type, "xs:sequence")
    for name, kind, repeated in fields:
        SubElement(
            sequence,
            "xs:element",
            name=name,
            type=kind,
            minOccurs="0",
            maxOccurs="unbounded" if repeated else "1",
        )


def _schema(types: Element, service: str) -> None:
    schema = SubElement(
        types,
        "xs:schema",
        targetNamespace=NAMESPACE,
        elementFormDefault="unqualified",
    )
    for name, fields in TYPES.items():
        _complex(schema, fields, name=name)
    for operation in OPERATIONS[service]:
        _complex(SubElement(schema, "xs:element", name=f"{operation}Input"), INPUTS[operation])
        _complex(
            SubElement(schema, "xs:element", name=f"{operation}Output"),
            OUTPUTS.get(operation, ()),
        )
    for error in FAULT_ELEMENTS:
        _complex(SubElement(schema, "xs:element", name=error), ERROR)


def build_wsdl(service: str, address: str) -> bytes:
    """The WSDL 1.1 document of `service`, its SOAP port at `address`."""
    definitions = Element(
        "wsdl:definitions",
        {
            "xmlns:wsdl": _WSDL,
            "xmlns:soap": _SOAP,
            "xmlns:xs": _XS,
            "xmlns:tns": NAMESPACE,
            "name": f"{service}Service",
            "targetNamespace": NAMESPACE,
        },
    )
    _schema(SubElement(definitions, "wsdl:types"), service)
    operations = OPERATIONS[service]
    for operation in operations:
        for suffix in ("Input", "Output"):
            message = SubElement(definitions, "wsdl:message", name=f"{operation}{suffix}")
            SubElement(message, "wsdl:part", name="parameters", element=f"tns:{operation}{suffix}")
    for error in FAULT_ELEMENTS:
        message = SubElement(definitions, "wsdl:message", name=error)
        SubElement(message, "wsdl:part", name="fault", element=f"tns:{error}")
    port_type = SubElement(definitions, "wsdl:portType", name=service)
    for operation in operations:
        element = SubElement(port_type, "wsdl:operation", name=operation)
        SubElement(element, "wsdl:input", message=f"tns:{operation}Input")
        SubElement(element, "wsdl:output", message=f"tns:{operation}Output")
        for error in FAULT_ELEMENTS:
            SubElement(element, "wsdl:fault", name=error, message=f"tns:{error}")
    binding = SubElement(
        definitions, "wsdl:binding", name=f"{service}SoapBinding", type=f"tns:{service}"
    )
    SubElement(
        binding, "soap:binding", style="document", transport="http://schemas.xmlsoap.org/soap/http"
    )
    for operation in operations:
        element = SubElement(binding, "wsdl:operation", name=operation)
        SubElement(element, "soap:operation", soapAction="", style="document")
        for direction in ("wsdl:input", "wsdl:output"):
            SubElement(SubElement(element, direction), "soap:body", use="literal")
        for error in FAULT_ELEMENTS:
            fault = SubElement(element, "wsdl:fault", name=error)
            SubElement(fault, "soap:fault", name=error, use="literal")
    service_element = SubElement(definitions, "wsdl:service", name=f"{service}Service")
    port = SubElement(
        service_element, "wsdl:port", name=f"{service}Port", binding=f"tns:{service}SoapBinding"
    )
    SubElement(port, "soap:address", location=address)
    document: bytes = tostring(definitions, encoding="utf-8", xml_declaration=True)
    return document
