"""The inference paths of the Ollama and OpenAI APIs as one raw ASGI callable, ahead
of Starlette's router and middleware.

Why: these seven paths carry nearly all of a node's traffic, and under load a
Starlette route cost more than the work it routes (py-spy, issue 13: Starlette's
router, its two exception middlewares, the request object and the per-message send
wrappers were ~9 % of the node's samples on a tiny proxied request). Here a request
is one dict lookup on its path, the body is read straight from `receive`, and the
answer (`RelayResponse`, `ForwardedResponse` or an error) is called directly.
Everything else, the other Ollama paths included, goes to `fallback` (Starlette).

What a request gets is unchanged (SPEC): X-Meshlb-Priority and X-Meshlb-Timeout-S,
the body limit (413) and JSON hardening of `meshlb.api.body`, signed node-to-node
requests (a hop header without a valid signature is 401), a draining node's 503,
placement through the mesh with retry on another peer before the first byte, the
JSON error shapes (OpenAI's on the /v1 paths), 405 with Allow for another method,
and one `meshlb_requests_total{route,status}` count per request.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import structlog
import trio
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from meshlb.api.body import (
    OLLAMA_TASK_ROUTES,
    PRIORITY_HEADER,
    TIMEOUT_HEADER,
    Route,
    parse_hops,
    parse_json_object,
    parse_priority,
    parse_timeout,
    require_model,
)
from meshlb.api.errors import ApiError, error_response, handle_unexpected, retry_after
from meshlb.api.forwarded import ForwardedResponse
from meshlb.api.metrics import run_counted
from meshlb.api.ollama_routes import InferencePorts, place_in_mesh
from meshlb.api.relay import LocalTask, RelayResponse
from meshlb.api.work_errors import refused_to_error
from meshlb.mesh.forward import HOPS_HEADER, peer_pool
from meshlb.mesh.residency_watch import WatchedAnswer
from meshlb.sched.driver import Refused
from meshlb.tasks.ids import new_task_id
from meshlb.tokens import estimate_tokens

log = structlog.get_logger()

HOT_ROUTES = {r.path: r for r in OLLAMA_TASK_ROUTES}
_WANTED = {
    b"content-length": "content_length",
    PRIORITY_HEADER.encode(): "priority",
    TIMEOUT_HEADER.encode(): "timeout",
    HOPS_HEADER.encode(): "hops",
}


def check_stream_field(payload: dict[str, Any]) -> None:
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, f"field 'stream' must be true or false, not {json.dumps(stream)}")


def wanted_headers(scope: Scope) -> dict[str, str]:
    """The few request headers the fast path reads, decoded (names are lower case)."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = _WANTED.get(name)
        if key is not None:
            found[key] = value.decode("latin-1")
    return found


async def read_asgi_body(receive: Receive, declared: str | None, limit_bytes: int) -> bytes:
    """The whole body, or 413 as soon as it passes `limit_bytes` (Content-Length first)."""
    too_big = ApiError(413, f"request body is larger than the limit of {limit_bytes} bytes")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise too_big
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class FastPath:
    """ASGI: the hot inference paths here, everything else to `fallback`."""

    def __init__(self, ctx: InferencePorts, fallback: ASGIApp) -> None:
        self.ctx = ctx
        self.fallback = fallback
        self.peers = peer_pool()  # node-to-node keep-alive connections
        self._counts = ctx.requests.http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = HOT_ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.fallback(scope, receive, send)
            return

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            await self._answer(route, scope, receive, send)

        await run_counted(answer, scope, receive, send, self._counts, lambda: route.path)

    async def _answer(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            message = f"method {scope['method']} is not allowed on {route.path}"
            app: ASGIApp = error_response(405, message, {"Allow": "POST"}, route.path)
        else:
            try:
                app = await self._accept(route, scope, receive)
            except ApiError as e:
                app = error_response(e.status, e.message, e.headers, route.path)
            except Exception as e:  # a hang-up while uploading, or a meshlb bug: logged
                app = await handle_unexpected(Request(scope), e)
        await app(scope, receive, send)

    async def _accept(self, route: Route, scope: Scope, receive: Receive) -> ASGIApp:
        """Check the request and decide who answers it (an ASGI app)."""
        ctx = self.ctx
        if ctx.drain.active:
            raise ApiError(
                503, "this node is shutting down; send the request to another node", retry_after(1)
            )
        headers = wanted_headers(scope)
        priority = parse_priority(headers.get("priority"))
        timeout_s = parse_timeout(headers.get("timeout"), ctx.rules.request_timeout_s)
        deadline_at = math.inf if timeout_s is None else trio.current_time() + timeout_s
        body = await read_asgi_body(
            receive, headers.get("content_length"), ctx.rules.max_body_bytes
        )
        payload = parse_json_object(body)
        model = require_model(payload)
        check_stream_field(payload)
        est_tokens = estimate_tokens(payload, route.kind, ctx.rules.default_num_predict)
        hops = parse_hops(headers.get("hops"))
        if hops:
            ctx.auth.require(Request(scope), body)

        async def respond(exclude: frozenset[str]) -> ASGIApp:
            """Forward to the best peer (not one in `exclude`), else queue here."""
            remaining_s = deadline_at - trio.current_time()
            if remaining_s <= 0:
                raise ApiError(
                    504, f"the request did not finish within its timeout of {timeout_s:g} s"
                )
            opened = await place_in_mesh(
                ctx.mesh,
                route.path,
                body,
                model,
                est_tokens,
                priority,
                hops,
                exclude,
                remaining_s,
                peers=self.peers,
                payload=payload,
            )
            if opened is not None:
                peer = opened.peer
                return ForwardedResponse(
                    opened.upstream,
                    peer,
                    lambda: respond(exclude | {peer}),
                    route.path,
                    finished=opened.finished,
                    calls=ctx.mesh.calls,
                )
            task_id = new_task_id()
            try:
                ctx.scheduler.submit(task_id, priority, est_tokens)
            except Refused as refused:
                # Full here: a peer with room takes it; 503 only if every one is full.
                if hops == 0 and ctx.node_id not in exclude:
                    with contextlib.suppress(ApiError):
                        return await respond(exclude | {ctx.node_id})
                raise refused_to_error(refused) from None
            ctx.counters.accepted += 1
            task = LocalTask(task_id, route.path, body, model, deadline_at, timeout_s)
            return WatchedAnswer(RelayResponse(ctx.relay, task), ctx.mesh.catalog.residency, model)

        return await respond(frozenset())
