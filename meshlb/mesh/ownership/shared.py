"""What the ownership core's machines share: timers, the outbox, the counters, and
the two operations that span machines (`Core.own`, `Core.forget`)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from typing import Protocol

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership.roles import Change
from meshlb.mesh.replication import TaskCopy

# An acked offer not confirmed in this time is acked again (the confirm was lost); a
# copy not acked by a replica in this time is sent again.
ACK_RETRY_S = 1.0


class Core(Protocol):
    """The facade, as the machines see it: the steps that touch every machine."""

    def own(self, c: TaskCopy, change: Change, reason: str, *, run: bool = True) -> None:
        """Become the owner of `c` (at its new epoch): store, queue, replicate."""
        ...

    def forget(self, c: TaskCopy, now: float) -> None:
        """Drop the task everywhere, leaving a tombstone of `c`'s version."""
        ...


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


class Timers:
    """One pending deadline per task id (re-arming replaces it). A heap with lazy
    deletion: a fired or replaced entry is skipped because its due time no longer
    matches (DESIGN.md: timers are guarded and re-checked when they fire)."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0

    def arm(self, task_id: str, due_at: float) -> None:
        self._due[task_id] = due_at
        self._seq += 1
        heapq.heappush(self._heap, (due_at, self._seq, task_id))

    def cancel(self, task_id: str) -> None:
        self._due.pop(task_id, None)

    def armed(self, task_id: str) -> bool:
        return task_id in self._due

    def due(self, now: float) -> list[str]:
        """Task ids whose deadline passed, in deadline order (each disarmed)."""
        out: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            due_at, _, task_id = heapq.heappop(self._heap)
            if self._due.get(task_id) == due_at:
                del self._due[task_id]
                out.append(task_id)
        return out

    def next_deadline(self) -> float | None:
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None


class Outbox:
    """Commands in the order the machines emit them, each stamped with the stimulus
    being handled (`cause`), messages also with this node as their sender."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.cause = ""
        self._out: list[m.Command] = []

    def emit(self, cmd: m.RunLocally | m.Unqueue | m.RecordFinal | m.DropDuplicateResult) -> None:
        self._out.append(replace(cmd, cause=self.cause))

    def send(self, to: str, msg: m.Message) -> None:
        self._out.append(m.Send(to, replace(msg, sender=self.node_id, cause=self.cause)))

    def flush(self) -> list[m.Command]:
        out, self._out = self._out, []
        return out
