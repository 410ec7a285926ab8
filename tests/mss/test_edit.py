"""add_headers / add_sender: edits of the raw octets that leave everything else byte-exact."""

from __future__ import annotations

import email
from email.header import decode_header, make_header
from email.policy import compat32, default

import pytest

from gateway.mss.rules import add_headers, add_sender, check_message
from tests.mss.builders import HOSPITAL, seeded_letter, variant


def test_add_headers_prepends() -> None:
    raw = seeded_letter()
    edited = add_headers(raw, [("X-MSS-NIL", "LPS-REG-42"), ("X-Gateway", "lps")])
    assert edited == b"X-MSS-NIL: LPS-REG-42\r\nX-Gateway: lps\r\n" + raw


def test_add_headers_follows_bare_lf() -> None:
    raw = b"From: a@b.fr\nSubject: x\n\nbody\n"
    assert add_headers(raw, [("X-MSS-NIL", "N1")]) == b"X-MSS-NIL: N1\n" + raw


def test_add_headers_to_an_empty_message() -> None:
    assert add_headers(b"", [("X-MSS-NIL", "N1")]) == b"X-MSS-NIL: N1\r\n"


def test_add_nothing() -> None:
    raw = seeded_letter()
    assert add_headers(raw, []) == raw


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-MSS-NIL", "A\r\nBcc: victim@x.fr"),
        ("X-MSS-NIL", "A\nB"),
        ("X-MSS-NIL", ""),
        ("X-MSS-NIL", "nul\x00"),
        ("X MSS", "A"),
        ("X-MSS:", "A"),
        ("", "A"),
        ("X-MSS-NIL", "é"),
        ("X-MSS-NIL", "x" * 1000),
    ],
)
def test_add_headers_refuses_unsafe_fields(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=r"header|value|line"):
        add_headers(seeded_letter(), [(name, value)])


def test_default_nil_round_trip() -> None:
    raw = variant(seeded_letter(), headers={"X-MSS-NIL": None})
    result = check_message(raw, sender=HOSPITAL, default_nil="LPS-REG-42")
    fixed = add_headers(raw, result.headers_to_add)
    assert fixed.endswith(raw)
    assert check_message(fixed, sender=HOSPITAL).ok


def _sender_of(raw: bytes) -> list[str]:
    message = email.message_from_bytes(raw, policy=compat32)
    return [str(make_header(decode_header(str(v)))) for v in message.get_all("Sender", [])]


def test_add_sender() -> None:
    raw = seeded_letter()
    edited = add_sender(raw, "Paul Durand", "paul.durand@ch-villeneuve.mssante.fr")
    assert edited == b"Sender: Paul Durand <paul.durand@ch-villeneuve.mssante.fr>\r\n" + raw
    assert check_message(edited, sender=HOSPITAL).ok


def test_add_sender_encodes_french_names() -> None:
    edited = add_sender(seeded_letter(), "Hélène Roux", "899700000002@delegation.invalid")
    assert edited.isascii()
    assert _sender_of(edited) == ["Hélène Roux <899700000002@delegation.invalid>"]


@pytest.mark.parametrize("name", ["Durand, Paul (secretariat)", "Durand, Paul (secrétariat)"])
def test_add_sender_quotes_specials(name: str) -> None:
    edited = add_sender(seeded_letter(), name, "p@x.fr")
    message = email.message_from_bytes(edited, policy=default)
    (address,) = message["Sender"].addresses
    assert (address.display_name, address.addr_spec) == (name, "p@x.fr")


def test_add_sender_without_name() -> None:
    raw = seeded_letter()
    assert add_sender(raw, " ", "p@x.fr") == b"Sender: p@x.fr\r\n" + raw


def test_add_sender_replaces_a_client_sender() -> None:
    raw = seeded_letter()
    head, sep, body = raw.partition(b"\r\n\r\n")
    forged = head + b"\r\nsender : Someone Else\r\n <someone@x.fr>" + sep + body
    edited = add_sender(forged, "Paul Durand", "p@x.fr")
    assert edited == b"Sender: Paul Durand <p@x.fr>\r\n" + raw
    assert _sender_of(edited) == ["Paul Durand <p@x.fr>"]


def test_add_sender_leaves_body_sender_lines() -> None:
    raw = b"From: a@b.fr\r\n\r\nSender: this is body text\r\n"
    assert add_sender(raw, "", "p@x.fr") == b"Sender: p@x.fr\r\n" + raw


@pytest.mark.parametrize(
    "address",
    ["", "p", "p@", "@x.fr", "p@x.fr>", "<p@x.fr>", "p x@x.fr", "p@x.fr\r\nBcc: y@z.fr", "é@x.fr"],
)
def test_add_sender_refuses_invalid_addresses(address: str) -> None:
    with pytest.raises(ValueError, match="addr-spec"):
        add_sender(seeded_letter(), "Paul", address)


@pytest.mark.parametrize("name", ["Paul\r\nBcc: y@z.fr", "Paul\x00"])
def test_add_sender_refuses_multiline_names(name: str) -> None:
    with pytest.raises(ValueError, match="single line"):
        add_sender(seeded_letter(), name, "p@x.fr")
