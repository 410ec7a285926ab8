"""Benchmark `psc_auth.TokenValidator` in `local` mode: result cache warm versus cache off.

Run as ``.venv/bin/python bench/psc_validate.py [--seconds N] [--tokens N]``. No server is
started: the validator's HTTP client uses an `httpx.MockTransport` serving the discovery
document and the JWKS of a freshly generated RSA 2048 key, which signs a pool of distinct,
realistic PSC access tokens. Each mode validates the pool in a cycle for a fixed duration;
the cached mode has seen every token once before timing starts, so it measures cache hits,
while the uncached mode verifies the RS256 signature and the claims on every call.

The machine may be shared, so each run also reads `time.process_time`: the CPU seconds per
validation, and the rate one core gives (validations per CPU second), over the whole run
and in its least disturbed quarter-second slice (other processes on the same core inflate
CPU time too); the target of 20,000 uncached validations per second and per core is
checked against the best slice.

Prints a header and then exactly one summary line:
``psc_validate: cached X/s, uncached Y/s (U/s per core, best slice B/s; target 20000/s per
core: met|MISSED), ratio Z, cpu C µs per uncached validation (best slice S µs)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import RSAKey

from psc_auth import Identity, TokenValidator, ValidationMode, ValidatorConfig

ISSUER = "https://auth.bench.invalid/auth/realms/esante-wallet"
JWKS_URI = f"{ISSUER}/protocol/openid-connect/certs"
CLIENT_ID = "lps-demo"
KID = "bench"
IDNAT = "899700000001"  # RPPS 99700000001, a test range
BATCH = 64  # validations between two looks at the clock
SLICE = 0.25  # seconds: the run's CPU cost is also read per slice, the best one kept
TARGET_UNCACHED = 20_000  # uncached validations per second and per core (issue 17)
DEFAULT_CACHE_TTL = ValidatorConfig().cache_max_ttl_seconds
DEFAULT_CACHE_ENTRIES = ValidatorConfig().cache_max_entries


@dataclass(frozen=True, slots=True)
class Result:
    """One timed run: how many validations completed in how many (wall, CPU) seconds."""

    count: int
    elapsed: float
    cpu: float
    best_slice_cpu: float  # CPU seconds per validation in the least disturbed slice

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def cpu_rate(self) -> float:
        """Validations per CPU second: the rate of one core to itself."""
        return self.count / self.cpu if self.cpu > 0 else 0.0

    @property
    def cpu_per_validation(self) -> float:
        return self.cpu / self.count if self.count else 0.0

    @property
    def best_cpu_rate(self) -> float:
        return 1 / self.best_slice_cpu if self.best_slice_cpu > 0 else 0.0


def make_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": KID}, private=True)


def make_handler(key: RSAKey) -> Callable[[httpx.Request], httpx.Response]:
    """The provider's side: discovery at the PSC path, and the JWKS holding `key`."""
    public = {**key.as_dict(private=False), "kid": KID, "use": "sig", "alg": "RS256"}
    documents: dict[str, bytes] = {
        f"{ISSUER}/.well-known/wallet-openid-configuration": json.dumps(
            {
                "issuer": ISSUER,
                "jwks_uri": JWKS_URI,
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        ).encode(),
        JWKS_URI: json.dumps({"keys": [public]}).encode(),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        body = documents.get(str(request.url.copy_with(query=None)))
        if body is None:
            return httpx.Response(404, json={"error": "not_found"})
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    return handler


def make_tokens(key: RSAKey, count: int) -> list[str]:
    """`count` distinct PSC-like access tokens (each its own `jti` and `sub`), valid for 1 h."""
    header = {"alg": "RS256", "kid": KID, "typ": "JWT"}
    now = int(time.time())
    tokens: list[str] = []
    for _ in range(count):
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": CLIENT_ID,
            "azp": CLIENT_ID,
            "sub": str(uuid.uuid4()),
            "exp": now + 3600,
            "iat": now,
            "auth_time": now - 5,
            "jti": str(uuid.uuid4()),
            "typ": "Bearer",
            "acr": "eidas1",
            "amr": ["sc", "pin"],
            "scope": "openid scope_all",
            "session_state": str(uuid.uuid4()),
            "sid": str(uuid.uuid4()),
            "SubjectNameID": IDNAT,
            "preferred_username": IDNAT,
            "given_name": "Camille",
            "family_name": "Durand",
        }
        tokens.append(jwt.encode(header, claims, key))
    return tokens


def make_validator(http: httpx.AsyncClient, *, cache: bool) -> TokenValidator:
    config = ValidatorConfig(
        issuer=ISSUER,
        mode=ValidationMode.LOCAL,
        client_ids=[CLIENT_ID],
        cache_enabled=cache,
    )
    return TokenValidator(config, http)


async def timed_run(validator: TokenValidator, tokens: Sequence[str], seconds: float) -> Result:
    """Validate `tokens` in a cycle for about `seconds`; the clock is read once per batch."""
    n = len(tokens)
    validate = validator.validate
    count = 0
    i = 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + seconds
    slice_end, slice_cpu, slice_count = start + SLICE, cpu_start, 0
    best = float("inf")
    while True:
        for _ in range(BATCH):
            await validate(tokens[i])
            i += 1
            if i == n:
                i = 0
        count += BATCH
        now = time.perf_counter()
        if now >= slice_end or now >= deadline:
            cpu_now = time.process_time()
            best = min(best, (cpu_now - slice_cpu) / (count - slice_count))
            slice_end, slice_cpu, slice_count = now + SLICE, cpu_now, count
        if now >= deadline:
            return Result(count, now - start, time.process_time() - cpu_start, best)


async def bench_mode(key: RSAKey, tokens: Sequence[str], seconds: float, *, cache: bool) -> Result:
    http = httpx.AsyncClient(transport=httpx.MockTransport(make_handler(key)))
    validator = make_validator(http, cache=cache)
    try:
        # Warm-up: discovery and JWKS fetched once, and (when on) every token cached.
        first = [await validator.validate(token) for token in tokens]
        if first[0].idnat.number != IDNAT[1:] or first[0].client_id != CLIENT_ID:
            raise SystemExit(f"unexpected identity: {first[0]!r}")
        result = await timed_run(validator, tokens, seconds)
        # Sanity: the cached run really served cache hits, the uncached one did not.
        again: list[Identity] = [await validator.validate(token) for token in tokens]
        same = sum(a is b for a, b in zip(first, again, strict=True))
        if cache and same != len(tokens):
            raise SystemExit(f"cache missed {len(tokens) - same} of {len(tokens)} tokens")
        if not cache and same:
            raise SystemExit(f"cache off but {same} identities were reused")
        if validator.provider.jwks_fetches != 1:
            raise SystemExit(f"JWKS fetched {validator.provider.jwks_fetches} times, not once")
        return result
    finally:
        await validator.aclose()
        await http.aclose()


async def main_async(seconds: float, token_count: int) -> None:
    key = make_key()
    tokens = make_tokens(key, token_count)
    print(
        f"psc_auth.TokenValidator, mode=local, RS256 2048-bit key, {token_count} distinct "
        f"tokens cycled ({len(tokens[0])} bytes each), {seconds:g} s per mode"
    )
    print("cached: warm result cache, every token seen once first; uncached: cache_enabled=False")
    cached = await bench_mode(key, tokens, seconds, cache=True)
    uncached = await bench_mode(key, tokens, seconds, cache=False)
    ratio = cached.rate / uncached.rate if uncached.rate else float("inf")
    verdict = "met" if uncached.best_cpu_rate >= TARGET_UNCACHED else "MISSED"
    print(
        f"psc_validate: cached {cached.rate:.0f}/s, uncached {uncached.rate:.0f}/s "
        f"({uncached.cpu_rate:.0f}/s per core, best slice {uncached.best_cpu_rate:.0f}/s; "
        f"target {TARGET_UNCACHED}/s per core: {verdict}), ratio {ratio:.1f}, "
        f"cpu {uncached.cpu_per_validation * 1e6:.1f} µs per uncached validation "
        f"(best slice {uncached.best_slice_cpu * 1e6:.1f} µs)"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="timed duration of each mode (default 3)"
    )
    parser.add_argument(
        "--tokens", type=int, default=200, help="distinct tokens in the pool (default 200)"
    )
    args = parser.parse_args(argv)
    # Beyond these limits cache entries would expire or be evicted during the cached run.
    if not 0 < args.seconds < DEFAULT_CACHE_TTL - 30:
        parser.error(f"--seconds must be > 0 and < {DEFAULT_CACHE_TTL - 30:g}")
    if not 0 < args.tokens <= DEFAULT_CACHE_ENTRIES:
        parser.error(f"--tokens must be between 1 and {DEFAULT_CACHE_ENTRIES}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    asyncio.run(main_async(args.seconds, args.tokens))


if __name__ == "__main__":
    main()
