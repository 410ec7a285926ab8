"""The one settings tree of the project: TOML file, then `LPSGW_` environment variables.

Precedence, highest first: explicit overrides (command-line options), environment variables
(`LPSGW_PSC__ISSUER`, `LPSGW_MOCK__HTTP_PORT`, ...: `__` separates levels), the TOML file,
the defaults below. The mock operator reads its own section, `[mock]`, from the same tree.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gateway.runtime.cores import available_cores
from gateway.runtime.tls import DEFAULT_CIPHERS, check_ciphers
from psc_auth.config import ValidatorConfig

# psc_auth stays free of pydantic; this view of its dataclass lets env variables reach its fields.
if TYPE_CHECKING:
    PscSettings = ValidatorConfig
else:
    PscSettings = pydantic_dataclass(ValidatorConfig)


DEFAULT_SCENARIO_PORT = 2150  # the mock's TLS scenario ports: 2150-2155


def _check_networks(value: list[str]) -> list[str]:
    """CIDR blocks (a single address is a /32 or /128): a typo refuses the configuration."""
    for network in value:
        ipaddress.ip_network(network, strict=False)
    return value


PROXY_PROTOCOL_FROM = (
    "load balancers (CIDR) whose connections must start with a PROXY protocol header, "
    "v1 or v2 (HAProxy's send-proxy / send-proxy-v2), naming the client; none by default. "
    "Other peers are served as they are, a header from them is not honoured"
)
PROXY_PROTOCOL_TIMEOUT = "seconds a load balancer has to send its PROXY protocol header"


class _Section(BaseModel):
    """A section of the tree: a misspelt key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["console", "json"] = "console"
    audit_to_log: bool = Field(
        default=False,
        description="also write each audit event to the log (logger lps_gateway.audit, one "
        "line per event with every field), for a SIEM",
    )


class MockSettings(_Section):
    """The mock operator: its listeners and the behaviour of its mock Pro Santé Connect."""

    host: str = "127.0.0.1"
    http_port: int = Field(default=8090, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="Base URL the mock is reached at; default http://host:port"
    )
    imap_port: int = Field(default=2143, ge=0, le=65535)
    smtp_port: int = Field(default=2587, ge=0, le=65535)
    historic_imap_port: int = Field(
        default=2144, ge=0, le=65535, description="the historic platform's own IMAP"
    )
    master_user: str = Field(
        default="lps-gateway", description="trusted gateway's master login (password in data dir)"
    )
    auth_failure_delay: float = Field(default=1.0, ge=0, le=10, description="seconds")
    smtp_dsn: bool = Field(
        default=True,
        description="the modern platform's SMTP offers DSN (RFC 3461); false plays a platform "
        "without it",
    )
    dsn_delay: float = Field(
        default=5.0,
        ge=0,
        le=3_600,
        description="seconds the delay test address (retard@test-dsn.mssante.fr) waits "
        "before it delivers",
    )
    tls_cert: Path | None = Field(default=None, description="default: a development certificate")
    tls_key: Path | None = None
    realm: str = "esante-wallet"
    access_token_lifetime: int = Field(default=120, ge=1, le=86_400)
    id_token_lifetime: int = Field(default=300, ge=1, le=86_400)
    refresh_token_lifetime: int = Field(default=1_800, ge=1, le=86_400)
    session_lifetime: int = Field(default=4 * 3_600, ge=1)
    session_idle_timeout: int = Field(default=1_800, ge=1)
    authorization_code_lifetime: int = Field(default=60, ge=1, le=600)
    key_rotation_period: int = Field(default=30 * 86_400, ge=60, description="seconds")
    key_overlap: int = Field(default=86_400, ge=0, description="seconds a retired key stays")
    ciba_expires_in: int = Field(default=120, ge=1, le=3_600)
    ciba_interval: int = Field(default=2, ge=1, le=60)
    ciba_auto_approve_after: float | None = Field(
        default=5.0, ge=0, description="seconds; none waits for the approval page"
    )
    test_endpoints: bool = Field(
        default=True, description="loopback-only /_test endpoints (tokens on demand)"
    )
    scenario_ports: bool = Field(
        default=True,
        description="TLS scenario ports: certificates an LPS must refuse (expired, for "
        "another name, from an untrusted CA), one IMAP and one SMTP port each",
    )
    scenario_port_base: int | None = Field(
        default=None,
        ge=0,
        le=65530,
        description="first of the six scenario ports (IMAP then SMTP for expired, "
        "wrong-name, untrusted-ca); default 2150 (2150-2155), or any free ports when "
        "imap_port is 0; 0: any free ports",
    )

    @field_validator("host")
    @classmethod
    def _host_is_an_address(cls, value: str) -> str:
        if value != "localhost":
            ipaddress.ip_address(value)
        return value

    def scenario_port(self, index: int) -> int:
        """The port of the `index`-th scenario listener (0: any free port)."""
        base = self.scenario_port_base
        if base is None:
            base = 0 if self.imap_port == 0 else DEFAULT_SCENARIO_PORT
        return base + index if base else 0

    def base_url(self, port: int | None = None) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port if port is not None else self.http_port}"

    def issuer(self, port: int | None = None) -> str:
        return f"{self.base_url(port)}/auth/realms/{self.realm}"


