"""Every SMTP reply the submission front writes: basic code, RFC 3463 enhanced status and
text in one table, so the same situation reads the same everywhere, and backend errors
(`gateway.backends.errors`) become replies here and only here."""

from __future__ import annotations

import re

from gateway.backends.errors import BackendRefused, BackendUnavailable

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")

AUTH_REQUIRED = "530 5.7.0 Authentication required"
MAIL_FIRST = "503 5.5.1 MAIL first"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
INTERNAL_ERROR = "451 4.3.0 Internal error, try again later"
NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address needs SMTPUTF8"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
OK = "250 2.0.0 OK"
BYE = "221 2.0.0 Bye"

# BackendUnavailable.kind → (basic code, enhanced status, text)
_UNAVAILABLE: dict[str, tuple[int, str, str]] = {
    "connect": (451, "4.4.1", "Mail server unreachable, try again later"),
    "tls": (451, "4.4.1", "Mail server unreachable, try again later"),
    "login": (451, "4.4.1", "Mail server login failed, try again later"),
    "credentials": (451, "4.7.0", "Mail server refused the gateway, try again later"),
    "unavailable": (451, "4.4.1", "Mail service unavailable, try again later"),
    "closed": (451, "4.4.2", "Mail server closed the connection, try again"),
    "disconnected": (451, "4.4.2", "Mail server connection lost, try again"),
    "protocol": (451, "4.4.2", "Mail server answered nonsense, try again later"),
    "misconfigured": (451, "4.3.0", "Mail server not configured on this gateway"),
}
# the basic code of an enhanced status's class.subject, for refusals without their own
_BASIC = {"5.1": 553, "5.3": 552, "5.5": 550, "5.7": 550}


def safe(text: str, limit: int = 200) -> str:
    """Client- or backend-supplied text made fit for one line of our reply."""
    flat = _UNPRINTABLE.sub("?", " ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def unavailable(error: BackendUnavailable) -> str:
    if error.kind == "timeout":
        after = f" within {error.after:g} s" if error.after is not None else ""
        return f"451 4.4.2 Mail server did not answer{after}, try again"
    code, status, text = _UNAVAILABLE.get(error.kind, _UNAVAILABLE["unavailable"])
    return f"{code} {status} {text}"


def refused(error: BackendRefused) -> str:
    """The backend's own reply when it speaks SMTP (passed on as it is), else the code its
    enhanced status means."""
    if error.code is not None:
        return f"{error.code} {error.text}" if error.text else str(error.code)
    status = error.status or ("5.0.0" if error.permanent else "4.0.0")
    basic = _BASIC.get(status[:3], 554) if status.startswith("5") else 451
    return f"{basic} {status} {safe(error.text)}"


def not_sent(error: BackendUnavailable | BackendRefused) -> str:
    return unavailable(error) if isinstance(error, BackendUnavailable) else refused(error)


def login_unavailable(text: str) -> str:
    return f"451 4.3.5 {safe(text)}"


def not_allowed(text: str) -> str:
    return f"550 5.7.1 {safe(text)}"


def held(text: str) -> str:
    """A BAL being moved: the message was not taken, the client sends it again."""
    return f"451 4.3.0 {safe(text)}"


def session_ended(reason: str) -> str:
    return f"421 4.7.0 {safe(reason)}"


def accepted(text: str) -> str:
    return f"250 {safe(text)}" if text else OK
