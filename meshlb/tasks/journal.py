"""The durable task journal: SQLite in WAL mode, written off the Trio thread.

Why SQLite: it is in the standard library, crash-safe with WAL, and a node's journal
is small (one row per task, rewritten on each state change). Writes happen before the
node answers 202, so a task the client was told about survives SIGKILL. Rows of
finished tasks are deleted after the retention period.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import trio

from meshlb.tasks.model import TaskRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    finished_at REAL,
    record TEXT NOT NULL
)
"""


class Journal:
    """A SQLite file of task records; every method is safe to call from the Trio thread."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "tasks.sqlite3"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: durable across a process crash (SIGKILL), the failure we guard.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def _write_sync(self, records: list[TaskRecord]) -> None:
        rows = [(r.id, r.state, r.finished_at, json.dumps(r.to_dict())) for r in records]
        with self._lock:
            self._db.executemany(
                "INSERT INTO tasks(id, state, finished_at, record) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state=excluded.state, "
                "finished_at=excluded.finished_at, record=excluded.record",
                rows,
            )

    async def write(self, *records: TaskRecord) -> None:
        """Persist the records' current state (in a worker thread)."""
        await trio.to_thread.run_sync(self._write_sync, list(records))

    def load_all(self) -> list[TaskRecord]:
        """Every journaled record (called once at start-up, before serving)."""
        with self._lock:
            rows = self._db.execute("SELECT record FROM tasks").fetchall()
        return [TaskRecord.from_dict(json.loads(row[0])) for row in rows]

    def _delete_sync(self, finished_before: float) -> int:
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?",
                (finished_before,),
            )
            return cur.rowcount

    async def delete_finished_before(self, when: float) -> int:
        return await trio.to_thread.run_sync(self._delete_sync, when)

    def close(self) -> None:
        with self._lock:
            self._db.close()
