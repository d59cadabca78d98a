"""Read-only snapshots of the scheduler, for `/v1/queue`, metrics, gossip and the dashboard.

Frozen slotted dataclasses: a snapshot handed to a driver or a JSON encoder can never
change under it, and never aliases the core's mutable state.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from meshlb.sched.limits import Limits

RECENT_WAITS = 1024
"""How many recent starts the wait percentiles cover: enough for a stable p99, bounded memory."""


@dataclass(frozen=True, slots=True)
class WaitPercentiles:
    """Queue wait of recent starts, in milliseconds (0 when there were none)."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    samples: int


@dataclass(frozen=True, slots=True)
class SchedulerCounters:
    """Monotonic event counts since the scheduler was created."""

    accepted: int = 0
    started: int = 0
    finished: int = 0
    cancelled: int = 0
    rejected: int = 0
    requeued_busy: int = 0
    taken: int = 0  # removed by `take` (work stealing / hand-off), not cancelled


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """One node's queue and capacity at `now`.

    `effective_concurrency` is the concurrency cap in force (lower than
    `limits.max_concurrency` during a busy backoff; None = unlimited). `rpm_used` and
    `tpm_used` cover the sliding 60 s ending at `now`; `tpm_used` holds true token
    counts for finished tasks and estimates for running ones.
    """

    depth_by_priority: dict[int, int]
    queued: int
    running: int
    effective_concurrency: int | None
    backoff_until: float | None
    limits: Limits
    rpm_used: int
    tpm_used: int
    wait: WaitPercentiles
    counters: SchedulerCounters


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 if empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class WaitRecorder:
    """The last `RECENT_WAITS` queue waits, also kept sorted: placement reads the
    node's stats on every request, so a snapshot must not sort (it did, ~0.1 ms a
    request under load, issue 13); an insert into the sorted copy is a bisect and a
    memmove of at most 1024 floats."""

    __slots__ = ("_sorted_s", "_waits_s")

    def __init__(self) -> None:
        self._waits_s: deque[float] = deque()
        self._sorted_s: list[float] = []

    def add(self, waited_s: float) -> None:
        if len(self._waits_s) == RECENT_WAITS:
            oldest = self._waits_s.popleft()
            del self._sorted_s[bisect_left(self._sorted_s, oldest)]
        self._waits_s.append(waited_s)
        insort(self._sorted_s, waited_s)

    def snapshot(self) -> WaitPercentiles:
        ordered = self._sorted_s
        return WaitPercentiles(
            p50_ms=percentile(ordered, 0.50) * 1000.0,
            p95_ms=percentile(ordered, 0.95) * 1000.0,
            p99_ms=percentile(ordered, 0.99) * 1000.0,
            samples=len(ordered),
        )
