"""The system's trust store for outgoing HTTPS, loaded once per process.

httpx builds a fresh SSL context from certifi's bundle for every client made with the
default `verify=True`: tens of milliseconds and a few hundred kilobytes each time. A context
is read-only once built, so every client verifying against the public roots shares this one.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def system_trust() -> ssl.SSLContext:
    """httpx's default verification (certifi's CA bundle, hostname checked)."""
    return httpx.create_ssl_context()
