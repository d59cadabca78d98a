"""Relay an Ollama-API request that placement sent to a peer: B -> A -> client.

The peer runs it as its own task (the hop count tells it not to forward again) and
its answer is streamed back chunk by chunk. Before the first byte reaches the client
the request can still go elsewhere: if the peer is unreachable or answers 404/502/503
(stale gossip, full, dying), or its connection fails before its first body chunk, we
give up on it and the request is placed again (`retry`). Nothing is sent to the
client until that first chunk is here, so the client never sees the failed attempt.
After the first byte, a failure ends the stream with an Ollama-style error object;
a client never sees a silent truncation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

import httpx
import structlog
import trio
from starlette.types import ASGIApp, Receive, Scope, Send

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


class _ClientGone(Exception):
    """The client hung up while the peer had not answered yet."""


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
    """ASGI response streaming an already-opened peer response to the client.

    `retry` places the request again (without this peer) if the peer fails before
    its first body chunk; it returns the ASGI app that answers instead."""

    def __init__(
        self,
        upstream: httpx.Response,
        peer: str = "",
        retry: Callable[[], Awaitable[ASGIApp]] | None = None,
    ) -> None:
        self.upstream = upstream
        self.peer = peer
        self.retry = retry
        self._chunks = upstream.aiter_raw()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            first, failure = await self._first_chunk(receive)
        except _ClientGone:
            with trio.CancelScope(shield=True):
                await self.upstream.aclose()
            return
        if failure is not None and self.retry is not None:
            await self.upstream.aclose()
            log.info("peer failed before its first byte, placing again", peer=self.peer)
            await (await self._retry_app())(scope, receive, send)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
            try:
                await self._relay(send, first, failure)
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await self.upstream.aclose()

    async def _retry_app(self) -> ASGIApp:
        from meshlb.api.errors import ApiError, error_response  # api imports mesh, not back

        assert self.retry is not None
        try:
            return await self.retry()
        except ApiError as e:
            return error_response(e.status, e.message, e.headers)

    async def _first_chunk(self, receive: Receive) -> tuple[bytes, str | None]:
        """Wait for the peer's first body chunk (it may queue the request first) while
        watching the client; (chunk, None), or (b"", reason) if the peer failed."""
        result: tuple[bytes, str | None] = (b"", None)
        with trio.CancelScope() as waiting:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_disconnect, receive, waiting)
                try:
                    result = (await anext(self._chunks, b""), None)
                except httpx.HTTPError as e:
                    result = (b"", describe_http_error(e))
                nursery.cancel_scope.cancel()
        if waiting.cancelled_caught:
            raise _ClientGone
        return result

    async def _watch_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _relay(self, send: Send, first: bytes, failure: str | None) -> None:
        up = self.upstream
        headers = [(k.encode(), up.headers[k].encode()) for k in PASSED_HEADERS if k in up.headers]
        await send({"type": "http.response.start", "status": up.status_code, "headers": headers})
        try:
            if failure is not None:
                raise httpx.ReadError(failure)
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in self._chunks:
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