class HttpSettings(_Section):
    """The gateway's HTTP listener: the /v1 API, the web pages, health."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="how browsers reach the gateway; default http://host:port"
    )
    max_body: int = Field(
        default=64 * 1024,
        ge=1024,
        description="bytes of a request body; a larger one gets 413 without being read",
    )
    request_timeout: float = Field(
        default=30.0, gt=0, description="seconds a client may take to send a whole request"
    )
    max_connections: int = Field(default=1000, ge=1, description="open at once; 503 beyond")
    forwarded_allow_ips: list[str] = Field(
        default_factory=list,
        description="reverse proxies (CIDR) whose X-Forwarded-For / X-Forwarded-Proto count: "
        "the client they name is the one audited and throttled; none by default (the "
        "headers of any other peer are ignored)",
    )

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class OpsSettings(_Section):
    """An optional operations listener: /metrics and the detailed /readyz, for the operator's
    monitoring only. When `port` is set, /metrics leaves the public listener. And how the
    node stops (SIGTERM): listeners closed, /readyz 503, sessions drained."""

    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65535, description="none: no such listener")
    shutdown_grace: float = Field(
        default=10.0,
        ge=0,
        le=600,
        description="seconds, on SIGTERM, for IMAP commands and SMTP messages in flight to "
        "finish (then BYE / 421) before what is left is cut",
    )


class ServerSettings(_Section):
    """How many processes serve the node. The supervisor (`serve`, `demo`) binds every
    listening socket, then starts `workers` gateway processes: IMAP and SMTP on every one,
    HTTP on the first alone (the pages' and historic services' sessions live in its
    memory). A delegation change, an expiry, a move and a migration's write hold reach the
    sessions of every worker (PostgreSQL LISTEN/NOTIFY, or the supervisor's local channel
    on SQLite), and `/metrics` is the node's (sums over the workers). Per worker: the caps
    of `[imap]` and `[smtp]` (`max_connections`, per address, per person: with N workers a
    node takes up to N times each), the decision cache and the backends' connections; per
    node: `[http] max_connections`, the failed-login windows of `[limits]`, the metrics,
    and everything in the database (registry, audit, usage, migrations)."""

    workers: int = Field(
        default=0,
        ge=0,
        le=256,
        description="gateway processes of the node, sharing its listening sockets; 0: one "
        "per core this process may use (its CPU affinity, its cgroup's CPU quota); 1: a "
        "single process, no supervisor",
    )

    def count(self) -> int:
        """The number of worker processes to run (`workers`, or the cores)."""
        return self.workers or available_cores()


class LimitsSettings(_Section):
    """Failed logins one source address or person may make, counted per node (its workers
    tell each other each failure: see `[server] workers`). Logged-in
    sessions are never capped per address: a practice behind one NAT address opens one IMAP
    session per delegated BAL."""

    exempt_networks: list[str] = Field(
        default_factory=list, description="CIDR blocks never capped (e.g. an LPS hosting NAT)"
    )
    max_failed_logins: int = Field(
        default=10,
        ge=1,
        description="bad tokens from one address, or BAL one may not open per person, "
        "within the window",
    )
    failed_login_window: float = Field(
        default=60.0,
        gt=0,
        description="seconds; past the count, logins are refused at once until the "
        "oldest failure leaves the window",
    )

    @field_validator("exempt_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class UiSettings(_Section):
    """The web pages log people in with Pro Santé Connect as this OAuth client."""

    client_id: str = "lps-gateway"
    client_secret: str = Field(default="", repr=False)


class TlsSettings(_Section):
    """The certificate and protocol of the gateway's TLS listeners (IMAP and SMTP with
    STARTTLS or implicit TLS, the historic web services' HTTPS)."""

    cert: Path | None = Field(default=None, description="default: a development certificate")
    key: Path | None = None
    min_version: Literal["TLSv1.2", "TLSv1.3"] = Field(
        default="TLSv1.2", description="the oldest TLS accepted (the API LPS: 1.2)"
    )
    ciphers: str = Field(
        default=DEFAULT_CIPHERS,
        max_length=2000,
        description="TLS 1.2 cipher suites, OpenSSL syntax (ECO.1.1.3: the Référentiel's list)",
    )

    @field_validator("ciphers")
    @classmethod
    def _known_ciphers(cls, value: str) -> str:
        return check_ciphers(value)


