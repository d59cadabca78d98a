"""The in-memory index of a node's async tasks: by id, by idempotency key, retention.

Pure (no trio, no clock): callers pass `now`. Finished tasks are dropped
`retention_s` after they finish, in finish order (a deque, so expiry is O(1) each).
"""

from __future__ import annotations

from collections import deque

from meshlb.tasks.model import TaskRecord


class TaskStore:
    """Records by id; idempotency keys map to the first task made with them."""

    def __init__(self, retention_s: float = 3600.0) -> None:
        self.retention_s = retention_s
        self._by_id: dict[str, TaskRecord] = {}
        self._by_key: dict[str, str] = {}
        self._finished: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, task_id: str) -> TaskRecord | None:
        return self._by_id.get(task_id)

    def by_idempotency_key(self, key: str) -> TaskRecord | None:
        task_id = self._by_key.get(key)
        return None if task_id is None else self._by_id.get(task_id)

    def add(self, record: TaskRecord) -> None:
        self._by_id[record.id] = record
        if record.idempotency_key is not None:
            self._by_key.setdefault(record.idempotency_key, record.id)
        if record.final and record.finished_at is not None:
            self._finished.append((record.finished_at, record.id))

    def expire(self, now: float) -> list[str]:
        """Drop finished tasks older than the retention; return their ids."""
        dropped = []
        while self._finished and self._finished[0][0] + self.retention_s <= now:
            _, task_id = self._finished.popleft()
            record = self._by_id.pop(task_id, None)
            if record is None:
                continue
            if record.idempotency_key is not None:
                self._by_key.pop(record.idempotency_key, None)
            dropped.append(task_id)
        return dropped

    def recent(self, state: str | None = None, limit: int = 100) -> list[TaskRecord]:
        """Newest first, optionally only one state."""
        rows = [r for r in self._by_id.values() if state is None or r.state == state]
        rows.sort(key=lambda r: r.created_at, reverse=True)
        return rows[:limit]

    def unfinished(self) -> list[TaskRecord]:
        return [r for r in self._by_id.values() if not r.final]
