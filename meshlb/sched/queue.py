"""Priority queue with aging: highest effective priority first, FIFO within a level.

Effective priority of a waiting task at time `now`:

    priority + (now - enqueued_at) / aging_s

Comparing two tasks at the same `now`, the `now` term cancels, so ordering by
effective priority (descending) equals ordering by the static key

    enqueued_at - priority * aging_s      (ascending)

which never changes while the task waits. So a plain binary heap gives O(log n)
push/pop with aging, and a task that waited `(p_new - p_old) * aging_s` longer than a
newer task overtakes it. Ties (same key) go to the lower sequence number: FIFO.

Cancel is lazy: the task leaves the index at once (O(1)); its heap entry is skipped
when it surfaces, and the heap is rebuilt when more than half of it is dead, so memory
stays O(live) and every operation stays O(log n) amortised.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass

MIN_PRIORITY = 1
MAX_PRIORITY = 10


@dataclass(frozen=True, slots=True)
class QueuedView:
    """A queued task as the scheduler sees it (also what work stealing moves).

    `enqueued_at` fixes the task's place (kept across a busy requeue); `queued_at` is
    when it last entered the queue (what its reported wait is measured from); `seq`
    breaks ties FIFO and is unique per submission.
    """

    task_id: str
    priority: int
    est_tokens: int
    enqueued_at: float
    queued_at: float
    seq: int

    def effective_priority(self, now: float, aging_s: float) -> float:
        """Priority plus one level per `aging_s` waited since `enqueued_at`."""
        if math.isinf(aging_s):
            return float(self.priority)
        return self.priority + (now - self.enqueued_at) / aging_s


def order_key(task: QueuedView, aging_s: float) -> float:
    """Static heap key; smaller starts first. `aging_s = inf` means no aging."""
    if math.isinf(aging_s):
        return -float(task.priority)
    return task.enqueued_at - task.priority * aging_s


class AgingQueue:
    """Heap of `(key, seq, task_id)` plus an index `task_id -> QueuedView`.

    Invariant: a heap entry is live iff `index[task_id].seq == seq`; every live task
    has exactly one live heap entry; `len(self)` counts live tasks only.
    """

    __slots__ = ("_aging_s", "_by_priority", "_heap", "_index")

    def __init__(self, aging_s: float) -> None:
        self._aging_s = aging_s
        self._heap: list[tuple[float, int, str]] = []
        self._index: dict[str, QueuedView] = {}
        self._by_priority: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._index

    def __iter__(self) -> Iterator[QueuedView]:
        """Live tasks in no particular order."""
        return iter(self._index.values())

    @property
    def aging_s(self) -> float:
        return self._aging_s

    def depth_by_priority(self) -> dict[int, int]:
        """Queued tasks per (base) priority, every level 1-10 present."""
        return {p: self._by_priority.get(p, 0) for p in range(MIN_PRIORITY, MAX_PRIORITY + 1)}

    def push(self, task: QueuedView) -> None:
        """Add a task (its id must not be queued already). O(log n)."""
        if task.task_id in self._index:
            raise KeyError(f"task {task.task_id} is already queued")
        self._index[task.task_id] = task
        self._by_priority[task.priority] = self._by_priority.get(task.priority, 0) + 1
        heapq.heappush(self._heap, (order_key(task, self._aging_s), task.seq, task.task_id))

    def peek(self) -> QueuedView | None:
        """The task that starts next, or None. Amortised O(log n) (drops dead entries)."""
        heap = self._heap
        while heap:
            _, seq, task_id = heap[0]
            task = self._index.get(task_id)
            if task is not None and task.seq == seq:
                return task
            heapq.heappop(heap)
        return None

    def pop(self) -> QueuedView | None:
        """Remove and return the head. Amortised O(log n)."""
        task = self.peek()
        if task is not None:
            heapq.heappop(self._heap)
            self._forget(task)
        return task

    def remove(self, task_id: str) -> QueuedView | None:
        """Remove a queued task wherever it is (lazy). None if it is not queued."""
        task = self._index.get(task_id)
        if task is None:
            return None
        self._forget(task)
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._index):
            self._rebuild()
        return task

    def set_aging(self, aging_s: float) -> None:
        """Change the aging rate: every key changes, so rebuild (O(n), rare)."""
        if aging_s != self._aging_s:
            self._aging_s = aging_s
            self._rebuild()

    def ordered(self) -> list[QueuedView]:
        """Live tasks in expected start order. O(n log n); for stats and stealing only."""
        aging_s = self._aging_s
        return sorted(self._index.values(), key=lambda t: (order_key(t, aging_s), t.seq))

    def _forget(self, task: QueuedView) -> None:
        del self._index[task.task_id]
        left = self._by_priority[task.priority] - 1
        if left:
            self._by_priority[task.priority] = left
        else:
            del self._by_priority[task.priority]

    def _rebuild(self) -> None:
        aging_s = self._aging_s
        self._heap = [(order_key(t, aging_s), t.seq, t.task_id) for t in self._index.values()]
        heapq.heapify(self._heap)
