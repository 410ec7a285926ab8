"""`mock-operator xdm`: the archive a vendor builds reads back through the gateway's own
reader (`gateway.mss.xdm`), and a message carrying it with the printed headers and subject
passes the MSSanté rules the gateway applies; the same message with the other X-MSS-INS
does not. Run as a user would, the command writes the archive 0600 and prints JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from gateway.mss.rules import check_message
from gateway.mss.xdm import read_xdm
from mock_operator.seed import CDA_CODE, PATIENT_INS, cda_document
from mock_operator.xdm import Xdm, build_xdm

pytestmark = pytest.mark.slow

SENDER = "claire.martin@medecin.mssante.fr"
OTHER_CDA = """<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <code code="34133-9" displayName="Synthèse"/>
  <title>Synthèse médicale</title>
  <recordTarget><patientRole>
    <id root="1.2.250.1.71.4.2.1" extension="IPP-0042"/>
    <patient><name><given>Émile</given><family>Lefèvre</family></name>
      <birthTime value="19800302"/></patient>
  </patientRole></recordTarget>
</ClinicalDocument>
""".encode()


def carrying(built: Xdm, *, ins: str | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = "jean.dupont@medecin.mssante.fr"
    message["Subject"] = built.subject
    message["Message-ID"] = "<xdm.1@medecin.mssante.fr>"
    message["Date"] = "Mon, 07 Dec 2026 10:00:00 +0100"
    message["X-MSS-NIL"] = "LPS-TEST-1"
    for name, value in built.headers():
        message[name] = ins if name == "X-MSS-INS" and ins is not None else value
    message.set_content("Document joint.")
    message.add_attachment(
        built.archive, maintype="application", subtype="zip", filename="IHE_XDM.ZIP"
    )
    return message.as_bytes(policy=SMTP)


def test_the_sample_reads_back_and_passes_the_rules() -> None:
    built = build_xdm(cda_document())
    content = read_xdm(built.archive)
    assert content.codes == (CDA_CODE,)
    assert content.patient is not None
    assert (content.patient.value, content.ins_qualified) == (PATIENT_INS, True)
    assert set(content.entries) >= {
        "INDEX.HTM",
        "README.TXT",
        "IHE_XDM/SUBSET01/METADATA.XML",
        "IHE_XDM/SUBSET01/DOC0001.XML",
    }
    assert built.headers() == [("X-MSS-CODECDA", CDA_CODE), ("X-MSS-INS", "O")]
    assert built.subject == "XDM/1.0/DDM+Lettre de liaison à la sortie GARNIER Louise 15/01/1955"
    assert check_message(carrying(built), sender=SENDER).ok
    refused = check_message(carrying(built, ins="N"), sender=SENDER)
    assert [v.rule for v in refused.violations] == ["X-MSS-INS-mismatch"]


def test_a_vendors_cda_without_a_qualified_ins() -> None:
    built = build_xdm(OTHER_CDA)
    assert built.headers() == [("X-MSS-CODECDA", "34133-9"), ("X-MSS-INS", "N")]
    assert built.subject == "XDM/1.0/DDM+Synthèse médicale LEFÈVRE Émile 02/03/1980"
    content = read_xdm(built.archive)
    assert content.codes == ("34133-9",)
    assert content.patient is not None
    assert not content.ins_qualified
    assert check_message(carrying(built), sender=SENDER).ok
    assert not check_message(carrying(built, ins="O"), sender=SENDER).ok


def test_a_cda_without_a_patient_block() -> None:
    bare = b'<ClinicalDocument xmlns="urn:hl7-org:v3"><code code="11488-4"/></ClinicalDocument>'
    built = build_xdm(bare)
    assert (built.ins, built.subject) == ("N", "XDM/1.0/DDM+11488-4")
    content = read_xdm(built.archive)
    assert (content.codes, content.patient) == (("11488-4",), None)
    assert build_xdm(bare).archive == built.archive  # the same CDA, the same archive


def test_the_command_as_a_vendor_runs_it(tmp_path: Path) -> None:
    cda = tmp_path / "synthese.xml"
    cda.write_bytes(OTHER_CDA)
    archive = tmp_path / "IHE_XDM.ZIP"
    command = [str(Path(sys.executable).parent / "mock-operator"), "xdm", "--cda", str(cda)]
    done = subprocess.run(
        [*command, "--output", str(archive), "--json"], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["headers"] == {"X-MSS-CODECDA": "34133-9", "X-MSS-INS": "N"}
    assert printed["size"] == archive.stat().st_size
    assert archive.stat().st_mode & 0o777 == 0o600  # a patient's document
    assert read_xdm(archive.read_bytes()).codes == ("34133-9",)

    text = subprocess.run([*command, "-o", str(archive)], capture_output=True, check=False)
    assert text.returncode == 0
    assert b"X-MSS-INS: N\n" in text.stdout
    assert "Subject: XDM/1.0/DDM+Synthèse".encode() in text.stdout

    cda.write_bytes(b"<html/>")
    refused = subprocess.run([*command, "-o", str(archive)], capture_output=True, check=False)
    assert refused.returncode == 1
    assert b"ClinicalDocument" in refused.stderr
    missing = subprocess.run(
        [*command[:-1], str(tmp_path / "absent.xml")], capture_output=True, check=False
    )
    assert missing.returncode == 1
    assert b"No such file" in missing.stderr
