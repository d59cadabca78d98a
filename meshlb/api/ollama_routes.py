"""The drop-in Ollama API: the same paths, bodies, streaming and errors as Ollama.

Inference paths become tasks (validated, queued by priority, run when the host has
room, relayed by `RelayResponse`). Metadata paths (tags, ps, version, show) are answered
from the model catalog or passed to Ollama directly: they cost Ollama nothing.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route as StarletteRoute

from meshlb import __version__
from meshlb.api.body import (
    OLLAMA_TASK_ROUTES,
    PRIORITY_HEADER,
    Route,
    parse_json_object,
    parse_priority,
    read_body,
    require_model,
)
from meshlb.api.errors import ApiError, retry_after
from meshlb.api.relay import LocalTask, RelayResponse
from meshlb.backend.ollama import BackendError
from meshlb.node_context import NodeContext, new_task_id
from meshlb.sched.driver import Refused
from meshlb.tokens import estimate_tokens


def refused_to_error(refused: Refused) -> ApiError:
    """Scheduler refusals as HTTP: full queue 503 + Retry-After, never-fits 422."""
    if refused.reason == "queue_full":
        return ApiError(503, refused.message, retry_after(refused.retry_after_s or 1.0))
    if refused.reason == "never_fits":
        return ApiError(422, refused.message)
    return ApiError(409, refused.message)


async def check_model(ctx: NodeContext, model: str) -> None:
    """404 for a model no one has; 503 when Ollama cannot be asked right now."""
    if await ctx.catalog.knows(model):
        return
    if not ctx.catalog.reachable:
        raise ApiError(503, f"the Ollama at {ctx.backend.base_url} {ctx.catalog.last_error}; "
                            "try again shortly", retry_after(5))
    raise ApiError(404, f"model '{model}' not found")


def check_stream_field(payload: dict[str, Any]) -> None:
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, f"field 'stream' must be true or false, not {json.dumps(stream)}")


def make_task_handler(ctx: NodeContext, route: Route) -> Any:
    """A Starlette endpoint that turns one request on `route.path` into a local task."""

    async def handler(request: Request) -> Any:
        if ctx.draining:
            raise ApiError(503, "this node is shutting down; send the request to another node",
                           retry_after(1))
        priority = parse_priority(request.headers.get(PRIORITY_HEADER))
        body = await read_body(request, ctx.settings.max_body_bytes)
        payload = parse_json_object(body)
        model = require_model(payload)
        check_stream_field(payload)
        await check_model(ctx, model)
        task_id = new_task_id()
        est_tokens = estimate_tokens(payload, route.kind, ctx.settings.default_num_predict)
        try:
            ctx.scheduler.submit(task_id, priority, est_tokens)
        except Refused as refused:
            raise refused_to_error(refused) from None
        ctx.counters["accepted"] += 1
        return RelayResponse(ctx, LocalTask(task_id, route.path, body, model))

    return handler


def tags_handler(ctx: NodeContext) -> Any:
    async def handler(request: Request) -> Response:
        if not ctx.catalog.reachable:
            await ctx.catalog.refresh()
        return JSONResponse({"models": ctx.catalog.entries()})
    return handler


def openai_models_handler(ctx: NodeContext) -> Any:
    async def handler(request: Request) -> Response:
        if not ctx.catalog.reachable:
            await ctx.catalog.refresh()
        data = [{"id": name, "object": "model", "created": int(ctx.started_at_wall),
                 "owned_by": "library"} for name in ctx.catalog.names]
        return JSONResponse({"object": "list", "data": data})
    return handler


def passthrough_get(ctx: NodeContext, path: str) -> Any:
    """GET a small Ollama document as it is (/api/ps)."""
    async def handler(request: Request) -> Response:
        try:
            return JSONResponse(await ctx.backend.get_json(path))
        except BackendError as e:
            raise ApiError(503, f"{e}; try again shortly", retry_after(5)) from None
    return handler


def version_handler(ctx: NodeContext) -> Any:
    """Ollama's version when it answers (clients gate features on it), else meshlb's."""
    async def handler(request: Request) -> Response:
        try:
            return JSONResponse(await ctx.backend.get_json("/api/version"))
        except BackendError:
            return JSONResponse({"version": f"0.0.0-meshlb-{__version__}"})
    return handler


def show_handler(ctx: NodeContext) -> Any:
    async def handler(request: Request) -> Response:
        payload = parse_json_object(await read_body(request, ctx.settings.max_body_bytes))
        if "model" not in payload and isinstance(payload.get("name"), str):
            payload["model"] = payload["name"]  # older clients send "name"
        model = require_model(payload)
        await check_model(ctx, model)
        try:
            status, content = await ctx.backend.post_json("/api/show", payload, timeout_s=30)
        except BackendError as e:
            raise ApiError(503, f"{e}; try again shortly", retry_after(5)) from None
        return Response(content, status_code=status, media_type="application/json")
    return handler


async def root_head(request: Request) -> Response:
    return PlainTextResponse("")


def ollama_routes(ctx: NodeContext) -> list[StarletteRoute]:
    """Every Ollama-compatible route of a node."""
    routes = [StarletteRoute(r.path, make_task_handler(ctx, r), methods=["POST"])
              for r in OLLAMA_TASK_ROUTES]
    routes += [
        StarletteRoute("/api/tags", tags_handler(ctx), methods=["GET"]),
        StarletteRoute("/api/ps", passthrough_get(ctx, "/api/ps"), methods=["GET"]),
        StarletteRoute("/api/version", version_handler(ctx), methods=["GET"]),
        StarletteRoute("/api/show", show_handler(ctx), methods=["POST"]),
        StarletteRoute("/v1/models", openai_models_handler(ctx), methods=["GET"]),
    ]
    return routes


def uptime_s(ctx: NodeContext) -> float:
    return time.time() - ctx.started_at_wall
