"""The gateway's FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from delegation.service import DelegationService
from gateway.api import admin, admin_directory, admin_migrations, problems, v1
from gateway.api.admin import AdminConfig
from gateway.api.body_limit import DEFAULT_MAX_BODY, BodyLimit
from gateway.api.docs import documented_app
from gateway.api.ops import health_router
from gateway.health import OK, Readiness, database_check
from gateway.metrics import Metrics
from gateway.runtime.logs import RequestIdMiddleware
from gateway.web.routes import STATIC, WebConfig, build_router, error_page
from psc_auth import TokenValidator


def create_api(
    service: DelegationService,
    validator: TokenValidator,
    web: WebConfig | None = None,
    *,
    metrics: Metrics | None = None,
    readiness: Readiness | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    web_validator: TokenValidator | None = None,
    admin_config: AdminConfig | None = None,
) -> FastAPI:
    """The HTTP surface. `metrics`: served at /metrics when given (the gateway's own
    registry; an API without fronts has nothing to count; none when an operations listener
    serves them). `readiness`: what /readyz checks, answered tersely (`ok` or `failed` per
    check: the reasons name backend hosts); without it, the registry's database only (the
    API's one dependency). `max_body`: bytes of a request body, a larger one gets 413.
    `web_validator`: how the pages check the tokens of their own login, whose audience is
    the gateway's client (`ui.client_id`), not an LPS's; default `validator`.
    `admin_config`: the administrators and the usage figures of /admin (none: 404)."""
    app = documented_app(
        title="lps-gateway",
        summary="API LPS gateway for MSSanté: mailboxes, delegations, directory",
        version="1",
    )
    app.state.delegations = service
    app.state.validator = validator
    app.state.admin = admin_config
    directory = admin_config.directory if admin_config is not None else None
    larger = {"/admin/directory": directory.max_body} if directory is not None else None
    app.add_middleware(BodyLimit, max_body=max_body, larger=larger)
    app.add_middleware(RequestIdMiddleware)  # outermost: a 413 carries the request id too
    problems.install(app, error_page if web is not None else problems.no_pages)
    app.include_router(v1.router)
    app.include_router(admin.router)
    app.include_router(admin_migrations.router)
    app.include_router(admin_directory.router)
    if web is not None:
        router = build_router(service, web_validator or validator, web, admin=admin_config)
        app.include_router(router)
        app.mount("/ui/static", StaticFiles(directory=STATIC), name="static")

    async def database_only() -> tuple[bool, dict[str, str]]:
        checks = {"database": await database_check(service)}
        return checks["database"] == OK, checks

    probe = readiness.check if readiness is not None else database_only
    app.include_router(health_router(probe, detailed=False, metrics=metrics))
    return app
