"""The validator refuses every kind of bad token with the right reason, and is cheap on repeat."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from psc_auth import (
    AuthMeans,
    IdNatKind,
    TokenError,
    TokenFailure,
    ValidationMode,
    ValidatorConfig,
)
from psc_auth.validator import TokenValidator, token_fingerprint
from tests.psc_auth.conftest import MakeValidator
from tests.psc_auth.fake_provider import Clock, FakeProvider


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


async def refused(validator: TokenValidator, token: str) -> TokenFailure:
    with pytest.raises(TokenError) as caught:
        await validator.validate(token)
    return caught.value.failure


async def test_valid_token_gives_identity(provider: FakeProvider, make_validator: MakeValidator):
    identity = await make_validator().validate(provider.token())
    assert str(identity.idnat) == "899700000001"
    assert identity.idnat.kind is IdNatKind.RPPS
    assert identity.display_name == "Claire MARTIN"
    assert identity.auth_means is AuthMeans.CARD
    assert identity.client_id == "lps-demo"
    assert identity.expires_at.timestamp() == pytest.approx(provider.clock() + 120, abs=1)


async def test_ecps_means_from_amr(provider: FakeProvider, make_validator: MakeValidator):
    identity = await make_validator().validate(provider.token(amr=["swk", "mca"]))
    assert identity.auth_means is AuthMeans.ECPS


async def test_amr_of_other_types_is_unknown(provider: FakeProvider, make_validator: MakeValidator):
    identity = await make_validator().validate(provider.token(amr=[{"sc": 1}, ["sc"], 7]))
    assert identity.auth_means is AuthMeans.UNKNOWN


@pytest.mark.parametrize(
    ("overrides", "failure"),
    [
        ({"exp": -10}, TokenFailure.EXPIRED),
        ({"nbf": +60}, TokenFailure.NOT_YET_VALID),
        ({"iat": +60}, TokenFailure.NOT_YET_VALID),
        ({"iss": "https://evil.test/auth/realms/esante-wallet"}, TokenFailure.WRONG_ISSUER),
        ({"aud": "other-app", "azp": "other-app"}, TokenFailure.WRONG_AUDIENCE),
        ({"acr": None}, TokenFailure.INSUFFICIENT_ACR),
        ({"acr": "eidas0"}, TokenFailure.INSUFFICIENT_ACR),
        ({"typ": "ID"}, TokenFailure.MALFORMED),
        ({"exp": None}, TokenFailure.MALFORMED),
        ({"SubjectNameID": None, "preferred_username": None}, TokenFailure.MALFORMED),
        ({"SubjectNameID": "999", "preferred_username": None}, TokenFailure.MALFORMED),
    ],
)
async def test_claim_failures(
    provider: FakeProvider,
    make_validator: MakeValidator,
    clock: Clock,
    overrides: dict[str, Any],
    failure: TokenFailure,
):
    for name in ("exp", "nbf", "iat"):
        if isinstance(overrides.get(name), int):
            overrides[name] = int(clock()) + overrides[name]
    assert await refused(make_validator(), provider.token(**overrides)) is failure


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": float("nan")},
        {"exp": float("inf")},
        {"exp": 1e308},
        {"exp": 10**400},
        {"exp": 253_402_300_800},  # one second past the year 9999
        {"exp": -(10**12)},
        {"exp": "tomorrow"},
        {"exp": True},
        {"nbf": float("nan")},
        {"iat": -1e308},
        {"iat": 10**400},
    ],
)
async def test_a_time_no_clock_can_hold_is_refused_not_crashed_on(
    provider: FakeProvider, make_validator: MakeValidator, claims: dict[str, Any]
):
    """JSON lets a token say NaN, 1e308 or 10**400 (a signed token from a compromised or
    buggy issuer): an authentication failure, never an exception of the datetime module."""
    failure = await refused(make_validator(), provider.token(**claims))
    assert failure is TokenFailure.MALFORMED


async def test_a_token_found_inactive_is_refused_from_then_on(
    provider: FakeProvider, make_validator: MakeValidator, clock: Clock
):
    """A locally valid, cached token: once the session watch learns that its PSC session
    ended, no new login takes it, until it expires anyway."""
    validator = make_validator(introspection_client_id="gw", introspection_client_secret="s3cret")
    token = provider.token(sid="psc-1")
    sibling = provider.token(jti="sibling", sid="psc-1")  # the LPS's next token, same login
    await validator.validate(sibling)  # cached before the news
    await validator.validate(token)
    assert await validator.is_active(token)
    provider.active = False
    assert not await validator.is_active(token)
    validator.mark_inactive(token, clock() + 120, "psc-1")
    assert await refused(validator, token) is TokenFailure.INACTIVE
    assert await refused(validator, sibling) is TokenFailure.INACTIVE
    other = provider.token(jti="another", sid="psc-2")
    assert (await validator.validate(other)).psc_session == "psc-2"
    clock.now += 4 * 3600 + 1  # the PSC session would have ended anyway: forgotten
    provider.active = True
    later = provider.token(jti="later", sid="psc-1")
    assert (await validator.validate(later)).psc_session == "psc-1"
    provider.down = True
    with pytest.raises(TokenError) as caught:
        await validator.is_active(other)
    assert caught.value.failure.temporary


async def test_audience_from_azp_or_list(provider: FakeProvider, make_validator: MakeValidator):
    validator = make_validator()
    await validator.validate(provider.token(aud="account", azp="lps-demo"))
    await validator.validate(provider.token(aud=["account", "lps-demo"], azp="x"))


async def test_clock_skew_tolerates_a_just_expired_token(
    provider: FakeProvider, make_validator: MakeValidator, clock: Clock
):
    token = provider.token(exp=int(clock()) - 5)
    assert await refused(make_validator(), token) is TokenFailure.EXPIRED
    identity = await make_validator(clock_skew_seconds=30).validate(token)
    assert str(identity.idnat) == "899700000001"


async def test_required_scope(provider: FakeProvider, make_validator: MakeValidator):
    validator = make_validator(required_scopes=["scope_all"])
    await validator.validate(provider.token())
    failure = await refused(validator, provider.token(scope="openid"))
    assert failure is TokenFailure.INSUFFICIENT_SCOPE


async def test_acr_check_can_be_disabled(provider: FakeProvider, make_validator: MakeValidator):
    await make_validator(require_acr=None).validate(provider.token(acr=None))


async def test_tampered_payload(provider: FakeProvider, make_validator: MakeValidator):
    header, _payload, signature = provider.token().split(".")
    forged = b64json(provider.claims(SubjectNameID="899700000007"))
    failure = await refused(make_validator(), f"{header}.{forged}.{signature}")
    assert failure is TokenFailure.BAD_SIGNATURE


async def test_tampered_signature(provider: FakeProvider, make_validator: MakeValidator):
    header, payload, signature = provider.token().split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 0x01
    token = f"{header}.{payload}.{b64(bytes(raw))}"
    assert await refused(make_validator(), token) is TokenFailure.BAD_SIGNATURE


async def test_alg_none_is_refused(provider: FakeProvider, make_validator: MakeValidator):
    token = f"{b64json({'alg': 'none', 'kid': 'k1'})}.{b64json(provider.claims())}."
    assert await refused(make_validator(), token) is TokenFailure.MALFORMED
    token_with_sig = token + "x"
    assert await refused(make_validator(), token_with_sig) is TokenFailure.BAD_SIGNATURE


async def test_hs256_with_public_key_as_secret_is_refused(
    provider: FakeProvider, make_validator: MakeValidator
):
    """Algorithm confusion: HMAC keyed with the provider's public key must never verify."""
    public_pem = provider.key.as_pem(private=False)
    signing_input = f"{b64json({'alg': 'HS256', 'kid': 'k1'})}.{b64json(provider.claims())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(mac)}"
    assert await refused(make_validator(), token) is TokenFailure.BAD_SIGNATURE


