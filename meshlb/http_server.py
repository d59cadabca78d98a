"""Serve an ASGI app over HTTP/1.1 inside the caller's `trio.run`: h11 on Trio streams,
one task per connection.

Why not hypercorn: it was the floor on the relay paths (issue 13, one core, wrk, a
tiny JSON answer): with a bare ASGI callable it answered 1 650 req/s at c=1 and 2 040
at c=16 (~0.5 ms of CPU a request, a proxied request's whole budget), h11 on Trio
5 840 and 7 670. Its cost is its layering (protocol and stream objects, a task group
and queues per request); the protocol work is h11's, used here too.

What a connection gets:
- the idle timer runs from the connection's start (or its last answer) until a
  request's headers are complete, not reset by bytes that arrive: keep-alive time and
  header timeout in one (5 s closes a slowloris; a pooled client just reconnects);
- a malformed request is answered with h11's status hint (400, 431 ...) and closed;
- `receive()` gives the body as it arrives (100 Continue first if the client waits
  for it), then blocks until the client hangs up and returns `http.disconnect`;
  `scope["extensions"]["meshlb.disconnect"]` takes a cancel scope to cancel on that
  hang-up instead (the relays: no task per request, see `meshlb.http_reader`);
- a response without Content-Length is chunked; one that fits in one message is sent
  with its length in one write; sends after the client left are dropped (the
  disconnect reaches the app through `receive`);
- a request whose body the app did not read (413 early) gets its answer, then the
  write side is shut and the rest drained briefly, so the client reads the answer
  instead of a reset;
- shutdown: listeners close, idle connections close, requests in flight get
  `GRACEFUL_S` to finish.
An exception escaping the app is logged with its traceback (and answered 500 if no
answer began); a hang-up is not an error.
"""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import h11
import structlog
import trio
from hypercorn.config import Config
from starlette.types import ASGIApp, Message

from meshlb.http_reader import DISCONNECT_EXTENSION, ClientReader

log = structlog.get_logger()
GONE = (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError)

IDLE_AND_HEADER_TIMEOUT_S = 5.0
GRACEFUL_S = 5.0
DRAIN_AFTER_UNREAD_S = 1.0
MAX_HEADER_BYTES = 64 * 1024
READ_BYTES = 65536
ASGI = {"version": "3.0", "spec_version": "2.3"}
_SERVER_ERROR = b'{"error": "meshlb hit an internal error; it was logged on the node"}'


