"""Reports on the historic platform (`gateway.mss.historic_mime`): a delivery status (RFC
3464) or a read receipt (RFC 8098) is one part of its own type, as IMAP numbers it, whose
fields stay whole; written back as MIME, its fields are themselves, not base64 (RFC 2046
§5.2: message/* is never encoded)."""

from __future__ import annotations

import datetime as dt

from gateway.mss.historic_mime import Composition, build_mime, parse_mime

DSN = (
    b"From: MAILER-DAEMON@mock.mssante.fr\r\nTo: jean.dupont@medecin.mssante.fr\r\n"
    b"Subject: Avis de remise\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\nVotre message a ete remis.\r\n"
    b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
    b"Reporting-MTA: dns; mock.mssante.fr\r\nOriginal-Envelope-Id: QQ314159\r\n\r\n"
    b"Final-Recipient: rfc822; claire.martin@medecin.mssante.fr\r\n"
    b"Action: delivered\r\nStatus: 2.0.0\r\n\r\n"
    b"--B--\r\n"
)


def receipt(fields: bytes) -> Composition:
    """A read receipt composed on the platform: a text, and the report's fields."""
    return Composition(
        sender=("jean.dupont@medecin.mssante.fr", "Jean DUPONT"),
        recipients=(("marie.petit@sage-femme.mssante.fr", "", "TO"),),
        subject="Accusé de lecture",
        body="Votre message a été lu.",
        is_html=False,
        urgent=False,
        read_receipt=False,
        attachments=(("part-2", "message/disposition-notification", fields),),
        message_id="<mdn.2@medecin.mssante.fr>",
        date=dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC),
    )


def test_a_delivery_status_is_one_part_with_every_block() -> None:
    parsed = parse_mime(DSN)
    assert parsed.body_text.strip() == "Votre message a ete remis."
    (report,) = parsed.attachments
    assert (report.part, report.content_type) == ("2", "message/delivery-status")
    assert b"Original-Envelope-Id: QQ314159\r\n" in report.data
    assert b"Action: delivered\r\nStatus: 2.0.0\r\n" in report.data  # the second block too


def test_a_report_part_is_written_as_itself() -> None:
    fields = (
        b"Reporting-UA: lps.example; Mon LPS\r\nFinal-Recipient: rfc822;a@b.mssante.fr\r\n"
        b"Disposition: manual-action/MDN-sent-manually; displayed\r\n"
    )
    raw = build_mime(receipt(fields), with_bcc=False)
    assert b"Content-Type: message/disposition-notification" in raw
    assert b"Disposition: manual-action/MDN-sent-manually; displayed" in raw  # not base64
    (report,) = parse_mime(raw).attachments
    assert report.content_type == "message/disposition-notification"
    assert b"Disposition: manual-action/MDN-sent-manually; displayed\r\n" in report.data


def test_report_fields_holding_the_boundary_are_encoded_instead() -> None:
    """Fields that hold the boundary given to `build_mime` would end the part early and
    forge the parts after it: such a part is encoded (base64), its bytes kept."""
    forged = b"X: 1\r\n--=_forged\r\nContent-Type: text/html\r\n\r\n<b>faux</b>\r\n"
    raw = build_mime(receipt(forged), with_bcc=False, boundary="=_forged")
    parsed = parse_mime(raw)
    assert parsed.body_html is None
    (report,) = parsed.attachments
    assert report.content_type == "message/disposition-notification"
