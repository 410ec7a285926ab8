"""National identifiers (idNat): the one-digit register prefix, the number's form, the limits."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psc_auth.errors import IdNatError, PscAuthError
from psc_auth.idnat import MAX_IDNAT_LENGTH, IdNat, IdNatKind

PROPERTY = settings(max_examples=300, deadline=None)


@pytest.mark.parametrize(
    ("value", "kind", "number", "is_person"),
    [
        ("810003461033", IdNatKind.RPPS, "10003461033", True),
        ("899700000001", IdNatKind.RPPS, "99700000001", True),
        ("800000000000", IdNatKind.RPPS, "00000000000", True),
        ("0751234567", IdNatKind.ADELI, "751234567", True),
        ("02A1234567", IdNatKind.ADELI, "2A1234567", True),
        ("02B7654321", IdNatKind.ADELI, "2B7654321", True),
        ("1751234567", IdNatKind.ADELI_PRACTICE, "751234567", False),
        ("1751234567/12", IdNatKind.ADELI_PRACTICE, "751234567/12", False),
        ("12A1234567/ABC12", IdNatKind.ADELI_PRACTICE, "2A1234567/ABC12", False),
        ("3750100042", IdNatKind.FINESS, "750100042", False),
        ("32A0000123/ABC12", IdNatKind.FINESS, "2A0000123/ABC12", False),
        ("3750100042/1", IdNatKind.FINESS, "750100042/1", False),
        ("4123456789", IdNatKind.SIREN, "123456789", False),
        ("4123456789/ABC12", IdNatKind.SIREN, "123456789/ABC12", False),
        ("4123456789/" + "z" * 20, IdNatKind.SIREN, "123456789/" + "z" * 20, False),
        ("512345678900017", IdNatKind.SIRET, "12345678900017", False),
        ("512345678900017/ABC12", IdNatKind.SIRET, "12345678900017/ABC12", False),
        ("610003461033", IdNatKind.RPPS_PRACTICE, "10003461033", False),
        ("610003461033/ABC12", IdNatKind.RPPS_PRACTICE, "10003461033/ABC12", False),
        ("610003461033/" + "z" * 19, IdNatKind.RPPS_PRACTICE, "10003461033/" + "z" * 19, False),
    ],
)
def test_valid(value: str, kind: IdNatKind, number: str, is_person: bool) -> None:
    idnat = IdNat.parse(value)
    assert idnat.kind is kind
    assert idnat.number == number
    assert idnat.is_person is is_person
    assert str(idnat) == value
    assert IdNat.parse(str(idnat)) == idnat


def test_kind_values_are_the_prefixes() -> None:
    assert {k.value for k in IdNatKind} == {"0", "1", "3", "4", "5", "6", "8"}
    assert {k for k in IdNatKind if IdNat(k, "x").is_person} == {IdNatKind.RPPS, IdNatKind.ADELI}


def test_value_semantics() -> None:
    a, b = IdNat.parse("810003461033"), IdNat.parse("810003461033")
    assert a == b
    assert hash(a) == hash(b)
    assert a != IdNat.parse("610003461033")  # same number, other register
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.number = "0"  # type: ignore[misc]


def test_suffix_at_the_32_character_limit() -> None:
    value = "5" + "1" * 14 + "/" + "A" * 16
    assert len(value) == MAX_IDNAT_LENGTH
    assert str(IdNat.parse(value)) == value


def test_error_is_a_value_error_and_a_psc_auth_error() -> None:
    with pytest.raises(IdNatError) as caught:
        IdNat.parse("2")
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, PscAuthError)


INVALID = [
    # empty and unknown prefixes
    pytest.param("", id="empty"),
    pytest.param("210003461033", id="prefix-2"),
    pytest.param("710003461033", id="prefix-7"),
    pytest.param("910003461033", id="prefix-9"),
    pytest.param("A10003461033", id="prefix-letter"),
    pytest.param(" 810003461033", id="leading-space"),
    pytest.param("+810003461033", id="leading-plus"),
    # RPPS: exactly 11 ASCII digits, no suffix
    pytest.param("8", id="rpps-prefix-only"),
    pytest.param("81000346103", id="rpps-10-digits"),
    pytest.param("8100034610333", id="rpps-12-digits"),
    pytest.param("81000346103A", id="rpps-letter"),
    pytest.param("8A0003461033", id="rpps-letter-first"),
    pytest.param("81000 461033", id="rpps-space"),
    pytest.param("810003461033/ABC12", id="rpps-suffix"),
    pytest.param("810003461033/", id="rpps-empty-suffix"),
    pytest.param("810003461033\n", id="rpps-trailing-lf"),
    pytest.param("810003461033 ", id="rpps-trailing-space"),
    pytest.param("8-10003461033", id="rpps-dash"),
    # ADELI: 9 characters, digits or 2A/2B for Corsica, no suffix
    pytest.param("075123456", id="adeli-8"),
    pytest.param("07512345678", id="adeli-10"),
    pytest.param("02C1234567", id="adeli-2C"),
    pytest.param("02a1234567", id="adeli-lowercase-2a"),
    pytest.param("0A21234567", id="adeli-A2"),
    pytest.param("075123456A", id="adeli-letter-at-end"),
    pytest.param("0751234567/ABC12", id="adeli-suffix"),
    # Others: the number's length, then an optional bounded "/alnum" suffix
    pytest.param("175123456", id="adeli-practice-short"),
    pytest.param("375010004", id="finess-short"),
    pytest.param("37501000421", id="finess-long"),
    pytest.param("412345678", id="siren-8"),
    pytest.param("41234567890", id="siren-10"),
    pytest.param("51234567890001", id="siret-13"),
    pytest.param("5123456789000171", id="siret-15"),
    pytest.param("51234567890001A", id="siret-letter"),
    pytest.param("61000346103", id="rpps-practice-10"),
    pytest.param("610003461033/", id="empty-suffix"),
    pytest.param("610003461033//A", id="double-slash"),
    pytest.param("610003461033/A/B", id="two-suffixes"),
    pytest.param("610003461033/AB-12", id="suffix-dash"),
    pytest.param("610003461033/AB 12", id="suffix-space"),
    pytest.param("610003461033/ABC\u00e912", id="suffix-non-ascii"),
    pytest.param("4123456789/" + "z" * 21, id="suffix-21-chars"),  # 32 chars in all
    pytest.param("610003461033ABC12", id="suffix-without-slash"),
    # Length limit
    pytest.param("5" + "1" * 14 + "/" + "A" * 17, id="33-chars"),
    pytest.param("8" * 33, id="33-digits"),
    pytest.param("8" + "1" * 10_000, id="huge"),
]


@pytest.mark.parametrize("value", INVALID)
def test_invalid(value: str) -> None:
    with pytest.raises(IdNatError):
        IdNat.parse(value)


def test_over_32_characters_refused_before_anything_else() -> None:
    with pytest.raises(IdNatError, match="longer than 32"):
        IdNat.parse("2" * 33)  # bad prefix too: the length is reported


@pytest.mark.parametrize("value", [None, 810003461033, b"810003461033", ["810003461033"]])
def test_non_string_refused(value: object) -> None:
    with pytest.raises(IdNatError):
        IdNat.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("8" + "\u0661" * 11, id="rpps-arabic-indic"),
        pytest.param("8" + "\uff11" * 11, id="rpps-fullwidth"),
        pytest.param("81000346103\u0663", id="rpps-one-arabic-indic"),
        pytest.param("0" + "\u0967" * 9, id="adeli-devanagari"),
        pytest.param("5" + "\uff10" * 14, id="siret-fullwidth"),
    ],
)
def test_non_ascii_digits_refused(value: str) -> None:
    with pytest.raises(IdNatError):
        IdNat.parse(value)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

ASCII_DIGITS = "0123456789"
SUFFIX = st.one_of(
    st.just(""),
    st.text(alphabet="0123456789ABCXYZabcxyz", min_size=1, max_size=20).map(lambda s: "/" + s),
)
ADELI_NUMBER = st.one_of(
    st.text(alphabet=ASCII_DIGITS, min_size=9, max_size=9),
    st.tuples(
        st.sampled_from(["2A", "2B"]), st.text(alphabet=ASCII_DIGITS, min_size=7, max_size=7)
    ).map("".join),
)


def _digits(n: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=ASCII_DIGITS, min_size=n, max_size=n)


VALID_IDNATS = st.one_of(
    _digits(11).map(lambda n: "8" + n),
    ADELI_NUMBER.map(lambda n: "0" + n),
    st.tuples(st.sampled_from("13"), ADELI_NUMBER, SUFFIX).map("".join),
    st.tuples(st.just("4"), _digits(9), SUFFIX).map("".join),
    st.tuples(st.just("5"), _digits(14), SUFFIX).map("".join),
    st.tuples(st.just("6"), _digits(11), SUFFIX).map("".join),
)


@PROPERTY
@given(value=VALID_IDNATS)
def test_property_valid_round_trip(value: str) -> None:
    if len(value) > MAX_IDNAT_LENGTH:
        with pytest.raises(IdNatError):
            IdNat.parse(value)
        return
    idnat = IdNat.parse(value)
    assert str(idnat) == value
    assert idnat.kind.value == value[0]
    assert idnat.number == value[1:]
    assert idnat.is_person is (value[0] in "08")


def _only_idnat_error(value: str) -> None:
    try:
        idnat = IdNat.parse(value)
    except IdNatError:
        return
    assert isinstance(idnat, IdNat)
    assert str(idnat) == value
    assert 1 < len(value) <= MAX_IDNAT_LENGTH


@PROPERTY
@given(value=st.text(max_size=64))
def test_property_arbitrary_text(value: str) -> None:
    _only_idnat_error(value)


IDNAT_ALPHABET = st.sampled_from([*"0123456789", "2A", "2B", "/", "A", "z", " ", "\n", "\u0661"])


@PROPERTY
@given(
    value=st.one_of(
        st.lists(IDNAT_ALPHABET, max_size=40).map("".join),
        st.tuples(VALID_IDNATS, st.text(max_size=3)).map("".join),
        st.tuples(st.text(max_size=3), VALID_IDNATS).map("".join),
    )
)
def test_property_near_valid_text(value: str) -> None:
    _only_idnat_error(value)


@PROPERTY
@given(value=VALID_IDNATS, where=st.integers(0, 40), junk=st.characters())
def test_property_inserted_foreign_character_refused(value: str, where: int, junk: str) -> None:
    if junk.isalnum() or junk == "/":
        return
    where %= len(value) + 1
    with pytest.raises(IdNatError):
        IdNat.parse(value[:where] + junk + value[where:])
