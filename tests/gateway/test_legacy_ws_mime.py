"""Historic message objects rebuilt as MIME (deterministically), and MIME read back into
the input of sendMessage / draftMessage."""

from __future__ import annotations

import base64
import contextlib
import copy
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import default
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.backends.legacy_ws.mime import (
    MAX_BODY,
    MimeRejected,
    _quoted_printable,
    content_key,
    historic_date,
    message_to_rfc5322,
    rfc5322_to_message,
)
from gateway.imap.message import ParsedMessage
from mock_operator.seed import ihe_xdm_zip
from mock_operator.server import MockOperator
from tests.gateway.test_legacy_ws_client import DUPONT, INBOX, PETIT, client_for

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4


def sample(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "messageId": "257",
        "folderId": 2,
        "conversationId": "-257",
        "subject": "Résultats d'analyses — Mme GARNIER Louise",
        "body": "Bonjour,\n\nHémoglobine : 12,8 g/dL.\nCordialement,\n",
        "isHTML": False,
        "size": 1234,
        "date": "30/10/2025 09:15:00",
        "emails": [
            {"address": "labo@labo.mssante.fr", "name": "Laboratoire Bio-Santé", "type": "FROM"},
            {"address": DUPONT, "name": "Jean DUPONT", "type": "TO"},
            {"address": PETIT, "name": "Petit, Marie", "type": "CC"},
        ],
        "flags": ["UNREAD", "ATTACHMENT"],
        "priority": "NORMAL",
        "isAccuse": False,
        "attachments": [
            {"part": "2", "fileName": "IHE_XDM.ZIP", "contentType": "application/zip", "size": 1},
            {"part": "3", "fileName": "compte-rendu.pdf", "contentType": "application/pdf"},
        ],
    }
    message.update(changes)
    return message


FILES = {"2": ihe_xdm_zip(), "3": PDF}


