"""check_message: each X-MSS-* rule of DOMAIN.md §2, positive and negative."""

from __future__ import annotations

import base64
import email
from collections.abc import Sequence
from email.policy import compat32

import pytest

from gateway.mss import rules
from gateway.mss.rules import DEFAULT_MAX_SIZE, RULES, RuleResult, check_message
from gateway.mss.xdm import DEFAULT_LIMITS, XdmLimits
from mock_operator.seed import CDA_CODE, SOFTWARE_NIL, cda_document, ihe_xdm_zip
from tests.mss.builders import (
    BILLION_LAUGHS,
    HOSPITAL,
    LAB,
    MIB,
    PATIENT,
    make_zip,
    metadata_with,
    seeded,
    seeded_letter,
    seeded_plain,
    variant,
    without_metadata,
    xdm_entries,
    xdm_with,
    zeros_zip,
)

TWO_DOCUMENTS = {
    "IHE_XDM/SUBSET01/DOC0001.XML": cda_document("11490-0"),
    "IHE_XDM/SUBSET01/DOC0002.XML": cda_document("11502-2"),
}


def check(
    raw: bytes,
    *,
    sender: str = HOSPITAL,
    default_nil: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    recipients: Sequence[str] = (),
    xdm_limits: XdmLimits = DEFAULT_LIMITS,
) -> RuleResult:
    """check_message, asserting on the way that every violation text fits an SMTP reply."""
    result = check_message(
        raw,
        sender=sender,
        default_nil=default_nil,
        max_size=max_size,
        recipients=recipients,
        xdm_limits=xdm_limits,
    )
    for violation in result.violations:  # every text is fit for an SMTP reply
        assert violation.text.isascii()
        assert violation.text.isprintable()
        assert " / " in violation.text  # French / English
        assert violation.reply.startswith(f"{violation.code} ")
        assert violation.rule in RULES  # the closed list the policy and usage figures know
    return result


def letter(**headers: str | None) -> bytes:
    return variant(seeded_letter(), headers={k.replace("_", "-"): v for k, v in headers.items()})


# -- the seeded messages are all valid -------------------------------------------------------


def test_seeded_letter_is_valid() -> None:
    result = check(seeded_letter())
    assert result.ok
    assert result.violations == []
    assert result.headers_to_add == []


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_every_seeded_message_is_valid(index: int) -> None:
    raw = seeded()[index]
    senders = [LAB, HOSPITAL, "helene.roux@medecin.mssante.fr", "claire.martin@medecin.mssante.fr"]
    assert check_message(raw, sender=senders[index]).ok


# -- size --------------------------------------------------------------------------------------


def test_oversized_message() -> None:
    raw = seeded_letter()
    result = check(raw, max_size=len(raw) - 1)
    assert result.rules == ["message-too-big"]
    violation = result.violations[0]
    assert violation.code == "5.3.4"
    assert violation.smtp_code == 552
    assert "too big" in violation.text
    assert str(len(raw)) in violation.text


def test_default_limit_is_25_mib() -> None:
    raw = seeded_letter()
    assert check(raw + b"x" * (25 * MIB - len(raw))).ok
    assert check(raw + b"x" * (25 * MIB - len(raw) + 1)).rules == ["message-too-big"]


def test_size_limit_is_inclusive() -> None:
    raw = seeded_letter()
    assert check(raw, max_size=len(raw)).ok


# -- X-MSS-NIL ---------------------------------------------------------------------------------


def test_missing_nil_without_default() -> None:
    result = check(letter(X_MSS_NIL=None))
    assert result.rules == ["X-MSS-NIL-missing"]
    assert result.violations[0].code == "5.6.0"
    assert result.violations[0].smtp_code == 554
    assert result.headers_to_add == []


def test_missing_nil_with_default_is_added() -> None:
    result = check(letter(X_MSS_NIL=None), default_nil="LPS-REG-42")
    assert result.ok
    assert result.headers_to_add == [("X-MSS-NIL", "LPS-REG-42")]


def test_present_nil_is_kept() -> None:
    result = check(seeded_letter(), default_nil="LPS-REG-42")
    assert result.ok
    assert result.headers_to_add == []


