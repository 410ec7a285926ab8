"""The probe's verdicts on recorded exchanges, without a socket: what a faithful server
answers passes, and each way of getting it wrong fails with a reason."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from mock_operator.conformance import probe_checks as checks
from mock_operator.conformance.probe import (
    default_mailboxes,
    development_certificates,
    imap_results,
)
from mock_operator.conformance.probe_checks import Answer, Exchange, Setup, Skipped
from mock_operator.conformance.probe_imap import BAD_TOKEN_NAMES, ImapObservations
from mock_operator.conformance.probe_sasl import (
    forge_expired,
    forge_foreign,
    oauthbearer,
    token_claims,
    xoauth2,
)
from mock_operator.conformance.probe_smtp import Reply
from mock_operator.conformance.probe_wire import Endpoint, TlsOutcome, Transcript
from mock_operator.conformance.results import Status, scrub
from psc_auth.sasl import decode_oauthbearer, decode_xoauth2

CHALLENGE = json.dumps({"status": "invalid_token", "scope": "openid scope_all"}).encode()
TLS = TlsOutcome("TLSv1.3", "TLS_AES_256_GCM_SHA384", "localhost", True)


def imap_no(code: str | None, text: str = "refused") -> Answer:
    return Answer(False, "NO", code, text)


REFUSED_AS_RFC = Exchange(
    imap_no("AUTHENTICATIONFAILED", "invalid token"),
    (CHALLENGE,),
    None,
    ("C: P0002 AUTHENTICATE XOAUTH2 <masqué>", "S: + eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0="),
)


def bad_tokens(**overrides: Exchange) -> dict[str, checks.Attempt]:
    attempts: dict[str, checks.Attempt] = dict.fromkeys(BAD_TOKEN_NAMES, REFUSED_AS_RFC)
    for index, exchange in overrides.items():
        attempts[BAD_TOKEN_NAMES[int(index[1:])]] = exchange
    return attempts


# -- bad tokens --------------------------------------------------------------------------


def test_a_bad_token_refused_as_the_rfcs_say_passes() -> None:
    assert checks.refused(checks.IMAP_BAD_TOKEN, bad_tokens(), checks.BAD_TOKEN_IMAP).status is (
        Status.PASSED
    )
    assert checks.challenged(checks.IMAP_CHALLENGE, bad_tokens()).status is Status.PASSED


def test_a_server_that_accepts_a_bad_token_fails_both_checks() -> None:
    accepted = Exchange(Answer(True, "OK", "CAPABILITY", "logged in"), (), None, ())
    attempts = bad_tokens(n0=accepted)
    refused = checks.refused(checks.IMAP_BAD_TOKEN, attempts, checks.BAD_TOKEN_IMAP)
    assert refused.status is Status.FAILED
    assert "ACCEPTÉ" in refused.detail
    assert BAD_TOKEN_NAMES[0] in refused.detail
    assert BAD_TOKEN_NAMES[1] not in refused.detail
    assert checks.challenged(checks.IMAP_CHALLENGE, attempts).status is Status.FAILED


@pytest.mark.parametrize(
    "answer",
    [
        imap_no(None, "invalid token"),
        imap_no("AUTHORIZATIONFAILED"),
        imap_no("UNAVAILABLE", "too many failed logins"),
        Answer(False, "BAD", "AUTHENTICATIONFAILED", "malformed"),
    ],
)
def test_a_refusal_without_authenticationfailed_fails(answer: Answer) -> None:
    attempts = bad_tokens(n1=Exchange(answer, (CHALLENGE,), None, ()))
    result = checks.refused(checks.IMAP_BAD_TOKEN, attempts, checks.BAD_TOKEN_IMAP)
    assert result.status is Status.FAILED
    assert "au lieu de NO [AUTHENTICATIONFAILED]" in result.detail
    # the challenge was there: that check passes on its own
    assert checks.challenged(checks.IMAP_CHALLENGE, attempts).status is Status.PASSED


@pytest.mark.parametrize(
    ("challenges", "why"),
    [
        ((), "pas de défi RFC 7628"),
        ((b"",), "pas le JSON"),  # "+ " and nothing: a server asking for more
        ((b"not json",), "pas le JSON"),
        ((json.dumps({"scope": "openid"}).encode(),), "pas le JSON"),  # no status
        ((json.dumps(["invalid_token"]).encode(),), "pas le JSON"),
    ],
)
def test_no_rfc7628_challenge_fails(challenges: tuple[bytes, ...], why: str) -> None:
    answer = imap_no("AUTHENTICATIONFAILED")
    attempts = bad_tokens(n0=Exchange(answer, challenges, None, ()))
    result = checks.challenged(checks.IMAP_CHALLENGE, attempts)
    assert result.status is Status.FAILED
    assert why in result.detail
    refused = checks.refused(checks.IMAP_BAD_TOKEN, attempts, checks.BAD_TOKEN_IMAP)
    assert refused.status is Status.PASSED


def test_no_answer_at_all_fails_and_says_why() -> None:
    silent = Exchange(None, (), "AUTHENTICATE : pas de réponse en 2 s", ())
    result = checks.refused(checks.IMAP_BAD_TOKEN, bad_tokens(n0=silent), checks.BAD_TOKEN_IMAP)
    assert result.status is Status.FAILED
    assert "pas de réponse en 2 s" in result.detail


def test_attempts_not_made_are_not_observed_unless_the_server_ruled_them_out() -> None:
    away = Skipped(Status.NOT_OBSERVED, "pas de TLS")
    attempts: dict[str, checks.Attempt] = dict.fromkeys(BAD_TOKEN_NAMES, away)
    result = checks.refused(checks.IMAP_BAD_TOKEN, attempts, checks.BAD_TOKEN_IMAP)
    assert (result.status, result.detail) == (Status.NOT_OBSERVED, "pas de TLS")
    offered = Skipped(Status.FAILED, "AUTH=XOAUTH2 n'est pas annoncé")
    assert checks.accepted(checks.IMAP_XOAUTH2, offered).status is Status.FAILED
    assert checks.accepted(checks.IMAP_XOAUTH2, away).status is Status.NOT_OBSERVED


def test_smtp_bad_token_wants_535_5_7_8() -> None:
    good = Exchange(
        Answer(False, "535", "5.7.8", "Authentication credentials invalid"), (CHALLENGE,)
    )
    wrong = Exchange(Answer(False, "535", None, "Authentication failed"), (CHALLENGE,))
    temporary = Exchange(Answer(False, "454", "4.7.0", "Temporary failure"), (CHALLENGE,))
    assert checks.refused(checks.SMTP_BAD_TOKEN, {"t": good}, checks.BAD_TOKEN_SMTP).status is (
        Status.PASSED
    )
    for answer in (wrong, temporary):
        result = checks.refused(checks.SMTP_BAD_TOKEN, {"t": answer}, checks.BAD_TOKEN_SMTP)
        assert result.status is Status.FAILED
        assert "au lieu de 535 5.7.8" in result.detail


def test_another_bal_wants_authorizationfailed() -> None:
    refusal = {"autre BAL": Exchange(imap_no("AUTHORIZATIONFAILED"))}
    assert checks.refused(checks.IMAP_OTHER_BAL, refusal, checks.NOT_YOURS_IMAP).status is (
        Status.PASSED
    )
    opened = {"autre BAL": Exchange(Answer(True, "OK", None, "logged in"))}
    result = checks.refused(checks.IMAP_OTHER_BAL, opened, checks.NOT_YOURS_IMAP)
    assert result.status is Status.FAILED
    assert "ACCEPTÉ" in result.detail
    confused = {"autre BAL": Exchange(imap_no("AUTHENTICATIONFAILED"))}
    result = checks.refused(checks.IMAP_OTHER_BAL, confused, checks.NOT_YOURS_IMAP)
    assert result.status is Status.FAILED


# -- sender, TLS, plaintext, capabilities --------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (Answer(False, "550", "5.7.1", "may not send as x"), Status.PASSED),
        (Answer(True, "250", "2.1.0", "Sender OK"), Status.FAILED),
        (Answer(False, "553", "5.1.8", "bad sender"), Status.FAILED),
        (Answer(False, "451", "4.7.1", "try later"), Status.FAILED),
    ],
)
def test_sender_not_allowed_wants_5_7_1(answer: Answer, status: Status) -> None:
    assert checks.sender_refused(checks.SMTP_SENDER, Exchange(answer)).status is status


def setup(**changes: object) -> Setup:
    values: dict[str, object] = {
        "loopback": False,
        "plaintext_capabilities": frozenset({"IMAP4REV1", "STARTTLS", "LOGINDISABLED"}),
        "starttls_offered": True,
        "tls": TLS,
        "tls_error": None,
        "capabilities": frozenset({"IMAP4REV1", "AUTH=XOAUTH2", "AUTH=OAUTHBEARER"}),
    }
    values.update(changes)
    return Setup(**values)  # type: ignore[arg-type]


def test_starttls_verdicts() -> None:
    assert checks.starttls(checks.IMAP_STARTTLS, setup()).status is Status.PASSED
    missing = checks.starttls(checks.IMAP_STARTTLS, setup(starttls_offered=False, tls=None))
    assert (missing.status, missing.detail) == (Status.FAILED, "STARTTLS n'est pas proposé")
    old = TlsOutcome("TLSv1.1", "AES128-SHA", "localhost", True)
    assert checks.starttls(checks.IMAP_STARTTLS, setup(tls=old)).status is Status.FAILED
    untrusted = setup(tls=None, tls_error="certificat refusé pour localhost")
    assert checks.starttls(checks.IMAP_STARTTLS, untrusted).detail == (
        "certificat refusé pour localhost"
    )
    insecure = TlsOutcome("TLSv1.3", "TLS_AES_128_GCM_SHA256", "localhost", False)
    result = checks.starttls(checks.IMAP_STARTTLS, setup(tls=insecure))
    assert result.status is Status.PASSED
    assert "NON vérifié (--insecure)" in result.detail


def test_plaintext_login_on_loopback_is_not_observed() -> None:
    result = checks.refused_before_tls(checks.IMAP_PLAINTEXT, setup(loopback=True), ())
    assert result.status is Status.NOT_OBSERVED
    assert "boucle locale" in result.detail


@pytest.mark.parametrize(
    ("attempt", "status"),
    [
        (Exchange(imap_no("PRIVACYREQUIRED", "use STARTTLS first")), Status.PASSED),
        (Exchange(Answer(False, "BAD", None, "command unknown")), Status.PASSED),
        (Exchange(Answer(False, "538", "5.7.11", "Encryption required")), Status.PASSED),
        # the server asked for the SASL response in the clear
        (Exchange(Answer(False, "BAD", None, "cancelled"), (b"",)), Status.FAILED),
        (Exchange(Answer(False, "501", "5.7.0", "cancelled"), (b"",)), Status.FAILED),
        # it looked at credentials sent in the clear
        (Exchange(imap_no("AUTHENTICATIONFAILED", "bad password")), Status.FAILED),
        (Exchange(Answer(False, "535", "5.7.8", "invalid")), Status.FAILED),
        (Exchange(None, (), "LOGIN : pas de réponse en 2 s"), Status.FAILED),
    ],
)
def test_plaintext_login_off_loopback(attempt: Exchange, status: Status) -> None:
    refusal = Exchange(imap_no("PRIVACYREQUIRED"))
    result = checks.refused_before_tls(checks.IMAP_PLAINTEXT, setup(), (refusal, attempt))
    assert result.status is status, result.detail


def test_capabilities_name_what_is_missing() -> None:
    dovecot = frozenset({"IMAP4REV1", "SASL-IR", "AUTH=PLAIN", "AUTH=LOGIN"})
    result = checks.capabilities(checks.IMAP_CAPABILITIES, dovecot, checks.IMAP_BEFORE_LOGIN, ())
    assert result.status is Status.FAILED
    assert result.detail == "absentes : AUTH=XOAUTH2, AUTH=OAUTHBEARER"
    revision2 = frozenset({"IMAP4REV2", "IDLE", "UIDPLUS", "SPECIAL-USE"})
    ok = checks.capabilities(
        checks.IMAP_SESSION_CAPABILITIES, revision2, checks.IMAP_IN_SESSION, ()
    )
    assert ok.status is Status.PASSED
    unknown = checks.capabilities(checks.IMAP_SESSION_CAPABILITIES, None, (), (), unknown="x")
    assert (unknown.status, unknown.detail) == (Status.NOT_OBSERVED, "x")


def test_smtp_extensions_from_ehlo() -> None:
    reply = Reply(
        250,
        ("localhost", "SIZE 26214400", "DSN", "auth oauthbearer PLAIN xoauth2", "HELP"),
    )
    keywords = reply.keywords()
    assert keywords["SIZE"] == "26214400"
    for keyword, check in (("SIZE", checks.SMTP_SIZE), ("DSN", checks.SMTP_DSN)):
        assert checks.smtp_extension(check, keywords, keyword, ()).status is Status.PASSED
    assert checks.smtp_auth(checks.SMTP_AUTH, keywords, ()).status is Status.PASSED
    no_dsn = Reply(250, ("localhost", "AUTH PLAIN", "8BITMIME")).keywords()
    assert checks.smtp_extension(checks.SMTP_DSN, no_dsn, "DSN", ()).status is Status.FAILED
    result = checks.smtp_auth(checks.SMTP_AUTH, no_dsn, ())
    assert (result.status, result.detail) == (
        Status.FAILED,
        "mécanismes absents : XOAUTH2, OAUTHBEARER",
    )


def test_smtp_reply_reads_the_enhanced_status() -> None:
    answer = Reply(535, ("5.7.8 Authentication credentials invalid",)).answer()
    assert (answer.ok, answer.word, answer.code) == (False, "535", "5.7.8")
    assert answer.text == "Authentication credentials invalid"
    plain = Reply(250, ("OK",)).answer()
    assert (plain.ok, plain.code, plain.text) == (True, None, "OK")


def test_a_server_that_never_answered_fails_its_first_check_only() -> None:
    silent = setup(
        loopback=True,
        plaintext_capabilities=None,
        starttls_offered=False,
        tls=None,
        capabilities=None,
        error="accueil : pas de réponse en 1 s",
    )
    skipped = Skipped(Status.NOT_OBSERVED, "première connexion échouée")
    seen = ImapObservations(
        silent,
        (),
        dict.fromkeys(("xoauth2", "oauthbearer", "other-bal"), skipped),
        dict.fromkeys(BAD_TOKEN_NAMES, skipped),
    )
    statuses = {result.check.key: result.status for result in imap_results(seen)}
    assert statuses.pop("imap-starttls") is Status.FAILED
    assert set(statuses.values()) == {Status.NOT_OBSERVED}


# -- what the probe presents, and what it records -----------------------------------------


def test_sasl_responses_decode_as_the_gateway_reads_them() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    read = decode_xoauth2(xoauth2("claire.martin@medecin.mssante.fr", token))
    assert (read.user, read.token) == ("claire.martin@medecin.mssante.fr", token)
    read = decode_oauthbearer(oauthbearer("a,b=c@d", token, "localhost", 1143))
    assert (read.user, read.token, read.host, read.port) == ("a,b=c@d", token, "localhost", 1143)


def test_bad_tokens_carry_the_real_claims() -> None:
    claims = {"iss": "http://127.0.0.1:8090/auth/realms/esante-wallet", "sub": "x", "aud": "lps"}
    foreign = forge_foreign(claims, "kid-1")
    expired = forge_expired(claims, "kid-1")
    for forged in (foreign, expired):
        read, kid = token_claims(forged)
        assert kid == "kid-1"
        assert {k: read[k] for k in claims} == claims
    assert token_claims(foreign)[0]["exp"] > token_claims(expired)[0]["exp"]
    assert token_claims("opaque-token") == ({}, None)


def test_the_transcript_masks_a_secret_echoed_whole_or_in_part() -> None:
    token = (
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiI4OTk3MDAwMDAwMDEiLCJleHAiOjE3MDB9"
        ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    )
    blob = base64.b64encode(xoauth2("a@b", token)).decode()
    transcript = Transcript()
    transcript.hide(token, blob)
    transcript.server(f"P0002 NO you sent {blob} with {token}")
    transcript.server(f"P0003 NO token starts {token[5:40]}...")
    transcript.server(f"P0004 NO blob ends {blob[-30:]}")
    transcript.server("* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 AUTH=OAUTHBEARER")
    text = "\n".join(transcript.excerpt())
    assert token[5:22] not in text
    assert blob[-20:] not in text
    assert "you sent <masqué> with <masqué>" in text
    assert "AUTH=XOAUTH2 AUTH=OAUTHBEARER" in text


def test_the_transcript_is_bounded() -> None:
    transcript = Transcript()
    for _ in range(1000):
        transcript.server("x" * 10_000)
    lines = transcript.excerpt()
    assert len(lines) == 61
    assert lines[-1].startswith("… (940 lignes")
    assert max(len(line) for line in lines) <= 301


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("localhost:1143", Endpoint("localhost", 1143)),
        ("127.0.0.1:1587", Endpoint("127.0.0.1", 1587)),
        ("[::1]:143", Endpoint("::1", 143)),
    ],
)
def test_endpoints(text: str, endpoint: Endpoint) -> None:
    assert Endpoint.parse(text) == endpoint


@pytest.mark.parametrize("text", ["localhost", "localhost:0", "host:70000", ":143", "a b:1", "h:x"])
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|not a host"):
        Endpoint.parse(text)


def test_default_mailboxes_of_the_demo_personas() -> None:
    assert default_mailboxes("dr-martin") == (
        "claire.martin@medecin.mssante.fr",
        "luc.durand@infirmier.mssante.fr",  # not shared with her, on her platform
    )
    bal, other = default_mailboxes("sec-bernard")
    assert bal == "claire.martin@medecin.mssante.fr"  # delegated to her
    assert other not in (None, bal, "jean.dupont@medecin.mssante.fr")
    assert default_mailboxes("dr-dupont")[1] == "marie.petit@sage-femme.mssante.fr"
    assert default_mailboxes("nobody") == (None, None)


@pytest.mark.parametrize(
    "line",
    [
        "S: * CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER IDLE",
        "S: 250-AUTH OAUTHBEARER PLAIN XOAUTH2",
        "S: 250-AUTH XOAUTH2 OAUTHBEARER",
    ],
)
def test_evidence_keeps_lists_of_mechanisms(line: str) -> None:
    """The report's scrubbing masks SASL responses, not the capability lines that name
    the mechanisms (a probe's main evidence)."""
    assert scrub(line) == line
    assert scrub("C: AUTH PLAIN AGpvaG4AcGFzcw==") == "C: AUTH PLAIN <masqué>"


def test_development_certificates_found_where_the_demo_and_the_mock_write_them(
    tmp_path: Path,
) -> None:
    assert development_certificates(tmp_path) == ()
    for path in (".lps-gateway/dev-cert.pem", ".mock-operator/tls/dev-cert.pem"):
        (tmp_path / path).parent.mkdir(parents=True)
        (tmp_path / path).write_text("PEM")
    assert development_certificates(tmp_path) == (
        tmp_path / ".lps-gateway/dev-cert.pem",
        tmp_path / ".mock-operator/tls/dev-cert.pem",
    )
