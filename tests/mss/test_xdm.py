"""read_xdm: what an IHE_XDM.ZIP holds, and every way a hostile archive is refused."""

from __future__ import annotations

import tracemalloc
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from gateway.mss.xdm import XdmError, XdmLimits, read_xdm
from mock_operator.seed import CDA_CODE, PATIENT_INS, cda_document, ihe_xdm_zip
from tests.mss.builders import (
    BILLION_LAUGHS,
    DOC1,
    EXTERNAL_DTD,
    EXTERNAL_ENTITY,
    METADATA,
    MIB,
    lie_about_size,
    make_zip,
    metadata_with,
    without_metadata,
    xdm_entries,
    xdm_with,
    zeros_zip,
)


@contextmanager
def memory_peak_below(limit: int) -> Iterator[None]:
    """Fail if Python allocations peak above `limit` bytes inside the block."""
    tracemalloc.start()
    try:
        yield
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak {peak} bytes"


# -- what a valid archive holds ------------------------------------------------------------


def test_seeded_archive() -> None:
    content = read_xdm(ihe_xdm_zip())
    assert content.has_metadata
    assert [(doc.path, doc.code) for doc in content.documents] == [(DOC1, CDA_CODE)]
    assert content.codes == (CDA_CODE,)
    assert content.patient is not None
    assert content.patient.value == PATIENT_INS
    assert content.patient.oid == "1.2.250.1.213.1.4.8"
    assert content.ins_qualified
    assert METADATA in content.entries
    assert "INDEX.HTM" in content.entries


def test_code_follows_the_cda_document() -> None:
    assert read_xdm(ihe_xdm_zip("34133-9")).codes == ("34133-9",)


def test_two_cda_documents() -> None:
    data = xdm_with(
        documents={
            "IHE_XDM/SUBSET01/DOC0001.XML": cda_document("11490-0"),
            "IHE_XDM/SUBSET01/DOC0002.XML": cda_document("11502-2"),
        }
    )
    assert sorted(read_xdm(data).codes) == ["11490-0", "11502-2"]


@pytest.mark.parametrize(
    "oid",
    [
        "1.2.250.1.213.1.4.8",  # INS-NIR
        "1.2.250.1.213.1.4.9",  # INS-NIA
        "1.2.250.1.213.1.4.10",  # INS-NIR de test
        "1.2.250.1.213.1.4.11",  # INS-NIR de démonstration
    ],
)
def test_ins_authorities_are_qualified(oid: str) -> None:
    content = read_xdm(xdm_with(metadata=metadata_with(oid=oid)))
    assert content.ins_qualified
    assert content.patient is not None
    assert content.patient.oid == oid


@pytest.mark.parametrize("oid", ["1.2.250.1.71.4.2.1", "1.2.250.1.213.1.4.2", ""])
def test_other_authorities_are_not_qualified(oid: str) -> None:
    content = read_xdm(xdm_with(metadata=metadata_with(value="IPP-4512", oid=oid)))
    assert content.patient is not None
    assert content.patient.value == "IPP-4512"
    assert not content.ins_qualified


def test_ins_needs_iso_universal_id_type() -> None:
    metadata = metadata_with().replace(b"&amp;ISO", b"&amp;DNS")
    assert not read_xdm(xdm_with(metadata=metadata)).ins_qualified


def test_only_patient_id_schemes_name_the_patient() -> None:
    # The uniqueId scheme carries the document's OID, not the patient.
    metadata = metadata_with().replace(
        b"urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427",
        b"urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab",
    )
    content = read_xdm(xdm_with(metadata=metadata))
    assert content.has_metadata
    assert content.patient is None
    assert not content.ins_qualified


def test_two_different_qualified_patients_are_refused() -> None:
    first = metadata_with()
    second = first.replace(PATIENT_INS.encode(), b"199017512345612")
    entries = xdm_entries()
    entries["IHE_XDM/SUBSET02/METADATA.XML"] = second
    entries[METADATA] = first
    with pytest.raises(XdmError, match="more than one patient"):
        read_xdm(make_zip(entries))