def test_empty_nil() -> None:
    assert check(letter(X_MSS_NIL=" "), default_nil="LPS-REG-42").rules == ["X-MSS-NIL-empty"]


def test_duplicate_nil() -> None:
    raw = b"X-MSS-NIL: OTHER-LPS\r\n" + seeded_letter()
    assert check(raw).rules == ["X-MSS-NIL-duplicate"]


@pytest.mark.parametrize("bad", ["", "A\r\nBcc: x@y.fr", "A\nB"])
def test_invalid_default_nil_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ValueError, match="X-MSS-NIL"):
        check_message(seeded_letter(), sender=HOSPITAL, default_nil=bad)


# -- From ---------------------------------------------------------------------------------------


def test_from_matches_case_insensitively() -> None:
    assert check(seeded_letter(), sender=HOSPITAL.upper()).ok


def test_from_mismatch() -> None:
    result = check(seeded_letter(), sender="claire.martin@medecin.mssante.fr")
    assert result.rules == ["From-mismatch"]
    assert result.violations[0].code == "5.7.1"
    assert result.violations[0].smtp_code == 550
    assert "claire.martin@medecin.mssante.fr" in result.violations[0].text


@pytest.mark.parametrize(
    "value",
    [
        None,
        f"{HOSPITAL}, other@ch-villeneuve.mssante.fr",
        f"other@ch-villeneuve.mssante.fr, {HOSPITAL}",
        f"Service: {HOSPITAL};",
        f"{HOSPITAL})<attacker@evil.invalid>",
        f"attacker@evil.invalid)<{HOSPITAL}>",
        f"<{HOSPITAL}",
        "",
    ],
)
def test_from_must_be_exactly_the_sender(value: str | None) -> None:
    raw = seeded_letter()
    if value is None:
        raw = variant(raw, headers={"From": None})
    else:
        raw = variant(raw, headers={"From": None})
        raw = f"From: {value}\r\n".encode() + raw
    assert check(raw).rules == ["From-mismatch"]


def test_two_from_fields() -> None:
    raw = f"From: {HOSPITAL}\r\n".encode() + seeded_letter()
    assert check(raw).rules == ["From-mismatch"]


def test_from_with_encoded_display_name() -> None:
    raw = variant(seeded_letter(), headers={"From": f"Médecine interne <{HOSPITAL}>"})
    assert check(raw).ok


def _with_lines(*lines: bytes, after_from: bool = True) -> bytes:
    """The seeded letter with raw header lines inserted after its (folded) From, or first."""
    raw = seeded_letter()
    head, sep, rest = raw.partition(b"\r\nTo: ")
    inserted = b"".join(b"\r\n" + line for line in lines)
    if after_from:
        return head + inserted + sep + rest
    return b"".join(line + b"\r\n" for line in lines) + raw


@pytest.mark.parametrize(
    ("lines", "after_from", "why"),
    [
        ([b"From : eve.moreau@medecin.mssante.fr"], True, "before the colon"),
        ([b"From\t: eve.moreau@medecin.mssante.fr"], True, "before the colon"),
        ([b"From eve.moreau@medecin.mssante.fr Sat Dec  5 10:00:00 2026"], False, "mbox"),
        ([b"X-Note nothing", b"From: eve.moreau@medecin.mssante.fr"], True, "no colon"),
        ([b"X-Note: a\nFrom: eve.moreau@medecin.mssante.fr"], True, "bare CR or LF"),
        ([b"X-Note: a\rFrom: eve.moreau@medecin.mssante.fr"], True, "bare CR or LF"),
        ([b"X-Note: a", b"   "], True, "white-space-only"),
        ([b" X-Note: a"], False, "without a field"),
        ([b"X-No\x00te: a"], True, "NUL"),
        ([b"X-Note: a\x00b"], True, "NUL"),
        ([b"X-Note: a\x0bFrom: eve.moreau@medecin.mssante.fr"], True, "control character"),
        ([b"X-Note: a\x0cb"], True, "control character"),
        ([b"X-Note: a\x1cFrom: eve.moreau@medecin.mssante.fr"], True, "control character"),
        (["X-Note: a\u2028From: eve@x.fr".encode()], True, "control character"),
        ([b"X-Note: a\xc2\x85From: eve@x.fr"], True, "control character"),
        ([b"X-N\xc3\xa9: a"], True, "not a header field"),
    ],
)
def test_a_header_line_the_check_cannot_read_is_refused(
    lines: list[bytes], after_from: bool, why: str
) -> None:
    result = check(_with_lines(*lines, after_from=after_from))
    assert result.rules == ["header-unreadable"]
    assert result.violations[0].code == "5.6.0"
    assert why in result.violations[0].text
    assert "line " in result.violations[0].text


