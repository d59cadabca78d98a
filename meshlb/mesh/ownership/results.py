"""Results: who decides a task's outcome, and when it is recorded (exactly once).

Only the owner decides, and only in a settled quorum (`RECONCILE_S` after regaining
it); it records (`RecordFinal`, decided_here) once a replica has acked the final
copy, so a result that dies with its node before anyone saw it was never recorded,
and one a replica saw is recorded again by the heir with the same run id
(idempotent). A result produced elsewhere (a stale owner, a falsely dead one) is
held and proposed to the current owner, which decides it if it has none yet — the
first result wins; any later one is dropped and counted (`DropDuplicateResult`).
After a dead replica was replaced, recording also waits for the fence (`fence`).
"""

from __future__ import annotations

from collections import deque

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership.fence import Fence
from meshlb.mesh.ownership.members import Members
from meshlb.mesh.ownership.replicas import Replicas
from meshlb.mesh.ownership.roles import Entry, Role, Table
from meshlb.mesh.ownership.shared import ACK_RETRY_S, Outbox, OwnershipCounters
from meshlb.mesh.replication import TaskCopy


class Results:
    """Held results, results waiting for an ack, and the retention of final copies."""

    def __init__(self, table: Table, members: Members, replicas: Replicas, fence: Fence,
                 out: Outbox, counters: OwnershipCounters, retention_s: float) -> None:  # fmt: skip
        self.table, self.members, self.replicas, self.fence = table, members, replicas, fence
        self.out, self.counters, self.retention_s = out, counters, retention_s
        self.held: dict[str, m.TaskFinished] = {}  # a result we may not decide (yet)
        self.awaiting: dict[str, str] = {}  # owner: run id waiting for a replica's ack
        self.fenced: dict[str, tuple[float, str]] = {}  # owner: (since, replaced replica)
        self.finals: deque[tuple[float, str]] = deque()  # (forget_at, task id)
        table.on_move.append(self.role_changed)

    def on_finished(self, ev: m.TaskFinished, now: float) -> None:
        """The owner in a settled quorum decides; anyone else holds the result (and
        proposes it to the live owner), so only one node ever decides a task."""
        e = self.table.get(ev.task_id)
        if e is None or e.copy.final or ev.task_id in self.held:
            self.drop(ev.task_id, self.run_id(e), e.copy.run_id if e else None)
            return
        self.table.running.discard(ev.task_id)
        if e.role is Role.OWNER and self.members.settled(now):
            self.decide(e, ev, now)
            return
        self.held[ev.task_id] = ev
        self.counters.results_held += 1
        owner = e.copy.owner
        if e.role is not Role.OWNER and owner != self.members.me and owner in self.members.live:
            self.out.send(owner, m.Replicate(self.final_copy(e, ev)))

    def run_id(self, e: Entry | None) -> str:
        c = e.copy if e is not None else None
        return f"{self.members.me}:{c.epoch if c else 0}:{c.record.attempts if c else 0}"

    def final_copy(self, e: Entry, ev: m.TaskFinished) -> TaskCopy:
        # a result is produced by a run here, whatever our copy says (it may be a
        # newer owner's, re-queued)
        node = self.members.me if ev.state == "succeeded" else None
        rec = e.copy.record.finished(ev.state, ev.at, node=node, result=ev.result,
                                     error=ev.error, error_status=ev.error_status)  # fmt: skip
        return e.copy.with_record(rec, self.run_id(e))

    def drop(self, task_id: str, run_id: str, kept: str | None) -> None:
        self.counters.duplicates_dropped += 1
        self.out.emit(m.DropDuplicateResult(task_id, run_id, kept))

    def decide(self, e: Entry, ev: m.TaskFinished | TaskCopy, now: float) -> None:
        """Owner only: make the result final here and record it once a replica acks."""
        c = self.final_copy(e, ev) if isinstance(ev, m.TaskFinished) \
            else e.copy.with_record(ev.record, ev.run_id)  # fmt: skip
        self.table.update(c)
        self.held.pop(c.task_id, None)
        self.finals.append((now + self.retention_s, c.task_id))
        self.await_or_record(c, now)

    def decide_held(self, now: float) -> None:
        """The reconcile wait is over: decide the results held meanwhile."""
        for task_id, ev in list(self.held.items()):
            e = self.table.get(task_id)
            if e is not None and e.role is Role.OWNER and self.members.settled(now):
                self.decide(e, ev, now)

    def await_or_record(self, c: TaskCopy, now: float) -> None:
        """Record once a replica holds the final copy (none live: record now); out of
        quorum or behind a fence, keep waiting (the retry timer resends until then)."""
        live_replicas = bool(self.replicas.live_replicas(c))
        if live_replicas or not self._may_record(c.task_id, now):
            self.awaiting[c.task_id] = c.run_id or ""
            self.replicas.replicate(c, now)
            if not live_replicas:
                self.replicas.retry.arm(c.task_id, now + ACK_RETRY_S)
        else:
            self._record(c)

    def _may_record(self, task_id: str, now: float) -> bool:
        """In a settled quorum, and — if a replica was replaced after a death — after
        the dead replica's death confirmed by a majority (`fence`)."""
        if not self.members.settled(now):
            return False
        fenced = self.fenced.get(task_id)
        return fenced is None or self.fence.dead_confirmed(fenced[1], fenced[0], now)

    def retry_fenced(self, now: float) -> None:
        """A majority check succeeded: record the results that only waited for it."""
        for task_id in list(self.fenced):
            e = self.table.get(task_id)
            if e is not None and task_id in self.awaiting and self.replicas.all_acked(task_id) \
                    and self._may_record(task_id, now):  # fmt: skip
                self._record(e.copy)

    def _record(self, c: TaskCopy) -> None:
        self.awaiting.pop(c.task_id, None)
        self.fenced.pop(c.task_id, None)
        self.replicas.retry.cancel(c.task_id)
        self.out.emit(m.RecordFinal(c, decided_here=True))

    def on_acked(self, ev: m.AckReplica, current: bool, now: float) -> None:
        """A replica acked (`current`: our current revision): record if it acked the
        final copy we wait on."""
        e = self.table.get(ev.task_id)
        if not current or e is None:
            return
        run = self.awaiting.get(ev.task_id)
        if run is not None and run == ev.run_id and self._may_record(ev.task_id, now):
            self._record(e.copy)
        if self.replicas.all_acked(ev.task_id) and ev.task_id not in self.awaiting:
            self.replicas.retry.cancel(ev.task_id)

    def retry_due(self, task_ids: list[str], now: float) -> None:
        """Owned tasks whose re-send timer found every replica acked: record if waiting."""
        for task_id in task_ids:
            e = self.table.get(task_id)
            if e is not None and task_id in self.awaiting:
                self.await_or_record(e.copy, now)

    def learned(self, c: TaskCopy, now: float, dropped_run: str | None = None) -> None:
        """A final copy arrived for a task we hold: record it (not decided here). A
        result we held for it (`dropped_run`) is a duplicate now."""
        self.finals.append((now + self.retention_s, c.task_id))
        self.out.emit(m.RecordFinal(c, decided_here=False))
        self.held.pop(c.task_id, None)
        if dropped_run is not None:
            self.drop(c.task_id, dropped_run, c.run_id)

    def fence_after_death(self, task_id: str, dead: str, now: float) -> None:
        self.fenced[task_id] = (now, dead)

    def unfence(self, node: str) -> None:
        """`node` is back: what it did meanwhile, reconciling tells us."""
        for task_id, (_, by) in list(self.fenced.items()):
            if by == node:
                del self.fenced[task_id]

    def expired_finals(self, now: float) -> list[TaskCopy]:
        """Final copies kept long enough (the driver's store keeps them): to forget."""
        out: list[TaskCopy] = []
        while self.finals and self.finals[0][0] <= now:
            e = self.table.get(self.finals.popleft()[1])
            if e is not None and e.copy.final and e.role in (Role.OWNER, Role.REPLICA) \
                    and e.copy.task_id not in self.awaiting:  # fmt: skip
                out.append(e.copy)
        return out

    def restart(self, task_id: str) -> None:
        """A new ownership: nothing decided by it yet (a held result stays)."""
        self.awaiting.pop(task_id, None)
        self.fenced.pop(task_id, None)

    def role_changed(self, task_id: str, role: Role | None) -> None:
        if role is not Role.OWNER:
            self.restart(task_id)
        if role is None or role is Role.PENDING:
            self.held.pop(task_id, None)

    def next_deadline(self) -> float | None:
        return self.finals[0][0] if self.finals else None

    def validate(self) -> None:
        for task_id, run in self.awaiting.items():
            e = self.table.entries[task_id]
            assert e.role is Role.OWNER and e.copy.final and e.copy.run_id == run, (task_id, e)
        assert self.held.keys() <= self.table.entries.keys()
        assert self.fenced.keys() <= self.table.entries.keys()
