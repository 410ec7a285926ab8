"""The mock operator as one object: bind, start, stop. Used by its CLI, the demo and tests."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.asgi_server import AsgiServer, bind_tcp
from gateway.logs import RequestIdMiddleware
from gateway.settings import MockSettings
from mock_operator.personas import PersonaBook, default_personas
from mock_operator.psc.provider import MockPsc
from mock_operator.psc.routes import build_router
from mock_operator.web import templates

log = logging.getLogger(__name__)


def sqlite_engine(path: Path) -> AsyncEngine:
    """An aiosqlite engine in WAL mode with foreign keys on."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def create_app(psc: MockPsc) -> FastAPI:
    app = FastAPI(
        title="mock-operator",
        summary="A faithful MSSanté test operator: mock Pro Santé Connect and platforms",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.psc = psc
    app.add_middleware(RequestIdMiddleware)
    app.include_router(build_router(psc.settings.realm))

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


class MockOperator:
    """Everything the mock serves. Today: the mock Pro Santé Connect over HTTP."""

    def __init__(
        self,
        settings: MockSettings,
        data_dir: Path,
        *,
        personas: PersonaBook | None = None,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.personas = personas or default_personas()
        self._http: AsgiServer | None = None
        self._engine: AsyncEngine | None = None
        self.psc: MockPsc | None = None

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
        sock = bind_tcp(self.settings.host, self.settings.http_port)
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
        self._http = AsgiServer(create_app(self.psc), sock)
        await self._http.start()
        log.info("mock.started", extra={"url": self.http_url, "issuer": self.issuer})

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()
        if self._engine is not None:
            await self._engine.dispose()
