"""The worker side of the task service: run a started task on the local Ollama.

A worker exists only while its task holds a scheduler slot (queued tasks have none:
the scheduler's start callback spawns it). It calls Ollama non-streamed, retries an
unreachable Ollama with backoff, requeues on Ollama's "server busy", and reports the
outcome to the ownership core, which decides whether it is the task's result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import trio

from meshlb.backend.ollama import BackendError
from meshlb.mesh import ownership_msgs as m
from meshlb.sched.driver import LocalScheduler, Refused
from meshlb.tasks.model import KIND_PATHS, AlreadyFinal, TaskRecord
from meshlb.tokens import RateAverage

log = structlog.get_logger()

# A local Ollama that is down is retried with backoff this many times before failing.
MAX_BACKEND_ATTEMPTS = 5
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)


def ollama_error_text(content: bytes, status: int) -> str:
    """The sentence in an Ollama error body (`{"error": ...}`), else the status."""
    try:
        data = json.loads(content)
    except ValueError:
        return f"Ollama answered {status}"
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return f"Ollama answered {status}"


def result_tokens(result: Any) -> int | None:
    if not isinstance(result, dict):
        return None
    counts = [result.get("prompt_eval_count"), result.get("eval_count")]
    ints = [c for c in counts if isinstance(c, int)]
    return sum(ints) if ints else None


class Backend(Protocol):
    """The local Ollama as a worker calls it (`OllamaBackend`, or the simulator's)."""

    async def post_json(self, path: str, payload: dict[str, Any], /) -> tuple[int, bytes]: ...


class MeshFeed(Protocol):
    def feed(self, event: m.Event) -> None: ...


class TaskRuns:
    """Runs started tasks for the task service; `local` is the service's own map of
    the tasks this node owns and queues or runs (shared, not copied)."""

    def __init__(
        self,
        node_id: str,
        scheduler: LocalScheduler,
        backend: Backend,
        generation_rate: RateAverage,
        mesh: MeshFeed,
        wall_clock: Callable[[], float],
        local: dict[str, TaskRecord],
    ) -> None:
        self.node_id = node_id
        self.scheduler = scheduler
        self.backend = backend
        self.generation_rate = generation_rate
        self.mesh = mesh
        self.wall_clock = wall_clock
        self._local = local
        self._scopes: dict[str, trio.CancelScope] = {}
        self._cancel_requested: set[str] = set()

    def request_cancel(self, task_id: str) -> None:
        """DELETE of a running task: its worker ends it in `cancelled`."""
        self._cancel_requested.add(task_id)
        scope = self._scopes.get(task_id)
        if scope is not None:
            scope.cancel()

    def mark_running(self, record: TaskRecord) -> TaskRecord:
        now = self.wall_clock()
        running = record.started(self.node_id, now)
        if self._local.get(record.id) is record:  # still ours: the map follows
            self._local[record.id] = running
        self.mesh.feed(m.TaskStarted(record.id, now))
        return running

    async def work(self, record: TaskRecord) -> None:
        """Run a started task (it holds a scheduler slot) to a final state."""
        if self._local.get(record.id) is not record:  # moved to a peer meanwhile
            self.scheduler.finish(record.id, 0)
            return
        if record.id in self._cancel_requested:  # cancelled between start and now
            self.scheduler.finish(record.id, 0)
            self._cancel_requested.discard(record.id)
            self.finish(record, "cancelled", error="cancelled by request")
            return
        deadline = trio.current_time() + (
            record.deadline_at - self.wall_clock() if record.deadline_at is not None else math.inf
        )
        run = _Run(record, self._local)
        with trio.CancelScope(deadline=deadline) as scope:
            self._scopes[record.id] = scope
            try:
                await self._attempts(run)
            except Exception as e:  # a bug must fail one task, not stop the node
                log.exception("task worker failed", task=record.id)
                self.scheduler.finish(record.id, 0)
                run.finished(
                    self.finish(
                        run.record, "failed", error=f"meshlb internal error: {e!r}",
                        error_status=500,
                    )
                )  # fmt: skip
        self._scopes.pop(record.id, None)
        if not run.record.final:
            if record.id in self._cancel_requested:
                self.finish(run.record, "cancelled", error="cancelled by request")
            else:
                self.finish(
                    run.record,
                    "failed",
                    error_status=504,
                    error=f"task timed out after {record.timeout_s:g}s",
                )
        self._cancel_requested.discard(record.id)

    async def _attempts(self, run: _Run) -> None:
        """Run until a final state; the scheduler slot is released on every path."""
        task_id = run.record.id
        path = KIND_PATHS[run.record.kind]
        while True:
            try:
                if run.record.state != "running":
                    run.update(self.mark_running(run.record))
                status, content = await self.backend.post_json(path, run.record.request)
            except BackendError as e:
                self.scheduler.finish(task_id, 0)
                if run.record.attempts >= MAX_BACKEND_ATTEMPTS:
                    run.finished(self.finish(run.record, "failed", error=f"{e}", error_status=503))
                    return
                log.warning(
                    "ollama unreachable, task will retry",
                    task=task_id,
                    attempt=run.record.attempts,
                    reason=e.reason,
                )
                # Queued again here only: the core still sees it running, so it is not
                # offered to a thief while this worker holds it.
                run.update(run.record.requeued())
                await trio.sleep(BACKOFF_S[min(run.record.attempts, len(BACKOFF_S)) - 1])
                await self._requeue(run.record)
                continue
            except BaseException:  # cancelled (timeout or DELETE) while running
                self.scheduler.finish(task_id, 0)
                raise
            if status == 503:  # Ollama busy: back to the queue, keep the place
                run.update(run.record.requeued())
                await self.scheduler.requeue_busy(task_id)
                continue
            run.finished(self._complete(run.record, status, content))
            return

    async def _requeue(self, record: TaskRecord) -> None:
        """Put an accepted task back in the queue; a full queue only delays it, never drops it."""
        while True:
            try:
                self.scheduler.submit(record.id, record.priority, record.est_tokens)
                break
            except Refused:
                await trio.sleep(1.0)
        await self.scheduler.wait_turn(record.id)

    def _complete(self, record: TaskRecord, status: int, content: bytes) -> TaskRecord | None:
        result: Any = None
        if status == 200:
            try:
                result = json.loads(content)
            except ValueError:
                result = None
        self.scheduler.finish(record.id, result_tokens(result))
        if isinstance(result, dict) and result.get("eval_count") and result.get("eval_duration"):
            self.generation_rate.observe(result["eval_count"] / (result["eval_duration"] / 1e9))
        if status == 200 and result is not None:
            return self.finish(record, "succeeded", result=result)
        return self.finish(
            record,
            "failed",
            error=ollama_error_text(content, status),
            error_status=status if status >= 400 else 502,
        )

    def finish(
        self,
        record: TaskRecord,
        state: str,
        *,
        result: Any = None,
        error: str | None = None,
        error_status: int | None = None,
    ) -> TaskRecord | None:
        """This node's run ended: the core decides whether it is the task's result.
        Returns the final record (None if `record` was final already)."""
        now = self.wall_clock()
        try:
            final = record.finished(state, now, result=result, error=error,
                                    error_status=error_status)  # fmt: skip
        except AlreadyFinal:
            log.warning("duplicate final state dropped", task=record.id, state=state)
            return None
        self._local.pop(record.id, None)
        log.info(
            "task finished", task=record.id, state=state, error=error, attempts=record.attempts
        )
        self.mesh.feed(m.TaskFinished(record.id, state, now, result, error, error_status))
        return final


@dataclass(slots=True)
class _Run:
    """One worker's task. Records are frozen, so the worker keeps its latest one here,
    and the service's map of local tasks follows while the task is still this node's
    (its entry is the record the change was made to)."""

    record: TaskRecord
    local: dict[str, TaskRecord]

    def update(self, new: TaskRecord) -> None:
        if self.local.get(new.id) is self.record:
            self.local[new.id] = new
        self.record = new

    def finished(self, final: TaskRecord | None) -> None:
        if final is not None:
            self.record = final