def test_the_refusal_names_the_line() -> None:
    result = check(_with_lines(b"From : eve.moreau@medecin.mssante.fr"))
    assert "line 3: 'From : eve.moreau@medecin.mssante.fr'" in result.violations[0].text


def test_a_blank_line_of_another_kind_does_not_end_the_header_early() -> None:
    """CRLF message, then a bare LF "blank" line: a server reading CRLF lines would go on
    reading headers past it."""
    raw = seeded_letter().replace(b"\r\n", b"\r\n\nFrom: eve.moreau@medecin.mssante.fr\r\n", 1)
    assert check(raw).rules == ["header-unreadable"]


def test_a_message_with_lf_line_ends_is_read() -> None:
    raw = seeded_letter().replace(b"\r\n", b"\n")
    assert check(raw).ok


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (f'"eve.moreau@medecin.mssante.fr" <{HOSPITAL}>', "From-display-address"),
        (f"eve.moreau@medecin.mssante.fr <{HOSPITAL}>", "From-mismatch"),  # not one address
        (f"Dr MOREAU (eve.moreau@medecin.mssante.fr) <{HOSPITAL}>", "From-display-address"),
        (f"{HOSPITAL} (eve.moreau@medecin.mssante.fr)", "From-display-address"),
        (
            f"=?utf-8?b?ZXZlLm1vcmVhdUBtZWRlY2luLm1zc2FudGUuZnI=?= <{HOSPITAL}>",
            "From-display-address",
        ),
        (f'"eve.moreau\uff20medecin.mssante.fr" <{HOSPITAL}>', "From-display-address"),
        (f'"x.{HOSPITAL}" <{HOSPITAL}>', "From-display-address"),
        (f"=?utf-8*fr?q?eve=40x=2Efr?= <{HOSPITAL}>", "From-display-address"),
        (f'"\\"ceo\\"@evil.com" <{HOSPITAL}>', "From-display-address"),
        (f"\"'ceo'@evil.com\" <{HOSPITAL}>", "From-display-address"),
        (f'"ceo@[10.0.0.1]" <{HOSPITAL}>', "From-display-address"),
        (f"=?utf-8?q?eve.moreau=1C=40medecin.mssante.fr?= <{HOSPITAL}>", "From-display-address"),
        (f"=?utf-8?q?eve=C2=85=40x.fr?= <{HOSPITAL}>", "From-display-address"),
    ],
)
def test_a_from_display_name_naming_another_address_is_refused(value: str, rule: str) -> None:
    raw = variant(seeded_letter(), headers={"From": None})
    result = check(f"From: {value}\r\n".encode() + raw)
    assert result.rules == [rule]
    assert result.violations[0].code == "5.7.1"


@pytest.mark.parametrize(
    "value",
    [
        "Clémence MARTIN <{bal}>".encode("latin-1"),  # 8-bit Latin-1, older software
        "Clémence MARTIN <{bal}>".encode(),  # 8-bit UTF-8 (RFC 6532)
        "=?utf-8?q?Dr?= Clémence <{bal}>".encode(),  # an encoded word beside raw UTF-8
        b"=?unknown-8bit?q?Dr=E9?= <{bal}>",  # a charset Python does not know
        b"=?utf-8?b?!!!?= <{bal}>",  # an encoded word that does not decode
    ],
)
def test_names_written_by_practice_software_are_read(value: bytes) -> None:
    """8-bit and odd encodings in a display name are not taken for another address."""
    raw = variant(seeded_letter(), headers={"From": None})
    line = b"From: " + value.replace(b"{bal}", HOSPITAL.encode()) + b"\r\n"
    assert check(line + raw).ok


