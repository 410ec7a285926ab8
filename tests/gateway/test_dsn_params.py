"""RFC 3461's SMTP parameters (`gateway.runtime.dsn`), on strings: xtext, what MAIL and RCPT
keep for aiosmtpd, what is refused with 501 5.5.4."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.runtime.dsn import (
    MAX_ENVID,
    MAX_ORCPT,
    DsnSyntaxError,
    MailDsn,
    Notify,
    RecipientDsn,
    _address_end,
    _scanned_address_end,
    mail_parameters,
    rcpt_parameters,
    xtext_decode,
    xtext_encode,
)

PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1)


@given(PRINTABLE)
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert all("!" <= c <= "~" for c in encoded)
    assert "=" not in encoded
    assert xtext_decode(encoded, "X") == text


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [("QQ314159", "QQ314159"), ("a+2Bb", "a+b"), ("+20x", " x"), ("Ab+3Dc", "Ab=c")],
)
def test_xtext_decodes(encoded: str, decoded: str) -> None:
    assert xtext_decode(encoded, "ENVID") == decoded


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("a+2b", id="lower-case-hex"),
        pytest.param("a+2", id="one-hex-digit"),
        pytest.param("a+", id="plus-alone"),
        pytest.param("a+GG", id="not-hex"),
        pytest.param("a=b", id="equals"),
        pytest.param("a b", id="space"),
        pytest.param("caf\u00e9", id="non-ascii"),
        pytest.param("a+0Db", id="decoded-cr"),
        pytest.param("a+0A", id="decoded-lf"),
        pytest.param("+00", id="decoded-nul"),
        pytest.param("+7F", id="decoded-del"),
        pytest.param("+C3+A9", id="decoded-8bit"),
    ],
)
def test_xtext_refused(bad: str) -> None:
    with pytest.raises(DsnSyntaxError) as refused:
        xtext_decode(bad, "ENVID")
    assert refused.value.reply.startswith("501 5.5.4 Bad ENVID parameter")


@pytest.mark.parametrize(
    ("arg", "rest", "dsn"),
    [
        ("FROM:<a@b.fr>", "FROM:<a@b.fr>", MailDsn()),
        ("FROM:<a@b.fr> RET=hdrs", "FROM:<a@b.fr>", MailDsn("HDRS")),
        (
            "FROM:<a@b.fr> BODY=8BITMIME ret=Full envid=Qq+2B1 SMTPUTF8",
            "FROM:<a@b.fr> BODY=8BITMIME SMTPUTF8",
            MailDsn("FULL", "Qq+1"),  # the ENVID as written: case kept
        ),
        ("from: <a@b.fr>  ENVID=x", "from: <a@b.fr>", MailDsn(envid="x")),
        # a quoted local part holding what looks like parameters is the address's
        ('FROM:<"x> RET=FULL"@b.fr> SIZE=10', 'FROM:<"x> RET=FULL"@b.fr> SIZE=10', MailDsn()),
        ("FROM:<> RET=HDRS", "FROM:<>", MailDsn("HDRS")),
        ("FROM:a@b.fr ENVID=z", "FROM:a@b.fr", MailDsn(envid="z")),
        ("NOT-FROM <a@b.fr> RET=HDRS", "NOT-FROM <a@b.fr> RET=HDRS", MailDsn()),  # aiosmtpd's
    ],
)
def test_mail_parameters(arg: str, rest: str, dsn: MailDsn) -> None:
    assert mail_parameters(arg) == (rest, dsn)


@pytest.mark.parametrize(
    "arg",
    [
        pytest.param("FROM:<a@b.fr> RET=PARTIAL", id="ret-unknown"),
        pytest.param("FROM:<a@b.fr> RET=", id="ret-empty"),
        pytest.param("FROM:<a@b.fr> RET", id="ret-without-value"),
        pytest.param("FROM:<a@b.fr> RET=FULL ret=HDRS", id="ret-twice"),
        pytest.param("FROM:<a@b.fr> ENVID=a ENVID=a", id="envid-twice"),
        pytest.param("FROM:<a@b.fr> ENVID=" + "x" * (MAX_ENVID + 1), id="envid-too-long"),
        pytest.param("FROM:<a@b.fr> ENVID=" + "+41" * (MAX_ENVID + 1), id="envid-encoded-long"),
        pytest.param("FROM:<a@b.fr> ENVID=a+0D+0ASubject:+20x", id="envid-crlf"),
    ],
)
def test_mail_parameters_refused(arg: str) -> None:
    with pytest.raises(DsnSyntaxError) as refused:
        mail_parameters(arg)
    assert refused.value.reply.startswith("501 5.5.4 ")


def test_envid_at_its_limit_even_fully_encoded() -> None:
    arg = "FROM:<a@b.fr> ENVID=" + "+2B" * MAX_ENVID
    assert mail_parameters(arg)[1].envid == "+" * MAX_ENVID


@pytest.mark.parametrize(
    ("arg", "rest", "dsn"),
    [
        ("TO:<a@b.fr>", "TO:<a@b.fr>", RecipientDsn()),
        ("TO:<a@b.fr> NOTIFY=NEVER", "TO:<a@b.fr>", RecipientDsn(frozenset())),
        (
            "TO:<a@b.fr> notify=success,Delay",
            "TO:<a@b.fr>",
            RecipientDsn(frozenset({Notify.SUCCESS, Notify.DELAY})),
        ),
        (
            "TO:<a@b.fr> NOTIFY=FAILURE,FAILURE ORCPT=RFC822;A+2Bx@B.fr",
            "TO:<a@b.fr>",
            RecipientDsn(frozenset({Notify.FAILURE}), ("rfc822", "A+x@B.fr")),
        ),
        (
            "TO:<a@b.fr> FOO=1 ORCPT=rfc822;a@b",
            "TO:<a@b.fr> FOO=1",
            RecipientDsn(None, ("rfc822", "a@b")),
        ),
    ],
)
def test_rcpt_parameters(arg: str, rest: str, dsn: RecipientDsn) -> None:
    assert rcpt_parameters(arg) == (rest, dsn)


@pytest.mark.parametrize(
    "arg",
    [
        pytest.param("TO:<a@b.fr> NOTIFY=NEVER,SUCCESS", id="never-and-success"),
        pytest.param("TO:<a@b.fr> NOTIFY=SUCCESS,", id="empty-element"),
        pytest.param("TO:<a@b.fr> NOTIFY=ALWAYS", id="unknown-event"),
        pytest.param("TO:<a@b.fr> NOTIFY=SUCCESS NOTIFY=FAILURE", id="notify-twice"),
        pytest.param("TO:<a@b.fr> ORCPT=a@b.fr", id="orcpt-without-type"),
        pytest.param("TO:<a@b.fr> ORCPT=;a@b.fr", id="orcpt-empty-type"),
        pytest.param("TO:<a@b.fr> ORCPT=rfc(822);a@b.fr", id="orcpt-type-not-atom"),
        pytest.param("TO:<a@b.fr> ORCPT=rfc822;", id="orcpt-empty-address"),
        pytest.param("TO:<a@b.fr> ORCPT=rfc822;a+0Db", id="orcpt-cr"),
        pytest.param("TO:<a@b.fr> ORCPT=rfc822;" + "a" * MAX_ORCPT, id="orcpt-too-long"),
        pytest.param("TO:<a@b.fr> ORCPT=rfc822;a ORCPT=rfc822;a", id="orcpt-twice"),
    ],
)
def test_rcpt_parameters_refused(arg: str) -> None:
    with pytest.raises(DsnSyntaxError):
        rcpt_parameters(arg)


def test_without_notify_failures_and_delays_only() -> None:
    absent, never = RecipientDsn(), RecipientDsn(frozenset())
    assert [absent.wants(e) for e in Notify] == [False, True, True]
    assert not any(never.wants(e) for e in Notify)
    assert RecipientDsn(frozenset({Notify.SUCCESS})).wants(Notify.SUCCESS)


@given(
    st.one_of(st.none(), st.frozensets(st.sampled_from(list(Notify)))),
    st.one_of(st.none(), st.tuples(st.sampled_from(["rfc822", "utf-8", "x400"]), PRINTABLE)),
    st.sampled_from([None, "FULL", "HDRS"]),
    st.one_of(st.none(), PRINTABLE.filter(lambda t: len(t) <= MAX_ENVID)),
)
def test_what_is_carried_on_reads_back_the_same(
    notify: frozenset[Notify] | None,
    orcpt: tuple[str, str] | None,
    ret: str | None,
    envid: str | None,
) -> None:
    """The words the gateway sends the next server say what the client said."""
    if orcpt is not None and len(f"{orcpt[0]};{xtext_encode(orcpt[1])}") > MAX_ORCPT:
        return
    recipient = RecipientDsn(notify, orcpt)
    words = " ".join(recipient.parameters())
    assert rcpt_parameters(f"TO:<a@b.fr> {words}") == ("TO:<a@b.fr>", recipient)
    mail = MailDsn(ret, envid)  # type: ignore[arg-type]
    words = " ".join(mail.parameters())
    assert mail_parameters(f"FROM:<a@b.fr> {words}") == ("FROM:<a@b.fr>", mail)


@given(st.text(max_size=300))
def test_any_argument_parses_or_is_refused(arg: str) -> None:
    """Whatever a client writes after MAIL or RCPT: a result or a 501, never a crash."""
    for parse in (mail_parameters, rcpt_parameters):
        outcome: str
        try:
            outcome = parse(arg)[0]
        except DsnSyntaxError as refused:
            outcome = refused.reply
        assert outcome.startswith("501 5.5.4 ") or len(outcome) <= len(arg)


@given(st.text(alphabet="FROMfrom:<>@ab. \t=SIZE", max_size=30))
def test_an_address_end_without_quotes_is_the_first_closing_mark(arg: str) -> None:
    """The shortcut gives what the character-by-character reading gives."""
    found = _address_end(arg, "FROM:")
    if found is None:
        assert arg[:5].upper() != "FROM:"
        return
    index = len(arg[5:]) - len(arg[5:].lstrip(" \t")) + 5
    assert found == _scanned_address_end(arg, index, arg[index : index + 1] == "<")
