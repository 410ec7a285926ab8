"""The directory file parser on bytes: the extraction's columns by name, this project's
columns, refusals with their line, the limits, and a property: whatever the bytes, it
returns records and refusals or raises its own error, never anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.directory_import.parse import DirectoryFileError, Limits, parse
from gateway.directory_import.records import DelegationSpec
from mock_operator.personas import default_personas

EXAMPLE = Path(__file__).parents[2] / "examples" / "directory-demo.csv"
HEADER = "Type BAL|Adresse BAL|Identification nationale PP|Nom d'exercice|Prénom d'exercice"


def csv(*lines: str, header: str = HEADER) -> bytes:
    return "\n".join([header, *lines]).encode()


def test_the_extraction_columns_are_found_by_name_in_any_order() -> None:
    data = csv(
        "Eve|MOREAU|899700000007|eve.moreau@medecin.mssante.fr|PER|10|ignored",
        header="Prénom d'exercice|NOM D'EXERCICE|Identification nationale PP|adresse bal"
        "|Type de BAL|Code profession|Libellé profession",
    )
    parsed = parse(data, "csv")
    assert parsed.errors == ()
    [person] = parsed.people
    assert (person.idnat, person.given_name, person.family_name, person.profession) == (
        "899700000007",
        "Eve",
        "MOREAU",
        "10",
    )
    [bal] = parsed.bals
    assert (bal.address, bal.type, bal.holder_idnat, bal.backend, bal.delegations) == (
        "eve.moreau@medecin.mssante.fr",
        "PER",
        "899700000007",
        None,
        None,
    )


@pytest.mark.parametrize("delimiter", ["|", ";", ",", "\t"])
def test_the_delimiter_is_read_from_the_header(delimiter: str) -> None:
    header = HEADER.replace("|", delimiter)
    line = "PER|eve.moreau@medecin.mssante.fr|899700000007|MOREAU|Eve".replace("|", delimiter)
    assert [b.address for b in parse(csv(line, header=header), "csv").bals] == [
        "eve.moreau@medecin.mssante.fr"
    ]


def test_organisation_bal_and_project_columns() -> None:
    header = HEADER + "|Raison sociale structure BAL|backend|delegations"
    parsed = parse(
        csv(
            "ORG|secretariat@chu.mssante.fr||||CHU de Lyon|modern|899700000003:read+send:30",
            "||899700000003|BERNARD|Sophie|||",
            header=header,
        ),
        "csv",
    )
    assert parsed.errors == ()
    [bal] = parsed.bals
    assert (bal.type, bal.organisation, bal.holder_idnat, bal.backend) == (
        "ORG",
        "CHU de Lyon",
        None,
        "modern",
    )
    assert bal.delegations == (DelegationSpec("899700000003", frozenset({"read", "send"}), 30),)
    assert [p.idnat for p in parsed.people] == ["899700000003"]


def test_an_empty_delegations_cell_is_no_delegation_and_no_column_is_unknown() -> None:
    with_column = parse(
        csv("PER|a.b@x.mssante.fr|899700000001|MARTIN|Claire|", header=HEADER + "|delegations"),
        "csv",
    )
    assert with_column.bals[0].delegations == ()
    without = parse(csv("PER|a.b@x.mssante.fr|899700000001|MARTIN|Claire"), "csv")
    assert without.bals[0].delegations is None


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("PER|not-an-address|899700000001|MARTIN|Claire", "not a mailbox address"),
        ("XYZ|a.b@x.mssante.fr|899700000001|MARTIN|Claire", "mailbox type"),
        ("PER|a.b@x.mssante.fr|999|MARTIN|Claire", "national identifier"),
        ("PER|a.b@x.mssante.fr||MARTIN|Claire", "needs its holder"),
        ("ORG|a.b@x.mssante.fr||||", "needs its organisation"),
        ("PER|a.b@x.mssante.fr|899700000001|=HYPERLINK(1)|Claire", "formula"),
        ("PER|a.b@x.mssante.fr|899700000001|@SUM(1)|Claire", "formula"),
        ("PER|a.b@x.mssante.fr|899700000001|MA\x00RTIN|Claire", "control characters"),
        ("PER|a.b@x.mssante.fr|899700000001|MARTIN|Claire|extra", "fields, the header has"),
        ('PER|"a.b@x.mssante.fr|899700000001|MARTIN|Claire', "unreadable CSV"),
        ("PER|a.b@x.mssante.fr|899700000001|" + "M" * 200 + "|Claire", "128 characters"),
    ],
)
def test_a_bad_line_is_refused_with_its_number(line: str, says: str) -> None:
    parsed = parse(csv("PER|eve.moreau@medecin.mssante.fr|899700000007|MOREAU|Eve", line), "csv")
    assert len(parsed.bals) == 1
    [error] = parsed.errors
    assert error.at == "line 3"
    assert says in error.message, error.message


def test_bad_delegations_are_refused() -> None:
    header = HEADER + "|delegations"
    for cell, says in [
        ("899700000003", "idNat:rights"),
        ("899700000003:read+fly", "unknown rights"),
        ("899700000003:read:soon", "days is a number"),
        ("899700000003:read:0", "between 1 and"),
        ("899700000003:read;899700000003:send", "named twice"),
        ("899700000001:read", "her own BAL"),
    ]:
        parsed = parse(
            csv(f"PER|a.b@x.mssante.fr|899700000001|MARTIN|Claire|{cell}", header=header), "csv"
        )
        assert [e.at for e in parsed.errors] == ["line 2"], cell
        assert says in parsed.errors[0].message, (cell, parsed.errors)


def test_duplicates_and_conflicting_people_are_refused_at_their_second_place() -> None:
    parsed = parse(
        csv(
            "PER|a.b@x.mssante.fr|899700000001|MARTIN|Claire",
            "PER|A.B@x.mssante.fr|899700000002|DUPONT|Jean",
            "PER|c.m@x.mssante.fr|899700000001|MARTINE|Claire",
        ),
        "csv",
    )
    assert [(e.at, e.message.split(" ")[0]) for e in parsed.errors] == [
        ("line 4", "899700000001"),
        ("line 3", "a.b@x.mssante.fr"),
    ]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "header line"),
        (b"a|b|c\nx|y|z\n", "no 'Adresse BAL'"),
        (b"Adresse BAL|Type BAL\n", "header without"),
        (csv("PER|\xe9@x.fr|1|2|3").replace(b"\xc3\xa9", b"\xe9"), "line 1: not UTF-8"),
        (b"Adresse BAL|" + b"x" * 9000, "longer than"),
    ],
)
def test_a_file_refused_whole(data: bytes, says: str) -> None:
    with pytest.raises(DirectoryFileError, match=says):
        parse(data, "csv")


def test_limits_on_size_lines_and_line_length() -> None:
    with pytest.raises(DirectoryFileError, match="larger than 100 bytes"):
        parse(b"x" * 101, "csv", Limits(max_bytes=100))
    many = csv(*["PER|a.b@x.mssante.fr|899700000001|MARTIN|Claire"] * 20)
    with pytest.raises(DirectoryFileError, match="more than 10 lines"):
        parse(many, "csv", Limits(max_lines=10))
    long = parse(
        csv("PER|a.b@x.mssante.fr|899700000001|MARTIN|" + "C" * 300), "csv", Limits(max_line=200)
    )
    assert [e.message for e in long.errors] == ["longer than 200 characters"]


def test_a_utf8_bom_and_crlf_are_accepted() -> None:
    data = b"\xef\xbb\xbf" + csv("PER|a.b@x.mssante.fr|899700000001|MARTIN|Cléa").replace(
        b"\n", b"\r\n"
    )
    parsed = parse(data, "csv")
    assert parsed.errors == ()
    assert parsed.people[0].given_name == "Cléa"


def test_json_records_are_checked_one_by_one() -> None:
    document = {
        "people": [
            {"idnat": "899700000001", "given_name": "Claire", "family_name": "MARTIN"},
            {"idnat": "nope", "family_name": "X"},
        ],
        "mailboxes": [
            {
                "address": "claire.martin@medecin.mssante.fr",
                "type": "PER",
                "holder": "899700000001",
                "backend": "modern",
                "delegations": [{"delegate": "899700000003", "rights": ["read"]}],
            },
            {"address": "x@y.fr", "type": "PER", "holder": "899700000001", "extra": 1},
            {"address": "y@y.fr", "type": "ORG", "organisation": "+CMD"},
        ],
    }
    parsed = parse(json.dumps(document).encode(), "json")
    assert [p.idnat for p in parsed.people] == ["899700000001"]
    assert [b.address for b in parsed.bals] == ["claire.martin@medecin.mssante.fr"]
    assert parsed.bals[0].delegations == (DelegationSpec("899700000003", frozenset({"read"})),)
    assert [e.at for e in parsed.errors] == ["people[1]", "mailboxes[1]", "mailboxes[2]"]
    assert "extra" in parsed.errors[1].message
    assert "formula" in parsed.errors[2].message


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'{"people": [[[[[[[[[[1]]]]]]]]]]}', "nested deeper"),
        (b"{", "not JSON"),
        (b"[]", "is expected"),
        (b'{"people": {}}', "is a list"),
        (b'{"groups": []}', "is expected"),
    ],
)
def test_a_json_file_refused_whole(data: bytes, says: str) -> None:
    with pytest.raises(DirectoryFileError, match=says):
        parse(data, "json")


def test_the_example_stays_in_sync_with_the_personas() -> None:
    """examples/directory-demo.csv says what mock_operator/personas.toml says: people,
    their BAL and platform, and the delegations each receives."""
    parsed = parse(EXAMPLE.read_bytes(), "csv")
    assert parsed.errors == ()
    personas = default_personas()
    assert {p.idnat: (p.given_name, p.family_name, p.profession) for p in parsed.people} == {
        p.idnat: (p.given_name, p.family_name, p.profession) for p in personas
    }
    assert {b.address: (b.holder_idnat, b.backend, b.type) for b in parsed.bals} == {
        p.bal: (p.idnat, p.platform, "PER") for p in personas if p.bal
    }
    listed = {
        (b.address, d.delegate_idnat, d.rights, d.expires_in_days)
        for b in parsed.bals
        for d in b.delegations or ()
    }
    assert listed == {
        (d.mailbox, p.idnat, frozenset(d.rights), d.expires_in_days)
        for p in personas
        for d in p.delegations
    }


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from(["csv", "json"]))
def test_any_bytes_give_records_or_the_parsers_own_error(data: bytes, fmt: str) -> None:
    limits = Limits(max_bytes=1500, max_line=300, max_lines=20)
    try:
        parsed = parse(data, "csv" if fmt == "csv" else "json", limits)
    except DirectoryFileError:
        return
    assert len(data) <= limits.max_bytes
    assert len(parsed.bals) + len(parsed.people) <= limits.max_lines


LINE = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n"), max_size=120)


@settings(max_examples=200, deadline=None)
@given(st.lists(LINE, max_size=15))
def test_any_lines_after_the_header_give_records_or_refusals_by_line(lines: list[str]) -> None:
    data = csv(*lines, header=HEADER + "|delegations|backend")
    try:
        parsed = parse(data, "csv", Limits(max_line=100))
    except DirectoryFileError:
        return  # e.g. a lone surrogate is not UTF-8
    numbers = {int(e.at.removeprefix("line ")) for e in parsed.errors}
    assert numbers <= set(range(2, len(lines) + 2))
    for bal in parsed.bals:
        assert bal.address == bal.address.strip().lower()
        assert len(bal.address) <= 255


@pytest.mark.parametrize("count", [100, 101])
def test_a_delegations_cell_holds_max_delegations_and_no_more(count: int) -> None:
    """The cell has its own bound (not `max_field`), and a line carrying it whole still
    fits in `max_line`."""
    limits = Limits()
    cell = ";".join(f"8997{n:08d}:read+write+send:3650" for n in range(10, 10 + count))
    assert len(cell) > limits.max_field
    assert limits.max_delegations_cell + 1024 < limits.max_line
    line = f"ORG|secretariat@hopital.mssante.fr||||{'X' * 100}|{cell}"
    parsed = parse(
        csv(line, header=HEADER + "|Raison sociale structure BAL|delegations"), "csv", limits
    )
    if count <= limits.max_delegations:
        assert parsed.errors == ()
        [box] = parsed.bals
        assert box.delegations is not None
        assert len(box.delegations) == count
    else:
        assert [p.message for p in parsed.errors] == ["more than 100 delegations on one BAL"]
