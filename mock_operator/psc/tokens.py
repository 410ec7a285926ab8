"""What the mock PSC signs: access tokens, ID tokens, userinfo JWTs, all RS256."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError

from mock_operator.personas import Persona
from mock_operator.psc.keys import KeyRing
from mock_operator.psc.sessions import PscSession

DEFAULT_SCOPE = "openid scope_all"
ACR = "eidas1"
# RFC 8176 method references: the card is a smart card with a PIN; the e-CPS is a key held
# by the phone app, approved on another channel. PSC's exact values are not public (inferred).
AMR_BY_MEANS = {"card": ["sc", "pin"], "e-cps": ["swk", "mca"]}
MEANS_BY_CHANNEL = {"CARD": "card", "MOBILE": "e-cps"}


class TokenFactory:
    def __init__(
        self,
        keys: KeyRing,
        issuer: str,
        *,
        access_lifetime: int,
        id_lifetime: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.access_lifetime = access_lifetime
        self.id_lifetime = id_lifetime
        self._clock = clock

    def access_token(
        self,
        persona: Persona,
        session: PscSession,
        *,
        scope: str = DEFAULT_SCOPE,
        lifetime: int | None = None,
    ) -> tuple[str, int]:
        now = int(self._clock())
        life = lifetime or self.access_lifetime
        claims: dict[str, Any] = {
            "exp": now + life,
            "iat": now,
            "auth_time": int(session.auth_time),
            "jti": secrets.token_hex(16),
            "iss": self.issuer,
            "aud": session.client_id,
            "sub": persona.subject,
            "typ": "Bearer",
            "azp": session.client_id,
            "session_state": session.sid,
            "sid": session.sid,
            "acr": ACR,
            "amr": AMR_BY_MEANS.get(session.means, []),
            "scope": scope,
            **persona.identity_claims(),
        }
        return self.keys.sign(claims), life

    def id_token(
        self, persona: Persona, session: PscSession, *, access_token: str, nonce: str | None
    ) -> str:
        now = int(self._clock())
        digest = hashlib.sha256(access_token.encode()).digest()
        claims: dict[str, Any] = {
            "exp": now + self.id_lifetime,
            "iat": now,
            "auth_time": int(session.auth_time),
            "jti": secrets.token_hex(16),
            "iss": self.issuer,
            "aud": session.client_id,
            "sub": persona.subject,
            "typ": "ID",
            "azp": session.client_id,
            "sid": session.sid,
            "session_state": session.sid,
            "at_hash": base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode(),
            "acr": ACR,
            "amr": AMR_BY_MEANS.get(session.means, []),
            **persona.userinfo_claims(),
        }
        if nonce:
            claims["nonce"] = nonce
        return self.keys.sign(claims)

    def userinfo(self, persona: Persona) -> dict[str, Any]:
        return {"sub": persona.subject, **persona.userinfo_claims()}

    def userinfo_jwt(self, persona: Persona, client_id: str) -> str:
        now = int(self._clock())
        claims = {**self.userinfo(persona), "iss": self.issuer, "aud": client_id}
        return self.keys.sign({**claims, "iat": now, "exp": now + self.id_lifetime})

    def verify(self, token: str, *, check_expiry: bool = True) -> dict[str, Any] | None:
        """Claims of a token this mock signed with a still-published key, else None."""
        try:
            header = jws.extract_compact(token.encode()).protected
            kid = header.get("kid")
            key = self.keys.key_for(kid) if isinstance(kid, str) else None
            if key is None or header.get("alg") != "RS256":
                return None
            claims = dict(jwt.decode(token, key, algorithms=["RS256"]).claims)
        except (JoseError, ValueError, TypeError, UnicodeError):
            return None
        if claims.get("iss") != self.issuer:
            return None
        exp = claims.get("exp")
        if check_expiry and (not isinstance(exp, int) or exp <= self._clock()):
            return None
        return claims
