"""The hand-over protocol (forward and steal) of the ownership core, and its entries.

Ownership moves in three phases keyed by (task, epoch):

1. the old owner OFFERS the task at epoch+1 and stops running it (`HandOver`);
2. the new owner holds the offer as PENDING, not queued, and ACKS (`AckHandOver`);
3. the old owner CONFIRMS if its offer is still open (ownership moved; it stays as
   the first replica), or ABORTS if the offer expired and it took the task back at a
   higher epoch (`ConfirmHandOver`).

Why it holds: the new owner queues only on CONFIRM, and the old owner confirms only
an open offer, which it then never takes back — so a hand-over never makes two nodes
run a task. An unacked offer is taken back after `HANDOFF_TIMEOUT_S` or when its
target dies, and a lost CONFIRM is recovered by re-acking — so the task is never
dropped between them. If the old owner dies after an ack, the new owner adopts the
task (a duplicate run is possible only after a failure, which the spec allows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.replication import TaskCopy
from meshlb.mesh.stealing import choose_gifts, choose_victim

OWNER, OFFERING, PENDING, REPLICA = "owner", "offering", "pending", "replica"

# An offer not acked in this time is taken back (a few round trips, plus a GC pause).
HANDOFF_TIMEOUT_S = 2.0
# An acked offer not confirmed in this time is acked again (the confirm was lost);
# a final copy not acked by a replica in this time is sent again.
ACK_RETRY_S = 1.0
# A steal request not answered in this time is forgotten, so we may ask elsewhere.
STEAL_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Entry:
    """What this node knows of one task. `copy` is authoritative for OWNER/REPLICA;
    OFFERING keeps our copy and the `offer` we sent; PENDING holds the offered copy
    and `prev` (our copy before the offer, restored on abort). `held` is a result
    kept while we may not decide it (out of quorum, or not the owner); `awaiting`
    is the run whose final copy waits for a replica's ack before it is recorded;
    `unacked` (owner) the replicas that have not acked the current revision."""

    copy: TaskCopy
    role: str
    running: bool = False
    offer: TaskCopy | None = None
    due_at: float = math.inf
    sender: str | None = None
    prev: TaskCopy | None = None
    held: m.TaskFinished | None = None
    awaiting: str | None = None
    unacked: set[str] = field(default_factory=set)  # replicas yet to ack our copy
    # (owner) replicas that acked some revision of this epoch: they hold the task
    acked_by: set[str] = field(default_factory=set)
    fenced_since: float | None = None  # replica `fenced_by` was replaced after its death
    fenced_by: str | None = None


@dataclass(slots=True)
class OwnershipCounters:
    accepted: int = 0
    handed_over: int = 0
    received: int = 0
    taken_back: int = 0
    taken_over: int = 0
    adopted: int = 0
    rereplicated: int = 0
    duplicates_dropped: int = 0
    results_held: int = 0
    steal_requests: int = 0
    steals_declined: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class HandOverMixin:
    """Forward/steal hand-over handlers; `Ownership` provides the state and helpers."""

    node_id: str
    live: set[str]
    counters: OwnershipCounters
    _tasks: dict[str, Entry]
    _steal_due_at: float | None

    def _emit(self, cmd: m.Command) -> None:
        raise NotImplementedError

    def _arm(self, e: Entry, due_at: float) -> None:
        raise NotImplementedError

    def _replicas_for(self, task_id: str, owner: str, keep: tuple[str, ...]) -> tuple[str, ...]:
        raise NotImplementedError

    def _own(self, c: TaskCopy, reason: str, *, run: bool = True) -> Entry:
        raise NotImplementedError

    def _replicate(self, c: TaskCopy, skip: str | None = None) -> None:
        raise NotImplementedError

    def _forget(self, c: TaskCopy, now: float) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ phases

    def _offer(self, entries: list[Entry], to: str, now: float, reason: str) -> None:
        """Phase 1: stop running them here and offer them to `to` at epoch+1; the new
        owner's replicas are us first (we hold the copy already), then rendezvous."""
        offers: list[TaskCopy] = []
        for e in entries:
            c = e.copy
            reps = self._replicas_for(c.task_id, to, (self.node_id, *c.replicas))
            e.offer = c.with_owner(to, c.epoch + 1, reps)
            e.role = OFFERING
            self._arm(e, now + HANDOFF_TIMEOUT_S)
            offers.append(e.offer)
            if reason != "forward":
                self._emit(m.Unqueue(c.task_id))
        self.counters.handed_over += len(offers)
        self._emit(m.HandOver(to, tuple(offers), reason))

    def _on_handover(self, ev: m.HandOverReceived, now: float) -> None:
        """Phase 2: hold each new offer as PENDING (not queued yet) and ack it."""
        if ev.reason == "steal":
            self._steal_due_at = None
        keys: list[m.TaskKey] = []
        for c in ev.copies:
            e = self._tasks.get(c.task_id)
            if e is not None and e.role == PENDING and e.copy.version == c.version:
                keys.append((c.task_id, c.epoch))  # a repeated offer: ack again
                continue
            if e is not None and (e.copy.final or e.copy.version >= c.version):
                continue  # stale: we already hold something newer
            if e is not None and (e.role in (OWNER, OFFERING) or e.running):
                self._emit(m.ReplicateTo(ev.sender, e.copy))  # two owners: show ours
                continue
            prev = e.copy if e is not None else None
            pending = Entry(c, PENDING, sender=ev.sender, prev=prev)
            self._tasks[c.task_id] = pending
            self._arm(pending, now + ACK_RETRY_S)
            keys.append((c.task_id, c.epoch))
        if keys:
            self._emit(m.AckHandOver(ev.sender, tuple(keys)))

    def _on_acked(self, ev: m.HandOverAcked, now: float) -> None:
        """Phase 3 (old owner): commit the offers still open, abort the expired ones.
        A task we no longer know was committed earlier (we drop a copy only when a
        newer owner tells us), so it is confirmed again."""
        committed: list[m.TaskKey] = []
        aborted: list[m.TaskKey] = []
        for task_id, epoch in ev.keys:
            e = self._tasks.get(task_id)
            offer = e.offer if e is not None else None
            if e is not None and e.role == OFFERING and offer is not None \
                    and offer.epoch == epoch and offer.owner == ev.sender:  # fmt: skip
                self._commit_offer(e, offer, now)
                committed.append((task_id, epoch))
            elif e is None or (e.copy.owner == ev.sender and e.copy.epoch >= epoch):
                committed.append((task_id, epoch))
            else:
                aborted.append((task_id, epoch))
        self._emit(m.ConfirmHandOver(ev.sender, tuple(committed), tuple(aborted)))

    def _commit_offer(self, e: Entry, offer: TaskCopy, now: float) -> None:
        old = e.copy
        e.copy, e.role, e.offer, e.due_at = offer, REPLICA, None, math.inf
        for node in old.replicas:  # old replicas not in the new list forget the task
            if node not in offer.replicas and node != offer.owner:
                self._emit(m.ReplicateTo(node, offer))
        if self.node_id not in offer.replicas:
            self._forget(offer, now)

    def _on_confirmed(self, ev: m.HandOverConfirmed, now: float) -> None:
        for task_id, epoch in ev.committed:
            e = self._tasks.get(task_id)
            if e is not None and e.role == PENDING and e.copy.epoch == epoch:
                self._adopt(e, "handed over", skip=ev.sender)
        for task_id, epoch in ev.aborted:
            e = self._tasks.get(task_id)
            if e is not None and e.role == PENDING and e.copy.epoch == epoch:
                self._forget_pending(e, now)

    def _adopt(self, e: Entry, reason: str, skip: str | None = None) -> None:
        c = e.copy
        self.counters.received += 1
        self.counters.by_reason[reason] = self.counters.by_reason.get(reason, 0) + 1
        e.role, e.sender, e.prev, e.due_at = OWNER, None, None, math.inf
        self._emit(m.RunLocally(c.task_id, c.record, reason))
        self._replicate(c, skip=skip)

    def _forget_pending(self, e: Entry, now: float) -> None:
        """An aborted offer: back to the replica we were (we never accept an offer
        for a task we own or run), or forget it, remembering the offer's version."""
        if e.prev is not None:
            self._tasks[e.copy.task_id] = Entry(e.prev, REPLICA)
        else:
            self._forget(e.copy, now)

    def _take_back(self, e: Entry, now: float) -> None:
        """The offer expired (or its target died): ours again, at a higher epoch than
        the offer's, so a late ack from the target is answered with an abort."""
        offer = e.offer
        assert offer is not None
        c = e.copy
        reps = self._replicas_for(c.task_id, self.node_id, c.replicas)
        e.offer, e.due_at = None, math.inf
        self.counters.taken_back += 1
        self._own(c.with_owner(self.node_id, offer.epoch + 1, reps), "taken back")

    # ------------------------------------------------------------------ stealing

    def _on_idle(self, ev: m.IdleNoticed, now: float) -> None:
        """Ask the busiest suitable peer, one request at a time (until answered or
        `STEAL_TIMEOUT_S`), so an idle node does not flood the mesh."""
        if self._steal_due_at is not None or ev.free_slots <= 0:
            return
        live_peers = tuple(p for p in ev.peers if p.node_id in self.live)
        victim = choose_victim(ev.local, live_peers)
        if victim is None:
            return
        self._steal_due_at = now + STEAL_TIMEOUT_S
        self.counters.steal_requests += 1
        self._emit(m.SendStealRequest(victim, ev.free_slots, ev.local.models,
                                      ev.local.tokens_per_s))  # fmt: skip

    def _on_steal_requested(self, ev: m.StealRequested, now: float) -> None:
        mine = [w for w in ev.waiting if self._stealable(w.task_id)]
        gifts = choose_gifts(mine, ev.n, ev.models, ev.thief_tokens_per_s,
                             ev.local_tokens_per_s, ev.local_slots)  # fmt: skip
        if not gifts or ev.by not in self.live:
            self._emit(m.DeclineSteal(ev.by))
            return
        self._offer([self._tasks[t] for t in gifts], ev.by, now, "steal")

    def _stealable(self, task_id: str) -> bool:
        e = self._tasks.get(task_id)
        return (e is not None and e.role == OWNER and not e.running
                and not e.copy.final and e.held is None)  # fmt: skip

    def _on_steal_declined(self, ev: m.StealDeclined, now: float) -> None:
        self.counters.steals_declined += 1
        self._steal_due_at = None
