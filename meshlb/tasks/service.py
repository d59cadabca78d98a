"""Async tasks on one node: accept, journal, queue, run on the local Ollama, record.

Who runs a task and which result counts is decided by the ownership core, through
its driver (`self.mesh`): this service tells it what happened here
(accepted, started, finished) and carries out what it decides as its executor (run a
task it now owns, unqueue one that moved, record a final result). The two refer to
each other, so the node passes a factory (`mesh`) that builds the driver around this
service; the service never chooses the driver's ports. A started task gets a worker (a Trio task,
`meshlb.tasks.worker`) that calls Ollama non-streamed. Invariants:
- a task is journaled, and held by a second node when there is one (bounded wait),
  before the client hears 202, so neither a SIGKILL nor a lost host loses it;
- a task's result is recorded once, when the core says so (`record_final`);
- the scheduler slot a worker holds is given back exactly once, whatever happens.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from meshlb.drivers.wakeup import Wakeup, deadline_loop
from meshlb.mesh.ownership_driver import Executor, OwnershipDriver
from meshlb.mesh.stealing import Waiting
from meshlb.model_names import canonical_model
from meshlb.sched.driver import LocalScheduler, Refused
from meshlb.tasks.ids import new_task_id
from meshlb.tasks.journal import Journal
from meshlb.tasks.model import TaskRecord
from meshlb.tasks.store import TaskStore
from meshlb.tasks.worker import Backend, TaskRuns
from meshlb.tokens import RateAverage, estimate_tokens

log = structlog.get_logger()

EXPIRY_INTERVAL_S = 30.0
# How long a new task may take to reach a second holder before the submission is
# refused with 503 (without --data-dir a 202 promises that a second node holds it).
SETTLE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A validated `POST /v1/tasks` body."""

    kind: str
    model: str
    request: dict[str, Any]
    priority: int
    timeout_s: float | None
    idempotency_key: str | None