def test_without_metadata() -> None:
    content = read_xdm(without_metadata())
    assert not content.has_metadata
    assert content.patient is None
    assert content.codes == (CDA_CODE,)


def test_metadata_name_is_case_insensitive() -> None:
    entries = xdm_entries()
    entries["IHE_XDM/SUBSET01/metadata.xml"] = entries.pop(METADATA)
    assert read_xdm(make_zip(entries)).ins_qualified


def test_clinical_document_outside_hl7_namespace_is_not_cda() -> None:
    plain = cda_document().replace(b' xmlns="urn:hl7-org:v3"', b"")
    assert read_xdm(xdm_with(documents={DOC1: plain})).documents == ()


def test_cda_without_code() -> None:
    document = cda_document().replace(b'<code code="11490-0"', b'<code nullFlavor="UNK"')
    content = read_xdm(xdm_with(documents={DOC1: document}))
    assert [doc.code for doc in content.documents] == [None]
    assert content.codes == ()


def test_stored_entries_are_read() -> None:
    content = read_xdm(make_zip(xdm_entries(), method=zipfile.ZIP_STORED))
    assert content.codes == (CDA_CODE,)


def test_nested_archives_are_listed_not_opened() -> None:
    entries = xdm_entries()
    del entries[DOC1]
    entries["IHE_XDM/SUBSET01/INNER.ZIP"] = ihe_xdm_zip("99999-9")
    content = read_xdm(make_zip(entries))
    assert content.documents == ()
    assert "IHE_XDM/SUBSET01/INNER.ZIP" in content.entries


def test_nested_zip_bomb_is_not_opened() -> None:
    entries = xdm_entries()
    entries["IHE_XDM/SUBSET01/BOMB.ZIP"] = zeros_zip("zeros.xml", 50 * MIB)
    assert read_xdm(make_zip(entries)).codes == (CDA_CODE,)


# -- zip bombs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """100 MiB of zeros in one zip64 entry, about 100 KiB compressed."""
    return zeros_zip("IHE_XDM/SUBSET01/DOC0002.XML", 100 * MIB, force_zip64=True)


def test_zip_bomb_is_refused_before_inflating(bomb: bytes) -> None:
    assert len(bomb) < MIB
    with memory_peak_below(8 * MIB), pytest.raises(XdmError, match="too large"):
        read_xdm(bomb)


def test_zip_bomb_inside_a_valid_archive(bomb: bytes) -> None:
    entries = list(xdm_entries().items())
    entries.append(("IHE_XDM/SUBSET01/ZEROS.BIN", bomb))  # stored as data: harmless
    assert read_xdm(make_zip(entries)).codes == (CDA_CODE,)


def test_high_ratio_under_the_size_limit_is_refused() -> None:
    data = zeros_zip("IHE_XDM/SUBSET01/DOC0002.XML", 15 * MIB)
    with pytest.raises(XdmError, match="ratio"):
        read_xdm(data)


