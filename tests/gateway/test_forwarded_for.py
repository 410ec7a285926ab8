"""X-Forwarded-For on the gateway's HTTP listener counts from `http.forwarded_allow_ips`
only: a forged header from anyone else changes nothing in the audit.

127.0.0.1 is the trusted reverse proxy; 127.0.0.2 a client that forges the header."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.runtime.forwarded import TCP_PEER, ForwardedFor
from gateway.settings import MockSettings
from tests.support.stacks import Stack, gateway_settings, running_stack

MARTIN = "claire.martin@medecin.mssante.fr"
MOREAU = "899700000007"


@pytest.fixture
async def stack(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Stack]:
    settings = gateway_settings(tmp_path / "gateway", http={"forwarded_allow_ips": ["127.0.0.1"]})
    async with running_stack(settings, mock_settings, tmp_path / "mock") as running:
        yield running


async def grant_from(stack: Stack, source: str, headers: dict[str, str]) -> str | None:
    """Grant Moreau a delegation on Martin's BAL from `source`; the audited address."""
    token = await stack.token("dr-martin")
    expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(days=7)).isoformat()
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(transport=transport, timeout=10) as client:
        answer = await client.post(
            f"http://127.0.0.1:{stack.gateway.http_port}/v1/mailboxes/{MARTIN}/delegations",
            json={"delegate": MOREAU, "rights": ["read"], "expires_at": expiry},
            headers={"Authorization": f"Bearer {token}", **headers},
        )
    assert answer.status_code == 201, answer.text
    return await last_grant(stack)


async def last_grant(stack: Stack) -> Any:
    assert stack.gateway.audit is not None
    assert stack.gateway.delegations is not None
    await stack.gateway.audit.flush()
    events = await stack.gateway.delegations.audit_for(MARTIN)
    return next(e.remote for e in events if e.action == "grant")


async def test_forwarded_for_counts_from_the_trusted_proxy_only(stack: Stack):
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    assert await grant_from(stack, "127.0.0.1", forged) == "203.0.113.9"
    assert await grant_from(stack, "127.0.0.2", forged) == "127.0.0.2"
    assert await grant_from(stack, "127.0.0.1", {}) == "127.0.0.1"


async def test_the_client_is_the_last_address_before_the_trusted_proxy(stack: Stack):
    """A client may write its own X-Forwarded-For; the proxy appends the address it saw:
    that last one is the client, what the client wrote is not believed."""
    chain = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
    assert await grant_from(stack, "127.0.0.1", chain) == "203.0.113.9"


async def seen_by_app(trusted: list[str], peer: str, headers: list[tuple[bytes, bytes]]) -> Any:
    """The (client, scheme) the application sees of a request from `peer` with `headers`."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(client=scope["client"], scheme=scope["scheme"], tcp=tcp_peer_of(scope))

    scope = {"type": "http", "client": (peer, 4242), "scheme": "http", "headers": headers}
    await ForwardedFor(app, trusted)(scope, None, None)  # type: ignore[arg-type]
    return seen


def tcp_peer_of(scope: Any) -> str:
    return str(scope[TCP_PEER][0])


@pytest.mark.parametrize(
    ("trusted", "peer"),
    [
        (["10.0.0.1/8"], "10.2.3.4"),  # host bits set: read as 10.0.0.0/8, as the settings do
        (["10.0.0.0/8"], "::ffff:10.2.3.4"),  # a dual-stack listener's IPv4 peer
        (["127.0.0.1"], "127.0.0.1"),
    ],
)
async def test_the_trusted_proxy_is_recognised_as_proxy_protocol_from_is(
    trusted: list[str], peer: str
):
    forwarded = b"192.0.2.7, ::ffff:198.51.100.9"
    headers = [(b"x-forwarded-for", forwarded), (b"x-forwarded-proto", b"https")]
    seen = await seen_by_app(trusted, peer, headers)
    assert seen["client"] == ("198.51.100.9", 0), "the right-most hop, IPv4-mapped unmapped"
    assert seen["scheme"] == "https"
    assert seen["tcp"] == peer


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (b"203.0.113.5, 10.9.9.9", ("203.0.113.5", 0)),  # a trusted hop is skipped
        (b"[2001:db8::5]:443", ("2001:db8::5", 443)),
        (b"203.0.113.5:8080", ("203.0.113.5", 8080)),
        (b"not-an-address", ("10.2.3.4", 4242)),  # nothing usable: the proxy itself
        (b"fe80::1%eth0", ("10.2.3.4", 4242)),
    ],
)
async def test_the_client_named_by_a_trusted_proxy(header: bytes, client: tuple[str, int]):
    seen = await seen_by_app(["10.0.0.0/8"], "10.2.3.4", [(b"x-forwarded-for", header)])
    assert seen["client"] == client


async def test_headers_from_an_untrusted_peer_change_nothing():
    headers = [(b"x-forwarded-for", b"192.0.2.7"), (b"x-forwarded-proto", b"https")]
    seen = await seen_by_app(["10.0.0.1/8"], "11.0.0.1", headers)
    assert seen == {"client": ("11.0.0.1", 4242), "scheme": "http", "tcp": "11.0.0.1"}
