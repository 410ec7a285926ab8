"""`[tls] min_version` and `[tls] ciphers` on the gateway's listeners, checked with real
handshakes: by default TLS 1.2 offers only forward-secret AEAD suites (no CBC, which testssl
flags as LUCKY13-prone), and an operator sets the Référentiel's list (ECO.1.1.3)."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.runtime.tls import DEFAULT_CIPHERS
from gateway.settings import Settings, TlsSettings
from tests.conftest import quick_mock_settings
from tests.support.stacks import Stack, gateway_settings, running_stack

CBC = "ECDHE-ECDSA-AES128-SHA256"  # the dev certificate's key is ECDSA


def client(
    *, ciphers: str | None = None, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the handshake's parameters are tested, not the name
    if ciphers is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
    if max_version is not None:
        context.maximum_version = max_version
    return context


def imap_starttls(stack: Stack, context: ssl.SSLContext) -> str:
    """The cipher the gateway's IMAP agreed on after STARTTLS."""
    imap = imaplib.IMAP4("127.0.0.1", stack.imap_port, timeout=30)
    try:
        imap.starttls(context)
        return str(imap.sock.cipher()[0])  # type: ignore[attr-defined]
    finally:  # no LOGOUT: after a refused handshake there is no session left
        with contextlib.suppress(OSError):
            imap.shutdown()


def smtp_starttls(stack: Stack, context: ssl.SSLContext) -> str:
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as smtp:
        smtp.starttls(context=context)
        return str(smtp.sock.cipher()[0])  # type: ignore[union-attr]


async def _stack(tmp_path: Path, **tls: str) -> Settings:
    return gateway_settings(tmp_path / "gw", tls=tls)


@pytest.mark.parametrize("starttls", [imap_starttls, smtp_starttls], ids=["imap", "smtp"])
async def test_by_default_tls_1_2_offers_aead_only(
    tmp_path: Path, starttls: Callable[[Stack, ssl.SSLContext], str]
) -> None:
    settings = await _stack(tmp_path)
    async with running_stack(settings, quick_mock_settings(), tmp_path / "mock") as stack:
        agreed = await asyncio.to_thread(starttls, stack, client(ciphers="ECDHE+AESGCM"))
        assert agreed == "ECDHE-ECDSA-AES256-GCM-SHA384"
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(starttls, stack, client(ciphers=CBC))


async def test_an_operator_sets_the_suites_and_the_oldest_version(tmp_path: Path) -> None:
    settings = await _stack(tmp_path, ciphers=CBC)
    async with running_stack(settings, quick_mock_settings(), tmp_path / "mock") as stack:
        assert await asyncio.to_thread(imap_starttls, stack, client(ciphers=CBC)) == CBC
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(imap_starttls, stack, client(ciphers="ECDHE+AESGCM"))
    settings = await _stack(tmp_path / "v13", min_version="TLSv1.3")
    async with running_stack(settings, quick_mock_settings(), tmp_path / "mock13") as stack:
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(
                smtp_starttls, stack, client(max_version=ssl.TLSVersion.TLSv1_2)
            )
        agreed = await asyncio.to_thread(smtp_starttls, stack, client())
        assert agreed.startswith("TLS_")  # a TLS 1.3 suite


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ciphers": "NO-SUCH-SUITE"}, "matches no cipher suite"),
        ({"ciphers": "TLS_AES_128_GCM_SHA256:NO-SUCH"}, "matches no cipher suite"),
        ({"ciphers": "x" * 3000}, "at most 2000"),
        ({"min_version": "TLSv1.1"}, "TLSv1.2"),
    ],
)
def test_a_bad_tls_setting_is_refused_at_load(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TlsSettings(**values)


def test_the_default_is_the_aead_list() -> None:
    assert TlsSettings().ciphers == DEFAULT_CIPHERS
    assert TlsSettings().min_version == "TLSv1.2"
