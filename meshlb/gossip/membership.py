"""SWIM + Lifeguard membership as a pure, sans-I/O state machine.

Feed it `receive(packet, src, now)` and `tick(now)`; take `datagrams_to_send()` (UDP)
and `streams_to_send()` (push-pull, over a stream the driver chooses); sleep until
`next_deadline()`. No clock, socket or task library here: `now` and the `random.Random`
are injected, so the same inputs always give the same outputs.

Per protocol period (SWIM §3.1, §4.3): probe the next member of a shuffled
round-robin order; after `probe_timeout_s` ask k members to ping-req it (with
Lifeguard §IV-A nacks); no ack by the end of the period -> suspect it. A ping to a
suspect carries the suspicion (Lifeguard §IV-C buddy system). Updates ride on every
packet and on gossip rounds to `gossip_nodes` random members (SWIM §4.1).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence

from meshlb.gossip import drops
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.crypto import Keyring
from meshlb.gossip.dissemination import Disseminator
from meshlb.gossip.messages import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    Ack,
    Addr,
    Alive,
    Dead,
    Message,
    Nack,
    Ping,
    PingReq,
    Suspect,
)
from meshlb.gossip.table import T_RELAY, T_SUSPICION, _Member
from meshlb.gossip.wire import (
    WireError,
    decode_packet,
)

INF = math.inf


class _Probe:
    __slots__ = ("expected_nacks", "indirect_sent", "nacks", "period_end", "seq", "target")

    def __init__(self, target: str, seq: int, timeout_at: float, period_end: float) -> None:
        self.target = target
        self.seq = seq
        self.indirect_sent: float = timeout_at  # time to send ping-reqs; INF once sent
        self.period_end = period_end
        self.expected_nacks = 0
        self.nacks = 0


class _Relay:
    __slots__ = ("nack", "origin", "origin_seq")

    def __init__(self, origin: Addr, origin_seq: int, nack: bool) -> None:
        self.origin = origin
        self.origin_seq = origin_seq
        self.nack = nack


class Membership(Disseminator):
    """One node's view of the group and the protocol that maintains it."""

    def __init__(
        self,
        config: GossipConfig,
        node_id: str,
        addr: Addr,
        meta: bytes,
        rng: random.Random,
        now: float,
        keyring: Keyring | None = None,
        *,
        nonces: Callable[[int], bytes] | None = None,
        boot_epoch_us: int | None = None,
    ) -> None:
        super().__init__(config, node_id, addr, meta, rng, now, keyring, nonces, boot_epoch_us)
        self._seq = rng.randrange(1 << 30)
        self._probe: _Probe | None = None
        self._probe_index = 0
        self._relays: dict[int, _Relay] = {}
        self._next_probe_at = now + rng.random() * config.probe_interval_s
        self._stats.update(
            messages_in=0,
            dropped_malformed=0,
            dropped_oversize=0,
            dropped_version=0,
            dropped_auth=0,
            dropped_replay=0,
            dropped_misdirected=0,
            probes=0,
            probe_failures=0,
            indirect_probes=0,
            nacks_received=0,
            push_pulls=0,
        )

    # ---- commands --------------------------------------------------------------

    def update_meta(self, meta: bytes, now: float) -> None:
        """Adopt new metadata: bump our incarnation and gossip an alive message."""
        if len(meta) > self.config.max_meta_bytes:
            raise ValueError(f"meta is {len(meta)} bytes, more than {self.config.max_meta_bytes}")
        self._now = now
        me = self._self
        me.meta = meta
        me.incarnation += 1
        self._version += 1
        self._broadcast(Alive(me.node, me.incarnation, me.addr, me.meta))

    def leave(self, now: float) -> None:
        """Graceful leave: gossip Dead(by=self) so peers mark us `left`; stop probing."""
        if self.leaving:
            return
        self.leaving = True
        self._now = now
        me = self._self
        self._set_state(me, LEFT, now)
        self._version += 1
        self._probe = None
        self._broadcast(Dead(me.node, me.incarnation, me.node))
        self._next_gossip_at = now

    # ---- outputs ---------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        s = dict(self._stats)
        s.update(members_live=self._live, members_known=len(self._members))
        s.update(awareness=self.awareness.score, incarnation=self._self.incarnation)
        return s

    def dropped(self) -> dict[str, int]:
        """Datagrams and push-pull frames this core threw away, by reason (all present)."""
        return self._drops.snapshot()

    @property
    def joined(self) -> bool:
        """True once another member is known alive."""
        return self._live > (0 if self.leaving else 1)

    def next_deadline(self) -> float:
        t = min(self._next_gossip_at, self._join_at)
        if not self.leaving:
            t = min(t, self._next_probe_at, self._next_push_pull_at, self._next_reconnect_at)
        p = self._probe
        if p is not None:
            t = min(t, p.indirect_sent, p.period_end)
        timers = self._timers
        while timers and not self._timer_live(timers[0]):
            heapq.heappop(timers)
        if timers:
            t = min(t, timers[0][0])
        return t

    # ---- inputs ----------------------------------------------------------------

    def receive(self, packet: bytes | Sequence[Message], src: Addr, now: float) -> None:
        """Handle one datagram (bytes, or already-decoded messages). Never raises on input."""
        self._now = now
        if isinstance(packet, bytes | bytearray | memoryview):
            messages = self._decode(bytes(packet), src)
            if messages is None:
                return
        else:
            messages = packet
        self._stats["messages_in"] += len(messages)
        for msg in messages:
            self._dispatch(msg, src, now)

    def _decode(self, data: bytes, src: Addr) -> Sequence[Message] | None:
        limit = self.config.max_packet_bytes
        if len(data) > limit:
            self._stats["dropped_oversize"] += 1
            self._drops.add(drops.OVERSIZED)
            return None
        try:
            if self.envelope is not None:
                data = self.envelope.open(data)
            return decode_packet(data, limit)
        except WireError as e:  # AuthError included
            self._stats[e.kind] += 1
            self._drops.add(e.reason)
        return None

    def _dispatch(self, msg: Message, src: Addr, now: float) -> None:
        t = type(msg)
        if t is Ping:
            self._on_ping(msg, src)  # type: ignore[arg-type]
        elif t is Ack:
            self._on_ack(msg.seq)  # type: ignore[union-attr]
        elif t is Alive:
            self.on_alive(msg, now)  # type: ignore[arg-type]
        elif t is Suspect:
            self.on_suspect(msg, now)  # type: ignore[arg-type]
        elif t is Dead:
            self.on_dead(msg, now)  # type: ignore[arg-type]
        elif t is PingReq:
            self._on_ping_req(msg, src, now)  # type: ignore[arg-type]
        elif t is Nack:
            p = self._probe
            if p is not None and p.seq == msg.seq:  # type: ignore[union-attr]
                p.nacks += 1
                self._stats["nacks_received"] += 1

    def _on_ping(self, ping: Ping, src: Addr) -> None:
        if ping.target != self.node_id:
            self._stats["dropped_misdirected"] += 1
            return
        self._send(src, (Ack(ping.seq),))

    def _on_ack(self, seq: int) -> None:
        p = self._probe
        if p is not None and p.seq == seq:
            self._probe = None
            self.awareness.apply_delta(-1)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send(relay.origin, (Ack(relay.origin_seq),))

    def _on_ping_req(self, req: PingReq, src: Addr, now: float) -> None:
        """SWIM §3.1 indirect probe on someone's behalf; Lifeguard nack on silence."""
        seq = self._next_seq()
        self._relays[seq] = _Relay(src, req.seq, req.nack)
        heapq.heappush(self._timers, (now + self.config.probe_timeout_s, T_RELAY, seq))
        self._send(req.target_addr, (Ping(seq, req.target),))

    # ---- timers ----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run every timer that is due at `now`."""
        self._now = now
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, kind, key = heapq.heappop(timers)
            if kind == T_SUSPICION:
                self._fire_suspicion(key, now)  # type: ignore[arg-type]
            elif kind == T_RELAY:
                self._fire_relay(key)  # type: ignore[arg-type]
            else:
                self._fire_reap(key, now)  # type: ignore[arg-type]
        if not self.leaving:
            self._tick_probe(now)
            if now >= self._next_push_pull_at:
                self._push_pull(now)
            if now >= self._next_reconnect_at:
                self._reconnect(now)
        if now >= self._next_gossip_at:
            self._gossip(now)
        if now >= self._join_at:
            self._join_attempt(now)

    def _timer_live(self, entry: tuple[float, int, str | int]) -> bool:
        deadline, kind, key = entry
        if kind == T_RELAY:
            return key in self._relays
        if kind == T_SUSPICION:
            s = self._suspicions.get(key)  # type: ignore[arg-type]
            return s is not None and s.wake_at == deadline
        m = self._members.get(key)  # type: ignore[arg-type]
        return m is not None and m.state in (DEAD, LEFT) and deadline > m.changed_at
        # (a reap entry is live while the member is still dead/left)

    def _fire_relay(self, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None and relay.nack:
            self._send(relay.origin, (Nack(relay.origin_seq),))

    def _tick_probe(self, now: float) -> None:
        p = self._probe
        if p is not None:
            if now >= p.period_end:
                self._probe_failed(p, now)
            elif now >= p.indirect_sent:
                self._send_ping_reqs(p)
        if self._probe is None and now >= self._next_probe_at:
            self._start_probe(now)

    def _start_probe(self, now: float) -> None:
        cfg = self.config
        period = self.awareness.scale(cfg.probe_interval_s)
        self._next_probe_at = now + period
        m = self._next_probe_target()
        if m is None:
            return
        seq = self._next_seq()
        self._stats["probes"] += 1
        timeout = self.awareness.scale(cfg.probe_timeout_s)
        self._probe = _Probe(m.node, seq, now + timeout, now + period)
        msgs: tuple[Message, ...] = (Ping(seq, m.node),)
        if m.state == SUSPECT and cfg.buddy_enabled:
            # Suspicion first: the target refutes before it acks, so the ack carries it.
            msgs = (Suspect(m.node, m.incarnation, self.node_id), *msgs)
        self._send(m.addr, msgs)

    def _next_probe_target(self) -> _Member | None:
        """Next member of the shuffled round-robin order (SWIM §4.3), skipping the dead."""
        members = self._members
        for _ in range(2):
            order = self._order
            while self._probe_index < len(order):
                m = members.get(order[self._probe_index])
                self._probe_index += 1
                if m is not None and m is not self._self and m.state in (ALIVE, SUSPECT):
                    return m
            self._order = [n for n in members if n != self.node_id]
            self.rng.shuffle(self._order)
            self._probe_index = 0
        return None

    def _send_ping_reqs(self, p: _Probe) -> None:
        p.indirect_sent = INF
        m = self._members.get(p.target)
        if m is None:
            return
        relays = self._random_members(self.config.indirect_checks, p.target, gossip=False)
        nack = self.config.nacks_enabled
        for r in relays:
            self._send(r.addr, (PingReq(p.seq, m.node, m.addr, nack),))
        self._stats["indirect_probes"] += len(relays)
        p.expected_nacks = len(relays) if nack else 0

    def _probe_failed(self, p: _Probe, now: float) -> None:
        """No ack in the whole period: Lifeguard LHM delta, then suspect the target."""
        self._probe = None
        self._stats["probe_failures"] += 1
        if p.expected_nacks > 0:
            self.awareness.apply_delta(max(0, p.expected_nacks - p.nacks))
        else:
            self.awareness.apply_delta(1)
        m = self._members.get(p.target)
        if m is not None and m.state in (ALIVE, SUSPECT):
            self.on_suspect(Suspect(m.node, m.incarnation, self.node_id), now)

    def _send_last_chance(self, m: _Member) -> None:
        seq = self._next_seq()
        self._send(m.addr, (Suspect(m.node, m.incarnation, self.node_id), Ping(seq, m.node)))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq
