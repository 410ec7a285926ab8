"""`mock-operator probe`: an API LPS server checked from the client's side.

The probe logs in as a persona of the mock operator (fresh tokens from the running mock),
on the server's IMAP and SMTP submission ports, and reports what an LPS relies on:
STARTTLS, no login before it, XOAUTH2 and OAUTHBEARER with a valid token, bad tokens
refused with the RFC 7628 challenge and the RFC 5530 code, a BAL the persona may not
open refused, the capabilities and extensions an LPS uses, and a sender the persona may
not use refused with 5.7.1. It reads a server it does not trust: every step has a
deadline and every reply a bound (`probe_wire`), and verdicts are decided from the
recorded exchanges alone (`probe_checks`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mock_operator.conformance import probe_checks as checks
from mock_operator.conformance.probe_checks import Setup, Skipped
from mock_operator.conformance.probe_imap import ImapObservations, ImapProbe
from mock_operator.conformance.probe_sasl import LoginPlan
from mock_operator.conformance.probe_smtp import SmtpObservations, SmtpProbe
from mock_operator.conformance.probe_wire import Endpoint, TlsPolicy
from mock_operator.conformance.results import Check, Report, Result, Status
from mock_operator.personas import default_personas

DEFAULT_STEP = 10.0  # seconds for each step: connecting, one command and its reply, TLS
DEV_CERTIFICATES = (  # where `lps-gateway demo` and `mock-operator serve` write theirs
    Path(".lps-gateway") / "dev-cert.pem",
    Path(".lps-gateway") / "mock-operator" / "tls" / "dev-cert.pem",
    Path(".mock-operator") / "tls" / "dev-cert.pem",
)


@dataclass(frozen=True)
class ProbeTarget:
    imap: Endpoint | None
    smtp: Endpoint | None
    policy: TlsPolicy
    step: float = DEFAULT_STEP


def default_mailboxes(persona: str) -> tuple[str | None, str | None]:
    """For a default persona: the BAL to open (their own, else the first delegated to
    them) and one they may not open (another persona's BAL neither theirs nor delegated
    to them, on the platform of their own when there is a choice)."""
    found = default_personas().get(persona)
    if found is None:
        return None, None
    delegated = [d.mailbox for d in found.delegations]
    bal = found.bal or (delegated[0] if delegated else None)
    mine = {found.bal, *delegated}
    others = [p for p in default_personas() if p.bal is not None and p.bal not in mine]
    others.sort(key=lambda p: p.platform != found.platform)  # stable: same platform first
    return bal, others[0].bal if others else None


def development_certificates(directory: Path) -> tuple[Path, ...]:
    """The development certificates of a demo or a mock run from `directory`, to trust
    when no `--ca` is given (the curl examples' `--cacert`)."""
    return tuple(directory / path for path in DEV_CERTIFICATES if (directory / path).is_file())


async def run_probe(target: ProbeTarget, plan: LoginPlan) -> Report:
    started = dt.datetime.now(dt.UTC)
    context = target.policy.context()
    results: list[Result] = []
    if target.imap is not None:
        imap = ImapProbe(target.imap, plan, target.policy, context, target.step)
        results += imap_results(await imap.observe())
    else:
        results += _not_asked(checks.IMAP_CHECKS, "--imap non donné")
    if target.smtp is not None:
        smtp = SmtpProbe(target.smtp, plan, target.policy, context, target.step)
        results += smtp_results(await smtp.observe())
    else:
        results += _not_asked(checks.SMTP_CHECKS, "--smtp non donné")
    host = (target.imap or target.smtp or Endpoint("?", 0)).host
    return Report(
        kind="probe",
        title=f"Sonde API LPS — {host}",
        subject=_subject(target, plan),
        started=started,
        finished=dt.datetime.now(dt.UTC),
        results=tuple(results),
    )


def imap_results(seen: ImapObservations) -> list[Result]:
    setup = seen.setup
    xoauth2 = seen.logins.get("xoauth2", _NONE)
    return [
        checks.starttls(checks.IMAP_STARTTLS, setup),
        checks.refused_before_tls(checks.IMAP_PLAINTEXT, setup, seen.plaintext),
        _capabilities(checks.IMAP_CAPABILITIES, setup, checks.IMAP_BEFORE_LOGIN),
        checks.capabilities(
            checks.IMAP_SESSION_CAPABILITIES,
            seen.session_capabilities,
            checks.IMAP_IN_SESSION,
            xoauth2.transcript,
            unknown="pas de session ouverte avec XOAUTH2 : capacités de session inconnues",
        ),
        checks.accepted(checks.IMAP_XOAUTH2, xoauth2),
        checks.accepted(checks.IMAP_OAUTHBEARER, seen.logins.get("oauthbearer", _NONE)),
        checks.refused(checks.IMAP_BAD_TOKEN, seen.bad_tokens, checks.BAD_TOKEN_IMAP),
        checks.challenged(checks.IMAP_CHALLENGE, seen.bad_tokens),
        checks.refused(
            checks.IMAP_OTHER_BAL,
            {"BAL d'une autre personne": seen.logins.get("other-bal", _NONE)},
            checks.NOT_YOURS_IMAP,
        ),
    ]


def smtp_results(seen: SmtpObservations) -> list[Result]:
    setup = seen.setup
    evidence = setup.transcript
    keywords = seen.keywords
    return [
        checks.starttls(checks.SMTP_STARTTLS, setup),
        checks.refused_before_tls(checks.SMTP_PLAINTEXT, setup, seen.plaintext),
        checks.smtp_auth(checks.SMTP_AUTH, keywords, evidence),
        checks.smtp_extension(checks.SMTP_SIZE, keywords, "SIZE", evidence),
        checks.smtp_extension(checks.SMTP_DSN, keywords, "DSN", evidence),
        checks.accepted(checks.SMTP_XOAUTH2, seen.logins.get("xoauth2", _NONE)),
        checks.accepted(checks.SMTP_OAUTHBEARER, seen.logins.get("oauthbearer", _NONE)),
        checks.refused(checks.SMTP_BAD_TOKEN, seen.bad_tokens, checks.BAD_TOKEN_SMTP),
        checks.challenged(checks.SMTP_CHALLENGE, seen.bad_tokens),
        checks.sender_refused(checks.SMTP_SENDER, seen.sender),
    ]


_NONE = Skipped(Status.NOT_OBSERVED, "non tenté")


def _capabilities(check: Check, setup: Setup, required: Iterable[str]) -> Result:
    """Before login, after TLS: a server that broke off after its TLS handshake failed the
    check; one whose TLS failed was not seen over TLS at all."""
    if setup.capabilities is None and setup.error is not None:
        after_tls = setup.tls is not None or (
            setup.plaintext_capabilities is not None and not setup.starttls_offered
        )
        status = Status.FAILED if after_tls else Status.NOT_OBSERVED
        return Result.of(check, status, setup.error, setup.transcript)
    return checks.capabilities(check, setup.capabilities, required, setup.transcript)


def _not_asked(which: Iterable[Check], why: str) -> list[Result]:
    return [Result.of(check, Status.NOT_OBSERVED, why) for check in which]


def _subject(target: ProbeTarget, plan: LoginPlan) -> dict[str, str]:
    policy = target.policy
    if policy.insecure:
        tls = "certificat non vérifié (--insecure)"
    else:
        extra = ", ".join(str(path) for path in policy.cafiles)
        tls = "autorités du système" + (f" et {extra}" if extra else "")
    subject = {
        "IMAP": str(target.imap) if target.imap else "—",
        "SMTP": str(target.smtp) if target.smtp else "—",
        "persona": plan.persona,
        "BAL ouverte": plan.bal,
        "BAL non autorisée": plan.other_bal,
        "TLS": tls,
    }
    if policy.server_name:
        subject["nom TLS attendu"] = policy.server_name
    return subject