class _Date:
    """The Date header, formatted at most once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.value = formatdate(second, usegmt=True).encode()
        return self.value


class _Exchange:
    """One request and its answer: the ASGI `receive` and `send` of one app call."""

    __slots__ = ("body_done", "conn", "done", "head", "head_only", "started")

    def __init__(self, conn: _Connection, head_only: bool) -> None:
        self.conn = conn
        self.head_only = head_only
        self.body_done = False  # the request body was read to its end
        self.head: h11.Response | None = None  # held until the first body message
        self.started = False  # the status line went out (or was handed to h11)
        self.done = False  # the answer's last byte went out

    async def receive(self) -> Message:
        conn = self.conn
        if self.body_done:
            conn.reader.watch()
            await conn.reader.hung_up.wait()
            return {"type": "http.disconnect"}
        if conn.h11.client_is_waiting_for_100_continue:
            await conn.write(conn.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        parts: list[bytes] = []
        while True:
            try:
                event = await conn.next_event(read=not parts)
            except h11.RemoteProtocolError:  # closed mid-body, or bad chunk framing
                conn.reader.hang_up()
                return {"type": "http.disconnect"}
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            elif event is h11.NEED_DATA:
                return {"type": "http.request", "body": b"".join(parts), "more_body": True}
            else:  # the client hung up mid-body
                return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = [(b"date", self.conn.date.now()), *message.get("headers", ())]
            self.head = h11.Response(status_code=message["status"], headers=headers)
            return
        if kind != "http.response.body" or self.done:
            return
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body"))
        c = self.conn.h11
        out = b""
        if self.head is not None:
            head, self.head = self.head, None
            if not more and not any(k.lower() == b"content-length" for k, _ in head.headers):
                head = h11.Response(
                    status_code=head.status_code,
                    headers=[*head.headers, (b"content-length", str(len(body)).encode())],
                )
            out = c.send(head) or b""
            self.started = True
        if body and not self.head_only:
            out += c.send(h11.Data(data=body)) or b""
        if not more:
            out += c.send(h11.EndOfMessage()) or b""
            self.done = True
        if out:
            await self.conn.write(out)


class _Connection:
    """One client connection: requests one after another on an h11 state machine."""

    def __init__(self, server: _Server, stream: trio.SocketStream, spawn: trio.Nursery) -> None:
        self.server = server
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.reader = ClientReader(stream, self.h11, spawn)
        self.date = server.date
        self.idle: trio.CancelScope | None = None  # set while waiting for a request
        try:
            peer = stream.socket.getpeername()
            self.client: tuple[str, int] | None = (str(peer[0]), int(peer[1]))
            here = stream.socket.getsockname()
            self.local: tuple[str, int] | None = (str(here[0]), int(here[1]))
        except OSError:
            self.client = self.local = None

    @property
    def gone(self) -> bool:
        return self.reader.gone

    async def write(self, data: bytes) -> None:
        if self.reader.gone:
            return
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.reader.hang_up()

    async def next_event(self, read: bool = True) -> Any:
        """The next h11 event; NEED_DATA only when `read` is False."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA or not read:
                return event
            await self.reader.read()

    async def serve(self) -> None:
        try:
            while not self.server.closing:
                request = await self._next_request()
                if request is None:
                    return
                if not await self._answer(request):
                    return
        except h11.RemoteProtocolError as e:
            await self._refuse(e.error_status_hint)
        finally:
            self.reader.close()
            self.stream.socket.close()

    async def _next_request(self) -> h11.Request | None:
        event = None
        with trio.move_on_after(IDLE_AND_HEADER_TIMEOUT_S) as self.idle:
            event = await self.next_event()
        self.idle = None
        return event if isinstance(event, h11.Request) else None

    async def _refuse(self, status: int) -> None:
        """Answer a request h11 could not parse, if nothing was answered yet."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = b'{"error": "malformed HTTP request"}'
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        headers.append((b"content-length", str(len(body)).encode()))
        try:
            out = self.h11.send(h11.Response(status_code=status, headers=headers)) or b""
            out += self.h11.send(h11.Data(data=body)) or b""
            out += self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return
        await self.write(out)

    def _scope(self, request: h11.Request) -> dict[str, Any]:
        """The ASGI scope; its `meshlb.disconnect` extension takes a cancel scope."""
        raw_path, _, query = bytes(request.target).partition(b"?")
        return {
            "type": "http",
            "asgi": ASGI,
            "http_version": request.http_version.decode(),
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": list(request.headers),
            "client": self.client,
            "server": self.local,
            "extensions": {DISCONNECT_EXTENSION: self.reader.cancel_on_hang_up},
        }

    async def _answer(self, request: h11.Request) -> bool:
        """Run the app on one request; True if the connection may serve another."""
        exchange = _Exchange(self, request.method == b"HEAD")
        try:
            await self.server.app(self._scope(request), exchange.receive, exchange.send)
        except Exception as e:
            if not (self.gone or _is_hang_up(e)):
                log.exception("unhandled error in the HTTP app", path=request.target.decode())
                await self._server_error(exchange)
            return False
        if not exchange.started:
            await self._server_error(exchange)
            return False
        if not exchange.done or self.gone:
            return False
        if self.h11.their_state is not h11.DONE and not self._rest_of_body_buffered():
            await self._drain_unread()
            return False
        if self.h11.our_state is not h11.DONE:
            return False  # Connection: close, or HTTP/1.0
        self.h11.start_next_cycle()
        self.reader.next_cycle()
        return True

    def _rest_of_body_buffered(self) -> bool:
        """Whether the request's unread rest (often only its end: a GET the app never
        called `receive` for) is already buffered, so the connection stays usable."""
        try:
            while self.h11.their_state is h11.SEND_BODY:
                if self.h11.next_event() is h11.NEED_DATA:
                    return False
        except h11.RemoteProtocolError:
            return False
        return self.h11.their_state is h11.DONE

    async def _server_error(self, exchange: _Exchange) -> None:
        if exchange.started or self.gone:
            return
        exchange.head = None
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        await exchange.send({"type": "http.response.start", "status": 500, "headers": headers})
        await exchange.send({"type": "http.response.body", "body": _SERVER_ERROR})

    async def _drain_unread(self) -> None:
        """The answer went out before the body was read: close the write side, read
        and drop what the client still sends for a moment, so it sees the answer."""
        with trio.move_on_after(DRAIN_AFTER_UNREAD_S):
            try:
                await self.stream.send_eof()
                await self.reader.take_back()
                while await self.stream.receive_some(READ_BYTES):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


def _is_hang_up(exc: BaseException) -> bool:
    """The socket went away under a send (also inside an exception group)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_hang_up(e) for e in exc.exceptions)
    return isinstance(exc, GONE)