class TaskService:
    """The async task API of one node, over its scheduler and its Ollama."""

    def __init__(
        self,
        node_id: str,
        scheduler: LocalScheduler,
        backend: Backend,
        journal: Journal | None,
        retention_s: float,
        default_num_predict: int,
        generation_rate: RateAverage | None = None,
        *,
        mesh: Callable[[Executor], OwnershipDriver],
        wall_clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_task_id,
    ) -> None:
        self.node_id = node_id
        self.scheduler = scheduler
        self.backend = backend
        self.journal = journal
        self.default_num_predict = default_num_predict
        self.generation_rate = generation_rate or RateAverage()
        self.store = TaskStore(retention_s)
        # Tasks this node owns and queues or runs: the latest (frozen) record of each,
        # replaced as it changes (the worker keeps it current).
        self._local: dict[str, TaskRecord] = {}
        self.wall_clock = wall_clock
        self.new_id = new_id
        self.mesh = mesh(self)
        self.runs = TaskRuns(node_id, scheduler, backend, self.generation_rate, self.mesh,
                             wall_clock, self._local)  # fmt: skip
        self._final_events: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        # Queued tasks have no Trio task of their own; their timeouts live in one heap.
        self._deadlines: list[tuple[float, str]] = []
        self._deadline_added = Wakeup()

    # ---- lifecycle -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run workers, expiry and the ownership driver until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._expire_loop)
            nursery.start_soon(deadline_loop, self._deadline_added, self._expire_queued)
            nursery.start_soon(self.mesh.run)
            task_status.started()

    def recover(self) -> int:
        """Take back journaled tasks (after a restart): results are served again, and
        unfinished tasks are accepted again here. Called once the node has joined the
        mesh, so that peers that took them over meanwhile can tell this node."""
        if self.journal is None:
            return 0
        count = 0
        for record in self.journal.load_all():
            if record.final:
                self.store.add(record)
                continue
            if record.state == "running":
                record = record.requeued()  # it was running when the node died: run it again
            self.store.add(record)
            self.mesh.accept(record, None)
            count += 1
        if count:
            log.info("unfinished tasks recovered from journal", count=count)
        return count

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(EXPIRY_INTERVAL_S)
            now = self.wall_clock()
            dropped = self.store.expire(now)
            if self.journal is not None and dropped:
                await self.journal.delete_finished_before(now - self.store.retention_s)

    # ---- API -----------------------------------------------------------------------

    async def submit(
        self, spec: TaskSpec, forward_to: str | None = None
    ) -> tuple[TaskRecord, bool, bool]:
        """Accept a task (or return the one with the same idempotency key), to run
        here or, with `forward_to`, on that peer (handed over by the core).

        Returns (record, created, safe): safe when a second node holds it (or the
        journal does, or there is no live peer to hold it). Raises `Refused` from the
        scheduler when full.
        """
        if spec.idempotency_key is not None:
            existing = self.find_by_key(spec.idempotency_key)
            if existing is not None:
                return existing, False, True
        request = {**spec.request, "model": spec.model, "stream": False}
        record = TaskRecord(
            id=self.new_id(),
            kind=spec.kind,
            model=spec.model,
            request=request,
            priority=spec.priority,
            origin=self.node_id,
            created_at=self.wall_clock(),
            timeout_s=spec.timeout_s,
            idempotency_key=spec.idempotency_key,
            est_tokens=estimate_tokens(request, spec.kind, self.default_num_predict),
        )
        if forward_to is None:
            self._local[record.id] = record
            try:
                self._enqueue(record)  # first, so a full queue refuses before anything
            except Refused:
                del self._local[record.id]
                raise
            self._arm_deadline(record)
        self.store.add(record)
        # Before any await: a fast run must not finish before the core knows the task.
        self.mesh.accept(record, forward_to)
        if self.journal is not None:
            await self.journal.write(record)
        settled = await self.mesh.wait_settled(record.id, SETTLE_TIMEOUT_S)
        log.info(
            "task accepted",
            task=record.id,
            kind=record.kind,
            model=record.model,
            priority=record.priority,
            forwarded_to=forward_to,
            held_by_a_peer=settled,
        )
        return record, True, settled or self.journal is not None

    def find_by_key(self, key: str) -> TaskRecord | None:
        """The task made with this idempotency key that this node holds (its own, or a
        copy it holds as replica or owner: the key travels with every copy)."""
        record = self.store.by_idempotency_key(key)
        if record is not None:
            return self.get(record.id) or record
        for copy in self.mesh.copies():
            if copy.record.idempotency_key == key:
                return copy.record
        return None

    def get(self, task_id: str) -> TaskRecord | None:
        """The freshest record this node has: its ownership copy, else a final record
        from its store. An unfinished record the core no longer holds is stale (the
        task moved on and this node is not one of its holders): None, so callers ask
        the peers."""
        copy = self.mesh.get(task_id)
        if copy is not None:
            return copy.record
        record = self.store.get(task_id)
        return record if record is not None and record.final else None

    def owner_of(self, task_id: str) -> str | None:
        """Who owns the task, as this node's copy says (None without a copy)."""
        copy = self.mesh.get(task_id)
        return None if copy is None else copy.owner

    def owns(self, task_id: str) -> bool:
        return task_id in self._local

    async def wait_final(self, task_id: str, timeout_s: float) -> TaskRecord | None:
        """The record once final, or as it is after `timeout_s` (long-poll)."""
        record = self.get(task_id)
        if record is not None and not record.final:
            event = self._final_events.setdefault(task_id, trio.Event())
            with trio.move_on_after(timeout_s):
                await event.wait()
        return self.get(task_id)

    async def cancel(self, task_id: str) -> TaskRecord | None:
        """Cancel an unfinished task this node owns; its worker ends it in `cancelled`."""
        record = self._local.get(task_id)
        if record is None or record.final:
            return self.get(task_id)
        if self.scheduler.cancel(task_id):  # still queued: no worker to stop
            self.runs.finish(record, "cancelled", error="cancelled by request")
        else:
            self.runs.request_cancel(task_id)
        return await self.wait_final(task_id, 5.0)

    # ---- what the ownership core asks of this node (`Executor`) -------------------

    def run_owned(self, record: TaskRecord, reason: str) -> None:
        """This node owns the task now: queue it (a full queue delays, never drops)."""
        if record.id in self._local:
            return  # queued here already (accepted here, or a repeated command)
        # it was running on a node that died: queued again here
        local = record.requeued() if record.state == "running" else record
        self._local[local.id] = local
        if self.store.get(local.id) is None:
            self.store.add(local)
        self._arm_deadline(local)
        try:
            self._enqueue(local)
        except Refused:
            assert self._nursery is not None
            self._nursery.start_soon(self._enqueue_when_room, local)

    def unqueue(self, task_id: str) -> None:
        """The task moved to a peer (or finished elsewhere): drop it if still queued."""
        self.scheduler.cancel(task_id)
        local = self._local.get(task_id)
        if local is not None and local.state != "running":
            del self._local[task_id]

    def record_final(self, record: TaskRecord, decided_here: bool) -> None:
        """The task's one result: keep it, journal it, wake the long-polls."""
        final = record
        self.store.add(final)
        local = self._local.get(record.id)
        if local is not None and local.state != "running":
            self._local.pop(record.id)
        if self.journal is not None and self._nursery is not None:
            self._nursery.start_soon(self._journal_final, final)
        event = self._final_events.pop(record.id, None)
        if event is not None:
            event.set()

    async def _journal_final(self, record: TaskRecord) -> None:
        assert self.journal is not None
        with trio.CancelScope(shield=True):
            await self.journal.write(record)

    def waiting(self) -> tuple[Waiting, ...]:
        """Queued tasks in expected start order, as a thief's request needs them."""
        out = []
        for q in self.scheduler.core.queued_tasks():
            rec = self._local.get(q.task_id)
            if rec is not None:
                out.append(Waiting(rec.id, canonical_model(rec.model), rec.est_tokens))
        return tuple(out)

    def free_slots(self) -> int:
        """Slots free now with nothing queued (0 when anything waits)."""
        core = self.scheduler.core
        if core.queued:
            return 0
        cap = core.effective_concurrency(trio.current_time())
        return 1 if cap is None else max(0, cap - core.running)

    # ---- workers -------------------------------------------------------------------

    def _enqueue(self, record: TaskRecord) -> None:
        """Queue the task; a worker is spawned only when the scheduler starts it."""

        def started(waited_s: float) -> None:
            assert self._nursery is not None, "TaskService.run must be started first"
            if self._local.get(record.id) is not record:  # moved to a peer meanwhile
                self.scheduler.finish(record.id, 0)
                return
            running = record
            if self.mesh.get(record.id) is not None:
                # Running in the core's eyes at once, so it is never offered to a thief
                # between this start and the worker's first step.
                running = self.runs.mark_running(record)
            self._nursery.start_soon(self.runs.work, running)

        self.scheduler.submit(record.id, record.priority, record.est_tokens, on_start=started)

    async def _enqueue_when_room(self, record: TaskRecord) -> None:
        while self._local.get(record.id) is record and not record.final:
            try:
                self._enqueue(record)
                return
            except Refused:
                await trio.sleep(1.0)

    def _arm_deadline(self, record: TaskRecord) -> None:
        if record.deadline_at is None:
            return
        at = trio.current_time() + (record.deadline_at - self.wall_clock())
        heapq.heappush(self._deadlines, (at, record.id))
        self._deadline_added.kick()

    async def _expire_queued(self, now: float) -> float | None:
        """Fail queued tasks whose timeout passed (running ones time out in their worker)."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, task_id = heapq.heappop(self._deadlines)
            record = self._local.get(task_id)
            if record is not None and not record.final and self.scheduler.cancel(task_id):
                self.runs.finish(
                    record,
                    "failed",
                    error_status=504,
                    error=f"task timed out after {record.timeout_s:g}s (still queued)",
                )
        return self._deadlines[0][0] if self._deadlines else None
