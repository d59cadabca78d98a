"""Guarded timers: one heap per concern, entries re-checked when they surface.

Entries are never removed early (a refuted suspicion, an answered relay): each heap
has a `live(at, key)` check that drops stale heads when the next deadline is asked
for, and the handler re-checks its own state when an entry fires, so a stale timer
can never act (DESIGN: timers are guarded).

`run_due` fires the due entries of several heaps in time order, ties broken by the
order of the heaps, so one tick behaves exactly as one merged heap would.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", str, int)
INF = math.inf


class Due(Protocol):
    def head_at(self) -> float: ...

    def fire_next(self, now: float) -> None: ...


class TimerHeap(Generic[K]):
    """Deadlines keyed by member id or sequence number, fired through `fire(key, now)`."""

    __slots__ = ("_fire", "_heap", "_live")

    def __init__(self, fire: Callable[[K, float], None], live: Callable[[float, K], bool]):
        self._heap: list[tuple[float, K]] = []
        self._fire: Callable[[K, float], None] = fire
        self._live: Callable[[float, K], bool] = live

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, at: float, key: K) -> None:
        heapq.heappush(self._heap, (at, key))

    def head_at(self) -> float:
        """When the earliest entry (live or not) is due."""
        return self._heap[0][0] if self._heap else INF

    def next_at(self) -> float:
        """When the earliest live entry is due; stale heads are dropped on the way."""
        heap, live = self._heap, self._live
        while heap and not live(heap[0][0], heap[0][1]):
            heapq.heappop(heap)
        return heap[0][0] if heap else INF

    def fire_next(self, now: float) -> None:
        _, key = heapq.heappop(self._heap)
        self._fire(key, now)


def run_due(heaps: Sequence[Due], now: float) -> None:
    """Fire every entry due at `now`, earliest first (also those pushed while firing)."""
    while True:
        best: Due | None = None
        best_at = now
        for h in heaps:
            at = h.head_at()
            if at <= best_at and (best is None or at < best_at):
                best, best_at = h, at
        if best is None:
            return
        best.fire_next(now)
