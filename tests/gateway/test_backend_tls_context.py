"""Connections to a backend share one TLS context per backend setting: making one loads
the CA bundle (tens of milliseconds of CPU), too much for each client session."""

from __future__ import annotations

import ssl

from gateway.backends.imap_smtp import upstream
from gateway.runtime.tls import shared_backend_context
from gateway.settings import BackendSettings


def test_one_context_per_backend_setting() -> None:
    verifying = BackendSettings(imap_host="imap.example", tls_verify=True)
    lax = BackendSettings(imap_host="imap.example", tls_verify=False)
    first = upstream._context(verifying)
    assert upstream._context(BackendSettings(imap_host="other.example")) is first
    assert first.verify_mode is ssl.CERT_REQUIRED
    assert first.check_hostname
    unverified = upstream._context(lax)
    assert unverified is not first
    assert unverified.verify_mode is ssl.CERT_NONE
    assert not unverified.check_hostname
    assert shared_backend_context(None, True) is first
