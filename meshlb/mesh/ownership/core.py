"""The ownership core's facade: one object per node that composes the machines.

Pure (sans-I/O): `handle(event, now) -> [Command]`, `tick(now)`, `next_deadline()`.
Each concern is a small machine with its own state and deadline, and the facade
only routes events to them (`_handlers`, a table, not if/elif) and fires timers:

* `Table` (roles): each task's copy and role, changed only by the transition table;
* `Members`: live/known/suspected members and the quorum;
* `Replicas`: the owner's copies sent to its replicas, re-sent until acked;
* `Merge`: a copy that arrived from a peer (the replica side);
* `HandOvers`: the three-phase move of ownership (forward, steal, replace);
* `Steals`: the thief's one open request and the victim's answer;
* `Results`: who decides a result, and when it is recorded (once);
* `Fence`: a death confirmed by a majority before it is acted on;
* `TakeOvers`: what joins, deaths and leaves do to the tasks held here.

Invariants (checked by `validate`, run after every step when `check_invariants`): one
owner per task (ownership moves only by hand-over or take-over); every role's side
state exists exactly for that role; what a replica acked is tracked only for what
we own; a result waits for an ack only as the owner of its final copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership.fence import Fence
from meshlb.mesh.ownership.handover import HandOvers
from meshlb.mesh.ownership.members import Members
from meshlb.mesh.ownership.merge import Merge
from meshlb.mesh.ownership.replicas import Replicas
from meshlb.mesh.ownership.results import Results
from meshlb.mesh.ownership.roles import Change, Role, Table
from meshlb.mesh.ownership.shared import Outbox, OwnershipCounters
from meshlb.mesh.ownership.steals import Steals
from meshlb.mesh.ownership.takeover import TakeOvers
from meshlb.mesh.replication import TaskCopy

# A dropped copy's version is remembered this long, so that an older copy arriving
# late (messages overtake each other) is not mistaken for a new assignment.
TOMBSTONE_S = 600.0
# Final copies are forgotten by the core after this (the driver's store keeps them);
# until then they are re-replicated like any task, so a result survives a death.
FINAL_RETENTION_S = 3600.0


class Ownership:
    """The ownership core of one node. Not thread-safe; one driver owns it."""

    def __init__(
        self,
        node_id: str,
        live: set[str] | None = None,
        replication: int = 2,
        final_retention_s: float = FINAL_RETENTION_S,
        dead_quorum_after_s: float | None = None,
        *,
        check_invariants: bool = False,
    ) -> None:
        """`check_invariants`: run `validate()` after every `handle` and `tick` (as
        dask's `WorkerState(validate=True)`), for tests and simulations."""
        if replication < 1:
            raise ValueError(f"replication factor must be >= 1, got {replication}")
        self.node_id = node_id
        self.check_invariants = check_invariants
        self.counters = OwnershipCounters()
        self._now = -math.inf
        out = self._out = Outbox(node_id)
        table = self._table = Table(TOMBSTONE_S)
        members = self._members = Members(node_id, set(live or ()), dead_quorum_after_s)
        replicas = self._replicas = Replicas(table, members, out, replication)
        fence = self._fence = Fence(members, out, self._after_verdict)
        results = self._results = Results(
            table, members, replicas, fence, out, self.counters, final_retention_s
        )
        handovers = self._handovers = HandOvers(self, table, members, replicas, out, self.counters)
        self._steals = Steals(table, members, handovers, results, out, self.counters)
        self._merge = Merge(self, table, members, results, out)
        self._takeovers = TakeOvers(
            self, table, members, replicas, fence, results, handovers, out, self.counters
        )
        t = self._takeovers
        self._handlers: dict[type[Any], Callable[[Any, float], None]] = {
            m.TaskAccepted: self._on_accepted, m.TaskStarted: self._on_started,
            m.RunLost: self._on_run_lost, m.TaskFinished: results.on_finished,
            m.Replicate: self._merge.on_copy, m.AckReplica: self._on_replica_acked,
            m.IdleNoticed: self._steals.on_idle, m.StealRequested: self._steals.on_requested,
            m.DeclineSteal: lambda ev, now: self._steals.on_declined(ev),
            m.HandOver: self._on_handover, m.AckHandOver: handovers.on_ack,
            m.ConfirmHandOver: handovers.on_confirm, m.PeerChosen: self._on_peer_chosen,
            m.PeerUp: t.on_up, m.PeerDown: t.on_down, m.PeerRestarted: t.on_restarted,
            m.PeerSuspected: t.on_suspected, m.PeerForgotten: t.on_forgotten,
            m.CheckReach: lambda ev, now: fence.on_check(ev), m.AnswerReach: fence.on_answer,
        }  # fmt: skip

    # ------------------------------------------------------------------ stepping

    def handle(self, event: m.Event, now: float) -> list[m.Command]:
        """Apply one event; return the commands to carry out, in order, each with the
        event as its cause."""
        handler = self._handlers.get(type(event))
        if handler is None:  # a StealAsk is completed by the driver (StealRequested)
            raise TypeError(f"the ownership core does not take {type(event).__name__}")
        self._now = now
        self._out.cause = m.stimulus(event)
        handler(event, now)
        if self.check_invariants:
            self.validate()
        return self._out.flush()

    def tick(self, now: float) -> list[m.Command]:
        """Fire what is due: offers, re-sends, retention, quorum, fence, reconcile."""
        self._now = now
        self._out.cause = "timer"
        self._handovers.fire(now)
        self._out.cause = "timer: copies not acked"
        self._results.retry_due(self._replicas.resend_due(now), now)
        self._out.cause = "timer: final copy retention"
        for c in self._results.expired_finals(now):
            self.forget(c, now)
        self._table.expire_tombs(now)
        self._steals.tick(now)
        self._out.cause = "timer: dead long enough to leave the quorum"
        if self._members.expire_dead(now):
            self._takeovers.quorum_changed(now)
        self._fence.tick(now)
        if self._members.reconciled(now):
            self._out.cause = "timer: reconcile after regaining the quorum"
            if self._members.in_quorum():
                self._takeovers.take_over_orphans(now)
            self._results.decide_held(now)
        if self.check_invariants:
            self.validate()
        return self._out.flush()

    def next_deadline(self) -> float | None:
        machines = (self._handovers, self._replicas, self._results, self._steals,
                    self._members, self._fence)  # fmt: skip
        return min((d for x in machines if (d := x.next_deadline()) is not None), default=None)

    def validate(self) -> None:
        """Check the invariants of the whole core (AssertionError if one is broken)."""
        me = self.node_id
        self._members.validate()
        self._table.validate(me)
        self._replicas.validate()
        self._handovers.validate()
        self._results.validate()
        self._fence.validate()
        self._takeovers.validate()
        for e in self._table.entries.values():
            if e.role is Role.OWNER:
                assert me not in e.copy.replicas, f"owner {me} listed as its own replica"

    # ------------------------------------------------------------------ queries

    @property
    def live(self) -> set[str]:
        return self._members.live

    @property
    def known(self) -> set[str]:
        return self._members.known

    @property
    def suspected(self) -> set[str]:
        return self._members.suspected

    def in_quorum(self) -> bool:
        return self._members.in_quorum()

    def get(self, task_id: str) -> TaskCopy | None:
        """Our copy of a task (for `GET /v1/tasks/{id}`), whatever our role."""
        e = self._table.get(task_id)
        return None if e is None else e.copy

    def role(self, task_id: str) -> Role | None:
        return self._table.role(task_id)

    def settled(self, task_id: str) -> bool:
        """Is a task we accepted held by another node too? Its replicas acked our
        copy, or the peer we forwarded it to owns it (we stay a replica). With no
        live replica there is nobody to wait for."""
        e = self._table.get(task_id)
        if e is None or e.role not in (Role.OWNER, Role.REPLICA):
            return False
        return e.role is Role.REPLICA or self._replicas.settled(e.copy)

    def held_elsewhere(self, task_id: str) -> bool:
        """Does a second node hold the task now (what a 202 promises)? A live replica
        acked a revision of our copy (an older one is enough: it can take the task
        over), or the peer we forwarded it to owns it. Unlike `settled`, "no live
        replica to wait for" is not enough — unless this node has never known another
        member (a mesh of one cannot do better)."""
        e = self._table.get(task_id)
        if e is None or e.role not in (Role.OWNER, Role.REPLICA):
            return False
        return (e.role is Role.REPLICA or self._replicas.held_by_a_replica(e.copy)
                or self._members.alone())  # fmt: skip

    def holders(self, task_id: str) -> dict[str, object]:
        """Who holds the task as this node sees it (for a log line that says why)."""
        e = self._table.get(task_id)
        if e is None:
            return {"role": None}
        return {
            "role": e.role.value,
            "owner": e.copy.owner,
            "replicas": list(e.copy.replicas),
            "unacked": sorted(self._replicas.unacked.get(task_id, ())),
            "acked_by": sorted(self._replicas.acked_by.get(task_id, ())),
            "live": sorted(self._members.live),
        }

    def owned(self) -> list[TaskCopy]:
        """Unfinished tasks this node owns (queued, running, or being offered)."""
        return [e.copy for e in self._table.entries.values()
                if e.role in (Role.OWNER, Role.OFFERING) and not e.copy.final]  # fmt: skip

    def copies(self) -> list[TaskCopy]:
        return [e.copy for e in self._table.entries.values()]

    # ------------------------------------------------------------------ steps that span machines

    def own(self, c: TaskCopy, change: Change, reason: str, *, run: bool = True) -> None:
        """Become the owner of copy `c` (already at its new epoch): store, queue, copy.
        A result held here stays held (it is decided, not run again)."""
        task_id = c.task_id
        held = task_id in self._results.held
        self._table.move(c, change, self._now)
        self._table.running.discard(task_id)
        self._replicas.reset(task_id)
        self._results.restart(task_id)
        if run and not c.final and not held:
            self._out.emit(m.RunLocally(task_id, c.record, reason))
        self._replicas.replicate(c, self._now)

    def forget(self, c: TaskCopy, now: float) -> None:
        self._table.move(c, Change.FORGET, now)

    def _after_verdict(self, now: float) -> None:
        """A majority check ended: what waited for one looks again."""
        self._takeovers.take_over_orphans(now)
        self._results.retry_fenced(now)

    # ------------------------------------------------------------------ local events

    def _on_accepted(self, ev: m.TaskAccepted, now: float) -> None:
        rec, me = ev.record, self.node_id
        if rec.id in self._table.entries:
            return  # idempotent: the same acceptance twice is one task
        self.counters.accepted += 1
        reps = self._replicas.choose(rec.id, me, ())
        c = TaskCopy(rec, me, 1, reps, frozenset({me, *reps}))
        to = ev.forward_to
        forward = to is not None and to != me and to in self._members.live
        self.own(c, Change.ACCEPT, "accepted", run=not forward)
        if forward and to is not None:
            self._handovers.offer([c], to, now, "forward")

    def _on_started(self, ev: m.TaskStarted, now: float) -> None:
        e = self._table.get(ev.task_id)
        if e is None or e.role is not Role.OWNER or e.copy.final:
            return
        self._table.running.add(ev.task_id)
        c = e.copy.with_record(e.copy.record.started(self.node_id, ev.at))
        self._table.update(c)
        self._replicas.replicate(c, now)

    def _on_run_lost(self, ev: m.RunLost, now: float) -> None:
        e = self._table.get(ev.task_id)
        if e is None or e.copy.final or ev.task_id not in self._table.running:
            return
        self._table.running.discard(ev.task_id)
        if e.role is Role.OWNER:
            c = e.copy.with_record(e.copy.record.requeued())
            self._table.update(c)
            self._replicas.replicate(c, now)

    def _on_replica_acked(self, ev: m.AckReplica, now: float) -> None:
        self._results.on_acked(ev, self._replicas.acked(ev), now)

    def _on_handover(self, ev: m.HandOver, now: float) -> None:
        if ev.reason == "steal":
            self._steals.answered()
        self._handovers.on_offer(ev, now)

    def _on_peer_chosen(self, ev: m.PeerChosen, now: float) -> None:
        e = self._table.get(ev.task_id)
        if e is not None and e.role is Role.OWNER and ev.task_id not in self._table.running \
                and not e.copy.final and ev.task_id not in self._results.held \
                and ev.node_id in self._members.live:  # fmt: skip
            self._handovers.offer([e.copy], ev.node_id, now, "replace")
