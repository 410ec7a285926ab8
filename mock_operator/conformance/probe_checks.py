"""What the probe checks on an API LPS server, and the verdicts, decided from recorded
exchanges only (no sockets here): a server's behaviour can be replayed from a transcript
and each verdict tested on it."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gateway.imap.codes import Code
from mock_operator.conformance.probe_wire import TlsOutcome
from mock_operator.conformance.results import Check, Result, Status

MAX_CHALLENGE_BYTES = 4096

# -- the checks (keys are stable: reports, tests and vendors' CI name checks by them) ------

IMAP_STARTTLS = Check(
    "imap-starttls",
    "ECO.1.0.2",
    "IMAP : STARTTLS proposé et négocié (TLS 1.2 au moins)",
    "transport",
)
IMAP_PLAINTEXT = Check(
    "imap-no-auth-before-tls",
    "ECO.1.0.2",
    "IMAP : authentification refusée avant STARTTLS",
    "transport",
)
IMAP_CAPABILITIES = Check(
    "imap-capabilities",
    "ECO.1.2.1",
    "IMAP : capacités avant connexion (IMAP4rev1, AUTH=XOAUTH2, AUTH=OAUTHBEARER)",
    "imap",
)
IMAP_SESSION_CAPABILITIES = Check(
    "imap-session-capabilities",
    "RFC 3501 §7.2.1",
    "IMAP : capacités de session utiles à un LPS (IDLE, UIDPLUS, SPECIAL-USE)",
    "imap",
)
IMAP_XOAUTH2 = Check(
    "imap-xoauth2",
    "ECO.1.2.1",
    "IMAP : XOAUTH2 accepté avec un jeton PSC valide",
    "authentification",
)
IMAP_OAUTHBEARER = Check(
    "imap-oauthbearer",
    "RFC 7628 §3.2",
    "IMAP : OAUTHBEARER accepté avec un jeton PSC valide",
    "authentification",
)
IMAP_BAD_TOKEN = Check(
    "imap-bad-token",
    "RFC 5530 §3",
    "IMAP : jeton invalide (autre clé, expiré) refusé par NO [AUTHENTICATIONFAILED]",
    "authentification",
)
IMAP_CHALLENGE = Check(
    "imap-bad-token-challenge",
    "RFC 7628 §3.2.2",
    "IMAP : défi d'erreur RFC 7628 avant le refus d'un jeton invalide",
    "authentification",
)
IMAP_OTHER_BAL = Check(
    "imap-other-bal",
    "RFC 5530 §3",
    "IMAP : BAL que la personne ne peut ouvrir refusée par NO [AUTHORIZATIONFAILED]",
    "délégation",
)
SMTP_STARTTLS = Check(
    "smtp-starttls",
    "ECO.1.0.1",
    "SMTP : STARTTLS proposé et négocié (TLS 1.2 au moins)",
    "transport",
)
SMTP_PLAINTEXT = Check(
    "smtp-no-auth-before-tls",
    "ECO.1.0.1",
    "SMTP : authentification refusée avant STARTTLS",
    "transport",
)
SMTP_AUTH = Check(
    "smtp-auth", "RFC 4954 §3", "SMTP : AUTH annoncé avec XOAUTH2 et OAUTHBEARER", "envoi"
)
SMTP_SIZE = Check("smtp-size", "RFC 1870", "SMTP : SIZE annoncé (taille maximale)", "envoi")
SMTP_DSN = Check("smtp-dsn", "ECO.2.3.1", "SMTP : DSN annoncé (RFC 3461)", "envoi")
SMTP_XOAUTH2 = Check(
    "smtp-xoauth2",
    "ECO.1.2.1",
    "SMTP : XOAUTH2 accepté avec un jeton PSC valide",
    "authentification",
)
SMTP_OAUTHBEARER = Check(
    "smtp-oauthbearer",
    "RFC 7628 §3.2",
    "SMTP : OAUTHBEARER accepté avec un jeton PSC valide",
    "authentification",
)
SMTP_BAD_TOKEN = Check(
    "smtp-bad-token",
    "RFC 4954 §6",
    "SMTP : jeton invalide refusé par 535 5.7.8",
    "authentification",
)
SMTP_CHALLENGE = Check(
    "smtp-bad-token-challenge",
    "RFC 7628 §3.2.2",
    "SMTP : défi d'erreur RFC 7628 avant le refus d'un jeton invalide",
    "authentification",
)
SMTP_SENDER = Check(
    "smtp-sender-not-allowed",
    "RFC 3463 §3.8",
    "SMTP : expéditeur non autorisé (autre BAL) refusé par 5.7.1",
    "envoi",
)

IMAP_CHECKS = (
    IMAP_STARTTLS,
    IMAP_PLAINTEXT,
    IMAP_CAPABILITIES,
    IMAP_SESSION_CAPABILITIES,
    IMAP_XOAUTH2,
    IMAP_OAUTHBEARER,
    IMAP_BAD_TOKEN,
    IMAP_CHALLENGE,
    IMAP_OTHER_BAL,
)
SMTP_CHECKS = (
    SMTP_STARTTLS,
    SMTP_PLAINTEXT,
    SMTP_AUTH,
    SMTP_SIZE,
    SMTP_DSN,
    SMTP_XOAUTH2,
    SMTP_OAUTHBEARER,
    SMTP_BAD_TOKEN,
    SMTP_CHALLENGE,
    SMTP_SENDER,
)

# What an LPS needs of the server: our reading of the API LPS (ECO.1.2.1 names XOAUTH2;
# OAUTHBEARER is its standard twin), and of what a mail client does with a BAL (new mail
# without polling, the UID of what it files in Sent, where Sent and Drafts are).
IMAP_REVISIONS = frozenset({"IMAP4REV1", "IMAP4REV2"})
IMAP_BEFORE_LOGIN = ("AUTH=XOAUTH2", "AUTH=OAUTHBEARER")
IMAP_IN_SESSION = ("IDLE", "UIDPLUS", "SPECIAL-USE")
SMTP_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")


# -- what was recorded -------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """How the server ended an exchange: IMAP's tagged status (`word` OK/NO/BAD) with its
    response code name, or SMTP's reply code (`word` "535") with its enhanced status."""

    ok: bool
    word: str
    code: str | None
    text: str

    def describe(self) -> str:
        code = f" [{self.code}]" if self.code and not self.word.isdigit() else ""
        enhanced = f" {self.code}" if self.code and self.word.isdigit() else ""
        return f"{self.word}{code}{enhanced} {self.text}".strip()


