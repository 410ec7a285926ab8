"""Modified UTF-7 (RFC 3501 §5.1.3): known encodings, strict decoding, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap import mutf7

PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
PLAIN = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="&")


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("", ""),
        ("INBOX", "INBOX"),
        ("&", "&-"),
        ("a&b", "a&-b"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("é", "&AOk-"),
        ("éé", "&AOkA6Q-"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 example
        ("😀", "&2D3eAA-"),  # a surrogate pair in UTF-16
        ("tab\there", "tab&AAk-here"),  # controls are not printable: base64
        ("\x7f", "&AH8-"),
        ("é&é", "&AOk-&-&AOk-"),
    ],
)
def test_known_encodings(text: str, encoded: str) -> None:
    assert mutf7.encode(text) == encoded
    assert mutf7.decode(encoded) == text


@pytest.mark.parametrize(
    "bad",
    [
        "&AOk",  # "&" never closed
        "&",
        "&AO-",  # 12 bits: not even one UTF-16 unit
        "&AOl-",  # the 2 bits left over are not zero
        "&AOkA-",  # 6 bits left over: one character too many
        "&AOk=-",  # padding is not part of modified base64
        "&AO/-",  # "/" is "," in modified base64
        "&AEE-",  # "A" must stand for itself
        "&ACY-",  # so must "&" ("&-")
        "&AOk-&AOk-",  # two adjacent runs must be one
        "&2D0-",  # a lone high surrogate
        "é",  # raw non-ASCII
        "tab\there",  # raw control character
        "\x00",
        "a\x7f",
    ],
)
def test_decode_rejects_invalid_input(bad: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError subclass is the contract
        mutf7.decode(bad)


def test_encode_rejects_lone_surrogate() -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        mutf7.encode("a\ud800b")


@settings(deadline=None, max_examples=300)
@given(st.text())
def test_round_trip_and_printable(text: str) -> None:
    encoded = mutf7.encode(text)
    assert mutf7.decode(encoded) == text
    assert all(0x20 <= ord(char) <= 0x7E for char in encoded)


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet=PRINTABLE))
def test_encoding_is_unique(candidate: str) -> None:
    """Whatever decodes is the one encoding of its result: no two names alias a mailbox."""
    try:
        decoded = mutf7.decode(candidate)
    except ValueError:
        return
    assert mutf7.encode(decoded) == candidate


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet=PLAIN))
def test_plain_ascii_is_unchanged(text: str) -> None:
    assert mutf7.encode(text) == text
    assert mutf7.decode(text) == text
