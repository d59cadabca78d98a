"""The Trio driver of the pure scheduler core: the one place where a task waits its turn.

Every request a node runs locally (Ollama API or task API) goes through
`submit` -> `wait_turn` -> ... -> `finish`. The driver only feeds the core with
`trio.current_time()` and wakes the waiting tasks the core says may start; all
decisions (priority, aging, concurrency, rpm/tpm) live in `meshlb.sched.scheduler`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import trio

from meshlb.drivers.wakeup import Wakeup, deadline_loop
from meshlb.sched.limits import Limits
from meshlb.sched.scheduler import Rejected, Scheduler, SchedulerStats

log = structlog.get_logger()


class Refused(Exception):
    """The core would not queue the task (queue full, can never fit, duplicate id)."""

    def __init__(self, rejected: Rejected) -> None:
        super().__init__(rejected.message)
        self.reason = rejected.reason
        self.message = rejected.message
        self.retry_after_s = rejected.retry_after_s


@dataclass
class _Waiter:
    started: trio.Event = field(default_factory=trio.Event)
    waited_s: float = 0.0


class LocalScheduler:
    """Wraps a `Scheduler` core; wakes waiters when the core starts their tasks."""

    def __init__(self, limits: Limits) -> None:
        self.core = Scheduler(limits)
        self._waiters: dict[str, _Waiter] = {}
        # Tasks with no waiting caller: a callback runs when they start (async tasks,
        # so 10 000 queued tasks cost queue entries, not 10 000 sleeping Trio tasks).
        self._on_start: dict[str, Callable[[float], None]] = {}
        self._kick = Wakeup()

    def _wake_loop(self) -> None:
        self._kick.kick()

    def submit(
        self,
        task_id: str,
        priority: int,
        est_tokens: int,
        on_start: Callable[[float], None] | None = None,
    ) -> None:
        """Queue a task; raise `Refused` with the core's sentence if it cannot be queued.

        Without `on_start` the caller must `wait_turn`; with it, `on_start(waited_s)` is
        called (synchronously, from the scheduler loop) when the task starts, and the
        slot is the callee's to `finish`.
        """
        verdict = self.core.submit(task_id, priority, est_tokens, trio.current_time())
        if isinstance(verdict, Rejected):
            log.info("task refused", task=task_id, reason=verdict.reason, why=verdict.message)
            raise Refused(verdict)
        if on_start is None:
            self._waiters[task_id] = _Waiter()
        else:
            self._on_start[task_id] = on_start
        # Start at once what may start now (the common case of a node with room):
        # no round trip through the scheduler loop on the hot path.
        self._dispatch_starts()
        self._wake_loop()  # the loop re-reads the core's next deadline

    async def wait_turn(self, task_id: str) -> float:
        """Wait until the core starts this task; return the seconds it waited in the queue.

        If the waiting caller is cancelled (client gone, timeout), the task leaves the
        queue; if it was started in the same instant, its slot is given back at once.
        """
        waiter = self._waiters.get(task_id)
        if waiter is None:
            raise KeyError(f"task {task_id} was not submitted")
        try:
            await waiter.started.wait()
        except BaseException:
            self._waiters.pop(task_id, None)
            # No await here, so nothing can interrupt the clean-up.
            if not self.core.cancel(task_id, trio.current_time()):
                self.core.finish(task_id, 0, trio.current_time())
            self._wake_loop()
            raise
        self._waiters.pop(task_id, None)
        return waiter.waited_s

    def finish(self, task_id: str, actual_tokens: int | None) -> None:
        """The task's run is over: free its slot and reconcile its token charge."""
        self.core.finish(task_id, actual_tokens, trio.current_time())
        self._wake_loop()

    def cancel(self, task_id: str) -> bool:
        """Drop a queued task (False if it is running or unknown)."""
        removed = self.core.cancel(task_id, trio.current_time())
        if removed:
            self._waiters.pop(task_id, None)
            self._on_start.pop(task_id, None)
            self._wake_loop()
        return removed

    async def requeue_busy(self, task_id: str) -> float:
        """Ollama said 'server busy': back to the queue (keeping its place), wait again."""
        log.info("ollama busy, task requeued", task=task_id)
        self.core.requeue_busy(task_id, trio.current_time())
        self._waiters[task_id] = _Waiter()
        self._wake_loop()
        return await self.wait_turn(task_id)

    def stats(self) -> SchedulerStats:
        return self.core.stats(trio.current_time())

    def _dispatch_starts(self) -> None:
        """Start every task the core allows now: wake its waiter or call its callback."""
        for start in self.core.poll(trio.current_time()):
            callback = self._on_start.pop(start.task_id, None)
            if callback is not None:
                callback(start.waited_s)
                continue
            waiter = self._waiters.get(start.task_id)
            if waiter is None:  # its caller left in the same instant
                self.core.finish(start.task_id, 0, trio.current_time())
                continue
            waiter.waited_s = start.waited_s
            waiter.started.set()

    async def run(self) -> None:
        """Forever: start what the core allows, then sleep until its deadline or a kick."""
        await deadline_loop(self._kick, self._step)

    async def _step(self, now: float) -> float | None:
        self._dispatch_starts()
        return self.core.next_deadline()
