"""Realistic French messages for the seeded BAL, one of them with an IHE_XDM.ZIP (CDA R2).

Deterministic: the same persona gets the same messages (dates, Message-IDs) every time,
so tests can rely on them and a re-seed does not duplicate anything.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from mock_operator.personas import Persona
from mock_operator.xdm import build_xdm

SOFTWARE_NIL = "MOCK-LPS-0001"  # the convergence-portal registration number of the seeded LPS
CDA_CODE = "11490-0"  # LOINC: lettre de liaison à la sortie d'un établissement de soins
PATIENT_INS = "255017512345678"
PARIS = dt.timezone(dt.timedelta(hours=1))
BASE_DATE = dt.datetime(2026, 11, 2, 9, 15, tzinfo=PARIS)


@dataclass(frozen=True)
class SeedMessage:
    folder: str
    raw: bytes
    flags: tuple[str, ...]
    internal_date: dt.datetime


def cda_document(code: str = CDA_CODE) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <realmCode code="FR"/>
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <id root="1.2.250.1.213.1.1.9" extension="DOC-2026-0001"/>
  <code code="{code}" codeSystem="2.16.840.1.113883.6.1"
        displayName="Lettre de liaison à la sortie"/>
  <title>Lettre de liaison à la sortie</title>
  <effectiveTime value="20261102091500+0100"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  <languageCode code="fr-FR"/>
  <recordTarget><patientRole>
    <id root="1.2.250.1.213.1.4.8" extension="{PATIENT_INS}"/>
    <patient><name><given>Louise</given><family>GARNIER</family></name>
      <administrativeGenderCode code="F" codeSystem="2.16.840.1.113883.5.1"/>
      <birthTime value="19550115"/></patient>
  </patientRole></recordTarget>
  <component><nonXMLBody><text mediaType="text/plain">Patiente sortie le 2 novembre,
    traitement inchangé.</text></nonXMLBody></component>
</ClinicalDocument>
""".encode()


def ihe_xdm_zip(code: str = CDA_CODE) -> bytes:
    """An IHE_XDM.ZIP: METADATA.XML names the patient, DOC0001.XML is the CDA document."""
    return build_xdm(cda_document(code)).archive


def _message(
    sender: tuple[str, str],
    recipient: tuple[str, str],
    subject: str,
    body: str,
    when: dt.datetime,
    *,
    key: str,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"{sender[0]} <{sender[1]}>"
    message["To"] = f"{recipient[0]} <{recipient[1]}>"
    message["Subject"] = subject
    message["Date"] = format_datetime(when)
    message["Message-ID"] = f"<{when:%Y%m%d%H%M}.{key}@mock.mssante.fr>"
    message["X-MSS-NIL"] = SOFTWARE_NIL
    message.set_content(body)
    return message


def _raw(message: EmailMessage) -> bytes:
    """RFC 5322 on the wire: CRLF line ends."""
    return message.as_bytes(policy=SMTP)


@functools.lru_cache(maxsize=64)
def seed_messages(persona: Persona) -> tuple[SeedMessage, ...]:
    """The messages a persona's BAL starts with (built once per persona: every start of the
    mock seeds the same bytes, and building MIME with an XDM archive is not free)."""
    assert persona.bal is not None
    me = (persona.display_name, persona.bal)
    lab = ("Laboratoire Biomed", "resultats@labo-biomed.mssante.fr")
    hospital = ("CH de Villeneuve - Médecine interne", "medecine-interne@ch-villeneuve.mssante.fr")
    colleague = ("Dr Hélène ROUX", "helene.roux@medecin.mssante.fr")
    messages: list[SeedMessage] = []

    first = _message(
        lab,
        me,
        "Résultats d'analyses — Mme GARNIER Louise",
        "Bonjour,\n\nVeuillez trouver les résultats du bilan sanguin du 30 octobre.\n"
        "Hémoglobine : 12,8 g/dL. Créatinine : 71 µmol/L.\n\nCordialement,\nLe laboratoire\n",
        BASE_DATE,
        key=f"{persona.key}.1",
    )
    messages.append(SeedMessage("INBOX", _raw(first), ("\\Seen",), BASE_DATE))

    when = BASE_DATE + dt.timedelta(days=1, hours=2)
    letter = _message(
        hospital,
        me,
        "XDM/1.0/DDM+Lettre de liaison à la sortie",
        "Bonjour,\n\nVous trouverez ci-joint la lettre de liaison de votre patiente,\n"
        "Mme GARNIER Louise, sortie ce jour.\n\nConfraternellement,\n",
        when,
        key=f"{persona.key}.2",
    )
    letter["X-MSS-CODECDA"] = CDA_CODE
    letter["X-MSS-INS"] = "O"
    letter.add_attachment(
        ihe_xdm_zip(), maintype="application", subtype="zip", filename="IHE_XDM.ZIP"
    )
    letter.set_boundary(f"=_mss_{persona.key}")
    messages.append(SeedMessage("INBOX", _raw(letter), (), when))

    when = BASE_DATE + dt.timedelta(days=3, hours=5)
    question = _message(
        colleague,
        me,
        "Avis sur un patient commun",
        "Chère consœur, cher confrère,\n\nPourriez-vous me rappeler au sujet de M. Petitjean ?\n"
        "Son traitement anticoagulant doit être réévalué avant l'intervention.\n\nBien à vous,\n"
        "Hélène Roux\n",
        when,
        key=f"{persona.key}.3",
    )
    messages.append(SeedMessage("INBOX", _raw(question), ("\\Flagged",), when))

    when = BASE_DATE + dt.timedelta(days=3, hours=6)
    answer = _message(
        me,
        colleague,
        "Re: Avis sur un patient commun",
        "Bonjour,\n\nJe vous appelle demain matin.\n\nBien cordialement,\n"
        f"{persona.display_name}\n",
        when,
        key=f"{persona.key}.4",
    )
    answer["In-Reply-To"] = question["Message-ID"]
    answer["References"] = question["Message-ID"]
    messages.append(SeedMessage("Envoyés", _raw(answer), ("\\Seen",), when))
    return tuple(messages)
