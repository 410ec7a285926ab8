"""Check results and the report that carries them: one model for campaigns and probes.

A check is named by the requirement it verifies (an ECO.* id of Référentiel #2 where one
exists, otherwise the RFC), and decided by evidence: transcript excerpts, scrubbed of
tokens before they are stored, so that a report can be handed to anyone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum

MAX_EVIDENCE_LINES = 20
MAX_EVIDENCE_CHARS = 400


class Status(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_OBSERVED = "not_observed"

    @property
    def label(self) -> str:
        """The French word shown to people."""
        return _LABELS[self]


_LABELS = {Status.PASSED: "réussi", Status.FAILED: "échoué", Status.NOT_OBSERVED: "non observé"}


@dataclasses.dataclass(frozen=True)
class Check:
    """What is checked. `key` is stable (reports and tests name checks by it)."""

    key: str
    requirement: str  # "ECO.1.0.2", "RFC 3461 §4.1", or "projet" for our own rules
    title: str  # French, one line
    area: str  # "transport", "authentification", "imap", "délégation", "envoi", "réception"


@dataclasses.dataclass(frozen=True)
class Result:
    check: Check
    status: Status
    detail: str = ""  # why, in one French sentence
    evidence: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, check: Check, status: Status, detail: str = "", evidence: Iterable[str] = ()
    ) -> Result:
        """A result whose evidence is scrubbed and bounded."""
        lines = [scrub(line) for line in evidence]
        if len(lines) > MAX_EVIDENCE_LINES:
            dropped = len(lines) - MAX_EVIDENCE_LINES
            lines = [*lines[:MAX_EVIDENCE_LINES], f"… ({dropped} lignes de plus)"]
        return cls(check, status, scrub(detail), tuple(lines))


@dataclasses.dataclass(frozen=True)
class Report:
    kind: str  # "campaign" or "probe"
    title: str
    subject: Mapping[str, str]  # what was checked: software and version, or endpoints
    started: dt.datetime
    finished: dt.datetime | None
    results: tuple[Result, ...]

    def count(self, status: Status) -> int:
        return sum(1 for result in self.results if result.status is status)

    @property
    def failed(self) -> bool:
        return any(result.status is Status.FAILED for result in self.results)


# Bearer tokens (JWT or opaque), SASL initial responses and continuations: whatever could
# let a reader of the report act as the person tested.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(\bbearer\s+)\S+")  # not "AUTH=OAUTHBEARER IDLE"
# not a list of mechanisms ("250-AUTH OAUTHBEARER PLAIN XOAUTH2"): those are no secret
_MECHANISM = r"(?:XOAUTH2|OAUTHBEARER|PLAIN|LOGIN|EXTERNAL|CRAM-MD5|SCRAM-[A-Z0-9-]+)(?:\s|$)"
_SASL = re.compile(
    r"(?i)\b(AUTHENTICATE\s+(?:XOAUTH2|OAUTHBEARER|PLAIN)|AUTH\s+(?:XOAUTH2|OAUTHBEARER|PLAIN))"
    rf"\s+(?!{_MECHANISM})\S+"
)
_LOGIN = re.compile(r'(?i)(\bLOGIN\s+(?:"[^"]*"|\S+)\s+)\S+')
_BLOB = re.compile(r"^[A-Za-z0-9+/=_-]{40,}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def scrub(text: str) -> str:
    """`text` with secrets masked and control characters shown, within a length bound."""
    text = _JWT.sub("<jeton>", text)
    text = _BEARER.sub(r"\1<jeton>", text)
    text = _SASL.sub(r"\1 <masqué>", text)
    text = _LOGIN.sub(r"\1<masqué>", text)
    if _BLOB.match(text.strip()):
        text = "<masqué>"
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > MAX_EVIDENCE_CHARS:
        text = text[:MAX_EVIDENCE_CHARS] + "…"
    return text
