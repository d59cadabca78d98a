"""The shipped drivers' transports over `MemoryNetwork`, in Trio time.

`MemoryNetwork` decides what happens to each datagram and stream (loss, delay,
duplication, partitions, crashes); this module makes it carry real bytes between
real drivers, the way trio's own `trio.testing` fake network does: every endpoint
has an inbox ordered by arrival time, senders never block, and time is
`trio.current_time()`, so under a `MockClock` a thousand nodes' traffic costs no
waiting at all.

- `MemoryGossipTransport` is the `GossipTransport` of one address (datagrams, and
  push-pull streams answered by the handler the driver serves).
- `MemoryRequests` is the `RequestTransport` of one node id (the ownership mailer's
  batches, answered by the handler registered for the peer).

A crashed address (`MemoryNetwork.crash`) gets nothing, and what was in flight to it
is dropped on arrival: its process is gone.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Awaitable, Callable

import trio

from meshlb.drivers.transport import Addr, RequestFailed, StreamHandler
from meshlb.drivers.wakeup import Wakeup
from meshlb.testing.memnet import MemoryNetwork

RequestHandler = Callable[[bytes], Awaitable[bytes]]


class TrioNetwork:
    """One `MemoryNetwork` with the endpoints bound to it."""

    def __init__(self, model: MemoryNetwork) -> None:
        self.model = model
        self._gossip: dict[Addr, MemoryGossipTransport] = {}
        self._streams: dict[Addr, StreamHandler] = {}
        self._requests: dict[str, tuple[Addr, RequestHandler]] = {}
        self._seq = itertools.count()

    def gossip_transport(self, addr: Addr) -> MemoryGossipTransport:
        return MemoryGossipTransport(self, addr)

    def serve_requests(self, node_id: str, addr: Addr, handler: RequestHandler) -> None:
        """Requests to `node_id` are answered by `handler` (until `forget`)."""
        self._requests[node_id] = (addr, handler)

    def requests_from(self, addr: Addr) -> MemoryRequests:
        return MemoryRequests(self, addr)

    def forget(self, addr: Addr) -> None:
        """The process at `addr` is gone: its endpoints stop answering."""
        self._gossip.pop(addr, None)
        self._streams.pop(addr, None)
        for node_id in [n for n, (a, _) in self._requests.items() if a == addr]:
            del self._requests[node_id]

    # ---- delivery ----------------------------------------------------------------

    def deliver_datagram(self, src: Addr, dst: Addr, data: bytes) -> None:
        endpoint = self._gossip.get(dst)
        if endpoint is None:
            self.model.sent += 1
            self.model.dropped += 1
            return
        for at in self.model.route(src, dst, trio.current_time()):
            endpoint.arrive(at, next(self._seq), data, src)

    async def stream(self, src: Addr, dst: Addr, call: Callable[[], Awaitable[bytes]]) -> bytes:
        """One request/reply over a stream from src to dst: half the round trip each
        way; an unreachable peer fails after the round trip, as a reset would."""
        now = trio.current_time()
        at = self.model.route_stream(src, dst, now)
        if at is None:
            await trio.sleep(2 * self.model.link.delay_max_s)
            raise OSError(f"{dst} unreachable")
        half = (at - now) / 2
        await trio.sleep(half)
        if self.model.is_down(dst):
            raise OSError(f"{dst} is down")
        reply = await call()
        await trio.sleep(half)
        return reply


class MemoryGossipTransport:
    """The datagram inbox and push-pull service of one address."""

    def __init__(self, net: TrioNetwork, addr: Addr) -> None:
        self.net, self.addr = net, addr
        self._inbox: list[tuple[float, int, bytes, Addr]] = []
        self._arrived = Wakeup()

    async def open(self) -> Addr:
        self.net._gossip[self.addr] = self
        return self.addr

    def close(self) -> None:
        if self.net._gossip.get(self.addr) is self:
            del self.net._gossip[self.addr]
            self.net._streams.pop(self.addr, None)

    def arrive(self, at: float, seq: int, data: bytes, src: Addr) -> None:
        heapq.heappush(self._inbox, (at, seq, data, src))
        self._arrived.kick()

    async def send(self, data: bytes, addr: Addr) -> None:
        self.net.deliver_datagram(self.addr, addr, data)

    async def receive(self) -> tuple[bytes, Addr]:
        while True:
            self._arrived.rearm()
            inbox = self._inbox
            if inbox and inbox[0][0] <= trio.current_time():
                _, _, data, src = heapq.heappop(inbox)
                return data, src
            await self._arrived.sleep_until(inbox[0][0] if inbox else None)

    async def exchange(self, addr: Addr, frame: bytes, timeout_s: float) -> bytes:
        async def call() -> bytes:
            handler = self.net._streams.get(addr)
            if handler is None:
                raise OSError(f"nothing listens at {addr}")
            reply = await handler(frame, self.addr)
            if reply is None:
                raise EOFError("the peer closed without a reply")
            return reply

        with trio.fail_after(timeout_s):
            return await self.net.stream(self.addr, addr, call)

    async def serve(
        self, handler: StreamHandler, on_error: Callable[[Exception, object], None],
        timeout_s: float,
    ) -> None:  # fmt: skip
        async def guarded(frame: bytes, peer: Addr) -> bytes | None:
            try:
                with trio.fail_after(timeout_s):
                    return await handler(frame, peer)
            except Exception as e:
                on_error(e, peer)
                return None

        self.net._streams[self.addr] = guarded
        await trio.sleep_forever()


class MemoryRequests:
    """`RequestTransport` of the node at `addr`: peers by node id."""

    def __init__(self, net: TrioNetwork, addr: Addr) -> None:
        self.net, self.addr = net, addr

    async def request(self, peer: str, body: bytes) -> bytes:
        target = self.net._requests.get(peer)
        if target is None:
            raise RequestFailed("no_address")
        dst, _ = target

        async def call() -> bytes:
            now_target = self.net._requests.get(peer)
            if now_target is None or now_target[0] != dst:  # it died meanwhile
                raise OSError(f"{peer} is gone")
            try:
                return await now_target[1](body)
            except Exception as e:
                raise RequestFailed("refused", repr(e)) from e

        try:
            return await self.net.stream(self.addr, dst, call)
        except OSError as e:
            raise RequestFailed("send_error", str(e)) from e
