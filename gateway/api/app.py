"""The gateway's FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from delegation.service import DelegationService
from gateway.api import problems, v1
from gateway.logs import RequestIdMiddleware
from gateway.web.routes import WebConfig, build_router
from psc_auth import TokenValidator


def create_api(
    service: DelegationService, validator: TokenValidator, web: WebConfig | None = None
) -> FastAPI:
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
        return {"status": "ok"}

    return app
