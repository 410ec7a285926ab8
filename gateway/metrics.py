"""Prometheus metrics of one gateway: its own registry, so that several gateways in one
process (tests) count separately. A node of several worker processes (`[server] workers`)
runs prometheus_client's multiprocess mode: its supervisor gives each worker the same
private PROMETHEUS_MULTIPROC_DIR, and any worker's scrape sums them all."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from gateway.usage.access import Access

LOGIN_RESULTS = ("ok", "authentication", "authorization", "unavailable", "throttled", "limit")
REFUSALS = ("max_connections", "per_address", "proxy_protocol")


OTHER = "other"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # set by the supervisor for its workers only
TOP_SOFTWARE = 20


class SoftwareLabels:
    """Software names as label values, bounded: the `limit` names seeded from the usage
    tables' most used (`seed`), then the first new ones seen until `limit`; any other name
    is `other`, so a client inventing names cannot grow the series without end."""

    def __init__(self, limit: int = TOP_SOFTWARE) -> None:
        self.limit = limit
        self.names: set[str] = set()

    def seed(self, names: Iterable[str]) -> None:
        for name in names:
            if len(self.names) >= self.limit:
                break
            self.names.add(name)

    def label(self, name: str) -> str:
        if name in self.names:
            return name
        if len(self.names) < self.limit and name != OTHER:
            self.names.add(name)
            return name
        return OTHER


class Metrics:
    def __init__(self, top_software: int = TOP_SOFTWARE) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.open_sessions = Gauge(
            "lpsgw_open_sessions",
            "Client sessions open on the gateway's fronts",
            ["protocol"],
            registry=self.registry,
            multiprocess_mode="livesum",  # the node's sessions: its live workers' sum
        )
        self.logins = Counter(
            "lpsgw_logins",
            "Logins on the gateway's fronts, by result",
            ["protocol", "result"],
            registry=self.registry,
        )
        self.relayed_bytes = Counter(
            "lpsgw_relayed_bytes",
            "Bytes carried between clients and backends",
            ["protocol", "direction"],
            registry=self.registry,
        )
        self.backend_errors = Counter(
            "lpsgw_backend_errors",
            "Backends that could not be reached, failed to log in, died or timed out",
            ["backend", "protocol", "kind"],
            registry=self.registry,
        )
        self.rights_refusals = Counter(
            "lpsgw_rights_refusals",
            "Commands refused because the delegation lacks a right",
            ["protocol", "right"],
            registry=self.registry,
        )
        self.messages = Counter(
            "lpsgw_messages",
            "Messages submitted through the SMTP front, by result",
            ["result"],
            registry=self.registry,
        )
        self.refused_connections = Counter(
            "lpsgw_refused_connections",
            "Connections turned away on arrival: the node's cap, the source address's, or a "
            "load balancer's PROXY protocol header missing or malformed",
            ["protocol", "reason"],
            registry=self.registry,
        )
        self.warm_sessions = Counter(
            "lpsgw_warm_sessions",
            "IMAP backend sessions kept warm after their client left (kept), and logins "
            "that found one for them (hit) or none (miss)",
            ["backend", "result"],
            registry=self.registry,
        )
        self.warm_drops = Counter(
            "lpsgw_warm_drops",
            "Warm IMAP backend sessions closed unused, or not kept, by reason",
            ["backend", "reason"],
            registry=self.registry,
        )
        self.warm_open = Gauge(
            "lpsgw_warm_open",
            "IMAP backend sessions kept warm now",
            ["backend"],
            multiprocess_mode="livesum",  # the node's warm sessions: its live workers' sum
            registry=self.registry,
        )
        self.software = SoftwareLabels(top_software)
        self.usage_logins = Counter(
            "lpsgw_usage_logins",
            "Sessions opened on a BAL, by interface and software (rare names: other)",
            ["interface", "software"],
            registry=self.registry,
        )
        self.usage_messages = Counter(
            "lpsgw_usage_messages",
            "Messages submitted, by interface and software (X-MSS-NIL; rare names: other)",
            ["interface", "software"],
            registry=self.registry,
        )
        self.nonconformities = Counter(
            "lpsgw_mss_nonconformities",
            "MSSanté rules broken by submitted messages, by rule, outcome (refused, or "
            "reported: let through by [mss] policy) and software (rare names: other)",
            ["rule", "outcome", "software"],
            registry=self.registry,
        )
        for protocol in ("imap", "smtp"):
            self.open_sessions.labels(protocol)
            for result in LOGIN_RESULTS:
                self.logins.labels(protocol, result)
            for reason in REFUSALS:
                self.refused_connections.labels(protocol, reason)

    def count_access(self, access: Access) -> None:
        """One access the usage recorder was told of (see `gateway.usage`)."""
        counter = self.usage_logins if access.kind == "session" else self.usage_messages
        counter.labels(access.interface, self.software.label(access.software)).inc()

    def count_nonconformity(self, interface: str, software: str, rule: str, outcome: str) -> None:
        """One MSSanté rule broken (see `gateway.mss.policy`); rule ids are a closed list."""
        self.nonconformities.labels(rule, outcome, self.software.label(software)).inc()

    def render(self) -> bytes:
        """The scrape: this gateway's registry, or the whole node's when it runs workers."""
        shared = os.environ.get(MULTIPROC_DIR)
        if shared:
            node = CollectorRegistry()
            MultiProcessCollector(node, shared)  # type: ignore[no-untyped-call]
            return generate_latest(node)
        return generate_latest(self.registry)

    def sample(self, name: str, **labels: str) -> float:
        """One sample's value as a scrape would read it (0 when never counted): what an
        operator's dashboard and the tests see, by the exported name (``lpsgw_logins_total``)."""
        value = self.registry.get_sample_value(name, labels)
        return value if value is not None else 0.0
