"""IMAP SEARCH evaluation against a small corpus of realistic French MSSanté messages."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.imap import search as search_mod
from gateway.imap.message import address_text
from gateway.imap.search import (
    SUPPORTED_CHARSETS,
    Candidate,
    SearchError,
    matches,
    needs_message,
    validate,
)
from gateway.imap.syntax import SearchKey, SeqRange, SequenceSet

UTC = dt.UTC
PARIS = dt.timezone(dt.timedelta(hours=1))


def K(name: str, *args: str | int | dt.date | SequenceSet | SearchKey) -> SearchKey:
    return SearchKey(name, args)


def S(*ranges: tuple[int | None, int | None] | int | None) -> SequenceSet:
    """`S(5)` is ``5``, `S((2, None))` is ``2:*``, `S(None)` is ``*``."""
    return SequenceSet(
        tuple(
            SeqRange(*item) if isinstance(item, tuple) else SeqRange(item, item) for item in ranges
        )
    )


def D(day: int) -> dt.date:
    return dt.date(2025, 3, day)


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii")


# -- corpus -------------------------------------------------------------------------------

# 1: UTF-8 quoted-printable (with a soft line break inside "hémoglobine"), encoded words.
RESULTATS = _crlf("""\
Return-Path: <elodie.martin@chu-rennes.mssante.fr>
From: =?utf-8?q?Dr_=C3=89lodie_Martin?= <elodie.martin@chu-rennes.mssante.fr>
To: =?utf-8?q?J=C3=A9r=C3=B4me_Dupont?= <jerome.dupont@medecin.mssante.fr>
Cc: secretariat@cabinet-dupont.mssante.fr
Subject: =?utf-8?q?R=C3=A9sultats?= d'analyses
 =?utf-8?q?biologiques_=E2=80=93_urgent?=
Date: Mon, 03 Mar 2025 23:30:00 -0500
Message-ID: <20250303.1@chu-rennes.mssante.fr>
X-Priority: 1
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Bonjour Docteur,

Veuillez trouver les r=C3=A9sultats de l'h=C3=A9mo=
globine glyqu=C3=A9e : 6,8 %.

Bien confraternellement,
=C3=89lodie
""")

# 2: ISO-8859-1 body in base64, name in an address comment, a Bcc.
COMPTE_RENDU_BODY = (
    "Compte-rendu opératoire du patient ÉMILE Durand.\r\n"
    "Suites opératoires simples, ablation des fils à J10.\r\n"
).encode("iso-8859-1")
COMPTE_RENDU = _crlf(f"""\
From: secretariat@clinique-st-joseph.mssante.fr (=?iso-8859-1?q?Secr=E9tariat_Clinique?=)
To: "Dupont, Jerome" <jerome.dupont@medecin.mssante.fr>
Bcc: archives@clinique-st-joseph.mssante.fr
Subject: =?iso-8859-1?q?Compte-rendu_op=E9ratoire?=
Date: Tue, 4 Mar 2025 10:15:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=ISO-8859-1
Content-Transfer-Encoding: base64

{_b64(COMPTE_RENDU_BODY)}""")

# 3: multipart/mixed: alternative (8-bit UTF-8 + HTML), a PDF, a forwarded message.
IRM = _crlf(f"""\
From: Cabinet de radiologie <contact@radio-nantes.mssante.fr>
To: jerome.dupont@medecin.mssante.fr
Cc: =?utf-8?b?w4lsb2RpZSBNYXJ0aW4=?= <elodie.martin@chu-rennes.mssante.fr>
Subject: Compte rendu IRM genou
Date: Wed, 05 Mar 2025 08:00:00 +0100
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="=-limite-1"

Ceci est un message MIME.
--=-limite-1
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Lésion méniscale interne, grade II.
--alt
Content-Type: text/html; charset=utf-8

<p>L&eacute;sion m&eacute;niscale interne</p>
--alt--
--=-limite-1
Content-Type: application/pdf; name="irm-genou.pdf"
Content-Disposition: attachment; filename="irm-genou.pdf"
Content-Transfer-Encoding: base64

{_b64(b"%PDF-1.4 confidentiel-pdf-marqueur")}
--=-limite-1
Content-Type: message/rfc822

From: Service des urgences <urgences@chu-nantes.mssante.fr>
Subject: =?utf-8?q?Demande_d=27examen?=

Merci de programmer l'IRM.
--=-limite-1--
""")

# 4: no Date: header, raw 8-bit UTF-8 in a header, 8-bit body without a charset.
RAPPEL = _crlf("""\
From: rdv@prise-rdv.exemple.fr
To: jerome.dupont@medecin.mssante.fr
Subject: Rappel : rendez-vous du 12 mars
X-Etablissement: Hôpital Privé du Confluent
Content-Type: text/plain

Votre rendez-vous est confirmé.
""")

# 5: unparsable Date:, no Subject:, a part in an unknown charset.
ORDONNANCE = _crlf("""\
From: pharmacie@officine.exemple.fr
To: jerome.dupont@medecin.mssante.fr
Date: demain matin
Content-Type: text/plain; charset=x-inconnu
Content-Transfer-Encoding: quoted-printable