@dataclass(frozen=True)
class Exchange:
    """One attempt as it went on the wire: the answer (None when the server never gave
    one: `error` says why), the server's challenges decoded from base64, the transcript."""

    answer: Answer | None
    challenges: tuple[bytes, ...] = ()
    error: str | None = None
    transcript: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skipped:
    """An attempt the probe did not make, and the status that gives the check: failed when
    the server itself ruled it out (a mechanism not offered), not observed otherwise."""

    status: Status
    reason: str
    transcript: tuple[str, ...] = ()


Attempt = Exchange | Skipped


@dataclass(frozen=True)
class Setup:
    """The first connection: what was offered in plaintext, then over TLS."""

    loopback: bool
    plaintext_capabilities: frozenset[str] | None
    starttls_offered: bool
    tls: TlsOutcome | None
    tls_error: str | None
    capabilities: frozenset[str] | None  # after TLS; in plaintext when there is no TLS
    error: str | None = None  # the connection failed before its capabilities were known
    transcript: tuple[str, ...] = ()

    @property
    def tokens_may_go(self) -> str | None:
        """None when a token may be sent (TLS, or plaintext to a loopback address), else
        why not."""
        if self.tls_error is not None:
            return f"STARTTLS a échoué, aucun jeton envoyé : {self.tls_error}"
        if self.error is not None:
            return f"première connexion échouée : {self.error}"
        if self.tls is not None:
            return None
        if self.loopback:
            return None
        return "pas de TLS : aucun jeton envoyé en clair hors de la boucle locale"


# -- verdicts ----------------------------------------------------------------------------


def starttls(check: Check, setup: Setup) -> Result:
    if setup.error is not None and setup.plaintext_capabilities is None:
        return Result.of(check, Status.FAILED, setup.error, setup.transcript)
    if not setup.starttls_offered:
        return Result.of(check, Status.FAILED, "STARTTLS n'est pas proposé", setup.transcript)
    if setup.tls is None:
        why = setup.tls_error or setup.error or "négociation TLS non aboutie"
        return Result.of(check, Status.FAILED, why, setup.transcript)
    detail = setup.tls.describe()
    if setup.tls.version not in ("TLSv1.2", "TLSv1.3"):
        return Result.of(
            check, Status.FAILED, f"version trop ancienne : {detail}", setup.transcript
        )
    return Result.of(check, Status.PASSED, detail, setup.transcript)


