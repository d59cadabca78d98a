"""Trio driver: one UDP socket (probes and gossip) and one TCP listener (push-pull) on
the same port number, as memberlist does, around the pure `Membership` core.

Loop: receive -> core -> send -> sleep until `core.next_deadline()`. Time is
`trio.current_time()`, so a `MockClock` drives it in tests. Push-pull frames are a
4-byte big-endian length + the (sealed) msgpack frame, one request and one reply per
connection.
"""

from __future__ import annotations

import math
import os
import random
import socket as stdsocket
import struct
from collections.abc import Sequence
from typing import Any

import trio

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.crypto import Keyring
from meshlb.gossip.events import (
    Event,
    JoinSucceeded,
    MemberDied,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberRefuted,
    MemberSuspected,
    MetaChanged,
)
from meshlb.gossip.membership import Membership
from meshlb.gossip.messages import Addr
from meshlb.gossip.table import MemberView
from meshlb.gossip.wire import MAX_STREAM_BYTES

STREAM_TIMEOUT_S = 5.0
_LEN = struct.Struct(">I")


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
        raise ValueError(f"frame of {n} bytes is over the limit")
    return await _read_exactly(stream, n)


async def write_frame(stream: trio.abc.SendStream, data: bytes) -> None:
    await stream.send_all(_LEN.pack(len(data)) + data)


