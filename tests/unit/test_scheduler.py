"""The scheduler core: admission, limits, strict head-of-line, busy backoff, deadlines, stats."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import meshlb.sched.limits
import meshlb.sched.queue
import meshlb.sched.scheduler
import meshlb.sched.stats
from meshlb.sched.limits import Limits
from meshlb.sched.scheduler import Accepted, Rejected, Scheduler, Start


def ids(starts: list[Start]) -> list[str]:
    return [s.task_id for s in starts]


def test_core_modules_import_no_io() -> None:
    """Pure cores: no trio, time, socket, httpx, asyncio (DESIGN.md)."""
    banned = {"trio", "time", "socket", "httpx", "asyncio", "anyio"}
    for module in (
        meshlb.sched.limits,
        meshlb.sched.queue,
        meshlb.sched.scheduler,
        meshlb.sched.stats,
    ):
        tree = ast.parse(Path(str(module.__file__)).read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{module.__name__} imports {name}"


def test_submit_then_poll_starts_in_priority_order_up_to_concurrency() -> None:
    core = Scheduler(Limits(max_concurrency=2))
    for tid, prio in [("low", 1), ("high", 9), ("mid", 5)]:
        assert isinstance(core.submit(tid, prio, 10, 0.0), Accepted)
    starts = core.poll(1.5)
    assert ids(starts) == ["high", "mid"]
    assert starts[0].waited_s == 1.5
    assert core.poll(2.0) == []
    core.finish("high", 12, 3.0)
    assert ids(core.poll(3.0)) == ["low"]


@pytest.mark.parametrize(
    ("limits", "setup", "tid", "est", "reason", "fragment"),
    [
        (Limits(tpm=100), [], "big", 101, "never_fits", "101 tokens"),
        (Limits(max_queue=1), [("a", 1)], "b", 1, "queue_full", "queue is full"),
        (Limits(), [("a", 1)], "a", 1, "duplicate", "already"),
    ],
)
def test_rejections_carry_a_reason_and_a_sentence(
    limits: Limits, setup: list[tuple[str, int]], tid: str, est: int, reason: str, fragment: str
) -> None:
    core = Scheduler(limits)
    for setup_id, setup_est in setup:
        core.submit(setup_id, 5, setup_est, 0.0)
    verdict = core.submit(tid, 5, est, 0.0)
    assert isinstance(verdict, Rejected)
    assert verdict.reason == reason
    assert fragment in verdict.message
    assert core.stats(0.0).counters.rejected == 1


def test_duplicate_of_a_running_task_is_rejected() -> None:
    core = Scheduler(Limits())
    core.submit("a", 5, 1, 0.0)
    core.poll(0.0)
    verdict = core.submit("a", 5, 1, 0.0)
    assert isinstance(verdict, Rejected) and verdict.reason == "duplicate"


def test_queue_full_retry_after_follows_drain_rate_within_bounds() -> None:
    core = Scheduler(Limits(max_concurrency=None, max_queue=10))
    for i in range(30):  # 30 starts over 30 s: 1 start/s
        core.submit(f"r{i}", 5, 1, float(i))
        core.poll(float(i))
    for i in range(10):
        core.submit(f"q{i}", 5, 1, 30.0)
    core2 = Scheduler(Limits(max_concurrency=1, max_queue=10))
    for i in range(11):
        core2.submit(f"q{i}", 5, 1, 0.0)  # never drained: ceiling
    full = core.submit("x", 5, 1, 30.0)
    assert isinstance(full, Rejected) and full.retry_after_s is not None
    assert 1.0 <= full.retry_after_s <= 60.0


def test_retry_after_is_ceiling_without_drain_and_scales_with_rate() -> None:
    idle = Scheduler(Limits(max_concurrency=1, max_queue=1))
    idle.submit("a", 5, 1, 0.0)
    idle.poll(0.0)
    idle.submit("b", 5, 1, 0.0)
    verdict = idle.submit("c", 5, 1, 0.0)
    assert isinstance(verdict, Rejected) and verdict.retry_after_s == 60.0
    fast = Scheduler(Limits(max_concurrency=None, max_queue=5))
    for i in range(60):  # 2 starts/s over 30 s
        fast.submit(f"r{i}", 5, 1, i / 2)
        fast.poll(i / 2)
    for i in range(5):
        fast.submit(f"q{i}", 5, 1, 30.0)
    fast.finish("r0", 1, 30.0)
    verdict = fast.submit("x", 5, 1, 30.0)
    assert isinstance(verdict, Rejected)
    assert verdict.retry_after_s == pytest.approx(5 / (60 / 30.0), rel=0.05)


def test_priority_and_estimate_are_validated() -> None:
    core = Scheduler(Limits())
    with pytest.raises(ValueError, match="priority"):
        core.submit("a", 11, 1, 0.0)
    with pytest.raises(ValueError, match="priority"):
        core.submit("a", 0, 1, 0.0)
    with pytest.raises(ValueError, match="est_tokens"):
        core.submit("a", 5, -1, 0.0)


def test_rpm_limits_starts_per_sliding_minute_and_deadline_says_when() -> None:
    core = Scheduler(Limits(max_concurrency=None, rpm=2))
    for i in range(3):
        core.submit(f"t{i}", 5, 1, 0.0)
    assert ids(core.poll(0.0)) == ["t0", "t1"]
    assert core.poll(59.999) == []
    assert core.next_deadline() == 60.0
    assert ids(core.poll(60.0)) == ["t2"]


def test_tpm_head_of_line_blocks_smaller_tasks_behind_it() -> None:
    """Documented choice: the head waits until it fits; nothing skips it."""
    core = Scheduler(Limits(max_concurrency=None, tpm=100))
    core.submit("first", 9, 70, 0.0)
    core.submit("big", 8, 60, 0.0)
    core.submit("small", 1, 5, 0.0)
    assert ids(core.poll(0.0)) == ["first"]
    assert core.next_deadline() == 60.0
    assert core.poll(30.0) == []  # "small" would fit but must not skip "big"
    assert ids(core.poll(60.0)) == ["big", "small"]


def test_reconcile_replaces_estimate_with_true_count() -> None:
    core = Scheduler(Limits(max_concurrency=None, tpm=1000))
    core.submit("a", 5, 100, 0.0)
    core.poll(0.0)
    assert core.stats(1.0).tpm_used == 100
    core.finish("a", 700, 2.0)
    assert core.stats(2.0).tpm_used == 700
    core.submit("b", 5, 400, 3.0)
    assert core.poll(3.0) == []  # 700 + 400 > 1000
    core.submit("c", 5, 0, 4.0)
    core.finish("b", None, 4.0)  # not running: ignored
    assert core.next_deadline() == 60.0


def test_finish_none_keeps_estimate_and_finish_is_idempotent() -> None:
    core = Scheduler(Limits(tpm=1000))
    core.submit("a", 5, 100, 0.0)
    core.poll(0.0)
    core.finish("a", None, 1.0)
    core.finish("a", 5000, 1.0)
    core.finish("ghost", 1, 1.0)
    stats = core.stats(1.0)
    assert stats.tpm_used == 100 and stats.counters.finished == 1 and stats.running == 0


def test_cancel_only_queued_tasks() -> None:
    core = Scheduler(Limits(max_concurrency=1))
    core.submit("run", 5, 1, 0.0)
    core.submit("wait", 5, 1, 0.0)
    core.poll(0.0)
    assert core.cancel("run", 1.0) is False
    assert core.cancel("wait", 1.0) is True
    assert core.cancel("wait", 1.0) is False
    assert core.cancel("ghost", 1.0) is False
    assert core.stats(1.0).counters.cancelled == 1


def test_requeue_busy_keeps_place_refunds_and_backs_off() -> None:
    core = Scheduler(Limits(max_concurrency=4, rpm=10, tpm=1000, busy_backoff_s=10.0))
    for i, prio in enumerate([9, 9, 9]):
        core.submit(f"t{i}", prio, 100, float(i))
    core.submit("later", 9, 100, 5.0)
    assert ids(core.poll(5.0)) == ["t0", "t1", "t2", "later"]
    core.requeue_busy("t0", 6.0)
    stats = core.stats(6.0)
    assert (stats.rpm_used, stats.tpm_used, stats.queued, stats.running) == (3, 300, 1, 3)
    assert stats.effective_concurrency == 3 and stats.counters.requeued_busy == 1
    assert core.poll(6.0) == []  # 3 running, cap 3
    core.finish("t1", 100, 7.0)
    starts = core.poll(7.0)
    assert ids(starts) == ["t0"] and starts[0].waited_s == 1.0  # measured from requeue
    core.requeue_busy("t0", 8.0)
    assert core.stats(8.0).effective_concurrency == 2
    assert core.next_deadline() == 18.0  # cap 2 reached by t2, later: until backoff ends
    core.finish("t2", 1, 9.0)
    assert core.stats(9.0).effective_concurrency == 2
    assert ids(core.poll(9.0)) == ["t0"]


def test_backoff_ends_and_deadline_points_at_its_end() -> None:
    core = Scheduler(Limits(max_concurrency=2, busy_backoff_s=10.0))
    core.submit("a", 5, 1, 0.0)
    core.submit("b", 5, 1, 0.0)
    core.poll(0.0)
    core.requeue_busy("b", 1.0)  # cap -> max(1, 1) = 1; "a" runs
    assert core.poll(2.0) == []
    assert core.next_deadline() == 11.0
    assert ids(core.poll(11.0)) == ["b"]
    assert core.stats(11.0).effective_concurrency == 2


def test_requeue_busy_of_unknown_task_is_loud() -> None:
    core = Scheduler(Limits())
    with pytest.raises(KeyError):
        core.requeue_busy("ghost", 0.0)


def test_requeued_task_keeps_original_place_ahead_of_newer_same_priority() -> None:
    core = Scheduler(Limits(max_concurrency=1, busy_backoff_s=0.0))
    core.submit("first", 5, 1, 0.0)
    core.poll(0.0)
    core.submit("second", 5, 1, 1.0)
    core.requeue_busy("first", 2.0)
    assert ids(core.poll(2.0)) == ["first"]


def test_next_deadline_none_when_idle_or_only_finish_helps() -> None:
    core = Scheduler(Limits(max_concurrency=1))
    assert core.next_deadline() is None
    core.submit("a", 5, 1, 0.0)
    assert core.next_deadline() == 0.0  # startable now: poll at once
    core.poll(0.0)
    core.submit("b", 5, 1, 0.0)
    assert core.next_deadline() is None


def test_aging_lets_a_waiting_task_overtake_newer_high_priority_work() -> None:
    core = Scheduler(Limits(max_concurrency=1, aging_s=10.0))
    core.submit("blocker", 10, 1, 0.0)
    core.poll(0.0)
    core.submit("old-low", 1, 1, 0.0)
    core.submit("new-high", 10, 1, 95.0)  # old-low has aged 9.5 levels: 10.5 > 10
    core.finish("blocker", 1, 100.0)
    assert ids(core.poll(100.0)) == ["old-low"]


def test_set_limits_evicts_tasks_that_can_never_fit_and_reorders() -> None:
    core = Scheduler(Limits(tpm=1000, aging_s=1000.0, max_concurrency=1))
    core.submit("run", 5, 1, 0.0)
    core.poll(0.0)
    core.submit("huge", 5, 900, 0.0)
    core.submit("ok", 5, 10, 1.0)
    evicted = core.set_limits(Limits(tpm=500, max_concurrency=1))
    assert [t.task_id for t in evicted] == ["huge"]
    assert [t.task_id for t in core.queued_tasks()] == ["ok"]
    assert core.stats(1.0).counters.rejected == 1


def test_take_removes_without_cancel_and_queued_tasks_is_start_order() -> None:
    core = Scheduler(Limits(max_concurrency=1))
    core.submit("a", 3, 1, 0.0)
    core.submit("b", 8, 1, 0.0)
    core.submit("c", 3, 1, 0.0)
    assert [t.task_id for t in core.queued_tasks()] == ["b", "a", "c"]
    taken = core.take("a")
    assert taken is not None and taken.priority == 3
    assert core.take("a") is None
    counters = core.stats(0.0).counters
    assert (counters.taken, counters.cancelled) == (1, 0)


def test_stats_snapshot() -> None:
    core = Scheduler(Limits(max_concurrency=1, rpm=100, tpm=10_000))
    core.submit("a", 5, 10, 0.0)
    core.submit("b", 7, 20, 0.0)
    core.poll(0.5)
    stats = core.stats(1.0)
    assert stats.depth_by_priority[5] == 1 and stats.depth_by_priority[7] == 0
    assert (stats.queued, stats.running, stats.rpm_used, stats.tpm_used) == (1, 1, 1, 20)
    assert stats.wait.samples == 1 and stats.wait.p50_ms == pytest.approx(500.0)
    assert stats.counters.accepted == 2 and stats.counters.started == 1
    assert stats.effective_concurrency == 1 and stats.backoff_until is None
