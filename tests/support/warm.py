"""Reading a stack's warm backend sessions (`gateway.fronts.imap.warm`) from its metrics and
from the mock's platform, for the tests of warm sessions and their probes."""

from __future__ import annotations

from tests.support.stacks import Stack


def warm(stack: Stack, result: str, backend: str = "modern") -> float:
    """Sessions kept, hits or misses (`result`) so far."""
    return stack.gateway.metrics.sample("lpsgw_warm_sessions_total", backend=backend, result=result)


def dropped(stack: Stack, reason: str, backend: str = "modern") -> float:
    return stack.gateway.metrics.sample("lpsgw_warm_drops_total", backend=backend, reason=reason)


def parked(stack: Stack, backend: str = "modern") -> float:
    return stack.gateway.metrics.sample("lpsgw_warm_open", backend=backend)


def backend_connections(stack: Stack) -> int:
    """The IMAP sessions open on the mock's platform (the gateway's backend sessions)."""
    assert stack.mock.imap is not None
    return stack.mock.imap.open_sessions