Prescription renouvel=C3=A9e pour trois mois.
""")

# (message, flags, internal date, RFC822.SIZE as the store reports it, recent)
CORPUS: list[tuple[bytes, frozenset[str], dt.datetime, int, bool]] = [
    (RESULTATS, frozenset({"\\Seen", "\\Answered"}), dt.datetime(2025, 3, 4, 5, 31, tzinfo=UTC),
     1200, False),
    (COMPTE_RENDU, frozenset({"\\Flagged", "$Urgent"}),
     dt.datetime(2025, 3, 4, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))), 3400, True),
    (IRM, frozenset({"\\SEEN", "\\deleted", "travail"}), dt.datetime(2025, 3, 5, 9, tzinfo=PARIS),
     56000, True),
    (RAPPEL, frozenset({"\\Draft"}),
     dt.datetime(2025, 3, 6, 22, tzinfo=dt.timezone(dt.timedelta(hours=-5))), 800, False),
    (ORDONNANCE, frozenset(), dt.datetime(2025, 3, 7, 12, tzinfo=UTC), 150000, False),
]  # fmt: skip
UIDS = (10, 20, 30, 40, 50)
EVERYTHING = frozenset({1, 2, 3, 4, 5})


def corpus(*, load: bool = True) -> list[Candidate]:
    """Fresh candidates (nothing cached), seq 1..5 with UIDs 10..50."""
    return [
        Candidate(seq, uid, flags, date, size, recent, message if load else None)
        for seq, uid, (message, flags, date, size, recent) in zip(
            range(1, 6), UIDS, CORPUS, strict=True
        )
    ]


def run(key: SearchKey, candidates: list[Candidate] | None = None) -> set[int]:
    """What the engine does: validate, load bytes only if needed, AND at the top level."""
    top = K("AND", key)
    validate(top, "UTF-8")
    if candidates is None:
        candidates = corpus(load=needs_message(top))
    return {c.seq for c in candidates if matches(top, c, largest_seq=5, largest_uid=50)}


# fmt: off
KEY_NAMES = frozenset({
    "ALL", "ANSWERED", "BCC", "BEFORE", "BODY", "CC", "DELETED", "DRAFT", "FLAGGED", "FROM",
    "HEADER", "KEYWORD", "LARGER", "NEW", "NOT", "OLD", "ON", "OR", "RECENT", "SEEN",
    "SENTBEFORE", "SENTON", "SENTSINCE", "SINCE", "SMALLER", "SUBJECT", "TEXT", "TO", "UID",
    "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNKEYWORD", "UNSEEN", "SEQSET", "AND",
})
MESSAGE_KEY_NAMES = frozenset({
    "BCC", "BODY", "CC", "FROM", "HEADER", "SENTBEFORE", "SENTON", "SENTSINCE", "SUBJECT", "TEXT",
    "TO",
})
# fmt: on

CASES: list[tuple[SearchKey, set[int]]] = [
    (K("ALL"), {1, 2, 3, 4, 5}),
    (K("ANSWERED"), {1}),
    (K("UNANSWERED"), {2, 3, 4, 5}),
    (K("DELETED"), {3}),  # stored as "\\deleted": flags are case-insensitive
    (K("UNDELETED"), {1, 2, 4, 5}),
    (K("DRAFT"), {4}),
    (K("UNDRAFT"), {1, 2, 3, 5}),
    (K("FLAGGED"), {2}),
    (K("UNFLAGGED"), {1, 3, 4, 5}),
    (K("SEEN"), {1, 3}),  # 3 has "\\SEEN"
    (K("UNSEEN"), {2, 4, 5}),
    (K("RECENT"), {2, 3}),
    (K("NEW"), {2}),  # 3 is recent but seen
    (K("OLD"), {1, 4, 5}),
    (K("KEYWORD", "$urgent"), {2}),
    (K("KEYWORD", "TRAVAIL"), {3}),
    (K("KEYWORD", "Personnel"), set()),
    (K("UNKEYWORD", "$Urgent"), {1, 3, 4, 5}),
    (K("UNKEYWORD", "Personnel"), {1, 2, 3, 4, 5}),
    (K("LARGER", 3400), {3, 5}),  # strict
    (K("LARGER", 3399), {2, 3, 5}),
    (K("LARGER", 150000), set()),
    (K("SMALLER", 1200), {4}),  # strict
    (K("SMALLER", 1201), {1, 4}),
    (K("SMALLER", 800), set()),
    # internal dates, each in its own offset: 3 Mar 2025 does not exist there (2 is 3 Mar in
    # UTC), and 4 is 6 Mar (7 Mar in UTC)
    (K("ON", D(4)), {1, 2}),
    (K("ON", D(3)), set()),
    (K("ON", D(7)), {5}),
    (K("BEFORE", D(5)), {1, 2}),
    (K("BEFORE", D(4)), set()),
    (K("SINCE", D(5)), {3, 4, 5}),
    (K("SINCE", D(6)), {4, 5}),
    # Date: headers in their own offset; 4 has none and 5 an unparsable one: internal date
    (K("SENTON", D(3)), {1}),  # 23:30 -0500, although 4 Mar in UTC
    (K("SENTON", D(4)), {2}),
    (K("SENTON", D(6)), {4}),
    (K("SENTON", D(7)), {5}),
    (K("SENTBEFORE", D(4)), {1}),
    (K("SENTBEFORE", D(3)), set()),
    (K("SENTSINCE", D(5)), {3, 4, 5}),
    (K("SENTSINCE", D(8)), set()),
    (K("SUBJECT", "résultats"), {1}),
    (K("SUBJECT", "RÉSULTATS D'ANALYSES BIOLOGIQUES \N{EN DASH} URGENT"), {1}),  # words + folding
    (K("SUBJECT", "opératoire"), {2}),  # ISO-8859-1 encoded word
    (K("SUBJECT", "compte"), {2, 3}),
    (K("SUBJECT", ""), {1, 2, 3, 4}),  # 5 has no Subject:
    (K("SUBJECT", "hémoglobine"), set()),  # body only
    (K("FROM", "élodie"), {1}),
    (K("FROM", "DR ÉLODIE MARTIN <elodie.martin@"), {1}),
    (K("FROM", "secrétariat clinique"), {2}),  # comment, ISO-8859-1 encoded word
    (K("FROM", "@RADIO-NANTES"), {3}),
    (K("FROM", "urgences"), set()),  # only in the forwarded message
    (K("TO", "jérôme"), {1}),
    (K("TO", "jerome.dupont@medecin"), {1, 2, 3, 4, 5}),
    (K("TO", "dupont, jerome"), {2}),
    (K("TO", "radio-nantes"), set()),
    (K("CC", "élodie martin"), {3}),  # base64 encoded word
    (K("CC", "secretariat@cabinet"), {1}),
    (K("CC", "archives"), set()),
    (K("BCC", "ARCHIVES@"), {2}),
    (K("BCC", "secretariat@cabinet"), set()),
    (K("HEADER", "X-PRIORITY", "1"), {1}),
    (K("HEADER", "MESSAGE-ID", ""), {1}),  # presence
    (K("HEADER", "SUBJECT", ""), {1, 2, 3, 4}),
    (K("HEADER", "X-ABSENT", ""), set()),
    (K("HEADER", "X-ETABLISSEMENT", "HÔPITAL PRIVÉ"), {4}),  # raw 8-bit UTF-8 header
    (K("HEADER", "DATE", "demain"), {5}),
    (K("HEADER", "CONTENT-TYPE", "multipart/mixed"), {3}),
    (K("HEADER", "X-PRIORITY", "2"), set()),
    (K("BODY", "hémoglobine glyquée"), {1}),  # across a quoted-printable soft line break
    (K("BODY", "ÉMILE durand"), {2}),  # ISO-8859-1 in base64
    (K("BODY", "émile"), {2}),
    (K("BODY", "ablation des fils à j10"), {2}),
    (K("BODY", "LÉSION MÉNISCALE"), {3}),  # 8-bit UTF-8 part
    (K("BODY", "&eacute;"), {3}),  # HTML is searched as written
    (K("BODY", "programmer l'irm"), {3}),  # forwarded message body
    (K("BODY", "demande d'examen"), {3}),  # forwarded message headers, decoded
    (K("BODY", "confidentiel-pdf-marqueur"), set()),  # attachments are not text
    (K("BODY", "confirmé"), {4}),  # 8-bit, no charset: UTF-8
    (K("BODY", "renouvelée"), {5}),  # unknown charset: UTF-8
    (K("BODY", "analyses"), set()),  # only in 1's Subject:
    (K("BODY", "Ceci est un message MIME"), set()),  # preamble is not a part
    (K("TEXT", "analyses"), {1}),
    (K("TEXT", "hémoglobine"), {1}),
    (K("TEXT", "IRM genou"), {3}),  # "irm" alone is in "confirmé"
    (K("TEXT", "subject:"), {1, 2, 3, 4}),
    (K("TEXT", "clinique-st-joseph"), {2}),
    (K("TEXT", "introuvable"), set()),
    (K("SEQSET", S((2, 3))), {2, 3}),
    (K("SEQSET", S((4, None))), {4, 5}),
    (K("SEQSET", S((None, 4))), {4, 5}),  # reversed: *:4 is 4:*
    (K("SEQSET", S((3, 1))), {1, 2, 3}),
    (K("SEQSET", S(None)), {5}),
    (K("SEQSET", S(1, 5)), {1, 5}),
    (K("SEQSET", S((7, 9))), set()),
    (K("UID", S(20)), {2}),
    (K("UID", S(2)), set()),  # a sequence number, not a UID
    (K("UID", S((25, 45))), {3, 4}),
    (K("UID", S((45, 25))), {3, 4}),
    (K("UID", S(None)), {5}),
    (K("UID", S((60, None))), {5}),  # every UID < 60: 60:* is still the largest UID
    (K("UID", S((51, 60))), set()),
    (K("UID", S((1, 15), 40)), {1, 4}),
    (K("NOT", K("SEEN")), {2, 4, 5}),
    (K("NOT", K("ALL")), set()),
    (K("NOT", K("NOT", K("FLAGGED"))), {2}),
    (K("NOT", K("OR", K("SEEN"), K("KEYWORD", "$urgent"))), {4, 5}),
    (K("OR", K("SEEN"), K("FLAGGED")), {1, 2, 3}),
    (K("OR", K("BODY", "émile"), K("SUBJECT", "rappel")), {2, 4}),
    (K("OR", K("OR", K("ANSWERED"), K("DRAFT")), K("AND", K("RECENT"), K("NOT", K("FLAGGED")))),
     {1, 3, 4}),
    (K("OR", K("DELETED"), K("KEYWORD", "absent")), {3}),
    (K("AND", K("SEEN"), K("SUBJECT", "compte")), {3}),
    (K("AND", K("UID", S((1, None))), K("NOT", K("SEQSET", S((1, 2)))),
       K("OR", K("FROM", "élodie"), K("CC", "élodie"))), {3}),
    (K("AND", K("SINCE", D(4)), K("BEFORE", D(6)), K("UNSEEN")), {2}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "expected"), CASES, ids=[f"{i}-{k.name}" for i, (k, _) in enumerate(CASES)]
)
def test_key(key: SearchKey, expected: set[int]) -> None:
    assert run(key) == expected


def test_cases_cover_every_key_both_ways() -> None:
    """Each key name has a case some message matches and (ALL aside) one some message fails."""
    positive = {key.name for key, expected in CASES if expected}
    negative = {key.name for key, expected in CASES if expected != EVERYTHING}
    assert positive >= KEY_NAMES
    assert negative >= KEY_NAMES - {"ALL"}


def test_cached_candidates_give_the_same_answers() -> None:
    """One candidate list reused for every key: cached decoding must not leak between keys."""
    shared = corpus()
    for key, expected in CASES:
        assert run(key, shared) == expected, key


@pytest.mark.parametrize("name", sorted(KEY_NAMES - {"AND", "OR", "NOT"}))
def test_needs_message(name: str) -> None:
    key = _sample(name)
    assert needs_message(key) is (name in MESSAGE_KEY_NAMES)
    assert needs_message(K("NOT", K("OR", K("SEEN"), K("AND", K("UID", S(1)), key)))) is (
        name in MESSAGE_KEY_NAMES
    )


def _sample(name: str) -> SearchKey:
    """A valid key of that name."""
    if name == "HEADER":
        return K(name, "X-PRIORITY", "1")
    if name in ("SEQSET", "UID"):
        return K(name, S((1, None)))
    if name in ("LARGER", "SMALLER"):
        return K(name, 10)
    if name.endswith(("BEFORE", "ON", "SINCE")):
        return K(name, D(4))
    if name in MESSAGE_KEY_NAMES or name.endswith("KEYWORD"):
        return K(name, "mot")
    return K(name)


def test_message_none_is_fine_unless_needed() -> None:
    lazy = corpus(load=False)
    assert matches(K("AND", K("SEEN"), K("UID", S(10))), lazy[0], largest_seq=5, largest_uid=50)
    with pytest.raises(ValueError, match="not loaded"):
        matches(K("SUBJECT", "x"), lazy[0], largest_seq=5, largest_uid=50)


# -- validate ---------------------------------------------------------------------------


@pytest.mark.parametrize("charset", [None, "UTF-8", "utf-8", "US-ASCII", "us-ascii"])
def test_validate_accepts_supported_charsets(charset: str | None) -> None:
    validate(K("AND", K("SUBJECT", "résultats")), charset)  # 8-bit text even with US-ASCII
    assert SUPPORTED_CHARSETS == ("UTF-8", "US-ASCII")


@pytest.mark.parametrize("charset", ["ISO-8859-1", "KOI8-R", "UTF8", ""])
def test_validate_rejects_other_charsets(charset: str) -> None:
    with pytest.raises(SearchError) as caught:
        validate(K("AND", K("ALL")), charset)
    assert caught.value.code == "BADCHARSET"
    assert charset in caught.value.text


def _nested(depth: int) -> SearchKey:
    key = K("SEEN")
    for _ in range(depth):
        key = K("NOT", key)
    return key


@pytest.mark.parametrize(
    "key",
    [
        K("FOO"),
        K("seen"),  # names are upper case by contract
        K("ALL", "x"),
        K("SEEN", 1),
        K("OR", K("SEEN")),
        K("OR", K("SEEN"), K("DRAFT"), K("FLAGGED")),
        K("NOT"),
        K("NOT", K("SEEN"), K("DRAFT")),
        K("NOT", "SEEN"),
        K("AND"),
        K("AND", K("SEEN"), K("OR", K("DRAFT"), K("BOGUS"))),
        K("LARGER", "abc"),
        K("LARGER", -1),
        K("LARGER", 2**32),
        K("SMALLER", True),
        K("SMALLER"),
        K("BEFORE", "1-Mar-2025"),
        K("ON", dt.datetime(2025, 3, 1, tzinfo=UTC)),
        K("SUBJECT", 3),
        K("SUBJECT"),
        K("SUBJECT", "a", "b"),
        K("HEADER", "SUBJECT"),
        K("HEADER", "X:Y", "v"),
        K("HEADER", "", "v"),
        K("HEADER", "X PRIORITY", "v"),
        K("KEYWORD", "\\Seen"),
        K("KEYWORD", "mot clé"),
        K("UNKEYWORD", ""),
        K("UID", "1:*"),
        K("UID", SequenceSet(())),
        K("SEQSET", S(0)),
        K("SEQSET", S((1, 2**32))),
        _nested(search_mod.MAX_DEPTH),
    ],
    ids=repr,
)
def test_validate_rejects_malformed_keys(key: SearchKey) -> None:
    with pytest.raises(SearchError) as caught:
        validate(K("AND", key), "UTF-8")
    assert caught.value.code is None
    assert caught.value.text


def test_validate_accepts_every_sample() -> None:
    validate(K("AND", *(_sample(name) for name in sorted(KEY_NAMES - {"AND", "OR", "NOT"}))), None)


def test_nesting_limit() -> None:
    deepest = _nested(search_mod.MAX_DEPTH - 1)  # MAX_DEPTH levels counting the leaf
    validate(deepest, None)
    with pytest.raises(SearchError, match="nested too deeply"):
        validate(_nested(search_mod.MAX_DEPTH), None)
    assert run(_nested(search_mod.MAX_DEPTH - 2)) == {1, 3}  # an even number of NOTs: SEEN
    assert run(_nested(search_mod.MAX_DEPTH - 3)) == {2, 4, 5}


def test_deep_or_chain() -> None:
    """What a client sends for a list of UIDs; compiled once, not walked per message."""
    keys = [K("UID", S(1000 + i)) for i in range(search_mod.MAX_DEPTH - 4)]
    chain = K("UID", S(40))
    for key in [K("UID", S(20)), *keys]:
        chain = K("OR", key, chain)
    assert run(chain) == {2, 4}
    assert run(K("NOT", chain)) == {1, 3, 5}


@pytest.mark.parametrize("key", [K("FOO"), K("LARGER", "x"), K("OR", K("SEEN")), K("NOT")])
def test_matches_refuses_unvalidated_malformed_keys(key: SearchKey) -> None:
    with pytest.raises(SearchError) as caught:
        matches(key, corpus()[0], largest_seq=5, largest_uid=50)
    assert caught.value.code is None


# -- decoding cost and robustness -------------------------------------------------------


@pytest.fixture
def parse_counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"headers": 0, "body": 0}

    def counting(name: str, real: Callable[[bytes], object]) -> Callable[[bytes], object]:
        def wrapper(raw: bytes) -> object:
            counts[name] += 1
            return real(raw)

        return wrapper

    monkeypatch.setattr(
        search_mod, "_parse_headers", counting("headers", search_mod._parse_headers)
    )
    monkeypatch.setattr(search_mod, "_parse_body", counting("body", search_mod._parse_body))
    return counts


def test_each_message_decoded_at_most_once(parse_counts: dict[str, int]) -> None:
    key = K(
        "AND",
        K("OR", K("SUBJECT", "zz"), K("NOT", K("FROM", "zz"))),
        K("OR", K("TEXT", "zz"), K("NOT", K("BODY", "zz"))),
        K("NOT", K("HEADER", "X-PRIORITY", "zz")),
        K("OR", K("SENTSINCE", D(1)), K("BODY", "zz")),
        K("NOT", K("TEXT", "zz")),
    )
    candidates = corpus()
    first = [matches(key, c, largest_seq=5, largest_uid=50) for c in candidates]
    again = [matches(key, c, largest_seq=5, largest_uid=50) for c in candidates]
    assert first == again == [True] * 5
    assert parse_counts == {"headers": 5, "body": 5}


def test_cheap_keys_spare_decoding(parse_counts: dict[str, int]) -> None:
    """SUBJECT comes first in the command, yet unseen messages are never decoded."""
    assert run(K("AND", K("SUBJECT", "compte"), K("SEEN"))) == {3}
    assert parse_counts == {"headers": 2, "body": 0}


def test_header_only_keys_do_not_decode_bodies(parse_counts: dict[str, int]) -> None:
    assert run(K("OR", K("FROM", "élodie"), K("SENTON", D(7)))) == {1, 5}
    assert parse_counts == {"headers": 5, "body": 0}


def test_body_text_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_mod, "MAX_BODY_TEXT", 40)
    message = _crlf("Subject: long\n\n" + "début " + "x" * 100 + " fin du message\n")
    assert run(K("BODY", "début"), [_candidate(message)]) == {1}
    assert run(K("BODY", "fin du message"), [_candidate(message)]) == set()
    assert run(K("SUBJECT", "long"), [_candidate(message)]) == {1}  # headers are not capped


def test_parsed_bytes_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_mod, "MAX_PARSE_BYTES", 300)
    message = _crlf(
        "Subject: pièces\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        "Content-Type: text/plain; charset=utf-8\n\nau début\n--b\n"
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        + _b64(("ligne\n" * 200 + "tout à la fin").encode())
        + "--b--\n"
    )
    assert len(message) > 1000
    assert run(K("BODY", "au début"), [_candidate(message)]) == {1}
    assert run(K("BODY", "tout à la fin"), [_candidate(message)]) == set()
    assert run(K("TEXT", "tout à la fin"), [_candidate(message)]) == set()


def test_unicode_folding_and_normalisation() -> None:
    """casefold() (not lower()) and NFKC: "ß" is "ss", a decomposed "é" is "é", "ﬁ" is "fi";
    accents still count."""
    subject = "Résumé de la Straße, ﬁche".replace("é", "e\u0301")  # NFD, as macOS writes
    encoded = base64.b64encode(subject.encode()).decode()
    candidate = _candidate(_crlf(f"Subject: =?utf-8?b?{encoded}?=\n\nx\n"))
    for needle in ("RÉSUMÉ", "résumé", "STRASSE", "straße", "FICHE"):
        assert matches(K("SUBJECT", needle), candidate, largest_seq=1, largest_uid=1), needle
    assert not matches(K("SUBJECT", "resume"), candidate, largest_seq=1, largest_uid=1)


def test_header_block_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_mod, "MAX_HEADER_BYTES", 60)
    message = _crlf("Subject: début\nX-Filler: " + "x" * 60 + "\nX-Late: tard\n\ncorps\n")
    assert run(K("SUBJECT", "début"), [_candidate(message)]) == {1}
    assert run(K("HEADER", "X-LATE", ""), [_candidate(message)]) == set()
    assert run(K("BODY", "corps"), [_candidate(message)]) == {1}


def test_long_encoded_header_is_fully_decoded() -> None:
    """Decoded in chunks (the email parser is quadratic in one value's length)."""
    names = ", ".join(f"=?utf-8?q?Dr_J=C3=A9r=C3=B4me_{i}?= <j{i}@x.fr>" for i in range(3000))
    message = _crlf(f"To: {names}\nSubject: liste\n\nx\n")
    assert len(message) > 100_000
    candidate = _candidate(message)
    for needle in ("Dr Jérôme 0 <j0@", "dr jérôme 1500 <j1500@", "Jérôme 2999 <j2999@x.fr>"):
        assert matches(K("TO", needle), candidate, largest_seq=1, largest_uid=1), needle
    assert not matches(K("TO", "=?utf-8?"), candidate, largest_seq=1, largest_uid=1)


def _many_parts(count: int) -> bytes:
    parts = "".join(
        f"--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        f"{_b64(f'partie {i} café'.encode())}"
        for i in range(count)
    )
    return _crlf(f"Subject: pièces\nContent-Type: multipart/mixed; boundary=b\n\n{parts}--b--\n")


def test_costly_mime_structures_are_searched_raw() -> None:
    """Hundreds of parts (or deep nesting) cost the parser ~1 ms each: raw text instead."""
    few = _candidate(_many_parts(search_mod.MAX_MIME_PARTS - 1))
    assert matches(K("BODY", "partie 498 café"), few, largest_seq=1, largest_uid=1)
    many = _candidate(_many_parts(search_mod.MAX_MIME_PARTS + 1))
    assert not matches(K("BODY", "partie 1 café"), many, largest_seq=1, largest_uid=1)
    raw_word = _b64(b"partie 1 caf\xc3\xa9").strip()  # the part as it is written
    assert matches(K("BODY", raw_word), many, largest_seq=1, largest_uid=1)
    assert matches(K("SUBJECT", "pièces"), many, largest_seq=1, largest_uid=1)


def _candidate(message: bytes, *, seq: int = 1) -> Candidate:
    return Candidate(
        seq,
        seq,
        frozenset(),
        dt.datetime(2025, 3, 9, 12, tzinfo=PARIS),
        len(message),
        False,
        message,
    )


def _deep_multipart(depth: int) -> bytes:
    head = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(depth)
    )
    return b"Subject: profond\r\n" + head + b"Content-Type: text/plain\r\n\r\ntout au fond\r\n"


