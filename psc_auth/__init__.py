"""Who you are: Pro Santé Connect tokens in, an `Identity` out (or a `TokenError`)."""

from psc_auth.config import ValidationMode, ValidatorConfig
from psc_auth.errors import IdNatError, PscAuthError, SaslError, TokenError, TokenFailure
from psc_auth.identity import AuthMeans, Identity, Profession
from psc_auth.idnat import IdNat, IdNatKind
from psc_auth.sasl import Mechanism, TokenCredentials
from psc_auth.validator import TokenValidator, token_fingerprint

__all__ = [
    "AuthMeans",
    "IdNat",
    "IdNatError",
    "IdNatKind",
    "Identity",
    "Mechanism",
    "Profession",
    "PscAuthError",
    "SaslError",
    "TokenCredentials",
    "TokenError",
    "TokenFailure",
    "TokenValidator",
    "ValidationMode",
    "ValidatorConfig",
    "token_fingerprint",
]
