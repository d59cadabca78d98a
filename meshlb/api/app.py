"""The ASGI app of a node: Starlette routing, JSON errors, nothing else.

Starlette (served by hypercorn's trio worker) because it is small, fast and runs on
Trio through anyio; the handlers stay plain async functions over a `NodeContext`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from meshlb.api.errors import (
    ApiError,
    error_response,
    handle_api_error,
    handle_unexpected,
    is_connection_gone,
)
from meshlb.api.fast_path import FastPath
from meshlb.api.internal_routes import internal_routes
from meshlb.api.mesh_routes import mesh_routes
from meshlb.api.metrics import count_requests
from meshlb.api.node_routes import node_routes
from meshlb.api.ollama_routes import ollama_routes
from meshlb.api.task_routes import task_routes
from meshlb.node_context import NodeContext


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in meshlb's JSON error shape."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        return error_response(404, f"no such endpoint: {request.method} {path}", path=path)
    if exc.status_code == 405:
        return error_response(
            405,
            f"method {request.method} is not allowed on {path}",
            dict(exc.headers or {}),
            path,
        )
    return error_response(exc.status_code, str(exc.detail), path=path)


def refuse_ambiguous_framing(app: ASGIApp) -> ASGIApp:
    """400 at once for a request with both Content-Length and Transfer-Encoding:
    RFC 9112 §6.1 says such a message may be a smuggling attempt and is to be treated
    as an error; answered before any of its body is read (it would hang otherwise)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = {name for name, _ in scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:
                response = error_response(
                    400,
                    "a request may not carry both Content-Length and Transfer-Encoding",
                    {"Connection": "close"},
                    scope.get("path", ""),
                )
                await response(scope, receive, send)
                return
        # A hang-up is logged by `handle_unexpected` as such; Starlette re-raises what
        # its catch-all handler saw, and hypercorn would log it again as "Error in
        # ASGI Framework" with a traceback: it is not one.
        try:
            await app(scope, receive, send)
        except BaseException as e:
            if not is_connection_gone(e):
                raise

    return guarded


def build_app(ctx: NodeContext) -> ASGIApp:
    """All routes of a node over one context: the inference paths on the fast path,
    the rest through Starlette."""
    return refuse_ambiguous_framing(FastPath(ctx, count_requests(ctx, build_routes(ctx))))


def build_routes(ctx: NodeContext) -> Starlette:
    """The Starlette app: every route, and the JSON error handlers."""
    return Starlette(
        routes=[
            *node_routes(ctx),
            *mesh_routes(ctx),
            *ollama_routes(ctx),
            *task_routes(ctx, ctx.tasks),
            *internal_routes(ctx),
        ],
        exception_handlers={
            ApiError: handle_api_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
