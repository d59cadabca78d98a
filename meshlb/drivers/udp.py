"""The gossip transport of a node: one UDP socket (probes and gossip) and one TCP
listener (push-pull) on the same port number, as memberlist does.

Push-pull frames are a 4-byte big-endian length + the (sealed) msgpack frame, one
request and one reply per connection.
"""

from __future__ import annotations

import socket as stdsocket
import struct
from collections.abc import Callable

import trio

from meshlb.drivers.transport import Addr, StreamHandler
from meshlb.gossip.wire import MAX_STREAM_BYTES

_LEN = struct.Struct(">I")


class FrameTooLarge(ValueError):
    """A push-pull frame header announcing more than MAX_STREAM_BYTES."""


async def _read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise EOFError("stream closed mid-frame")
        buf += chunk
    return bytes(buf)


async def read_frame(stream: trio.abc.ReceiveStream) -> bytes:
    (n,) = _LEN.unpack(await _read_exactly(stream, 4))
    if n > MAX_STREAM_BYTES:
        raise FrameTooLarge(f"frame of {n} bytes is over the limit")
    return await _read_exactly(stream, n)


async def write_frame(stream: trio.abc.SendStream, data: bytes) -> None:
    await stream.send_all(_LEN.pack(len(data)) + data)


class UdpTransport:
    """`GossipTransport` over real sockets, bound to `bind` by `open()`."""

    def __init__(self, bind: Addr) -> None:
        self.bind = bind
        self._sock: trio.socket.SocketType | None = None
        self._listeners: list[trio.SocketListener] = []

    async def open(self) -> Addr:
        """UDP and TCP on the same port. With port 0 the OS picks the UDP port, and the
        TCP port of that number may be taken: then try another (a few times)."""
        for attempt in range(20):
            sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
            try:
                await sock.bind(self.bind)
                port = sock.getsockname()[1]
                self._listeners = await trio.open_tcp_listeners(port, host=self.bind[0])
            except OSError:
                sock.close()
                if self.bind[1] != 0 or attempt == 19:
                    raise
                continue
            self._sock = sock
            return (self.bind[0], port)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    async def send(self, data: bytes, addr: Addr) -> None:
        assert self._sock is not None
        await self._sock.sendto(data, addr)

    async def receive(self) -> tuple[bytes, Addr]:
        assert self._sock is not None
        while True:
            try:
                data, src = await self._sock.recvfrom(65536)
            except OSError:  # e.g. ICMP port unreachable surfaced on some platforms
                continue
            return data, (src[0], src[1])

    async def exchange(self, addr: Addr, frame: bytes, timeout_s: float) -> bytes:
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(*addr)
            async with stream:
                await write_frame(stream, frame)
                return await read_frame(stream)

    async def serve(
        self, handler: StreamHandler, on_error: Callable[[Exception, object], None],
        timeout_s: float,
    ) -> None:  # fmt: skip
        async def one(stream: trio.SocketStream) -> None:
            peer: object = "?"
            try:
                name = stream.socket.getpeername()
                peer = (name[0], name[1])
                with trio.fail_after(timeout_s):
                    reply = await handler(await read_frame(stream), (name[0], name[1]))
                    if reply is not None:
                        await write_frame(stream, reply)
            except Exception as e:
                on_error(e, peer)
            finally:
                await stream.aclose()

        await trio.serve_listeners(one, self._listeners)
