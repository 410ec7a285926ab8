"""Small facts about network peers, shared by every listener."""

from __future__ import annotations

import ipaddress


def is_loopback(host: object) -> bool:
    """Whether a peer (an address string, or a (host, port, ...) tuple) is on loopback.

    Loopback peers may authenticate over plaintext, as Dovecot allows, and reach the mock's
    test-only endpoints; anything unparsable is treated as remote."""
    if isinstance(host, tuple) and host:
        host = host[0]
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False
