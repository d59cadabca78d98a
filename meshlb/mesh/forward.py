"""Relay an Ollama-API request that placement sent to a peer: B -> A -> client.

The peer runs it as its own task (the hop count tells it not to forward again) and
its answer is streamed back chunk by chunk. Before the first byte reaches the client
the request can still go elsewhere: if the peer is unreachable or answers 404/502/503
(stale gossip, full, dying) we give up on it and the caller places the task again.
After the first byte, a failure ends the stream with an Ollama-style error object;
a client never sees a silent truncation.
"""

from __future__ import annotations

import json
import time

import httpx
import structlog
import trio
from starlette.types import Receive, Scope, Send

from meshlb.backend.ollama import describe_http_error
from meshlb.mesh.auth import AUTH_HEADER, sign

log = structlog.get_logger()

HOPS_HEADER = "x-meshlb-hops"
# Status codes that mean "this peer cannot take it now": try another placement.
RETRY_ELSEWHERE = frozenset({404, 502, 503})
PASSED_HEADERS = (
    "content-type",
    "content-encoding",
    "x-meshlb-task-id",
    "x-meshlb-node",
    "x-meshlb-queue-ms",
    "retry-after",
)


class PeerUnavailable(Exception):
    """The peer could not take the request; nothing was sent to the client yet."""


async def open_on_peer(
    client: httpx.AsyncClient,
    peer_url: str,
    path: str,
    body: bytes,
    priority: int,
    hops: int,
    cluster_key: str | None,
) -> httpx.Response:
    """Start the request on the peer; raise PeerUnavailable when it should go elsewhere."""
    headers = {
        "content-type": "application/json",
        "x-meshlb-priority": str(priority),
        HOPS_HEADER: str(hops + 1),
    }
    if cluster_key is not None:
        headers[AUTH_HEADER] = sign(cluster_key, "POST", path, body, time.time())
    request = client.build_request("POST", f"{peer_url}{path}", content=body, headers=headers)
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as e:
        raise PeerUnavailable(f"{peer_url} {describe_http_error(e)}") from e
    if response.status_code in RETRY_ELSEWHERE:
        await response.aclose()
        raise PeerUnavailable(f"{peer_url} answered {response.status_code}")
    return response


class ForwardedResponse:
    """ASGI response streaming an already-opened peer response to the client."""

    def __init__(self, upstream: httpx.Response) -> None:
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
            try:
                await self._relay(send)
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await self.upstream.aclose()

    async def _watch_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _relay(self, send: Send) -> None:
        up = self.upstream
        headers = [(k.encode(), up.headers[k].encode()) for k in PASSED_HEADERS if k in up.headers]
        await send({"type": "http.response.start", "status": up.status_code, "headers": headers})
        try:
            async for chunk in up.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as e:
            reason = f"the node running this request failed mid-answer ({describe_http_error(e)})"
            log.warning("peer failed mid-stream", peer=str(up.url), reason=reason)
            await send(
                {
                    "type": "http.response.body",
                    "more_body": True,
                    "body": json.dumps({"error": reason}).encode() + b"\n",
                }
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
