"""A task record: what was asked, where it is in its life, and how it ended.

States: queued -> running -> succeeded | failed | cancelled (running -> queued again
when a run is lost, e.g. Ollama busy or a node restart). A final state is reached
exactly once; `TaskRecord.finished` refuses a second one, which is how "the first
result wins" is kept. Each field's `wire` metadata is its short key on the
node-to-node wire (`meshlb.mesh.ownership_wire` derives its codec from them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES: frozenset[str] = frozenset(STATES[2:])
KIND_PATHS: dict[str, str] = {
    "generate": "/api/generate",
    "chat": "/api/chat",
    "embed": "/api/embed",
}


class AlreadyFinal(Exception):
    """A second final state for a task that already has one (dropped and counted)."""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One async task. Times are wall-clock epoch seconds (they are shown to users).
    Frozen: a change is a new record (`started`, `requeued`, `finished`), so a record
    handed to the ownership core, the store or a peer never changes under it (the
    `request`, `result` and `extra` values are shared and never mutated either)."""

    id: str = field(metadata={"wire": "id"})
    kind: str = field(metadata={"wire": "k"})
    model: str = field(metadata={"wire": "m"})
    request: dict[str, Any] = field(metadata={"wire": "q"})
    priority: int = field(metadata={"wire": "p"})
    origin: str = field(metadata={"wire": "o"})
    created_at: float = field(metadata={"wire": "ca"})
    timeout_s: float | None = field(default=None, metadata={"wire": "to"})
    idempotency_key: str | None = field(default=None, metadata={"wire": "ik"})
    state: str = field(default="queued", metadata={"wire": "st", "one_of": STATES})
    node: str | None = field(default=None, metadata={"wire": "n"})
    attempts: int = field(default=0, metadata={"wire": "at", "ge": 0})
    started_at: float | None = field(default=None, metadata={"wire": "sa"})
    finished_at: float | None = field(default=None, metadata={"wire": "fa"})
    result: Any = field(default=None, metadata={"wire": "r"})
    error: str | None = field(default=None, metadata={"wire": "er"})
    # HTTP status that best describes a failure (504 timeout, 404 model, 503 backend down).
    error_status: int | None = field(default=None, metadata={"wire": "es"})
    est_tokens: int = field(default=0, metadata={"wire": "et", "ge": 0})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"wire": "x"})

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def deadline_at(self) -> float | None:
        return None if self.timeout_s is None else self.created_at + self.timeout_s

    def started(self, node: str, now: float) -> TaskRecord:
        if self.final:
            raise AlreadyFinal(self.id)
        attempts = self.attempts + 1
        return replace(self, state="running", node=node, started_at=now, attempts=attempts)

    def requeued(self) -> TaskRecord:
        """A run was lost (busy backend, restart, its owner died): queued, not final."""
        if self.final:
            raise AlreadyFinal(self.id)
        return replace(self, state="queued")

    def finished(
        self,
        state: str,
        now: float,
        *,
        node: str | None = None,
        result: Any = None,
        error: str | None = None,
        error_status: int | None = None,
    ) -> TaskRecord:
        """The record with its one final state (`node`: where the run happened)."""
        if state not in FINAL_STATES:
            raise ValueError(f"{state} is not a final state")
        if self.final:
            raise AlreadyFinal(self.id)
        return replace(
            self, state=state, finished_at=now, node=node or self.node, result=result,
            error=error, error_status=error_status,
        )  # fmt: skip

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
