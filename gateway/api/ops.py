"""Health and metrics endpoints. On the public listener /readyz says only which check failed;
the reasons (backend hosts and ports, driver errors) go to the operations listener, which
only the operator's monitoring reaches."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api import problems
from gateway.api.body_limit import DEFAULT_MAX_BODY, BodyLimit
from gateway.health import ADVISORY, OK
from gateway.metrics import Metrics

Probe = Callable[[], Awaitable[tuple[bool, dict[str, str]]]]
FAILED = "failed"
_NO_STORE = {"Cache-Control": "no-store"}


def health_router(probe: Probe, *, detailed: bool, metrics: Metrics | None = None) -> APIRouter:
    """/healthz, /readyz (with each check's reason when `detailed`, else `ok` or `failed`),
    and /metrics when `metrics` is given."""
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers; nothing else is checked, so a dead backend never
        gets the gateway restarted."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: 200 when the database and every backend answer, else 503 naming the
        failed checks, so that a balancer stops sending this node sessions it cannot carry.
        An empty registry is said (`registry`) but keeps the node ready."""
        ready, checks = await probe()
        if not detailed:
            checks = {
                name: value if value == OK or name in ADVISORY else FAILED
                for name, value in checks.items()
            }
        return JSONResponse(
            {"status": "ready" if ready else "unready", "checks": checks},
            status_code=200 if ready else 503,
            headers=_NO_STORE,
        )

    if metrics is not None:
        registry = metrics

        @router.get("/metrics")
        async def prometheus() -> Response:
            """The gateway's counters, in the Prometheus text format."""
            return Response(registry.render(), media_type=CONTENT_TYPE_LATEST, headers=_NO_STORE)

    return router


def create_ops_app(probe: Probe, metrics: Metrics, *, max_body: int = DEFAULT_MAX_BODY) -> FastAPI:
    """The operations listener's application: /metrics, the detailed /readyz, /healthz."""
    app = FastAPI(title="lps-gateway operations", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_body=max_body)
    problems.install(app)
    app.include_router(health_router(probe, detailed=True, metrics=metrics))
    return app
