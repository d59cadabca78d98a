"""The ASGI app of a node: Starlette routing, JSON errors, nothing else.

Starlette (served by `meshlb.http_server`) because it is small and runs on Trio
through anyio; the inference paths skip it (`meshlb.api.fast_path`). The handlers stay
plain async functions, each route module over the few parts of the node it uses
(`ApiParts` holds one set of ports per module).
"""

from __future__ import annotations

from dataclasses import dataclass

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
from meshlb.api.internal_routes import InternalPorts, internal_routes
from meshlb.api.mesh_docs import DocsPorts, mesh_docs_routes
from meshlb.api.mesh_routes import mesh_routes
from meshlb.api.metrics import count_requests
from meshlb.api.model_routes import ModelPorts, model_routes
from meshlb.api.node_routes import NodePorts, node_routes
from meshlb.api.ollama_routes import CatalogPorts, InferencePorts, ollama_routes
from meshlb.api.ports import PeerTable
from meshlb.api.task_routes import TaskPorts, task_routes
from meshlb.telemetry import RequestStats


@dataclass(frozen=True, slots=True)
class ApiParts:
    """The ports of every route module, built by the composition root (`meshlb.node_api`)."""

    node_id: str
    requests: RequestStats  # meshlb_requests_total{route,status}
    mesh: PeerTable
    inference: InferencePorts
    catalog: CatalogPorts
    docs: DocsPorts
    models: ModelPorts
    tasks: TaskPorts
    node: NodePorts
    internal: InternalPorts


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
        # its catch-all handler saw, and the server would log it again with a
        # traceback: it is not one.
        try:
            await app(scope, receive, send)
        except BaseException as e:
            if not is_connection_gone(e):
                raise

    return guarded


def build_app(parts: ApiParts) -> ASGIApp:
    """All routes of a node: the inference paths on the fast path, the rest through
    Starlette."""
    routes = count_requests(parts.requests, build_routes(parts))
    return refuse_ambiguous_framing(FastPath(parts.inference, routes))


def build_routes(parts: ApiParts) -> Starlette:
    """The Starlette app: every route, and the JSON error handlers."""
    return Starlette(
        routes=[
            *node_routes(parts.node),
            *mesh_routes(parts.node_id, parts.mesh),
            *ollama_routes(parts.catalog),
            *mesh_docs_routes(parts.docs),
            *model_routes(parts.models),
            *task_routes(parts.tasks),
            *internal_routes(parts.internal),
        ],
        exception_handlers={
            ApiError: handle_api_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
