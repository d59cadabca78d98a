"""The node's HTTP/1.1 client for its hops (to the local Ollama, to peers): Trio
streams, and a LIFO stack of idle connections per origin.

Why not httpx: on the relay path it was the largest single cost (py-spy, issue 13:
httpx + httpcore 38 % of the node's samples under load, 15 % in httpcore's
`_assign_requests_to_connections` alone). httpcore's pool walks every connection and
every queued request on each request and each release, under one lock; with the
hundreds of warm connections a node keeps to its Ollama that is O(n) per request and
O(n²) per burst, which is where 50 streams started at once lost ~190 ms before their
first chunk. A hop needs none of httpx's cookies, redirects, auth or URL models either.

Here a request pops the newest idle connection of its origin (O(1), no lock: Trio is
one thread and nothing here awaits between pop and use) or opens one; concurrency to
Ollama is bounded by the scheduler, not by the pool. A connection goes back on the
stack when its response was read to the end and both sides may keep it; a response
abandoned mid-body (client gone, deadline) closes its socket, so no half-read
connection is ever reused. An idle connection older than `idle_expiry_s`, or one the
server has closed (readable while idle), is dropped instead of reused; a reused one
that fails before any byte of the answer is retried once on a fresh connection (the
server closed it as the request left, so it was not processed).
The framing is `meshlb.http_wire` (sans-I/O; h11 cost a fifth of a proxied request).
"""

from __future__ import annotations

import select
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from meshlb.http_wire import ResponseReader, WireError, request_bytes

CHUNK_BYTES = 65536


class UpstreamError(Exception):
    """The upstream could not be reached or broke the answer; `reason` is a sentence
    fragment ("is not reachable ...") that follows the upstream's name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


NOT_REACHABLE = "is not reachable (connection refused or host down)"
NO_ANSWER_IN_TIME = "did not answer in time"
CLOSED_MID_ANSWER = "closed the connection mid-answer"
MALFORMED = "sent a malformed HTTP answer"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a connection goes: host and port, and the Host header naming them."""

    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url if "//" in url else f"http://{url}")
        if parts.scheme not in ("http", ""):
            raise ValueError(f"only http:// upstreams are supported, not {url!r}")
        return cls(parts.hostname or "127.0.0.1", parts.port or 80)

    @property
    def host_header(self) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}".encode()


