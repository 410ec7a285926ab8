"""The delegation layer's one exception family; the HTTP layer maps each class to a status."""

from __future__ import annotations


class DelegationError(Exception):
    """Base of every refusal of the delegation service.

    `reason` is a short stable code (``not-holder``, ``unknown-mailbox``...) written into
    the audit trail as ``refused:<reason>`` and usable in API error bodies.
    """

    status = 400
    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class NotHolder(DelegationError):
    """The actor may not manage this mailbox (not its holder, nor an administrator)."""

    status = 403
    reason = "not-holder"


class NotFound(DelegationError):
    """A mailbox, delegation or directory entry does not exist."""

    status = 404
    reason = "not-found"


class Conflict(DelegationError):
    """The change collides with the current state (e.g. a concurrent change won)."""

    status = 409
    reason = "conflict"


class Invalid(DelegationError):
    """The request is well-formed but breaks a rule (rights, expiry, self-delegation...)."""

    status = 422
    reason = "invalid"
