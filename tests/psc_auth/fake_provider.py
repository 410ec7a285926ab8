"""A PSC provider in memory (httpx.MockTransport): keys, discovery, JWKS, introspection."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import Counter
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey

ISSUER = "https://psc.test/auth/realms/esante-wallet"
CLIENT_ID = "lps-demo"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class FakeProvider:
    """Signs tokens like PSC and answers the resource server's requests."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
        self.published: list[Any] = [self.key]
        self.algs: dict[str, str] = {}
        self.requests: Counter[str] = Counter()
        self.active = True
        self.wallet_discovery = True
        self.down = False
        self.introspection_extra: dict[str, Any] = {}
        self.delay = 0.0

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": str(uuid.uuid4()),
            "aud": CLIENT_ID,
            "azp": CLIENT_ID,
            "exp": now + 120,
            "iat": now,
            "auth_time": now,
            "jti": uuid.uuid4().hex,
            "typ": "Bearer",
            "acr": "eidas1",
            "amr": ["sc", "pin"],
            "scope": "openid scope_all",
            "SubjectNameID": "899700000001",
            "preferred_username": "899700000001",
            "given_name": "Claire",
            "family_name": "MARTIN",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self, *, header: dict[str, Any] | None = None, key: Any = None, **overrides: Any
    ) -> str:
        signing_key = key or self.key
        head = {"alg": "RS256", "typ": "JWT", "kid": signing_key.kid}
        head.update(header or {})
        return jwt.encode(head, self.claims(**overrides), signing_key)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for key in self.published:
            alg = self.algs.get(key.kid, "RS256")
            keys.append({**key.as_dict(private=False), "kid": key.kid, "use": "sig", "alg": alg})
        return {"keys": keys}

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        path = request.url.path
        self.requests[path.rsplit("/", 1)[-1]] += 1
        if self.down:
            return httpx.Response(503)
        base = "/auth/realms/esante-wallet"
        if path == f"{base}/.well-known/wallet-openid-configuration" and not self.wallet_discovery:
            return httpx.Response(404)
        if path.startswith(f"{base}/.well-known/"):
            oidc = f"{ISSUER}/protocol/openid-connect"
            return httpx.Response(
                200,
                json={
                    "issuer": ISSUER,
                    "jwks_uri": f"{oidc}/certs",
                    "introspection_endpoint": f"{oidc}/token/introspect",
                    "userinfo_endpoint": f"{oidc}/userinfo",
                },
            )
        if path.endswith("/certs"):
            return httpx.Response(200, json=self.jwks())
        if path.endswith("/token/introspect"):
            if request.headers.get("authorization") != httpx.BasicAuth("gw", "s3cret")._auth_header:
                return httpx.Response(401)
            form = dict(httpx.QueryParams(request.content.decode()))
            if not self.active:
                return httpx.Response(200, json={"active": False})
            token = form["token"]
            payload = json.loads(_b64(token.split(".")[1]))
            return httpx.Response(200, json={**payload, "active": True, **self.introspection_extra})
        if path.endswith("/userinfo"):
            return httpx.Response(
                200,
                json={
                    "sub": "x",
                    "SubjectNameID": "899700000001",
                    "SubjectRefPro": {"exercices": [{"codeProfession": "10"}]},
                },
            )
        return httpx.Response(404)


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
