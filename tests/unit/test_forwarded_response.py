"""`ForwardedResponse`: what the client sees when the peer fails before/after its first byte."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import trio
from starlette.responses import Response
from starlette.types import ASGIApp, Message

from meshlb.api.forwarded import ForwardedResponse


class PeerStream(httpx.AsyncByteStream):
    """A peer's body: these chunks, then (optionally) a broken connection."""

    def __init__(self, chunks: list[bytes], fail: bool) -> None:
        self.chunks, self.fail = chunks, fail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.fail:
            raise httpx.ReadError("connection reset by peer")


async def open_upstream(chunks: list[bytes], fail: bool) -> httpx.Response:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"x-meshlb-node": "b"}, stream=PeerStream(chunks, fail))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    request = client.build_request("POST", "http://b/api/chat")
    return await client.send(request, stream=True)


async def run_asgi(app: ASGIApp) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http"}, receive, send)
    return sent


def body_of(sent: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_peer_failing_before_its_first_byte_is_placed_again_unseen() -> None:
    retried: list[bool] = []

    async def retry() -> ASGIApp:
        retried.append(True)
        return Response(b'{"done": true}\n', headers={"x-meshlb-node": "c"})

    forwarded = ForwardedResponse(await open_upstream([], fail=True), "b", retry)
    sent = await run_asgi(forwarded)
    assert retried == [True]
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1 and (b"x-meshlb-node", b"c") in starts[0]["headers"]
    assert body_of(sent) == b'{"done": true}\n'


async def test_peer_failing_after_its_first_byte_ends_with_an_error_object() -> None:
    async def retry() -> ASGIApp:
        raise AssertionError("must not place again after the first byte")

    first = b'{"message": {"content": "Hel"}, "done": false}\n'
    forwarded = ForwardedResponse(await open_upstream([first], fail=True), "b", retry)
    sent = await run_asgi(forwarded)
    lines = body_of(sent).decode().splitlines()
    assert lines[0] == first.decode().strip()
    error: dict[str, Any] = json.loads(lines[-1])
    assert "failed mid-answer" in error["error"]
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_healthy_peer_is_relayed_byte_for_byte() -> None:
    chunks = [b'{"a": 1}\n', b'{"b": 2}\n', b'{"done": true}\n']
    forwarded = ForwardedResponse(await open_upstream(chunks, fail=False), "b", None)
    assert body_of(await run_asgi(forwarded)) == b"".join(chunks)
