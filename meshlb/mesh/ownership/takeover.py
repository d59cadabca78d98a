"""Take-over: what a membership change does to the tasks this node holds.

When an owner dies or leaves, every holder of a copy computes the first live node
of the copy's replica list; only that node re-queues the task (epoch+1), and only
in quorum (`members`) with the death confirmed by a majority (`fence`). A copy
whose owner is gone is an orphan until it is taken over or its copy moves on.
Lost replicas are replaced (and recording waits for the fence). A member that is
back gets what it may hold a stale version of, so double owners from a partition
converge; after a heal every former holder of our tasks is asked (`RECONCILE_S`).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership.fence import Fence
from meshlb.mesh.ownership.handover import HandOvers
from meshlb.mesh.ownership.members import Members
from meshlb.mesh.ownership.replicas import Replicas
from meshlb.mesh.ownership.results import Results
from meshlb.mesh.ownership.roles import Change, Role, Table
from meshlb.mesh.ownership.shared import Core, Outbox, OwnershipCounters
from meshlb.mesh.replication import TaskCopy


@dataclass(frozen=True, slots=True)
class Orphan:
    owner: str  # the owner that is gone
    since: float  # when we learned it
    restart: bool  # it restarted (a new boot id: unambiguous, no fence needed)


class TakeOvers:
    """The orphan registry and the reactions to members joining, dying and leaving."""

    def __init__(self, core: Core, table: Table, members: Members, replicas: Replicas,
                 fence: Fence, results: Results, handovers: HandOvers, out: Outbox,
                 counters: OwnershipCounters) -> None:  # fmt: skip
        self.core, self.table, self.members, self.replicas = core, table, members, replicas
        self.fence, self.results, self.handovers = fence, results, handovers
        self.out, self.counters = out, counters
        self.orphans: dict[str, Orphan] = {}

    def on_up(self, ev: m.PeerUp, now: float) -> None:
        """A member is back (restart, healed partition): re-send what it may hold a
        stale version of, so double owners from a partition converge."""
        node, me = ev.node_id, self.members.me
        self.members.up(node)
        for task_id, o in list(self.orphans.items()):
            if o.owner == node and not o.restart:  # back with its state: not an orphan
                del self.orphans[task_id]
        self.results.unfence(node)
        self.quorum_changed(now)
        for e in list(self.table.entries.values()):
            if e.role is Role.OWNER and node in e.copy.former and node != me:
                self.out.send(node, m.Replicate(e.copy))
        for e in list(self.table.entries.values()):  # results kept for an unreachable owner
            held = self.results.held.get(e.copy.task_id)
            if held is not None and e.role is Role.REPLICA and e.copy.owner == node \
                    and me not in e.copy.replicas:  # fmt: skip
                self.out.send(node, m.Replicate(self.results.final_copy(e, held)))
                self.core.forget(e.copy, now)

    def on_restarted(self, ev: m.PeerRestarted, now: float) -> None:
        """Live, but its old tasks died with its process: orphan them now. Offers to
        it are taken back too: the new process never heard of them."""
        self._orphan_tasks_of(ev.node_id, now, restart=True)
        self.quorum_changed(now)
        for c in self.handovers.offered_to(ev.node_id):
            self.handovers.take_back(c, now)

    def _orphan_tasks_of(self, node: str, now: float, *, restart: bool) -> None:
        """Every copy `node` owned (final ones too: they are re-homed to keep R copies)."""
        for e in self.table.entries.values():
            if e.role is Role.REPLICA and e.copy.owner == node:
                self.orphans[e.copy.task_id] = Orphan(node, now, restart)

    def on_suspected(self, ev: m.PeerSuspected, now: float) -> None:
        if ev.node_id != self.members.me:
            self.members.suspect(ev.node_id)
            self.quorum_changed(now)

    def on_forgotten(self, ev: m.PeerForgotten, now: float) -> None:
        self.members.forget(ev.node_id)
        self.on_down(m.PeerDown(ev.node_id), now)

    def on_down(self, ev: m.PeerDown, now: float) -> None:
        gone = ev.node_id
        if gone == self.members.me:
            return
        self.members.down(gone, now, left=ev.left)
        self._orphan_tasks_of(gone, now, restart=False)
        self.quorum_changed(now)
        offers, pending = self.handovers.offers, self.handovers.pending
        for task_id, e in list(self.table.entries.items()):
            if e.role is Role.OFFERING and offers[task_id].owner == gone:
                self.handovers.take_back(e.copy, now)
            elif e.role is Role.PENDING and pending[task_id].sender == gone:
                self.counters.adopted += 1
                self.handovers.adopt(e.copy, Change.ADOPT, "adopted", now)
            elif e.role is Role.OWNER and gone in e.copy.replicas:
                self._rereplicate(e.copy, now, gone)

    def quorum_changed(self, now: float) -> None:
        """Track quorum. In quorum, take over orphans at once — except just after
        regaining it (a healed partition): then orphans and held results wait
        `RECONCILE_S`, long enough to see their owners come back and newer copies."""
        state = self.members.quorum_changed(now)
        if state == "regained":
            self._ask_former_holders()
        elif state == "held" and self.members.reconcile_at is None:
            self.take_over_orphans(now)

    def _ask_former_holders(self) -> None:
        """Send every task we own to every node that ever held it, dead or not: one
        that took it over while we were cut off answers with its newer copy before
        `RECONCILE_S` is up, and we stand down instead of deciding a second result."""
        for e in self.table.entries.values():
            task_id = e.copy.task_id
            if e.role is Role.OWNER and (not e.copy.final or task_id in self.results.awaiting):
                for node in sorted(e.copy.former - {self.members.me}):
                    self.out.send(node, m.Replicate(e.copy))

    def take_over_orphans(self, now: float) -> None:
        """Resolve the orphan registry: tasks whose copy moved on are dropped from
        it; the ones this node is heir of are taken over (behind the fence)."""
        for task_id, o in list(self.orphans.items()):
            e = self.table.get(task_id)
            if e is None or e.role is not Role.REPLICA or e.copy.owner != o.owner:
                # pop, not del: a take-over below may re-enter this method (through the
                # fence) and resolve entries of this same snapshot first
                self.orphans.pop(task_id, None)
            elif self._maybe_take_over(e.copy, o, now):
                self.orphans.pop(task_id, None)

    def _rereplicate(self, c: TaskCopy, now: float, gone: str) -> None:
        self.counters.rereplicated += 1
        self.results.fence_after_death(c.task_id, gone, now)  # recording needs the fence
        c = c.with_replicas(self.replicas.choose(c.task_id, self.members.me, c.replicas))
        self.table.update(c)
        if c.task_id in self.results.awaiting:
            self.results.await_or_record(c, now)
        else:
            self.replicas.replicate(c, now)

    def _maybe_take_over(self, c: TaskCopy, o: Orphan, now: float) -> bool:
        """The owner is gone: the first live replica of the copy's list takes over.
        A holder outside the list (a stale copy) never does: it cannot tell a double
        failure from a partition that hides the listed replicas. Nor does a node that
        never saw the owner die (one just restarted, still learning the members), and
        the heir first has the death confirmed by a majority (`fence`); a restart
        (new boot id) is unambiguous and needs no confirmation."""
        me = self.members.me
        if c.successor(self.members.live) != me:
            return False
        if not o.restart and not self.fence.dead_confirmed(c.owner, o.since, now):
            return False
        reps = self.replicas.choose(c.task_id, me, c.replicas)
        held = self.results.held.get(c.task_id)
        if not c.final and held is None:
            self.counters.taken_over += 1
            if c.record.state == "running":
                c = c.with_record(c.record.requeued())
        self.core.own(c.with_owner(me, c.epoch + 1, reps), Change.TAKE_OVER, "taken over")
        e = self.table.get(c.task_id)
        assert e is not None
        if e.copy.final:  # the dead owner may not have recorded it: record (same run)
            self.results.await_or_record(e.copy, now)
        elif held is not None and self.members.settled(now):
            self.results.decide(e, held, now)
        return True

    def validate(self) -> None:
        for task_id, o in self.orphans.items():
            assert o.owner != self.members.me, f"we cannot orphan our own {task_id}"
