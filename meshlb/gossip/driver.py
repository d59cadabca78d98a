"""Trio driver: one UDP socket (probes and gossip) and one TCP listener (push-pull) on
the same port number, as memberlist does, around the pure `Membership` core.

Loop: receive -> core -> send -> sleep until `core.next_deadline()`. Time is
`trio.current_time()`, so a `MockClock` drives it in tests. Push-pull frames are a
4-byte big-endian length + the (sealed) msgpack frame, one request and one reply per
connection.

No single input may stop the driver: whatever goes wrong while handling one datagram,
one push-pull stream or one outgoing packet is counted under a reason of
`meshlb.gossip.drops` (`dropped`), logged at warning at most once per reason per
30 s (no traceback), and dropped; the loops go on.
"""

from __future__ import annotations

import math
import os
import random
import socket as stdsocket
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from meshlb.gossip import drops
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.crypto import Keyring
from meshlb.gossip.events import Event
from meshlb.gossip.membership import Membership
from meshlb.gossip.messages import Addr, PushPull
from meshlb.gossip.table import MemberView
from meshlb.gossip.wire import MAX_STREAM_BYTES

STREAM_TIMEOUT_S = 5.0
_LEN = struct.Struct(">I")


class FrameTooLarge(ValueError):
    """A push-pull frame header announcing more than MAX_STREAM_BYTES."""


# How a failed push-pull stream is counted: a drop reason, or None for the network
# simply failing (a dead peer, a reset), which is only a `stream_errors` stat.
# Anything not listed is a handler error. Looked up along the exception's MRO.
_STREAM_FAILURES: dict[type[BaseException], str | None] = {
    trio.TooSlowError: drops.STREAM_TIMEOUT,
    FrameTooLarge: drops.OVERSIZED,
    EOFError: drops.MALFORMED,  # the peer closed in the middle of a frame
    trio.BrokenResourceError: None,
    trio.ClosedResourceError: None,
    OSError: None,
}


def stream_failure_reason(error: BaseException) -> str | None:
    for cls in type(error).__mro__:
        if cls in _STREAM_FAILURES:
            return _STREAM_FAILURES[cls]
    return drops.HANDLER_ERROR


