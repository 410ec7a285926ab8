"""BODYSTRUCTURE and ENVELOPE → the historic message object, on bytes (sans-I/O)."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.imap.client import parse_values
from gateway.legacy_front.structure import (
    MAX_DEPTH,
    ImapMessage,
    StructureError,
    attachment_info,
    body_texts,
    decode_part,
    header_fields,
    historic_flags,
    parse_envelope,
    structure_of,
    urgent_of,
)
from gateway.mss.historic_shapes import message_object

LETTER = (
    b'(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 40 2 NIL NIL NIL NIL)'
    b'("application" "zip" ("name" "IHE_XDM.ZIP") NIL NIL "base64" 2020 NIL '
    b'("attachment" ("filename" "IHE_XDM.ZIP")) NIL NIL) "mixed" ("boundary" "b") NIL NIL NIL)'
)
ALTERNATIVE = (
    b'((("text" "plain" ("charset" "iso-8859-1") NIL NIL "8bit" 5 1 NIL NIL NIL NIL)'
    b'("text" "html" ("charset" "utf-8") NIL NIL "base64" 24 1 NIL NIL NIL NIL) "alternative")'
    b'("message" "rfc822" NIL NIL NIL "7bit" 300 ("date" "subj" NIL NIL NIL NIL NIL NIL NIL NIL) '
    b'("text" "plain" NIL NIL NIL "7bit" 10 1) 12 NIL NIL NIL NIL)'
    b'("text" "plain" ("charset" "utf-8" "name*" "utf-8\'\'r%C3%A9sum%C3%A9.txt") '
    b'NIL NIL "7bit" 3 1 NIL NIL NIL NIL)'
    b' "mixed")'
)
ENVELOPE = (
    b'("Mon, 2 Nov 2026 09:00:00 +0100" "=?utf-8?q?R=C3=A9sultats?= du bilan" '
    b'(("Laboratoire Biomed" NIL "resultats" "labo-biomed.mssante.fr")) NIL NIL '
    b'((NIL NIL "claire.martin" "medecin.mssante.fr")(NIL NIL "undisclosed" NIL)(NIL NIL NIL NIL)) '
    b'(("=?utf-8?b?SMOpbMOobmU=?=" NIL "helene.roux" "MEDECIN.mssante.fr")) NIL NIL "<id@labo>")'
)


def value(data: bytes) -> object:
    return parse_values(data)[0]


def test_a_letter_with_an_ihe_xdm_archive() -> None:
    structure = structure_of(value(LETTER))  # type: ignore[arg-type]
    assert structure.text is not None
    assert structure.text.number == "1"
    assert structure.html is None
    [zip_part] = structure.attachments
    info = attachment_info(zip_part)
    assert (info.part, info.file_name, info.content_type) == ("2", "IHE_XDM.ZIP", "application/zip")
    assert info.size == 2020 * 3 // 4
    text, html = body_texts(structure, {"1": b"Bonjour =C3=A0 vous,=\r\nsuite\r\n"})
    assert text == "Bonjour à vous,suite\n"
    assert html is None


def test_nested_alternative_forwarded_message_and_rfc2231_names() -> None:
    structure = structure_of(value(ALTERNATIVE))  # type: ignore[arg-type]
    assert structure.text is not None
    assert structure.html is not None
    assert (structure.text.number, structure.html.number) == ("1.1", "1.2")
    assert structure.text.charset == "iso-8859-1"
    forwarded, named = (attachment_info(p) for p in structure.attachments)
    assert (forwarded.part, forwarded.file_name, forwarded.content_type) == (
        "2",
        "message.eml",
        "message/rfc822",
    )
    assert (named.part, named.file_name) == ("3", "résumé.txt")
    html = b"PHA+SMOpbGxvPC9wPg=="  # <p>Héllo</p>
    text, body_html = body_texts(structure, {"1.1": b"caf\xe9", "1.2": html})
    assert text == "café"
    assert body_html == "<p>Héllo</p>"


def test_an_html_only_message_gets_a_text_body() -> None:
    structure = structure_of(
        value(b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 30 1 NIL NIL NIL NIL)')  # type: ignore[arg-type]
    )
    assert structure.text is None
    text, html = body_texts(structure, {"1": b"<p>Un</p><p>Deux</p>"})
    assert html == "<p>Un</p><p>Deux</p>"
    assert "Un" in text
    assert "Deux" in text


def test_envelope_addresses_and_encoded_words() -> None:
    envelope = parse_envelope(value(ENVELOPE))  # type: ignore[arg-type]
    assert envelope.subject == "Résultats du bilan"
    assert [(e.address, e.name, e.type) for e in envelope.emails] == [
        ("resultats@labo-biomed.mssante.fr", "Laboratoire Biomed", "FROM"),
        ("claire.martin@medecin.mssante.fr", "", "TO"),
        ("helene.roux@medecin.mssante.fr", "Hélène", "CC"),
    ]
    assert envelope.message_id == "<id@labo>"


def test_flags_and_priority() -> None:
    assert historic_flags(
        {"\\Flagged", "\\Answered", "$Forwarded"}, sent=False, attachment=True, urgent=True
    ) == (
        "UNREAD",
        "FLAGGED",
        "ATTACHMENT",
        "REPLIED",
        "FORWARDED",
        "URGENT",
    )
    assert historic_flags(
        {"\\Seen", "\\Draft", "\\Deleted"}, sent=True, attachment=False, urgent=False
    ) == (
        "SENT_BY_ME",
        "DELETED",
        "DRAFT",
    )
    headers = header_fields(
        b"X-Priority: 1 (Highest)\r\nDisposition-Notification-To:\r\n <a@b.fr>\r\n\r\n"
    )
    assert urgent_of(headers)
    assert headers["disposition-notification-to"] == "<a@b.fr>"
    assert not urgent_of(header_fields(b"X-Priority: 3\r\n\r\n"))


def test_the_message_object_in_the_wsdl_order() -> None:
    structure = structure_of(value(LETTER))  # type: ignore[arg-type]
    message = ImapMessage(
        message_id="7",
        folder_id=2,
        conversation_id="7",
        subject="S",
        body_text="b",
        body_html=None,
        size=2100,
        date=dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC),
        emails=(),
        flags=historic_flags(set(), sent=False, attachment=True, urgent=False),
        urgent=False,
        read_receipt=False,
        attachments=[attachment_info(p) for p in structure.attachments],
    )
    shown = message_object(message, html=True)
    assert list(shown) == [
        "messageId", "folderId", "conversationId", "subject", "body", "isHTML", "priority",
        "isAccuse", "size", "date", "emails", "flags", "attachments",
    ]  # fmt: skip
    assert shown["date"] == "02/11/2026 09:00:00"
    assert shown["flags"] == ["UNREAD", "ATTACHMENT"]
    assert shown["attachments"][0]["part"] == "2"


@pytest.mark.parametrize(
    "data",
    [
        b"NIL",
        b'("text")',
        b"(" * (MAX_DEPTH + 2) + b'"text" "plain" NIL NIL NIL "7bit" 1 1' + b")" * (MAX_DEPTH + 2),
        b"(" + b'("text" "plain" NIL NIL NIL "7bit" 1 1)' * 300 + b' "mixed")',
    ],
)
def test_hostile_structures_are_refused(data: bytes) -> None:
    with pytest.raises(StructureError):
        structure_of(value(data))  # type: ignore[arg-type]


def test_decoding_is_lenient_with_broken_base64() -> None:
    structure = structure_of(value(LETTER))  # type: ignore[arg-type]
    assert decode_part(structure.attachments[0], b"!!!not base64") in (
        b"",
        b"\x9e\x8bZ\xb6\xab\x1e",
    )
    with pytest.raises(StructureError):
        parse_envelope(value(b'("date" "subject")'))  # type: ignore[arg-type]
