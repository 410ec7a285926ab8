"""Properties: hostile bytes never get anything but XdmError / a RuleResult out of us."""

from __future__ import annotations

import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.mss.rules import RULES, RuleResult, add_headers, check_message
from gateway.mss.xdm import XdmContent, XdmError, XdmLimits, read_xdm
from mock_operator.seed import ihe_xdm_zip
from tests.mss.builders import HOSPITAL, make_zip, seeded_letter, variant, xdm_entries

VALID_ZIPS = [ihe_xdm_zip(), make_zip(xdm_entries(), method=zipfile.ZIP_STORED)]
LETTER = seeded_letter()
SMALL = XdmLimits(max_entry_size=64 * 1024, max_xml_size=64 * 1024, max_total_size=256 * 1024)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_or_refuse(data: bytes) -> XdmContent | None:
    try:
        return read_xdm(data, SMALL)
    except XdmError as exc:
        message = str(exc)
    assert message  # every refusal says why
    return None


@st.composite
def corrupted(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    """A valid archive with a few bytes flipped, a slice cut out or inserted, or truncated."""
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[position : position + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[position:]
    return bytes(data)


@FAST
@given(st.binary(max_size=2048))
def test_read_xdm_random_bytes(data: bytes) -> None:
    read_or_refuse(data)


@FAST
@given(st.binary(max_size=512).map(lambda tail: b"PK\x03\x04" + tail))
def test_read_xdm_random_zip_like_bytes(data: bytes) -> None:
    read_or_refuse(data)


@FAST
@given(corrupted(VALID_ZIPS))
def test_read_xdm_corrupted_archives(data: bytes) -> None:
    read_or_refuse(data)


@FAST
@given(st.binary(max_size=2048))
def test_check_message_random_bytes(raw: bytes) -> None:
    result = check_message(raw, sender=HOSPITAL)
    assert isinstance(result, RuleResult)
    assert set(result.rules) <= RULES.keys()  # never a rule id made from the message


@FAST
@given(corrupted([LETTER]))
def test_check_message_corrupted_letter(raw: bytes) -> None:
    result = check_message(raw, sender=HOSPITAL, default_nil="LPS-REG-42", xdm_limits=SMALL)
    for violation in result.violations:
        assert violation.code in ("5.3.4", "5.6.0", "5.7.1")
        assert violation.text.isascii()
        assert violation.text.isprintable()
        assert violation.rule in RULES


HEADER_TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n\x00"), min_size=0, max_size=40
)


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["X-MSS-NIL", "X-MSS-CODECDA", "X-MSS-INS", "X-MSS-MES", "To", "From"]),
        st.one_of(st.none(), HEADER_TEXT),
    )
)
def test_check_message_any_header_values(headers: dict[str, str | None]) -> None:
    try:
        raw = variant(LETTER, headers=headers)
    except (ValueError, TypeError, IndexError, AttributeError):
        # The email package would not even build it (its address parser also trips on some
        # display names with AttributeError): nothing to check.
        return
    result = check_message(raw, sender=HOSPITAL)
    assert all(v.text.isascii() and v.text.isprintable() for v in result.violations)
    assert set(result.rules) <= RULES.keys()


FIELD_NAMES = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
    min_size=1,
    max_size=30,
)
FIELD_VALUES = st.text(
    st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=80
).filter(str.strip)


@FAST
@given(st.binary(max_size=2048), st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=4))
def test_add_headers_keeps_the_original_as_a_suffix(
    raw: bytes, headers: list[tuple[str, str]]
) -> None:
    edited = add_headers(raw, headers)
    assert edited.endswith(raw)
    prefix = edited[: len(edited) - len(raw)]
    assert prefix.count(b"\n") == len(headers)
    assert prefix.isascii()
