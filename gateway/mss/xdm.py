"""Read an IHE_XDM.ZIP attachment safely: which CDA documents it holds, which patient it names.

The archive comes from the network, so everything in it is hostile until proven small:

* the archive, its entry count and every entry's declared sizes and compression ratio are
  checked against `XdmLimits` before anything is decompressed, and decompression is
  streamed and counted again (declared sizes can lie);
* only STORED and DEFLATED entries are read: zipfile inflates bzip2/LZMA chunks without
  an output bound, and encrypted entries cannot be inspected anyway;
* entry names must be relative and free of ``..`` (the archive may be extracted later by
  a mail client); nested archives are listed, never opened;
* XML is parsed by defusedxml with DTDs, entities and external references forbidden,
  after a size cap, so entity expansion (billion laughs) and XXE cannot happen.

Every problem raises `XdmError` and nothing else, whatever the input bytes are: callers
turn it into a 5.6.0 refusal without having to know zipfile's or expat's exceptions.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from dataclasses import dataclass
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET

MIB = 1024 * 1024

HL7_V3 = "urn:hl7-org:v3"
RIM_3 = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"

# XDSDocumentEntry.patientId, XDSSubmissionSet.patientId, XDSFolder.patientId (IHE ITI TF-3).
PATIENT_ID_SCHEMES = frozenset(
    {
        "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427",
        "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446",
        "urn:uuid:f64ffdf0-4b97-4e06-b79f-a52b38ec2f8a",
    }
)

# Assigning authorities of the INS matricule (ANS, référentiel INS): only a qualified
# identity may carry them, so their presence means "qualified INS".
INS_OIDS = {
    "1.2.250.1.213.1.4.8": "INS-NIR",
    "1.2.250.1.213.1.4.9": "INS-NIA",
    "1.2.250.1.213.1.4.10": "INS-NIR de test",
    "1.2.250.1.213.1.4.11": "INS-NIR de démonstration",
}

_READ_CHUNK = 64 * 1024
_READABLE_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_CENTRAL_DIRECTORY_SIGNATURE = b"PK\x01\x02"
_PATH_SEPARATORS = re.compile(r"[/\\]")
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class XdmError(Exception):
    """The attachment is not an IHE_XDM.ZIP that can be read safely (message says why)."""


@dataclass(frozen=True)
class XdmLimits:
    """Bounds on what one archive may cost; the defaults fit Mon Espace Santé's 25 MB."""

    max_archive_size: int = 25 * MIB
    max_entries: int = 1000
    max_entry_size: int = 20 * MIB
    max_total_size: int = 100 * MIB
    max_ratio: int = 100
    ratio_floor: int = 1 * MIB  # below this, a high ratio is harmless (small XML compresses well)
    max_xml_size: int = 20 * MIB


DEFAULT_LIMITS = XdmLimits()


@dataclass(frozen=True)
class CdaDocument:
    """A ClinicalDocument (CDA R2) found in the archive; `code` is its ``code/@code``."""

    path: str
    code: str | None


@dataclass(frozen=True)
class PatientIns:
    """The patient identifier of METADATA.XML: `value` from ``value^^^&oid&ISO``."""

    value: str
    oid: str
    qualified: bool


@dataclass(frozen=True)
class XdmContent:
    """What the MSSanté header rules need to know about an IHE_XDM.ZIP."""

    documents: tuple[CdaDocument, ...]
    patient: PatientIns | None
    has_metadata: bool
    entries: tuple[str, ...]

    @property
    def codes(self) -> tuple[str, ...]:
        """The codes of the CDA documents, in archive order (documents without one skipped)."""
        return tuple(doc.code for doc in self.documents if doc.code is not None)

    @property
    def ins_qualified(self) -> bool:
        return self.patient is not None and self.patient.qualified


def read_xdm(data: bytes, limits: XdmLimits = DEFAULT_LIMITS) -> XdmContent:
    """Inspect an IHE_XDM.ZIP; raise `XdmError` (only) when it cannot be read safely."""
    try:
        return _read(data, limits)
    except XdmError:
        raise
    except zipfile.BadZipFile as exc:
        raise XdmError(f"not a valid zip archive ({exc})") from exc
    except zlib.error as exc:
        raise XdmError(f"corrupt compressed data ({exc})") from exc
    except Exception as exc:
        # The contract is XdmError only: whatever else zipfile, zlib or expat throw on
        # hostile bytes (struct.error, OverflowError, ValueError, ...) is a refusal too.
        raise XdmError(f"unreadable archive ({type(exc).__name__})") from exc


def _read(data: bytes, limits: XdmLimits) -> XdmContent:
    if len(data) > limits.max_archive_size:
        raise XdmError(f"archive too large ({len(data)} bytes > {limits.max_archive_size})")
    # zipfile checks this signature on every central-directory record, so counting it
    # bounds the entry count before zipfile builds one ZipInfo per record.
    if data.count(_CENTRAL_DIRECTORY_SIGNATURE) > limits.max_entries:
        raise XdmError(f"too many entries (> {limits.max_entries})")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        _check_entries(infos, limits)
        documents: list[CdaDocument] = []
        patients: list[PatientIns] = []
        has_metadata = False
        inflated = 0
        for info in infos:
            if info.is_dir() or not info.filename.lower().endswith(".xml"):
                continue  # nested archives, PDFs, INDEX.HTM...: listed, never opened
            text = _read_entry(archive, info, limits)
            inflated += len(text)
            if inflated > limits.max_total_size:
                raise XdmError(f"archive inflates beyond {limits.max_total_size} bytes")
            root = parse_xml(text, info.filename, limits)
            if _PATH_SEPARATORS.split(info.filename)[-1].upper() == "METADATA.XML":
                has_metadata = True
                patients.extend(_patients(root))
            elif root.tag == f"{{{HL7_V3}}}ClinicalDocument":
                documents.append(CdaDocument(info.filename, cda_code(root)))
    return XdmContent(
        documents=tuple(documents),
        patient=_one_patient(patients),
        has_metadata=has_metadata,
        entries=tuple(info.filename for info in infos),
    )


