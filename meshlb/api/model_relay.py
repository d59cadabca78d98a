"""The node-to-node relay to this node's own Ollama, for model management.

`/v1/internal/ollama/api/...`: a peer's model operation (pull, create, copy, delete,
push, blobs) on this node's Ollama, which usually listens on 127.0.0.1 only. When it
is done the node re-reads its model list and gossips it at once, so the node that
asked sees the change within a fraction of a second.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
import trio
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from meshlb.api.body import read_body
from meshlb.api.errors import ApiError, error_response
from meshlb.api.forwarded import ForwardedResponse
from meshlb.api.model_fanout import INTERNAL_PREFIX
from meshlb.api.peer_auth import PeerAuth
from meshlb.backend.catalog import ModelCatalog
from meshlb.backend.ollama import describe_http_error

log = structlog.get_logger()
_RELAYED = re.compile(r"^/api/(pull|push|create|copy|delete|blobs/[^/]+)$")


@dataclass(frozen=True, slots=True)
class RelayToOllama:
    """What the internal model relay uses of the node."""

    node_id: str
    ollama_url: str
    max_body_bytes: int
    auth: PeerAuth
    catalog: ModelCatalog
    announce_now: Callable[[], None]  # gossip this node's metadata at once


class _RefreshAfter:
    """ASGI wrapper: answer with `inner`, then re-read this node's model list."""

    def __init__(self, inner: ForwardedResponse, ctx: RelayToOllama) -> None:
        self.inner, self.ctx = inner, ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        before = self.ctx.catalog.names
        try:
            await self.inner(scope, receive, send)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.ctx.catalog.refresh()
            if self.ctx.catalog.names != before:
                self._announce()

    def _announce(self) -> None:
        """Gossip at once after the model list changed, instead of at the announcer's
        next tick (up to a second later): the node that asked for the change waits for
        it to show. The announcer's next tick pushes the same bytes once more (one
        extra incarnation bump per operation, nothing else)."""
        try:
            self.ctx.announce_now()
        except Exception as e:  # the announcer retries on its tick; never fail the answer
            log.warning("could not announce the new model list at once", error=repr(e))


def internal_model_routes(ctx: RelayToOllama) -> list[Route]:
    """`/v1/internal/ollama/api/...`: a peer's model operation on this node's Ollama.

    Signed like every node-to-node request; a blob upload is signed over an empty body
    (its content is bound by the digest in the signed path, and Ollama checks it), so
    gigabytes are streamed through, never buffered. Only management paths are relayed.
    """
    client = httpx.AsyncClient(base_url=ctx.ollama_url, timeout=httpx.Timeout(None, connect=5.0))

    async def relay(request: Request) -> Any:
        api_path = "/" + str(request.path_params["path"])
        if not _RELAYED.match(api_path):
            raise ApiError(404, f"no such endpoint: {request.method} {request.url.path}")
        content: Any
        if request.method == "POST" and api_path.startswith("/api/blobs/"):
            ctx.auth.require(request, b"", "model operation")
            content = request.stream()
        else:
            content = await read_body(request, ctx.max_body_bytes)
            ctx.auth.require(request, content, "model operation")
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        upstream_req = client.build_request(
            request.method, api_path, content=content, headers=headers
        )
        try:
            upstream = await client.send(upstream_req, stream=True)
        except httpx.HTTPError as e:
            return error_response(502, f"the Ollama at {ctx.ollama_url} {describe_http_error(e)}")
        response = ForwardedResponse(upstream, ctx.node_id, None, api_path)
        return response if request.method == "HEAD" else _RefreshAfter(response, ctx)

    return [Route(INTERNAL_PREFIX + "/{path:path}", relay, methods=["POST", "DELETE", "HEAD"])]