MALFORMED: list[tuple[bytes, SearchKey, bool]] = [
    (b"", K("HEADER", "SUBJECT", ""), False),
    (b"", K("BODY", ""), True),
    (b"", K("SENTON", dt.date(2025, 3, 9)), True),
    (b"\x00\xff\xfe pas d'en-t\xeates\r\n", K("FROM", ""), False),
    (b"\x00\xff\xfe pas d'en-t\xeates\r\n", K("TEXT", "pas d'en-t"), True),
    (b"Subject: =?utf-8?q?caf=C3=A9 sans fin\r\n\r\nx", K("SUBJECT", "sans fin"), True),
    (b"Subject: =?x-klingon?q?abc?=\r\n\r\nx", K("SUBJECT", "abc"), True),
    (b"Subject: =?utf-8?b?!!!?=\r\n\r\nx", K("SUBJECT", "zz"), False),
    (b"Subject: R\xe9sultats en latin-1 brut\r\n\r\nx", K("SUBJECT", "sultats en latin-1"), True),
    (b"From a@b\r\nSubject: ligne sans deux-points\r\n\r\nx", K("TEXT", "deux-points"), True),
    (b"From: a@b.fr\r\nTo: c@d.fr", K("TO", "c@d.fr"), True),  # no body at all
    (b"From: a@b.fr\n\nfins de ligne unix\n", K("BODY", "unix"), True),
    (b"Date: Fri, 31 Feb 2025 10:00:00 +0100\r\n\r\nx", K("SENTON", dt.date(2025, 3, 9)), True),
    (b"Date: Mon, 1 Jan 99999 10:00:00 +0100\r\n\r\nx", K("SENTON", dt.date(2025, 3, 9)), True),
    (b"Date: Mon, 3 Mar 2025 10:00:00 +9999\r\n\r\nx", K("SENTBEFORE", dt.date(2030, 1, 1)), True),
    (b"Content-Type: multipart/mixed\r\n\r\nsans limite\r\n", K("BODY", "sans limite"), True),
    (
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n"
        b"\r\nbonjour\r\n--XX\r\nContent-Type: text/plain; charset=x-unknown\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nYm9u!!!am91c",
        K("BODY", "bonjour"),
        True,
    ),
    (
        b"Content-Type: text/plain; charset=rot13\r\n\r\nqbpgrhe",
        K("BODY", "qbpgrhe"),
        True,
    ),  # not a text codec: UTF-8
    (
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: x-bogus\r\n"
        b"\r\ncontenu \xc3\xa9trange",
        K("BODY", "contenu étrange"),
        True,
    ),
    (
        b"Content-Type: text/plain; charset=utf-8\r\n\r\noctets \xff\xfe invalides",
        K("BODY", "invalides"),
        True,
    ),
    (b"Content-Type: text/plain; charset*=''\r\n\r\nparam", K("BODY", "param"), True),
    (_deep_multipart(300), K("BODY", "tout au fond"), True),
    (_deep_multipart(300), K("SUBJECT", "profond"), True),
]


