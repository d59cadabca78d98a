"""Node endpoints: health, readiness, queue, metrics, `/` and the dashboard's JSON.

`GET /` serves the dashboard to browsers and Ollama's "Ollama is running" to
everything else, because Ollama clients probe `/` to see whether a server is up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from meshlb.api.dashboard import ASSETS, MAX_EVENTS, DashboardData, DashboardPorts, asset
from meshlb.api.errors import ApiError
from meshlb.api.metrics import MetricsPorts, TaskFacts, node_registry
from meshlb.api.ports import NodeCounters
from meshlb.sched.driver import LocalScheduler


@dataclass(frozen=True, slots=True)
class NodePorts:
    """What the node endpoints read of the node."""

    node_id: str
    not_ready_reasons: Callable[[], list[str]]  # empty when ready
    scheduler: LocalScheduler
    counters: NodeCounters
    tasks: TaskFacts
    mailer_counters: Callable[[], Mapping[str, int]]
    gossip_drops: Callable[[], Mapping[str, int]]
    metrics: MetricsPorts
    dashboard: DashboardPorts


def plain(value: Any) -> Any:
    """Dataclasses (frozen, slotted) to JSON-ready dicts; dict keys to strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def queue_view(ctx: NodePorts) -> dict[str, Any]:
    """`GET /v1/queue`: the scheduler's numbers plus the node's request counters."""
    return {
        "node": ctx.node_id,
        **plain(ctx.scheduler.stats()),
        "node_counters": ctx.counters.nonzero(),
        "mesh": ctx.tasks.stats(),
        "mailer": dict(ctx.mailer_counters()),
        "gossip_dropped": dict(ctx.gossip_drops()),
    }


def parse_since(raw: str | None) -> float:
    if raw is None:
        return 0.0
    try:
        since = float(raw)
    except ValueError:
        raise ApiError(
            400, f"query parameter since must be a wall-clock time, got {raw!r}"
        ) from None
    if not math.isfinite(since):
        raise ApiError(422, "query parameter since must be a finite number of seconds")
    return since


def parse_limit(raw: str | None, default: int, top: int) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= top:
        raise ApiError(422, f"query parameter limit must be an integer from 1 to {top}")
    return int(raw)


def local_only(request: Request) -> bool:
    """`?local=1` (a peer's fan-out) or `?scope=local`; 422 for another scope."""
    scope = request.query_params.get("scope", "mesh")
    if scope not in ("mesh", "local"):
        raise ApiError(422, "query parameter scope must be mesh or local")
    return scope == "local" or request.query_params.get("local") == "1"


def node_routes(ctx: NodePorts) -> list[Route]:
    registry = node_registry(ctx.metrics)
    data = DashboardData(ctx.dashboard)
    page = {name: (asset(name), kind) for name, kind in ASSETS.items()}
    html = asset("dashboard.html")

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
            return HTMLResponse(html, headers={"Cache-Control": "no-cache"})
        return PlainTextResponse("Ollama is running")

    async def dashboard_asset(request: Request) -> Response:
        found = page.get(request.path_params["name"])
        if found is None:
            raise ApiError(404, f"no dashboard file {request.path_params['name']!r}")
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "no-cache"})

    async def series(request: Request) -> Response:
        since = parse_since(request.query_params.get("since"))
        return JSONResponse(await data.series(since, local_only(request)))

    async def events(request: Request) -> Response:
        limit = parse_limit(request.query_params.get("limit"), 100, MAX_EVENTS)
        return JSONResponse(await data.events(limit, local_only(request)))

    return [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1/queue", queue, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/dashboard/{name}", dashboard_asset, methods=["GET"]),
        Route("/v1/series", series, methods=["GET"]),
        Route("/v1/events", events, methods=["GET"]),
    ]
