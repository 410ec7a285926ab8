"""Settings of token validation. A plain dataclass: the gateway's settings tree embeds it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

SANDBOX_ISSUER = "https://auth.bas.psc.esante.gouv.fr/auth/realms/esante-wallet"
PRODUCTION_ISSUER = "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet"
MOCK_ISSUER = "http://127.0.0.1:8090/auth/realms/esante-wallet"


class ValidationMode(enum.Enum):
    """Like Dovecot's `introspection_mode`: check locally, ask the provider, or both."""

    LOCAL = "local"
    INTROSPECT = "introspect"
    LOCAL_AND_INTROSPECT = "local+introspect"


@dataclass
class ValidatorConfig:
    """How to validate PSC access tokens.

    `client_ids` are the audiences we accept (`aud` or `azp`); empty accepts any audience,
    which only makes sense against a mock: a gateway refuses to start so unless
    `accept_any_audience` says it is meant. With `userinfo`, the userinfo endpoint adds
    names and professions (`SubjectRefPro`) that access tokens do not carry.
    Introspection authenticates with `introspection_client_id` and
    `introspection_client_secret` (client_secret_basic).
    """

    issuer: str = MOCK_ISSUER
    mode: ValidationMode = ValidationMode.LOCAL
    client_ids: list[str] = field(default_factory=list)
    accept_any_audience: bool = False
    algorithms: list[str] = field(default_factory=lambda: ["RS256", "PS256", "ES256"])
    clock_skew_seconds: int = 30
    require_acr: str | None = "eidas1"
    required_scopes: list[str] = field(default_factory=list)
    introspection_client_id: str = ""
    introspection_client_secret: str = field(default="", repr=False)
    jwks_refetch_interval_seconds: float = 60.0
    # Past this age the JWKS is refetched before its keys verify again (a withdrawn key
    # stops verifying); if the provider does not answer, the old keys serve as long again.
    jwks_max_age_seconds: float = 300.0
    discovery_ttl_seconds: float = 3600.0
    http_timeout_seconds: float = 5.0
    userinfo: bool = False
    cache_enabled: bool = True
    cache_max_entries: int = 10_000
    cache_max_ttl_seconds: float = 300.0
    max_token_bytes: int = 16 * 1024
    # Sessions opened with a token: while it is valid, re-introspected this often (seconds;
    # with introspection credentials only), so that a PSC session ended elsewhere ends them;
    # once it has expired, they live at most `session_max_after_token_expiry` seconds more.
    revalidate_interval: float = 60.0
    session_max_after_token_expiry: float = 1800.0

    @property
    def jwks_max_age_problem(self) -> str | None:
        """Why `jwks_max_age_seconds` cannot work, if it cannot: a stale JWKS is refetched
        at most once per refetch interval, so a shorter max age would leave it unusable."""
        if self.jwks_max_age_seconds > 0 and (
            self.jwks_max_age_seconds >= self.jwks_refetch_interval_seconds
        ):
            return None
        return "must be positive and at least jwks_refetch_interval_seconds"

    @property
    def discovery_urls(self) -> tuple[str, str]:
        base = self.issuer.rstrip("/")
        return (
            f"{base}/.well-known/wallet-openid-configuration",
            f"{base}/.well-known/openid-configuration",
        )