def test_hmac_and_none_cannot_be_configured():
    from psc_auth import ValidatorConfig

    for algorithms in (["RS256", "HS256"], ["none"], []):
        with pytest.raises(ValueError, match="asymmetric"):
            TokenValidator(ValidatorConfig(algorithms=algorithms))


async def test_ps256_and_es256_are_accepted(provider: FakeProvider, make_validator: MakeValidator):
    ec_key = ECKey.generate_key("P-256", parameters={"kid": "ec1"}, private=True)
    ps_key = RSAKey.generate_key(2048, parameters={"kid": "ps1"}, private=True)
    provider.published += [ec_key, ps_key]
    provider.algs.update(ec1="ES256", ps1="PS256")
    validator = make_validator()
    ec_token = jwt.encode({"alg": "ES256", "kid": "ec1"}, provider.claims(), ec_key)
    assert str((await validator.validate(ec_token)).idnat) == "899700000001"
    ps_token = jwt.encode(
        {"alg": "PS256", "kid": "ps1"}, provider.claims(), ps_key, algorithms=["PS256"]
    )
    assert str((await validator.validate(ps_token)).idnat) == "899700000001"
    failure = await refused(make_validator(algorithms=["RS256"]), ps_token)
    assert failure is TokenFailure.BAD_SIGNATURE
    # A key published for RS256 does not verify a PS256 signature.
    wrong = jwt.encode(
        {"alg": "PS256", "kid": "k1"}, provider.claims(), provider.key, algorithms=["PS256"]
    )
    assert await refused(validator, wrong) is TokenFailure.BAD_SIGNATURE


