"""meshlb's HTTP/1.1 server (`meshlb.http_server`, h11 on Trio) on real loopback sockets.

What the node relies on beyond "answers a request": keep-alive and pipelining in
order, the client's hang-up reaching the app as `http.disconnect` (the relay cancels
its upstream request on it), malformed requests answered 400 and closed, an answer
sent before the body was read (413) reaching the client instead of a reset, the
header timeout closing a slow client, 100 Continue, and a graceful shutdown that lets
a request in flight finish.
"""

from __future__ import annotations

import contextlib
import socket

import pytest
import trio
from starlette.types import Message, Receive, Scope, Send

from meshlb import http_server
from meshlb.http_server import serve_app

pytestmark = pytest.mark.integration


class App:
    """/echo answers the body; /slow waits for `release`; /disconnect records the
    message that follows the body; /early answers 413 without reading the body;
    /get answers without calling `receive` at all (as Starlette's GET handlers do)."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.after_body: list[str] = []
        self.seen_disconnect = trio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        body = b""
        if path not in ("/early", "/get"):
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        if path == "/slow":
            await self.release.wait()
        if path == "/watch":
            await self.watched(scope, send, body)
            return
        if path == "/disconnect":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"begun", "more_body": True})
            self.after_body.append((await receive())["type"])
            self.seen_disconnect.set()
            return
        status = 413 if path == "/early" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": path.encode() + b":" + body})

    async def watched(self, scope: Scope, send: Send, body: bytes) -> None:
        """Answer inside a cancel scope registered with the `meshlb.disconnect`
        extension (as the relays do); b"hold" begins the answer and never ends it."""
        with trio.CancelScope() as cancel:
            scope["extensions"]["meshlb.disconnect"](cancel)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            if body == b"hold":
                await send({"type": "http.response.body", "body": b"begun", "more_body": True})
                await trio.sleep_forever()
            await send({"type": "http.response.body", "body": b"/watch:" + body})
        self.after_body.append("cancelled" if cancel.cancelled_caught else "answered")
        self.seen_disconnect.set()


async def start(nursery: trio.Nursery, app: App) -> tuple[int, trio.Event]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    shutdown = trio.Event()
    await nursery.start(serve_app, app, "127.0.0.1", port, shutdown)
    return port, shutdown


async def read_until_closed(stream: trio.SocketStream, limit_s: float = 5.0) -> bytes:
    data = b""
    with trio.move_on_after(limit_s):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (
        path.encode(),
        len(body),
        extra,
        body,
    )


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    async with trio.open_nursery() as nursery:
        port, shutdown = await start(nursery, App())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        last = post("/echo", b"two", b"Connection: close\r\n")
        await stream.send_all(post("/echo", b"one") + last)
        answer = await read_until_closed(stream)
        assert answer.count(b"HTTP/1.1 200") == 2
        assert answer.index(b"/echo:one") < answer.index(b"/echo:two")
        assert b"content-length: 9" in answer.lower()
        shutdown.set()


async def test_requests_whose_body_the_app_never_read_keep_the_connection() -> None:
    """A GET has no body, and the app need not `receive` it: the connection must stay
    open for the next request (a pooled client reuses it; closing it after the answer
    made the client's next request fail with "Server disconnected")."""
    async with trio.open_nursery() as nursery:
        port, shutdown = await start(nursery, App())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /get HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await stream.receive_some(65536)
        assert first.startswith(b"HTTP/1.1 200")
        await stream.send_all(b"GET /get HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        second = await read_until_closed(stream)
        assert second.startswith(b"HTTP/1.1 200"), second
        shutdown.set()


async def test_a_hang_up_after_the_body_reaches_the_app_as_disconnect() -> None:
    app = App()
    async with trio.open_nursery() as nursery:
        port, shutdown = await start(nursery, app)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(post("/disconnect", b"x"))
        assert b"begun" in await stream.receive_some(65536)
        await stream.aclose()
        with trio.fail_after(2):
            await app.seen_disconnect.wait()
        assert app.after_body == ["http.disconnect"]
        shutdown.set()


async def test_a_hang_up_cancels_the_scope_registered_with_the_extension() -> None:
    app = App()
    async with trio.open_nursery() as nursery:
        port, shutdown = await start(nursery, app)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(post("/watch", b"hold"))
        assert b"begun" in await stream.receive_some(65536)
        await stream.aclose()
        with trio.fail_after(2):
            await app.seen_disconnect.wait()
        assert app.after_body == ["cancelled"]
        shutdown.set()


async def test_watched_requests_keep_the_connection_one_after_another_and_pipelined() -> None:
    """The hang-up watcher reads the socket while an answer runs: the next request,
    whether it arrives later or together with the first, is still answered in order."""
    app = App()
    async with trio.open_nursery() as nursery:
        port, shutdown = await start(nursery, app)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        for n in range(3):
            await stream.send_all(post("/watch", b"n%d" % n))
            with trio.fail_after(2):
                assert (await stream.receive_some(65536)).endswith(b"/watch:n%d" % n)
        last = post("/watch", b"p2", b"Connection: close\r\n")
        await stream.send_all(post("/watch", b"p1") + last)
        answer = await read_until_closed(stream)
        assert answer.count(b"HTTP/1.1 200") == 2
        assert answer.index(b"/watch:p1") < answer.index(b"/watch:p2")
        assert app.after_body == ["answered"] * 5
        shutdown.set()


async def test_malformed_request_is_400_and_closed() -> None:
    async with trio.open_nursery() as nursery:
        port, shutdown = await start(nursery, App())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n")
        answer = await read_until_closed(stream)
        assert answer.startswith(b"HTTP/1.1 400")
        shutdown.set()


async def test_an_answer_before_the_body_was_read_reaches_the_client() -> None:
    async with trio.open_nursery() as nursery:
        port, shutdown = await start(nursery, App())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        big = b"x" * (4 << 20)
        head = b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big)
        await stream.send_all(head)
        got = b""
        async with trio.open_nursery() as inner:

            async def upload() -> None:
                with contextlib.suppress(trio.BrokenResourceError):  # the server shut its side
                    await stream.send_all(big)

            inner.start_soon(upload)
            got = await read_until_closed(stream)
            inner.cancel_scope.cancel()
        assert got.startswith(b"HTTP/1.1 413")
        shutdown.set()


async def test_slow_headers_are_closed_by_the_idle_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_server, "IDLE_AND_HEADER_TIMEOUT_S", 0.3)
    async with trio.open_nursery() as nursery:
        port, shutdown = await start(nursery, App())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\n")  # never finished
        started = trio.current_time()
        assert await read_until_closed(stream, 3.0) == b""
        assert trio.current_time() - started < 2.0
        shutdown.set()


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    async with trio.open_nursery() as nursery:
        port, shutdown = await start(nursery, App())
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        head = post("/echo", b"hello", b"Expect: 100-continue\r\n")[: -len(b"hello")]
        await stream.send_all(head)
        with trio.fail_after(2):
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 100")
        await stream.send_all(b"hello")
        with trio.fail_after(2):
            assert b"/echo:hello" in await stream.receive_some(65536)
        shutdown.set()