def _check_entries(infos: list[zipfile.ZipInfo], limits: XdmLimits) -> None:
    """Refuse on declared metadata alone, before a single byte is decompressed."""
    if len(infos) > limits.max_entries:
        raise XdmError(f"too many entries ({len(infos)} > {limits.max_entries})")
    seen: set[str] = set()
    total_compressed = 0
    total = 0
    for info in infos:
        name = info.filename
        _check_name(info)
        folded = name.casefold()
        if folded in seen:
            raise XdmError(f"duplicate entry {_show(name)}")
        seen.add(folded)
        if info.flag_bits & 0x1:
            raise XdmError(f"encrypted entry {_show(name)}")
        if info.compress_type not in _READABLE_METHODS:
            raise XdmError(f"unsupported compression method {info.compress_type} for {_show(name)}")
        if info.file_size > limits.max_entry_size:
            raise XdmError(
                f"entry {_show(name)} too large ({info.file_size} bytes > {limits.max_entry_size})"
            )
        ratio_cap = limits.max_ratio * max(info.compress_size, 1)
        if info.file_size > limits.ratio_floor and info.file_size > ratio_cap:
            raise XdmError(
                f"entry {_show(name)} compression ratio above {limits.max_ratio}:1 (zip bomb?)"
            )
        total_compressed += info.compress_size
        total += info.file_size
    if total_compressed > limits.max_archive_size:
        raise XdmError(f"declared compressed size too large ({total_compressed} bytes)")
    if total > limits.max_total_size:
        raise XdmError(f"declared uncompressed size too large ({total} bytes)")


def _check_name(info: zipfile.ZipInfo) -> None:
    """Relative, no ``..``, no control characters: safe if a mail client extracts it."""
    raw = info.orig_filename
    name = info.filename
    if not name or _CONTROL.search(raw):
        raise XdmError(f"invalid entry name {_show(raw)}")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise XdmError(f"absolute entry name {_show(name)}")
    if ".." in _PATH_SEPARATORS.split(name):
        raise XdmError(f"entry name escapes the archive {_show(name)}")


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: XdmLimits) -> bytes:
    """Stream-decompress one entry, counting what actually comes out (headers can lie)."""
    limit = min(limits.max_entry_size, limits.max_xml_size)
    if info.file_size > limit:
        raise XdmError(f"XML entry {_show(info.filename)} too large ({info.file_size} bytes)")
    out = bytearray()
    with archive.open(info) as stream:
        while chunk := stream.read(_READ_CHUNK):
            out += chunk
            if len(out) > limit:
                raise XdmError(f"entry {_show(info.filename)} inflates beyond its limit")
    return bytes(out)


def parse_xml(data: bytes, name: str, limits: XdmLimits = DEFAULT_LIMITS) -> Element:
    """An XML entry, parsed by defusedxml (no DTD, entity or external reference) after the
    size cap; `XdmError` otherwise."""
    if len(data) > limits.max_xml_size:
        raise XdmError(f"XML entry {_show(name)} too large")
    try:
        return SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except SafeET.ParseError as exc:
        raise XdmError(f"malformed XML in {_show(name)} ({exc})") from exc
    except ValueError as exc:  # defusedxml's DTDForbidden, EntitiesForbidden, ...
        raise XdmError(f"forbidden XML construct in {_show(name)} ({type(exc).__name__})") from exc


def cda_code(root: Element) -> str | None:
    """A ClinicalDocument's ``code/@code`` (None when missing or blank)."""
    code = root.find(f"{{{HL7_V3}}}code")
    value = (code.get("code") if code is not None else None) or ""
    return value.strip() or None


def _patients(root: Element) -> list[PatientIns]:
    """The patient identifiers (CX ``id^^^&oid&ISO``) of the XDS patientId slots."""
    found: list[PatientIns] = []
    for ident in root.iter(f"{{{RIM_3}}}ExternalIdentifier"):
        if ident.get("identificationScheme", "").strip() not in PATIENT_ID_SCHEMES:
            continue
        patient = _parse_cx(ident.get("value", ""))
        if patient is not None:
            found.append(patient)
    return found


def _parse_cx(value: str) -> PatientIns | None:
    components = value.strip().split("^")
    ident = components[0].strip()
    if not ident:
        return None
    authority = components[3].split("&") if len(components) > 3 else []
    oid = authority[1].strip() if len(authority) > 1 else ""
    kind = authority[2].strip().upper() if len(authority) > 2 else ""
    return PatientIns(ident, oid, qualified=oid in INS_OIDS and kind == "ISO")


def _one_patient(patients: list[PatientIns]) -> PatientIns | None:
    """One archive, one patient: two different qualified INS are a contradiction."""
    qualified = {(p.value, p.oid) for p in patients if p.qualified}
    if len(qualified) > 1:
        raise XdmError("METADATA.XML names more than one patient (different INS)")
    for patient in patients:
        if patient.qualified:
            return patient
    return patients[0] if patients else None


def _show(name: str, limit: int = 80) -> str:
    """An attacker-chosen name, made printable and short for error messages."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 3] + "..."
