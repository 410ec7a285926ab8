"""Hostile CDA documents given to `mock-operator xdm` (`mock_operator.xdm`): entity
bombs, external entities, DTDs, oversized files, documents that are not CDA, codes and
patient identifiers made to break METADATA.XML. Each is a `CdaError` saying why, never
another exception, and whatever is built reads back with the same code and patient."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mss.xdm import read_xdm
from mock_operator.xdm import MAX_CDA_BYTES, CdaError, build_xdm

NS = 'xmlns="urn:hl7-org:v3"'


def cda(code: str = "11490-0", ident: str = "255017512345678") -> bytes:
    return (
        f'<ClinicalDocument {NS}><code code="{code}"/><recordTarget><patientRole>'
        f'<id root="1.2.250.1.213.1.4.8" extension="{ident}"/></patientRole></recordTarget>'
        "</ClinicalDocument>"
    ).encode()


HOSTILE = {
    "billion laughs": (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><code code="&b;"/></ClinicalDocument>'
    ),
    "external entity": (
        b'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title>'
        b'<code code="1"/></ClinicalDocument>'
    ),
    "bare DTD": (
        b'<?xml version="1.0"?><!DOCTYPE ClinicalDocument SYSTEM "http://127.0.0.1:1/x.dtd">'
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><code code="1"/></ClinicalDocument>'
    ),
    "oversized": b"<ClinicalDocument " + NS.encode() + b">" + b" " * MAX_CDA_BYTES + b"</x>",
    "not XML": b"\x00\xff PK\x03\x04",
    "HTML": b"<html><body>compte rendu</body></html>",
    "another namespace": b'<ClinicalDocument xmlns="urn:x"><code code="1"/></ClinicalDocument>',
    "no code": b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>t</title></ClinicalDocument>',
    "empty code": cda(code=""),
    "a list of codes": cda(code="11490-0,34133-9"),
    "a control character in the code": cda(code="11490&#10;-0"),
    "a long code": cda(code="1" * 65),
    "an identifier breaking the CX value": cda(ident="123^^^&amp;1.2.250.1.213.1.4.8&amp;ISO"),
}


@pytest.mark.parametrize("document", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_documents_are_refused_with_a_reason(document: bytes) -> None:
    with pytest.raises(CdaError) as refused:
        build_xdm(document)
    assert str(refused.value)


def test_quotes_and_markup_in_values_stay_values() -> None:
    """An attribute made to close METADATA.XML's element is escaped: the archive reads back
    with the very code and patient identifier given."""
    built = build_xdm(cda(code="A&quot;/&gt;&lt;x", ident="P&lt;1&gt;&quot;&apos;"))
    content = read_xdm(built.archive)
    assert content.codes == ('A"/><x',)
    assert content.patient is not None
    assert content.patient.value == "P<1>\"'"
    assert built.headers()[0] == ("X-MSS-CODECDA", 'A"/><x')


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_build_or_are_refused(data: bytes) -> None:
    try:
        built = build_xdm(data)
    except CdaError:
        return
    assert read_xdm(built.archive).codes == (built.code,)