@pytest.mark.parametrize(
    ("message", "key", "expected"),
    MALFORMED,
    ids=[f"{i}-{key.name}" for i, (_, key, _) in enumerate(MALFORMED)],
)
def test_malformed_messages_never_raise(message: bytes, key: SearchKey, expected: bool) -> None:
    candidate = _candidate(message)
    assert matches(key, candidate, largest_seq=1, largest_uid=1) is expected
    every = [_sample(name) for name in sorted(MESSAGE_KEY_NAMES)]
    for other in every:  # the cached forms serve every other key without raising
        assert isinstance(matches(other, candidate, largest_seq=1, largest_uid=1), bool)
    assert matches(K("TEXT", ""), candidate, largest_seq=1, largest_uid=1)


# -- algebra: NOT / OR / AND against a model of sets -----------------------------------

WORDS = ("Résultats", "RÉSULTATS", "bilan", "Ordonnance", "été")
FLAGS = ("\\Seen", "\\SEEN", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Urgent", "Suivi")


@st.composite
def candidates(draw: st.DrawFn) -> list[Candidate]:
    count = draw(st.integers(1, 6))
    uid = 0
    result = []
    for seq in range(1, count + 1):
        uid += draw(st.integers(1, 5))
        subject = " ".join(draw(st.lists(st.sampled_from(WORDS), max_size=3)))
        day = draw(st.integers(1, 5))
        date_line = f"Date: {day} Mar 2025 23:30:00 -0500\n" if draw(st.booleans()) else ""
        body = " ".join(draw(st.lists(st.sampled_from(WORDS), max_size=3)))
        message = _crlf(f"Subject: {subject}\n{date_line}Content-Type: text/plain\n\n{body}\n")
        internal = dt.datetime(
            2025, 3, draw(st.integers(1, 5)), draw(st.integers(0, 23)),
            tzinfo=dt.timezone(dt.timedelta(hours=draw(st.integers(-11, 12)))),
        )  # fmt: skip
        result.append(
            Candidate(
                seq,
                uid,
                frozenset(draw(st.lists(st.sampled_from(FLAGS), max_size=4))),
                internal,
                draw(st.integers(0, 60)),
                draw(st.booleans()),
                message,
            )
        )
    return result


_numbers = st.one_of(st.none(), st.integers(1, 40))
_dates = st.integers(1, 6).map(D)
_text = st.sampled_from(("résultats", "RÉSULTATS", "bilan", "ordonnance", "été", ""))
LEAVES = st.one_of(
    st.sampled_from(
        [K(n) for n in sorted(KEY_NAMES - {"AND", "OR", "NOT"}) if not _sample(n).args]
    ),
    st.builds(K, st.sampled_from(("KEYWORD", "UNKEYWORD")), st.sampled_from(("$urgent", "suivi"))),
    st.builds(K, st.sampled_from(("LARGER", "SMALLER")), st.integers(0, 60)),
    st.builds(
        K, st.sampled_from(("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE")), _dates
    ),
    st.builds(
        K,
        st.sampled_from(("SEQSET", "UID")),
        st.lists(st.builds(SeqRange, _numbers, _numbers), min_size=1, max_size=3).map(
            lambda r: SequenceSet(tuple(r))
        ),
    ),
    st.builds(K, st.sampled_from(("SUBJECT", "BODY", "TEXT")), _text),
    st.builds(lambda v: K("HEADER", "DATE", v), st.sampled_from(("", "mar", "-0500"))),
)
KEYS = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.builds(lambda k: K("NOT", k), children),
        st.builds(lambda a, b: K("OR", a, b), children, children),
        st.lists(children, min_size=1, max_size=3).map(lambda ks: K("AND", *ks)),
    ),
    max_leaves=8,
)


