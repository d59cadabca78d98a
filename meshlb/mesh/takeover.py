"""Membership side of the ownership core: quorum, take-over, re-replication.

Why a quorum: a crash and a partition look the same to a failure detector. Taking
over and deciding results only with more than half of the known members live and
unsuspected means that of two sides of a partition at most one does either; the
other holds its results until the heal. After a heal (quorum regained), orphans
and held results wait `RECONCILE_S` while we ask every former holder of our tasks
for newer copies, so an owner cut off from the mesh stands down instead of deciding
a second result. A single crash never loses the quorum (N >= 3), so the heir
re-queues as soon as gossip declares the owner dead.
"""

from __future__ import annotations

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.dead_members import DeadMembers
from meshlb.mesh.fence import FenceMixin
from meshlb.mesh.handover import OFFERING, OWNER, PENDING, REPLICA, Entry
from meshlb.mesh.replication import TaskCopy, snapshot

# After the quorum comes back, held results wait this long for news of a newer owner.
RECONCILE_S = 2.0


class TakeOverMixin(FenceMixin):
    """Membership handlers; `Ownership` provides the result-deciding helpers."""

    known: set[str]
    suspected: set[str]
    dead: DeadMembers
    _quorum_since: float | None
    _reconcile_at: float | None
    _orphans: dict[str, tuple[str, float, bool]]  # task -> (dead owner, since, restart)

    def _decide(self, e: Entry, ev: m.TaskFinished | TaskCopy, now: float) -> None:
        raise NotImplementedError

    def _await_or_record(self, e: Entry, now: float) -> None:
        raise NotImplementedError

    def _may_decide(self, now: float) -> bool:
        raise NotImplementedError

    def _final_copy(self, e: Entry, ev: m.TaskFinished) -> TaskCopy:
        raise NotImplementedError

    def in_quorum(self) -> bool:
        """More than half of the known members are live and unsuspected (or the mesh
        has <= 2 nodes, where a crash and a partition cannot be told apart: we choose
        availability). Suspicion counts against us: the minority side of a partition
        usually suspects the others before the majority declares it dead, so it
        stops deciding before its tasks are taken over. "Usually" because SWIM
        detects members one probe at a time; the backstop is that a stale owner's
        result is only proposed to the newer owner, never recorded over it."""
        healthy = (self.live - self.suspected) & self.known
        return len(self.known) <= 2 or 2 * len(healthy) > len(self.known)

    # ------------------------------------------------------------------ membership

    def _on_peer_up(self, ev: m.PeerUp, now: float) -> None:
        """A member is back (restart, healed partition): re-send what it may hold a
        stale version of, so double owners from a partition converge."""
        node = ev.node_id
        self.live.add(node)
        self.known.add(node)
        self.dead.back(node)
        self.suspected.discard(node)
        for task_id, (owner, _, restart) in list(self._orphans.items()):
            if owner == node and not restart:  # back with its state: not an orphan
                del self._orphans[task_id]
        for e in self._tasks.values():
            if e.fenced_by == node:  # back: what it did meanwhile, reconciling tells us
                e.fenced_since = e.fenced_by = None
        self._quorum_changed(now)
        for e in self._tasks.values():
            if e.role == OWNER and node in e.copy.former and node != self.node_id:
                self._emit(m.ReplicateTo(node, e.copy))
        for e in list(self._tasks.values()):  # results kept for an owner we could not reach
            if e.held is not None and e.role == REPLICA and e.copy.owner == node \
                    and self.node_id not in e.copy.replicas:  # fmt: skip
                self._emit(m.ReplicateTo(node, self._final_copy(e, e.held)))
                self._forget(e.copy, now)

    def _on_peer_restarted(self, ev: m.PeerRestarted, now: float) -> None:
        """Live, but its old tasks died with its process: orphan them now. Offers to
        it are taken back too: the new process never heard of them."""
        self._orphan_tasks_of(ev.node_id, now, restart=True)
        self._quorum_changed(now)
        for e in list(self._tasks.values()):
            if e.role == OFFERING and e.offer is not None and e.offer.owner == ev.node_id:
                self._take_back(e, now)

    def _orphan_tasks_of(self, node: str, now: float, *, restart: bool) -> None:
        """Every copy `node` owned (final ones too: they are re-homed to keep R copies)."""
        for e in self._tasks.values():
            if e.role == REPLICA and e.copy.owner == node:
                self._orphans[e.copy.task_id] = (node, now, restart)

    def _on_peer_suspected(self, ev: m.PeerSuspected, now: float) -> None:
        if ev.node_id != self.node_id:
            self.suspected.add(ev.node_id)
            self._quorum_changed(now)

    def _on_peer_chosen(self, ev: m.PeerChosen, now: float) -> None:
        e = self._tasks.get(ev.task_id)
        if e is not None and e.role == OWNER and not e.running and not e.copy.final \
                and e.held is None and ev.node_id in self.live:  # fmt: skip
            self._offer([e], ev.node_id, now, "replace")

    def _on_peer_forgotten(self, ev: m.PeerForgotten, now: float) -> None:
        self.known.discard(ev.node_id)
        self._on_peer_down(m.PeerDown(ev.node_id), now)

    def _on_peer_down(self, ev: m.PeerDown, now: float) -> None:
        gone = ev.node_id
        if gone == self.node_id:
            return
        self.live.discard(gone)
        self.suspected.discard(gone)
        self._orphan_tasks_of(gone, now, restart=False)
        if ev.left:
            self.known.discard(gone)
        else:
            self.dead.died(gone, now)
        self._quorum_changed(now)
        for e in list(self._tasks.values()):
            if e.role == OFFERING and e.offer is not None and e.offer.owner == gone:
                self._take_back(e, now)
            elif e.role == PENDING and e.sender == gone:
                self.counters.adopted += 1
                self._adopt(e, "adopted")
            elif e.role == OWNER and gone in e.copy.replicas:
                self._rereplicate(e, now, gone)

    def _quorum_changed(self, now: float) -> None:
        """Track quorum. In quorum, take over orphans at once — except just after
        regaining it (a healed partition): then orphans and held results wait
        `RECONCILE_S`, long enough to see their owners come back and newer copies."""
        if not self.in_quorum():
            self._quorum_since = None
            return
        if self._quorum_since is None:  # regained: orphans wait for the reconcile
            self._quorum_since = now
            self._reconcile_at = now + RECONCILE_S
            self._ask_former_holders()
        elif self._reconcile_at is None:
            self._take_over_orphans(now)

    def _ask_former_holders(self) -> None:
        """Send every task we own to every node that ever held it, dead or not: one
        that took it over while we were cut off answers with its newer copy before
        `RECONCILE_S` is up, and we stand down instead of deciding a second result."""
        for e in self._tasks.values():
            if e.role == OWNER and (not e.copy.final or e.awaiting is not None):
                for node in e.copy.former - {self.node_id}:
                    self._emit(m.ReplicateTo(node, e.copy))

    def _take_over_orphans(self, now: float) -> None:
        """Resolve the orphan registry: tasks whose copy moved on are dropped from
        it; the ones this node is heir of are taken over (behind the fence)."""
        for task_id, (owner, since, restart) in list(self._orphans.items()):
            e = self._tasks.get(task_id)
            if e is None or e.role != REPLICA or e.copy.owner != owner:
                # pop, not del: a take-over below may re-enter this method (through the
                # fence) and resolve entries of this same snapshot first
                self._orphans.pop(task_id, None)
            elif self._maybe_take_over(e, since, restart, now):
                self._orphans.pop(task_id, None)

    def _rereplicate(self, e: Entry, now: float, gone: str) -> None:
        c = e.copy
        self.counters.rereplicated += 1
        e.fenced_since, e.fenced_by = now, gone  # recording needs the fence (fence.py)
        e.copy = c.with_replicas(self._replicas_for(c.task_id, self.node_id, c.replicas))
        if e.awaiting is not None:
            self._await_or_record(e, now)
        else:
            self._replicate(e.copy)

    def _maybe_take_over(self, e: Entry, since: float, restart: bool, now: float) -> bool:
        """The owner is gone: the first live replica of the copy's list takes over.
        A holder outside the list (a stale copy) never does: it cannot tell a double
        failure from a partition that hides the listed replicas. Nor does a node that
        never saw the owner die (one just restarted, still learning the members), and
        the heir first has the death confirmed by a majority (`fence`); a restart
        (new boot id) is unambiguous and needs no confirmation."""
        c = e.copy
        if c.successor(self.live) != self.node_id:
            return False
        if not restart and not self._dead_confirmed(c.owner, since, now):
            return False
        reps = self._replicas_for(c.task_id, self.node_id, c.replicas)
        if not c.final and e.held is None:
            self.counters.taken_over += 1
            rec = snapshot(c.record)
            if rec.state == "running":
                rec.mark_queued()
            c = c.with_record(rec)
        e = self._own(c.with_owner(self.node_id, c.epoch + 1, reps), "taken over")
        if e.copy.final:  # the dead owner may not have recorded it: record (same run)
            self._await_or_record(e, now)
        elif e.held is not None and self._may_decide(now):
            self._decide(e, e.held, now)
        return True
