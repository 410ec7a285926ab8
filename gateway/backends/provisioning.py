"""Provisioning a BAL on a platform before a migration copies to it: the backend's
`provision_url` (`PUT <provision_url>/<BAL>`, HTTP Basic with the backend's master
credentials; the mock's modern platform answers it with its operator API). Idempotent: a
BAL that exists already is left as it is."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from gateway.runtime.tls import shared_backend_context
from gateway.settings import BackendSettings
from psc_auth.trust import system_trust


class ProvisioningError(Exception):
    """The platform refused or could not be reached; the message says which (never the
    password)."""


@dataclass(frozen=True)
class Provisioned:
    bal: str
    created: bool  # False: it existed already, or the backend has no provisioning hook
    details: dict[str, Any]


def http_verify(backend: BackendSettings) -> ssl.SSLContext | bool:
    """How to check the TLS certificate of the backend's HTTP APIs (its `ca_file`)."""
    if not backend.tls_verify:
        return False
    if backend.ca_file is not None:
        return shared_backend_context(backend.ca_file, True)
    return system_trust()


async def provision(
    backend: BackendSettings, bal: str, *, client: httpx.AsyncClient | None = None
) -> Provisioned:
    """Make sure `bal` exists on `backend` (created when missing)."""
    if backend.provision_url is None:
        return Provisioned(bal, False, {})
    url = f"{backend.provision_url.rstrip('/')}/{quote(bal, safe='@')}"
    auth = httpx.BasicAuth(backend.master_user, backend.password())
    own = client is None
    http = client or httpx.AsyncClient(
        verify=http_verify(backend), timeout=backend.reply_timeout, trust_env=False
    )
    try:
        answer = await http.put(url, auth=auth)
    except httpx.TransportError as exc:
        raise ProvisioningError(f"{bal}: {url} does not answer ({type(exc).__name__})") from None
    finally:
        if own:
            await http.aclose()
    if answer.status_code not in (200, 201):
        raise ProvisioningError(f"{bal}: {url} answered {answer.status_code}: {answer.text[:200]}")
    try:
        details = answer.json()
    except ValueError:
        details = {}
    return Provisioned(bal, answer.status_code == 201, details if isinstance(details, dict) else {})
