"""Validate a PSC access token and return the `Identity` behind it.

The LPS re-authenticates every couple of minutes, so the fast path is a bounded cache of
successful results keyed by a hash of the token; the cache never outlives the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key

from psc_auth.config import ValidationMode, ValidatorConfig
from psc_auth.errors import TokenError, TokenFailure
from psc_auth.identity import Identity
from psc_auth.jws import (
    FAST_ALGORITHMS,
    SIGNATURE_ERRORS,
    CompactJws,
    Verify,
    b64url_decode,
    load_object,
    make_verifier,
    parse_compact,
)
from psc_auth.provider import Clock, Provider
from psc_auth.trust import system_trust

log = logging.getLogger(__name__)

_FORBIDDEN_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z: any time claim past it is absurd
MAX_INACTIVE = 100_000  # tokens known inactive, remembered until they expire
ENDED_SESSION_MEMORY = 4 * 3600.0  # a PSC session lives 4 hours at most
MAX_VERIFIERS = 256  # (kid, alg) pairs: at most 64 published keys times the accepted algs


_K = TypeVar("_K")


class _Remembered(Generic[_K]):
    """Keys remembered until a deadline each, at most `MAX_INACTIVE` of them (past that the
    oldest are forgotten first): what the provider said has ended, kept bounded."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._until: OrderedDict[_K, float] = OrderedDict()

    def add(self, key: _K, until: float) -> None:
        self._until[key] = until
        while len(self._until) > MAX_INACTIVE:
            self._until.popitem(last=False)

    def __contains__(self, key: _K) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[key]
            return False
        return True