def refused_before_tls(check: Check, setup: Setup, attempts: Iterable[Attempt]) -> Result:
    """Every login attempted in plaintext was refused before any credential was looked at.
    On a loopback address servers allow plaintext login (as Dovecot does): not observed."""
    if setup.loopback:
        return Result.of(
            check,
            Status.NOT_OBSERVED,
            "adresse de boucle locale : la connexion en clair y est permise (comme Dovecot), "
            "le refus ne s'observe que depuis une autre adresse",
            setup.transcript,
        )
    tried = list(attempts)
    evidence = [line for attempt in tried for line in attempt.transcript] or setup.transcript
    if not tried or all(isinstance(a, Skipped) for a in tried):
        why = next(
            (a.reason for a in tried if isinstance(a, Skipped)),
            setup.error or "rien n'a été tenté",
        )
        return Result.of(check, Status.NOT_OBSERVED, why, evidence)
    for attempt in tried:
        if isinstance(attempt, Skipped):
            continue
        if attempt.answer is None:
            return Result.of(check, Status.FAILED, f"pas de réponse : {attempt.error}", evidence)
        if attempt.answer.ok or attempt.challenges:
            return Result.of(
                check,
                Status.FAILED,
                f"authentification poursuivie en clair : {attempt.answer.describe()}",
                evidence,
            )
        if attempt.answer.code in _CREDENTIALS_LOOKED_AT or attempt.answer.word == "535":
            return Result.of(
                check,
                Status.FAILED,
                f"identifiants examinés en clair : {attempt.answer.describe()}",
                evidence,
            )
    return Result.of(check, Status.PASSED, "refusée tant que TLS n'est pas actif", evidence)


_CREDENTIALS_LOOKED_AT = frozenset(
    {Code.AUTHENTICATIONFAILED.value, Code.AUTHORIZATIONFAILED.value, "5.7.8"}
)


def capabilities(
    check: Check,
    offered: frozenset[str] | None,
    required: Iterable[str],
    evidence: Iterable[str],
    *,
    revision: bool = True,
    unknown: str = "capacités inconnues",
) -> Result:
    """`required` (and an IMAP revision, with `revision`) all in `offered`."""
    if offered is None:
        return Result.of(check, Status.NOT_OBSERVED, unknown, evidence)
    missing = [name for name in required if name.upper() not in offered]
    if revision and not offered & IMAP_REVISIONS:
        missing.insert(0, "IMAP4rev1")
    if missing:
        return Result.of(check, Status.FAILED, f"absentes : {', '.join(missing)}", evidence)
    return Result.of(check, Status.PASSED, "toutes annoncées", evidence)


def smtp_extension(
    check: Check, keywords: Mapping[str, str] | None, keyword: str, evidence: Iterable[str]
) -> Result:
    if keywords is None:
        return Result.of(check, Status.NOT_OBSERVED, "pas de réponse à EHLO", evidence)
    if keyword not in keywords:
        return Result.of(check, Status.FAILED, f"{keyword} absent de la réponse à EHLO", evidence)
    value = keywords[keyword]
    return Result.of(check, Status.PASSED, f"{keyword} {value}".strip(), evidence)


def smtp_auth(check: Check, keywords: Mapping[str, str] | None, evidence: Iterable[str]) -> Result:
    if keywords is None:
        return Result.of(check, Status.NOT_OBSERVED, "pas de réponse à EHLO", evidence)
    if "AUTH" not in keywords:
        return Result.of(check, Status.FAILED, "AUTH absent de la réponse à EHLO", evidence)
    offered = set(keywords["AUTH"].upper().split())
    missing = [m for m in SMTP_MECHANISMS if m not in offered]
    if missing:
        return Result.of(
            check, Status.FAILED, f"mécanismes absents : {', '.join(missing)}", evidence
        )
    return Result.of(check, Status.PASSED, f"mécanismes : {keywords['AUTH']}", evidence)


def accepted(check: Check, attempt: Attempt) -> Result:
    """A valid token opened the session."""
    if isinstance(attempt, Skipped):
        return Result.of(check, attempt.status, attempt.reason, attempt.transcript)
    if attempt.answer is None:
        return Result.of(
            check, Status.FAILED, f"pas de réponse : {attempt.error}", attempt.transcript
        )
    if not attempt.answer.ok:
        return Result.of(
            check,
            Status.FAILED,
            f"jeton valide refusé : {attempt.answer.describe()}",
            attempt.transcript,
        )
    return Result.of(check, Status.PASSED, attempt.answer.describe(), attempt.transcript)


@dataclass(frozen=True)
class Refusal:
    """The answer expected to a refused login: IMAP ``NO`` with a response code, or an SMTP
    reply code with an enhanced status."""

    word: str
    code: str

    def describe(self) -> str:
        return (
            f"{self.word} [{self.code}]" if not self.word.isdigit() else f"{self.word} {self.code}"
        )


