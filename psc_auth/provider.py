"""The PSC provider as a resource server sees it: discovery, JWKS, introspection, userinfo.

Everything fetched is cached, and nothing a client sends can make us fetch more often than
configured: an unknown `kid` triggers at most one JWKS refetch per interval.
"""

from __future__ import annotations

import asyncio
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
        self._keys_at = float("-inf")
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

    async def key_set(self, kid: str | None) -> KeySet:
        """The JWKS, refetched when `kid` is unknown and the refetch interval allows."""
        if self._keys is not None and (kid is None or kid in self._keys_by_kid):
            return self._keys
        async with self._keys_lock:
            known = self._keys is not None and (kid is None or kid in self._keys_by_kid)
            may_refetch = (
                self._clock() - self._keys_at >= self._config.jwks_refetch_interval_seconds
            )
            if not known and (self._keys is None or may_refetch):
                self._keys_at = self._clock()
                self._keys = await self._fetch_keys()
                self._keys_by_kid = {}
                for key in self._keys.keys:  # the first of a kid, as KeySet.get_by_kid
                    if isinstance(key.kid, str):
                        self._keys_by_kid.setdefault(key.kid, key)
        if self._keys is None:
            raise _unreachable("no JWKS")
        return self._keys

    def known_key(self, kid: str) -> Key | None:
        """The key of the JWKS already fetched for `kid`, if any: never fetches."""
        return self._keys_by_kid.get(kid)

    async def _fetch_keys(self) -> KeySet:
        metadata = await self.metadata()
        document = await self.get_json(str(metadata["jwks_uri"]))
        keys = document.get("keys")
        if not isinstance(keys, list) or len(keys) > MAX_JWKS_KEYS:
            raise _unreachable("JWKS has no usable key list")
        usable = [k for k in keys if isinstance(k, dict) and k.get("kty") in ("RSA", "EC")]
        try:
            key_set = KeySet.import_key_set({"keys": usable})
        except (JoseError, ValueError, TypeError) as exc:
            raise _unreachable(f"JWKS could not be imported: {type(exc).__name__}") from None
        self.jwks_fetches += 1
        log.info("psc.jwks_fetched", extra={"keys": len(usable)})
        return key_set

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
