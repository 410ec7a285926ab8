"""IHE_XDM.ZIP archives for vendors' own tests (`mock-operator xdm`) and the seeded mail.

An archive holds, as IHE ITI XDM lays it out, ``INDEX.HTM``, ``README.TXT`` and a subset
``IHE_XDM/SUBSET01`` with ``METADATA.XML`` (the XDS submission: the document's class code
and the patient's identifier) and the CDA R2 document itself. What the MSSanté header
rules then ask of the message that carries it follows from the CDA: ``X-MSS-CODECDA`` is
its ``code/@code``, ``X-MSS-INS`` is ``O`` when the patient is identified by a qualified
INS (an INS assigning authority, as `gateway.mss.xdm` reads it), else ``N``, and the
subject reads ``XDM/1.0/DDM+<document> <NOM> <prénom> <date de naissance>`` (ECO.2.1.3).

The CDA comes from the vendor: it is parsed by defusedxml (no DTD, no entity, no external
reference) after a size cap, and must be a ClinicalDocument with a code. Sans I/O: bytes
in, an `Xdm` out.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from xml.etree.ElementTree import Element
from xml.sax.saxutils import quoteattr

from gateway.mss.xdm import DEFAULT_LIMITS, HL7_V3, INS_OIDS, XdmError, cda_code, parse_xml

MAX_CDA_BYTES = DEFAULT_LIMITS.max_xml_size  # what the gateway's reader accepts of one XML
LABEL_CHARS = 40  # ECO.2.1.3: the document's label in the subject
SUBJECT_PREFIX = "XDM/1.0/DDM+"
PATIENT_ID_SCHEME = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"  # XDSDocumentEntry.patientId
CLASS_CODE_SCHEME = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"  # XDSDocumentEntry.typeCode
STAMP = (2026, 11, 2, 9, 15, 0)  # the entries' date: the same CDA gives the same archive


class CdaError(ValueError):
    """The file is not a CDA R2 document an archive can be built from (says why)."""


@dataclass(frozen=True, slots=True)
class Patient:
    """``recordTarget/patientRole/id`` and what the subject names of the patient."""

    ident: str
    oid: str
    family: str
    given: str
    birth: str  # YYYYMMDD, as the CDA's birthTime starts, or ""

    @property
    def qualified(self) -> bool:
        return self.oid in INS_OIDS


@dataclass(frozen=True, slots=True)
class Xdm:
    """An archive and the header values of the message that carries it."""

    archive: bytes
    code: str
    title: str
    patient: Patient | None

    @property
    def ins(self) -> str:
        return "O" if self.patient is not None and self.patient.qualified else "N"

    @property
    def subject(self) -> str:
        """ECO.2.1.3's subject: the document's label, then the patient's names and birth
        date (dd/mm/yyyy) when the CDA gives them."""
        parts = [self.title[:LABEL_CHARS].strip() or self.code]
        if self.patient is not None:
            birth = self.patient.birth
            parts += [self.patient.family.upper(), self.patient.given]
            if len(birth) == 8 and birth.isdigit():
                parts.append(f"{birth[6:8]}/{birth[4:6]}/{birth[0:4]}")
        return SUBJECT_PREFIX + " ".join(p for p in parts if p)

    def headers(self) -> list[tuple[str, str]]:
        return [("X-MSS-CODECDA", self.code), ("X-MSS-INS", self.ins)]


def _hl7(path: str) -> str:
    return "/".join(f"{{{HL7_V3}}}{step}" for step in path.split("/"))


def _text(root: Element, path: str) -> str:
    found = root.find(_hl7(path))
    return " ".join((found.text or "").split()) if found is not None else ""


def read_cda(cda: bytes) -> tuple[str, str, Patient | None]:
    """(code, title, patient) of a CDA R2 document; `CdaError` for anything else."""
    try:  # the gateway's own reader: the same size cap, defusedxml without DTD or entities
        root = parse_xml(cda, "CDA")
    except XdmError as exc:
        raise CdaError(f"document CDA refusé : {exc}") from None
    if root.tag != f"{{{HL7_V3}}}ClinicalDocument":
        raise CdaError("la racine n'est pas un ClinicalDocument (urn:hl7-org:v3)")
    code = cda_code(root) or ""
    if not code or len(code) > 64 or not code.isprintable() or "," in code:
        raise CdaError("ClinicalDocument/code/@code absent ou invalide")
    code_element = root.find(_hl7("code"))
    title = _text(root, "title") or (
        (code_element.get("displayName") or "").strip() if code_element is not None else ""
    )
    role = root.find(_hl7("recordTarget/patientRole"))
    patient = None
    if role is not None:
        ident = next(
            (i for i in role.findall(_hl7("id")) if i.get("root") and i.get("extension")), None
        )
        if ident is not None:
            birth = role.find(_hl7("patient/birthTime"))
            patient = Patient(
                ident=(ident.get("extension") or "").strip(),
                oid=(ident.get("root") or "").strip(),
                family=_text(role, "patient/name/family"),
                given=_text(role, "patient/name/given"),
                birth=((birth.get("value") or "") if birth is not None else "")[:8],
            )
            if not all(c.isprintable() and c not in "^&" for c in patient.ident + patient.oid):
                raise CdaError("identifiant du patient invalide (caractères ^ & interdits)")
    return code, title, patient


def _metadata(code: str, patient: Patient | None) -> bytes:
    identifier = ""
    if patient is not None:
        value = f"{patient.ident}^^^&{patient.oid}&ISO"
        identifier = f"""      <rim:ExternalIdentifier identificationScheme="{PATIENT_ID_SCHEME}"
        value={quoteattr(value)} id="ei1"/>
"""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
  xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">
  <rim:RegistryObjectList>
    <rim:ExtrinsicObject id="DOC0001" mimeType="text/xml">
{identifier}      <rim:Classification classificationScheme="{CLASS_CODE_SCHEME}"
        nodeRepresentation={quoteattr(code)} classifiedObject="DOC0001" id="cl1"/>
    </rim:ExtrinsicObject>
  </rim:RegistryObjectList>
</lcm:SubmitObjectsRequest>
""".encode()


def build_xdm(cda: bytes) -> Xdm:
    """The IHE_XDM.ZIP of one CDA document (deflated, the entries dated `STAMP`)."""
    code, title, patient = read_cda(cda)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in (
            ("INDEX.HTM", b"<html><body>IHE_XDM</body></html>"),
            ("README.TXT", b"Archive IHE_XDM produite par un LPS de test."),
            ("IHE_XDM/SUBSET01/METADATA.XML", _metadata(code, patient)),
            ("IHE_XDM/SUBSET01/DOC0001.XML", cda),
        ):
            info = zipfile.ZipInfo(name, date_time=STAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return Xdm(buffer.getvalue(), code, title, patient)