async def test_unknown_kid_refetches_at_most_once_per_interval(
    provider: FakeProvider, make_validator: MakeValidator, clock: Clock
):
    validator = make_validator(jwks_refetch_interval_seconds=60)
    await validator.validate(provider.token())
    assert provider.requests["certs"] == 1
    clock.now += 61
    stranger = RSAKey.generate_key(2048, parameters={"kid": "forged"}, private=True)
    for _ in range(20):
        forged = provider.token(key=stranger)
        assert await refused(validator, forged) is TokenFailure.BAD_SIGNATURE
    assert provider.requests["certs"] == 2, "a storm of unknown kids caused one refetch only"
    # A legitimately rotated key is picked up once the interval has passed.
    rotated = RSAKey.generate_key(2048, parameters={"kid": "k2"}, private=True)
    provider.published.append(rotated)
    assert await refused(validator, provider.token(key=rotated)) is TokenFailure.BAD_SIGNATURE
    clock.now += 61
    await validator.validate(provider.token(key=rotated))
    assert provider.requests["certs"] == 3


async def test_a_key_withdrawn_from_the_jwks_stops_verifying_after_its_max_age(
    provider: FakeProvider, make_validator: MakeValidator, clock: Clock
) -> None:
    """Review 17: the JWKS was re-read only for an unknown kid, so a withdrawn (say,
    compromised) key verified forever. Past `jwks_max_age_seconds` the JWKS is refetched first."""
    validator = make_validator(
        jwks_refetch_interval_seconds=60, jwks_max_age_seconds=300, cache_enabled=False
    )
    await validator.validate(provider.token())
    provider.published.clear()
    clock.now += 299  # still within the max age: the fetched JWKS serves, nothing is asked
    await validator.validate(provider.token())
    assert provider.requests["certs"] == 1
    clock.now += 1
    for _ in range(20):
        assert await refused(validator, provider.token()) is TokenFailure.BAD_SIGNATURE
    assert provider.requests["certs"] == 2, "one refetch, not one per token"
    assert validator._verifiers == {}, "the withdrawn key's verifier is dropped"


async def test_a_key_still_published_keeps_verifying_across_refetches(
    provider: FakeProvider, make_validator: MakeValidator, clock: Clock
) -> None:
    validator = make_validator(jwks_max_age_seconds=300, cache_enabled=False)
    for _ in range(4):
        await validator.validate(provider.token())
        clock.now += 300
    assert provider.requests["certs"] == 4
    assert len(validator._verifiers) == 1


