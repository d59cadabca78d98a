"""Member records and the SWIM/Lifeguard update rules (alive, suspect, dead, merge).

Invariants (SWIM §4.2, memberlist state.go):
- an update about a member is applied only if its incarnation is newer, or equal and
  "worse" (suspect over alive, dead over suspect);
- only the member itself raises its incarnation, to refute a suspicion or death;
- every applied update is re-gossiped (and replaces older news about that member);
- a suspicion timer is keyed by member and re-checked against the incarnation when it
  fires, so a refuted suspicion can never kill.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from meshlb.gossip.awareness import Awareness
from meshlb.gossip.broadcast import BroadcastQueue
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.drops import DropCounter
from meshlb.gossip.events import (
    Event,
    MemberDied,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberRefuted,
    MemberSuspected,
    MetaChanged,
)
from meshlb.gossip.messages import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    Addr,
    Alive,
    Dead,
    MemberState,
    Suspect,
    Update,
)
from meshlb.gossip.suspicion import Suspicion
from meshlb.gossip.wire import message_size

T_SUSPICION, T_RELAY, T_REAP = 0, 1, 2
LAST_CHANCE_PINGS = 2


class _Member:
    __slots__ = ("addr", "changed_at", "incarnation", "meta", "node", "state")

    def __init__(self, node: str, addr: Addr, inc: int, state: str, meta: bytes, now: float):
        self.node = node
        self.addr = addr
        self.incarnation = inc
        self.state = state
        self.meta = meta
        self.changed_at = now


@dataclass(frozen=True, slots=True)
class MemberView:
    """A read-only snapshot of one member, as `members()` returns it."""

    node_id: str
    addr: Addr
    state: str
    incarnation: int
    last_change_at: float
    meta: bytes


class MemberTable:
    """Who we know, in which state, and the rules that change it."""

    def __init__(
        self,
        config: GossipConfig,
        node_id: str,
        addr: Addr,
        meta: bytes,
        rng: random.Random,
        now: float,
    ) -> None:
        if len(meta) > config.max_meta_bytes:
            raise ValueError(f"meta is {len(meta)} bytes, more than {config.max_meta_bytes}")
        self.config = config
        self.node_id = node_id
        self.rng = rng
        self._self = _Member(node_id, addr, 0, ALIVE, meta, now)
        self._members: dict[str, _Member] = {node_id: self._self}
        self._order: list[str] = []  # probe order (SWIM §4.3), self excluded
        self._live = 1  # alive + suspect, self included: the N of the formulas
        self._broadcasts = BroadcastQueue()
        self._suspicions: dict[str, Suspicion] = {}
        self._timers: list[tuple[float, int, str | int]] = []
        self._events: list[Event] = []
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.leaving = False
        self._version = 0
        self._snapshot: tuple[int, tuple[MemberState, ...]] = (-1, ())
        self._stats: dict[str, int] = {"refutes": 0, "address_conflicts": 0}
        self._drops = DropCounter()

    # ---- queries -------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._self.incarnation

    @property
    def live_count(self) -> int:
        """Alive and suspect members, this node included."""
        return self._live

    def members(self) -> list[MemberView]:
        """All known members, this node first."""
        rows = [self._self] + [m for m in self._members.values() if m is not self._self]
        return [
            MemberView(m.node, m.addr, m.state, m.incarnation, m.changed_at, m.meta) for m in rows
        ]

    def member(self, node_id: str) -> MemberView | None:
        m = self._members.get(node_id)
        if m is None:
            return None
        return MemberView(m.node, m.addr, m.state, m.incarnation, m.changed_at, m.meta)

    def events(self) -> list[Event]:
        """Events since the last call (drained)."""
        out, self._events = self._events, []
        return out

    def broadcast_pending(self, node_id: str) -> bool:
        return self._broadcasts.pending_for(node_id) is not None

    def snapshot(self) -> tuple[MemberState, ...]:
        """Full state for push-pull, cached until something changes."""
        if self._snapshot[0] != self._version:
            rows = tuple(
                MemberState(m.node, m.addr, m.incarnation, m.state, m.meta)
                for m in self._members.values()
            )
            self._snapshot = (self._version, rows)
        return self._snapshot[1]

    def preload(self, states: tuple[MemberState, ...], now: float) -> None:
        """Know these alive members from the start, silently (no events, no gossip).

        For simulations that begin from a converged group without N^2 join traffic.
        """
        for row in states:
            if row.node not in self._members and row.state == ALIVE:
                m = _Member(row.node, row.addr, row.incarnation, ALIVE, row.meta, now)
                self._members[row.node] = m
                self._order.append(row.node)
                self._live += 1
        self.rng.shuffle(self._order)
        self._version += 1

    # ---- helpers --------------------------------------------------------------

    def _broadcast(self, msg: Update) -> None:
        self._broadcasts.queue(msg, message_size(msg))
        self._on_broadcast_queued()

    def _on_broadcast_queued(self) -> None:
        """Hook: the membership wakes its gossip timer."""

    def _set_state(self, m: _Member, state: str, now: float) -> None:
        was_live = m.state in (ALIVE, SUSPECT)
        is_live = state in (ALIVE, SUSPECT)
        self._live += is_live - was_live
        m.state = state
        m.changed_at = now
        if not is_live:
            heapq.heappush(self._timers, (now + self.config.reap_after_s, T_REAP, m.node))

    def _refute(self, accused_inc: int, accused_by: str) -> None:
        """Raise our incarnation above the accusation and gossip that we are alive."""
        me = self._self
        me.incarnation = max(me.incarnation + 1, accused_inc + 1)
        self._version += 1
        self._stats["refutes"] += 1
        self.awareness.apply_delta(1)  # Lifeguard: being accused hints we are slow
        self._events.append(MemberRefuted(me.node, me.incarnation, accused_by))
        self._broadcast(Alive(me.node, me.incarnation, me.addr, me.meta))

    def _remind(self) -> None:
        """Someone still accuses an older incarnation of us: gossip our current alive
        again (no new incarnation), so it reaches whoever missed the refutation."""
        me = self._self
        if not self.leaving and self._broadcasts.pending_for(me.node) is None:
            self._broadcast(Alive(me.node, me.incarnation, me.addr, me.meta))

    def _add_to_order(self, node: str) -> None:
        """Insert at a random position (memberlist), so a newcomer is probed soon."""
        self._order.append(node)
        j = self.rng.randrange(len(self._order))
        self._order[j], self._order[-1] = self._order[-1], self._order[j]

    # ---- rules ----------------------------------------------------------------

    def on_alive(self, a: Alive, now: float) -> None:
        """SWIM §4.2 alive: newer incarnation wins; about us, refute a stale or wrong one."""
        m = self._members.get(a.node)
        if m is self._self:
            if self.leaving or a.incarnation < m.incarnation:
                return
            if a.incarnation == m.incarnation and a.meta == m.meta and a.addr == m.addr:
                return
            self._refute(a.incarnation, "?")
            return
        if m is None:
            m = _Member(a.node, a.addr, a.incarnation, DEAD, a.meta, now)
            self._members[a.node] = m
            self._add_to_order(a.node)
            self._apply_alive(m, a, now)
            return
        if a.incarnation <= m.incarnation:
            return
        if a.addr != m.addr and m.state in (ALIVE, SUSPECT):
            self._stats["address_conflicts"] += 1
            return
        self._apply_alive(m, a, now)

    def _apply_alive(self, m: _Member, a: Alive, now: float) -> None:
        susp = self._suspicions.pop(m.node, None)
        meta_changed = m.meta != a.meta
        m.incarnation, m.addr, m.meta = a.incarnation, a.addr, a.meta
        prev = m.state
        if prev != ALIVE:
            self._set_state(m, ALIVE, now)
        if prev == SUSPECT:
            by = susp.accuser if susp is not None else "?"
            self._events.append(MemberRefuted(m.node, a.incarnation, by))
        elif prev != ALIVE:
            self._events.append(MemberJoined(m.node, a.addr, a.incarnation, a.meta))
        if meta_changed and prev != DEAD and prev != LEFT:
            self._events.append(MetaChanged(m.node, a.incarnation, a.meta))
        self._version += 1
        self._broadcast(a)

    def on_suspect(self, s: Suspect, now: float) -> None:
        """SWIM §4.2 suspect, with Lifeguard §IV-B confirmations shrinking the timer."""
        m = self._members.get(s.node)
        if m is None:
            return
        if s.incarnation < m.incarnation:
            if m is self._self:
                self._remind()
            return
        susp = self._suspicions.get(s.node)
        if susp is not None:
            if susp.confirm(s.by):
                self._arm(susp, s.node, now)
                self._broadcast(s)
            return
        if m.state != ALIVE:
            return
        if m is self._self:
            if not self.leaving:
                self._refute(s.incarnation, s.by)
            return
        self._start_suspicion(m, s, now)

    def _start_suspicion(self, m: _Member, s: Suspect, now: float) -> None:
        cfg = self.config
        n = self._live
        k = cfg.suspicion_mult - 2
        if n - 2 < k or cfg.suspicion_max_timeout_mult <= 1:
            k = 0
        min_s = cfg.suspicion_min_s(n)
        susp = Suspicion(s.by, s.incarnation, k, min_s, cfg.suspicion_max_timeout_mult * min_s, now)
        susp.pings_left = LAST_CHANCE_PINGS if cfg.buddy_enabled else 0
        self._suspicions[m.node] = susp
        self._arm(susp, m.node, now)
        m.incarnation = s.incarnation
        self._set_state(m, SUSPECT, now)
        self._version += 1
        self._events.append(MemberSuspected(m.node, s.by, s.incarnation))
        self._broadcast(s)

    def on_dead(self, d: Dead, now: float) -> None:
        """SWIM §4.2 confirm (dead), or a graceful leave when `by` is the node itself."""
        m = self._members.get(d.node)
        if m is None:
            return
        if d.incarnation < m.incarnation:
            if m is self._self:
                self._remind()
            return
        self._suspicions.pop(d.node, None)
        if m.state == DEAD or m.state == LEFT:
            return
        if m is self._self:
            if not self.leaving:
                self._refute(d.incarnation, d.by)
            return
        m.incarnation = d.incarnation
        left = d.by == d.node
        self._set_state(m, LEFT if left else DEAD, now)
        self._version += 1
        if left:
            self._events.append(MemberLeft(m.node, d.incarnation))
        else:
            self._events.append(MemberDied(m.node, d.by, d.incarnation))
        self._broadcast(d)

    def merge(self, states: tuple[MemberState, ...], now: float) -> None:
        """Merge a push-pull state: a remote 'dead' only makes us suspect (memberlist)."""
        members = self._members
        for row in states:
            m = members.get(row.node)
            if row.state == ALIVE:
                if m is not None and m is not self._self and row.incarnation <= m.incarnation:
                    continue
                self.on_alive(Alive(row.node, row.incarnation, row.addr, row.meta), now)
            elif row.state == LEFT:
                self.on_dead(Dead(row.node, row.incarnation, row.node), now)
            elif m is not None:
                self.on_suspect(Suspect(row.node, row.incarnation, self.node_id), now)

    # ---- timers ---------------------------------------------------------------

    def _arm(self, susp: Suspicion, node: str, now: float) -> None:
        """(Re)schedule a suspicion's timer; older heap entries become stale.

        A late confirmation can move the deadline into the past; the last-chance
        pings still go out first (the deadline moves to just after them).
        """
        lead = self.config.probe_timeout_s
        if susp.next_wakeup(lead) < now:
            susp.deadline = max(susp.deadline, now + susp.pings_left * lead)
        susp.wake_at = max(now, susp.next_wakeup(lead))
        heapq.heappush(self._timers, (susp.wake_at, T_SUSPICION, node))

    def _fire_suspicion(self, node: str, now: float) -> None:
        """Last-chance pings shortly before the deadline, then dead.

        The pings are our addition to Lifeguard's buddy system: a live member we
        still suspect is most often one whose refutation we missed (gossip reaches
        each member only with high probability, less under loss), so before the
        deadline we ask the member itself, twice, with the suspicion attached; its
        ack carries its current alive message. They are sent `probe_timeout_s`
        apart before the deadline, so they never delay a true detection.
        """
        susp = self._suspicions.get(node)
        if susp is None or susp.wake_at > now:
            return
        m = self._members.get(node)
        if m is None or m.state != SUSPECT or m.incarnation != susp.incarnation:
            del self._suspicions[node]
            return
        if susp.pings_left > 0 and susp.deadline > now:
            susp.pings_left -= 1
            self._send_last_chance(m)
            self._arm(susp, node, now)
            return
        del self._suspicions[node]
        self.on_dead(Dead(node, susp.incarnation, self.node_id), now)

    def _send_last_chance(self, m: _Member) -> None:
        """Hook: the membership pings `m` with its suspicion attached."""

    def _fire_reap(self, node: str, now: float) -> None:
        m = self._members.get(node)
        if m is None or m is self._self or m.state in (ALIVE, SUSPECT):
            return
        if m.changed_at + self.config.reap_after_s > now:
            return
        del self._members[node]
        self._version += 1
        self._events.append(MemberReaped(node))