async def test_shutdown_lets_the_request_in_flight_finish_and_closes_idle_ones() -> None:
    app = App()
    async with trio.open_nursery() as nursery:
        port, shutdown = await start(nursery, app)
        busy = await trio.open_tcp_stream("127.0.0.1", port)
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        await busy.send_all(post("/slow", b"work"))
        await trio.sleep(0.1)
        shutdown.set()
        with trio.fail_after(2):
            assert await read_until_closed(idle) == b""
        app.release.set()
        with trio.fail_after(3):
            assert b"/slow:work" in await read_until_closed(busy)


async def test_message_for_a_gone_client_is_dropped() -> None:
    """A send after the client left must not raise into the app (the relay learns of
    the hang-up from `receive`, and its clean-up must run)."""
    sent: list[Message] = []
    done = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await trio.sleep(0.2)  # the client closes meanwhile
        for _ in range(50):
            message = {"type": "http.response.body", "body": b"x" * 65536, "more_body": True}
            await send(message)
            sent.append(message)
        done.set()

    async with trio.open_nursery() as nursery:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        shutdown = trio.Event()
        await nursery.start(serve_app, app, "127.0.0.1", port, shutdown)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(post("/x", b""))
        await stream.aclose()
        with trio.fail_after(3):
            await done.wait()
        assert len(sent) == 50
        shutdown.set()
