"""Small facts about network peers and connections, shared by every listener."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

HANG_UP_GRACE = 1.0  # seconds a last word may take to leave before a connection is cut
FAIR_SHARE = 32  # commands served in a row before other connections get the event loop
WRITE_TIMEOUT = 120.0  # seconds a reply may wait for its client to read it, by default


def peer_address(peer: object) -> str:
    """The address of a peer as asyncio gives it: a (host, port, ...) tuple, or a string."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


def is_loopback(host: object) -> bool:
    """Whether a peer (an address string, or a (host, port, ...) tuple) is on loopback.

    Loopback peers may authenticate over plaintext, as Dovecot allows, and reach the mock's
    test-only endpoints; anything unparsable is treated as remote."""
    if isinstance(host, tuple) and host:
        host = host[0]
    return _is_loopback(str(host))


@functools.lru_cache(maxsize=4096)
def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a connection: its TCP peer, or the client a trusted
    proxy announced in a PROXY protocol header. Every listener reads the client's address
    from here, so that the audit, the usage figures, the caps and the loopback rule all see
    the same one."""

    address: str
    port: int = 0

    @classmethod
    def of(cls, peername: object) -> Peer:
        """From asyncio's ``peername``: a (host, port, ...) tuple, or a string."""
        if isinstance(peername, tuple) and len(peername) >= 2 and isinstance(peername[1], int):
            return cls(str(peername[0]), peername[1])
        return cls(peer_address(peername) if peername is not None else "?")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.address)

    @property
    def peername(self) -> tuple[str, int]:
        return (self.address, self.port)
