"""The local scheduler core: one priority queue, started only when the host has room.

Pure (sans-I/O): every call takes `now`; `next_deadline()` says when to call `poll`
again. The Trio driver is `meshlb.sched.driver`.

Policy and the invariants it keeps:

* Order: highest effective priority first (`priority + waited / aging_s`), FIFO within
  a level — see `meshlb.sched.queue`. A task that waited long enough overtakes newer
  higher-priority tasks, so nothing starves.
* Strict head-of-line: only the head may start. When the head does not fit (rpm, tpm
  or concurrency), nothing behind it starts either, even a smaller task that would
  fit. Skipping the head would let a stream of small tasks starve a big one forever;
  the cost is some idle capacity while the head waits, bounded by one 60-s window.
* rpm: a start at `t` is allowed only if the starts in `(t - 60, t]`, itself
  included, are <= rpm. Any 60-s window `[a, a + 60)` lies inside `(t - 60, t]` for
  its last start `t`, and refunds only lower counts, so NO 60-s window ever holds
  more than rpm starts.
* tpm: a start at `t` is allowed only if the tokens charged in `(t - 60, t]` (true
  counts of finished tasks, estimates of running ones) plus its estimate are <= tpm.
  By the same argument, the true tokens of any 60-s window exceed tpm by at most the
  estimate errors (actual - estimate, when positive) of the tasks that were still
  running at the window's last start — at most one request's error with
  max_concurrency 1, at most max_concurrency such errors in general. No estimate can
  do better: the truth is known only when a task ends.
* Every accepted task ends exactly once: finished, cancelled or taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from meshlb.sched.limits import Charge, Limits, RateWindow, TokenWindow
from meshlb.sched.queue import MAX_PRIORITY, MIN_PRIORITY, AgingQueue, QueuedView
from meshlb.sched.stats import SchedulerCounters, SchedulerStats, WaitRecorder

__all__ = ["Accepted", "QueuedView", "Rejected", "Scheduler", "SchedulerStats", "Start"]

RETRY_AFTER_MIN_S = 1.0
RETRY_AFTER_MAX_S = 60.0
"""Retry-After bounds: below 1 s clients hammer us; above 60 s they give up on a mesh
that usually drains faster than it fills."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """The task is queued; `queued` counts the tasks waiting now, itself included."""

    task_id: str
    queued: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The task was not queued; `message` is a sentence for the HTTP error body."""

    reason: Literal["queue_full", "never_fits", "duplicate"]
    message: str
    retry_after_s: float | None


@dataclass(frozen=True, slots=True)
class Start:
    """Start this task now; it waited `waited_s` since it last entered the queue."""

    task_id: str
    waited_s: float


@dataclass(frozen=True, slots=True)
class _Running:
    task: QueuedView
    started_at: float
    start_charge: Charge
    token_charge: Charge


