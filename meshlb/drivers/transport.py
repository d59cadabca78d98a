"""The seams between drivers and the network: what a driver needs of it, no more.

Why: the drivers used to open sockets and HTTP clients themselves, so the simulator
could only run copies of them. With these ports the same driver code runs over UDP,
TCP and signed HTTP in a node (`meshlb.drivers.udp`, `meshlb.mesh.mailer`) and over
`meshlb.testing.memnet` under a virtual clock in the simulator.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

Addr = tuple[str, int]


class RequestFailed(Exception):
    """A request got no reply. `reason` is a counter name: no_address (the peer's
    address is unknown), send_error (unreachable, timeout) or refused (it answered
    with an error)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class RequestTransport(Protocol):
    """Node-to-node requests by node id: send one body, get the reply's body."""

    async def request(self, peer: str, body: bytes) -> bytes:
        """The peer's reply; raises `RequestFailed` when there is none."""
        ...


# A push-pull request's handler: (request frame, peer address) -> reply frame or None.
StreamHandler = Callable[[bytes, Addr], Awaitable[bytes | None]]


class GossipTransport(Protocol):
    """Datagrams (probes, gossip) and request/reply streams (push-pull) on one address,
    as memberlist uses UDP and TCP on one port."""

    async def open(self) -> Addr:
        """Bind; returns the bound address (the port the OS chose for port 0)."""
        ...

    def close(self) -> None: ...

    async def send(self, data: bytes, addr: Addr) -> None:
        """Send one datagram (lost silently, as UDP is; raises OSError on a bad address)."""
        ...

    async def receive(self) -> tuple[bytes, Addr]:
        """The next datagram and its sender."""
        ...

    async def exchange(self, addr: Addr, frame: bytes, timeout_s: float) -> bytes:
        """One stream request and its reply (raises on failure or timeout)."""
        ...

    async def serve(
        self,
        handler: StreamHandler,
        on_error: Callable[[Exception, object], None],
        timeout_s: float,
    ) -> None:
        """Answer streams forever: each request frame goes to `handler` and its reply
        back; whatever fails in one stream goes to `on_error(error, peer)`, and the
        serving goes on."""
        ...
