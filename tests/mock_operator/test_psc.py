"""The mock Pro Santé Connect, driven over real sockets by a real OAuth client (authlib)."""

from __future__ import annotations

import re
import secrets
import warnings
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from mock_operator.psc.clients import Client
from mock_operator.psc.provider import MockPsc
from mock_operator.server import MockOperator
from psc_auth import (
    AuthMeans,
    TokenError,
    TokenFailure,
    TokenValidator,
    ValidationMode,
    ValidatorConfig,
)
from tests.conftest import client_tls, persona_token

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from authlib.integrations.base_client.errors import OAuthError
    from authlib.integrations.httpx_client import AsyncOAuth2Client

CIBA = "urn:openid:params:grant-type:ciba"
REDIRECT = "http://127.0.0.1:53682/callback"


def secret_of(mock: MockOperator, client_id: str) -> str:
    assert mock.psc is not None
    client = mock.psc.clients.get(client_id)
    assert client is not None
    return client.client_secret


def oidc(mock: MockOperator, name: str) -> str:
    return f"{mock.issuer}/protocol/openid-connect/{name}"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, verify=client_tls()) as client:
        yield client


def demo_client(mock: MockOperator) -> AsyncOAuth2Client:
    """`lps-demo`, the LPS under test, as a real OAuth client."""
    return AsyncOAuth2Client(
        client_id="lps-demo",
        client_secret=secret_of(mock, "lps-demo"),
        scope="openid scope_all",
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
        timeout=10,
        verify=client_tls(),
    )


@pytest.fixture
async def oauth(mock_op: MockOperator) -> AsyncIterator[AsyncOAuth2Client]:
    async with demo_client(mock_op) as client:
        yield client


def validator_for(mock: MockOperator, **config: Any) -> TokenValidator:
    defaults: dict[str, Any] = {
        "issuer": mock.issuer,
        "client_ids": ["lps-demo"],
        "clock_skew_seconds": 0,
        "introspection_client_id": "lps-gateway",
        "introspection_client_secret": secret_of(mock, "lps-gateway"),
    }
    return TokenValidator(ValidatorConfig(**{**defaults, **config}))


async def is_active(http: httpx.AsyncClient, mock: MockOperator | MockPsc, token: str) -> bool:
    """Whether the mock PSC vouches for a token, asked the two ways a gateway asks:
    introspection (as `lps-gateway`) and userinfo, which must agree; an inactive token's
    introspection says nothing more than that."""
    psc = mock.psc if isinstance(mock, MockOperator) else mock
    assert psc is not None
    gateway = psc.clients.get("lps-gateway")
    assert gateway is not None
    oidc_base = f"{psc.issuer}/protocol/openid-connect"
    introspected = await http.post(
        f"{oidc_base}/token/introspect",
        data={"token": token},
        auth=("lps-gateway", gateway.client_secret),
    )
    assert introspected.status_code == 200
    info = await http.get(f"{oidc_base}/userinfo", headers={"Authorization": f"Bearer {token}"})
    if introspected.json()["active"] is True:
        assert info.status_code == 200, info.text
        return True
    assert introspected.json() == {"active": False}
    assert info.status_code == 401
    assert 'error="invalid_token"' in info.headers["www-authenticate"]
    return False


async def choose_on_login_page(
    http: httpx.AsyncClient, url: str, persona: str, means: str
) -> httpx.Response:
    """What a person does on the mock PSC's login page: pick a persona and a means."""
    page = await http.get(url)
    assert page.status_code == 200
    assert "Qui êtes-vous" in page.text
    login_id = re.search(r'name="login_id" value="([^"]+)"', page.text)
    assert login_id is not None
    return await http.post(
        url, data={"login_id": login_id.group(1), "persona": persona, "means": means}
    )


async def login(
    mock: MockOperator,
    oauth: AsyncOAuth2Client,
    http: httpx.AsyncClient,
    persona: str = "dr-martin",
    means: str = "card",
) -> dict[str, Any]:
    """The authorization-code flow with PKCE, a person choosing on the login page."""
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(8)
    url, state = oauth.create_authorization_url(
        oidc(mock, "auth"), code_verifier=verifier, nonce=nonce, acr_values="eidas1"
    )
    answer = await choose_on_login_page(http, url, persona, means)
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [state]
    assert query["iss"] == [mock.issuer]
    token: dict[str, Any] = await oauth.fetch_token(
        oidc(mock, "token"), authorization_response=location, code_verifier=verifier
    )
    token["_nonce"] = nonce
    token["_location"] = location
    return token


