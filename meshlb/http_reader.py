"""The reading side of one client connection of `meshlb.http_server`: the request's own
reads, and at most one background reader per connection that watches for the client's
hang-up while the app answers.

Why a reader per connection, not a watcher per request: a relay must cancel its
upstream request when the client leaves, and plain ASGI says so only through
`receive()`, so each relay opened a nursery and a task calling `receive` per request
(~8 % of a node's samples on a tiny proxied request, issue 13). Here the reader task
is started once, on the first request that wants it, and woken per request; a hang-up
cancels the cancel scopes the app registered (`scope["extensions"]["meshlb.disconnect"]`)
and sets `hung_up`, which `receive()` waits on for apps that use plain ASGI.

Who reads the socket: at any moment either the connection's task (a request's head
and body) or the background reader, never both (Trio refuses two waiters). Once woken,
the background reader reads (buffering a pipelined next request in h11) until the
client hangs up, MAX_BUFFERED_BYTES arrived, or the connection's task wants bytes: it
then hands the socket over after its next read instead of being cancelled, so a
request costs a wake-up, not a cancellation.
"""

from __future__ import annotations

import h11
import structlog
import trio

log = structlog.get_logger()

DISCONNECT_EXTENSION = "meshlb.disconnect"  # scope extension: takes a cancel scope
READ_BYTES = 65536
MAX_BUFFERED_BYTES = 65536  # read by the watcher in one request cycle (a pipelined next)


class ClientReader:
    """Reads one client connection into its h11 state machine; reports the hang-up."""

    def __init__(self, stream: trio.SocketStream, conn: h11.Connection, spawn: trio.Nursery):
        self.stream = stream
        self.h11 = conn
        self.gone = False  # the client hung up (or the socket broke)
        self.hung_up = trio.Event()
        self._spawn = spawn  # where the watcher runs (the server's connection nursery)
        self._watchers: list[trio.CancelScope] = []  # of the current request
        self._watching = False  # the watcher owns the socket (else it is parked)
        self._handover: trio.Event | None = None  # set: the connection's task waits
        self._buffered = 0
        self._lot: trio.lowlevel.ParkingLot | None = None  # None: watcher not started
        self._cancel = trio.CancelScope()  # ends the watcher with the connection
        self._closed = False

    def hang_up(self) -> None:
        """The client is gone: cancel the registered scopes, wake `hung_up` waiters."""
        if self.gone:
            return
        self.gone = True
        self.hung_up.set()
        for scope in self._watchers:
            scope.cancel()
        self._watchers.clear()

    def cancel_on_hang_up(self, scope: trio.CancelScope) -> None:
        """The `meshlb.disconnect` extension: `scope` is cancelled if the client leaves
        before the current request's answer is done (at once if it already left)."""
        if self.gone:
            scope.cancel()
            return
        self._watchers.append(scope)
        self.watch()

    def next_cycle(self) -> None:
        """A request is done; the scopes registered for it no longer apply."""
        self._watchers.clear()
        self._buffered = 0

    def close(self) -> None:
        self._closed = True
        self._cancel.cancel()

    def watch(self) -> None:
        """Have the watcher read until the hang-up (or a handover); a no-op if it
        already reads, the client left, or enough of a next request is buffered."""
        if self._watching or self.gone or self._closed or self._buffered >= MAX_BUFFERED_BYTES:
            return
        self._watching = True
        if self._lot is None:
            self._lot = trio.lowlevel.ParkingLot()
            self._spawn.start_soon(self._watcher)
        else:
            self._lot.unpark()

    async def read(self) -> None:
        """The connection's task needs bytes: feed h11 one read (an empty one is a
        hang-up); if the watcher owns the socket, wait for its next read instead."""
        if self.gone:
            self.h11.receive_data(b"")
        elif self._watching:
            await self.take_back()
        else:
            await self._read_once()

    async def take_back(self) -> None:
        """Return once the watcher no longer reads (after its next read, which may be
        the hang-up), so the caller may read the socket itself."""
        if self._watching:
            handover = self._handover = trio.Event()
            await handover.wait()

    async def _read_once(self) -> int:
        try:
            data = await self.stream.receive_some(READ_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.hang_up()
        elif self.gone:  # a write failed meanwhile: h11 may be closed, the rest is moot
            return 0
        self.h11.receive_data(data)
        return len(data)

    async def _watcher(self) -> None:
        """Read while watching; park in between. Its own bug ends its connection only."""
        assert self._lot is not None
        with self._cancel:
            try:
                while True:
                    while not self.gone and self._buffered < MAX_BUFFERED_BYTES:
                        self._buffered += await self._read_once()
                        if self._handover is not None:
                            break
                    # No checkpoint from here to `park`: not watching means parked.
                    self._watching = False
                    if self._handover is not None:
                        self._handover.set()
                        self._handover = None
                    await self._lot.park()
            except Exception:
                log.exception("the connection's hang-up watcher failed")
                self.hang_up()
                self._watching = False
                if self._handover is not None:
                    self._handover.set()
                self.stream.socket.close()