class CardSettings(_Section):
    """CPS cards and organisation certificates (mutual TLS): the IMAP and SMTP fronts ask
    for a client certificate and offer EXTERNAL only when `ca_file` is set."""

    ca_file: Path | None = Field(
        default=None, description="trusted card CAs (PEM bundle): IGC Santé, the mock's CPS CA"
    )
    crl_file: Path | None = Field(
        default=None,
        description="their revocation list(s) (PEM or DER), read again when the file changes; "
        "once set, a missing or stale list refuses every card",
    )
    require_crl: bool = Field(
        default=True, description="refuse to start with a ca_file and no crl_file"
    )
    revalidate_interval: float = Field(
        default=10.0,
        ge=0,
        description="seconds between checks of open card sessions against the revocation "
        "list (a revoked card, or a list become unusable, ends them); 0: at login only. "
        "A card's sessions end at its expiry either way",
    )

    @model_validator(mode="after")
    def _crl_given(self) -> CardSettings:
        if self.ca_file is not None and self.crl_file is None and self.require_crl:
            raise ValueError("cards.crl_file is required with cards.ca_file (or require_crl=false)")
        return self


class _BehindLoadBalancer(_Section):
    """A mail listener a TCP load balancer may stand in front of (the PROXY protocol)."""

    proxy_protocol_from: list[str] = Field(default_factory=list, description=PROXY_PROTOCOL_FROM)
    proxy_protocol_timeout: float = Field(
        default=5.0, gt=0, le=60, description=PROXY_PROTOCOL_TIMEOUT
    )

    @field_validator("proxy_protocol_from")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class ImapFrontSettings(_BehindLoadBalancer):
    """The API LPS IMAP listener (STARTTLS) and its limits."""

    host: str = "127.0.0.1"
    port: int = Field(default=1143, ge=0, le=65535)
    implicit_tls_port: int | None = Field(
        default=None, ge=0, le=65535, description="an optional IMAPS listener (TLS from the start)"
    )
    preauth_timeout: float = Field(
        default=60.0, gt=0, description="seconds from connection to login, in all"
    )
    max_connections: int = Field(default=10_000, ge=1, description="open at once, per worker")
    max_preauth_per_address: int = Field(
        default=20,
        ge=1,
        description="connections not yet logged in, per source address, per worker",
    )
    max_sessions_per_person: int = Field(
        default=100,
        ge=1,
        description="logged-in sessions of one idNat (all BAL together), per worker",
    )
    idle_timeout: float = Field(default=1800.0, gt=0, description="seconds of silence after login")
    write_timeout: float = Field(
        default=120.0, gt=0, description="seconds a reply may wait for the client to read it"
    )
    auth_failure_delay: float = Field(default=1.0, ge=0, le=10)
    max_line: int = Field(default=64 * 1024, ge=1024, description="bytes of a command line")
    max_literal: int = Field(default=50 * 1024 * 1024, ge=1024, description="APPEND, bytes")
    max_other_literal: int = Field(
        default=64 * 1024, ge=1024, description="any other literal (names, search strings)"
    )