async def test_discovery_on_both_paths(mock_op: MockOperator, http: httpx.AsyncClient):
    base = f"{mock_op.issuer}/.well-known"
    wallet = (await http.get(f"{base}/wallet-openid-configuration")).json()
    standard = (await http.get(f"{base}/openid-configuration")).json()
    assert wallet == standard
    assert wallet["issuer"] == mock_op.issuer
    assert wallet["backchannel_authentication_endpoint"].endswith("/ext/ciba/auth")
    assert wallet["code_challenge_methods_supported"] == ["S256"]
    jwks = (await http.get(wallet["jwks_uri"])).json()
    assert [k["kty"] for k in jwks["keys"]] == ["RSA"]
    assert jwks["keys"][0]["kid"]


async def test_authorization_code_pkce_flow(
    mock_op: MockOperator, oauth: AsyncOAuth2Client, http: httpx.AsyncClient
):
    token = await login(mock_op, oauth, http)
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 120
    validator = validator_for(mock_op)
    identity = await validator.validate(token["access_token"])
    assert str(identity.idnat) == "899700000001"
    assert identity.auth_means is AuthMeans.CARD
    assert identity.family_name == "MARTIN"
    id_claims = await id_token_claims(mock_op, token["id_token"])
    assert id_claims["nonce"] == token["_nonce"]
    assert id_claims["typ"] == "ID"
    assert id_claims["SubjectRefPro"]["exercices"][0]["codeProfession"] == "10"
    # An ID token is not an access token.
    with pytest.raises(TokenError) as caught:
        await validator.validate(token["id_token"])
    assert caught.value.failure is TokenFailure.MALFORMED
    await validator.aclose()


async def id_token_claims(mock: MockOperator, id_token: str) -> dict[str, Any]:
    assert mock.psc is not None
    claims = mock.psc.tokens.verify(id_token)
    assert claims is not None
    return claims


async def test_ecps_login_and_userinfo(
    mock_op: MockOperator, oauth: AsyncOAuth2Client, http: httpx.AsyncClient
):
    token = await login(mock_op, oauth, http, persona="sec-bernard", means="e-cps")
    validator = validator_for(mock_op, userinfo=True)
    identity = await validator.validate(token["access_token"])
    assert identity.auth_means is AuthMeans.ECPS
    assert identity.professions == ()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    info = (await http.get(oidc(mock_op, "userinfo"), headers=headers)).json()
    assert info["SubjectNameID"] == "899700000003"
    signed = await http.get(
        oidc(mock_op, "userinfo"), headers={**headers, "Accept": "application/jwt"}
    )
    assert signed.headers["content-type"].startswith("application/jwt")
    claims = await id_token_claims(mock_op, signed.text)
    assert claims["SubjectNameID"] == "899700000003"
    assert claims["aud"] == "lps-demo"
    bad = await http.get(oidc(mock_op, "userinfo"), headers={"Authorization": "Bearer x.y.z"})
    assert bad.status_code == 401
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]
    await validator.aclose()


async def test_secretary_cannot_use_a_card(
    mock_op: MockOperator, oauth: AsyncOAuth2Client, http: httpx.AsyncClient
):
    url, _ = oauth.create_authorization_url(
        oidc(mock_op, "auth"), code_verifier=secrets.token_urlsafe(48)
    )
    answer = await choose_on_login_page(http, url, "sec-bernard", "card")
    assert answer.status_code == 400
    assert "e-CPS" in answer.text


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": None}, "invalid_request"),
        ({"scope": "scope_all"}, "invalid_scope"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"acr_values": "eidas3"}, "invalid_request"),
    ],
)
async def test_bad_authorization_requests_redirect_with_error(
    mock_op: MockOperator, http: httpx.AsyncClient, params: dict[str, Any], error: str
):
    query: dict[str, Any] = {
        "client_id": "lps-demo",
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "openid scope_all",
        "state": "st",
        "code_challenge": "a" * 43,
        "code_challenge_method": "S256",
    }
    query.update(params)
    answer = await http.get(
        oidc(mock_op, "auth"), params={k: v for k, v in query.items() if v is not None}
    )
    assert answer.status_code == 302
    sent = parse_qs(urlsplit(answer.headers["location"]).query)
    assert sent["error"] == [error]
    assert sent["state"] == ["st"]