def _matching(key: SearchKey, cands: list[Candidate]) -> set[int]:
    largest_uid = max(c.uid for c in cands)
    return {
        c.seq for c in cands if matches(key, c, largest_seq=len(cands), largest_uid=largest_uid)
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(candidates(), KEYS, KEYS, KEYS)
def test_boolean_algebra(cands: list[Candidate], a: SearchKey, b: SearchKey, c: SearchKey) -> None:
    for key in (a, b, c):
        validate(K("AND", key), "UTF-8")
    everything = {cand.seq for cand in cands}
    in_a, in_b, in_c = (_matching(k, cands) for k in (a, b, c))
    assert _matching(K("NOT", a), cands) == everything - in_a
    assert _matching(K("OR", a, b), cands) == in_a | in_b
    assert _matching(K("AND", a, b, c), cands) == in_a & in_b & in_c
    assert _matching(K("AND", a, K("NOT", a)), cands) == set()


@settings(max_examples=100, deadline=None)
@given(candidates(), KEYS)
def test_needs_message_is_honest(cands: list[Candidate], key: SearchKey) -> None:
    """A key that says it needs no message evaluates the same with the bytes unloaded."""
    assume(not needs_message(key))
    unloaded = [
        Candidate(c.seq, c.uid, c.flags, c.internal_date, c.size, c.recent, None) for c in cands
    ]
    assert _matching(key, unloaded) == _matching(key, cands)


# -- address fields: the written text and the parsed addresses ----------------------------

ADDRESS_FORMS = [
    # (From, To): every way RFC 5322 lets an address be written
    (b"user-from@domain.org", b"user-to@domain.org"),
    (b"RealFrom <user-from@domain.org>", b"RealTo <user-to@domain.org>"),
    (b"<user-from (comment)@ (comment) domain.org>", b"<user-to@domain.org>"),
    (b"user-from@domain.org (RealFrom)", b"user-to@domain.org (RealTo)"),
    (b"user-from1@domain.org, user-from2@domain.org", None),
    (
        b"RealFrom <user-from@domain.org>",
        b"groupname: groupuser1@domain.org, groupuser2@domain.org;,\r\n"
        b"  groupname2: groupuser3@domain.org;",
    ),
    (b"RealFrom <user-from@domain.org>", b"groupname:;"),
    (b'"Dr =?utf-8?q?=C3=89ric?= Petit" <e.petit@x.fr>', b"=?utf-8?q?Z=C3=A9lie?= <z@x.fr>"),
]


def _addressed(index: int, sender: bytes, to: bytes | None) -> Candidate:
    message = b"From: " + sender + b"\r\n" + (b"To: " + to + b"\r\n" if to else b"")
    return _candidate(message + b"Subject: s\r\n\r\nbody\r\n", seq=index)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # RFC 3501 §6.4.4: a substring of the field; Dovecot also matches the addresses
        # as parsed, so a comment inside the address does not hide it (message 3)
        (K("FROM", "user-from@domain.org"), {1, 2, 3, 4, 6, 7}),
        (K("TO", "user-to@domain.org"), {1, 2, 3, 4}),
        (K("FROM", "ser-fro"), {1, 2, 3, 4, 5, 6, 7}),
        (K("FROM", "realfrom"), {2, 4, 6, 7}),
        (K("FROM", "ealfro"), {2, 4, 6, 7}),
        (K("TO", "realto"), {2, 4}),
        (K("FROM", "user-from1"), {5}),
        (K("FROM", "user-from2@domain.org"), {5}),
        (K("TO", "groupname"), {6, 7}),
        (K("TO", "groupname2"), {6}),
        (K("TO", "groupuser1"), {6}),
        (K("TO", "groupuser3@domain.org"), {6}),
        (K("TO", "groupuser4"), set()),
        (K("FROM", "RealFrom <user-from@domain.org>"), {2, 4, 6, 7}),
        (K("FROM", "(comment)"), {3}),  # the text as written still matches
        (K("FROM", "dr éric petit"), {8}),
        (K("FROM", "éric petit <e.petit@x.fr>"), {8}),
        (K("TO", "zélie <z@x.fr>"), {8}),
        (K("CC", "user"), set()),
        (K("HEADER", "FROM", "user-from@domain.org"), {1, 2, 4, 6, 7}),  # HEADER: text only
    ],
)
def test_address_keys_match_written_and_parsed_forms(key: SearchKey, expected: set[int]) -> None:
    cands = [_addressed(i, f, t) for i, (f, t) in enumerate(ADDRESS_FORMS, 1)]
    validate(key, None)
    assert {c.seq for c in cands if matches(key, c, largest_seq=8, largest_uid=8)} == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (b"a@b.org", b"a@b.org"),
        (b"<a (c1)@ (c2) b.org>", b"a@b.org"),
        (b"a@b.org (Name)", b"Name <a@b.org>"),
        (b'"Martin, Claire" <c@x.fr>', b"Martin, Claire <c@x.fr>"),
        (b"x@y (a) , z@w", b"a <x@y>, z@w"),
        (b"g: a@b, c@d;, e@f", b"g: a@b, c@d;, e@f"),
        (b"e@f, g: a@b;", b"e@f, g: a@b;"),
        (b"undisclosed-recipients:;", b"undisclosed-recipients: ;"),
        (b"", b""),
        (b"<>", b""),
    ],
)
def test_address_text(value: bytes, text: bytes) -> None:
    assert address_text(value) == text
