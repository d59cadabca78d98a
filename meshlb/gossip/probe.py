"""Failure detection: one probe per protocol period (SWIM §3.1, §4.3).

Probe the next member of a shuffled round-robin order; after `probe_timeout_s` ask k
members to ping-req it (with Lifeguard §IV-A nacks); no ack by the end of the period
-> suspect it. A ping to a suspect carries the suspicion (Lifeguard §IV-C buddy
system). Also the other side: answering pings, relaying ping-reqs (with a nack when
the target stays silent), and the local health score those outcomes move.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from meshlb.gossip.awareness import Awareness
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.dissemination import Disseminator
from meshlb.gossip.messages import SUSPECT, Ack, Addr, Message, Nack, Ping, PingReq, Suspect
from meshlb.gossip.table import LIVE_STATES, MemberRecord, MemberTable
from meshlb.gossip.timers import TimerHeap

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


class Prober:
    """Our probe of one member per period, and the relays we run for others."""

    def __init__(
        self,
        config: GossipConfig,
        table: MemberTable,
        dissemination: Disseminator,
        awareness: Awareness,
        stats: dict[str, int],
        rng: random.Random,
        now: float,
        suspect: Callable[[Suspect, float], None],
    ) -> None:
        self.config = config
        self._table = table
        self._dissem = dissemination
        self._awareness = awareness
        self._stats = stats
        self._suspect = suspect  # the update rules: a failed probe is a suspicion
        self._seq = rng.randrange(1 << 30)
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self.relay_timers: TimerHeap[int] = TimerHeap(self._fire_relay, self._relay_live)
        self._next_probe_at = now + rng.random() * config.probe_interval_s

    def stop(self) -> None:
        """We leave: the probe in flight is forgotten (no suspicion from it)."""
        self._probe = None

    def next_deadline(self, leaving: bool) -> float:
        t = INF if leaving else self._next_probe_at
        p = self._probe
        if p is not None:
            t = min(t, p.indirect_sent, p.period_end)
        return t

    # ---- messages ----------------------------------------------------------------

    def on_ping(self, ping: Ping, src: Addr, now: float) -> None:
        if ping.target != self._table.node_id:
            self._stats["dropped_misdirected"] += 1
            return
        self._dissem.send(src, (Ack(ping.seq),))

    def on_ack(self, ack: Ack, src: Addr, now: float) -> None:
        p = self._probe
        if p is not None and p.seq == ack.seq:
            self._probe = None
            self._awareness.apply_delta(-1)
            return
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            self._dissem.send(relay.origin, (Ack(relay.origin_seq),))

    def on_nack(self, nack: Nack, src: Addr, now: float) -> None:
        p = self._probe
        if p is not None and p.seq == nack.seq:
            p.nacks += 1
            self._stats["nacks_received"] += 1

    def on_ping_req(self, req: PingReq, src: Addr, now: float) -> None:
        """SWIM §3.1 indirect probe on someone's behalf; Lifeguard nack on silence."""
        seq = self._next_seq()
        self._relays[seq] = _Relay(src, req.seq, req.nack)
        self.relay_timers.push(now + self.config.probe_timeout_s, seq)
        self._dissem.send(req.target_addr, (Ping(seq, req.target),))

    def send_last_chance(self, m: MemberRecord) -> None:
        """Ping a suspect with its suspicion attached (it refutes before it acks)."""
        seq = self._next_seq()
        self._dissem.send(m.addr, (Suspect(m.node, m.incarnation, self._table.node_id),
                                   Ping(seq, m.node)))  # fmt: skip

    # ---- timers ----------------------------------------------------------------

    def tick(self, now: float) -> None:
        p = self._probe
        if p is not None:
            if now >= p.period_end:
                self._probe_failed(p, now)
            elif now >= p.indirect_sent:
                self._send_ping_reqs(p, now)
        if self._probe is None and now >= self._next_probe_at:
            self._start_probe(now)

    def _relay_live(self, at: float, seq: int) -> bool:
        return seq in self._relays

    def _fire_relay(self, seq: int, now: float) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None and relay.nack:
            self._dissem.send(relay.origin, (Nack(relay.origin_seq),))

    def _start_probe(self, now: float) -> None:
        cfg = self.config
        period = self._awareness.scale(cfg.probe_interval_s)
        self._next_probe_at = now + period
        m = self._table.next_probe_target()
        if m is None:
            return
        seq = self._next_seq()
        self._stats["probes"] += 1
        timeout = self._awareness.scale(cfg.probe_timeout_s)
        self._probe = _Probe(m.node, seq, now + timeout, now + period)
        msgs: tuple[Message, ...] = (Ping(seq, m.node),)
        if m.state == SUSPECT and cfg.buddy_enabled:
            # Suspicion first: the target refutes before it acks, so the ack carries it.
            msgs = (Suspect(m.node, m.incarnation, self._table.node_id), *msgs)
        self._dissem.send(m.addr, msgs)

    def _send_ping_reqs(self, p: _Probe, now: float) -> None:
        p.indirect_sent = INF
        m = self._table.get(p.target)
        if m is None:
            return
        relays = self._dissem.random_members(self.config.indirect_checks, p.target, now,
                                             gossip=False)  # fmt: skip
        nack = self.config.nacks_enabled
        for r in relays:
            self._dissem.send(r.addr, (PingReq(p.seq, m.node, m.addr, nack),))
        self._stats["indirect_probes"] += len(relays)
        p.expected_nacks = len(relays) if nack else 0

    def _probe_failed(self, p: _Probe, now: float) -> None:
        """No ack in the whole period: Lifeguard LHM delta, then suspect the target."""
        self._probe = None
        self._stats["probe_failures"] += 1
        if p.expected_nacks > 0:
            self._awareness.apply_delta(max(0, p.expected_nacks - p.nacks))
        else:
            self._awareness.apply_delta(1)
        m = self._table.get(p.target)
        if m is not None and m.state in LIVE_STATES:
            self._suspect(Suspect(m.node, m.incarnation, self._table.node_id), now)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq
