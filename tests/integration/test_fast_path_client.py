"""meshlb's hop client (`meshlb.http_client`) against a scripted server on loopback.

The pool must reuse a connection whose answer was read to the end (one connection
for many requests), never reuse one whose answer was abandoned mid-body, drop one the
server closed while idle (and answer on a fresh one), de-chunk streamed bodies, and
say "not reachable" for a port nobody listens on.
"""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio

from meshlb.http_client import NOT_REACHABLE, HttpPool, Origin, UpstreamError

pytestmark = pytest.mark.integration


class Server:
    """Answers each request on a connection; `/stream` with chunked framing,
    `/close` with `Connection: close`; counts connections accepted."""

    def __init__(self) -> None:
        self.connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(buf) < length:
                buf += await stream.receive_some(65536)
            body, buf = buf[:length], buf[length:]
            path = head.split(b" ")[1]
            if path == b"/stream":
                chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (b"ab", b"cd", b"ef"))
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
                )
                continue
            close = path == b"/close"
            extra = b"Connection: close\r\n" if close else b""
            answer = path + b":" + body
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(answer), extra, answer)
            )
            if close:
                await stream.aclose()
                return


async def start(nursery: trio.Nursery) -> tuple[Server, Origin]:
    server = Server()
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return server, Origin("127.0.0.1", port)


async def test_connection_reused_when_the_answer_was_read_to_the_end() -> None:
    async with trio.open_nursery() as nursery:
        server, origin = await start(nursery)
        pool = HttpPool()
        for i in range(5):
            r = await pool.request(origin, "POST", "/echo", [], b"%d" % i)
            assert await r.aread() == b"/echo:%d" % i
            await r.aclose()
        r = await pool.request(origin, "POST", "/stream", [], b"")
        # complete chunks that arrived together come back as one piece
        assert [c async for c in r.aiter_raw()] == [b"abcdef"]
        await r.aclose()
        assert server.connections == 1 and pool.opened == 1
        assert pool.idle_count(origin) == 1
        nursery.cancel_scope.cancel()


async def test_abandoned_answer_closes_its_connection() -> None:
    async with trio.open_nursery() as nursery:
        _, origin = await start(nursery)
        pool = HttpPool()
        r = await pool.request(origin, "POST", "/stream", [], b"")
        async for _ in r.aiter_raw():
            break
        await r.aclose()
        assert pool.idle_count(origin) == 0
        r = await pool.request(origin, "POST", "/echo", [], b"next")
        assert await r.aread() == b"/echo:next"
        await r.aclose()
        assert pool.opened == 2
        nursery.cancel_scope.cancel()


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    async with trio.open_nursery() as nursery:
        server, origin = await start(nursery)
        pool = HttpPool()
        r = await pool.request(origin, "POST", "/echo", [], b"1")
        await r.aread()
        await r.aclose()
        # The server closes the pooled connection while it is idle.
        r = await pool.request(origin, "POST", "/close", [], b"")
        assert await r.aread() == b"/close:"
        await r.aclose()
        await trio.sleep(0.05)
        r = await pool.request(origin, "POST", "/echo", [], b"after")
        assert await r.aread() == b"/echo:after"
        await r.aclose()
        assert server.connections == 2
        nursery.cancel_scope.cancel()


async def test_idle_connections_expire() -> None:
    now = [0.0]
    async with trio.open_nursery() as nursery:
        _, origin = await start(nursery)
        pool = HttpPool(idle_expiry_s=2.0, clock=lambda: now[0])
        for t in (0.0, 1.0, 5.0):
            now[0] = t
            r = await pool.request(origin, "POST", "/echo", [], b"")
            await r.aread()
            await r.aclose()
        assert pool.opened == 2  # reused at 1 s, expired by 5 s
        nursery.cancel_scope.cancel()


async def test_nobody_listening_is_not_reachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with pytest.raises(UpstreamError) as caught:
        await HttpPool().request(Origin("127.0.0.1", port), "GET", "/", [])
    assert caught.value.reason == NOT_REACHABLE