class SmtpFrontSettings(_BehindLoadBalancer):
    """The API LPS submission listener (STARTTLS)."""

    host: str = "127.0.0.1"
    port: int = Field(default=1587, ge=0, le=65535)
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024, description="bytes (SIZE)")
    max_recipients: int = Field(default=100, ge=1, le=1000)
    default_nil: str | None = Field(
        default=None, description="X-MSS-NIL added when the LPS did not set one"
    )
    auth_failure_delay: float = Field(default=1.0, ge=0, le=10)
    timeout: float = Field(default=300.0, gt=0, description="seconds a client may stay silent")
    preauth_timeout: float = Field(
        default=60.0, gt=0, description="seconds from connection to AUTH, in all"
    )
    write_timeout: float = Field(
        default=120.0, gt=0, description="seconds a reply may wait for the client to read it"
    )
    max_connections: int = Field(default=10_000, ge=1, description="open at once, per worker")
    max_preauth_per_address: int = Field(
        default=20,
        ge=1,
        description="connections not yet authenticated, per source address, per worker",
    )
    max_sessions_per_person: int = Field(
        default=100, ge=1, description="authenticated sessions of one idNat, per worker"
    )
    hostname: str | None = Field(
        default=None,
        description="the name the submission service gives itself (RFC 5321: its greeting "
        "and EHLO reply, the Reporting-MTA of the relayed notices); default: this "
        "machine's host name",
    )

    @field_validator("hostname")
    @classmethod
    def _hostname_is_a_domain(cls, value: str | None) -> str | None:
        if value is not None and not is_domain(value):
            raise ValueError(f"not a host name (RFC 1123): {value[:80]!r}")
        return value

    def name(self) -> str:
        """`hostname`, else this machine's host name when it is one, else localhost."""
        if self.hostname is not None:
            return self.hostname
        found = socket.gethostname()
        return found if is_domain(found) else "localhost"


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def is_domain(name: str) -> bool:
    """A host name as RFC 1123 writes them: dot-separated labels of letters, digits and
    hyphens (none at either end), 63 characters each, 253 in all."""
    return len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


class MssSettings(_Section):
    """The MSSanté message rules (`gateway.mss`): what a message breaking them gets."""

    policy: Literal["enforce", "report"] = Field(
        default="enforce",
        description="enforce: a message breaking an X-MSS-* header rule is refused (5.6.0); "
        "report: it is relayed unchanged, and each non-conformity counted per software in "
        "the usage figures. The sender-identity and safety checks refuse under both",
    )


TlsMode = Literal["none", "starttls", "implicit"]


