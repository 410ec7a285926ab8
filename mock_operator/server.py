"""The mock operator as one object: bind, start, stop. Used by its CLI, the demo and tests."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import secrets
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from delegation.db import create_engine, migrate
from delegation.seed import seed as seed_registry
from delegation.service import DelegationService
from gateway.api.docs import documented_app
from gateway.imap.engine import EngineConfig
from gateway.imap.structure_cache import StructureCache
from gateway.imap.transport import ImapServer, ServerConfig
from gateway.mss.historic_http import build_historic_router
from gateway.runtime.asgi_server import AsgiServer, bind_tcp
from gateway.runtime.files import write_private
from gateway.runtime.logs import RequestIdMiddleware
from gateway.runtime.smtp_server import SmtpServer
from gateway.runtime.tls import (
    ensure_dev_certificate,
    request_client_certificates,
    server_context,
)
from gateway.settings import MockSettings
from mock_operator.conformance.observatory import Observatory
from mock_operator.conformance.routes import build_conformance_router
from mock_operator.conformance.runner import Runner
from mock_operator.conformance.scenario_certs import SCENARIOS, ensure_scenario_certificates
from mock_operator.conformance.store import CampaignStore
from mock_operator.conformance.taps import (
    ObservedAuthenticator,
    ObservedImapServer,
    ObservedSubmission,
    SniLog,
)
from mock_operator.conformance.tls_scenarios import (
    ScenarioEndpoint,
    ScenarioImapServer,
    ScenarioPorts,
    ScenarioSmtpServer,
    ScenarioSubmission,
    scenarios,
)
from mock_operator.historic.auth import CpsAuthority, HistoricAuth
from mock_operator.historic.imap import HistoricImap
from mock_operator.historic.imap_auth import HistoricImapAuthenticator
from mock_operator.historic.operations import HistoricService, recipient
from mock_operator.historic.seed import seed_historic
from mock_operator.historic.store import HistoricStore
from mock_operator.modern.auth import MasterCredentials, PlatformAuthenticator
from mock_operator.modern.operator_api import build_operator_router
from mock_operator.modern.smtp import PlatformSubmission
from mock_operator.modern.store import SqlPlatform
from mock_operator.personas import PersonaBook, default_personas
from mock_operator.psc.provider import MockPsc
from mock_operator.psc.routes import build_router
from mock_operator.seed import seed_messages
from mock_operator.web import templates
from psc_auth import Identity, TokenValidator, ValidatorConfig

log = logging.getLogger(__name__)


def sqlite_engine(path: Path) -> AsyncEngine:
    """An aiosqlite engine in WAL mode with foreign keys on; synchronous=NORMAL, as WAL
    allows: a crash may lose the last commits, never corrupt (a mock's data)."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def create_app(
    psc: MockPsc,
    historic: APIRouter | None = None,
    operator: APIRouter | None = None,
    conformance: APIRouter | None = None,
) -> FastAPI:
    app = documented_app(
        title="mock-operator",
        summary="A faithful MSSanté test operator: mock Pro Santé Connect and platforms",
    )
    app.state.psc = psc
    app.add_middleware(RequestIdMiddleware)
    app.include_router(build_router(psc.settings.realm))
    if historic is not None:
        app.include_router(historic)
    if operator is not None:
        app.include_router(operator)
    if conformance is not None:
        app.include_router(conformance)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            "home.html",
            {"psc": psc, "personas": psc.personas.all()},
        )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _certificate_names(settings: MockSettings) -> tuple[str, ...]:
    """The development certificate's DNS names: localhost, and the host of `public_url`
    when it is a name (`mock-operator` in docker/compose.yaml, where the gateway nodes
    reach the mock by its service name and verify its certificate)."""
    host = urlsplit(settings.public_url).hostname if settings.public_url else None
    if host is None or host == "localhost":
        return ("localhost",)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return ("localhost", host)
    return ("localhost",)


