"""Property tests of the scheduler core: random operation sequences against an oracle.

Checked after every step:
* no 60-s window holds more than rpm starts (refunded starts excluded);
* at every start, the tokens charged in its window (true counts of finished tasks,
  estimates of running ones) are <= tpm; and the TRUE tokens of any window exceed tpm
  by at most the estimate errors of the tasks running at that window's last start;
* the core's tpm_used equals the oracle's true count (reconcile keeps it true);
* each poll starts the highest effective priority first (FIFO on ties), and nothing
  still queued outranks a started task;
* running <= the concurrency cap; counters agree with the oracle;
* next_deadline is honest: polling a copy at the deadline starts something, and
  None only when only a finish can make room;
* every accepted task ends in exactly one final state (drained in teardown).

Times are whole seconds and aging periods whole numbers, so the oracle's integer
arithmetic and the core's floats agree exactly on ties.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from meshlb.sched.limits import WINDOW_S, Limits
from meshlb.sched.scheduler import Accepted, Rejected, Scheduler

IDS = [f"t{i}" for i in range(8)]


@dataclass
class Sub:
    """One accepted submission as the oracle tracks it."""

    tid: str
    priority: int
    est: int
    enqueued_at: float
    seq: int
    state: str = "queued"  # queued | running | finished | cancelled | taken
    finals: int = 0


@dataclass
class StartRec:
    sub: Sub
    at: float
    est: int
    actual: int | None = None  # set at finish (None: estimate kept)
    done: bool = False
    refunded: bool = False
    running_then: list[StartRec] = field(default_factory=list)

    def error(self) -> int:
        """Tokens this start used beyond its estimate (0 if over-estimated or refunded)."""
        return max(0, self.amount() - self.est)

    def amount(self) -> int:
        if self.refunded:
            return 0
        return self.actual if self.done and self.actual is not None else self.est


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.seq = 0
        self.subs: dict[str, Sub] = {}
        self.all_subs: list[Sub] = []
        self.starts: list[StartRec] = []
        self.live: dict[str, StartRec] = {}
        self.counts = {
            "accepted": 0,
            "rejected": 0,
            "cancelled": 0,
            "taken": 0,
            "finished": 0,
            "requeued_busy": 0,
        }

    @initialize(
        conc=st.sampled_from([None, 1, 2, 3]),
        rpm=st.sampled_from([None, 1, 3, 5]),
        tpm=st.sampled_from([None, 50, 200]),
        max_queue=st.sampled_from([3, 100]),
        aging=st.sampled_from([1.0, 5.0, 30.0]),
        backoff=st.sampled_from([0.0, 5.0, 10.0]),
    )
    def setup(
        self,
        conc: int | None,
        rpm: int | None,
        tpm: int | None,
        max_queue: int,
        aging: float,
        backoff: float,
    ) -> None:
        self.limits = Limits(
            max_concurrency=conc,
            rpm=rpm,
            tpm=tpm,
            max_queue=max_queue,
            aging_s=aging,
            busy_backoff_s=backoff,
        )
        self.core = Scheduler(self.limits)

    # ------------------------------------------------------------------ helpers

    def queued(self) -> list[Sub]:
        return [s for s in self.subs.values() if s.state == "queued"]

    def running(self) -> list[Sub]:
        return [s for s in self.subs.values() if s.state == "running"]

    def rank(self, sub: Sub) -> tuple[float, int]:
        """Effective priority * aging_s, negated (exact with whole numbers), then FIFO."""
        eff_scaled = sub.priority * self.limits.aging_s + (self.now - sub.enqueued_at)
        return (-eff_scaled, sub.seq)

    def end(self, sub: Sub, state: str) -> None:
        sub.state = state
        sub.finals += 1
        del self.subs[sub.tid]

    # ------------------------------------------------------------------ rules

    @rule(dt=st.sampled_from([0, 1, 2, 5, 15, 30, 59, 60, 61]))
    def advance(self, dt: int) -> None:
        self.now += dt

    @rule(tid=st.sampled_from(IDS), priority=st.integers(1, 10), est=st.integers(0, 250))
    def submit(self, tid: str, priority: int, est: int) -> None:
        verdict = self.core.submit(tid, priority, est, self.now)
        if tid in self.subs:
            expected = "duplicate"
        elif self.limits.tpm is not None and est > self.limits.tpm:
            expected = "never_fits"
        elif len(self.queued()) >= self.limits.max_queue:
            expected = "queue_full"
        else:
            assert isinstance(verdict, Accepted)
            self.seq += 1
            sub = Sub(tid, priority, est, self.now, self.seq)
            self.subs[tid] = sub
            self.all_subs.append(sub)
            self.counts["accepted"] += 1
            return
        assert isinstance(verdict, Rejected) and verdict.reason == expected, verdict
        if expected == "queue_full":
            assert verdict.retry_after_s is not None and 1.0 <= verdict.retry_after_s <= 60.0
        self.counts["rejected"] += 1

    @rule()
    def poll(self) -> None:
        before = sorted(self.queued(), key=self.rank)
        starts = self.core.poll(self.now)
        started = [self.subs[s.task_id] for s in starts]
        assert started == before[: len(started)], "started out of effective-priority order"
        for sub in started:
            self.start(sub)
        self.check_deadline()

    def start(self, sub: Sub) -> None:
        sub.state = "running"
        rec = StartRec(sub, self.now, sub.est, running_then=list(self.live.values()))
        self.live[sub.tid] = rec
        self.starts.append(rec)
        window = [r for r in self.starts if r.at + WINDOW_S > self.now]
        if self.limits.rpm is not None:
            assert sum(not r.refunded for r in window) <= self.limits.rpm
        if self.limits.tpm is not None:
            assert sum(r.amount() for r in window) <= self.limits.tpm

    def check_deadline(self) -> None:
        deadline = self.core.next_deadline()
        if not self.queued():
            assert deadline is None
            return
        if deadline is None:
            cap = self.core.effective_concurrency(self.now)
            assert cap is not None and len(self.running()) >= cap
            return
        assert deadline > self.now
        probe = copy.deepcopy(self.core)
        assert probe.poll(deadline), "nothing could start at next_deadline()"

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), actual=st.one_of(st.none(), st.integers(0, 300)))
    def finish(self, data: st.DataObject, actual: int | None) -> None:
        tid = data.draw(st.sampled_from(sorted(self.live)))
        self.core.finish(tid, actual, self.now)
        rec = self.live.pop(tid)
        rec.actual, rec.done = actual, True
        self.end(self.subs[tid], "finished")
        self.counts["finished"] += 1

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def requeue_busy(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(self.live)))
        self.core.requeue_busy(tid, self.now)
        rec = self.live.pop(tid)
        rec.refunded = True
        self.subs[tid].state = "queued"
        self.counts["requeued_busy"] += 1

    @rule(tid=st.sampled_from(IDS))
    def cancel(self, tid: str) -> None:
        sub = self.subs.get(tid)
        expected = sub is not None and sub.state == "queued"
        assert self.core.cancel(tid, self.now) is expected
        if sub is not None and expected:
            self.end(sub, "cancelled")
            self.counts["cancelled"] += 1

    @rule(tid=st.sampled_from(IDS))
    def take(self, tid: str) -> None:
        sub = self.subs.get(tid)
        view = self.core.take(tid)
        if sub is not None and sub.state == "queued":
            assert view is not None and view.priority == sub.priority
            self.end(sub, "taken")
            self.counts["taken"] += 1
        else:
            assert view is None

    # ------------------------------------------------------------------ invariants

    @invariant()
    def matches_oracle(self) -> None:
        if not hasattr(self, "core"):
            return
        stats = self.core.stats(self.now)
        assert (stats.queued, stats.running) == (len(self.queued()), len(self.running()))
        window = [r for r in self.starts if r.at + WINDOW_S > self.now]
        assert stats.tpm_used == sum(r.amount() for r in window)
        assert stats.rpm_used == sum(not r.refunded for r in window)
        cap = stats.effective_concurrency
        assert cap is None or stats.running <= cap
        conc = self.limits.max_concurrency
        assert conc is None or stats.running <= conc
        for name, value in self.counts.items():
            assert getattr(stats.counters, name) == value, name

    @invariant()
    def every_window_within_limits(self) -> None:
        if not hasattr(self, "core"):
            return
        kept = [r for r in self.starts if not r.refunded]
        for last in kept:
            window = [r for r in kept if r.at + WINDOW_S > last.at and r.at <= last.at]
            if self.limits.rpm is not None:
                assert len(window) <= self.limits.rpm
            if self.limits.tpm is not None:
                final = [r for r in window if r.at == last.at][-1]
                slack = sum(
                    r.error() for r in [*final.running_then, final] if r.at + WINDOW_S > last.at
                )
                true_total = sum(r.amount() for r in window)
                assert true_total <= self.limits.tpm + slack

    def teardown(self) -> None:
        """Drain: every accepted submission must reach exactly one final state."""
        if not hasattr(self, "core"):
            return
        for _ in range(10_000):
            for tid in sorted(self.live):
                self.finish_now(tid)
            if not self.queued():
                break
            self.now += WINDOW_S
            for start in self.core.poll(self.now):
                self.start(self.subs[start.task_id])
        assert not self.subs
        assert all(sub.finals == 1 for sub in self.all_subs)

    def finish_now(self, tid: str) -> None:
        self.core.finish(tid, None, self.now)
        self.live.pop(tid).done = True
        self.end(self.subs[tid], "finished")


SchedulerMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None
)
TestScheduler = SchedulerMachine.TestCase


@settings(max_examples=150, deadline=None)
@given(
    low=st.integers(1, 9),
    boost=st.integers(1, 9),
    aging=st.sampled_from([1.0, 7.0, 30.0]),
    extra=st.integers(1, 100),
    newer=st.integers(1, 5),
)
def test_long_waiting_task_overtakes_newer_higher_priority(
    low: int, boost: int, aging: float, extra: int, newer: int
) -> None:
    """A task that waited more than (p_high - p_low) * aging_s beyond newer tasks beats them."""
    high = min(10, low + boost)
    core = Scheduler(Limits(max_concurrency=1, aging_s=aging))
    core.submit("blocker", 10, 0, 0.0)
    assert [s.task_id for s in core.poll(0.0)] == ["blocker"]
    core.submit("old", low, 0, 0.0)
    arrive = (high - low) * aging + extra * 0.01
    for i in range(newer):
        core.submit(f"new{i}", high, 0, arrive + i)
    core.finish("blocker", 0, arrive + newer)
    assert [s.task_id for s in core.poll(arrive + newer)] == ["old"]