class BackendSettings(_Section):
    """An operator platform the gateway carries sessions to: an IMAP/SMTP platform
    (`imap_smtp`, sessions relayed) or the historic web services (`legacy_ws`, sessions
    served by the gateway's own IMAP engine over `ws_url`)."""

    kind: Literal["imap_smtp", "legacy_ws"] = "imap_smtp"
    imap_host: str = "127.0.0.1"
    imap_port: int = Field(default=143, ge=1, le=65535)
    imap_tls: TlsMode = "starttls"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_tls: TlsMode = "starttls"
    tls_verify: bool = True
    ca_file: Path | None = Field(default=None, description="CA bundle to trust (PEM)")
    login: Literal["master", "token"] = Field(
        default="master",
        description="master: SASL PLAIN with authzid = the BAL and the gateway's own "
        "credentials; token: forward the user's PSC token (XOAUTH2)",
    )
    master_user: str = ""
    master_password: SecretStr = SecretStr("")
    master_password_file: Path | None = Field(
        default=None, description="read the master password from this file instead"
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="seconds")
    reply_timeout: float = Field(
        default=120.0, gt=0, description="seconds to wait for a backend's reply to a command"
    )
    ws_url: str | None = Field(
        default=None,
        description="legacy_ws: base URL of the historic web services "
        "(.../mss-msg-services/services)",
    )
    numhomologation: str = Field(
        default="", max_length=64, description="legacy_ws: the gateway's approval number"
    )
    historic_imap: bool = Field(
        default=False,
        description="legacy_ws: the historic platform's own IMAP (imap_host, imap_port, "
        "master login) serves the operator's tools (migration, the historic interfaces over "
        "other platforms); without it they read through the web services (rebuilt messages, "
        "appends to Drafts only)",
    )
    forward_client_address: bool = Field(
        default=True,
        description="name the LPS to the backend: IMAP ID x-originating-ip/-port before "
        "login (Dovecot believes it from its login_trusted_networks), SMTP XCLIENT ADDR/PORT "
        "where offered, so that its per-address limits, logs and bans see the LPS",
    )
    keeps_sent_copy: bool = Field(
        default=False,
        description="imap_smtp: the platform files a copy of every submitted message in the "
        "sender's Sent folder itself; when false, the historic interfaces served by the "
        "gateway (sendMessage) APPEND that copy",
    )
    provision_url: str | None = Field(
        default=None,
        description="the platform's provisioning API (.../operator/mailboxes): a migration "
        "PUTs <provision_url>/<BAL> (HTTP Basic, master_user and its password) to create the "
        "BAL on this platform before copying to it; none: the BAL must exist already",
    )
    import_url: str | None = Field(
        default=None,
        description="the platform's import API (.../operator/mailboxes, as the mock's modern "
        "platform offers, as Dovecot's dsync can): a migration to this platform keeps each "
        "folder's UIDVALIDITY and every message's UID (PUT <import_url>/<BAL>/import/"
        "uidvalidity, POST <import_url>/<BAL>/import/messages; HTTP Basic, master_user); "
        "none: copies get new UIDs (APPEND) and LPS download the folders again",
    )
    keep_warm: float = Field(
        default=30.0,
        ge=0,
        le=3_600,
        description="imap_smtp: seconds an IMAP backend session stays open after its client "
        "logged out (or left at rest), for the next login of the same person on the same BAL "
        "with the same rights from the same address (an LPS reconnecting with a fresh token); "
        "0: every session closes with its client. Per process: each worker keeps its own, "
        "and a reconnection lands on any worker (about 1/N of the hits with N workers)",
    )
    keep_warm_max: int = Field(
        default=64,
        ge=0,
        le=10_000,
        description="imap_smtp: at most so many warm sessions kept for this backend, per "
        "process (the oldest closes first); each counts against the backend's per user and "
        "address limits (Dovecot's mail_max_userip_connections) while it waits, every "
        "worker's: up to one per worker for one BAL from one address",
    )
    poll_interval: float = Field(
        default=10.0,
        gt=0,
        le=3_600,
        description="legacy_ws: seconds between syncMessages calls for a BAL in use "
        "(how soon NOOP and IDLE see changes made elsewhere)",
    )

    def where(self) -> str:
        """Where the gateway reaches it, as its banner says."""
        if self.kind == "legacy_ws":
            return f"{self.ws_url}"
        return f"imap {self.imap_host}:{self.imap_port}, smtp {self.smtp_host}:{self.smtp_port}"

    @model_validator(mode="after")
    def _legacy_ws_needs_a_url(self) -> BackendSettings:
        for key in ("provision_url", "import_url"):
            url = getattr(self, key)
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"{key} must be an http(s):// URL")
        if self.kind == "legacy_ws":
            if not self.ws_url or not self.ws_url.startswith(("http://", "https://")):
                raise ValueError("a legacy_ws backend needs ws_url, an http(s):// URL")
            if any(c in self.numhomologation for c in "\r\n\0"):
                raise ValueError("numhomologation must be one line")
        return self

    def password(self) -> str:
        if self.master_password_file is not None:
            return self.master_password_file.read_text(encoding="utf-8").strip()
        return self.master_password.get_secret_value()


class RoutingSettings(_Section):
    """Which backend holds which BAL: an explicit mailbox entry first, then the registry's
    record of the mailbox, then its domain, then `default`."""

    default: str | None = None
    domains: dict[str, str] = Field(default_factory=dict)
    mailboxes: dict[str, str] = Field(default_factory=dict)


class LegacyFrontSettings(_Section):
    """The historic web services served by the gateway (REST + SOAP under
    /mss-msg-services on the HTTP listener), over whatever platform holds the BAL."""

    enabled: bool = True
    max_body: int = Field(
        default=25 * 1024 * 1024, ge=64 * 1024, description="bytes of a request (attachments)"
    )
    session_lifetime: int = Field(default=3_600, ge=60, le=86_400, description="seconds")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="front proxies whose ssl_client_cert / ssl_client_verify headers count "
        "(none by default: a proxy listed here must overwrite both headers on every request, "
        "or a client could name anyone's public card certificate)",
    )
    otp_max_failures: int = Field(default=3, ge=1, le=10)
    otp_lockout: int = Field(default=900, ge=0, description="seconds a blocked channel stays")
    ciba_max_wait: float = Field(
        default=30.0, gt=0, le=120, description="seconds an OTP request waits for the approval"
    )
    https_host: str = "127.0.0.1"
    https_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="a mutual-TLS listener for CPS cards (none: cards only through a proxy)",
    )


