"""Stream a peer's answer to the client: B -> A -> client, chunk by chunk.

Before the first byte reaches the client the request can still go elsewhere: if the
peer's connection fails before its first body chunk (or gossip declares the peer dead
while we wait: `meshlb.mesh.peer_calls`), we give up on it and the request is placed
again (`retry`). Nothing is sent to the client until that first chunk is
here, so the client never sees the failed attempt. After the first byte, a failure
ends the stream with an error object (Ollama's, or OpenAI's on its paths); a client
never sees a silent truncation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol

import httpx
import structlog
import trio
from starlette.types import ASGIApp, Receive, Scope, Send

from meshlb.api.errors import ApiError, error_response, stream_error_chunk
from meshlb.api.hang_up import cancelled_on_hang_up
from meshlb.backend.ollama import describe_http_error
from meshlb.http_client import UpstreamError
from meshlb.mesh.forward import PASSED_HEADERS
from meshlb.mesh.peer_calls import PeerCalls

log = structlog.get_logger()
# Inference hops come from `meshlb.http_client`; model management relays use httpx.
BROKEN = (UpstreamError, httpx.HTTPError)


class PeerAnswer(Protocol):
    """A peer's response with its body still to read (UpstreamResponse, httpx.Response)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def aiter_raw(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


def reason_of(error: UpstreamError | httpx.HTTPError) -> str:
    if isinstance(error, UpstreamError):
        return error.reason
    return describe_http_error(error)


class ForwardedResponse:
    """ASGI response streaming an already-opened peer response to the client.

    `retry` places the request again (without this peer) if the peer fails before
    its first body chunk; it returns the ASGI app that answers instead. `finished` is
    called once the peer's part is over (placement stops counting it there); `calls`
    ends the wait when gossip declares the peer dead."""

    def __init__(
        self,
        upstream: PeerAnswer,
        peer: str = "",
        retry: Callable[[], Awaitable[ASGIApp]] | None = None,
        path: str = "",
        *,
        finished: Callable[[], None] | None = None,
        calls: PeerCalls | None = None,
    ) -> None:
        self.upstream = upstream
        self.peer = peer
        self.retry = retry
        self.path = path
        self.finished = finished
        self.calls = calls if calls is not None else PeerCalls()
        self._chunks = upstream.aiter_raw()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        retry = False
        async with cancelled_on_hang_up(scope, receive):
            try:
                first, failure = await self._first_chunk()
                retry = failure is not None and self.retry is not None
                if not retry:
                    await self._relay(send, first, failure)
            finally:
                if self.finished is not None:
                    self.finished()
                with trio.CancelScope(shield=True):
                    await self.upstream.aclose()
        if retry:
            log.info("peer failed before its first byte, placing again", peer=self.peer)
            await (await self._retry_app())(scope, receive, send)

    async def _retry_app(self) -> ASGIApp:
        assert self.retry is not None
        try:
            return await self.retry()
        except ApiError as e:
            return error_response(e.status, e.message, e.headers, self.path)

    async def _first_chunk(self) -> tuple[bytes, str | None]:
        """The peer's first body chunk (it may queue the request first): (chunk, None),
        or (b"", reason) if the peer failed."""
        try:
            with self.calls.call(self.peer) as call:
                return await anext(self._chunks, b""), None
        except BROKEN as e:
            return b"", reason_of(e)
        assert call.cancelled_caught  # the with block returns unless cancelled
        return b"", "was declared dead before its first byte"

    async def _next_chunk(self) -> bytes | None:
        """The peer's next chunk (None at the end). Only this wait ends when the peer is
        declared dead: a send to the client cancelled half-written would corrupt its
        stream (and shielding the sends would also shield them from the client's
        hang-up and deadline)."""
        with self.calls.call(self.peer) as call:
            return await anext(self._chunks, None)
        assert call.cancelled_caught
        raise UpstreamError("was declared dead by gossip")

    async def _relay(self, send: Send, first: bytes, failure: str | None) -> None:
        up = self.upstream
        headers = [(k.encode(), up.headers[k].encode()) for k in PASSED_HEADERS if k in up.headers]
        await send({"type": "http.response.start", "status": up.status_code, "headers": headers})
        try:
            if failure is not None:
                raise UpstreamError(failure)
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            while (chunk := await self._next_chunk()) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except BROKEN as e:
            reason = f"the node running this request failed mid-answer ({reason_of(e)})"
            log.warning("peer failed mid-stream", peer=self.peer, reason=reason)
            await send(
                {
                    "type": "http.response.body",
                    "more_body": True,
                    "body": stream_error_chunk(reason, self.path),
                }
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