class _Server:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.date = _Date()
        self.closing = False
        self.connections: set[_Connection] = set()
        self.idle_closed = trio.Event()

    async def handle(self, stream: trio.SocketStream, spawn: trio.Nursery) -> None:
        conn = _Connection(self, stream, spawn)
        self.connections.add(conn)
        try:
            await conn.serve()
        finally:
            self.connections.discard(conn)
            if self.closing and not self.connections:
                self.idle_closed.set()

    def close_idle(self) -> None:
        """Shutting down: no new requests; connections waiting for one close now."""
        self.closing = True
        for conn in list(self.connections):
            if conn.idle is not None:
                conn.idle.cancel()
        if not self.connections:
            self.idle_closed.set()


async def serve_app(
    app: ASGIApp,
    host: str,
    port: int,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set; `task_status.started()` once the socket listens."""
    server = _Server(app)
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=1024)
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            for listener in listeners:
                accepting.start_soon(_accept_loop, listener, server, connections)
            task_status.started()
            await shutdown.wait()
            accepting.cancel_scope.cancel()
        for listener in listeners:
            await listener.aclose()
        server.close_idle()
        with trio.move_on_after(GRACEFUL_S):
            await server.idle_closed.wait()
        connections.cancel_scope.cancel()


async def _accept_loop(
    listener: trio.SocketListener, server: _Server, connections: trio.Nursery
) -> None:
    """Accept forever; each connection runs in `connections` (it outlives accepting)."""
    while True:
        try:
            stream = await listener.accept()
        except OSError as e:  # EMFILE and friends: wait and try again
            log.warning("accept failed", error=str(e))
            await trio.sleep(0.1)
            continue
        connections.start_soon(server.handle, stream, connections)


class HangUpRacesAreNotErrors(logging.Filter):
    """Drop hypercorn's "Error in ASGI Framework" records whose cause is the socket
    being busy, broken or closed: a client whose framing broke makes hypercorn answer
    its own 400 while the app's answer is going out, and the two senders collide."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, GONE)


def hypercorn_config(host: str, port: int) -> Config:
    """Hypercorn's settings for `meshlb sim-ollama`, which stays on hypercorn: a
    stand-in Ollama whose own cost is realistic, not minimal."""
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.errorlog.addFilter(HangUpRacesAreNotErrors())
    config.keep_alive_timeout = IDLE_AND_HEADER_TIMEOUT_S
    config.graceful_timeout = GRACEFUL_S
    config.backlog = 1024
    return config