BAD_TOKEN_IMAP = Refusal("NO", Code.AUTHENTICATIONFAILED.value)
BAD_TOKEN_SMTP = Refusal("535", "5.7.8")
NOT_YOURS_IMAP = Refusal("NO", Code.AUTHORIZATIONFAILED.value)


def refused(check: Check, attempts: Mapping[str, Attempt], expected: Refusal) -> Result:
    """Each attempt (named by what was presented) ended with the `expected` refusal."""

    def judge(name: str, attempt: Exchange) -> str | None:
        answer = attempt.answer
        if answer is None:
            return f"{name} : pas de réponse ({attempt.error})"
        if answer.ok:
            return f"{name} : ACCEPTÉ ({answer.describe()})"
        if (answer.word, answer.code) != (expected.word, expected.code):
            return f"{name} : {answer.describe()} au lieu de {expected.describe()}"
        return None

    return _each_attempt(check, attempts, judge, f"refusé par {expected.describe()}")


def challenged(check: Check, attempts: Mapping[str, Attempt]) -> Result:
    """Each refused token was answered, before the refusal, with the RFC 7628 §3.2.2 error
    challenge: base64 JSON with at least ``status``."""

    def judge(name: str, attempt: Exchange) -> str | None:
        if attempt.answer is not None and attempt.answer.ok:
            return f"{name} : jeton accepté, pas de défi"
        if any(error_status(c) is not None for c in attempt.challenges):
            return None
        if not attempt.challenges:
            return f"{name} : pas de défi RFC 7628 (JSON avec « status »)"
        return f"{name} : défi qui n'est pas le JSON d'erreur de la RFC 7628"

    return _each_attempt(check, attempts, judge, "défi JSON d'erreur envoyé avant le refus")


def _each_attempt(
    check: Check,
    attempts: Mapping[str, Attempt],
    judge: Callable[[str, Exchange], str | None],
    passed: str,
) -> Result:
    """Failed when `judge` finds a problem with an attempt made (or a step before it
    failed); not observed when none could be made; passed otherwise."""
    evidence: list[str] = []
    problems: list[str] = []
    observed = 0
    for name, attempt in attempts.items():
        evidence.append(f"-- {name}")
        evidence.extend(attempt.transcript)
        if isinstance(attempt, Skipped):
            if attempt.status is Status.FAILED:
                problems.append(f"{name} : {attempt.reason}")
            continue
        observed += 1
        problem = judge(name, attempt)
        if problem is not None:
            problems.append(problem)
    if problems:
        return Result.of(check, Status.FAILED, " ; ".join(problems), evidence)
    if not observed:
        reasons = {a.reason for a in attempts.values() if isinstance(a, Skipped)}
        return Result.of(check, Status.NOT_OBSERVED, " ; ".join(sorted(reasons)), evidence)
    return Result.of(check, Status.PASSED, passed, evidence)


def error_status(challenge: bytes) -> str | None:
    """The ``status`` of an RFC 7628 §3.2.2 error challenge, or None when it is not one."""
    if not challenge or len(challenge) > MAX_CHALLENGE_BYTES:
        return None
    try:
        body = json.loads(challenge)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    status = body.get("status")
    return status if isinstance(status, str) and status else None


def decode_challenge(text: bytes) -> bytes:
    """A server challenge's base64 text decoded; undecodable text is kept as it came, so
    that the verdict can say it is not the RFC 7628 JSON."""
    text = text.strip()[: MAX_CHALLENGE_BYTES * 2]
    try:
        return base64.b64decode(text, validate=True)[:MAX_CHALLENGE_BYTES]
    except (binascii.Error, ValueError):
        return text[:MAX_CHALLENGE_BYTES]


def sender_refused(check: Check, attempt: Attempt) -> Result:
    """MAIL FROM another BAL than the session's: ``5.7.1`` (RFC 3463: not authorized)."""
    if isinstance(attempt, Skipped):
        return Result.of(check, attempt.status, attempt.reason, attempt.transcript)
    answer = attempt.answer
    if answer is None:
        return Result.of(
            check, Status.FAILED, f"pas de réponse : {attempt.error}", attempt.transcript
        )
    if answer.ok:
        return Result.of(
            check,
            Status.FAILED,
            f"expéditeur accepté : {answer.describe()}",
            attempt.transcript,
        )
    if answer.code != "5.7.1" or not answer.word.startswith("5"):
        return Result.of(
            check,
            Status.FAILED,
            f"refusé par {answer.describe()}, pas par 5.7.1",
            attempt.transcript,
        )
    return Result.of(check, Status.PASSED, answer.describe(), attempt.transcript)
