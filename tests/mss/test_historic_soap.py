"""The SOAP serialiser is driven by the WSDL's schema: answers come out in the schema's
element order whatever the dict order, undeclared fields and mistyped values are refused
(never written out of schema), and answers and faults validate against the WSDL's XSD."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree

from gateway.mss import historic_soap as soap
from gateway.mss.historic_ws import NAMESPACE, OPERATIONS
from gateway.mss.historic_wsdl import OUTPUTS, TYPES, build_wsdl
from tests.support.historic_contract import check_soap_document, wsdl_schema

MESSAGE: dict[str, Any] = {
    "messageId": "12",
    "folderId": 2,
    "conversationId": "c-1",
    "subject": "Compte rendu",
    "body": "Bonjour\r\n",
    "isHTML": False,
    "priority": "HAUTE",
    "isAccuse": True,
    "size": 1234,
    "date": "01/02/2025 10:00:00",
    "emails": [{"address": "a@medecin.mssante.fr", "name": "A", "type": "FROM"}],
    "flags": ["UNREAD", "ATTACHMENT"],
    "attachments": [
        {"part": "2", "fileName": "cr.pdf", "contentType": "application/pdf", "size": 9}
    ],
}


def schema_of(operation: str) -> etree.XMLSchema:
    service = next(s for s, ops in OPERATIONS.items() if operation in ops)
    return wsdl_schema(build_wsdl(service, "http://127.0.0.1/x"))


def children(document: bytes, operation: str) -> list[str]:
    root = etree.fromstring(document)
    output = root.find(f".//{{{NAMESPACE}}}{operation}Output/messages")
    assert output is not None
    return [child.tag for child in output]


def test_answer_follows_schema_order_whatever_the_dict_order() -> None:
    shuffled = dict(reversed(list(MESSAGE.items())))
    document = soap.response("searchMessages", {"total": 1, "messages": [shuffled]})
    expected = []
    for name, _, repeated in TYPES["message"]:
        if name in MESSAGE:
            expected += [name] * (len(MESSAGE[name]) if repeated else 1)
    assert children(document, "searchMessages") == expected
    check_soap_document(schema_of("searchMessages"), document, "searchMessages", 200)


def test_dict_order_answer_would_break_the_schema() -> None:
    """The check is strict: XML in dict order (priority after flags) is rejected."""
    bad = (
        f'<ns:searchMessagesOutput xmlns:ns="{NAMESPACE}"><messages><messageId>1</messageId>'
        "<flags>UNREAD</flags><priority>NORMAL</priority></messages></ns:searchMessagesOutput>"
    )
    envelope = (
        f'<s:Envelope xmlns:s="{soap.ENVELOPE_NS}"><s:Body>{bad}</s:Body></s:Envelope>'
    ).encode()
    with pytest.raises(AssertionError, match="not valid"):
        check_soap_document(schema_of("searchMessages"), envelope, "searchMessages", 200)


@pytest.mark.parametrize(
    ("operation", "output", "where"),
    [
        ("sendMessage", {"message": {**MESSAGE, "secret": "x"}}, "sendMessageOutput.message"),
        ("listEmails", {"emails": ["a@b.fr"], "extra": 1}, "listEmailsOutput"),
        ("searchMessages", {"messages": [], "total": "3"}, "searchMessagesOutput.total"),
        ("searchMessages", {"messages": {"messageId": "1"}}, "searchMessagesOutput.messages"),
        ("listFolders", {"folders": [{"id": True}]}, "listFoldersOutput.folders.id"),
        ("createFolder", {"folder": "Inbox"}, "createFolderOutput.folder"),
        ("syncMessages", {"token": "1", "deletedMessageIds": "7"}, "syncMessagesOutput"),
        ("listFolders", {"folders": [{"id": 2**31}]}, "listFoldersOutput.folders.id"),
    ],
)
def test_out_of_schema_answers_are_refused(
    operation: str, output: dict[str, Any], where: str
) -> None:
    with pytest.raises(soap.OutOfSchema, match=where.replace(".", r"\.")):
        soap.response(operation, output)


@pytest.mark.parametrize("operation", sorted(OUTPUTS))
def test_every_declared_output_field_is_writable(operation: str) -> None:
    """An answer carrying every field of the schema (one of each list) validates."""

    def sample(kind: str) -> Any:
        if kind.startswith("tns:"):
            return {name: value(k, rep) for name, k, rep in TYPES[kind[4:]]}
        return {
            "xs:int": 7,
            "xs:long": 2**40,
            "xs:boolean": True,
            "xs:base64Binary": "AAEC",
        }.get(kind, "texte \x01 é")

    def value(kind: str, repeated: bool) -> Any:
        if kind == "tns:folder":  # recursive: one level
            leaf = {n: sample(k) for n, k, _ in TYPES["folder"] if n != "children"}
            return [leaf] if repeated else leaf
        return [sample(kind)] if repeated else sample(kind)

    output = {name: value(kind, repeated) for name, kind, repeated in OUTPUTS[operation]}
    document = soap.response(operation, output)
    check_soap_document(schema_of(operation), document, operation, 200)


@pytest.mark.parametrize("kind", ["FONCTIONNELLE", "TECHNIQUE"])
def test_faults_are_valid_against_the_schema(kind: Any) -> None:
    document = soap.fault(41, "le dossier n'existe pas \x00", kind)
    check_soap_document(schema_of("listFolders"), document, "listFolders", 500)
    root = etree.fromstring(document)
    tag = "ErreurFonctionnelle" if kind == "FONCTIONNELLE" else "ErreurTechnique"
    assert root.find(f".//detail/{{{NAMESPACE}}}{tag}/code").text == "41"


def test_request_typing_comes_from_the_schema() -> None:
    assert {"messageIds", "flags", "children", "placesOfPractice"} <= soap.LIST_FIELDS
    assert {"isHTML", "includeSubfolders", "seen"} <= soap.BOOLEAN_FIELDS
    assert {"folderId", "limit", "size", "total"} <= soap.INTEGER_FIELDS
    assert "message" in soap.COMPLEX_FIELDS
    assert "addresses" not in soap.COMPLEX_FIELDS  # strings in a recipient
