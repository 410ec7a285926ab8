"""What the gateway does with a message that breaks the MSSanté rules: `[mss] policy`.

The X-MSS-* header rules are obligations on the LPS (Référentiel #2, ECO.2.x); refusing a
message that breaks them is this project's choice, not the operators' specification
(DOMAIN.md §2). ``enforce`` (the default) refuses it, which protects the recipients'
software that relies on the headers; ``report`` lets it through unchanged, so that an
operator can measure, during a transition, which software would be refused before
enforcing. Under both, the sender-identity and safety rules (`Rule.scope`) refuse, and
every violation is counted per software and rule (the usage figures) and logged with its
rule id and header name only: nothing else of the message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.mss.rules import RuleResult, Violation

log = logging.getLogger(__name__)

Policy = Literal["enforce", "report"]
Outcome = Literal["refused", "reported"]
POLICIES: tuple[Policy, ...] = ("enforce", "report")


class NonconformityCounter(Protocol):
    """Where each violation is counted (`gateway.usage.UsageRecorder`)."""

    def nonconformity(
        self, interface: str, software: str | None, version: str | None, rule: str, outcome: Outcome
    ) -> None: ...


def outcome(violation: Violation, policy: Policy) -> Outcome:
    """Refused, unless the policy is ``report`` and the rule is an MSSanté header rule."""
    return "reported" if policy == "report" and violation.scope == "mss" else "refused"


@dataclass(frozen=True)
class MessagePolicy:
    """The policy of one gateway, and where it counts what it decides."""

    policy: Policy = "enforce"
    counter: NonconformityCounter | None = None

    def judge(
        self,
        checked: RuleResult,
        *,
        interface: str,
        software: str | None,
        version: str | None = "",
        bal: str = "",
        actor: str = "",
    ) -> list[Violation]:
        """The violations that refuse the message (empty: relay it), each violation counted
        under `software` (X-MSS-NIL, else EHLO, NUMHOMOLOGATION, User-Agent) and logged."""
        refusing: list[Violation] = []
        for violation in checked.violations:
            verdict = outcome(violation, self.policy)
            if verdict == "refused":
                refusing.append(violation)
            log.info(
                "mss.nonconformity",
                extra={
                    "rule": violation.rule,
                    "header": violation.header,
                    "outcome": verdict,
                    "policy": self.policy,
                    "interface": interface,
                    "bal": bal,
                    "actor": actor,
                },
            )
            if self.counter is not None:
                self.counter.nonconformity(interface, software, version, violation.rule, verdict)
        return refusing
