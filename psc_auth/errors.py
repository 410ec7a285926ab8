"""One error vocabulary for "who are you": each protocol maps it to its replies in one table."""

from __future__ import annotations

import enum


class TokenFailure(enum.Enum):
    """Why a Pro Santé Connect token was refused.

    The values are stable identifiers: they appear in logs, metrics and audit events.
    """

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    INSUFFICIENT_ACR = "insufficient_acr"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    INACTIVE = "inactive"
    PROVIDER_UNREACHABLE = "provider_unreachable"

    @property
    def temporary(self) -> bool:
        """A temporary failure is the provider's fault: the client should retry, not re-login."""
        return self is TokenFailure.PROVIDER_UNREACHABLE


class PscAuthError(Exception):
    """Base of every error raised by `psc_auth`."""


class TokenError(PscAuthError):
    """A token was refused; `failure` says why, `detail` is safe to log (never the token)."""

    def __init__(self, failure: TokenFailure, detail: str = "") -> None:
        self.failure = failure
        self.detail = detail
        super().__init__(f"{failure.value}: {detail}" if detail else failure.value)


class SaslError(PscAuthError):
    """A SASL client response could not be decoded (size, encoding or syntax)."""


class IdNatError(PscAuthError, ValueError):
    """A national identifier (idNat) is not valid."""