async def test_unregistered_redirect_is_not_followed(
    mock_op: MockOperator, http: httpx.AsyncClient
):
    answer = await http.get(
        oidc(mock_op, "auth"),
        params={
            "client_id": "lps-demo",
            "redirect_uri": "https://evil.test/callback",
            "response_type": "code",
            "scope": "openid",
            "code_challenge": "a" * 43,
            "code_challenge_method": "S256",
        },
    )
    assert answer.status_code == 400
    assert "location" not in answer.headers


async def test_code_is_single_use_and_needs_the_verifier(
    mock_op: MockOperator, oauth: AsyncOAuth2Client, http: httpx.AsyncClient
):
    token = await login(mock_op, oauth, http)
    code = parse_qs(urlsplit(token["_location"]).query)["code"][0]
    replay = await http.post(
        oidc(mock_op, "token"),
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": "x" * 43,
        },
        auth=("lps-demo", secret_of(mock_op, "lps-demo")),
    )
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    # Replaying a code ends the session it created: its tokens are no longer active.
    validator = validator_for(mock_op, mode=ValidationMode.INTROSPECT)
    with pytest.raises(TokenError) as caught:
        await validator.validate(token["access_token"])
    assert caught.value.failure is TokenFailure.INACTIVE
    assert not await is_active(http, mock_op, token["access_token"])
    await validator.aclose()


async def test_wrong_verifier_is_refused(
    mock_op: MockOperator, oauth: AsyncOAuth2Client, http: httpx.AsyncClient
):
    url, _ = oauth.create_authorization_url(
        oidc(mock_op, "auth"), code_verifier=secrets.token_urlsafe(48)
    )
    answer = await choose_on_login_page(http, url, "dr-martin", "card")
    with pytest.raises(OAuthError) as caught:
        await oauth.fetch_token(
            oidc(mock_op, "token"),
            authorization_response=answer.headers["location"],
            code_verifier=secrets.token_urlsafe(48),
        )
    assert caught.value.error == "invalid_grant"


async def test_client_authentication(mock_op: MockOperator, http: httpx.AsyncClient):
    url = oidc(mock_op, "token")
    data = {"grant_type": "refresh_token", "refresh_token": "nope"}
    wrong = await http.post(url, data=data, auth=("lps-demo", "wrong"))
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    assert wrong.headers["www-authenticate"].startswith("Basic")
    posted = await http.post(
        url,
        data={**data, "client_id": "lps-demo", "client_secret": secret_of(mock_op, "lps-demo")},
    )
    assert posted.status_code == 400
    assert posted.json()["error"] == "invalid_grant", "client_secret_post authenticated"
    both = await http.post(
        url,
        data={**data, "client_id": "lps-demo", "client_secret": "x"},
        auth=("lps-demo", secret_of(mock_op, "lps-demo")),
    )
    assert both.status_code == 401
    repeated = await http.post(
        url,
        content=b"grant_type=refresh_token&grant_type=refresh_token",
        headers={"content-type": "application/x-www-form-urlencoded"},
        auth=("lps-demo", secret_of(mock_op, "lps-demo")),
    )
    assert repeated.json()["error"] == "invalid_request"


