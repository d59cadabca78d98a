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

import math
from collections import deque

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.handover import ACK_RETRY_S, OWNER, Entry
from meshlb.mesh.replication import TaskCopy, snapshot
from meshlb.mesh.takeover import RECONCILE_S, TakeOverMixin


class ResultsMixin(TakeOverMixin):
    """Result handlers; `Ownership` holds the state."""

    final_retention_s: float
    _finals: deque[tuple[float, str]]

    def _on_finished(self, ev: m.TaskFinished, now: float) -> None:
        """The owner in a settled quorum decides; anyone else holds the result (and
        proposes it to the live owner), so only one node ever decides a task."""
        e = self._tasks.get(ev.task_id)
        if e is None or e.copy.final or e.held is not None:
            self._drop(ev.task_id, self._run_id(e), e.copy.run_id if e else None)
            return
        e.running = False
        if e.role == OWNER and self._may_decide(now):
            self._decide(e, ev, now)
            return
        e.held = ev
        self.counters.results_held += 1
        owner = e.copy.owner
        if e.role != OWNER and owner != self.node_id and owner in self.live:
            self._emit(m.ReplicateTo(owner, self._final_copy(e, ev)))

    def _run_id(self, e: Entry | None) -> str:
        c = e.copy if e is not None else None
        return f"{self.node_id}:{c.epoch if c else 0}:{c.record.attempts if c else 0}"

    def _final_copy(self, e: Entry, ev: m.TaskFinished) -> TaskCopy:
        rec = snapshot(e.copy.record)
        if ev.state == "succeeded":  # a result is produced by a run here, whatever our
            rec.node = self.node_id  # copy says (it may be a newer owner's, re-queued)
        rec.finish(ev.state, ev.at, result=ev.result, error=ev.error, error_status=ev.error_status)
        return e.copy.with_record(rec, self._run_id(e))

    def _drop(self, task_id: str, run_id: str, kept: str | None) -> None:
        self.counters.duplicates_dropped += 1
        self._emit(m.DropDuplicateResult(task_id, run_id, kept))

    def _may_decide(self, now: float) -> bool:
        since = self._quorum_since
        return since is not None and now >= since + RECONCILE_S and self.in_quorum()

    def _decide(self, e: Entry, ev: m.TaskFinished | TaskCopy, now: float) -> None:
        """Owner only: make the result final here and record it once a replica acks."""
        c = self._final_copy(e, ev) if isinstance(ev, m.TaskFinished) \
            else e.copy.with_record(ev.record, ev.run_id)  # fmt: skip
        e.copy, e.held = c, None
        self._finals.append((now + self.final_retention_s, c.task_id))
        self._await_or_record(e, now)

    def _await_or_record(self, e: Entry, now: float) -> None:
        """Record once a replica holds the final copy (none live: record now); out of
        quorum or behind a fence, keep waiting (the retry timer resends until then)."""
        c = e.copy
        live_replicas = any(n in self.live and n != self.node_id for n in c.replicas)
        if live_replicas or not self._may_record(e, now):
            e.awaiting = c.run_id
            self._replicate(c)
            if not live_replicas:
                self._arm(e, now + ACK_RETRY_S)
        else:
            self._record(e)

    def _may_record(self, e: Entry, now: float) -> bool:
        """In a settled quorum, and — if a replica was replaced after a death — after
        the dead replica's death confirmed by a majority (`fence`)."""
        if not self._may_decide(now):
            return False
        if e.fenced_since is None or e.fenced_by is None:
            return True
        return self._dead_confirmed(e.fenced_by, e.fenced_since, now)

    def _retry_fenced(self, now: float) -> None:
        """A majority check succeeded: record the results that only waited for it."""
        for e in list(self._tasks.values()):
            if e.role == OWNER and e.awaiting is not None and e.fenced_since is not None \
                    and not e.unacked and self._may_record(e, now):  # fmt: skip
                self._record(e)

    def _record(self, e: Entry) -> None:
        e.awaiting, e.fenced_since, e.fenced_by, e.due_at = None, None, None, math.inf
        self._emit(m.RecordFinal(e.copy, decided_here=True))

    def _on_replica_acked(self, ev: m.ReplicaAcked, now: float) -> None:
        e = self._tasks.get(ev.task_id)
        if e is None or e.role != OWNER or e.copy.epoch != ev.epoch:
            return
        e.acked_by.add(ev.sender)  # an older revision still means it holds the task
        if e.copy.rev != ev.rev:
            return
        e.unacked.discard(ev.sender)
        if e.awaiting is not None and e.awaiting == ev.run_id and self._may_record(e, now):
            self._record(e)
        if not e.unacked and e.awaiting is None:
            e.due_at = math.inf
