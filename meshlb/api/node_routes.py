"""Node endpoints: health, readiness, this node's queue, Prometheus metrics, `/`.

`GET /` serves the dashboard to browsers and Ollama's "Ollama is running" to
everything else, because Ollama clients probe `/` to see whether a server is up.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from meshlb.api.dashboard import DASHBOARD_HTML
from meshlb.api.metrics import node_registry
from meshlb.node_context import NodeContext


def plain(value: Any) -> Any:
    """Dataclasses (frozen, slotted) to JSON-ready dicts; dict keys to strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def queue_view(ctx: NodeContext) -> dict[str, Any]:
    """`GET /v1/queue`: the scheduler's numbers plus the node's request counters."""
    return {
        "node": ctx.node_id,
        **plain(ctx.scheduler.stats()),
        "node_counters": dict(ctx.counters),
        "mesh": ctx.tasks.mesh.stats(),
        "mailer": dict(ctx.mailer.counters) if ctx.mailer is not None else {},
    }


def node_routes(ctx: NodeContext) -> list[Route]:
    registry = node_registry(ctx)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "node": ctx.node_id})

    async def readyz(request: Request) -> Response:
        reasons = ctx.not_ready_reasons()
        body = {"ready": not reasons, "node": ctx.node_id, "reasons": reasons}
        return JSONResponse(body, status_code=200 if not reasons else 503)

    async def queue(request: Request) -> Response:
        return JSONResponse(queue_view(ctx))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def root(request: Request) -> Response:
        if request.method == "HEAD":
            return PlainTextResponse("Ollama is running")
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(DASHBOARD_HTML)
        return PlainTextResponse("Ollama is running")

    return [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1/queue", queue, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