def token_fingerprint(token: str) -> str:
    """What logs say instead of a token: a short hash that cannot be replayed."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]


class TokenValidator:
    """Validates access tokens against one PSC issuer in one of three modes."""

    def __init__(
        self,
        config: ValidatorConfig,
        http: httpx.AsyncClient | None = None,
        *,
        clock: Clock = time.time,
    ) -> None:
        bad = _FORBIDDEN_ALGORITHMS.intersection(config.algorithms)
        if bad or not config.algorithms:
            raise ValueError(f"access tokens must use asymmetric algorithms, not {sorted(bad)}")
        if config.mode is not ValidationMode.LOCAL and not config.introspection_client_id:
            raise ValueError("introspection needs introspection_client_id and its secret")
        if config.jwks_max_age_problem:
            raise ValueError(f"jwks_max_age_seconds {config.jwks_max_age_problem}")
        self.config = config
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(verify=system_trust())
        self._clock = clock
        self.provider = Provider(config, self._http, clock)
        self._cache: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[Identity]] = {}
        self._inactive: _Remembered[bytes] = _Remembered(clock)  # tokens' sha256
        self._ended_sessions: _Remembered[str] = _Remembered(clock)  # PSC sessions' sid
        self._verifiers: dict[tuple[str, str], tuple[Key, Verify]] = {}
        self._verifiers_fetch = 0  # the provider's JWKS fetch `_verifiers` was pruned after
        self._local_only = config.mode is ValidationMode.LOCAL and not config.userinfo

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def validate(self, token: str) -> Identity:
        """Return the identity behind `token`, or raise `TokenError` saying why not."""
        identity = await self._validated(token)
        if identity.psc_session is not None and identity.psc_session in self._ended_sessions:
            raise TokenError(TokenFailure.INACTIVE, "the PSC session of this token has ended")
        return identity

    async def _validated(self, token: str) -> Identity:
        if not isinstance(token, str) or not token or len(token) > self.config.max_token_bytes:
            raise TokenError(TokenFailure.MALFORMED, "empty or oversized token")
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        if key in self._inactive:
            raise TokenError(TokenFailure.INACTIVE, "the PSC session of this token has ended")
        if self.config.cache_enabled:
            cached = self._cache.get(key)
            if cached is not None:
                if cached[0] > now:
                    self._cache.move_to_end(key)
                    return cached[1]
                del self._cache[key]
        identity = self._validated_now(token) if self._local_only else None
        if identity is None:
            identity = await self._validated_once(key, token)
        if self.config.cache_enabled:
            until = min(identity.expires_at.timestamp(), now + self.config.cache_max_ttl_seconds)
            self._cache[key] = (until, identity)
            while len(self._cache) > self.config.cache_max_entries:
                self._cache.popitem(last=False)
        return identity

    async def _validated_once(self, key: bytes, token: str) -> Identity:
        """`_validate_uncached`, once for concurrent callers with the same token."""
        pending = self._inflight.get(key)
        if pending is not None:  # the same token arriving on several connections at once
            return await asyncio.shield(pending)
        future: asyncio.Future[Identity] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            identity = await self._validate_uncached(token)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            future.set_result(identity)
        finally:
            del self._inflight[key]
        return identity

    def _validated_now(self, token: str) -> Identity | None:
        """Local validation without a pause (no fetch, so no one to share the work with), or
        None when the token's key is not known yet."""
        jws = parse_compact(token)
        kid = self._accepted_kid(jws.header)
        key = self.provider.known_key(kid)
        if key is None:
            return None
        return self._identity(self._verified_claims(token, jws, kid, key), token)

    async def is_active(self, token: str) -> bool:
        """Ask the provider now (RFC 7662, never cached) whether `token` is still active:
        its PSC session may have ended since it was validated. `TokenError` (temporary) when
        the provider does not answer."""
        return (await self._introspection(token)).get("active") is True

    def mark_inactive(self, token: str, until: float, psc_session: str | None = None) -> None:
        """The provider said `token` is no longer active: refuse it from now on (until its
        expiry, after which it is refused anyway), whatever a signature check says, and so
        every other token of its PSC session (`psc_session`, the `sid` they share)."""
        key = hashlib.sha256(token.encode()).digest()
        self._cache.pop(key, None)
        self._inactive.add(key, until + self.config.clock_skew_seconds)
        if psc_session is not None:
            self._ended_sessions.add(psc_session, self._clock() + ENDED_SESSION_MEMORY)

    async def _validate_uncached(self, token: str) -> Identity:
        mode = self.config.mode
        claims: dict[str, Any] = {}
        if mode in (ValidationMode.LOCAL, ValidationMode.LOCAL_AND_INTROSPECT):
            claims = await self._verify_jwt(token)
        if mode in (ValidationMode.INTROSPECT, ValidationMode.LOCAL_AND_INTROSPECT):
            claims = {**claims, **await self._introspect(token)}
        if self.config.userinfo:
            claims = {**claims, **await self._userinfo(token, claims)}
        return self._identity(claims, token)

    def _identity(self, claims: dict[str, Any], token: str) -> Identity:
        token_id = claims.get("jti")
        identity = Identity.from_claims(
            claims, token_id=token_id if isinstance(token_id, str) else token_fingerprint(token)
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "psc.token_valid",
                extra={
                    "idnat": str(identity.idnat),
                    "jti": identity.token_id,
                    "mode": self.config.mode.value,
                },
            )
        return identity

    async def _verify_jwt(self, token: str) -> dict[str, Any]:
        jws = parse_compact(token)
        kid = self._accepted_kid(jws.header)
        key = self.provider.known_key(kid)
        if key is None:
            key = await self.provider.key(kid)  # refetched if the interval allows
            if self._verifiers_fetch != self.provider.jwks_fetches:
                self._forget_withdrawn_keys()
        if key is None:
            raise TokenError(TokenFailure.BAD_SIGNATURE, "no provider key for this kid")
        return self._verified_claims(token, jws, kid, key)

    def _accepted_kid(self, header: Mapping[str, Any]) -> str:
        """The header's kid, once its alg is one we accept (both strings: `parse_compact`)."""
        alg = header["alg"]
        if alg not in self.config.algorithms:
            raise TokenError(TokenFailure.BAD_SIGNATURE, f"algorithm {alg!r} is not accepted")
        kid: str | None = header.get("kid")
        if kid is None:
            raise TokenError(TokenFailure.BAD_SIGNATURE, "no provider key for this kid")
        return kid

    def _verified_claims(self, token: str, jws: CompactJws, kid: str, key: Key) -> dict[str, Any]:
        """The claims of `jws`, once its signature by `key` and its claims are checked."""
        alg: str = jws.header["alg"]
        if alg in FAST_ALGORITHMS:
            payload = b64url_decode(jws.payload_segment)
            try:
                signature = b64url_decode(jws.signature_segment)
            except TokenError:
                signature = b""
            if not signature or not self._verifier(kid, alg, key)(jws.signing_input, signature):
                raise TokenError(TokenFailure.BAD_SIGNATURE, "signature does not verify")
            claims = load_object(payload, "payload")
        else:  # an algorithm configured that only the library knows
            try:
                claims = dict(jwt.decode(token, key, algorithms=[alg]).claims)
            except SIGNATURE_ERRORS:
                raise TokenError(TokenFailure.BAD_SIGNATURE, "signature does not verify") from None
            except (JoseError, ValueError, TypeError) as exc:
                raise TokenError(TokenFailure.MALFORMED, type(exc).__name__) from None
        self._check_claims(claims)
        return claims

    def _verifier(self, kid: str, alg: str, key: Key) -> Verify:
        """The verifier of `alg` by `key`, made once for each key the provider publishes."""
        made = self._verifiers.get((kid, alg))
        if made is not None and made[0] is key:
            return made[1]
        verify = make_verifier(key, alg)
        if len(self._verifiers) >= MAX_VERIFIERS:
            self._verifiers.clear()
        self._verifiers[(kid, alg)] = (key, verify)
        return verify

    def _forget_withdrawn_keys(self) -> None:
        """After a JWKS fetch: the verifiers of keys it no longer publishes go."""
        self._verifiers_fetch = self.provider.jwks_fetches
        for pair, (key, _) in list(self._verifiers.items()):
            if not self.provider.published(key):
                del self._verifiers[pair]

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        cfg = self.config
        now = self._clock()
        skew = cfg.clock_skew_seconds
        if claims.get("iss") != cfg.issuer:
            raise TokenError(TokenFailure.WRONG_ISSUER, "iss is not the configured issuer")
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not _is_time(exp):
            raise TokenError(TokenFailure.MALFORMED, "no exp, or not a time")
        if exp + skew <= now:  # type: ignore[operator]
            raise TokenError(TokenFailure.EXPIRED, "token has expired")
        for name, value in (("nbf", nbf), ("iat", iat)):
            if value is None:
                continue
            if not _is_time(value):
                raise TokenError(TokenFailure.MALFORMED, f"{name} is not a time")
            if value - skew > now:
                raise TokenError(TokenFailure.NOT_YET_VALID, f"{name} is in the future")
        typ = claims.get("typ")
        if typ is not None and typ != "Bearer":
            raise TokenError(TokenFailure.MALFORMED, "not an access token")
        if cfg.client_ids:
            aud = claims.get("aud")
            audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            azp = claims.get("azp")
            if not (
                (isinstance(azp, str) and azp in cfg.client_ids)
                or any(isinstance(a, str) and a in cfg.client_ids for a in audiences)
            ):
                raise TokenError(TokenFailure.WRONG_AUDIENCE, "neither aud nor azp is ours")
        self._check_acr_and_scope(claims)

    def _check_acr_and_scope(self, claims: Mapping[str, Any]) -> None:
        if self.config.require_acr and claims.get("acr") != self.config.require_acr:
            raise TokenError(TokenFailure.INSUFFICIENT_ACR, f"acr is not {self.config.require_acr}")
        if self.config.required_scopes:
            scope = claims.get("scope")
            granted = set(scope.split()) if isinstance(scope, str) else set()
            if not granted.issuperset(self.config.required_scopes):
                raise TokenError(TokenFailure.INSUFFICIENT_SCOPE, "a required scope is missing")

    async def _introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 with client_secret_basic; an inactive token is refused."""
        answer = await self._introspection(token)
        if answer.get("active") is not True:
            raise TokenError(TokenFailure.INACTIVE, "introspection says inactive")
        if "iss" in answer and answer["iss"] != self.config.issuer:
            raise TokenError(TokenFailure.WRONG_ISSUER, "introspection names another issuer")
        exp = answer.get("exp")
        if _is_number(exp) and exp + self.config.clock_skew_seconds <= self._clock():  # type: ignore[operator]
            raise TokenError(TokenFailure.EXPIRED, "introspection says expired")
        if self.config.mode is ValidationMode.INTROSPECT:
            self._check_acr_and_scope(answer)
        return answer

    async def _introspection(self, token: str) -> dict[str, Any]:
        url = await self.provider.endpoint("introspection_endpoint")
        return await self.provider.get_json(
            url,
            method="POST",
            data={"token": token, "token_type_hint": "access_token"},
            auth=(self.config.introspection_client_id, self.config.introspection_client_secret),
        )

    async def _userinfo(self, token: str, claims: Mapping[str, Any]) -> dict[str, Any]:
        url = await self.provider.endpoint("userinfo_endpoint")
        info = await self.provider.get_json(url, headers={"Authorization": f"Bearer {token}"})
        known = claims.get("SubjectNameID") or claims.get("preferred_username")
        if known and info.get("SubjectNameID", known) != known:
            raise TokenError(TokenFailure.MALFORMED, "userinfo names another person")
        return {k: v for k, v in info.items() if k not in ("sub", "iss", "aud", "exp")}


def _is_number(value: object) -> bool:
    """An int or a float as JSON gives them (not a bool)."""
    kind = type(value)
    return kind is int or kind is float


def _is_time(value: object) -> bool:
    """A NumericDate a clock can hold: finite, after 1970 and before the year 10000 (JSON
    lets a token say NaN, 1e308 or 10**400)."""
    kind = type(value)
    return (kind is int or kind is float) and 0 <= value <= MAX_TIMESTAMP  # type: ignore[operator]  # NaN: False