async def test_refresh_rotation_and_reuse_detection(
    mock_op: MockOperator, oauth: AsyncOAuth2Client, http: httpx.AsyncClient
):
    first = await login(mock_op, oauth, http)
    second = await oauth.refresh_token(oidc(mock_op, "token"), refresh_token=first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    validator = validator_for(mock_op, mode=ValidationMode.INTROSPECT, cache_enabled=False)
    assert str((await validator.validate(second["access_token"])).idnat) == "899700000001"
    with pytest.raises(OAuthError) as caught:
        await oauth.refresh_token(oidc(mock_op, "token"), refresh_token=first["refresh_token"])
    assert caught.value.error == "invalid_grant"
    # Reusing a rotated refresh token revoked the whole session.
    with pytest.raises(TokenError) as refused:
        await validator.validate(second["access_token"])
    assert refused.value.failure is TokenFailure.INACTIVE
    assert not await is_active(http, mock_op, second["access_token"])
    assert not await is_active(http, mock_op, first["access_token"])
    with pytest.raises(OAuthError):
        await oauth.refresh_token(oidc(mock_op, "token"), refresh_token=second["refresh_token"])
    await validator.aclose()


async def test_revoked_refresh_token_is_refused(
    mock_op: MockOperator, oauth: AsyncOAuth2Client, http: httpx.AsyncClient
):
    token = await login(mock_op, oauth, http)
    answer = await http.post(
        oidc(mock_op, "revoke"),
        data={"token": token["refresh_token"], "token_type_hint": "refresh_token"},
        auth=("lps-demo", secret_of(mock_op, "lps-demo")),
    )
    assert answer.status_code == 200
    with pytest.raises(OAuthError) as caught:
        await oauth.refresh_token(oidc(mock_op, "token"), refresh_token=token["refresh_token"])
    assert caught.value.error == "invalid_grant"


async def test_logout_makes_tokens_inactive(
    mock_op: MockOperator, oauth: AsyncOAuth2Client, http: httpx.AsyncClient
):
    token = await login(mock_op, oauth, http)
    introspect = validator_for(mock_op, mode=ValidationMode.INTROSPECT, cache_enabled=False)
    local = validator_for(mock_op, cache_enabled=False)
    await introspect.validate(token["access_token"])
    assert await is_active(http, mock_op, token["access_token"])
    answer = await http.get(oidc(mock_op, "logout"), params={"id_token_hint": token["id_token"]})
    assert answer.status_code == 200
    assert "déconnecté" in answer.text
    with pytest.raises(TokenError) as caught:
        await introspect.validate(token["access_token"])
    assert caught.value.failure is TokenFailure.INACTIVE
    assert not await is_active(http, mock_op, token["access_token"])
    # Local validation cannot know about the logout: that is what introspection is for.
    assert str((await local.validate(token["access_token"])).idnat) == "899700000001"
    with pytest.raises(OAuthError):
        await oauth.refresh_token(oidc(mock_op, "token"), refresh_token=token["refresh_token"])
    await introspect.aclose()
    await local.aclose()


async def test_backchannel_logout_with_refresh_token(
    mock_op: MockOperator, oauth: AsyncOAuth2Client, http: httpx.AsyncClient
):
    token = await login(mock_op, oauth, http)
    assert await is_active(http, mock_op, token["access_token"])
    answer = await http.post(
        oidc(mock_op, "logout"),
        data={"refresh_token": token["refresh_token"]},
        auth=("lps-demo", secret_of(mock_op, "lps-demo")),
    )
    assert answer.status_code == 204
    validator = validator_for(mock_op, mode=ValidationMode.INTROSPECT)
    with pytest.raises(TokenError) as caught:
        await validator.validate(token["access_token"])
    assert caught.value.failure is TokenFailure.INACTIVE
    assert not await is_active(http, mock_op, token["access_token"])
    await validator.aclose()


async def start_ciba(
    mock: MockOperator, http: httpx.AsyncClient, channel: str, persona_idnat: str = "899700000001"
) -> httpx.Response:
    return await http.post(
        oidc(mock, "ext/ciba/auth"),
        data={
            "scope": "openid scope_all",
            "login_hint": persona_idnat,
            "binding_message": "42",
            "channel": channel,
        },
        auth=("lps-demo", secret_of(mock, "lps-demo")),
    )


def ciba_later(mock: MockOperator, seconds: float) -> None:
    """The CIBA broker's clock moved on by `seconds`: its pacing and expiry are what the
    tests check, not seconds spent waiting for them."""
    assert mock.psc is not None
    broker = mock.psc.ciba
    clock = broker._clock
    broker._clock = lambda: clock() + seconds


async def poll(oauth: AsyncOAuth2Client, mock: MockOperator, auth_req_id: str) -> dict[str, Any]:
    token: dict[str, Any] = await oauth.fetch_token(
        oidc(mock, "token"), grant_type=CIBA, auth_req_id=auth_req_id
    )
    return token


@pytest.mark.parametrize(
    ("channel", "means"), [("CARD", AuthMeans.CARD), ("MOBILE", AuthMeans.ECPS)]
)
async def test_ciba_approved_from_the_page(
    mock_op: MockOperator,
    oauth: AsyncOAuth2Client,
    http: httpx.AsyncClient,
    channel: str,
    means: AuthMeans,
):
    started = (await start_ciba(mock_op, http, channel)).json()
    assert started["interval"] == 1
    with pytest.raises(OAuthError) as pending:
        await poll(oauth, mock_op, started["auth_req_id"])
    assert pending.value.error == "authorization_pending"
    with pytest.raises(OAuthError) as slow:
        await poll(oauth, mock_op, started["auth_req_id"])
    assert slow.value.error == "slow_down"
    page = await http.get(f"{mock_op.issuer}/ciba")
    assert "Valider sur le téléphone" in page.text
    assert "42" in page.text
    approved = await http.post(
        f"{mock_op.issuer}/ciba/{started['auth_req_id']}/approve", follow_redirects=True
    )
    assert approved.status_code == 200
    ciba_later(mock_op, 6.1)  # the interval grew by 5 s after slow_down
    token = await poll(oauth, mock_op, started["auth_req_id"])
    validator = validator_for(mock_op)
    identity = await validator.validate(token["access_token"])
    assert identity.auth_means is means
    assert str(identity.idnat) == "899700000001"
    with pytest.raises(OAuthError) as consumed:
        await poll(oauth, mock_op, started["auth_req_id"])
    assert consumed.value.error == "invalid_grant"
    await validator.aclose()


async def test_ciba_denied(
    mock_op: MockOperator, oauth: AsyncOAuth2Client, http: httpx.AsyncClient
):
    started = (await start_ciba(mock_op, http, "MOBILE")).json()
    await http.post(f"{mock_op.issuer}/ciba/{started['auth_req_id']}/deny")
    with pytest.raises(OAuthError) as denied:
        await poll(oauth, mock_op, started["auth_req_id"])
    assert denied.value.error == "access_denied"


async def test_ciba_expired(
    mock_op: MockOperator, oauth: AsyncOAuth2Client, http: httpx.AsyncClient
):
    assert mock_op.psc is not None
    mock_op.psc.ciba._expires_in = 1
    started = (await start_ciba(mock_op, http, "MOBILE")).json()
    ciba_later(mock_op, 1.1)
    with pytest.raises(OAuthError) as expired:
        await poll(oauth, mock_op, started["auth_req_id"])
    assert expired.value.error == "expired_token"


async def test_ciba_auto_approval(
    mock_op: MockOperator, oauth: AsyncOAuth2Client, http: httpx.AsyncClient
):
    assert mock_op.psc is not None
    mock_op.psc.ciba._auto_approve_after = 0.5
    started = (await start_ciba(mock_op, http, "MOBILE")).json()
    ciba_later(mock_op, 1.1)
    token = await poll(oauth, mock_op, started["auth_req_id"])
    assert token["access_token"]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"login_hint": "899700009999"}, "unknown_user_id"),
        ({"login_hint": "899700000003", "channel": "CARD"}, "invalid_request"),
        ({"channel": "FAX"}, "invalid_request"),
        ({"scope": "scope_all"}, "invalid_scope"),
        ({"binding_message": "9" * 65}, "invalid_binding_message"),
    ],
)
async def test_ciba_bad_requests(
    mock_op: MockOperator, http: httpx.AsyncClient, data: dict[str, str], error: str
):
    body = {"scope": "openid scope_all", "login_hint": "899700000001", "channel": "MOBILE"}
    body.update(data)
    answer = await http.post(
        oidc(mock_op, "ext/ciba/auth"), data=body, auth=("lps-demo", secret_of(mock_op, "lps-demo"))
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == error


async def test_ciba_needs_the_grant(mock_op: MockOperator, http: httpx.AsyncClient):
    assert mock_op.psc is not None
    web_only = Client("web-only", "s3cret", grant_types=("authorization_code",))
    mock_op.psc.clients._clients[web_only.client_id] = web_only
    answer = await http.post(
        oidc(mock_op, "ext/ciba/auth"),
        data={"scope": "openid", "login_hint": "899700000001"},
        auth=("web-only", "s3cret"),
    )
    assert answer.json()["error"] == "unauthorized_client"


async def test_key_rotation_keeps_the_previous_key_for_the_overlap(
    mock_op: MockOperator, http: httpx.AsyncClient
):
    assert mock_op.psc is not None
    before = await http.post(f"{mock_op.http_url}/_test/token", json={"persona": "dr-martin"})
    old_token = before.json()["access_token"]
    old_kids = [k["kid"] for k in (await http.get(oidc(mock_op, "certs"))).json()["keys"]]
    new_kid = (await http.post(f"{mock_op.http_url}/_test/rotate-keys")).json()["kid"]
    kids = [k["kid"] for k in (await http.get(oidc(mock_op, "certs"))).json()["keys"]]
    assert kids == [new_kid, *old_kids]
    validator = validator_for(mock_op, jwks_refetch_interval_seconds=0)
    assert str((await validator.validate(old_token)).idnat) == "899700000001"
    fresh = await http.post(f"{mock_op.http_url}/_test/token", json={"persona": "dr-moreau"})
    identity = await validator.validate(fresh.json()["access_token"])
    assert str(identity.idnat) == "899700000007", "the new key is fetched on its unknown kid"
    # Past the overlap, the retired key is no longer published.
    mock_op.psc.keys._overlap = 0
    kids = [k["kid"] for k in (await http.get(oidc(mock_op, "certs"))).json()["keys"]]
    assert kids == [new_kid]
    await validator.aclose()


async def test_keys_survive_a_restart(mock_op: MockOperator, http: httpx.AsyncClient):
    token = (
        await http.post(f"{mock_op.http_url}/_test/token", json={"persona": "dr-martin"})
    ).json()["access_token"]
    port = int(urlsplit(mock_op.http_url).port or 0)
    await mock_op.stop()
    again = MockOperator(mock_op.settings.model_copy(update={"http_port": port}), mock_op.data_dir)
    await again.start()
    try:
        assert again.issuer == mock_op.issuer
        validator = validator_for(again, mode=ValidationMode.LOCAL_AND_INTROSPECT)
        assert str((await validator.validate(token)).idnat) == "899700000001"
        await validator.aclose()
    finally:
        await again.stop()


async def test_test_token_endpoint(mock_op: MockOperator, http: httpx.AsyncClient):
    url = f"{mock_op.http_url}/_test/token"
    answer = await http.post(url, json={"persona": "sec-bernard", "lifetime": 30})
    assert answer.json()["expires_in"] == 30
    assert answer.json()["idnat"] == "899700000003"
    assert (await http.post(url, json={"persona": "nobody"})).status_code == 404
    card = await http.post(url, json={"persona": "sec-bernard", "means": "card"})
    assert card.status_code == 400
    assert (await http.post(url, json={"persona": "dr-martin", "lifetime": 0})).status_code == 422


async def test_test_endpoints_answer_loopback_only(mock_op: MockOperator, http: httpx.AsyncClient):
    from mock_operator.server import create_app

    assert mock_op.psc is not None
    token = await persona_token(mock_op, "dr-martin")
    sessions = f"/auth/realms/{mock_op.settings.realm}/sessions"
    transport = httpx.ASGITransport(app=create_app(mock_op.psc), client=("192.0.2.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://mock") as remote:
        answer = await remote.post("/_test/token", json={"persona": "dr-martin"})
        assert answer.status_code == 404
        assert (await remote.post("/_test/rotate-keys")).status_code == 404
        ended = await remote.post("/_test/end-session", json={"persona": "dr-martin"})
        assert ended.status_code == 404
        assert (await remote.get(sessions)).status_code == 404
        assert (await remote.post(f"{sessions}/dr-martin/end")).status_code == 404
    assert await is_active(http, mock_op, token), "nothing was ended from afar"
    local = httpx.ASGITransport(app=create_app(mock_op.psc), client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=local, base_url="http://mock") as near:
        assert (await near.post("/_test/token", json={"persona": "dr-martin"})).status_code == 200
        assert (await near.get(sessions)).status_code == 200
        mock_op.psc.settings = mock_op.psc.settings.model_copy(update={"test_endpoints": False})
        refused = await near.post("/_test/end-session", json={"persona": "dr-martin"})
        assert refused.status_code == 404, "switched off: not even on loopback"
        assert (await near.get(sessions)).status_code == 404
    assert await is_active(http, mock_op, token)


async def test_introspection_needs_client_authentication(
    mock_op: MockOperator, http: httpx.AsyncClient
):
    token = (
        await http.post(f"{mock_op.http_url}/_test/token", json={"persona": "dr-martin"})
    ).json()["access_token"]
    anonymous = await http.post(oidc(mock_op, "token/introspect"), data={"token": token})
    assert anonymous.status_code == 401
    answer = await http.post(
        oidc(mock_op, "token/introspect"),
        data={"token": token},
        auth=("lps-gateway", secret_of(mock_op, "lps-gateway")),
    )
    body = answer.json()
    assert body["active"] is True
    assert body["SubjectNameID"] == "899700000001"
    assert body["client_id"] == "lps-demo"
    garbage = await http.post(
        oidc(mock_op, "token/introspect"),
        data={"token": "garbage"},
        auth=("lps-gateway", secret_of(mock_op, "lps-gateway")),
    )
    assert garbage.json() == {"active": False}