@pytest.mark.parametrize(
    "value",
    [
        f"Service des urgences <{HOSPITAL}>",
        f'"{HOSPITAL}" <{HOSPITAL}>',
        f'"Dr Martin @ cabinet" <{HOSPITAL}>',
        f"{HOSPITAL} (Service des urgences)",
        f"Dr. O'Neil <{HOSPITAL}>",
    ],
)
def test_a_from_display_name_without_another_address_is_fine(value: str) -> None:
    raw = variant(seeded_letter(), headers={"From": None})
    assert check(f"From: {value}\r\n".encode() + raw).ok


@pytest.mark.parametrize("name", ["Resent-From", "Resent-Sender", "RESENT-FROM"])
def test_resent_fields_may_only_name_the_mailbox(name: str) -> None:
    other = check(_with_lines(f"{name}: eve.moreau@medecin.mssante.fr".encode()))
    assert other.rules == [f"{name.lower().title()}-mismatch"]
    assert other.violations[0].code == "5.7.1"
    assert check(_with_lines(f"{name}: {HOSPITAL}".encode())).ok


# -- X-MSS-CODECDA / X-MSS-INS --------------------------------------------------------------


def test_wrong_code() -> None:
    result = check(letter(X_MSS_CODECDA="34133-9"))
    assert result.rules == ["X-MSS-CODECDA-mismatch"]
    assert CDA_CODE in result.violations[0].text


def test_missing_codecda() -> None:
    assert check(letter(X_MSS_CODECDA=None)).rules == ["X-MSS-CODECDA-missing"]


def test_missing_ins_header() -> None:
    result = check(letter(X_MSS_INS=None))
    assert result.rules == ["X-MSS-INS-missing"]
    assert result.violations[0].code == "5.6.0"


def test_ins_n_with_a_qualified_ins() -> None:
    result = check(letter(X_MSS_INS="N"))
    assert result.rules == ["X-MSS-INS-mismatch"]
    assert "must be O" in result.violations[0].text


def test_ins_o_without_a_qualified_ins() -> None:
    unqualified = xdm_with(metadata=metadata_with(value="IPP-4512", oid="1.2.250.1.71.4.2.1"))
    raw = variant(seeded_letter(), attachment=unqualified)
    assert check(raw).rules == ["X-MSS-INS-mismatch"]
    assert check(variant(raw, headers={"X-MSS-INS": "N"})).ok


def test_ins_n_without_metadata() -> None:
    raw = variant(seeded_letter(), attachment=without_metadata(), headers={"X-MSS-INS": "N"})
    assert check(raw).ok


@pytest.mark.parametrize("value", ["o", "OUI", "0", ""])
def test_invalid_ins_value(value: str) -> None:
    assert check(letter(X_MSS_INS=value)).rules == ["X-MSS-INS-invalid"]


def test_codecda_and_ins_without_attachment() -> None:
    raw = variant(seeded_plain(), headers={"X-MSS-CODECDA": CDA_CODE, "X-MSS-INS": "O"})
    result = check(raw, sender=LAB)
    assert result.rules == ["X-MSS-CODECDA-unexpected", "X-MSS-INS-unexpected"]
    assert all(v.code == "5.6.0" for v in result.violations)


def test_ins_alone_without_attachment() -> None:
    raw = variant(seeded_plain(), headers={"X-MSS-INS": "N"})
    assert check(raw, sender=LAB).rules == ["X-MSS-INS-unexpected"]


def test_headers_with_an_xdm_without_cda() -> None:
    no_cda = xdm_with(documents={"IHE_XDM/SUBSET01/DOC0001.PDF": b"%PDF-1.7"})
    result = check(variant(seeded_letter(), attachment=no_cda))
    assert result.rules == ["X-MSS-CODECDA-unexpected", "X-MSS-INS-unexpected"]
    clean = variant(
        seeded_letter(), attachment=no_cda, headers={"X-MSS-CODECDA": None, "X-MSS-INS": None}
    )
    assert check(clean).ok


def test_cda_outside_an_ihe_xdm_zip_needs_no_headers() -> None:
    raw = variant(
        seeded_plain(), attachment=ihe_xdm_zip(), filename="lettre.zip", add_attachment=True
    )
    assert check(raw, sender=LAB).ok


