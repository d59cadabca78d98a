"""Trio driver of the pure `Membership` core over a `GossipTransport`: datagrams for
probes and gossip, request/reply streams for push-pull (`meshlb.drivers.udp` in a node:
UDP and TCP on one port, as memberlist does; `meshlb.testing.memnet_trio` in the
simulator).

Loop: receive -> core -> send -> sleep until `core.next_deadline()`. Time is
`trio.current_time()`, so a `MockClock` drives it in tests.

No single input may stop the driver: whatever goes wrong while handling one datagram,
one push-pull stream or one outgoing packet is counted under a reason of
`meshlb.gossip.drops` (`dropped`), logged at warning at most once per reason per
30 s (no traceback), and dropped; the loops go on.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from meshlb.drivers.transport import GossipTransport
from meshlb.drivers.udp import FrameTooLarge, UdpTransport
from meshlb.drivers.wakeup import Wakeup, deadline_loop
from meshlb.gossip import drops
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.crypto import Keyring
from meshlb.gossip.events import Event
from meshlb.gossip.membership import Membership
from meshlb.gossip.messages import Addr, PushPull
from meshlb.gossip.table import MemberView

STREAM_TIMEOUT_S = 5.0
# With no deadline at all, the timer loop still looks again after this long.
IDLE_TICK_S = 3600.0

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


@dataclass(slots=True)
class DriverStats:
    """What the driver counts (the core counts its own); `stats()` merges both."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    send_errors: int = 0
    streams_out: int = 0
    streams_in: int = 0
    stream_errors: int = 0
    events_dropped: int = 0
    tick_errors: int = 0


class GossipDriver:
    """Runs one gossip member over a transport; what node.py and the simulator use.

    `bind` is where the default transport (UDP + TCP) binds; pass `transport` to run
    on another (then `bind` is unused). `rng`, `nonces` and `boot_epoch_us` are the
    core's randomness and replay epoch: from the OS and the wall clock in a node,
    seeded in a simulation."""

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
        *,
        transport: GossipTransport | None = None,
        rng: random.Random | None = None,
        nonces: Callable[[int], bytes] = os.urandom,
        boot_epoch_us: int | None = None,
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.advertise = advertise
        self.seeds = list(seeds)
        self._meta = meta
        self._keyring = Keyring.from_secret(cluster_key) if cluster_key else None
        self.log = logger
        self._transport = transport if transport is not None else UdpTransport(bind)
        self._rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self._nonces = nonces  # AES-GCM nonces: from the OS, never from a seeded PRNG
        self._boot_epoch_us = boot_epoch_us
        self._core: Membership | None = None
        self._nursery: trio.Nursery | None = None
        self._kick = Wakeup()
        self._flushed = trio.Event()  # set (and replaced) after every flush
        self._subscribers: list[trio.MemorySendChannel[Event]] = []
        self._stats = DriverStats()
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
            self._kick.kick()

    async def leave(self, timeout_s: float = 3.0) -> None:
        """Gossip our leave and wait (up to timeout_s) until it has been sent enough."""
        core = self._core
        if core is None:
            return
        core.leave(trio.current_time())
        self._kick.kick()
        with trio.move_on_after(timeout_s):
            while core.broadcast_pending(self.node_id):
                flushed = self._flushed
                await flushed.wait()
        self.log.info("gossip left", node=self.node_id)

    def stats(self) -> dict[str, int]:
        s = dataclasses.asdict(self._stats)
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
        transport = self._transport
        port = (await transport.open())[1]
        if self.advertise[1] == 0:
            self.advertise = (self.advertise[0], port)
        now = trio.current_time()
        epoch = self._boot_epoch_us
        self._core = core = Membership(
            self.config, self.node_id, self.advertise, self._meta, self._rng, now, self._keyring,
            nonces=self._nonces,
            # replay sequence: above our previous life
            boot_epoch_us=time.time_ns() // 1000 if epoch is None else epoch,
        )  # fmt: skip
        core.join(self.seeds, now)
        self.log.info("gossip started", node=self.node_id, advertise=self.advertise,
                      seeds=self.seeds, encrypted=self._keyring is not None)  # fmt: skip
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(transport.serve, self._serve_push_pull, self._stream_failed,
                                   STREAM_TIMEOUT_S)  # fmt: skip
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(deadline_loop, self._kick, self._timer_step)
                task_status.started()
        finally:
            transport.close()

    async def _timer_step(self, now: float) -> float:
        core = self._core
        assert core is not None
        try:
            core.tick(now)
        except Exception as e:  # a core bug must not stop gossip; back off a little
            self._stats.tick_errors += 1
            self._warn("gossip timer failed", "tick_error", e)
            await trio.sleep(self.config.probe_timeout_s)
        await self._flush()
        deadline = core.next_deadline()
        return deadline if deadline != float("inf") else trio.current_time() + IDLE_TICK_S

    async def _receive_loop(self) -> None:
        core = self._core
        assert core is not None
        while True:
            data, src = await self._transport.receive()
            self._stats.packets_in += 1
            self._stats.bytes_in += len(data)
            try:
                core.receive(data, src, trio.current_time())
            except Exception as e:  # a bug on one datagram must not stop the node
                self._drop(drops.HANDLER_ERROR, e, src)
            await self._flush()
            self._kick.nudge(core.next_deadline())

    async def _flush(self) -> None:
        core = self._core
        assert core is not None
        for dg in core.datagrams_to_send():
            try:
                data = core.encode(dg)
                await self._transport.send(data, dg.addr)
            except Exception as e:  # OSError, or ValueError/UnicodeError on a bad address
                self._stats.send_errors += 1
                self._drop(drops.SEND_ERROR, e, dg.addr)
                continue
            self._stats.packets_out += 1
            self._stats.bytes_out += len(data)
        for req in core.streams_to_send():
            assert self._nursery is not None
            self._nursery.start_soon(self._push_pull, req.addr, req.message)
        self._publish(core.events())
        self._log_core_drops(core.dropped())
        self._flushed.set()
        self._flushed = trio.Event()

    async def _push_pull(self, addr: Addr, message: PushPull) -> None:
        """Our push-pull request to `addr` and its answer, over one stream."""
        core = self._core
        assert core is not None
        self._stats.streams_out += 1
        try:
            frame = core.encode_push_pull(message)
            reply = await self._transport.exchange(addr, frame, STREAM_TIMEOUT_S)
            core.receive_push_pull(reply, addr, trio.current_time())
        except Exception as e:
            self._stream_failed(e, addr)
        await self._flush()
        self._kick.nudge(core.next_deadline())

    async def _serve_push_pull(self, request: bytes, peer: Addr) -> bytes | None:
        """A peer's push-pull request: merge it, answer with our state."""
        core = self._core
        assert core is not None
        self._stats.streams_in += 1
        reply = core.handle_push_pull(request, peer, trio.current_time())
        await self._flush()
        self._kick.nudge(core.next_deadline())
        return None if reply is None else core.encode_push_pull(reply)

    # ---- dropping ------------------------------------------------------------------

    def _stream_failed(self, error: Exception, peer: object) -> None:
        self._stats.stream_errors += 1
        self._kick.kick()
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
                    self._stats.events_dropped += 1