async def test_a_stale_jwks_serves_through_a_provider_outage_for_a_bounded_grace(
    provider: FakeProvider,
    make_validator: MakeValidator,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The refetch rate limit must not keep a stale JWKS alive: while the provider is down
    the old keys serve for one more max age (one warning), then tokens are refused as a
    temporary failure; refetches stay at one per interval throughout."""
    validator = make_validator(
        jwks_refetch_interval_seconds=60, jwks_max_age_seconds=300, cache_enabled=False
    )
    await validator.validate(provider.token())
    provider.down = True
    caplog.set_level("WARNING", logger="psc_auth.provider")
    clock.now += 300
    for _ in range(10):
        await validator.validate(provider.token())  # old keys, within the grace
    assert provider.requests["certs"] == 2
    clock.now += 60
    await validator.validate(provider.token())
    await validator.validate(provider.token())
    assert provider.requests["certs"] == 3, "one retry per refetch interval"
    assert [r.message for r in caplog.records].count("psc.jwks_stale") == 1
    clock.now = clock.now - 360 + 599
    await validator.validate(provider.token())
    clock.now += 1  # twice the max age since the last successful fetch
    for _ in range(10):
        failure = await refused(validator, provider.token())
        assert failure is TokenFailure.PROVIDER_UNREACHABLE
    assert provider.requests["certs"] == 4, "tried at 599 s, not again within the interval"
    provider.down = False
    clock.now += 60
    await validator.validate(provider.token())  # the provider is back: keys fresh again
    assert provider.requests["certs"] == 5
    clock.now += 299
    await validator.validate(provider.token())
    assert provider.requests["certs"] == 5


async def test_concurrent_validations_of_a_stale_jwks_refetch_it_once(
    provider: FakeProvider, make_validator: MakeValidator, clock: Clock
) -> None:
    validator = make_validator(jwks_max_age_seconds=300, cache_enabled=False)
    await validator.validate(provider.token())
    clock.now += 300
    provider.delay = 0.01
    tokens = [provider.token() for _ in range(20)]
    await asyncio.gather(*(validator.validate(token) for token in tokens))
    assert provider.requests["certs"] == 2


@pytest.mark.parametrize("max_age", [0, 59])
def test_the_jwks_max_age_is_positive_and_at_least_the_refetch_interval(max_age: float) -> None:
    config = ValidatorConfig(jwks_refetch_interval_seconds=60, jwks_max_age_seconds=max_age)
    with pytest.raises(ValueError, match="jwks_max_age_seconds"):
        TokenValidator(config)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-jwt",
        "a.b",
        "a.b.c.d.e",
        "!!!.???.###",
        f"{b64(b'[1,2]')}.e30.sig",
        f"{b64json({'alg': 'RS256', 'crit': ['exp']})}.e30.sig",
        f"{b64json({'alg': 'RS256', 'kid': 7})}.e30.sig",
        "x" * 20_000,
    ],
)
async def test_malformed_tokens(make_validator: MakeValidator, token: str):
    assert await refused(make_validator(), token) is TokenFailure.MALFORMED


async def test_introspection_mode(provider: FakeProvider, make_validator: MakeValidator):
    validator = make_validator(mode=ValidationMode.INTROSPECT)
    identity = await validator.validate(provider.token())
    assert str(identity.idnat) == "899700000001"
    assert provider.requests["introspect"] == 1
    assert provider.requests["certs"] == 0, "introspect mode never needs the keys"
    provider.active = False
    assert await refused(validator, provider.token()) is TokenFailure.INACTIVE


async def test_introspection_refuses_another_issuer(
    provider: FakeProvider, make_validator: MakeValidator
):
    provider.introspection_extra = {"iss": "https://evil.test"}
    validator = make_validator(mode=ValidationMode.INTROSPECT)
    assert await refused(validator, provider.token()) is TokenFailure.WRONG_ISSUER


async def test_local_and_introspect_checks_both(
    provider: FakeProvider, make_validator: MakeValidator
):
    validator = make_validator(mode=ValidationMode.LOCAL_AND_INTROSPECT)
    await validator.validate(provider.token())
    assert provider.requests["introspect"] == 1
    forged = provider.token(key=RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True))
    assert await refused(validator, forged) is TokenFailure.BAD_SIGNATURE
    assert provider.requests["introspect"] == 1, "a bad signature is refused before asking"
    provider.active = False
    assert await refused(validator, provider.token()) is TokenFailure.INACTIVE


def test_introspection_needs_credentials():
    from psc_auth import ValidatorConfig

    with pytest.raises(ValueError, match="introspection"):
        TokenValidator(ValidatorConfig(mode=ValidationMode.INTROSPECT))


async def test_discovery_falls_back_to_the_standard_path(
    provider: FakeProvider, make_validator: MakeValidator
):
    provider.wallet_discovery = False
    await make_validator().validate(provider.token())
    assert provider.requests["wallet-openid-configuration"] == 1
    assert provider.requests["openid-configuration"] == 1


async def test_unreachable_provider_is_a_temporary_failure(
    provider: FakeProvider, make_validator: MakeValidator
):
    provider.down = True
    failure = await refused(make_validator(), provider.token())
    assert failure is TokenFailure.PROVIDER_UNREACHABLE
    assert failure.temporary
    assert not TokenFailure.EXPIRED.temporary


async def test_cache_serves_repeats_until_expiry(
    provider: FakeProvider, make_validator: MakeValidator, clock: Clock
):
    validator = make_validator(mode=ValidationMode.INTROSPECT)
    token = provider.token()
    first = await validator.validate(token)
    again = await validator.validate(token)
    assert again is first
    assert provider.requests["introspect"] == 1
    clock.now += 121
    assert await refused(validator, token) is TokenFailure.EXPIRED


async def test_cache_can_be_disabled(provider: FakeProvider, make_validator: MakeValidator):
    validator = make_validator(mode=ValidationMode.INTROSPECT, cache_enabled=False)
    token = provider.token()
    await validator.validate(token)
    await validator.validate(token)
    assert provider.requests["introspect"] == 2


async def test_cache_is_bounded(provider: FakeProvider, make_validator: MakeValidator):
    validator = make_validator(mode=ValidationMode.INTROSPECT, cache_max_entries=3)
    tokens = [provider.token() for _ in range(5)]
    for token in tokens:
        await validator.validate(token)
    await validator.validate(tokens[0])  # evicted: asks again
    assert provider.requests["introspect"] == 6
    await validator.validate(tokens[4])  # still cached
    assert provider.requests["introspect"] == 6


async def test_userinfo_adds_professions(provider: FakeProvider, make_validator: MakeValidator):
    identity = await make_validator(userinfo=True).validate(provider.token())
    assert [p.label for p in identity.professions] == ["médecin"]


def test_fingerprint_is_short_and_stable():
    assert token_fingerprint("abc") == token_fingerprint("abc")
    assert len(token_fingerprint("abc")) == 12
    assert "abc" not in token_fingerprint("abc")


async def test_tokens_never_reach_the_logs(
    provider: FakeProvider, make_validator: MakeValidator, caplog: pytest.LogCaptureFixture
):
    caplog.set_level("DEBUG")
    token = provider.token()
    await make_validator(mode=ValidationMode.LOCAL_AND_INTROSPECT).validate(token)
    await refused(make_validator(), token + "x")
    text = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    assert token.split(".")[2] not in text
    assert token.split(".")[1] not in text
    assert any(getattr(r, "jti", None) for r in caplog.records)


async def test_introspection_uses_basic_auth(provider: FakeProvider, make_validator: MakeValidator):
    validator = make_validator(mode=ValidationMode.INTROSPECT, introspection_client_secret="bad")
    assert await refused(validator, provider.token()) is TokenFailure.PROVIDER_UNREACHABLE


async def test_concurrent_validations_of_one_token_ask_once(
    provider: FakeProvider, make_validator: MakeValidator
):
    validator = make_validator(mode=ValidationMode.INTROSPECT, cache_enabled=False)
    provider.delay = 0.05  # answers take time, as over a network
    token = provider.token()
    identities = await asyncio.gather(*(validator.validate(token) for _ in range(10)))
    assert {str(i.idnat) for i in identities} == {"899700000001"}
    assert provider.requests["introspect"] == 1
    provider.active = False
    results = await asyncio.gather(
        *(validator.validate(token) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, TokenError) for r in results)
    assert provider.requests["introspect"] == 2