@pytest.mark.parametrize("listed", ["11490-0,11502-2", "11502-2, 11490-0", "11502-2 ,11490-0,"])
def test_two_cda_documents(listed: str) -> None:
    raw = variant(
        seeded_letter(),
        attachment=xdm_with(documents=TWO_DOCUMENTS),
        headers={"X-MSS-CODECDA": listed},
    )
    assert check(raw).ok


@pytest.mark.parametrize("listed", ["11490-0", "11502-2", "11490-0,11502-2,34133-9"])
def test_two_cda_documents_need_both_codes(listed: str) -> None:
    raw = variant(
        seeded_letter(),
        attachment=xdm_with(documents=TWO_DOCUMENTS),
        headers={"X-MSS-CODECDA": listed},
    )
    assert check(raw).rules == ["X-MSS-CODECDA-mismatch"]


def test_folded_codecda() -> None:
    raw = variant(seeded_letter(), attachment=xdm_with(documents=TWO_DOCUMENTS))
    raw = variant(raw, headers={"X-MSS-CODECDA": None})
    raw = b"X-MSS-CODECDA: 11490-0,\r\n 11502-2\r\n" + raw
    assert check(raw).ok


def test_cda_without_code() -> None:
    document = cda_document().replace(b'<code code="11490-0"', b'<code nullFlavor="UNK"')
    raw = variant(
        seeded_letter(), attachment=xdm_with(documents={"IHE_XDM/SUBSET01/D.XML": document})
    )
    assert "CDA-code-missing" in check(raw).rules


def test_duplicate_codecda() -> None:
    raw = f"X-MSS-CODECDA: {CDA_CODE}\r\n".encode() + seeded_letter()
    assert check(raw).rules == ["X-MSS-CODECDA-duplicate"]


@pytest.mark.parametrize(
    ("filename", "subtype"),
    [
        ("ihe_xdm.zip", "zip"),
        ("Ihe_Xdm.Zip", "octet-stream"),
        ("IHE_XDM.ZIP", "x-zip-compressed"),
    ],
)
def test_attachment_name_and_type(filename: str, subtype: str) -> None:
    raw = variant(seeded_letter(), attachment=ihe_xdm_zip(), filename=filename, subtype=subtype)
    assert check(raw).ok
    assert check(variant(raw, headers={"X-MSS-INS": None})).rules == ["X-MSS-INS-missing"]


def test_attachment_named_by_the_name_parameter_only() -> None:
    raw = seeded_letter()
    disposition = b'Content-Disposition: attachment; filename="IHE_XDM.ZIP"\r\n'
    assert disposition in raw
    raw = raw.replace(disposition, b"").replace(
        b"Content-Type: application/zip", b'Content-Type: application/zip; name="IHE_XDM.ZIP"'
    )
    assert check(raw).ok
    assert check(variant(raw, headers={"X-MSS-CODECDA": "1-1"})).rules == ["X-MSS-CODECDA-mismatch"]


def test_other_types_are_not_xdm() -> None:
    raw = seeded_letter().replace(b"Content-Type: application/zip", b"Content-Type: text/plain")
    assert check(raw).rules == ["X-MSS-CODECDA-unexpected", "X-MSS-INS-unexpected"]


# -- unreadable archives -----------------------------------------------------------------------


def test_garbage_archive() -> None:
    result = check(variant(seeded_letter(), attachment=b"this is not a zip"))
    # Without a readable archive nothing can be said about CODECDA/INS being due.
    assert result.rules == ["IHE_XDM-unreadable"]
    assert result.violations[0].code == "5.6.0"
    assert "not a valid zip" in result.violations[0].text


def test_zip_bomb_attachment() -> None:
    bomb = zeros_zip("IHE_XDM/SUBSET01/DOC0002.XML", 100 * MIB, force_zip64=True)
    result = check(variant(seeded_letter(), attachment=bomb))
    assert result.rules == ["IHE_XDM-unreadable"]
    assert "too large" in result.violations[0].text


