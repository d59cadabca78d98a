"""Work stealing as the ownership core runs it: one request at a time per thief.

The policy (whom to ask, what to give) is `meshlb.mesh.stealing`; the move itself is
a hand-over (`handover`) with reason "steal".
"""

from __future__ import annotations

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership.handover import HandOvers
from meshlb.mesh.ownership.members import Members
from meshlb.mesh.ownership.results import Results
from meshlb.mesh.ownership.roles import Role, Table
from meshlb.mesh.ownership.shared import Outbox, OwnershipCounters
from meshlb.mesh.stealing import choose_gifts, choose_victim

# A steal request not answered in this time is forgotten, so we may ask elsewhere.
STEAL_TIMEOUT_S = 2.0


class Steals:
    """The thief's one open request, and the victim's side of a request."""

    def __init__(self, table: Table, members: Members, handovers: HandOvers, results: Results,
                 out: Outbox, counters: OwnershipCounters) -> None:  # fmt: skip
        self.table, self.members, self.handovers = table, members, handovers
        self.results, self.out, self.counters = results, out, counters
        self.due_at: float | None = None  # our request is open until then

    def on_idle(self, ev: m.IdleNoticed, now: float) -> None:
        """Ask the busiest suitable peer, one request at a time (until answered or
        `STEAL_TIMEOUT_S`), so an idle node does not flood the mesh."""
        if self.due_at is not None or ev.free_slots <= 0:
            return
        live_peers = tuple(p for p in ev.peers if p.node_id in self.members.live)
        victim = choose_victim(ev.local, live_peers)
        if victim is None:
            return
        self.due_at = now + STEAL_TIMEOUT_S
        self.counters.steal_requests += 1
        self.out.send(victim, m.StealAsk(ev.free_slots, ev.local.models, ev.local.tokens_per_s))

    def on_requested(self, ev: m.StealRequested, now: float) -> None:
        mine = [w for w in ev.waiting if self.stealable(w.task_id)]
        gifts = choose_gifts(mine, ev.n, ev.models, ev.thief_tokens_per_s,
                             ev.local_tokens_per_s, ev.local_slots)  # fmt: skip
        if not gifts or ev.by not in self.members.live:
            self.out.send(ev.by, m.DeclineSteal())
            return
        copies = [self.table.entries[t].copy for t in gifts]
        self.handovers.offer(copies, ev.by, now, "steal")

    def stealable(self, task_id: str) -> bool:
        """Queued here, ours, not final, no result held: it may move."""
        e = self.table.get(task_id)
        return (e is not None and e.role is Role.OWNER and task_id not in self.table.running
                and not e.copy.final and task_id not in self.results.held)  # fmt: skip

    def on_declined(self, ev: m.DeclineSteal) -> None:
        self.counters.steals_declined += 1
        self.due_at = None

    def answered(self) -> None:
        """Tasks were offered to us for our request: we may ask again."""
        self.due_at = None

    def tick(self, now: float) -> None:
        if self.due_at is not None and self.due_at <= now:
            self.due_at = None

    def next_deadline(self) -> float | None:
        return self.due_at