def parse(raw: bytes) -> EmailMessage:
    parsed = BytesParser(policy=default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    assert not parsed.defects
    return parsed


def attachments_of(parsed: EmailMessage) -> dict[str, bytes]:
    found = {}
    for part in parsed.iter_attachments():
        assert isinstance(part, Message)
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        found[part.get_filename() or ""] = data
    return found


def test_rebuild_is_deterministic_and_ignores_mutable_fields() -> None:
    first = message_to_rfc5322(sample(), FILES)
    assert first == message_to_rfc5322(copy.deepcopy(sample()), dict(FILES))
    moved = sample(folderId=3, flags=["FLAGGED", "REPLIED"], size=99)
    assert message_to_rfc5322(moved, FILES) == first
    changed = message_to_rfc5322(sample(body="Autre texte"), FILES)
    assert changed != first
    assert content_key(moved) == content_key(sample())
    assert content_key(sample(body="Autre texte")) != content_key(sample())
    boundary = parse(first).get_boundary()
    assert boundary is not None
    assert boundary.startswith("=_lps_")
    assert parse(changed).get_boundary() != boundary


def test_rebuild_is_well_formed_mime() -> None:
    raw = message_to_rfc5322(sample(), FILES)
    lines = raw.split(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 78 for line in lines)
    assert raw.isascii()
    parsed = parse(raw)
    assert parsed["Subject"] == "Résultats d'analyses — Mme GARNIER Louise"
    assert parsed["From"].addresses[0].display_name == "Laboratoire Bio-Santé"
    assert [a.addr_spec for a in parsed["To"].addresses] == [DUPONT]
    assert parsed["Cc"].addresses[0].display_name == "Petit, Marie"
    assert parsed["Date"].datetime.isoformat() == "2025-10-30T09:15:00+01:00"
    assert parsed["Message-ID"].startswith("<257.")
    assert parsed["X-Priority"] is None
    assert parsed["Disposition-Notification-To"] is None
    body = parsed.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == sample()["body"]
    assert attachments_of(parsed) == {"IHE_XDM.ZIP": ihe_xdm_zip(), "compte-rendu.pdf": PDF}
    assert [p.get_content_type() for p in parsed.walk()] == [
        "multipart/mixed",
        "text/plain",
        "application/zip",
        "application/pdf",
    ]


def test_imap_structure_of_a_rebuild() -> None:
    raw = message_to_rfc5322(sample(), FILES)
    message = ParsedMessage(raw)
    assert message.size == len(raw)
    structure = repr(message.bodystructure())
    assert '"application" "zip"' in structure
    assert '"IHE_XDM.ZIP"' in structure
    assert '"quoted-printable"' in structure
    assert repr(ParsedMessage(message_to_rfc5322(sample(), FILES)).bodystructure()) == structure
    envelope = message.envelope()
    assert envelope[0] == b"Thu, 30 Oct 2025 09:15:00 +0100"


def test_non_ascii_names_subjects_and_file_names() -> None:
    long_subject = "Compte rendu opératoire — " + "é" * 200 + " fin"
    name = "Hélène Roux-Ségalen, médecin coordinatrice de l'unité de soins palliatifs"
    file_name = "Lettre de liaison à la sortie — Mme GARNIER Louise (très détaillée).pdf"
    message = sample(
        subject=long_subject,
        emails=[
            {"address": "h.roux@ch.mssante.fr", "name": name, "type": "FROM"},
            {"address": DUPONT, "name": 'Jean "le Docteur" \\ DUPONT', "type": "TO"},
            {"address": PETIT, "name": "", "type": "BCC"},
        ],
        attachments=[{"part": "2", "fileName": file_name, "contentType": "application/pdf"}],
    )
    raw = message_to_rfc5322(message, {"2": PDF})
    assert raw.isascii()
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    parsed = parse(raw)
    assert parsed["Subject"] == long_subject
    # RFC 2047 §6.2: the space between adjacent encoded words is not text. The legacy
    # decoder follows it; the `default` policy's address parser keeps it (a CPython bug).
    raw_from = message_from_bytes(raw)["From"]
    assert str(make_header(decode_header(raw_from))) == f"{name} <h.roux@ch.mssante.fr>"
    assert parsed["To"].addresses[0].display_name == 'Jean "le Docteur" \\ DUPONT'
    assert parsed["Bcc"].addresses[0].addr_spec == PETIT
    assert attachments_of(parsed) == {file_name: PDF}
    ParsedMessage(raw).bodystructure()


def test_html_urgent_read_receipt_and_header_injection() -> None:
    message = sample(
        body="<p>Bonjour <b>Jean</b></p>\n<p>À bientôt</p>",
        isHTML=True,
        priority="HAUTE",
        isAccuse=True,
        subject="Urgent\r\nBcc: evil@example.com",
        attachments=[],
    )
    raw = message_to_rfc5322(message, {})
    parsed = parse(raw)
    assert parsed.get_content_type() == "text/html"
    assert parsed.get_content().replace("\r\n", "\n") == message["body"] + "\n"
    assert parsed["X-Priority"] == "1 (Highest)"
    assert parsed["Importance"] == "high"
    assert parsed["Disposition-Notification-To"] == "<labo@labo.mssante.fr>"
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "Urgent Bcc: evil@example.com"
    urgent_flag = sample(flags=["URGENT"], attachments=[])
    assert parse(message_to_rfc5322(urgent_flag, {}))["Importance"] == "high"


def test_odd_objects_still_rebuild() -> None:
    raw = message_to_rfc5322({"messageId": "1"}, {})
    parsed = parse(raw)
    assert parsed["Date"].datetime.year == 1970
    assert parsed["Message-ID"].startswith("<1.")
    bad = sample(
        emails=[{"address": "a@b.fr>\r\nX-Evil: 1", "type": "TO"}, "junk"],
        headerMessageId="<kept@example.org>",
        attachments=[{"part": "2", "fileName": "", "contentType": "not a type"}],
    )
    parsed = parse(message_to_rfc5322(bad, {"2": b"x"}))
    assert parsed["To"] is None
    assert parsed["X-Evil"] is None
    assert parsed["Message-ID"] == "<kept@example.org>"
    (part,) = parsed.iter_attachments()
    assert part.get_content_type() == "application/octet-stream"
    assert part.get_filename() == "part-2"
    with pytest.raises(KeyError):
        message_to_rfc5322(sample(), {"2": b"only one"})
    assert historic_date({"date": "31/02/2025 00:00:00"}) is None


def test_round_trip_through_both_directions() -> None:
    message = sample(isHTML=True, body="<p>Bonjour</p>", priority="HAUTE", isAccuse=True)
    back = rfc5322_to_message(message_to_rfc5322(message, FILES))
    assert back["subject"] == message["subject"]
    assert back["body"].strip() == "<p>Bonjour</p>"
    assert back["isHTML"] is True
    assert (back["priority"], back["isAccuse"]) == ("HAUTE", True)
    assert back["addresses"] == [
        {"address": DUPONT, "name": "Jean DUPONT", "type": "TO"},
        {"address": PETIT, "name": "Petit, Marie", "type": "CC"},
    ]
    assert back["conversationId"] == "-257"
    assert [
        (a["fileName"], a["contentType"], base64.b64decode(a["file"])) for a in back["attachments"]
    ] == [
        ("IHE_XDM.ZIP", "application/zip", ihe_xdm_zip()),
        ("compte-rendu.pdf", "application/pdf", PDF),
    ]


def submitted(**headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = DUPONT
    message["To"] = "Marie Pétit <marie.petit@sage-femme.mssante.fr>"
    message["Subject"] = "Lettre de liaison"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return message


def test_submission_alternative_priority_receipt_and_envelope_bcc() -> None:
    message = submitted(X_Priority="2", Disposition_Notification_To=DUPONT)
    message.set_content("Bonjour en texte")
    message.add_alternative("<p>Bonjour en HTML</p>", subtype="html")
    message.add_attachment(
        ihe_xdm_zip(), maintype="application", subtype="zip", filename="IHE_XDM.ZIP"
    )
    message.add_attachment(b"\x89PNG", maintype="image", subtype="png")
    result = rfc5322_to_message(bytes(message), envelope_recipients=["Secret@Example.org", PETIT])
    assert result["body"].strip() == "<p>Bonjour en HTML</p>"
    assert result["isHTML"] is True
    assert (result["priority"], result["isAccuse"]) == ("HAUTE", True)
    assert result["addresses"] == [
        {"address": PETIT, "name": "Marie Pétit", "type": "TO"},
        {"address": "secret@example.org", "name": "", "type": "BCC"},
    ]
    files = [(a["fileName"], a["contentType"]) for a in result["attachments"]]
    assert files == [("IHE_XDM.ZIP", "application/zip"), ("part-3", "image/png")]
    assert base64.b64decode(result["attachments"][0]["file"]) == ihe_xdm_zip()

    plain = submitted(Importance="High")
    plain.set_content("Texte seul")
    result = rfc5322_to_message(bytes(plain))
    assert (result["body"], result["isHTML"], result["priority"]) == (
        "Texte seul\n",
        False,
        "HAUTE",
    )
    assert result["isAccuse"] is False
    assert result["attachments"] == []
    normal = submitted(X_Priority="3 (Normal)")
    normal.set_content("x")
    assert rfc5322_to_message(bytes(normal))["priority"] == "NORMAL"


def test_submission_limits() -> None:
    long_subject = submitted()
    del long_subject["Subject"]
    long_subject["Subject"] = "é" * 251
    long_subject.set_content("x")
    with pytest.raises(MimeRejected, match="subject"):
        rfc5322_to_message(bytes(long_subject))
    long_body = submitted()
    long_body.set_content("a" * (MAX_BODY + 1))
    with pytest.raises(MimeRejected, match="body") as too_long:
        rfc5322_to_message(bytes(long_body))
    assert too_long.value.status.startswith("5.")
    fits = submitted()
    fits.set_content("a" * (MAX_BODY - 1))
    assert len(rfc5322_to_message(bytes(fits))["body"]) == MAX_BODY
    with pytest.raises(MimeRejected) as big:
        rfc5322_to_message(bytes(fits), max_size=1000)
    assert big.value.status == "5.3.4"

    deep = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for level in range(1, 30):
        deep += (
            f"--b{level - 1}\r\nContent-Type: multipart/mixed; boundary=b{level}\r\n\r\n".encode()
        )
    with pytest.raises(MimeRejected) as nested:
        rfc5322_to_message(deep)
    assert nested.value.status == "5.6.3"
    many = submitted()
    many.set_content("x")
    for index in range(250):
        many.add_attachment(
            b"x", maintype="application", subtype="octet-stream", filename=f"{index}"
        )
    with pytest.raises(MimeRejected, match="too many parts"):
        rfc5322_to_message(bytes(many))
    bad_address = submitted()
    del bad_address["To"]
    bad_address["To"] = "not an address <@@>"
    bad_address.set_content("x")
    with pytest.raises(MimeRejected):
        rfc5322_to_message(bytes(bad_address))


async def test_seeded_message_round_trip(mock_op: MockOperator) -> None:
    """The seeded IHE_XDM letter, rebuilt: its ZIP intact, parseable by `email` and by the
    IMAP engine; then sent back through sendMessage and received unchanged."""
    async with client_for(mock_op) as legacy:
        inbox = await legacy.search_messages(DUPONT, INBOX)
        letter = next(m for m in inbox if m["attachments"])
        files = {
            a["part"]: await legacy.download_attachment(DUPONT, letter["messageId"], a["part"])
            for a in letter["attachments"]
        }
        raw = message_to_rfc5322(letter, files)
        assert raw == message_to_rfc5322(letter, files)
        parsed = parse(raw)
        assert attachments_of(parsed) == {"IHE_XDM.ZIP": ihe_xdm_zip()}
        assert parsed["Subject"] == letter["subject"]
        structure = repr(ParsedMessage(raw).bodystructure())
        assert '"IHE_XDM.ZIP"' in structure
        again = await legacy.search_messages(DUPONT, INBOX)
        assert (
            message_to_rfc5322(
                next(m for m in again if m["messageId"] == letter["messageId"]), files
            )
            == raw
        )

        outgoing = rfc5322_to_message(raw)
        outgoing["addresses"] = [{"address": PETIT, "name": "", "type": "TO"}]
        outgoing["subject"] = "Transmis : " + letter["subject"]
        sent = await legacy.send_message(DUPONT, outgoing)
        assert sent["subject"] == outgoing["subject"]
        (received,) = await legacy.search_messages(PETIT, INBOX, query={"subject": "Transmis"})
        (attachment,) = received["attachments"]
        data = await legacy.download_attachment(PETIT, received["messageId"], attachment["part"])
        assert data == ihe_xdm_zip()


ALPHABET = b'ab: \r\n-=?;"<>@\x00\xff'


def test_submission_of_odd_input_fails_cleanly() -> None:
    too_long_html = submitted()
    too_long_html.set_content("Le texte")
    too_long_html.add_alternative("<p>" + "a" * MAX_BODY + "</p>", subtype="html")
    result = rfc5322_to_message(bytes(too_long_html))
    assert (result["body"], result["isHTML"]) == ("Le texte\n", False)

    seed = 12345
    for size in range(0, 3000, 97):
        blob = bytearray()
        for _ in range(size):
            seed = (seed * 1103515245 + 12345) % 2**31
            blob.append(ALPHABET[seed % len(ALPHABET)])
        with contextlib.suppress(MimeRejected):  # anything else would be a bug
            rfc5322_to_message(b"Content-Type: multipart/mixed; boundary=-\r\n\r\n" + bytes(blob))


def test_submission_envelope_only_decides_who_receives() -> None:
    """SMTP delivers to the envelope: a header address outside it is not sent to (the
    platform sends to every address it is given), one only in the envelope is a BCC."""
    message = submitted(Cc="Autre <autre@medecin.mssante.fr>")
    message.set_content("Texte")
    result = rfc5322_to_message(
        bytes(message), envelope_recipients=[PETIT.upper(), "cache@example.org"], envelope_only=True
    )
    assert result["addresses"] == [
        {"address": PETIT, "name": "Marie Pétit", "type": "TO"},
        {"address": "cache@example.org", "name": "", "type": "BCC"},
    ]
    everyone = rfc5322_to_message(bytes(message), envelope_recipients=[PETIT])
    assert [a["address"] for a in everyone["addresses"]] == [PETIT, "autre@medecin.mssante.fr"]


def greedy_quoted_printable(text: str) -> list[bytes]:
    """The plain byte-by-byte encoder the fast one must match, octet for octet."""
    out: list[bytes] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        data = line.encode("utf-8", "replace")
        current = b""
        for index, byte in enumerate(data):
            last = index == len(data) - 1
            if (33 <= byte <= 126 and byte != 61) or (byte in (9, 32) and not last):
                token = bytes([byte])
            else:
                token = b"=%02X" % byte
            if len(current) + len(token) > 75:
                out.append(current + b"=")
                current = b""
            current += token
        out.append(current)
    if out and out[-1] == b"":
        out.pop()
    return out


@given(st.text(alphabet=st.sampled_from("aé= \t\r\n€x.Z\x00\x7f"), max_size=400))
def test_quoted_printable_is_the_greedy_encoding(text: str) -> None:
    assert _quoted_printable(text) == greedy_quoted_printable(text)


@pytest.mark.parametrize("width", range(70, 80))
def test_quoted_printable_soft_breaks_never_split_an_escape(width: int) -> None:
    for tail in ("é", "=", " ", "\t", "ab"):
        text = "x" * width + tail + "y" * width
        assert _quoted_printable(text) == greedy_quoted_printable(text)


def test_an_empty_attachment_is_refused_in_words() -> None:
    """The platform would read an empty file as a reference to a stored part and refuse
    the message with a confusing "part missing": the gateway says what is wrong."""
    message = submitted()
    message.set_content("Texte")
    message.add_attachment(b"", maintype="text", subtype="plain", filename="vide.txt")
    with pytest.raises(MimeRejected, match=r"empty attachment 'vide\.txt'") as refused:
        rfc5322_to_message(bytes(message))
    assert refused.value.status == "5.6.0"