def test_path_traversal_attachment() -> None:
    entries = xdm_entries()
    entries["../../evil.sh"] = b"#!/bin/sh"
    result = check(variant(seeded_letter(), attachment=make_zip(entries)))
    assert result.rules == ["IHE_XDM-unreadable"]


def test_billion_laughs_attachment() -> None:
    attachment = xdm_with(documents={"IHE_XDM/SUBSET01/DOC0001.XML": BILLION_LAUGHS})
    result = check(variant(seeded_letter(), attachment=attachment))
    assert result.rules == ["IHE_XDM-unreadable"]
    assert "forbidden XML" in result.violations[0].text


def test_xdm_limits_are_passed_through() -> None:
    result = check(seeded_letter(), xdm_limits=XdmLimits(max_entries=2))
    assert result.rules == ["IHE_XDM-unreadable"]


def test_undecodable_attachment() -> None:
    raw = seeded_letter().replace(
        b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: x-uuencode"
    )
    assert check(raw).rules == ["IHE_XDM-unreadable"]


# -- X-MSS-MES ---------------------------------------------------------------------------------


def test_mes_to_a_patient() -> None:
    raw = letter(To=f"Louise GARNIER <{PATIENT}>", X_MSS_MES="FIN")
    assert check(raw).ok


def test_mes_to_a_patient_in_cc() -> None:
    raw = letter(Cc=PATIENT.upper(), X_MSS_MES="FIN")
    assert check(raw).ok


def test_mes_to_a_professional() -> None:
    result = check(letter(X_MSS_MES="FIN"))
    assert result.rules == ["X-MSS-MES-unexpected"]
    assert "patient.mssante.fr" in result.violations[0].text


def test_mes_with_a_patient_envelope_recipient() -> None:
    assert check(letter(X_MSS_MES="FIN"), recipients=[PATIENT]).ok


def test_mes_lookalike_domain() -> None:
    raw = letter(To="x@patient.mssante.fr.evil.invalid", X_MSS_MES="FIN")
    assert check(raw, recipients=["y@evil-patient.mssante.fr"]).rules == ["X-MSS-MES-unexpected"]


@pytest.mark.parametrize("value", ["fin", "OUI", "FIN,FIN", ""])
def test_mes_value_is_only_fin(value: str) -> None:
    raw = letter(To=PATIENT, X_MSS_MES=value)
    assert check(raw).rules == ["X-MSS-MES-invalid"]


def test_patient_without_mes_is_fine() -> None:
    assert check(letter(To=PATIENT)).ok


# -- several problems at once, hostile MIME ----------------------------------------------------


def test_violations_accumulate() -> None:
    raw = letter(X_MSS_NIL=None, X_MSS_INS="N", X_MSS_CODECDA="1-1", X_MSS_MES="FIN")
    result = check(raw, sender="claire.martin@medecin.mssante.fr")
    assert result.rules == [
        "From-mismatch",
        "X-MSS-NIL-missing",
        "X-MSS-CODECDA-mismatch",
        "X-MSS-INS-mismatch",
        "X-MSS-MES-unexpected",
    ]
    assert [v.code for v in result.violations] == ["5.7.1"] + ["5.6.0"] * 4


def test_injected_values_do_not_reach_the_reply() -> None:
    raw = b"X-MSS-INS: \xc3\xa9\x1b[31m\r\n" + variant(seeded_letter(), headers={"X-MSS-INS": None})
    result = check(raw)  # (which checks that every reply is printable ASCII)
    assert result.rules == ["header-unreadable"]  # ESC is a control character
    raw = b"X-MSS-INS: \xc3\xa9[31m\r\n" + variant(seeded_letter(), headers={"X-MSS-INS": None})
    assert check(raw).rules == ["X-MSS-INS-invalid"]


def test_too_many_parts() -> None:
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(1001))
    raw = (
        f"From: {HOSPITAL}\r\nX-MSS-NIL: {SOFTWARE_NIL}\r\n".encode()
        + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        + parts
        + b"--b--\r\n"
    )
    assert check(raw).rules == ["MIME-too-complex"]


