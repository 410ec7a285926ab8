"""The test messages the runner puts in an LPS's INBOX at its first login: a report with an
IHE_XDM.ZIP, a message asking for a read receipt, one with non-ASCII names, a large one.
The LPS is then judged on what it does with them (fetches, read receipt, reply)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid

from mock_operator.seed import cda_document
from mock_operator.xdm import build_xdm

LARGE_ATTACHMENT = 5 * 1024 * 1024
MDN_SUBJECT = "Demande d'accusé de lecture"


@dataclasses.dataclass(frozen=True)
class Sample:
    kind: str  # "xdm", "mdn-request", "non-ascii", "large"
    subject: str
    message_id: str
    raw: bytes


def samples(to: str, sender: str, sender_name: str, domain: str, now: dt.datetime) -> list[Sample]:
    built = []
    for kind in ("xdm", "mdn-request", "non-ascii", "large"):
        message = EmailMessage()
        message["From"] = formataddr((sender_name, sender))
        message["To"] = to
        message["Date"] = format_datetime(now)
        message["Message-ID"] = make_msgid("conformance", domain=domain)
        message["X-MSS-NIL"] = "MOCK-OPERATOR-CONFORMANCE"
        if kind == "xdm":
            xdm = build_xdm(cda_document())
            message["Subject"] = xdm.subject
            for name, value in xdm.headers():
                message[name] = value
            message.set_content("Compte rendu ci-joint (IHE_XDM.ZIP).\n")
            message.add_attachment(
                xdm.archive, maintype="application", subtype="zip", filename="IHE_XDM.ZIP"
            )
        elif kind == "mdn-request":
            message["Subject"] = MDN_SUBJECT
            message["Disposition-Notification-To"] = sender
            message.set_content(
                "Merci de confirmer la lecture de ce message (accusé de lecture).\n"
            )
        elif kind == "non-ascii":
            message["Subject"] = "Échographie de Mme Hélène Lefèvre — résultats"
            message.set_content("Résultats de l'échographie, pièce jointe accentuée.\n")
            message.add_attachment(
                "Compte rendu d'échographie\n".encode(),
                maintype="text",
                subtype="plain",
                filename="compte-rendu-échographie.txt",
            )
        else:
            message["Subject"] = "Imagerie volumineuse"
            message.set_content("Images jointes.\n")
            message.add_attachment(
                bytes(range(256)) * (LARGE_ATTACHMENT // 256),
                maintype="application",
                subtype="octet-stream",
                filename="imagerie.bin",
            )
        raw = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        built.append(Sample(kind, str(message["Subject"]), str(message["Message-ID"]), raw))
    return built
