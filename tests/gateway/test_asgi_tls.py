"""The HTTPS listener plumbing of the legacy front: an ASGI app behind `AsgiServer` with a
context that asks for card certificates sees the client certificate in its scope (the
ASGI TLS extension) and reads it with `client_certificate`. httpx with a client
certificate against a tiny FastAPI app, over real sockets."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from fastapi import FastAPI, Request

from gateway.runtime.asgi_server import AsgiServer, bind_tcp
from gateway.runtime.asgi_tls import client_certificate
from gateway.runtime.tls import ensure_dev_certificate, request_client_certificates, server_context
from mock_operator.historic.auth import CpsAuthority
from mock_operator.personas import default_personas
from psc_auth.certificates import CardError, CardRefusal, CardVerifier


def app_of(verifier: CardVerifier) -> FastAPI:
    app = FastAPI()

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, object]:
        der = client_certificate(request.scope)
        if der is None:
            return {"card": None}
        chain = request.scope["extensions"]["tls"]["client_cert_chain"]
        try:
            holder = verifier.verify(der)
        except CardError as exc:
            return {"card": "refused", "why": exc.refusal.value}
        return {"card": str(holder.idnat), "name": holder.name, "pem": chain[0]}

    return app


@pytest.fixture
async def https(tmp_path: Path) -> AsyncIterator[tuple[str, CpsAuthority, Path]]:
    authority = CpsAuthority.load_or_create(tmp_path / "cps")
    verifier = CardVerifier([authority.certificate], authority.crl_path)
    cert, key = ensure_dev_certificate(tmp_path / "tls")
    context = request_client_certificates(server_context(cert, key), verifier.ca_pem())
    server = AsgiServer(app_of(verifier), bind_tcp("127.0.0.1", 0), ssl_context=context)
    await server.start()
    try:
        yield f"https://127.0.0.1:{server.port}", authority, cert
    finally:
        await server.stop()


def client_with(
    trusted: Path, pem: bytes | None, key: bytes | None, tmp: Path
) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(trusted))
    if pem is not None and key is not None:
        (tmp / "card.pem").write_bytes(pem)
        (tmp / "card-key.pem").write_bytes(key)
        context.load_cert_chain(tmp / "card.pem", tmp / "card-key.pem")
    return httpx.AsyncClient(verify=context, timeout=10)


async def test_the_app_sees_the_card_and_maps_it(
    https: tuple[str, CpsAuthority, Path], tmp_path: Path
):
    url, authority, trusted = https
    persona = default_personas().get("dr-martin")
    assert persona is not None
    pem, key = authority.issue(persona)
    async with client_with(trusted, pem, key, tmp_path) as client:
        answer = (await client.get(f"{url}/whoami")).json()
    assert answer["card"] == persona.idnat
    assert answer["name"] == persona.display_name
    sent = x509.load_pem_x509_certificate(pem)
    assert x509.load_pem_x509_certificate(answer["pem"].encode()) == sent

    # revoked: TLS still lets it through (the CRL is the app's to check), the app refuses
    authority.revoke(sent)
    async with client_with(trusted, pem, key, tmp_path) as client:
        answer = (await client.get(f"{url}/whoami")).json()
    assert answer == {"card": "refused", "why": CardRefusal.REVOKED.value}


async def test_no_card_is_none_and_a_foreign_card_ends_at_tls(
    https: tuple[str, CpsAuthority, Path], tmp_path: Path
):
    url, _authority, trusted = https
    async with client_with(trusted, None, None, tmp_path) as client:
        assert (await client.get(f"{url}/whoami")).json() == {"card": None}
    stranger = CpsAuthority.load_or_create(tmp_path / "stranger")
    persona = default_personas().get("dr-martin")
    assert persona is not None
    pem, key = stranger.issue(persona)
    async with client_with(trusted, pem, key, tmp_path) as client:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await client.get(f"{url}/whoami")


def test_client_certificate_reads_only_a_well_formed_extension():
    assert client_certificate({"type": "http"}) is None
    assert client_certificate({"extensions": {"tls": {"client_cert_chain": []}}}) is None
    assert client_certificate({"extensions": {"tls": {"client_cert_chain": ["junk"]}}}) is None
    assert client_certificate({"extensions": {"tls": "junk"}}) is None


async def test_a_client_trusting_two_development_certificates_verifies_each(tmp_path: Path):
    """The demo writes one development certificate for the gateway and one for the mock: a
    client (the probe, curl with both) that trusts both verifies each server, which it
    could not while both bore the same name (OpenSSL picked one by name: "self-signed")."""
    pairs = [ensure_dev_certificate(tmp_path / name) for name in ("gateway", "mock")]
    client = ssl.create_default_context()
    for cert, _ in pairs:
        client.load_verify_locations(cafile=str(cert))
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"ok": "yes"}

    for cert, key in pairs:
        server = AsgiServer(app, bind_tcp("127.0.0.1", 0), ssl_context=server_context(cert, key))
        await server.start()
        try:
            async with httpx.AsyncClient(verify=client) as http:
                answer = await http.get(f"https://localhost:{server.port}/")
            assert answer.json() == {"ok": "yes"}
        finally:
            await server.stop()
