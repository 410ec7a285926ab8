"""The gateway as one object: registry, token validation and listeners (HTTP, the API LPS
IMAP and SMTP fronts); started and stopped by `lps-gateway serve` and `lps-gateway demo`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import socket
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp

from delegation.audit import AuditAction, AuditRecord
from delegation.db import create_engine, migrate
from delegation.events import ChangeBus, bus_for_url
from delegation.service import DelegationService
from gateway import admin_secret
from gateway.api.admin import AdminConfig, DirectoryImports
from gateway.api.app import create_api
from gateway.api.ops import create_ops_app
from gateway.audit import AuditSink
from gateway.backends.base import Backend, MailboxAccess
from gateway.backends.kinds import Backends
from gateway.backends.routing import NoRoute, Placement, Router
from gateway.bal_migration.adopt import adopt_historic_ids
from gateway.bal_migration.carry import carry_historic_ids
from gateway.bal_migration.checkpoint import Checkpoints, Journal
from gateway.bal_migration.gate import BalGate
from gateway.bal_migration.jobs import MigrationRefused, Migrations, Moves
from gateway.card_sessions import CardSessionWatch
from gateway.db import migrate_gateway
from gateway.decisions import DecisionCache
from gateway.fronts.imap.listener import ProxyConfig, ProxyServer
from gateway.fronts.imap.warm import WarmPolicy, WarmSessions
from gateway.fronts.login import FrontAuthenticator
from gateway.fronts.smtp import SubmissionFront
from gateway.health import Readiness
from gateway.legacy_front.front import PREFIX as LEGACY_PREFIX
from gateway.legacy_front.front import LegacyFront, PathDispatch
from gateway.legacy_front.ids import HistoricIds
from gateway.legacy_front.operations import INTERFACE as LEGACY_INTERFACE
from gateway.legacy_front.operations import GatewayHistoricOperations, HistoricPassThrough
from gateway.legacy_front.usage import LegacyUsage
from gateway.metrics import Metrics
from gateway.mss.historic_ws import (
    MAX_IDNAT,
    AuthRefused,
    Caller,
    HistoricError,
    HistoricOperations,
)
from gateway.mss.policy import MessagePolicy
from gateway.psc_sessions import PscSessionWatch
from gateway.retention import Purger
from gateway.retention import rules as retention_rules
from gateway.runtime.asgi_server import AsgiServer, bind_tcp
from gateway.runtime.forwarded import ForwardedFor
from gateway.runtime.lifecycle import cancelled
from gateway.runtime.limits import Exemptions, LoginThrottle, Networks, NodeLimits, SlotCounter
from gateway.runtime.logs import log_audit_event
from gateway.runtime.smtp_server import SmtpServer
from gateway.runtime.tls import (
    bound_tls_buffers,
    ensure_dev_certificate,
    request_client_certificates,
    server_context,
)
from gateway.settings import Settings
from gateway.usage import UsageRecorder
from gateway.usage.report import UsageReport, usage_report
from gateway.web.routes import WebConfig
from psc_auth import TokenValidator
from psc_auth.certificates import CardVerifier

log = logging.getLogger(__name__)

FRONT_GRACE = 5.0  # seconds a front's sessions get to end when stopped without a drain
CUT_AFTER_DRAIN = 1.0  # after one: sessions cut are given this to write their audit


class ConfigurationError(Exception):
    """The settings cannot run a gateway safely; the message says which key to change."""


def check_settings(settings: Settings) -> None:
    """What `start` refuses at once (a node's supervisor asks before it starts workers)."""
    psc = settings.psc
    if not psc.client_ids and not psc.accept_any_audience:
        raise ConfigurationError(
            "psc.client_ids is empty: list the client ids of the LPS whose tokens this "
            "gateway accepts (aud/azp), or set psc.accept_any_audience = true (a mock only)"
        )
    if psc.jwks_max_age_problem:
        raise ConfigurationError(f"psc.jwks_max_age_seconds {psc.jwks_max_age_problem}")


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This gateway is worker `index` of a node's `count` (`gateway.workers`): the
    supervisor migrated the database and bound the listening sockets. Every worker serves
    IMAP and SMTP; worker 0 alone serves HTTP (the pages' and the historic web services'
    sessions, the migration jobs and CIBA requests under way live in its memory), purges
    and resumes the trailing syncs."""

    index: int
    count: int

    @property
    def leader(self) -> bool:
        return self.index == 0


def node_limits(settings: Settings) -> NodeLimits:
    """The caps of this node, shared by its listeners (see `gateway.runtime.limits`)."""
    exempt = Exemptions(settings.limits.exempt_networks)
    return NodeLimits(
        exempt=exempt,
        imap_preauth=SlotCounter(settings.imap.max_preauth_per_address),
        smtp_preauth=SlotCounter(settings.smtp.max_preauth_per_address),
        sessions_per_person=SlotCounter(settings.imap.max_sessions_per_person),
        smtp_sessions_per_person=SlotCounter(settings.smtp.max_sessions_per_person),
        logins=LoginThrottle(
            settings.limits.max_failed_logins, settings.limits.failed_login_window
        ),
    )


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        validator: TokenValidator | None = None,
        sockets: Mapping[str, socket.socket] | None = None,
        bus: ChangeBus | None = None,
        worker: WorkerRole | None = None,
        gate: BalGate | None = None,
    ) -> None:
        """`sockets`: listening sockets bound already, by the setting naming their port
        (`imap.port`); `bus`: the registry's change bus (default: the database's); `gate`:
        the holds of cut-overs (default: this process's alone)."""
        self.settings = settings
        self._sockets = dict(sockets or {})
        self._bus = bus
        self.worker = worker
        self._validator = validator
        self.validator: TokenValidator | None = None
        self.delegations: DelegationService | None = None
        self._engine: AsyncEngine | None = None
        self._http: AsgiServer | None = None
        self._ops: AsgiServer | None = None
        self._expiry: asyncio.Task[None] | None = None
        self.purger: Purger | None = None
        self.readiness: Readiness | None = None
        self.metrics = Metrics(settings.usage.top_software)
        self.usage = UsageRecorder(None, counter=self.metrics)
        self.router: Router | None = None
        self.imap: ProxyServer | None = None
        self.imaps: ProxyServer | None = None
        self.cards: CardVerifier | None = None  # CPS cards, when `[cards]` names a CA
        self.legacy: LegacyFront | None = None
        self.legacy_operations: HistoricOperations | None = None
        self._legacy_operations: GatewayHistoricOperations | None = None
        self._legacy_tls: AsgiServer | None = None
        self.smtp: SmtpServer | None = None
        self.audit: AuditSink | None = None
        self.decisions: DecisionCache | None = None
        self.backends: Backends | None = None
        self.limits = node_limits(settings)
        self._web_validator: TokenValidator | None = None
        self.psc_sessions: PscSessionWatch | None = None
        self.card_sessions: CardSessionWatch | None = None
        self._admin_url: str | None = None
        self._drained = False  # `drain` is over: `stop` cuts what is left at once
        self.migrations: Migrations | None = None
        migration = settings.migration
        # the node's holds and sessions by BAL, for cut-overs (every front asks it)
        self.gate = gate or BalGate(max_wait=migration.hold_max, drain_wait=migration.drain_max)

    async def open_registry(self) -> DelegationService:
        """Migrate and open the delegation registry (before `start`, to seed it)."""
        if self.delegations is None:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            url = self.settings.database()
            if self.worker is None:  # a node's supervisor migrated it before its workers
                await migrate(url)
                await migrate_gateway(url)
            self._engine = create_engine(url)
            bus = self._bus or bus_for_url(url)
            await bus.start()
            self.delegations = DelegationService(self._engine, bus=bus)
            if self.settings.log.audit_to_log:
                self.delegations.audit_listener = log_audit_event
        return self.delegations

    @property
    def engine(self) -> AsyncEngine | None:
        """The registry's database, where the gateway keeps its own tables too."""
        return self._engine

    @property
    def http_url(self) -> str:
        assert self._http is not None, "not started"
        http = self.settings.http
        return http.public_url or f"http://{http.host}:{self._http.port}"

    @property
    def http_port(self) -> int:
        """The port the HTTP listener is bound to (`http_url` may be a proxy's)."""
        assert self._http is not None, "not started"
        return self._http.port

    @property
    def ops_port(self) -> int | None:
        """The operations listener's port (/metrics, detailed /readyz), when `[ops] port`
        is set."""
        return self._ops.port if self._ops is not None else None

    @property
    def ops_url(self) -> str | None:
        if self.ops_port is None:
            return None
        host = self.settings.ops.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.ops_port}"

    def _listen(self, host: str, port: int, setting: str) -> socket.socket:
        """The socket the supervisor bound for `setting`, or one bound now."""
        sock = self._sockets.pop(setting, None)
        return sock if sock is not None else bind_tcp(host, port, setting)

    async def start(self) -> None:
        check_settings(self.settings)
        bound_tls_buffers()
        service = await self.open_registry()
        # what backends keep of their own (the historic platform's UIDs) lives beside the
        # registry; built now, once the settings name every backend
        self.backends = Backends(self.settings.backends, self._engine)
        await self._start_usage()
        cards = self.settings.cards
        if cards.ca_file is not None:
            self.cards = CardVerifier.from_files(cards.ca_file, cards.crl_file)
        self.validator = self._validator or TokenValidator(self.settings.psc)
        leader = self.worker is None or self.worker.leader
        if leader:
            await self._start_http(service)
        await self._start_fronts(service, self.validator)
        if self.migrations is not None:
            await self.migrations.resume()  # trailing syncs of unfinished cut-overs
        self._expiry = asyncio.create_task(service.expire_forever(interval=1.0))
        if leader and not await service.any_mailbox():
            log.warning(
                "registry.empty",
                extra={"hint": "no mailboxes: run lps-gateway directory import FILE"},
            )
        assert self._engine is not None
        if leader:  # one purge a node is enough
            self.purger = Purger(
                self._engine, retention_rules(self.settings), self.settings.audit.purge_interval
            )
            self.purger.start()
        if self._http is not None:
            self._admin_url = admin_secret.loopback_url(self.settings.http.host, self.http_port)
            admin_secret.publish_url(self.settings.data_dir, self._admin_url)
        log.info(
            "gateway.started",
            extra={
                "http": self.http_url if self._http is not None else None,
                "ops": self.ops_url,
                "imap": self.imap.port if self.imap else None,
                "smtp": self.smtp.port if self.smtp else None,
            },
        )

    async def _start_http(self, service: DelegationService) -> None:
        """The HTTP listeners (API, pages, historic web services, operations) and what
        only they use: the readiness checks, the migration jobs, the legacy front."""
        assert self.validator is not None
        http, ops = self.settings.http, self.settings.ops
        sock = self._listen(http.host, http.port, "http.port")
        try:
            ops_sock = (
                self._listen(ops.host, ops.port, "ops.port") if ops.port is not None else None
            )
        except OSError:
            sock.close()
            raise
        port = sock.getsockname()[1]
        ui = self.settings.ui
        if not ui.client_secret:
            log.warning(
                "ui.client_secret_missing",
                extra={
                    "effect": "the /ui pages cannot log anyone in: set ui.client_secret "
                    "(LPSGW_UI__CLIENT_SECRET), the secret of ui.client_id at Pro Santé Connect"
                },
            )
        web = WebConfig(
            ui.client_id, ui.client_secret, http.public_url or f"http://{http.host}:{port}"
        )
        assert self.backends is not None
        readiness = self.readiness = Readiness(
            self.settings, service, backends=self.backends.by_name
        )
        # The pages log people in as the gateway's own client: their tokens are for it.
        self._web_validator = TokenValidator(
            dataclasses.replace(self.settings.psc, client_ids=[ui.client_id])
        )
        api = create_api(
            service,
            self.validator,
            web,
            web_validator=self._web_validator,
            metrics=self.metrics if ops_sock is None else None,
            readiness=readiness,
            max_body=http.max_body,
            admin_config=AdminConfig.of(
                self.settings.admin.idnats,
                self.usage_report,
                local_secret=admin_secret.ensure_admin_secret(self.settings.data_dir),
                status=self.admin_status,
                migrations=self._open_migrations(service),
                directory=DirectoryImports(
                    frozenset(self.backends.by_name), self.settings.admin.directory_max_body
                ),
            ),
        )
        guarded = functools.partial(
            AsgiServer, request_timeout=http.request_timeout, max_connections=http.max_connections
        )
        app: ASGIApp = api
        if self.settings.legacy_front.enabled:
            self.legacy = LegacyFront(
                self.settings,
                validator=self.validator,
                ciba_validator=self._web_validator,  # CIBA tokens are for the gateway's client
                placement=Placement(self.backends.by_name, self.settings.routing),
                own_bals=self._own_bals,
                cards=self.cards,
                limits=self.limits,
            )
            legacy_app = self.legacy.app(_LateOperations(self))
            app = PathDispatch(api, {LEGACY_PREFIX: legacy_app})
            await self._start_legacy_tls(legacy_app, guarded)
        if http.forwarded_allow_ips:
            app = ForwardedFor(app, http.forwarded_allow_ips)
        self._http = guarded(app, sock)
        if ops_sock is not None:
            ops_app = create_ops_app(readiness.check, self.metrics, max_body=http.max_body)
            self._ops = guarded(ops_app, ops_sock)
        await self._http.start()
        if self._ops is not None:
            await self._ops.start()

    async def _start_fronts(self, service: DelegationService, validator: TokenValidator) -> None:
        settings = self.settings
        assert self.backends is not None
        self.router = Router(self.backends.by_name, settings.routing)
        cert, key = settings.tls.cert, settings.tls.key
        if cert is None or key is None:
            cert, key = ensure_dev_certificate(settings.data_dir)
        tls = server_context(
            cert, key, min_version=settings.tls.min_version, ciphers=settings.tls.ciphers
        )
        if self.cards is not None:  # CPS cards: ask for a client certificate
            request_client_certificates(tls, self.cards.ca_pem())
        config = ProxyConfig.from_settings(settings.imap).serving_stores(
            self.backends.version, self.backends.wait
        )
        self.audit = AuditSink(service)
        self.audit.start()
        self.decisions = DecisionCache(service)
        self.decisions.start()
        if self.legacy is not None:
            assert self._engine is not None
            self._legacy_operations = GatewayHistoricOperations(
                service,
                self.router,
                HistoricIds(self._engine),
                backends=settings.backends,
                decisions=self.decisions,
                audit=self.audit,
                on_access=LegacyUsage(self.usage),
                max_message_size=settings.smtp.max_message_size,
                mss=MessagePolicy(settings.mss.policy, self.usage),
                gate=self.gate,
            )
            self.legacy_operations = self._legacy_operations
            self.legacy.auth.on_refused = self._legacy_refused
        psc = settings.psc
        self.psc_sessions = PscSessionWatch(
            validator,
            interval=psc.revalidate_interval,
            max_after_expiry=psc.session_max_after_token_expiry,
            revalidate=bool(psc.introspection_client_id),
        )
        self.psc_sessions.start()
        if self.cards is not None:
            self.card_sessions = CardSessionWatch(
                self.cards, interval=settings.cards.revalidate_interval
            )
            self.card_sessions.start()
        imap_auth = self._front(validator, service, "imap")
        front = settings.imap

        warm = WarmSessions(
            {
                name: WarmPolicy(backend.keep_warm, backend.keep_warm_max)
                for name, backend in settings.backends.items()
                if backend.kind == "imap_smtp"
            },
            self.metrics,
        )

        async def listener(proxy: ProxyConfig, port: int, setting: str) -> ProxyServer:
            server = ProxyServer(
                proxy,
                imap_auth,
                service,
                self.metrics,
                tls,
                self._listen(front.host, port, setting),
                limits=self.limits,
                psc=self.psc_sessions,
                card_watch=self.card_sessions,
                usage=self.usage,
                warm=warm,
            )
            await server.start()
            return server

        self.imap = await listener(config, front.port, "imap.port")
        if front.implicit_tls_port is not None:
            implicit = config.with_implicit_tls()
            self.imaps = await listener(implicit, front.implicit_tls_port, "imap.implicit_tls_port")
        smtp_auth = self._front(validator, service, "smtp")
        smtp = settings.smtp
        refused = self.metrics.refused_connections
        self.smtp = SmtpServer(
            SubmissionFront(
                smtp_auth,
                smtp,
                self.metrics,
                psc=self.psc_sessions,
                card_watch=self.card_sessions,
                sessions=self.limits.smtp_sessions_per_person,
                usage=self.usage,
                policy=settings.mss.policy,
            ),
            self._listen(smtp.host, smtp.port, "smtp.port"),
            tls,
            hostname=smtp.name(),
            data_size_limit=smtp.max_message_size,
            ident="lps-gateway MSSante submission",
            dsn=True,  # carried to backends that offer it, "relayed" notices for the rest
            timeout=smtp.timeout,
            max_connections=smtp.max_connections,
            preauth_slots=self.limits.smtp_preauth,
            exempt=self.limits.exempt,
            preauth_timeout=smtp.preauth_timeout,
            write_timeout=smtp.write_timeout,
            on_refused=lambda reason: refused.labels("smtp", reason).inc(),
            proxy_protocol_from=Networks(smtp.proxy_protocol_from),
            proxy_protocol_timeout=smtp.proxy_protocol_timeout,
        )
        await self.smtp.start()

    async def _legacy_refused(
        self, idnat: str, means: str, refused: AuthRefused, software: str | None
    ) -> None:
        """A refused login on the historic web services, audited like an IMAP one."""
        if self.audit is None or len(idnat) > MAX_IDNAT:
            return
        await self.audit.submit(
            AuditRecord(
                idnat,
                "",
                AuditAction.LOGIN,
                LEGACY_INTERFACE,
                result=f"refused:{refused.code}",
                software=software,
                detail=f"{means}: {refused.reason}"[:200],
            )
        )

    async def _own_bals(self, idnat: str) -> list[tuple[str, str]]:
        """The BAL this person holds, with the backend the registry records for each."""
        assert self.delegations is not None
        entry = await self.delegations.directory_entry(idnat)
        found = []
        for address in entry.addresses if entry is not None else ():
            mailbox = await self.delegations.mailbox(address)
            found.append((address, mailbox.backend if mailbox is not None else ""))
        return found

    async def _start_legacy_tls(self, app: ASGIApp, guarded: Any) -> None:
        """The legacy front's mutual-TLS listener, when `[legacy_front] https_port` is set:
        historic clients present their CPS card to the gateway itself."""
        front = self.settings.legacy_front
        if front.https_port is None:
            return
        if self.cards is None:
            raise ConfigurationError("legacy_front.https_port needs [cards] ca_file")
        cert, key = self.settings.tls.cert, self.settings.tls.key
        if cert is None or key is None:
            cert, key = ensure_dev_certificate(self.settings.data_dir)
        tls = self.settings.tls
        context = server_context(cert, key, min_version=tls.min_version, ciphers=tls.ciphers)
        request_client_certificates(context, self.cards.ca_pem())
        sock = self._listen(front.https_host, front.https_port, "legacy_front.https_port")
        self._legacy_tls = guarded(app, sock, ssl_context=context)
        await self._legacy_tls.start()

    @property
    def legacy_https_port(self) -> int | None:
        return self._legacy_tls.port if self._legacy_tls is not None else None

    async def _start_usage(self) -> None:
        """The usage recorder on the registry's database; the metrics' software labels
        seeded with the most used names, so they keep their series across restarts."""
        usage = self.settings.usage
        self.usage = UsageRecorder(
            self._engine,
            flush_interval=usage.flush_interval,
            max_pending=usage.max_pending,
            counter=self.metrics,
            rule_software=usage.nonconformity_software,
        )
        assert self._engine is not None
        try:
            top = await usage_report(self._engine)
        except Exception:  # the figures are a convenience: never a reason not to start
            log.warning("usage.seed_failed", exc_info=True)
        else:
            ranked = sorted(top.software, key=lambda row: -(row.sessions + row.messages))
            self.metrics.software.seed(row.software for row in ranked)
        self.usage.start()

    async def usage_report(self, since: dt.date | None = None) -> UsageReport:
        """The usage figures since `since`, the BAL placed as this gateway routes them."""
        assert self._engine is not None, "not started"
        assert self.router is not None, "not started"
        await self.usage.flush()
        historic = [n for n, b in self.settings.backends.items() if b.kind == "legacy_ws"]
        return await usage_report(
            self._engine, since, placement=self.router.placement, historic=historic
        )

    def _front(
        self, validator: TokenValidator, service: DelegationService, interface: str
    ) -> FrontAuthenticator:
        assert self.router is not None
        assert self.decisions is not None
        assert self.audit is not None
        return FrontAuthenticator(
            validator,
            service,
            self.router,
            interface=interface,
            decisions=self.decisions,
            audit=self.audit,
            throttle=self.limits.logins,
            exempt=self.limits.exempt,
            cards=self.cards,
            gate=self.gate,
        )

    def _open_migrations(self, service: DelegationService) -> Migrations:
        """The migration jobs `/admin/migrations` starts: each BAL from the backend the
        router sends it to now (the registry's record) to the one named."""
        assert self._engine is not None

        async def locate(bal: str) -> str | None:
            mailbox = await service.mailbox(bal)
            if mailbox is None or self.router is None:
                return None
            try:
                return self.router.route(bal, mailbox.backend).name
            except NoRoute as exc:
                raise MigrationRefused(str(exc)) from None

        async def audit(actor: str, bal: str, result: str, detail: str) -> None:
            await service.record(
                actor, bal, AuditAction.ADMIN, interface="http", result=result, detail=detail
            )

        def backends() -> dict[str, Backend]:
            return dict(self.backends.by_name) if self.backends is not None else {}

        async def move(bal: str, backend: str) -> None:
            await service.move_mailbox(bal, backend)
            if self.decisions is not None:  # this node at once; the others by the event
                self.decisions.forget_mailbox(bal)

        async def placements() -> list[tuple[str, str]]:
            if self.router is None:
                return []
            placement = self.router.placement
            return [
                (bal, name)
                for bal, registered in await service.placements()
                if (name := placement.backend_of(bal, registered)) is not None
            ]

        engine = self._engine

        async def carry(
            bal: str, journal: Journal, source: MailboxAccess, target: MailboxAccess
        ) -> dict[str, int]:
            """The historic ids the legacy front serves follow the BAL to its copies (a
            rollback's journal, mirrored from the way there, knows every pair too); a BAL
            leaving the historic platform keeps that platform's own ids, and one going
            back to it finds them there."""
            record = await journal.record()
            by_name = self.backends.by_name if self.backends is not None else {}
            if isinstance(by_name.get(record.target), HistoricPassThrough):
                return {"kept": 0, "new": 0}
            leaving = by_name.get(record.source)
            if isinstance(leaving, HistoricPassThrough):
                client = leaving.historic_client()
                adopted = await adopt_historic_ids(engine, bal, journal, source, target, client)
                return adopted.json()
            return {"kept": await carry_historic_ids(engine, bal, journal, target), "new": 0}

        def pinned(bal: str) -> str | None:
            return self.router.placement.pinned(bal) if self.router is not None else None

        self.migrations = Migrations(
            Checkpoints(self._engine),
            locate=locate,
            backends=backends,
            settings=self.settings.backends,
            audit=audit,
            moves=Moves(
                self.gate,
                move,
                pinned,
                self.settings.migration,
                carry=carry,
                placements=placements,
            ),
        )
        return self.migrations

    def admin_status(self) -> dict[str, Any]:
        """`GET /admin/status`: what an administrator's command needs to know first."""
        try:
            version = package_version("lps-gateway")
        except PackageNotFoundError:  # pragma: no cover (run from a source tree)
            version = "unknown"
        return {
            "node": socket.gethostname(),
            "version": version,
            "http": self.http_url,
            "backends": [
                {"name": name, "kind": backend.kind}
                for name, backend in self.settings.backends.items()
            ],
            "routing": {"default": self.settings.routing.default},
        }

    async def drain(self) -> None:
        """SIGTERM: close the IMAP and SMTP listeners first (a balancer sends new clients to
        another node; /readyz says 503 meanwhile), end each IMAP session with `* BYE
        [UNAVAILABLE]` once its command in flight has its reply, let SMTP messages in
        flight be answered (then 421 4.3.2), for at most `ops.shutdown_grace` seconds."""
        if self.readiness is not None:
            self.readiness.draining = True
        imap = [front for front in (self.imap, self.imaps) if front is not None]
        for front in (*imap, self.smtp):
            if front is not None:
                front.stop_accepting()
        grace = self.settings.ops.shutdown_grace
        log.info("gateway.draining", extra={"grace": grace})
        smtp = [self.smtp.stop(grace)] if self.smtp is not None else []
        await asyncio.gather(*(front.drain(grace) for front in imap), *smtp)
        self._drained = True
        log.info("gateway.drained")

    async def stop(self) -> None:
        try:
            await self._stop_serving()
        finally:
            await self._stop_recording()
        for listener in (self._http, self._ops, self._legacy_tls):
            if listener is not None:
                await listener.stop()
        if self.backends is not None:
            await self.backends.aclose()
        if self.delegations is not None:
            await self.delegations.bus.close()
        if self.validator is not None and self._validator is None:
            await self.validator.aclose()
        if self._web_validator is not None:
            await self._web_validator.aclose()
        if self._legacy_operations is not None:
            await self._legacy_operations.aclose()
        if self.legacy is not None:
            await self.legacy.aclose()
        if self._engine is not None:
            await self._engine.dispose()

    async def _stop_serving(self) -> None:
        if self._admin_url is not None:
            admin_secret.withdraw_url(self.settings.data_dir, self._admin_url)
        await cancelled(self._expiry)
        if self.purger is not None:
            await self.purger.stop()
        if self.migrations is not None:
            await self.migrations.aclose()
        # After a drain the grace is spent: what is left is cut, all fronts at once, so
        # that `shutdown_grace` bounds the whole stop (an orchestrator kills after its own
        # timeout, and the audit must be written first).
        grace = CUT_AFTER_DRAIN if self._drained else FRONT_GRACE
        fronts = [front for front in (self.imap, self.imaps, self.smtp) if front is not None]
        stopping = (front.stop(grace) for front in fronts)
        ended = await asyncio.gather(*stopping, return_exceptions=True)
        for error in ended:
            if isinstance(error, Exception):
                log.error("gateway.front_stop_failed", exc_info=error)

    async def _stop_recording(self) -> None:
        """Write what the sessions left (usage, audit), even when stopping them failed."""
        with contextlib.suppress(Exception):  # logged by flush; the rest must still stop
            await self.usage.stop()
        if self.psc_sessions is not None:
            await self.psc_sessions.stop()
        if self.card_sessions is not None:
            await self.card_sessions.stop()
        if self.decisions is not None:
            await self.decisions.stop()
        if self.audit is not None:
            await self.audit.stop()


class _LateOperations:
    """The legacy front's operations, found on the gateway at call time: the HTTP listener
    starts before the fronts that build them (routing, audit, decisions)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def call(
        self, service: str, operation: str, caller: Caller, payload: dict[str, Any]
    ) -> dict[str, Any]:
        operations = self.gateway.legacy_operations
        if operations is None:
            raise HistoricError(1, "service en cours de démarrage", "TECHNIQUE")
        return await operations.call(service, operation, caller, payload)
