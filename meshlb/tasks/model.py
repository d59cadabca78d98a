"""A task record: what was asked, where it is in its life, and how it ended.

States: queued -> running -> succeeded | failed | cancelled (running -> queued again
when a run is lost, e.g. Ollama busy or a node restart). A final state is reached
exactly once; `TaskRecord.finish` refuses a second one, which is how "the first
result wins" is kept.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from typing import Any

FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
KIND_PATHS: dict[str, str] = {
    "generate": "/api/generate",
    "chat": "/api/chat",
    "embed": "/api/embed",
}


def new_task_id() -> str:
    """Random and unguessable enough to share: 't-' + 16 hex digits."""
    return "t-" + secrets.token_hex(8)


class AlreadyFinal(Exception):
    """A second final state for a task that already has one (dropped and counted)."""


@dataclass(slots=True)
class TaskRecord:
    """One async task. Times are wall-clock epoch seconds (they are shown to users)."""

    id: str
    kind: str
    model: str
    request: dict[str, Any]
    priority: int
    origin: str
    created_at: float
    timeout_s: float | None = None
    idempotency_key: str | None = None
    state: str = "queued"
    node: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    # HTTP status that best describes a failure (504 timeout, 404 model, 503 backend down).
    error_status: int | None = None
    est_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def deadline_at(self) -> float | None:
        return None if self.timeout_s is None else self.created_at + self.timeout_s

    def mark_running(self, node: str, now: float) -> None:
        if self.final:
            raise AlreadyFinal(self.id)
        self.state, self.node, self.started_at = "running", node, now
        self.attempts += 1

    def mark_queued(self) -> None:
        """A run was lost (busy backend, restart): back to the queue, not final."""
        if self.final:
            raise AlreadyFinal(self.id)
        self.state = "queued"

    def finish(
        self,
        state: str,
        now: float,
        *,
        result: Any = None,
        error: str | None = None,
        error_status: int | None = None,
    ) -> None:
        if state not in FINAL_STATES:
            raise ValueError(f"{state} is not a final state")
        if self.final:
            raise AlreadyFinal(self.id)
        self.state, self.finished_at = state, now
        self.result, self.error, self.error_status = result, error, error_status

    def to_public(self) -> dict[str, Any]:
        """The JSON shape of `GET /v1/tasks/{id}` (SPEC.md)."""
        return {
            "id": self.id,
            "state": self.state,
            "kind": self.kind,
            "priority": self.priority,
            "model": self.model,
            "node": self.node,
            "origin": self.origin,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "timeout_s": self.timeout_s,
            "idempotency_key": self.idempotency_key,
            "result": self.result,
            "error": self.error,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, for the journal."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
