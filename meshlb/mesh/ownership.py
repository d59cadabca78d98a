"""Task ownership: who runs each accepted task, who keeps copies, who takes over.

Pure (sans-I/O): `handle(event, now) -> [Command]`, `tick(now)`, `next_deadline()`.
One instance per node; messages and timers belong to the driver. Events and commands
are in `ownership_msgs`, copies and the merge rule in `replication`, the forward/steal
protocol in `handover`, membership (quorum, take-over) in `takeover`, the majority
fence in `fence`, deciding and recording results in `results`, the stealing policy
in `stealing`.

Invariants, and the rule that keeps each:

* One owner: the owner is the node where the task is queued or running; ownership
  moves only through the three-phase hand-over (`handover`), so a forward or a steal
  never makes two nodes run a task and never drops it.
* Durability: the owner replicates every state change to R-1 replicas (sticky,
  rendezvous-filled; `replication.choose_replicas`); replicas ack each revision and
  the owner re-sends until they do, so a lost message never leaves one behind. A
  dropped copy leaves a tombstone, so an older copy that arrives late (messages
  overtake each other) is not taken for a new assignment.
* Take-over: when an owner dies or leaves, every holder of a copy computes the first
  live node of the copy's replica list; only that node re-queues the task (epoch+1).
  Lost replicas are replaced. Take-overs need a quorum (more than half of the known
  members live), so the two sides of a partition do not both take a task over.
* One recorded result: only the owner decides a result, and only once a replica has
  acked the final copy (`AckReplica`), so a result that dies with its node before
  anyone else saw it was never recorded, and one that a replica saw is adopted by
  the heir (recorded again with the same run id, idempotent). A non-owner's result
  is proposed to the owner; out of quorum, results are held and decided after the
  quorum has been back for `RECONCILE_S` (long enough to learn of a newer owner).
  A second result is dropped and counted (`DropDuplicateResult`).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.dead_members import DeadMembers
from meshlb.mesh.handover import (
    ACK_RETRY_S,
    OFFERING,
    OWNER,
    PENDING,
    REPLICA,
    Entry,
    OwnershipCounters,
)
from meshlb.mesh.replication import TaskCopy, choose_replicas, conflicting_finals, newer, snapshot
from meshlb.mesh.results import ResultsMixin

__all__ = ["OFFERING", "OWNER", "PENDING", "REPLICA", "Ownership", "OwnershipCounters"]

# A dropped copy's version is remembered this long, so that an older copy arriving
# late (messages overtake each other) is not mistaken for a new assignment.
TOMBSTONE_S = 600.0
# Final copies are forgotten by the core after this (the driver's store keeps them);
# until then they are re-replicated like any task, so a result survives a death.
FINAL_RETENTION_S = 3600.0


class Ownership(ResultsMixin):
    """The ownership core of one node. Not thread-safe; one driver owns it."""

    def __init__(
        self,
        node_id: str,
        live: set[str] | None = None,
        replication: int = 2,
        final_retention_s: float = FINAL_RETENTION_S,
        dead_quorum_after_s: float | None = None,
    ) -> None:
        if replication < 1:
            raise ValueError(f"replication factor must be >= 1, got {replication}")
        self.node_id = node_id
        self.replication = replication
        self.final_retention_s = final_retention_s
        self.live: set[str] = set(live or ()) | {node_id}
        self.known: set[str] = set(self.live)  # the quorum's denominator
        self.suspected: set[str] = set()
        self.dead = DeadMembers(dead_quorum_after_s)
        self.counters = OwnershipCounters()
        self._tasks: dict[str, Entry] = {}
        self._timers: list[tuple[float, int, str]] = []  # (due_at, seq, task_id)
        self._timer_seq = 0
        self._finals: deque[tuple[float, str]] = deque()  # (forget_at, task_id)
        self._tombs: dict[str, tuple[tuple[int, str], int]] = {}  # task id -> (version, rev)
        self._tomb_order: deque[tuple[float, str]] = deque()
        self._steal_due_at: float | None = None
        self._quorum_since: float | None = -math.inf
        self._reconcile_at: float | None = None
        self._orphans: dict[str, tuple[str, float, bool]] = {}
        self._round: tuple[int, float] | None = None
        self._round_seq = 0
        self._round_asked: set[str] = set()
        self._round_answers: dict[str, frozenset[str]] = {}
        self._verdict: tuple[float, dict[str, frozenset[str]]] = (-math.inf, {})
        self._fence_waiting = False
        self._retry_at = -math.inf
        self._out: list[m.Command] = []
        self._now = -math.inf
        self._handlers: dict[type[Any], Callable[[Any, float], None]] = {
            m.TaskAccepted: self._on_accepted, m.ReplicaReceived: self._on_replica,
            m.ReplicaAcked: self._on_replica_acked, m.TaskStarted: self._on_started,
            m.RunLost: self._on_run_lost, m.TaskFinished: self._on_finished,
            m.IdleNoticed: self._on_idle, m.StealRequested: self._on_steal_requested,
            m.StealDeclined: self._on_steal_declined, m.HandOverReceived: self._on_handover,
            m.HandOverAcked: self._on_acked, m.HandOverConfirmed: self._on_confirmed,
            m.PeerUp: self._on_peer_up, m.PeerDown: self._on_peer_down,
            m.PeerRestarted: self._on_peer_restarted,
            m.PeerSuspected: self._on_peer_suspected, m.PeerForgotten: self._on_peer_forgotten,
            m.PeerChosen: self._on_peer_chosen, m.ReachChecked: self._on_reach_checked,
            m.ReachAnswered: self._on_reach_answered,
        }  # fmt: skip

    # ------------------------------------------------------------------ API

    def handle(self, event: m.Event, now: float) -> list[m.Command]:
        """Apply one event; return the commands to carry out, in order."""
        self._now = now
        self._handlers[type(event)](event, now)
        return self._flush()

    def tick(self, now: float) -> list[m.Command]:
        """Fire due timers (guarded: an entry re-armed or cleared ignores old ones)."""
        self._now = now
        while self._timers and self._timers[0][0] <= now:
            due, _, task_id = heapq.heappop(self._timers)
            e = self._tasks.get(task_id)
            if e is not None and e.due_at == due:
                self._fire(e, now)
        while self._finals and self._finals[0][0] <= now:
            e = self._tasks.get(self._finals.popleft()[1])
            if e is not None and e.copy.final and e.role in (OWNER, REPLICA) and not e.awaiting:
                self._forget(e.copy, now)
        while self._tomb_order and self._tomb_order[0][0] <= now:
            self._tombs.pop(self._tomb_order.popleft()[1], None)
        if self._steal_due_at is not None and self._steal_due_at <= now:
            self._steal_due_at = None
        for node in self.dead.expired(now):
            if node not in self.live and node in self.known:
                self.known.discard(node)  # dead long enough: out of the quorum's count
                self._quorum_changed(now)
        self._fence_tick(now)
        if self._reconcile_at is not None and self._reconcile_at <= now:
            self._reconcile_at = None
            if self.in_quorum():
                self._take_over_orphans(now)
            for e in list(self._tasks.values()):
                if e.held is not None and e.role == OWNER and self._may_decide(now):
                    self._decide(e, e.held, now)
        return self._flush()

    def next_deadline(self) -> float | None:
        while self._timers and self._stale_timer(self._timers[0]):
            heapq.heappop(self._timers)
        dues = [
            t
            for t in (self._steal_due_at, self._reconcile_at, self.dead.next_deadline())
            if t is not None
        ]
        fence_due = self._fence_due()
        if fence_due is not None:
            dues.append(fence_due)
        if self._timers:
            dues.append(self._timers[0][0])
        if self._finals:
            dues.append(self._finals[0][0])
        return min(dues, default=None)

    def get(self, task_id: str) -> TaskCopy | None:
        """Our copy of a task (for `GET /v1/tasks/{id}`), whatever our role."""
        e = self._tasks.get(task_id)
        return None if e is None else e.copy

    def role(self, task_id: str) -> str | None:
        e = self._tasks.get(task_id)
        return None if e is None else e.role

    def settled(self, task_id: str) -> bool:
        """Is a task we accepted held by another node too? Its replicas acked our
        copy, or the peer we forwarded it to owns it (we stay a replica). With no
        live replica there is nobody to wait for."""
        e = self._tasks.get(task_id)
        if e is None or e.role not in (OWNER, REPLICA):
            return False
        return e.role == REPLICA or not (e.unacked & self._live_replicas(e))

    def held_elsewhere(self, task_id: str) -> bool:
        """Does a second node hold the task now (what a 202 promises)? A live replica
        acked a revision of our copy (an older one is enough: it can take the task
        over), or the peer we forwarded it to owns it. Unlike `settled`, "no live
        replica to wait for" is not enough — unless this node has never known another
        member (a mesh of one cannot do better)."""
        e = self._tasks.get(task_id)
        if e is None or e.role not in (OWNER, REPLICA):
            return False
        alone = self.known == {self.node_id}
        return e.role == REPLICA or bool(self._live_replicas(e) & e.acked_by) or alone

    def _live_replicas(self, e: Entry) -> set[str]:
        return {n for n in e.copy.replicas if n in self.live and n != self.node_id}

    def holders(self, task_id: str) -> dict[str, object]:
        """Who holds the task as this node sees it (for a log line that says why)."""
        e = self._tasks.get(task_id)
        if e is None:
            return {"role": None}
        return {
            "role": e.role,
            "owner": e.copy.owner,
            "replicas": list(e.copy.replicas),
            "unacked": sorted(e.unacked),
            "acked_by": sorted(e.acked_by),
            "live": sorted(self.live),
        }

    def owned(self) -> list[TaskCopy]:
        """Unfinished tasks this node owns (queued, running, or being offered)."""
        return [e.copy for e in self._tasks.values()
                if e.role in (OWNER, OFFERING) and not e.copy.final]  # fmt: skip

    def copies(self) -> list[TaskCopy]:
        return [e.copy for e in self._tasks.values()]

    # ------------------------------------------------------------------ helpers

    def _flush(self) -> list[m.Command]:
        out, self._out = self._out, []
        return out

    def _emit(self, cmd: m.Command) -> None:
        self._out.append(cmd)

    def _stale_timer(self, timer: tuple[float, int, str]) -> bool:
        e = self._tasks.get(timer[2])
        return e is None or e.due_at != timer[0]

    def _arm(self, e: Entry, due_at: float) -> None:
        e.due_at = due_at
        self._timer_seq += 1
        heapq.heappush(self._timers, (due_at, self._timer_seq, e.copy.task_id))

    def _fire(self, e: Entry, now: float) -> None:
        if e.role == OFFERING:
            self._take_back(e, now)
        elif e.role == PENDING and e.sender is not None:
            self._arm(e, now + ACK_RETRY_S)
            self._emit(m.AckHandOver(e.sender, ((e.copy.task_id, e.copy.epoch),)))
        elif e.role == OWNER:
            e.unacked &= self.live
            for node in sorted(e.unacked):
                self._emit(m.ReplicateTo(node, e.copy))
            if e.unacked:
                self._arm(e, now + ACK_RETRY_S)
            elif e.awaiting is not None:
                self._await_or_record(e, now)

    def _forget(self, c: TaskCopy, now: float) -> None:
        """Drop our entry, keeping a tombstone of the version that made us drop it."""
        self._tasks.pop(c.task_id, None)
        self._tombs[c.task_id] = (c.version, c.rev)
        self._tomb_order.append((now + TOMBSTONE_S, c.task_id))

    def _replicate(self, c: TaskCopy, skip: str | None = None) -> None:
        """Send `c` to its replicas (`skip` already has it). When it is our own
        current copy, track the acks and re-send every `ACK_RETRY_S` until each
        live replica has acked this revision."""
        targets = {n for n in c.replicas if n != skip and n != self.node_id}
        for node in sorted(targets):
            self._emit(m.ReplicateTo(node, c))
        e = self._tasks.get(c.task_id)
        if e is not None and e.copy is c and e.role == OWNER:
            e.unacked = targets
            if targets:
                self._arm(e, self._now + ACK_RETRY_S)

    def _replicas_for(self, task_id: str, owner: str, keep: tuple[str, ...]) -> tuple[str, ...]:
        return choose_replicas(task_id, owner, keep, self.live, self.replication - 1)

    def _own(self, c: TaskCopy, reason: str, *, run: bool = True) -> Entry:
        """Become the owner of copy `c` (already at its new epoch): store, queue, copy."""
        old = self._tasks.get(c.task_id)
        e = Entry(c, OWNER, held=old.held if old is not None else None)
        self._tasks[c.task_id] = e
        if run and not c.final and e.held is None:
            self._emit(m.RunLocally(c.task_id, c.record, reason))
        self._replicate(c)
        return e

    # ------------------------------------------------------------------ accept / run

    def _on_accepted(self, ev: m.TaskAccepted, now: float) -> None:
        rec = ev.record
        if rec.id in self._tasks:
            return  # idempotent: the same acceptance twice is one task
        self.counters.accepted += 1
        reps = self._replicas_for(rec.id, self.node_id, ())
        c = TaskCopy(snapshot(rec), self.node_id, 1, reps, frozenset({self.node_id, *reps}))
        to = ev.forward_to
        forward = to is not None and to != self.node_id and to in self.live
        e = self._own(c, "accepted", run=not forward)
        if forward and to is not None:
            self._offer([e], to, now, "forward")

    def _on_started(self, ev: m.TaskStarted, now: float) -> None:
        e = self._tasks.get(ev.task_id)
        if e is None or e.role != OWNER or e.copy.final:
            return
        rec = snapshot(e.copy.record)
        rec.mark_running(self.node_id, ev.at)
        e.running = True
        e.copy = e.copy.with_record(rec)
        self._replicate(e.copy)

    def _on_run_lost(self, ev: m.RunLost, now: float) -> None:
        e = self._tasks.get(ev.task_id)
        if e is None or e.copy.final or not e.running:
            return
        e.running = False
        if e.role == OWNER:
            rec = snapshot(e.copy.record)
            rec.mark_queued()
            e.copy = e.copy.with_record(rec)
            self._replicate(e.copy)

    # ------------------------------------------------------------------ replicas

    def _on_replica(self, ev: m.ReplicaReceived, now: float) -> None:
        """Merge a copy; ack it if we now hold exactly that revision as a replica."""
        self._merge(ev, now)
        c = ev.copy
        e = self._tasks.get(c.task_id)
        if e is not None and e.role == REPLICA and e.copy.version == c.version \
                and e.copy.rev == c.rev:  # fmt: skip
            self._emit(m.AckReplica(ev.sender, c.task_id, c.epoch, c.rev, c.run_id))

    def _merge(self, ev: m.ReplicaReceived, now: float) -> None:
        c, me = ev.copy, self.node_id
        e = self._tasks.get(c.task_id)
        if e is None:
            tomb = self._tombs.get(c.task_id)
            if tomb is not None and (c.version, c.rev) <= tomb:
                return  # older than what made us drop it: overtaken by a newer message
            if me in c.replicas or c.owner == me:
                self._tasks[c.task_id] = e = Entry(c, REPLICA)
                if c.final:
                    self._learn_final(e, ev.sender, now)
            else:
                self._forget(c, now)
            return
        if e.role == OWNER and not e.copy.final and c.final:
            self._decide(e, c, now)  # a result proposed by a non-owner: the first wins
            return
        if conflicting_finals(c, e.copy):
            loser = e.copy if newer(c, e.copy) else c
            self._drop(c.task_id, loser.run_id or "", None)
        if newer(c, e.copy):
            self._supersede(e, c, ev.sender, now)
        elif e.copy.version > c.version or (e.copy.final and not c.final):
            self._emit(m.ReplicateTo(ev.sender, e.copy))  # a stale holder: tell it

    def _learn_final(self, e: Entry, sender: str, now: float) -> None:
        c = e.copy
        self._finals.append((now + self.final_retention_s, c.task_id))
        self._emit(m.RecordFinal(c, decided_here=False))
        if e.held is not None:
            self._drop(c.task_id, self._run_id(e), c.run_id)
            e.held = None

    def _supersede(self, e: Entry, c: TaskCopy, sender: str, now: float) -> None:
        """A newer copy (a result, or a higher owner version) replaces ours. A result
        we held is proposed to the new owner, or dropped if it already has one."""
        me, old = self.node_id, e.copy
        was_final = old.final
        if was_final and not c.final:  # our result predates the newer owner: propose it
            if c.owner != me:
                self._emit(m.ReplicateTo(c.owner, old))
            e.role, e.awaiting, e.offer, e.due_at = REPLICA, None, None, math.inf
            return
        if e.role in (OWNER, OFFERING):  # we owned it: our replicas must hear too
            if not e.running and not was_final:
                self._emit(m.Unqueue(c.task_id))
            for node in old.replicas:
                if node != c.owner and node not in c.replicas and node != sender:
                    self._emit(m.ReplicateTo(node, c))
        if c.owner == me and c.final:
            e.copy, e.role = c, OWNER
        elif me in c.replicas or c.owner == me or c.final:
            e.copy, e.role, e.offer, e.due_at = c, REPLICA, None, math.inf
        elif e.held is not None and c.owner not in self.live:
            # A result we hold for a task whose new owner we cannot reach yet (healed
            # partitions re-learn members in any order): keep it, to propose it when
            # that owner is back (`_on_peer_up`), so the first result can still win.
            e.copy, e.role, e.offer, e.due_at = c, REPLICA, None, math.inf
            return
        else:
            self._forget(c, now)
        if c.final and not was_final:
            self._learn_final(e, sender, now)
        elif e.held is not None and c.owner != me and c.owner in self.live:
            self._emit(m.ReplicateTo(c.owner, self._final_copy(e, e.held)))
