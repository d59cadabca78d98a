"""Deterministic discrete-event simulator of N gossip cores on a MemoryNetwork.

It feeds the pure `Membership` cores directly (no tasks, no sockets): one heap of
(time, seq, ...) events, so the same seed always yields the same trace and a failing
run can be replayed. Messages travel as objects by default; `use_codec=True` sends the
real encoded (and, with keys, encrypted) bytes instead.

Stalls model a paused process: nothing is processed until the stall ends; then the
node's timers run first and the packets that queued up are handled after (a paused
process wakes to expired timers and a full socket buffer).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.crypto import Keyring
from meshlb.gossip.events import Event
from meshlb.gossip.membership import Membership
from meshlb.gossip.messages import ALIVE, Addr, MemberState, Message, PushPull
from meshlb.testing.memnet import LinkModel, MemoryNetwork

INF = float("inf")
# What travels: decoded messages or encoded bytes (datagrams), a push-pull or its
# bytes (streams), nothing (wake-ups, resumes).
Payload = tuple[Message, ...] | bytes | PushPull | None


def _stream(payload: Payload) -> PushPull | bytes:
    if isinstance(payload, PushPull | bytes):
        return payload
    raise TypeError(f"not a push-pull payload: {payload!r}")


_WAKE, _DGRAM, _PP_REQ, _PP_REP, _RESUME = range(5)


@dataclass(slots=True)
class SimNode:
    idx: int
    node_id: str
    addr: Addr
    core: Membership | None
    wake_at: float = INF
    backlog: list[tuple[int, Addr, Payload]] = field(default_factory=list)
    stall_frozen: bool = True
    packets_out: int = 0
    bytes_out: int = 0


class GossipSim:
    """N members on one simulated network, driven in virtual time."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        config: GossipConfig | None = None,
        link: LinkModel | None = None,
        use_codec: bool = False,
        keyring_for: Callable[[int], Keyring | None] | None = None,
        meta_for: Callable[[int], bytes] | None = None,
        converged: bool = True,
        record_events: bool = True,
    ) -> None:
        self.config = config or GossipConfig()
        self.seed = seed
        self.net = MemoryNetwork(seed, link)
        self.use_codec = use_codec
        self.keyring_for = keyring_for or (lambda i: None)
        self.meta_for = meta_for or (lambda i: b"")
        self.record_events = record_events
        self.now = 0.0
        self.log: list[tuple[float, int, Event]] = []
        self.max_packet_bytes = 0
        self._heap: list[tuple[float, int, int, int, Addr, Payload]] = []
        self._seq = 0
        self._restarts = 0
        self.nodes = [
            SimNode(i, f"node-{i:04d}", (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 7946), None)
            for i in range(n)
        ]
        self.by_addr = {nd.addr: nd for nd in self.nodes}
        for nd in self.nodes:
            nd.core = self._new_core(nd)
        if converged:
            rows = tuple(
                MemberState(nd.node_id, nd.addr, 0, ALIVE, self.meta_for(nd.idx))
                for nd in self.nodes
            )
            for nd in self.nodes:
                assert nd.core is not None
                nd.core.preload(rows, 0.0)
        else:
            for nd in self.nodes[1:]:
                assert nd.core is not None
                nd.core.join([self.nodes[0].addr], 0.0)
        for nd in self.nodes:
            self._reschedule(nd)

    def _new_core(self, nd: SimNode) -> Membership:
        rng = random.Random(self.seed * 1_000_003 + nd.idx * 7919 + self._restarts * 104729)
        return Membership(
            self.config,
            nd.node_id,
            nd.addr,
            self.meta_for(nd.idx),
            rng,
            self.now,
            keyring=self.keyring_for(nd.idx),
        )

    # ---- scheduling ------------------------------------------------------------

    def _push(self, t: float, kind: int, idx: int, src: Addr, payload: Payload) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, idx, src, payload))

    def _reschedule(self, nd: SimNode) -> None:
        core = nd.core
        if core is None:
            return
        d = core.next_deadline()
        if d < nd.wake_at:
            nd.wake_at = max(d, self.now)
            self._push(nd.wake_at, _WAKE, nd.idx, nd.addr, None)

    def _after(self, nd: SimNode) -> None:
        """Flush a node's outputs into the network, record its events, reschedule it."""
        core = nd.core
        assert core is not None
        now = self.now
        net = self.net
        for dg in core.datagrams_to_send():
            nd.packets_out += 1
            payload: Payload = dg.messages
            size = dg.size
            if self.use_codec:
                data = core.encode(dg)
                payload, size = data, len(data)
            nd.bytes_out += size
            if size > self.max_packet_bytes:
                self.max_packet_bytes = size
            dst = self.by_addr.get(dg.addr)
            if dst is None:
                continue
            for at in net.route(nd.addr, dg.addr, now):
                self._push(at, _DGRAM, dst.idx, nd.addr, payload)
        for req in core.streams_to_send():
            dst = self.by_addr.get(req.addr)
            arrive = net.route_stream(nd.addr, req.addr, now)
            if dst is not None and arrive is not None:
                msg = core.encode_push_pull(req.message) if self.use_codec else req.message
                self._push(arrive, _PP_REQ, dst.idx, nd.addr, msg)
        if self.record_events:
            evs = core.events()
            if evs:
                self.log.extend((now, nd.idx, e) for e in evs)
        self._reschedule(nd)

    # ---- running ---------------------------------------------------------------

    def run_until(self, t_end: float) -> None:
        """Process every event up to virtual time `t_end`."""
        heap = self._heap
        nodes = self.nodes
        stalled = self.net.stalled_until
        while heap and heap[0][0] <= t_end:
            t, _, kind, idx, src, payload = heapq.heappop(heap)
            self.now = t
            nd = nodes[idx]
            if nd.core is None:
                continue
            if kind == _WAKE:
                if nd.wake_at != t:
                    continue
                nd.wake_at = INF
            if kind != _RESUME and stalled(nd.addr) > t and (kind != _WAKE or nd.stall_frozen):
                if kind != _WAKE:
                    nd.backlog.append((kind, src, payload))
                continue
            self._handle(nd, kind, src, payload, t)
        self.now = max(self.now, t_end)

    def run_for(self, duration_s: float) -> None:
        self.run_until(self.now + duration_s)

    def _handle(self, nd: SimNode, kind: int, src: Addr, payload: Payload, t: float) -> None:
        core = nd.core
        assert core is not None
        if kind == _WAKE:
            core.tick(t)
        elif kind == _DGRAM:
            if not isinstance(payload, PushPull) and payload is not None:
                core.receive(payload, src, t)
        elif kind == _PP_REQ:
            reply = core.handle_push_pull(_stream(payload), src, t)
            at = self.net.route_stream(nd.addr, src, t)
            if reply is not None and at is not None:
                out = core.encode_push_pull(reply) if self.use_codec else reply
                self._push(at, _PP_REP, self.by_addr[src].idx, nd.addr, out)
        elif kind == _PP_REP:
            core.receive_push_pull(_stream(payload), src, t)
        else:  # resume after a stall: timers first, then the queued packets
            core.tick(t)
            backlog, nd.backlog = nd.backlog, []
            for k, s, p in backlog:
                self._handle(nd, k, s, p, t)
        self._after(nd)

    # ---- faults and probes -----------------------------------------------------

    def crash(self, idx: int) -> None:
        nd = self.nodes[idx]
        nd.core = None
        nd.wake_at = INF
        nd.backlog.clear()
        self.net.crash(nd.addr)

    def restart(self, idx: int, seeds: Sequence[int] | None = None) -> None:
        """A crashed node comes back with the same id and address and joins again."""
        nd = self.nodes[idx]
        self._restarts += 1
        self.net.restart(nd.addr)
        nd.core = self._new_core(nd)
        seed_idx = seeds if seeds is not None else [i for i in range(len(self.nodes)) if i != idx]
        nd.core.join([self.nodes[i].addr for i in seed_idx[:3]], self.now)
        self._after(nd)

    def stall(self, idx: int, duration_s: float, *, frozen: bool = True) -> None:
        """Node idx stops processing packets for duration_s (they queue up).

        frozen: its timers stop too (a paused process). Otherwise it is "deaf": timers
        fire and it keeps sending, but reads nothing (a blocked receive path, the slow
        member of the Lifeguard paper).
        """
        nd = self.nodes[idx]
        nd.stall_frozen = frozen
        self.net.stall(nd.addr, self.now + duration_s)
        self._push(self.now + duration_s, _RESUME, idx, nd.addr, None)

    def inject(self, idx: int, src: Addr, data: bytes) -> None:
        """Deliver raw bytes to node idx now (garbage, foreign-cluster packets...)."""
        nd = self.nodes[idx]
        assert nd.core is not None
        nd.core.receive(data, src, self.now)
        self._after(nd)

    def update_meta(self, idx: int, meta: bytes) -> None:
        nd = self.nodes[idx]
        assert nd.core is not None
        nd.core.update_meta(meta, self.now)
        self._after(nd)

    def leave(self, idx: int) -> None:
        nd = self.nodes[idx]
        assert nd.core is not None
        nd.core.leave(self.now)
        self._after(nd)

    def state_of(self, observer: int, subject: int) -> str | None:
        core = self.nodes[observer].core
        view = core.member(self.nodes[subject].node_id) if core is not None else None
        return view.state if view is not None else None

    def live_indices(self) -> list[int]:
        return [nd.idx for nd in self.nodes if nd.core is not None]

    def all_see(self, subject: int, state: str) -> bool:
        """Every running node other than subject sees it in `state`."""
        return all(self.state_of(i, subject) == state for i in self.live_indices() if i != subject)

    def packets_out(self) -> int:
        return sum(nd.packets_out for nd in self.nodes)

    def bytes_out(self) -> int:
        return sum(nd.bytes_out for nd in self.nodes)
