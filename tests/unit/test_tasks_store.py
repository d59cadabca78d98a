"""Task records: one final state only; the store's idempotency and retention."""

import dataclasses
from pathlib import Path

import pytest

from meshlb.tasks.journal import Journal
from meshlb.tasks.model import AlreadyFinal, TaskRecord
from meshlb.tasks.store import TaskStore


def record(task_id: str = "t-1", key: str | None = None, created_at: float = 0.0) -> TaskRecord:
    return TaskRecord(
        id=task_id,
        kind="generate",
        model="m",
        request={"prompt": "p"},
        priority=5,
        origin="n1",
        created_at=created_at,
        idempotency_key=key,
    )


def test_a_final_state_is_reached_once() -> None:
    r = record().started("n1", 1.0).finished("succeeded", 2.0, result={"response": "a"})
    with pytest.raises(AlreadyFinal):
        r.finished("failed", 3.0, error="late")
    with pytest.raises(AlreadyFinal):
        r.started("n2", 4.0)
    with pytest.raises(AlreadyFinal):
        r.requeued()
    assert r.state == "succeeded" and r.result == {"response": "a"} and r.attempts == 1


def test_a_record_never_changes_in_place() -> None:
    r = record()
    running = r.started("n1", 1.0)
    assert (r.state, r.attempts) == ("queued", 0) and (running.state, running.node) == (
        "running", "n1",
    )  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(running, "state", "queued")  # noqa: B010 (what a bug would do)


def test_only_final_states_finish() -> None:
    with pytest.raises(ValueError, match="not a final state"):
        record().finished("running", 1.0)


def test_idempotency_key_maps_to_first_task() -> None:
    store = TaskStore()
    store.add(record("t-1", key="k"))
    store.add(record("t-2", key="k"))
    found = store.by_idempotency_key("k")
    assert found is not None and found.id == "t-1"


def test_retention_drops_finished_tasks_in_order() -> None:
    store = TaskStore(retention_s=10)
    a, b, c = record("a", key="ka"), record("b"), record("c")
    for r in (a, b, c):
        store.add(r)
    store.add(a.finished("succeeded", 100.0))
    store.add(b.finished("failed", 105.0))
    assert store.expire(109.0) == []
    assert store.expire(110.0) == ["a"]
    assert store.get("a") is None and store.by_idempotency_key("ka") is None
    assert store.expire(200.0) == ["b"]
    assert store.get("c") is not None  # never finished: never expires


def test_list_filters_by_state_newest_first() -> None:
    store = TaskStore()
    for i in range(5):
        store.add(record(f"t{i}", created_at=float(i)))
    store.add(record("t3", created_at=3.0).finished("cancelled", 9.0))
    assert [r.id for r in store.recent()] == ["t4", "t3", "t2", "t1", "t0"]
    assert [r.id for r in store.recent("cancelled")] == ["t3"]
    assert len(store.recent(limit=2)) == 2


async def test_journal_round_trip_and_cleanup(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "data")
    a, b = record("a"), record("b")
    a = a.started("n1", 1.0)
    await journal.write(a, b)
    await journal.write(a.finished("succeeded", 2.0, result={"x": 1}))
    journal.close()
    reopened = Journal(tmp_path / "data")
    loaded = {r.id: r for r in reopened.load_all()}
    assert loaded["a"].state == "succeeded" and loaded["a"].result == {"x": 1}
    assert loaded["b"].state == "queued"
    assert await reopened.delete_finished_before(3.0) == 1
    assert [r.id for r in reopened.load_all()] == ["b"]