def test_absurd_nesting() -> None:
    nested = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(3000)
    )
    raw = f"From: {HOSPITAL}\r\nX-MSS-NIL: {SOFTWARE_NIL}\r\n".encode() + nested
    rules = check(raw).rules
    assert rules in (["message-unparsable"], ["MIME-too-complex"])


def test_message_rfc822_parts_are_not_entered() -> None:
    forwarded = seeded_letter()
    raw = (
        f"From: {LAB}\r\nX-MSS-NIL: {SOFTWARE_NIL}\r\n".encode()
        + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        + b"Content-Type: message/rfc822\r\n\r\n"
        + forwarded
        + b"\r\n--b--\r\n"
    )
    assert check(raw, sender=LAB).ok


@pytest.mark.parametrize("name", ["X-MSS-NIL", "X-MSS-CODECDA", "X-MSS-INS", "X-MSS-MES"])
def test_a_duplicate_header_is_a_rule_of_the_closed_list(name: str) -> None:
    value = {"X-MSS-NIL": SOFTWARE_NIL, "X-MSS-CODECDA": CDA_CODE, "X-MSS-INS": "O"}
    raw = f"{name}: {value.get(name, 'FIN')}\r\n".encode() + letter(To=PATIENT, X_MSS_MES="FIN")
    rules = check(raw).rules
    assert f"{name}-duplicate" in rules
    assert RULES[f"{name}-duplicate"].header == name


def test_only_the_header_rules_are_left_to_the_policy() -> None:
    """`[mss] policy = "report"` may let through what breaks an X-MSS-* rule, never what
    hides or fakes the sender, nor what the gateway could not read safely."""
    governed = {rule for rule, about in RULES.items() if about.scope == "mss"}
    assert all(rule.startswith(("X-MSS-", "CDA-")) for rule in governed)
    assert {"From-mismatch", "From-display-address", "header-unreadable"} <= {
        rule for rule, about in RULES.items() if about.scope == "sender"
    }
    assert RULES["IHE_XDM-unreadable"].scope == "safety"
    assert RULES["message-too-big"].scope == "safety"


# -- a body is parsed only when a rule can look inside it ----------------------------------


def single_part_xdm(codecda: str | None) -> bytes:
    """A message that is nothing but an IHE_XDM.ZIP (no multipart around it)."""
    head = f"From: {HOSPITAL}\r\nTo: {LAB}\r\nX-MSS-NIL: {SOFTWARE_NIL}\r\n"
    if codecda is not None:
        head += f"X-MSS-CODECDA: {codecda}\r\nX-MSS-INS: O\r\n"
    head += (
        'Content-Type: application/zip; name="IHE_XDM.ZIP"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    )
    body = base64.encodebytes(ihe_xdm_zip()).replace(b"\n", b"\r\n")
    return head.encode() + body


def wrapped(raw: bytes) -> bytes:
    """`raw` as a message/rfc822 body."""
    head = f"From: {HOSPITAL}\r\nTo: {LAB}\r\nX-MSS-NIL: {SOFTWARE_NIL}\r\n"
    return (head + "Content-Type: message/rfc822\r\n\r\n").encode() + raw


def test_a_single_part_ihe_xdm_is_read() -> None:
    assert "X-MSS-CODECDA-missing" in check(single_part_xdm(None)).rules


@pytest.mark.parametrize(
    "raw",
    [
        seeded_plain(),
        seeded_letter(),
        single_part_xdm(None),
        single_part_xdm(CDA_CODE),
        wrapped(seeded_letter()),
        variant(seeded_plain(), headers={"X-MSS-CODECDA": CDA_CODE, "X-MSS-INS": "O"}),
        variant(seeded_plain(), headers={"X-MSS-MES": "FIN", "Content-Type": "text/html"}),
        b"From: " + HOSPITAL.encode() + b"\r\n\r\nno X-MSS-NIL, a body\r\n",
        b"\r\nno header at all\r\n",
    ],
)
def test_the_verdict_is_that_of_a_full_parse(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether the body was parsed or not, every rule says the same."""
    quick = check(raw, recipients=[PATIENT])
    monkeypatch.setattr(
        rules, "_parse", lambda raw, fields: email.message_from_bytes(raw, policy=compat32)
    )
    full = check(raw, recipients=[PATIENT])
    assert quick == full
