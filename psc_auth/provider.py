"""The PSC provider as a resource server sees it: discovery, JWKS, introspection, userinfo.

Everything fetched is cached, and nothing a client sends can make us fetch more often than
configured: an unknown `kid` triggers at most one JWKS refetch per interval. The JWKS also
ages: past `jwks_max_age_seconds` it is refetched, so that a key the provider withdraws
stops verifying; while the provider does not answer, the old keys serve for as long again,
then nothing does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

from psc_auth.config import ValidatorConfig
from psc_auth.errors import TokenError, TokenFailure

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 512 * 1024  # discovery, JWKS, introspection and userinfo answers
MAX_JWKS_KEYS = 64
MIN_RSA_BITS = 2048  # RFC 7518 §3.3; smaller moduli are factorable, or break PS512 outright

Clock = Callable[[], float]


def _unreachable(detail: str) -> TokenError:
    return TokenError(TokenFailure.PROVIDER_UNREACHABLE, detail)


class Provider:
    """Cached view of one PSC issuer's metadata and keys."""

    def __init__(
        self, config: ValidatorConfig, http: httpx.AsyncClient, clock: Clock = time.time
    ) -> None:
        self._config = config
        self._http = http
        self._clock = clock
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_by_kid: dict[str, Key] = {}
        self._keys_at = float("-inf")  # last attempt to fetch the JWKS, successful or not
        self._keys_fresh_until = float("-inf")  # then only the unknown-kid path may serve
        self._keys_usable_until = float("-inf")  # grace after a failed refetch, then none
        self._stale_warned = False
        self._weak_kids: set[str] = set()  # logged once each
        self._metadata_lock = asyncio.Lock()
        self._keys_lock = asyncio.Lock()
        self.jwks_fetches = 0

    async def metadata(self) -> Mapping[str, Any]:
        now = self._clock()
        if (
            self._metadata is not None
            and now - self._metadata_at < self._config.discovery_ttl_seconds
        ):
            return self._metadata
        async with self._metadata_lock:
            if (
                self._metadata is None
                or self._clock() - self._metadata_at >= self._config.discovery_ttl_seconds
            ):
                self._metadata = await self._discover()
                self._metadata_at = self._clock()
            return self._metadata

    def _metadata_stale(self) -> bool:
        return self._clock() - self._metadata_at >= self._config.discovery_ttl_seconds

    async def _discover(self) -> dict[str, Any]:
        """Try PSC's `wallet-openid-configuration`, then the standard path."""
        last = "no discovery document"
        for url in self._config.discovery_urls:
            try:
                document = await self.get_json(url)
            except TokenError as exc:
                last = exc.detail
                continue
            if document.get("issuer") != self._config.issuer:
                raise _unreachable(f"discovery at {url} names another issuer")
            if not isinstance(document.get("jwks_uri"), str):
                raise _unreachable(f"discovery at {url} has no jwks_uri")
            return document
        raise _unreachable(last)

    async def endpoint(self, name: str) -> str:
        url = (await self.metadata()).get(name)
        if not isinstance(url, str):
            raise _unreachable(f"provider metadata has no {name}")
        return url

    async def key(self, kid: str) -> Key | None:
        """The key published for `kid`, refetching the JWKS first when `kid` is unknown or the
        JWKS is older than its max age, at most once per refetch interval (single-flight).

        When a refetch fails, the keys fetched before keep serving until twice the max age
        (one warning), then `provider_unreachable` until a refetch succeeds. None when the
        JWKS does not publish `kid`."""
        key = self.known_key(kid)
        if key is not None:
            return key
        async with self._keys_lock:
            key = self.known_key(kid)  # another caller has just refetched
            if key is not None:
                return key
            interval = self._config.jwks_refetch_interval_seconds
            if self._keys is None or self._clock() - self._keys_at >= interval:
                self._keys_at = self._clock()
                try:
                    self._install(await self._fetch_keys())
                except TokenError:
                    if self._keys is None or kid not in self._keys_by_kid:
                        raise
                    if not self._stale_warned:
                        self._stale_warned = True
                        log.warning(
                            "psc.jwks_stale", extra={"usable_until": self._keys_usable_until}
                        )
            if self._keys is None or self._clock() >= self._keys_usable_until:
                raise _unreachable("no JWKS fetched recently enough")
            return self._keys_by_kid.get(kid)

    def _install(self, keys: KeySet) -> None:
        now = self._clock()
        self._keys = keys
        self._keys_by_kid = {}
        for key in keys.keys:  # the first of a kid, as KeySet.get_by_kid
            if isinstance(key.kid, str):
                self._keys_by_kid.setdefault(key.kid, key)
        self._keys_fresh_until = now + self._config.jwks_max_age_seconds
        self._keys_usable_until = now + 2 * self._config.jwks_max_age_seconds
        self._stale_warned = False

    def known_key(self, kid: str) -> Key | None:
        """The key of the JWKS already fetched for `kid` while that JWKS is younger than its
        max age: never fetches. None sends the caller to `key`."""
        if self._clock() >= self._keys_fresh_until:
            return None
        return self._keys_by_kid.get(kid)

    def published(self, key: Key) -> bool:
        """Whether `key` is still the one the JWKS publishes under its kid."""
        return isinstance(key.kid, str) and self._keys_by_kid.get(key.kid) is key

    async def _fetch_keys(self) -> KeySet:
        metadata = await self.metadata()
        document = await self.get_json(str(metadata["jwks_uri"]))
        keys = document.get("keys")
        if not isinstance(keys, list) or len(keys) > MAX_JWKS_KEYS:
            raise _unreachable("JWKS has no usable key list")
        usable = [
            k
            for k in keys
            if isinstance(k, dict) and k.get("kty") in ("RSA", "EC") and not self._weak(k)
        ]
        try:  # an empty JWKS is an answer: every key withdrawn
            key_set = KeySet.import_key_set({"keys": usable}) if usable else KeySet([])
        except (JoseError, ValueError, TypeError) as exc:
            raise _unreachable(f"JWKS could not be imported: {type(exc).__name__}") from None
        self.jwks_fetches += 1
        log.info("psc.jwks_fetched", extra={"keys": len(usable)})
        return key_set

    def _weak(self, jwk: Mapping[str, Any]) -> bool:
        """An RSA key under `MIN_RSA_BITS` (or whose modulus does not decode): left out of
        the key set, and logged once per kid."""
        if jwk.get("kty") != "RSA":
            return False
        n = jwk.get("n")
        try:
            modulus = (
                base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)) if isinstance(n, str) else b""
            )
        except (ValueError, binascii.Error):
            modulus = b""
        bits = int.from_bytes(modulus, "big").bit_length()
        if bits >= MIN_RSA_BITS:
            return False
        kid = str(jwk.get("kid"))[:64]
        if kid not in self._weak_kids:
            if len(self._weak_kids) >= MAX_JWKS_KEYS:
                self._weak_kids.clear()
            self._weak_kids.add(kid)
            log.warning("psc.jwks_weak_key_skipped", extra={"kid": kid, "bits": bits})
        return True

    async def get_json(self, url: str, *, method: str = "GET", **kwargs: Any) -> dict[str, Any]:
        """Fetch a JSON object, bounded in size and time; any failure is `provider_unreachable`."""
        try:
            async with self._http.stream(
                method, url, timeout=self._config.http_timeout_seconds, **kwargs
            ) as response:
                if response.status_code >= 400:
                    raise _unreachable(f"{url} answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _unreachable(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise _unreachable(f"{url}: {type(exc).__name__}") from None
        try:
            document = json.loads(bytes(body))
        except ValueError:
            raise _unreachable(f"{url} did not answer JSON") from None
        if not isinstance(document, dict):
            raise _unreachable(f"{url} did not answer a JSON object")
        return document
