"""The node's HTTP/1.1 client for its hops (to the local Ollama, to peers): h11 on Trio
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
h11 (the parser hypercorn and httpcore use) does the framing.
"""

from __future__ import annotations

import select
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

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
    """One keep-alive connection and its h11 state."""

    __slots__ = ("cycle", "h11", "idle_since", "origin", "stream")

    def __init__(self, origin: Origin, stream: trio.SocketStream) -> None:
        self.origin = origin
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
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

    def _release(self, conn: _Conn) -> None:
        """Back on the stack if both sides finished the exchange and may keep it."""
        c = conn.h11
        conn.cycle += 1
        if c.our_state is h11.DONE and c.their_state is h11.DONE:
            c.start_next_cycle()
            stack = self._idle.setdefault(conn.origin, [])
            if len(stack) < self.max_idle_per_origin:
                conn.idle_since = self._clock()
                stack.append(conn)
                return
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
        c = conn.h11
        all_headers = [(b"host", conn.origin.host_header), *headers]
        if body is not None:
            all_headers.append((b"content-length", str(len(body)).encode()))
        try:
            out = c.send(h11.Request(method=method, target=target, headers=all_headers))
            if body:
                out += c.send(h11.Data(data=body))
            out += c.send(h11.EndOfMessage())
            try:
                await conn.stream.send_all(out or b"")
            except trio.BrokenResourceError as e:
                raise _NothingReceived from e
            event = await self._next(conn, first=True)
            while isinstance(event, h11.InformationalResponse):
                event = await self._next(conn)
        except BaseException:
            conn.close()
            raise
        if not isinstance(event, h11.Response):
            conn.close()
            raise UpstreamError(CLOSED_MID_ANSWER)
        fields = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
        cycle = conn.cycle
        return UpstreamResponse(
            event.status_code, fields, self._body(conn), lambda: self._abandon(conn, cycle)
        )

    def _abandon(self, conn: _Conn, cycle: int) -> None:
        """A response closed before its body was read to the end: close the socket."""
        if conn.cycle == cycle:
            conn.close()

    async def _body(self, conn: _Conn) -> AsyncIterator[bytes]:
        try:
            while True:
                event = await self._next(conn)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._release(conn)
                    return
                else:
                    raise UpstreamError(CLOSED_MID_ANSWER)
        except BaseException:
            if conn.h11.their_state is not h11.DONE:
                conn.close()
            raise

    async def _next(self, conn: _Conn, first: bool = False) -> h11.Event | type[h11.PAUSED]:
        c = conn.h11
        while True:
            try:
                event = c.next_event()
            except h11.RemoteProtocolError as e:
                raise UpstreamError(CLOSED_MID_ANSWER) from e
            if event is not h11.NEED_DATA:
                if isinstance(event, h11.ConnectionClosed):
                    raise UpstreamError(CLOSED_MID_ANSWER)
                return event  # type: ignore[return-value]
            try:
                data = await conn.stream.receive_some(CHUNK_BYTES)
            except trio.BrokenResourceError as e:
                if first:
                    raise _NothingReceived from e
                raise UpstreamError(CLOSED_MID_ANSWER) from e
            if not data and first:
                raise _NothingReceived
            first = False  # a byte of the answer came: no retry from here on
            c.receive_data(data)


class _NothingReceived(Exception):
    """The connection ended before any byte of the answer."""