class AdminSettings(_Section):
    """Who may read the operator's pages and API under /admin (usage figures)."""

    idnats: list[str] = Field(
        default_factory=list, description="national ids (idNat) of the operator's administrators"
    )
    directory_max_body: int = Field(
        default=16 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="bytes of a directory file posted to /admin/directory (lps-gateway "
        "directory import reads up to 32 MiB)",
    )

    @field_validator("idnats")
    @classmethod
    def _idnats(cls, value: list[str]) -> list[str]:
        return [idnat.strip() for idnat in value if idnat.strip()]


def _retention_days() -> Any:
    return Field(
        default=365,
        ge=0,
        le=36_500,
        description="days a row is kept past its date, then purged; 0 keeps rows forever",
    )


class AuditSettings(_Section):
    """The audit trail (who opened what) and the revoked delegations: personal data, kept
    `retention_days`."""

    retention_days: int = _retention_days()
    purge_interval: float = Field(
        default=3_600.0,
        gt=0,
        le=86_400,
        description="seconds between two purges of the audit and usage rows past their "
        "retention, on every node (harmless when nodes purge at once)",
    )


class UsageSettings(_Section):
    """Who still uses what (`gateway.usage`): how counts reach the database and metrics."""

    flush_interval: float = Field(
        default=5.0, gt=0, le=3_600, description="seconds between writes of merged counts"
    )
    max_pending: int = Field(
        default=10_000,
        ge=10,
        description="rows merged in memory before a write starts at once (twice that: "
        "new rows are dropped until the database takes them)",
    )
    top_software: int = Field(
        default=20, ge=1, le=1_000, description="software label values in metrics; the rest: other"
    )
    nonconformity_software: int = Field(
        default=1_000,
        ge=1,
        le=100_000,
        description="software names a node counts MSSanté non-conformities under per UTC day; "
        "the rest: other",
    )
    retention_days: int = _retention_days()


class MigrationSettings(_Section):
    """Moving BAL between backends (`lps-gateway migrate`): the cut-over's bounds, the
    trailing sync, and the command that tells the operator's MTA where a BAL now lives."""

    hold_max: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="seconds a client's change waits while its BAL is cut over before it "
        "is refused with a retry (NO [UNAVAILABLE], 451)",
    )
    drain_max: float = Field(
        default=5.0, gt=0, le=60, description="seconds a cut-over waits for changes under way"
    )
    trailing_interval: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="seconds between two passes of the trailing sync (old platform to new)",
    )
    mta_hook: list[str] = Field(
        default_factory=list,
        description="command run after a cut-over or rollback so that the MTA delivers to "
        "the BAL's new platform, as argv; {bal}, {source} and {target} are replaced "
        "(empty: none; the demo's mock follows the registry by itself)",
    )
    mta_hook_timeout: float = Field(default=30.0, gt=0, le=600, description="seconds")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LPSGW_", env_nested_delimiter="__", extra="forbid", toml_file=None
    )

    data_dir: Path = Path(".lps-gateway")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default SQLite in the data directory. PostgreSQL: "
        "postgresql://user@host/db (nodes then share revocations through LISTEN/NOTIFY)",
    )
    log: LogSettings = LogSettings()
    server: ServerSettings = ServerSettings()
    http: HttpSettings = HttpSettings()
    ops: OpsSettings = OpsSettings()
    limits: LimitsSettings = LimitsSettings()
    ui: UiSettings = UiSettings()
    psc: PscSettings = PscSettings()
    tls: TlsSettings = TlsSettings()
    cards: CardSettings = CardSettings()
    imap: ImapFrontSettings = ImapFrontSettings()
    smtp: SmtpFrontSettings = SmtpFrontSettings()
    mss: MssSettings = MssSettings()
    backends: dict[str, BackendSettings] = Field(default_factory=dict)
    routing: RoutingSettings = RoutingSettings()
    legacy_front: LegacyFrontSettings = LegacyFrontSettings()
    mock: MockSettings = MockSettings()
    admin: AdminSettings = AdminSettings()
    audit: AuditSettings = AuditSettings()
    usage: UsageSettings = UsageSettings()
    migration: MigrationSettings = MigrationSettings()

    def database(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'gateway.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `config_file` (TOML), the environment, then `overrides` on top."""
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"configuration file not found: {config_file}")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    return _FromFile(**overrides)
