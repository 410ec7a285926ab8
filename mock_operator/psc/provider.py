"""The mock PSC's state: everything the endpoints share, built from the data directory."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.settings import MockSettings
from mock_operator.personas import PersonaBook
from mock_operator.psc.ciba import CibaBroker
from mock_operator.psc.clients import CIBA_GRANT, ClientRegistry
from mock_operator.psc.keys import KeyRing
from mock_operator.psc.sessions import SessionStore
from mock_operator.psc.tokens import TokenFactory

MAX_PENDING_LOGINS = 1_000
MAX_CODES = 1_000


@dataclass
class AuthorizationRequest:
    """An authorization request waiting on the login page."""

    client_id: str
    redirect_uri: str
    scope: str
    state: str | None
    nonce: str | None
    code_challenge: str
    created_at: float


@dataclass
class AuthorizationCode:
    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str
    sid: str
    persona: str
    expires_at: float
    used: bool = False


class _Bounded(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries past `limit` (pending logins, codes)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.limit:
            self.popitem(last=False)


class PscObserver(Protocol):
    def psc(self, kind: str, /, *, client_id: str, idnat: str, **data: Any) -> None: ...


class MockPsc:
    def __init__(
        self,
        settings: MockSettings,
        *,
        data_dir: Path,
        issuer: str,
        personas: PersonaBook,
        engine: AsyncEngine,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.issuer = issuer
        self.personas = personas
        self.page_token = secrets.token_urlsafe(24)  # the test pages' forms carry it
        self.clock = clock
        self.clients = ClientRegistry.load(data_dir / "clients.toml")
        self.keys = KeyRing(
            data_dir / "psc-keys",
            rotation_period=settings.key_rotation_period,
            overlap=settings.key_overlap,
            clock=clock,
        )
        self.sessions = SessionStore(
            engine,
            lifetime=settings.session_lifetime,
            idle_timeout=settings.session_idle_timeout,
            refresh_lifetime=settings.refresh_token_lifetime,
            clock=clock,
        )
        self.tokens = TokenFactory(
            self.keys,
            issuer,
            access_lifetime=settings.access_token_lifetime,
            id_lifetime=settings.id_token_lifetime,
            clock=clock,
        )
        self.ciba = CibaBroker(
            expires_in=settings.ciba_expires_in,
            interval=settings.ciba_interval,
            auto_approve_after=settings.ciba_auto_approve_after,
            clock=clock,
        )
        self.observer: PscObserver | None = None  # the conformance runner, when it watches
        self.pending_logins: _Bounded = _Bounded(MAX_PENDING_LOGINS)
        self.codes: _Bounded = _Bounded(MAX_CODES)

    async def start(self) -> None:
        await self.sessions.create_schema()

    def endpoint(self, name: str) -> str:
        return f"{self.issuer}/protocol/openid-connect/{name}"

    def new_code(self, code: AuthorizationCode) -> str:
        value = secrets.token_urlsafe(32)
        self.codes[value] = code
        return value

    def metadata(self) -> dict[str, Any]:
        """The discovery document, served on PSC's path and on the standard one."""
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.endpoint("auth"),
            "token_endpoint": self.endpoint("token"),
            "introspection_endpoint": self.endpoint("token/introspect"),
            "userinfo_endpoint": self.endpoint("userinfo"),
            "end_session_endpoint": self.endpoint("logout"),
            "revocation_endpoint": self.endpoint("revoke"),
            "jwks_uri": self.endpoint("certs"),
            "backchannel_authentication_endpoint": self.endpoint("ext/ciba/auth"),
            "backchannel_token_delivery_modes_supported": ["poll"],
            "backchannel_user_code_parameter_supported": False,
            "grant_types_supported": ["authorization_code", "refresh_token", CIBA_GRANT],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "userinfo_signing_alg_values_supported": ["RS256"],
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "scope_all"],
            "acr_values_supported": ["eidas1"],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "amr",
                "SubjectNameID",
                "preferred_username",
                "given_name",
                "family_name",
                "SubjectRefPro",
                "SubjectOrganization",
                "SubjectRole",
                "otherIds",
            ],
        }
