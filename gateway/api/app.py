"""The gateway's FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from delegation.service import DelegationService
from gateway.api import problems, v1
from gateway.health import OK, Readiness, database_check
from gateway.logs import RequestIdMiddleware
from gateway.metrics import Metrics
from gateway.web.routes import WebConfig, build_router
from psc_auth import TokenValidator

_NO_STORE = {"Cache-Control": "no-store"}


def create_api(
    service: DelegationService,
    validator: TokenValidator,
    web: WebConfig | None = None,
    *,
    metrics: Metrics | None = None,
    readiness: Readiness | None = None,
) -> FastAPI:
    """The HTTP surface. `metrics`: served at /metrics when given (the gateway's own
    registry; an API without fronts has nothing to count). `readiness`: what /readyz
    checks; without it, the registry's database only (the API's one dependency)."""
    app = FastAPI(
        title="lps-gateway",
        summary="API LPS gateway for MSSanté: mailboxes, delegations, directory",
        version="1",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.delegations = service
    app.state.validator = validator
    app.add_middleware(RequestIdMiddleware)
    problems.install(app)
    app.include_router(v1.router)
    if web is not None:
        app.include_router(build_router(service, validator, web))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers; nothing else is checked, so a dead backend never
        gets the gateway restarted."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        """Readiness: 200 when the database and every backend answer, else 503 naming the
        failed checks, so that a balancer stops sending this node sessions it cannot carry."""
        if readiness is not None:
            ready, checks = await readiness.check()
        else:
            checks = {"database": await database_check(service)}
            ready = checks["database"] == OK
        return JSONResponse(
            {"status": "ready" if ready else "unready", "checks": checks},
            status_code=200 if ready else 503,
            headers=_NO_STORE,
        )

    if metrics is not None:
        registry = metrics

        @app.get("/metrics", include_in_schema=False)
        async def prometheus() -> Response:
            """The gateway's counters, in the Prometheus text format."""
            return Response(registry.render(), media_type=CONTENT_TYPE_LATEST, headers=_NO_STORE)

    return app