class _Conn:
    """One keep-alive connection."""

    __slots__ = ("cycle", "idle_since", "origin", "stream")

    def __init__(self, origin: Origin, stream: trio.SocketStream) -> None:
        self.origin = origin
        self.stream = stream
        self.idle_since = 0.0
        # Exchanges completed on it: a response closed after its exchange completed
        # must not touch the connection, which may carry another exchange by then.
        self.cycle = 0

    def close(self) -> None:
        """Close now, without awaiting (safe inside a cancelled scope)."""
        self.stream.socket.close()

    def closed_by_peer(self) -> bool:
        """An idle connection with something to read was closed (or broken) by the
        server: HTTP/1.1 servers send nothing unasked."""
        try:
            readable, _, _ = select.select([self.stream.socket.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


class UpstreamResponse:
    """A response whose body is still to be read: `aread()` or `aiter_raw()` once,
    then `aclose()` (also when the body was not read: the connection is then closed).

    `aiter_raw` yields the body as it arrives, de-chunked but not decoded (the relay
    forwards Ollama's bytes as they are)."""

    __slots__ = ("_body", "_on_close", "headers", "status_code")

    def __init__(
        self,
        status_code: int,
        headers: dict[str, str],
        body: AsyncIterator[bytes],
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self._body = body
        self._on_close = on_close

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self._body

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self._body])

    async def aclose(self) -> None:
        self._on_close()


class HttpPool:
    """Keep-alive HTTP/1.1 connections to any number of origins."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 5.0,
        max_idle_per_origin: int = 64,
        idle_expiry_s: float = 4.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_expiry_s = idle_expiry_s
        self._clock = clock
        self._idle: dict[Origin, list[_Conn]] = {}
        self.opened = 0  # connections opened so far (tests, benchmarks)

    def idle_count(self, origin: Origin) -> int:
        return len(self._idle.get(origin, ()))

    async def aclose(self) -> None:
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()

    def _checkout(self, origin: Origin) -> _Conn | None:
        stack = self._idle.get(origin)
        oldest_ok = self._clock() - self.idle_expiry_s
        while stack:
            conn = stack.pop()
            if conn.idle_since >= oldest_ok and not conn.closed_by_peer():
                return conn
            conn.close()
        return None

    def _release(self, conn: _Conn, keep_alive: bool) -> None:
        """Back on the stack if the answer allows another request on it."""
        conn.cycle += 1
        stack = self._idle.setdefault(conn.origin, [])
        if keep_alive and len(stack) < self.max_idle_per_origin:
            conn.idle_since = self._clock()
            stack.append(conn)
        else:
            conn.close()

    async def _connect(self, origin: Origin) -> _Conn:
        with trio.move_on_after(self.connect_timeout_s) as scope:
            try:
                stream = await trio.open_tcp_stream(origin.host, origin.port)
            except OSError as e:
                raise UpstreamError(NOT_REACHABLE) from e
        if scope.cancelled_caught:
            raise UpstreamError(NO_ANSWER_IN_TIME)
        self.opened += 1
        return _Conn(origin, stream)

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None = None,
    ) -> UpstreamResponse:
        """Send the request; return once the status line and headers are in."""
        conn = self._checkout(origin)
        if conn is not None:
            try:
                return await self._exchange(conn, method, target, headers, body)
            except _NothingReceived:
                pass  # closed by the server as the request left: once more, fresh
        try:
            return await self._exchange(await self._connect(origin), method, target, headers, body)
        except _NothingReceived as e:
            raise UpstreamError(CLOSED_MID_ANSWER) from e

    async def _exchange(
        self,
        conn: _Conn,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
    ) -> UpstreamResponse:
        out = request_bytes(
            method.encode(), target.encode(), conn.origin.host_header, headers, body
        )
        reader = ResponseReader(head_request=method == "HEAD")
        try:
            try:
                await conn.stream.send_all(out)
            except trio.BrokenResourceError as e:
                raise _NothingReceived from e
            while (head := reader.head()) is None:
                await self._read(conn, reader)
        except WireError as e:
            conn.close()
            if not reader.received_any:
                raise _NothingReceived from e
            raise UpstreamError(MALFORMED) from e
        except BaseException:
            conn.close()
            raise
        cycle = conn.cycle
        return UpstreamResponse(
            head.status,
            head.headers,
            self._body(conn, reader, head.keep_alive),
            lambda: self._abandon(conn, cycle),
        )

    def _abandon(self, conn: _Conn, cycle: int) -> None:
        """A response closed before its body was read to the end: close the socket."""
        if conn.cycle == cycle:
            conn.close()

    async def _read(self, conn: _Conn, reader: ResponseReader) -> None:
        try:
            data = await conn.stream.receive_some(CHUNK_BYTES)
        except trio.BrokenResourceError:
            data = b""
        reader.feed(data)

    async def _body(
        self, conn: _Conn, reader: ResponseReader, keep_alive: bool
    ) -> AsyncIterator[bytes]:
        try:
            while True:
                data = reader.body()
                if data:
                    yield data
                if reader.done:
                    self._release(conn, keep_alive)
                    return
                await self._read(conn, reader)
        except WireError as e:
            conn.close()
            raise UpstreamError(CLOSED_MID_ANSWER) from e
        except BaseException:
            if not reader.done:
                conn.close()
            raise


class _NothingReceived(Exception):
    """The connection ended before any byte of the answer."""
