"""Who is live, known and suspected, and whether this node is in a quorum.

Why a quorum: a crash and a partition look the same to a failure detector. Taking
over and deciding results only with more than half of the known members live and
unsuspected means that of two sides of a partition at most one does either; the
other holds its results until the heal. After a heal (quorum regained), orphans and
held results wait `RECONCILE_S` while we ask every former holder of our tasks for
newer copies, so an owner cut off from the mesh stands down instead of deciding a
second result. A single crash never loses the quorum (N >= 3), so the heir
re-queues as soon as gossip declares the owner dead.
"""

from __future__ import annotations

import math

from meshlb.mesh.dead_members import DeadMembers

# After the quorum comes back, held results wait this long for news of a newer owner.
RECONCILE_S = 2.0


class Members:
    """The membership view of the ownership core, and its quorum clock."""

    def __init__(self, me: str, live: set[str], dead_quorum_after_s: float | None) -> None:
        self.me = me
        self.live: set[str] = live | {me}
        self.known: set[str] = set(self.live)  # the quorum's denominator
        self.suspected: set[str] = set()
        self.dead = DeadMembers(dead_quorum_after_s)
        self.quorum_since: float | None = -math.inf  # None while out of quorum
        self.reconcile_at: float | None = None  # set when a quorum was just regained

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

    def settled(self, now: float) -> bool:
        """In quorum for `RECONCILE_S` at least: results may be decided."""
        since = self.quorum_since
        return since is not None and now >= since + RECONCILE_S and self.in_quorum()

    def alone(self) -> bool:
        """Has this node never known another member (a mesh of one)?"""
        return self.known == {self.me}

    def up(self, node: str) -> None:
        self.live.add(node)
        self.known.add(node)
        self.dead.back(node)
        self.suspected.discard(node)

    def down(self, node: str, now: float, *, left: bool) -> None:
        self.live.discard(node)
        self.suspected.discard(node)
        if left:
            self.known.discard(node)
        else:
            self.dead.died(node, now)

    def suspect(self, node: str) -> None:
        if node != self.me:
            self.suspected.add(node)

    def forget(self, node: str) -> None:
        self.known.discard(node)

    def expire_dead(self, now: float) -> bool:
        """Members dead long enough leave the quorum's count; True if any did."""
        gone = [n for n in self.dead.expired(now) if n not in self.live and n in self.known]
        self.known.difference_update(gone)
        return bool(gone)

    def quorum_changed(self, now: float) -> str:
        """Track the quorum: "lost", "regained" (the reconcile wait starts now), or
        "held" (in quorum, as before)."""
        if not self.in_quorum():
            self.quorum_since = None
            return "lost"
        if self.quorum_since is None:
            self.quorum_since = now
            self.reconcile_at = now + RECONCILE_S
            return "regained"
        return "held"

    def reconciled(self, now: float) -> bool:
        """Is the reconcile wait over (once: True only at the tick that ends it)?"""
        if self.reconcile_at is not None and self.reconcile_at <= now:
            self.reconcile_at = None
            return True
        return False

    def next_deadline(self) -> float | None:
        dues = [t for t in (self.reconcile_at, self.dead.next_deadline()) if t is not None]
        return min(dues, default=None)

    def validate(self) -> None:
        assert self.me in self.live, "this node is always live to itself"
        assert self.live <= self.known, self.live - self.known
        assert self.me not in self.suspected
        if self.quorum_since is None:
            assert not self.in_quorum(), "out of quorum but in quorum"
