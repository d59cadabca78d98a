"""The SWIM/Lifeguard update rules: alive, suspect, dead, push-pull merge, and the
suspicion and reap timers that end in them.

Invariants (SWIM §4.2, memberlist state.go):
- an update about a member is applied only if its incarnation is newer, or equal and
  "worse" (suspect over alive, dead over suspect);
- only the member itself raises its incarnation, to refute a suspicion or death;
- every applied update is re-gossiped (and replaces older news about that member);
- a suspicion timer is keyed by member and re-checked against the incarnation when it
  fires, so a refuted suspicion can never kill.
"""

from __future__ import annotations

from collections.abc import Callable

from meshlb.gossip.awareness import Awareness
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.dissemination import Disseminator
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
from meshlb.gossip.messages import ALIVE, DEAD, LEFT, SUSPECT, Alive, Dead, MemberState, Suspect
from meshlb.gossip.suspicion import Suspicion, SuspicionTracker
from meshlb.gossip.table import LIVE_STATES, MemberRecord, MemberTable
from meshlb.gossip.timers import TimerHeap

LAST_CHANCE_PINGS = 2


class UpdateRules:
    """Applies membership updates to the table; owns suspicions and reap timers."""

    def __init__(
        self,
        config: GossipConfig,
        table: MemberTable,
        dissemination: Disseminator,
        awareness: Awareness,
        events: list[Event],
        stats: dict[str, int],
        last_chance: Callable[[MemberRecord], None],
    ) -> None:
        self.config = config
        self._table = table
        self._dissem = dissemination
        self._awareness = awareness
        self._events = events
        self._stats = stats
        self._last_chance = last_chance  # the prober pings a suspect with its suspicion
        self.suspicions = SuspicionTracker(config.probe_timeout_s, self._fire_suspicion)
        self.reaps: TimerHeap[str] = TimerHeap(self._fire_reap, self._reap_live)

    # ---- rules ----------------------------------------------------------------

    def on_alive(self, a: Alive, now: float) -> None:
        """SWIM §4.2 alive: newer incarnation wins; about us, refute a stale or wrong one."""
        table = self._table
        m = table.get(a.node)
        if m is table.me:
            if table.leaving or a.incarnation < m.incarnation:
                return
            if a.incarnation == m.incarnation and a.meta == m.meta and a.addr == m.addr:
                return
            self.refute(a.incarnation, "?", now)
            return
        if m is None:
            self._apply_alive(table.add(a.node, a.addr, a.incarnation, a.meta, now), a, now)
            return
        if a.incarnation <= m.incarnation:
            return
        if a.addr != m.addr and m.state in LIVE_STATES:
            self._stats["address_conflicts"] += 1
            return
        self._apply_alive(m, a, now)

    def _apply_alive(self, m: MemberRecord, a: Alive, now: float) -> None:
        susp = self.suspicions.pop(m.node)
        meta_changed = m.meta != a.meta
        m.incarnation, m.addr, m.meta = a.incarnation, a.addr, a.meta
        prev = m.state
        if prev != ALIVE:
            self.set_state(m, ALIVE, now)
        if prev == SUSPECT:
            by = susp.accuser if susp is not None else "?"
            self._events.append(MemberRefuted(m.node, a.incarnation, by))
        elif prev != ALIVE:
            self._events.append(MemberJoined(m.node, a.addr, a.incarnation, a.meta))
        if meta_changed and prev != DEAD and prev != LEFT:
            self._events.append(MetaChanged(m.node, a.incarnation, a.meta))
        self._table.version += 1
        self._dissem.broadcast(a, now)

    def on_suspect(self, s: Suspect, now: float) -> None:
        """SWIM §4.2 suspect, with Lifeguard §IV-B confirmations shrinking the timer."""
        table = self._table
        m = table.get(s.node)
        if m is None:
            return
        if s.incarnation < m.incarnation:
            if m is table.me:
                self._remind(now)
            return
        susp = self.suspicions.get(s.node)
        if susp is not None:
            if susp.confirm(s.by):
                self.suspicions.arm(susp, s.node, now)
                self._dissem.broadcast(s, now)
            return
        if m.state != ALIVE:
            return
        if m is table.me:
            if not table.leaving:
                self.refute(s.incarnation, s.by, now)
            return
        self._start_suspicion(m, s, now)

    def _start_suspicion(self, m: MemberRecord, s: Suspect, now: float) -> None:
        cfg = self.config
        n = self._table.live
        k = cfg.suspicion_mult - 2
        if n - 2 < k or cfg.suspicion_max_timeout_mult <= 1:
            k = 0
        min_s = cfg.suspicion_min_s(n)
        susp = Suspicion(s.by, s.incarnation, k, min_s, cfg.suspicion_max_timeout_mult * min_s, now)
        susp.pings_left = LAST_CHANCE_PINGS if cfg.buddy_enabled else 0
        self.suspicions.start(m.node, susp, now)
        m.incarnation = s.incarnation
        self.set_state(m, SUSPECT, now)
        self._table.version += 1
        self._events.append(MemberSuspected(m.node, s.by, s.incarnation))
        self._dissem.broadcast(s, now)

    def on_dead(self, d: Dead, now: float) -> None:
        """SWIM §4.2 confirm (dead), or a graceful leave when `by` is the node itself."""
        table = self._table
        m = table.get(d.node)
        if m is None:
            return
        if d.incarnation < m.incarnation:
            if m is table.me:
                self._remind(now)
            return
        self.suspicions.pop(d.node)
        if m.state == DEAD or m.state == LEFT:
            return
        if m is table.me:
            if not table.leaving:
                self.refute(d.incarnation, d.by, now)
            return
        m.incarnation = d.incarnation
        left = d.by == d.node
        self.set_state(m, LEFT if left else DEAD, now)
        table.version += 1
        if left:
            self._events.append(MemberLeft(m.node, d.incarnation))
        else:
            self._events.append(MemberDied(m.node, d.by, d.incarnation))
        self._dissem.broadcast(d, now)

    def merge(self, states: tuple[MemberState, ...], now: float) -> None:
        """Merge a push-pull state: a remote 'dead' only makes us suspect (memberlist)."""
        table = self._table
        for row in states:
            m = table.get(row.node)
            if row.state == ALIVE:
                if m is not None and m is not table.me and row.incarnation <= m.incarnation:
                    continue
                self.on_alive(Alive(row.node, row.incarnation, row.addr, row.meta), now)
            elif row.state == LEFT:
                self.on_dead(Dead(row.node, row.incarnation, row.node), now)
            elif m is not None:
                self.on_suspect(Suspect(row.node, row.incarnation, table.node_id), now)

    # ---- about ourselves ---------------------------------------------------------

    def refute(self, accused_inc: int, accused_by: str, now: float) -> None:
        """Raise our incarnation above the accusation and gossip that we are alive."""
        me = self._table.me
        me.incarnation = max(me.incarnation + 1, accused_inc + 1)
        self._table.version += 1
        self._stats["refutes"] += 1
        self._awareness.apply_delta(1)  # Lifeguard: being accused hints we are slow
        self._events.append(MemberRefuted(me.node, me.incarnation, accused_by))
        self._dissem.broadcast(Alive(me.node, me.incarnation, me.addr, me.meta), now)

    def _remind(self, now: float) -> None:
        """Someone still accuses an older incarnation of us: gossip our current alive
        again (no new incarnation), so it reaches whoever missed the refutation."""
        me = self._table.me
        if not self._table.leaving and self._dissem.pending_for(me.node) is None:
            self._dissem.broadcast(Alive(me.node, me.incarnation, me.addr, me.meta), now)

    def set_state(self, m: MemberRecord, state: str, now: float) -> None:
        """Change a member's state; a member that stops being live is reaped later."""
        self._table.set_state(m, state, now)
        if state not in LIVE_STATES:
            self.reaps.push(now + self.config.reap_after_s, m.node)

    # ---- timers ---------------------------------------------------------------

    def _fire_suspicion(self, node: str, now: float) -> None:
        """Last-chance pings shortly before the deadline, then dead.

        The pings are our addition to Lifeguard's buddy system: a live member we
        still suspect is most often one whose refutation we missed (gossip reaches
        each member only with high probability, less under loss), so before the
        deadline we ask the member itself, twice, with the suspicion attached; its
        ack carries its current alive message. They are sent `probe_timeout_s`
        apart before the deadline, so they never delay a true detection.
        """
        suspicions = self.suspicions
        susp = suspicions.get(node)
        if susp is None or susp.wake_at > now:
            return
        m = self._table.get(node)
        if m is None or m.state != SUSPECT or m.incarnation != susp.incarnation:
            suspicions.pop(node)
            return
        if susp.pings_left > 0 and susp.deadline > now:
            susp.pings_left -= 1
            self._last_chance(m)
            suspicions.arm(susp, node, now)
            return
        suspicions.pop(node)
        self.on_dead(Dead(node, susp.incarnation, self._table.node_id), now)

    def _reap_live(self, at: float, node: str) -> bool:
        """A reap entry is live while the member is still dead/left since before it."""
        m = self._table.get(node)
        return m is not None and m.state in (DEAD, LEFT) and at > m.changed_at

    def _fire_reap(self, node: str, now: float) -> None:
        table = self._table
        m = table.get(node)
        if m is None or m is table.me or m.state in LIVE_STATES:
            return
        if m.changed_at + self.config.reap_after_s > now:
            return
        table.remove(node)
        self._events.append(MemberReaped(node))