class GossipDriver:
    """Runs one gossip member over UDP/TCP; what node.py uses."""

    def __init__(
        self,
        config: GossipConfig,
        node_id: str,
        bind: Addr,
        advertise: Addr,
        seeds: Sequence[Addr],
        meta: bytes,
        cluster_key: str | None,
        logger: Any,
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.bind = bind
        self.advertise = advertise
        self.seeds = list(seeds)
        self._meta = meta
        self._keyring = Keyring.from_secret(cluster_key) if cluster_key else None
        self.log = logger
        self._rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        self._core: Membership | None = None
        self._sock: trio.socket.SocketType | None = None
        self._nursery: trio.Nursery | None = None
        self._kick = trio.Event()
        self._flushed = trio.Event()  # set (and replaced) after every flush
        self._subscribers: list[trio.MemorySendChannel[Event]] = []
        self._stats = dict.fromkeys(
            ("packets_in", "bytes_in", "packets_out", "bytes_out", "send_errors",
             "streams_out", "streams_in", "stream_errors", "events_dropped"),
            0,
        )  # fmt: skip

    # ---- public API ------------------------------------------------------------

    @property
    def core(self) -> Membership | None:
        return self._core

    @property
    def joined(self) -> bool:
        """True once another member is known alive, or when there were no seeds."""
        if not self.seeds:
            return True
        return self._core is not None and self._core.joined

    def members(self) -> list[MemberView]:
        return self._core.members() if self._core is not None else []

    def update_meta(self, meta: bytes) -> None:
        self._meta = meta
        if self._core is not None:
            self._core.update_meta(meta, trio.current_time())
            self._kick.set()

    async def leave(self, timeout_s: float = 3.0) -> None:
        """Gossip our leave and wait (up to timeout_s) until it has been sent enough."""
        core = self._core
        if core is None:
            return
        core.leave(trio.current_time())
        self._kick.set()
        with trio.move_on_after(timeout_s):
            while core.broadcast_pending(self.node_id):
                flushed = self._flushed
                await flushed.wait()
        self.log.info("gossip left", node=self.node_id)

    def stats(self) -> dict[str, int]:
        s = dict(self._stats)
        if self._core is not None:
            s.update(self._core.stats())
        return s

    def subscribe(self) -> trio.MemoryReceiveChannel[Event]:
        send, recv = trio.open_memory_channel[Event](1000)
        self._subscribers.append(send)
        return recv

    # ---- running ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        await sock.bind(self.bind)
        port = sock.getsockname()[1]
        listeners = await trio.open_tcp_listeners(port, host=self.bind[0])
        if self.advertise[1] == 0:
            self.advertise = (self.advertise[0], port)
        self._sock = sock
        now = trio.current_time()
        self._core = core = Membership(
            self.config, self.node_id, self.advertise, self._meta, self._rng, now, self._keyring
        )
        core.join(self.seeds, now)
        self.log.info("gossip started", node=self.node_id, bind=self.bind, advertise=self.advertise,
                      seeds=self.seeds, encrypted=self._keyring is not None)  # fmt: skip
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(trio.serve_listeners, self._serve_push_pull, listeners)
                nursery.start_soon(self._receive_loop, sock)
                nursery.start_soon(self._timer_loop)
                task_status.started()
        finally:
            sock.close()

    async def _timer_loop(self) -> None:
        core = self._core
        assert core is not None
        while True:
            deadline = core.next_deadline()
            if not math.isfinite(deadline):
                deadline = trio.current_time() + 3600
            with trio.move_on_at(deadline):
                await self._kick.wait()
            self._kick = trio.Event()
            core.tick(trio.current_time())
            await self._flush()

    async def _receive_loop(self, sock: trio.socket.SocketType) -> None:
        core = self._core
        assert core is not None
        while True:
            try:
                data, src = await sock.recvfrom(65536)
            except OSError:  # e.g. ICMP port unreachable surfaced on some platforms
                continue
            self._stats["packets_in"] += 1
            self._stats["bytes_in"] += len(data)
            core.receive(data, (src[0], src[1]), trio.current_time())
            await self._flush()
            self._kick.set()

    async def _flush(self) -> None:
        core, sock = self._core, self._sock
        assert core is not None and sock is not None
        for dg in core.datagrams_to_send():
            data = core.encode(dg)
            try:
                await sock.sendto(data, dg.addr)
                self._stats["packets_out"] += 1
                self._stats["bytes_out"] += len(data)
            except OSError:
                self._stats["send_errors"] += 1
        for req in core.streams_to_send():
            assert self._nursery is not None
            self._nursery.start_soon(self._push_pull, req.addr, core.encode_push_pull(req.message))
        self._publish(core.events())
        self._flushed.set()
        self._flushed = trio.Event()

    async def _push_pull(self, addr: Addr, frame: bytes) -> None:
        core = self._core
        assert core is not None
        self._stats["streams_out"] += 1
        try:
            with trio.fail_after(STREAM_TIMEOUT_S):
                stream = await trio.open_tcp_stream(*addr)
                async with stream:
                    await write_frame(stream, frame)
                    reply = await read_frame(stream)
        except (OSError, EOFError, ValueError, trio.TooSlowError, trio.BrokenResourceError):
            self._stats["stream_errors"] += 1
            return
        core.receive_push_pull(reply, addr, trio.current_time())
        await self._flush()
        self._kick.set()

    async def _serve_push_pull(self, stream: trio.SocketStream) -> None:
        core = self._core
        assert core is not None
        self._stats["streams_in"] += 1
        try:
            peer = stream.socket.getpeername()
            with trio.fail_after(STREAM_TIMEOUT_S):
                request = await read_frame(stream)
                reply = core.handle_push_pull(request, (peer[0], peer[1]), trio.current_time())
                if reply is not None:
                    await write_frame(stream, core.encode_push_pull(reply))
        except (OSError, EOFError, ValueError, trio.TooSlowError, trio.BrokenResourceError):
            self._stats["stream_errors"] += 1
        finally:
            await stream.aclose()
        await self._flush()
        self._kick.set()

    def _publish(self, events: list[Event]) -> None:
        for ev in events:
            _log_event(self.log, self.node_id, ev)
            for ch in self._subscribers:
                try:
                    ch.send_nowait(ev)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    self._stats["events_dropped"] += 1


def _log_event(log: Any, me: str, ev: Event) -> None:
    """One log line per state change, with who said so and at which incarnation."""
    if isinstance(ev, MemberSuspected):
        log.warning("member suspected", node=ev.node, by=ev.by, incarnation=ev.incarnation)
    elif isinstance(ev, MemberDied):
        log.warning("member died", node=ev.node, by=ev.by, incarnation=ev.incarnation)
    elif isinstance(ev, MemberRefuted):
        what = "suspicion of us refuted" if ev.node == me else "member refuted suspicion"
        log.info(what, node=ev.node, accused_by=ev.accused_by, incarnation=ev.incarnation)
    elif isinstance(ev, MemberJoined):
        log.info("member joined", node=ev.node, addr=ev.addr, incarnation=ev.incarnation)
    elif isinstance(ev, MemberLeft):
        log.info("member left", node=ev.node, incarnation=ev.incarnation)
    elif isinstance(ev, MetaChanged):
        log.debug("member meta changed", node=ev.node, incarnation=ev.incarnation)
    elif isinstance(ev, MemberReaped):
        log.info("member reaped", node=ev.node)
    elif isinstance(ev, JoinSucceeded):
        log.info("gossip joined", seed=ev.seed, members=ev.members)