def test_high_ratio_below_the_floor_is_fine() -> None:
    entries = xdm_entries()
    entries["IHE_XDM/SUBSET01/PADDING.TXT"] = bytes(MIB // 2)
    assert read_xdm(make_zip(entries)).codes == (CDA_CODE,)


def test_lying_size_bomb_inflates_no_further_than_declared() -> None:
    # The central directory claims 1000 bytes for 100 MiB of zeros: zipfile stops at the
    # declared size, then the CRC no longer matches.
    name = "IHE_XDM/SUBSET01/DOC0002.XML"
    data = lie_about_size(zeros_zip(name, 100 * MIB), name, 1000)
    with memory_peak_below(8 * MIB), pytest.raises(XdmError):
        read_xdm(data)


def test_entry_larger_than_its_limit_while_streaming() -> None:
    limits = XdmLimits(max_xml_size=1000)
    with pytest.raises(XdmError, match="too large"):
        read_xdm(ihe_xdm_zip(), limits)


def test_archive_too_large() -> None:
    with pytest.raises(XdmError, match="archive too large"):
        read_xdm(ihe_xdm_zip(), XdmLimits(max_archive_size=100))


def test_total_uncompressed_size() -> None:
    with pytest.raises(XdmError, match="uncompressed size"):
        read_xdm(ihe_xdm_zip(), XdmLimits(max_total_size=1000))


def test_too_many_entries() -> None:
    entries = [(f"IHE_XDM/SUBSET01/F{i:04}.TXT", b"x") for i in range(1001)]
    with pytest.raises(XdmError, match="too many entries"):
        read_xdm(make_zip(entries))


def test_entry_count_limit_is_configurable() -> None:
    with pytest.raises(XdmError, match="too many entries"):
        read_xdm(ihe_xdm_zip(), XdmLimits(max_entries=3))


@pytest.mark.parametrize(
    "name",
    [
        "../METADATA.XML",
        "IHE_XDM/../../etc/passwd",
        "/etc/passwd",
        "\\windows\\system32\\x.dll",
        "C:/Users/x.xml",
        "IHE_XDM\\..\\..\\x.xml",
        "IHE_XDM/SUBSET01/\x01DOC.XML",
    ],
)
def test_unsafe_entry_names(name: str) -> None:
    entries = [*xdm_entries().items(), (name, b"<x/>")]
    with pytest.raises(XdmError, match="entry name"):
        read_xdm(make_zip(entries))


def test_duplicate_entries() -> None:
    entries = [*xdm_entries().items(), (DOC1.lower(), cda_document("99999-9"))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = make_zip(entries)
    with pytest.raises(XdmError, match="duplicate"):
        read_xdm(data)


def test_encrypted_entries() -> None:
    data = bytearray(make_zip({DOC1: cda_document()}))
    directory = data.find(b"PK\x01\x02")
    data[directory + 8] |= 0x1  # general purpose flag bit 0: encrypted
    data[6] |= 0x1  # same bit in the local header
    with pytest.raises(XdmError, match="encrypted"):
        read_xdm(bytes(data))


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_unbounded_decompressors_are_refused(method: int) -> None:
    with pytest.raises(XdmError, match="compression method"):
        read_xdm(make_zip(xdm_entries(), method=method))


# -- hostile XML -----------------------------------------------------------------------------


@pytest.mark.parametrize("entry", [DOC1, METADATA])
@pytest.mark.parametrize(
    "document", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD], ids=["laughs", "xxe", "dtd"]
)
def test_dtds_and_entities_are_forbidden(entry: str, document: bytes) -> None:
    entries = xdm_entries()
    entries[entry] = document
    with memory_peak_below(8 * MIB), pytest.raises(XdmError, match="forbidden XML"):
        read_xdm(make_zip(entries))


def test_malformed_xml() -> None:
    with pytest.raises(XdmError, match="malformed XML"):
        read_xdm(xdm_with(documents={DOC1: b"<ClinicalDocument><code></ClinicalDocument>"}))


def test_xml_size_cap() -> None:
    big = cda_document().replace(
        b"</ClinicalDocument>", b"<!--" + b"x" * 4000 + b"--></ClinicalDocument>"
    )
    with pytest.raises(XdmError, match="too large"):
        read_xdm(xdm_with(documents={DOC1: big}), XdmLimits(max_xml_size=4000))


# -- not an archive at all -------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"PK", b"not a zip", b"PK\x03\x04" + bytes(100), ihe_xdm_zip()[:-30]]
)
def test_garbage(data: bytes) -> None:
    with pytest.raises(XdmError):
        read_xdm(data)


def test_empty_archive() -> None:
    content = read_xdm(b"PK\x05\x06" + bytes(18))
    assert (content.documents, content.patient, content.has_metadata) == ((), None, False)