class Scheduler:
    """Queue + limits of one node. Not thread-safe; one driver owns it."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._queue = AgingQueue(limits.aging_s)
        self._running: dict[str, _Running] = {}
        self._starts = RateWindow()
        self._tokens = TokenWindow()
        self._waits = WaitRecorder()
        self._seq = 0
        self._first_at: float | None = None
        self._busy_cap: int | None = None  # concurrency cap during a busy backoff
        self._backoff_until: float | None = None
        self._last_now = -math.inf
        self._counts = dict.fromkeys(SchedulerCounters.__dataclass_fields__, 0)

    # ------------------------------------------------------------------ commands

    def submit(
        self, task_id: str, priority: int, est_tokens: int, now: float
    ) -> Accepted | Rejected:
        """Queue a task, or say why not. Raises ValueError on a priority outside 1-10
        or a negative estimate (the HTTP layer validates these first)."""
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be {MIN_PRIORITY}-{MAX_PRIORITY}, got {priority}")
        if est_tokens < 0:
            raise ValueError(f"est_tokens must be >= 0, got {est_tokens}")
        self._tick(now)
        verdict = self._refusal(task_id, est_tokens, now)
        if verdict is not None:
            self._counts["rejected"] += 1
            return verdict
        self._seq += 1
        self._queue.push(QueuedView(task_id, priority, est_tokens, now, now, self._seq))
        self._counts["accepted"] += 1
        return Accepted(task_id, len(self._queue))

    def cancel(self, task_id: str, now: float) -> bool:
        """Remove a QUEUED task; False if it is unknown or already running."""
        self._tick(now)
        if self._queue.remove(task_id) is None:
            return False
        self._counts["cancelled"] += 1
        return True

    def take(self, task_id: str) -> QueuedView | None:
        """Remove a queued task to hand it to a peer (work stealing); not a cancel."""
        task = self._queue.remove(task_id)
        if task is not None:
            self._counts["taken"] += 1
        return task

    def poll(self, now: float) -> list[Start]:
        """Start every task that may start now, head first, charging rpm and tpm with
        the estimate. Stops at the first head that does not fit (strict order)."""
        self._tick(now)
        starts: list[Start] = []
        limits = self._limits
        while (head := self._queue.peek()) is not None:
            cap = self.effective_concurrency(now)
            if cap is not None and len(self._running) >= cap:
                break
            if not self._starts.fits(limits.rpm, now):
                break
            if not self._tokens.fits(limits.tpm, head.est_tokens, now):
                break
            self._queue.pop()
            self._running[head.task_id] = _Running(
                head, now, self._starts.record(now), self._tokens.record(head.est_tokens, now)
            )
            waited_s = max(0.0, now - head.queued_at)
            self._waits.add(waited_s)
            self._counts["started"] += 1
            starts.append(Start(head.task_id, waited_s))
        return starts

    def finish(self, task_id: str, actual_tokens: int | None, now: float) -> None:
        """Running -> gone. Reconcile the token window with the true count (None keeps
        the estimate). Unknown or not-running ids are ignored: finish is idempotent."""
        self._tick(now)
        run = self._running.pop(task_id, None)
        if run is None:
            return
        if actual_tokens is not None:
            self._tokens.reconcile(run.token_charge, max(0, actual_tokens))
        self._counts["finished"] += 1

    def requeue_busy(self, task_id: str, now: float) -> None:
        """The backend said 503 busy: back to the queue in its original place, refund
        its rpm/tpm charge, and lower the concurrency cap to the number still running
        (at least 1) until `now + busy_backoff_s`. Ignores max_queue (already accepted).
        Raises KeyError if the task is not running (a driver bug, made loud)."""
        self._tick(now)
        run = self._running.pop(task_id, None)
        if run is None:
            raise KeyError(f"task {task_id} is not running, so it cannot be requeued")
        self._starts.refund(run.start_charge)
        self._tokens.refund(run.token_charge)
        old = run.task
        self._queue.push(
            QueuedView(old.task_id, old.priority, old.est_tokens, old.enqueued_at, now, old.seq)
        )
        cap = max(1, len(self._running))
        if self._busy_cap is not None and self._backoff_until is not None:
            cap = min(cap, self._busy_cap)
        self._busy_cap = cap
        self._backoff_until = now + self._limits.busy_backoff_s
        self._counts["requeued_busy"] += 1

    def set_limits(self, limits: Limits) -> list[QueuedView]:
        """Change limits live. Returns the queued tasks removed because they can never
        fit the new tpm (counted as rejected): left queued, they would block the head
        forever. The driver must fail them with a sentence."""
        self._limits = limits
        self._queue.set_aging(limits.aging_s)
        evicted: list[QueuedView] = []
        if limits.tpm is not None:
            for task in [t for t in self._queue if t.est_tokens > limits.tpm]:
                self._queue.remove(task.task_id)
                evicted.append(task)
        self._counts["rejected"] += len(evicted)
        return evicted

    # ------------------------------------------------------------------ queries

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def queued(self) -> int:
        """Tasks waiting (O(1); `stats` gives the full picture)."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Tasks started and not yet finished or requeued (O(1))."""
        return len(self._running)

    def is_running(self, task_id: str) -> bool:
        return task_id in self._running

    def effective_concurrency(self, now: float) -> int | None:
        """The concurrency cap at `now` (None = unlimited)."""
        cap = self._limits.max_concurrency
        if self._backoff_until is not None and now < self._backoff_until:
            assert self._busy_cap is not None
            return self._busy_cap if cap is None else min(cap, self._busy_cap)
        return cap

    def next_deadline(self) -> float | None:
        """Earliest time `poll` could start the head with no other stimulus: when enough
        window charges expire and/or the busy backoff ends. None when nothing is queued
        or only a `finish` can make room. A past time means "poll now"."""
        head = self._queue.peek()
        if head is None:
            return None
        times = [
            self._last_now,
            self._starts.fits_at(self._limits.rpm),
            self._tokens.fits_at(self._limits.tpm, head.est_tokens),
        ]
        cap = self.effective_concurrency(self._last_now)
        if cap is not None and len(self._running) >= cap:
            full = self._limits.max_concurrency
            lowered = self._backoff_until is not None and self._last_now < self._backoff_until
            if not lowered or (full is not None and len(self._running) >= full):
                return None
            times.append(self._backoff_until)
        if any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)

    def queued_tasks(self) -> list[QueuedView]:
        """Queued tasks in expected start order (O(n log n); for stealing and views)."""
        return self._queue.ordered()

    def stats(self, now: float) -> SchedulerStats:
        self._tick(now)
        cap = self.effective_concurrency(now)
        lowered = self._backoff_until is not None and now < self._backoff_until
        return SchedulerStats(
            depth_by_priority=self._queue.depth_by_priority(),
            queued=len(self._queue),
            running=len(self._running),
            effective_concurrency=cap,
            backoff_until=self._backoff_until if lowered else None,
            limits=self._limits,
            rpm_used=self._starts.used(now),
            tpm_used=self._tokens.used(now),
            wait=self._waits.snapshot(),
            counters=SchedulerCounters(**self._counts),
        )

    # ------------------------------------------------------------------ internals

    def _tick(self, now: float) -> None:
        """Record the latest time seen, expire windows, end a finished backoff."""
        if self._first_at is None:
            self._first_at = now
        self._last_now = max(self._last_now, now)
        self._starts.used(now)
        self._tokens.used(now)
        if self._backoff_until is not None and now >= self._backoff_until:
            self._backoff_until = None
            self._busy_cap = None

    def _refusal(self, task_id: str, est_tokens: int, now: float) -> Rejected | None:
        if task_id in self._queue or task_id in self._running:
            return Rejected("duplicate", f"task {task_id} is already queued or running here", None)
        tpm = self._limits.tpm
        if tpm is not None and est_tokens > tpm:
            return Rejected(
                "never_fits",
                f"this request needs about {est_tokens} tokens but this node allows only "
                f"{tpm} tokens per minute, so it can never run here",
                None,
            )
        if len(self._queue) >= self._limits.max_queue:
            retry_s = self._retry_after_s(now)
            return Rejected(
                "queue_full",
                f"the queue is full ({len(self._queue)} tasks waiting); "
                f"retry in about {retry_s:.0f} s",
                retry_s,
            )
        return None

    def _retry_after_s(self, now: float) -> float:
        """Time to drain the queue at the start rate measured over the last 60 s,
        clamped to [1, 60] s (no starts measured -> the ceiling)."""
        span_s = min(60.0, now - (self._first_at if self._first_at is not None else now))
        started = self._starts.used(now)
        if started == 0 or span_s <= 0:
            return RETRY_AFTER_MAX_S
        drain_per_s = started / span_s
        wait_s = len(self._queue) / drain_per_s
        return min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, wait_s))
