"""Historic message objects rebuilt as MIME (deterministically), and MIME read back into
the input of sendMessage / draftMessage."""

from __future__ import annotations

import base64
import contextlib
import copy
from dataclasses import dataclass
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import default
from typing import Any

import pytest
from hypothesis import given, settings
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


# -- the main text is the body, every other part is kept ------------------------------------


def files_of(result: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    return [
        (a["fileName"], a["contentType"], base64.b64decode(a["file"]))
        for a in result["attachments"]
    ]


def text_part(text: str, subtype: str = "plain", **options: Any) -> EmailMessage:
    part = EmailMessage()
    part.set_content(text, subtype=subtype, **options)
    return part


def multipart(subtype: str, *children: EmailMessage, **params: str) -> EmailMessage:
    part = EmailMessage()
    part["Content-Type"] = f"multipart/{subtype}"
    for name, value in params.items():
        part.set_param(name, value)
    part.set_payload(list(children))
    return part


def as_submitted(body: EmailMessage) -> bytes:
    """`body` with the headers of `submitted`, as a whole message."""
    for name, value in submitted().items():
        body[name] = value
    return bytes(body)


def test_plain_and_html_side_by_side_are_both_kept() -> None:
    """The issue's case: a multipart/mixed with a text/plain part and a separate text/html
    part. Not alternatives of each other: the first is the body, the other an attachment."""
    plain, html = "Compte rendu en texte, élevé.", "<p>Résultats en <b>HTML</b></p>"
    result = rfc5322_to_message(
        as_submitted(multipart("mixed", text_part(plain), text_part(html, "html")))
    )
    assert (result["body"], result["isHTML"]) == (plain + "\n", False)
    assert files_of(result) == [("part-2.html", "text/html", (html + "\n").encode())]

    result = rfc5322_to_message(
        as_submitted(multipart("mixed", text_part(html, "html"), text_part(plain)))
    )
    assert (result["body"], result["isHTML"]) == (html + "\n", True)
    assert files_of(result) == [("part-2.txt", "text/plain", (plain + "\n").encode())]


def test_only_the_main_text_is_chosen_from() -> None:
    pdf = EmailMessage()
    pdf.set_content(PDF, maintype="application", subtype="pdf", filename="cr.pdf")
    latin = text_part("Deuxième texte", charset="iso-8859-1", cte="quoted-printable")
    body = multipart(
        "mixed",
        multipart("alternative", text_part("Le texte"), text_part("<p>Le HTML</p>", "html")),
        latin,
        pdf,
    )
    result = rfc5322_to_message(as_submitted(body))
    assert (result["body"], result["isHTML"]) == ("<p>Le HTML</p>\n", True)
    assert files_of(result) == [  # a text that is not the body travels as UTF-8
        ("part-2.txt", "text/plain", "Deuxième texte\n".encode()),
        ("cr.pdf", "application/pdf", PDF),
    ]

    # an alternative after the main text: one of its renderings kept (HTML), as a file
    later = multipart("alternative", text_part("Autre texte"), text_part("<p>Autre</p>", "html"))
    result = rfc5322_to_message(as_submitted(multipart("mixed", text_part("Le corps"), later)))
    assert (result["body"], result["isHTML"]) == ("Le corps\n", False)
    assert files_of(result) == [("part-2.2.html", "text/html", b"<p>Autre</p>\n")]

    # a multipart/related whose start is not first: its root is the body, the rest files
    image = EmailMessage()
    image.set_content(b"\x89PNG", maintype="image", subtype="png", cid="<logo@lps>")
    root = text_part('<p><img src="cid:logo@lps"></p>', "html", cid="<root@lps>")
    related = multipart("related", image, root, start="<root@lps>", type="text/html")
    result = rfc5322_to_message(as_submitted(related))
    assert (result["body"], result["isHTML"]) == ('<p><img src="cid:logo@lps"></p>\n', True)
    assert files_of(result) == [("part-1", "image/png", b"\x89PNG")]

    # an alternative neither plain nor HTML is kept; without any plain or HTML, all are
    invitation = text_part("BEGIN:VCALENDAR\nEND:VCALENDAR", "calendar")
    offered = multipart(
        "alternative", text_part("Invitation"), text_part("<p>Inv</p>", "html"), invitation
    )
    result = rfc5322_to_message(as_submitted(offered))
    assert result["body"] == "<p>Inv</p>\n"
    assert files_of(result) == [
        ("part-3.ics", "text/calendar", b"BEGIN:VCALENDAR\nEND:VCALENDAR\n")
    ]
    enriched = text_part("<bold>Texte</bold>", "enriched")
    result = rfc5322_to_message(as_submitted(multipart("alternative", enriched, pdf)))
    assert result["body"] == ""
    assert [name for name, _, _ in files_of(result)] == ["part-1", "cr.pdf"]


def test_a_body_its_charset_does_not_decode_is_kept_as_octets() -> None:
    """No replacement characters in place of the text: UTF-8 under a wrong or unknown label
    is read as UTF-8; octets that nothing decodes travel unchanged, as a file."""
    utf8 = EmailMessage()
    utf8.set_content("Hémoglobine 12,8 g/dL".encode(), maintype="text", subtype="plain", cte="8bit")
    utf8.set_param("charset", "us-ascii")
    result = rfc5322_to_message(as_submitted(utf8))
    assert (result["body"], result["attachments"]) == ("Hémoglobine 12,8 g/dL", [])

    octets = "Hémoglobine 12,8 g/dL".encode("latin-1")
    unknown = EmailMessage()
    unknown.set_content(octets, maintype="text", subtype="plain", cte="base64")
    unknown.set_param("charset", "x-inconnu")
    result = rfc5322_to_message(as_submitted(multipart("mixed", unknown, text_part("Suite"))))
    assert result["body"] == ""
    assert files_of(result) == [
        ("part-1.txt", "text/plain", octets),
        ("part-2.txt", "text/plain", b"Suite\n"),
    ]


def test_a_blank_rendering_is_not_chosen_and_a_blank_part_holds_nothing() -> None:
    blank_html = multipart("alternative", text_part("Le vrai texte"), text_part("  \n", "html"))
    result = rfc5322_to_message(as_submitted(blank_html))
    assert (result["body"], result["isHTML"]) == ("Le vrai texte\n", False)
    trailing = multipart("mixed", text_part("Texte"), text_part("\n", "html"))
    result = rfc5322_to_message(as_submitted(trailing))
    assert (result["body"], result["attachments"]) == ("Texte\n", [])


def test_what_cannot_be_read_whole_is_refused() -> None:
    """Sent on, these would arrive emptied or garbled while the client is told all is well."""
    garbled = text_part("<p>Annexe</p>", "html", cte="base64")
    garbled.set_payload("!!!!\n")
    with pytest.raises(MimeRejected, match=r"part 2: its base64 content cannot be decoded") as no:
        rfc5322_to_message(as_submitted(multipart("mixed", text_part("Texte"), garbled)))
    assert no.value.status == "5.6.0"
    truncated = EmailMessage()
    truncated.set_content(PDF, maintype="application", subtype="pdf", filename="cr.pdf")
    truncated.set_payload("QUJDR\n")  # a length no base64 decoder can use
    with pytest.raises(MimeRejected, match="base64"):
        rfc5322_to_message(as_submitted(multipart("mixed", text_part("Texte"), truncated)))
    no_parts = (
        b"Subject: x\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\nTexte sans parties\r\n"
    )
    with pytest.raises(MimeRejected, match="whose parts cannot be found") as lost:
        rfc5322_to_message(no_parts)
    assert lost.value.status == "5.6.0"


# -- property: every text of the original is somewhere in what the platform gets --------------


@dataclass(frozen=True)
class TextLeaf:
    subtype: str
    text: str
    charset: str  # utf-8, iso-8859-1, or a label Python does not know over UTF-8 / Latin-1 octets
    cte: str
    disposition: str | None
    filename: bool
    long: bool


@dataclass(frozen=True)
class FileLeaf:
    data: bytes
    content_type: str
    disposition: str | None
    filename: bool


@dataclass(frozen=True)
class MessageLeaf:
    text: str


@dataclass(frozen=True)
class Multi:
    subtype: str
    children: tuple[Any, ...]


TEXTS = st.text(alphabet="abcXYZ 0123éàçœ€<>&;\n", max_size=30)
LEAVES = st.one_of(
    st.builds(
        TextLeaf,
        st.sampled_from(["plain", "html"]),
        TEXTS,
        st.sampled_from(["utf-8", "iso-8859-1", "x-unknown-utf-8", "x-unknown-latin-1"]),
        st.sampled_from(["8bit", "quoted-printable", "base64"]),
        st.sampled_from([None, "inline", "attachment"]),
        st.booleans(),
        st.sampled_from([False] * 9 + [True]),
    ),
    st.builds(
        FileLeaf,
        st.binary(min_size=1, max_size=40),
        st.sampled_from(["application/pdf", "image/png"]),
        st.sampled_from([None, "inline", "attachment"]),
        st.booleans(),
    ),
    st.builds(MessageLeaf, TEXTS),
)
TREES = st.recursive(
    LEAVES,
    lambda children: st.builds(
        Multi,
        st.sampled_from(["mixed", "alternative", "related"]),
        st.lists(children, min_size=1, max_size=3).map(tuple),
    ),
    max_leaves=7,
)


@dataclass(frozen=True)
class Wanted:
    """What must be found: "text" (its words, or its octets `raw`), "file" (`raw`),
    "message" (an attached message with these words), "all" or "any" of `children`."""

    kind: str
    words: str = ""
    raw: bytes = b""
    children: tuple[Wanted, ...] = ()


def words(text: str) -> str:
    return " ".join(text.split())


class Builder:
    def __init__(self) -> None:
        self.count = 0
        self.long = False

    def marker(self) -> str:
        self.count += 1
        return f"T{self.count}Z "

    def build(self, node: Any, part: EmailMessage) -> Wanted:
        if isinstance(node, Multi):
            parts = [EmailMessage() for _ in node.children]
            pairs = zip(node.children, parts, strict=True)
            wanted = tuple(self.build(child, p) for child, p in pairs)
            part["Content-Type"] = f"multipart/{node.subtype}"
            part.set_payload(list(parts))
            return Wanted("any" if node.subtype == "alternative" else "all", children=wanted)
        if isinstance(node, FileLeaf):
            maintype, subtype = node.content_type.split("/")
            name = f"f{self.count}.bin" if node.filename else None
            part.set_content(
                node.data,
                maintype=maintype,
                subtype=subtype,
                disposition=node.disposition,
                filename=name,
            )
            return Wanted("file", raw=node.data)
        if isinstance(node, MessageLeaf):
            inner = EmailMessage()
            inner["Subject"] = "Transféré"
            text = self.marker() + node.text
            inner.set_content(text)
            part.set_content(inner)
            return Wanted("message", words=words(text))
        text = self.marker() + node.text + ("x" * MAX_BODY if node.long else "")
        self.long |= node.long
        codec = "utf-8" if node.charset.endswith("utf-8") else "iso-8859-1"
        octets = text.encode(codec, "replace")  # Latin-1 has no œ nor €: "?"
        text = octets.decode(codec)
        part.set_content(
            octets,
            maintype="text",
            subtype=node.subtype,
            cte=node.cte,
            disposition=node.disposition,
            filename=f"t{self.count}.txt" if node.filename else None,
        )
        part.set_param("charset", codec if node.charset == codec else "x-unknown")
        return Wanted("text", words=words(text), raw=octets)


def found(wanted: Wanted, result: dict[str, Any]) -> bool:
    files = [(a["contentType"], base64.b64decode(a["file"])) for a in result["attachments"]]
    if wanted.kind == "all":
        return all(found(child, result) for child in wanted.children)
    if wanted.kind == "any":
        return any(found(child, result) for child in wanted.children)
    if wanted.kind == "file":
        return any(data == wanted.raw for _, data in files)
    if wanted.kind == "message":
        for content_type, data in files:
            inner = BytesParser(policy=default).parsebytes(data)
            if content_type == "message/rfc822" and wanted.words in words(inner.get_content()):
                return True
        return False
    if not wanted.words or wanted.words in words(result["body"]):
        return True
    for _, data in files:
        lines = data.replace(b"\r\n", b"\n")  # a text in canonical form has CRLF line ends
        if wanted.raw in lines or wanted.words in words(data.decode("utf-8", "replace")):
            return True
    return False


@settings(max_examples=150, deadline=None)
@given(TREES)
def test_every_text_of_a_submission_reaches_the_platform(tree: Any) -> None:
    """For any MIME tree, what the gateway hands the platform holds every text leaf (as
    the body or an attachment) and every file, all of them but those of the alternatives
    not chosen; or it is refused, and only for a body over the platform's limit."""
    builder = Builder()
    root = submitted()
    wanted = builder.build(tree, root)
    raw = root.as_bytes(policy=default.clone(linesep="\r\n"))
    outcome: dict[str, Any] | MimeRejected
    try:
        outcome = rfc5322_to_message(raw)
    except MimeRejected as refusal:
        outcome = refusal
    if isinstance(outcome, MimeRejected):
        assert builder.long, outcome.reason
        assert (outcome.status, outcome.reason) == (
            "5.3.4",
            f"body longer than {MAX_BODY} characters",
        )
        return
    assert found(wanted, outcome), (raw[:3000], outcome["body"][:200], files_of(outcome))


def test_message_parts_are_rebuilt_as_themselves() -> None:
    """A forwarded message and a read receipt's fields reach IMAP clients as message/*
    parts of 7bit or 8bit lines (RFC 2046 §5.2 forbids base64 there), byte for byte; a
    part whose lines could not travel so stays in base64."""
    forwarded = (
        "From: labo@labo.mssante.fr\r\nSubject: Résultats transmis\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Hémoglobine : 12,8 g/dL.\r\n"
    ).encode()
    fields = (
        b"Final-Recipient: rfc822;a@b.mssante.fr\r\n"
        b"Disposition: manual-action/MDN-sent-manually; displayed\r\n"
    )
    long_line = b"X: " + b"a" * 1200 + b"\r\n"
    message = sample(
        attachments=[
            {"part": "2", "fileName": "message.eml", "contentType": "message/rfc822"},
            {"part": "3", "fileName": "part-3", "contentType": "message/disposition-notification"},
            {"part": "4", "fileName": "part-4", "contentType": "message/delivery-status"},
        ]
    )
    raw = message_to_rfc5322(message, {"2": forwarded, "3": fields, "4": long_line})
    assert fields in raw
    assert "Hémoglobine : 12,8 g/dL.".encode() in raw
    parsed = parse(raw)
    kinds = {
        p.get_content_type(): p["Content-Transfer-Encoding"] for p in parsed.iter_attachments()
    }
    assert kinds == {
        "message/rfc822": "8bit",
        "message/disposition-notification": "7bit",
        "message/delivery-status": "base64",
    }
    back = rfc5322_to_message(raw)
    types = [(a["fileName"], a["contentType"]) for a in back["attachments"]]
    assert types == [
        ("message.eml", "message/rfc822"),
        ("part-3", "message/disposition-notification"),
        ("part-4", "message/delivery-status"),
    ]
    inner = BytesParser(policy=default).parsebytes(base64.b64decode(back["attachments"][0]["file"]))
    assert inner["Subject"] == "Résultats transmis"
    assert b"manual-action/MDN-sent-manually" in base64.b64decode(back["attachments"][1]["file"])


@pytest.mark.parametrize(
    ("second", "report_type"),
    [
        ("message/disposition-notification", "disposition-notification"),
        ("message/delivery-status", "delivery-status"),
        ("application/pdf", None),
    ],
)
def test_a_report_is_rebuilt_as_a_report(second: str, report_type: str | None) -> None:
    """A read or delivery report (RFC 6522) kept by the platform as a body and files comes
    back a multipart/report of the same type, its returned headers as themselves; a letter
    whose first file is a PDF stays multipart/mixed."""
    headers = b"From: a@b.mssante.fr\r\nSubject: Compte rendu\r\n"
    message = sample(
        attachments=[
            {"part": "2", "fileName": "part-2", "contentType": second},
            {"part": "3", "fileName": "part-3", "contentType": "text/rfc822-headers"},
        ]
    )
    raw = message_to_rfc5322(message, {"2": b"Final-Recipient: rfc822;a@b\r\n", "3": headers})
    parsed = parse(raw)
    if report_type is None:
        assert parsed.get_content_type() == "multipart/mixed"
        return
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == report_type
    returned = list(parsed.iter_parts())[2]
    assert returned["Content-Transfer-Encoding"] == "7bit"
    assert headers in raw
    back = rfc5322_to_message(raw)
    assert [a["contentType"] for a in back["attachments"]] == [second, "text/rfc822-headers"]