def _describe(error: BaseException) -> str:
    """One short line for a log (never a traceback: a flood must not fill the disk)."""
    return f"{type(error).__name__}: {error}"[:200]


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
             "streams_out", "streams_in", "stream_errors", "events_dropped", "tick_errors"),
            0,
        )  # fmt: skip
        self._drops = drops.DropCounter()
        self._throttle = drops.LogThrottle()
        self._core_drops_seen: dict[str, int] = {}

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

    @property
    def dropped(self) -> Mapping[str, int]:
        """Gossip input and output dropped since start, by reason (`drops.DROP_REASONS`,
        every one present, zeros included): what the node exports as
        `meshlb_gossip_packets_dropped_total{reason}`. A fresh dict on every read."""
        core = self._core
        parts = [self._drops.snapshot()] + ([core.dropped()] if core is not None else [])
        return drops.merged(parts)

    def subscribe(self) -> trio.MemoryReceiveChannel[Event]:
        send, recv = trio.open_memory_channel[Event](1000)
        self._subscribers.append(send)
        return recv

    # ---- running ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock, listeners = await self._bind()
        port = sock.getsockname()[1]
        if self.advertise[1] == 0:
            self.advertise = (self.advertise[0], port)
        self._sock = sock
        now = trio.current_time()
        self._core = core = Membership(
            self.config, self.node_id, self.advertise, self._meta, self._rng, now, self._keyring,
            nonces=os.urandom,  # AES-GCM nonces: from the OS, never from a seeded PRNG
            boot_epoch_us=time.time_ns() // 1000,  # replay sequence: above our previous life
        )  # fmt: skip
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

    async def _bind(self) -> tuple[trio.socket.SocketType, list[trio.SocketListener]]:
        """UDP and TCP on the same port. With port 0 the OS picks the UDP port, and the
        TCP port of that number may be taken: then try another (a few times)."""
        for attempt in range(20):
            sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
            try:
                await sock.bind(self.bind)
                port = sock.getsockname()[1]
                return sock, await trio.open_tcp_listeners(port, host=self.bind[0])
            except OSError:
                sock.close()
                if self.bind[1] != 0 or attempt == 19:
                    raise
        raise AssertionError("unreachable")

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
            try:
                core.tick(trio.current_time())
            except Exception as e:  # a core bug must not stop gossip; back off a little
                self._stats["tick_errors"] += 1
                self._warn("gossip timer failed", "tick_error", e)
                await trio.sleep(self.config.probe_timeout_s)
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
            try:
                core.receive(data, (src[0], src[1]), trio.current_time())
            except Exception as e:  # a bug on one datagram must not stop the node
                self._drop(drops.HANDLER_ERROR, e, src)
            await self._flush()
            self._kick.set()

    async def _flush(self) -> None:
        core, sock = self._core, self._sock
        assert core is not None and sock is not None
        for dg in core.datagrams_to_send():
            try:
                data = core.encode(dg)
                await sock.sendto(data, dg.addr)
            except Exception as e:  # OSError, or ValueError/UnicodeError on a bad address
                self._stats["send_errors"] += 1
                self._drop(drops.SEND_ERROR, e, dg.addr)
                continue
            self._stats["packets_out"] += 1
            self._stats["bytes_out"] += len(data)
        for req in core.streams_to_send():
            assert self._nursery is not None
            self._nursery.start_soon(self._push_pull, req.addr, req.message)
        self._publish(core.events())
        self._log_core_drops(core.dropped())
        self._flushed.set()
        self._flushed = trio.Event()

    async def _push_pull(self, addr: Addr, message: PushPull) -> None:
        """Our push-pull request to `addr` and its answer, over one TCP connection."""
        core = self._core
        assert core is not None
        self._stats["streams_out"] += 1
        try:
            frame = core.encode_push_pull(message)
            with trio.fail_after(STREAM_TIMEOUT_S):
                stream = await trio.open_tcp_stream(*addr)
                async with stream:
                    await write_frame(stream, frame)
                    reply = await read_frame(stream)
            core.receive_push_pull(reply, addr, trio.current_time())
        except Exception as e:
            self._stream_failed(e, addr)
        await self._flush()
        self._kick.set()

    async def _serve_push_pull(self, stream: trio.SocketStream) -> None:
        """A peer's push-pull request: merge it, answer with our state, close."""
        core = self._core
        assert core is not None
        self._stats["streams_in"] += 1
        peer: object = "?"
        try:
            name = stream.socket.getpeername()
            peer = (name[0], name[1])
            with trio.fail_after(STREAM_TIMEOUT_S):
                request = await read_frame(stream)
                reply = core.handle_push_pull(request, (name[0], name[1]), trio.current_time())
                if reply is not None:
                    await write_frame(stream, core.encode_push_pull(reply))
        except Exception as e:
            self._stream_failed(e, peer)
        finally:
            await stream.aclose()
        await self._flush()
        self._kick.set()

    # ---- dropping ------------------------------------------------------------------

    def _stream_failed(self, error: Exception, peer: object) -> None:
        self._stats["stream_errors"] += 1
        reason = stream_failure_reason(error)
        if reason is not None:
            self._drop(reason, error, peer)

    def _drop(self, reason: str, error: BaseException, peer: object) -> None:
        """Count one dropped datagram/stream and log it (throttled, no traceback)."""
        self._drops.add(reason)
        self._warn("gossip input dropped", reason, error, peer=peer)

    def _warn(self, what: str, reason: str, error: BaseException, **fields: object) -> None:
        held = self._throttle.admit(reason, trio.current_time())
        if held is not None:
            self.log.warning(what, reason=reason, error=_describe(error), held_back=held, **fields)

    def _log_core_drops(self, now_counts: dict[str, int]) -> None:
        """What the core dropped while decoding (bad bytes, wrong key...), throttled."""
        seen = self._core_drops_seen
        if now_counts == seen:
            return
        for reason, n in now_counts.items():
            delta = n - seen.get(reason, 0)
            if delta > 0:
                held = self._throttle.admit(reason, trio.current_time(), delta)
                if held is not None:
                    self.log.warning("gossip input dropped", reason=reason, held_back=held)
        self._core_drops_seen = now_counts

    def _publish(self, events: list[Event]) -> None:
        for ev in events:
            level, what, fields = ev.describe(self.node_id)
            getattr(self.log, level)(what, **fields)
            for ch in self._subscribers:
                try:
                    ch.send_nowait(ev)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    self._stats["events_dropped"] += 1
