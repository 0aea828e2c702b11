"""The admin listener (``OTELBRIDGE_ADMIN_PORT``): kept off the webhook port so only the
webhook faces the internet.

* ``GET /healthz`` — 200 while the webhook path is alive (the pipeline process hears from the
  webhook process), else 503 with the reason: liveness, so that a supervisor restarts it.
* ``GET /readyz`` — 200 when webhooks can be taken and delivery moves, else 503; the JSON names
  every check and why it fails.
* ``GET /metrics`` — Prometheus text format: the call metrics and the self-metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass(slots=True)
class Readiness:
    ready: bool
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        reasons = [f"{name}: {check['reason']}" for name, check in self.checks.items() if not check["ok"]]
        return {"status": "ready" if self.ready else "not ready", "reasons": reasons, "checks": self.checks}


def build_admin_app(
    readiness: Callable[[], Awaitable[Readiness]],
    metrics_text: Callable[[], Awaitable[bytes]],
    liveness: Callable[[], str | None] | None = None,
) -> Starlette:
    """``liveness`` returns why the daemon is not alive, or None when it is."""

    async def healthz(_: Request) -> Response:
        problem = liveness() if liveness is not None else None
        if problem is not None:
            return JSONResponse({"status": "not alive", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        result = await readiness()
        return JSONResponse(result.body(), status_code=200 if result.ready else 503)

    async def metrics(_: Request) -> Response:
        return Response(await metrics_text(), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            {
                "error": "not_found",
                "message": f"no such endpoint {request.url.path}; try /healthz, /readyz, /metrics",
            },
            status_code=404,
        )

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            {"error": "method_not_allowed", "message": f"{request.method} is not allowed here; use GET"},
            status_code=405,
            headers={"Allow": "GET"},
        )

    async def internal(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            {"error": "internal", "message": "internal error; see otelbridge's log"}, status_code=500
        )

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: method_not_allowed, Exception: internal},
    )
