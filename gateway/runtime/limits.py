"""Caps on what one client address or one person can hold or try, counted per process.

Neutral infrastructure for the fronts: a connection not yet logged in holds a slot of its
source address, a logged-in IMAP session one of its person; failed logins are remembered
per address for a while. Addresses are grouped as a network would reuse them: an IPv6
client by its /64 (one host controls the whole prefix), an IPv4-mapped one as IPv4.
Exempt networks (a hosting provider's NAT, the operator's own probes) are never capped.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_TRACKED = 100_000  # addresses remembered by a throttle; the oldest are forgotten first


def client_key(address: str) -> str:
    """The unit a cap counts: the IPv4 address, or the IPv6 /64; other peers as given."""
    ip = ip_address_of(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@functools.lru_cache(maxsize=4096)
def ip_address_of(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's address (an IPv4-mapped IPv6 one as IPv4, no zone), None if not one.
    Remembered: a login asks it of one peer several times (caps, throttle, exemptions)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Networks:
    """A set of networks (CIDR blocks) an address is looked up in."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def __contains__(self, address: object) -> bool:
        if not self._networks or not isinstance(address, str):
            return False
        ip = ip_address_of(address)
        return ip is not None and any(ip.version == n.version and ip in n for n in self._networks)

    @property
    def empty(self) -> bool:
        return not self._networks


class Exemptions(Networks):
    """The networks of `limits.exempt_networks`."""


class SlotCounter:
    """At most `limit` slots held at once per key (an address's `client_key`, an idNat);
    an exempt holder is counted but never refused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def acquire(self, key: str, *, exempt: bool = False) -> bool:
        held = self._held.get(key, 0)
        if held >= self.limit and not exempt:
            return False
        self._held[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    @property
    def holders(self) -> int:
        """How many keys hold a slot (what the counter costs in memory)."""
        return len(self._held)


class LoginThrottle:
    """Failed logins per key (a client address's `client_key`, a person) within a sliding
    window: past `max_failures`, the key may not try again until its oldest failure leaves
    the window. A throttled attempt costs the server nothing (no token validated, no
    provider called) and is not itself counted, so it gets in again once the window
    passes."""

    def __init__(
        self, max_failures: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str) -> float | None:
        """None when `key` may try to log in, else the seconds it must wait."""
        failures = self._failures.get(key)
        if failures is None:
            return None
        now = self._clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.max_failures:
            return None
        return failures[0] + self.window - now

    def failed(self, key: str) -> None:
        now = self._clock()
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self.max_failures)
        failures.append(now)
        self._failures.move_to_end(key)
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    @property
    def tracked(self) -> int:
        """How many keys have failures remembered (what the throttle costs in memory)."""
        return len(self._failures)


@dataclass(frozen=True)
class NodeLimits:
    """The caps of one gateway node, shared by its listeners (IMAP, IMAPS and SMTP)."""

    exempt: Exemptions
    imap_preauth: SlotCounter
    smtp_preauth: SlotCounter
    sessions_per_person: SlotCounter  # IMAP
    smtp_sessions_per_person: SlotCounter
    logins: LoginThrottle
