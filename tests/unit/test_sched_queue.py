"""The aging priority queue: order, FIFO ties, aging overtakes, lazy cancel."""

from __future__ import annotations

import math

import pytest

from meshlb.sched.queue import AgingQueue, QueuedView


def task(task_id: str, priority: int, at: float, seq: int, est: int = 1) -> QueuedView:
    return QueuedView(task_id, priority, est, at, at, seq)


def drain(queue: AgingQueue) -> list[str]:
    out = []
    while (head := queue.pop()) is not None:
        out.append(head.task_id)
    return out


def test_higher_priority_first_fifo_within_a_level() -> None:
    queue = AgingQueue(aging_s=30.0)
    for seq, (tid, prio) in enumerate([("a", 5), ("b", 9), ("c", 5), ("d", 9), ("e", 1)]):
        queue.push(task(tid, prio, 0.0, seq))
    assert drain(queue) == ["b", "d", "a", "c", "e"]


def test_old_task_overtakes_newer_higher_priority_task() -> None:
    queue = AgingQueue(aging_s=10.0)
    queue.push(task("old", 1, 0.0, 1))
    queue.push(task("newer", 5, 39.0, 2))  # 4 levels higher; old has aged only 3.9 levels
    queue.push(task("newest", 5, 41.0, 3))  # by now old has aged 4.1 levels: old goes first
    assert drain(queue) == ["newer", "old", "newest"]


def test_effective_priority_grows_one_level_per_aging_period() -> None:
    view = task("x", 3, 100.0, 1)
    assert view.effective_priority(100.0, 20.0) == 3
    assert view.effective_priority(140.0, 20.0) == 5
    assert view.effective_priority(1e9, math.inf) == 3


def test_no_aging_is_strict_priority() -> None:
    queue = AgingQueue(aging_s=math.inf)
    queue.push(task("old", 1, 0.0, 1))
    queue.push(task("new", 2, 1e6, 2))
    assert drain(queue) == ["new", "old"]


def test_remove_is_lazy_and_skipped() -> None:
    queue = AgingQueue(aging_s=30.0)
    for seq, tid in enumerate("abc"):
        queue.push(task(tid, 5, 0.0, seq))
    assert queue.remove("a") is not None
    assert queue.remove("a") is None
    assert "a" not in queue
    assert len(queue) == 2
    assert drain(queue) == ["b", "c"]


def test_resubmitted_id_is_not_confused_with_its_dead_entry() -> None:
    queue = AgingQueue(aging_s=30.0)
    queue.push(task("a", 10, 0.0, 1))
    queue.push(task("b", 5, 0.0, 2))
    queue.remove("a")
    queue.push(task("a", 1, 1.0, 3))  # same id, now low priority
    assert drain(queue) == ["b", "a"]


def test_heap_is_compacted_when_mostly_dead() -> None:
    queue = AgingQueue(aging_s=30.0)
    for i in range(1000):
        queue.push(task(f"t{i}", 1 + i % 10, float(i), i))
    for i in range(990):
        queue.remove(f"t{i}")
    assert len(queue._heap) <= 2 * len(queue) + 64
    assert sorted(drain(queue)) == sorted(f"t{i}" for i in range(990, 1000))


def test_duplicate_push_is_refused() -> None:
    queue = AgingQueue(aging_s=30.0)
    queue.push(task("a", 5, 0.0, 1))
    with pytest.raises(KeyError):
        queue.push(task("a", 5, 0.0, 2))


def test_depth_by_priority_and_ordered_view() -> None:
    queue = AgingQueue(aging_s=30.0)
    queue.push(task("a", 2, 0.0, 1))
    queue.push(task("b", 7, 0.0, 2))
    queue.push(task("c", 2, 0.0, 3))
    depth = queue.depth_by_priority()
    assert depth[2] == 2 and depth[7] == 1 and depth[10] == 0 and len(depth) == 10
    assert [t.task_id for t in queue.ordered()] == ["b", "a", "c"]
    queue.pop()
    assert queue.depth_by_priority()[7] == 0


def test_changing_aging_reorders() -> None:
    queue = AgingQueue(aging_s=1000.0)
    queue.push(task("old", 1, 0.0, 1))
    queue.push(task("new", 2, 50.0, 2))
    assert queue.peek() is not None and queue.peek().task_id == "new"  # type: ignore[union-attr]
    queue.set_aging(10.0)  # old has aged 5 levels by t=50
    assert [t.task_id for t in queue.ordered()] == ["old", "new"]
    assert drain(queue) == ["old", "new"]
