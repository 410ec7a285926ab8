"""The delegation layer's one exception family.

The errors say what was refused and why (`reason`), never how a protocol answers it: that
belongs to each edge, in one table there (the HTTP statuses: `gateway.api.problems`).
"""

from __future__ import annotations


class DelegationError(Exception):
    """Base of every refusal of the delegation service.

    `reason` is a short stable code (``not-holder``, ``unknown-mailbox``...) written into
    the audit trail as ``refused:<reason>`` and usable in API error bodies.
    """

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class NotHolder(DelegationError):
    """The actor may not manage this mailbox (not its holder, nor an administrator)."""

    reason = "not-holder"


class NotFound(DelegationError):
    """A mailbox, delegation or directory entry does not exist."""

    reason = "not-found"


class Conflict(DelegationError):
    """The change collides with the current state (e.g. a concurrent change won)."""

    reason = "conflict"


class Invalid(DelegationError):
    """The request is well-formed but breaks a rule (rights, expiry, self-delegation...)."""

    reason = "invalid"