class MockOperator:
    """Everything the mock serves: mock Pro Santé Connect (HTTP), the modern platform
    (IMAP and SMTP submission over a SQLite store), the historic platform (web services
    over HTTP and its own IMAP, over another store), seeded with the personas."""

    def __init__(
        self,
        settings: MockSettings,
        data_dir: Path,
        *,
        personas: PersonaBook | None = None,
        registry: DelegationService | None = None,
    ) -> None:
        """`registry`: a delegation registry to honour instead of the mock's own (the demo
        shares the gateway's, so that a delegation granted on its page opens IMAP here)."""
        self.settings = settings
        self._shared_registry = registry
        self.data_dir = data_dir
        self.personas = personas or default_personas()
        self._http: AsgiServer | None = None
        self._engine: AsyncEngine | None = None
        self.psc: MockPsc | None = None
        self.platform: SqlPlatform | None = None
        self.imap: ImapServer | None = None
        self.smtp: SmtpServer | None = None
        self.submission: PlatformSubmission | None = None
        self.historic_imap: ImapServer | None = None
        self.validator: TokenValidator | None = None
        self.master: MasterCredentials | None = None
        self.tls_cert: Path | None = None
        self.delegations: DelegationService | None = None
        self._registry_engine: AsyncEngine | None = None
        self._historic_engine: AsyncEngine | None = None
        self.historic: HistoricService | None = None
        self.historic_auth: HistoricAuth | None = None
        self.observatory: Observatory | None = None
        self.runner: Runner | None = None
        self.scenarios: ScenarioPorts | None = None  # TLS scenario ports (cert-* checks)
        self._scenario_socks: list[socket.socket] = []

    @property
    def http_url(self) -> str:
        assert self._http is not None, "not started"
        return self.settings.base_url(self._http.port)

    @property
    def issuer(self) -> str:
        assert self.psc is not None, "not started"
        return self.psc.issuer

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings = self.settings
        sock = bind_tcp(settings.host, settings.http_port, "mock.http_port")
        imap_sock = bind_tcp(settings.host, settings.imap_port, "mock.imap_port")
        smtp_sock = bind_tcp(settings.host, settings.smtp_port, "mock.smtp_port")
        historic_imap_sock = bind_tcp(
            settings.host, settings.historic_imap_port, "mock.historic_imap_port"
        )
        self._scenario_socks = [  # IMAP, SMTP of each scenario: a port taken fails here
            bind_tcp(settings.host, settings.scenario_port(i), "mock.scenario_port_base")
            for i in range(2 * len(SCENARIOS) if settings.scenario_ports else 0)
        ]
        port = sock.getsockname()[1]
        self._engine = sqlite_engine(self.data_dir / "mock.db")
        self.psc = MockPsc(
            self.settings,
            data_dir=self.data_dir,
            issuer=self.settings.issuer(port),
            personas=self.personas,
            engine=self._engine,
        )
        await self.psc.start()
        self.observatory = Observatory(CampaignStore(self._engine), self.personas)
        await self.observatory.start()
        self.psc.observer = self.observatory
        self.master = MasterCredentials(
            settings.master_user, _secret(self.data_dir / "master.secret")
        )
        historic = await self._start_historic()
        operator = build_operator_router(self.master, lambda: self.platform, self._holder)
        conformance = build_conformance_router(
            lambda: self.observatory,
            lambda: self.runner,
            lambda: self.psc,
            lambda: self.scenarios.describe() if self.scenarios else None,
        )
        self._http = AsgiServer(create_app(self.psc, historic, operator, conformance), sock)
        await self._http.start()
        if settings.tls_cert and settings.tls_key:
            cert, key = settings.tls_cert, settings.tls_key
        else:
            cert, key = ensure_dev_certificate(self.data_dir / "tls", _certificate_names(settings))
        self.tls_cert = cert
        await self._start_platform(imap_sock, smtp_sock, server_context(cert, key))
        await self._start_historic_imap(historic_imap_sock, self._card_context(cert, key))
        log.info(
            "mock.started",
            extra={
                "url": self.http_url,
                "imap": self.imap_port,
                "smtp": self.smtp_port,
                "historic_imap": self.historic_imap_port,
            },
        )

    async def _start_platform(
        self, imap_sock: socket.socket, smtp_sock: socket.socket, tls: ssl.SSLContext
    ) -> None:
        settings = self.settings
        assert self._engine is not None
        self.platform = SqlPlatform(self._engine)
        await self.platform.create_schema()
        await self._seed(self.platform)
        self.validator = TokenValidator(
            ValidatorConfig(issuer=self.issuer, cache_max_ttl_seconds=60)
        )
        self.delegations = self._shared_registry or await self._delegation_registry()
        platform, validator = self.platform, self.validator

        def authenticator(interface: str) -> PlatformAuthenticator:
            return PlatformAuthenticator(
                platform,
                validator,
                discovery_url=f"{self.issuer}/.well-known/openid-configuration",
                master=self.master,
                resolver=self._resolve,
                interface=interface,
            )

        hub = self.platform.hub
        engine = EngineConfig(
            server_name="mock-operator",
            greeting="MSSanté mock operator IMAP ready",
            auth_failure_delay=settings.auth_failure_delay,
            hub_version=hub.version,
            hub_wait=hub.wait,
            structures=StructureCache(),
        )
        observatory = self.observatory
        assert observatory is not None
        sni = SniLog(tls)  # the runner checks that clients name the server (RFC 6066)
        self.runner = Runner(observatory, self.platform, self.personas)
        self.imap = ObservedImapServer(
            ServerConfig(engine=engine),
            ObservedAuthenticator(authenticator("imap"), observatory),
            tls,
            imap_sock,
            observatory=observatory,
            sni=sni,
        )
        await self.imap.start()
        handler = ObservedSubmission(
            self.platform,
            authenticator("smtp"),
            settings.auth_failure_delay,
            other=_HistoricMailboxes(self.historic.store) if self.historic else None,
            placed=self._placed,
            observatory=observatory,
            sni=sni,
            dsn_delay=settings.dsn_delay,
        )
        self.submission = handler
        self.smtp = SmtpServer(handler, smtp_sock, tls, dsn=settings.smtp_dsn)
        await self.smtp.start()
        if self._scenario_socks:
            self.scenarios = await self._start_scenarios(engine, authenticator)

    async def _start_scenarios(
        self, engine: EngineConfig, authenticator: Callable[[str], PlatformAuthenticator]
    ) -> ScenarioPorts:
        """The modern platform again, behind certificates an LPS must refuse
        (`conformance.tls_scenarios`): for each scenario an IMAP and an SMTP port."""
        assert self.observatory is not None
        assert self.platform is not None
        dev = None if self.settings.tls_cert else self.tls_cert
        files = ensure_scenario_certificates(self.data_dir / "tls" / "scenarios", dev)
        endpoints = []
        socks = iter(self._scenario_socks)
        for scenario in scenarios(files):
            imap_sock, smtp_sock = next(socks), next(socks)
            imap = ScenarioImapServer(
                ServerConfig(engine=engine),
                ObservedAuthenticator(authenticator("imap"), self.observatory),
                scenario.context,
                imap_sock,
                observatory=self.observatory,
                scenario=scenario,
            )
            handler = ScenarioSubmission(
                self.platform,
                authenticator("smtp"),
                self.settings.auth_failure_delay,
                other=_HistoricMailboxes(self.historic.store) if self.historic else None,
                placed=self._placed,
                observatory=self.observatory,
                scenario=scenario,
            )
            smtp = ScenarioSmtpServer(handler, smtp_sock, scenario.context)
            await imap.start()
            await smtp.start()
            endpoints.append(ScenarioEndpoint(scenario.name, imap, smtp))
        return ScenarioPorts(files, endpoints)

    async def _start_historic(self) -> APIRouter:
        """The historic platform: its own store, the web services, and their callers."""
        self._historic_engine = sqlite_engine(self.data_dir / "historic.db")
        store = HistoricStore(self._historic_engine)
        await store.create_schema()
        self.historic = HistoricService(
            store,
            resolver=self._historic_rights,
            mailboxes_of=self._historic_mailboxes_of,
            directory=self._historic_directory,
            deliver_elsewhere=self._deliver_to_modern,
            placed=self._placed,
        )
        await seed_historic(self.historic, self.personas.all())
        self.historic_auth = HistoricAuth(
            self.personas,
            master=self.master,
            authority=CpsAuthority.load_or_create(self.data_dir / "cps"),
        )
        return build_historic_router(
            self.historic, self.historic_auth, public_url=self.settings.public_url
        )

    def _card_context(self, cert: Path, key: Path) -> ssl.SSLContext:
        """The historic IMAP's TLS: the same certificate, and a client certificate asked
        for (not required: the master login needs none) and verified against the mock's
        CPS card CA only."""
        context = server_context(cert, key)
        assert self.historic_auth is not None
        authority = self.historic_auth.authority
        if authority is not None:
            request_client_certificates(context, authority.verifier.ca_pem())
        return context

    async def _start_historic_imap(self, sock: socket.socket, tls: ssl.SSLContext) -> None:
        """The historic platform's own IMAP over its store: master login and CPS cards."""
        assert self.historic is not None
        assert self.historic_auth is not None
        imap = HistoricImap(self.historic.store)
        authenticator = HistoricImapAuthenticator(
            imap,
            master=self.master,
            authority=self.historic_auth.authority,
            delegated=self._historic_imap_rights,
        )
        engine = EngineConfig(
            server_name="mock-operator historic",
            greeting="MSSanté mock operator, historic platform IMAP ready",
            auth_failure_delay=self.settings.auth_failure_delay,
            hub_version=imap.version,
            hub_wait=imap.wait,
            structures=StructureCache(),
        )
        self.historic_imap = ImapServer(ServerConfig(engine=engine), authenticator, tls, sock)
        await self.historic_imap.start()

    async def _historic_imap_rights(
        self, idnat: str, bal: str
    ) -> tuple[frozenset[str], str] | None:
        """A card holder's rights on someone else's BAL: the registry decides and audits."""
        if self.delegations is None:
            return None
        return await self._resolve(_identity(idnat), bal, "imap")

    async def _historic_rights(self, idnat: str, bal: str) -> frozenset[str] | None:
        if self.delegations is None:
            return None
        decision = await self.delegations.decide(_identity(idnat), bal)
        return decision.grant.rights if decision.grant else None

    async def _historic_mailboxes_of(self, idnat: str) -> list[str]:
        if self.delegations is None:
            return []
        return [g.mailbox for g in await self.delegations.accessible(_identity(idnat))]

    async def _historic_directory(self, search: str) -> list[dict[str, Any]]:
        if self.delegations is None:
            return []
        return [
            recipient(
                entry.given_name,
                entry.family_name,
                entry.addresses,
                idnat=entry.idnat,
                profession=entry.profession,
            )
            for entry in await self.delegations.directory_search(search)
        ]

    async def _placed(self, address: str) -> str | None:
        """Where this operator's MTA delivers mail for `address`: the platform the registry
        records for its BAL (the gateway's cut-over or rollback switches it), when it names
        one of the two; else None (the platform holding the mailbox)."""
        if self.delegations is None:
            return None
        mailbox = await self.delegations.mailbox(address.strip().lower())
        if mailbox is None or mailbox.backend not in ("modern", "historic"):
            return None
        return mailbox.backend

    async def _deliver_to_modern(self, address: str, raw: bytes) -> None:
        """Mail sent on the historic platform to a BAL of the modern one."""
        assert self.platform is not None
        if not await self.platform.has_mailbox(address):
            raise LookupError(f"{address}: no such mailbox at this operator")
        await self.platform.deliver(address, raw)

    async def _holder(self, address: str) -> tuple[str, str] | None:
        """Who holds a BAL, for the operator API's provisioning: the registry's record,
        else the persona whose BAL it is."""
        if self.delegations is not None:
            mailbox = await self.delegations.mailbox(address)
            if mailbox is not None and mailbox.holder_idnat:
                return mailbox.holder_idnat, mailbox.holder_name
        for persona in self.personas:
            if persona.bal is not None and persona.bal.lower() == address:
                return persona.idnat, persona.display_name
        return None

    async def _delegation_registry(self) -> DelegationService:
        """The mock's own registry (the operator's delegations), seeded with the personas'."""
        url = f"sqlite+aiosqlite:///{self.data_dir / 'delegation.db'}"
        await migrate(url)
        self._registry_engine = create_engine(url)
        service = DelegationService(self._registry_engine)
        await seed_registry(service, [dataclasses.asdict(p) for p in self.personas])
        return service

    async def _resolve(
        self, identity: Identity, bal: str, interface: str
    ) -> tuple[frozenset[str], str] | None:
        assert self.delegations is not None
        grant = await self.delegations.resolve(identity, bal, interface=interface)
        return (grant.rights, grant.via) if grant else None

    async def _seed(self, platform: SqlPlatform) -> None:
        """Create the BAL of the personas whose platform is modern, with their messages."""
        for persona in self.personas:
            if persona.platform != "modern" or persona.bal is None:
                continue
            if await platform.ensure_mailbox(persona.bal, persona.idnat, persona.display_name):
                for seed in seed_messages(persona):
                    await platform.deliver(
                        persona.bal,
                        seed.raw,
                        folder=seed.folder,
                        flags=seed.flags,
                        internal_date=seed.internal_date,
                    )

    @property
    def imap_port(self) -> int:
        assert self.imap is not None, "not started"
        return self.imap.port

    @property
    def smtp_port(self) -> int:
        assert self.smtp is not None, "not started"
        return self.smtp.port

    @property
    def historic_imap_port(self) -> int:
        assert self.historic_imap is not None, "not started"
        return self.historic_imap.port

    async def stop(self) -> None:
        if self.submission is not None:
            await self.submission.aclose()  # before the stores its notices write to
        if self.historic_imap is not None:
            await self.historic_imap.stop()
        if self._historic_engine is not None:
            await self._historic_engine.dispose()
        if self.scenarios is not None:
            await self.scenarios.stop()
        if self.imap is not None:
            await self.imap.stop()
        if self.smtp is not None:
            await self.smtp.stop()
        if self._http is not None:
            await self._http.stop()
        if self.observatory is not None:
            await self.observatory.stop()
        if self.validator is not None:
            await self.validator.aclose()
        if self._registry_engine is not None:
            await self._registry_engine.dispose()
        if self._engine is not None:
            await self._engine.dispose()


def _secret(path: Path) -> str:
    """A generated secret kept in the data directory (mode 0600), created on first use."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(24)
    write_private(path, (value + "\n").encode(), exclusive=True)
    return value


class _HistoricMailboxes:
    """The historic store as the modern SMTP's "other platform"."""

    def __init__(self, store: HistoricStore) -> None:
        self.store = store

    async def has_mailbox(self, address: str) -> bool:
        return await self.store.account(address) is not None

    async def deliver_mime(self, address: str, raw: bytes) -> None:
        await self.store.deliver_mime(address, raw)


def _identity(idnat: str) -> Identity:
    """An identity for a registry decision, from an idNat the historic services authenticated
    (CPS certificate, OTP session): no token behind it."""
    return Identity.from_claims({"SubjectNameID": idnat, "exp": 2**31}, token_id="historic")  # noqa: S106 (a label, no secret)
