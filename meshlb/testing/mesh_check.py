"""Workload generation and the exactly-once ledger for the mesh simulator.

The ledger sees every command every core emits, so it can check the task invariants
over the whole run, not just at the end:

* accepted => eventually exactly one recorded outcome (`RecordFinal` with
  `decided_here`, counted per distinct run id; re-recording the same run is fine);
* no task has two recorded outcomes (finished twice);
* no accepted task is lost: every one is final at the end and held by a live node.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshlb.mesh import ownership_msgs as m


@dataclass(frozen=True, slots=True)
class SimTask:
    """One client request: arrives at `arrive_at`, needs `tokens` of `model`."""

    task_id: str
    arrive_at: float
    model: str
    tokens: int
    priority: int
    entry: int | None = None  # the node the client sends it to (None: a random live one)


def poisson_workload(
    rng: random.Random,
    *,
    duration_s: float,
    rate_per_s: float,
    models: Sequence[tuple[str, float]],
    tokens: tuple[int, int] = (50, 600),
    priorities: Sequence[tuple[int, float]] = ((2, 0.3), (5, 0.5), (9, 0.2)),
    start_at: float = 0.0,
) -> list[SimTask]:
    """Poisson arrivals at `rate_per_s`; model and priority drawn by weight; tokens
    uniform in `tokens` (mean = their midpoint)."""
    out: list[SimTask] = []
    t = start_at
    names, weights = zip(*models, strict=True)
    prios, pweights = zip(*priorities, strict=True)
    while True:
        t += rng.expovariate(rate_per_s)
        if t >= start_at + duration_s:
            return out
        model = rng.choices(names, weights)[0]
        prio = rng.choices(prios, pweights)[0]
        out.append(SimTask(f"t-{len(out):06d}", t, model, rng.randint(*tokens), prio))


@dataclass
class Ledger:
    """Everything the invariant checker and the benchmark need, in one place."""

    accepted: dict[str, SimTask] = field(default_factory=dict)
    accepted_at: dict[str, float] = field(default_factory=dict)
    outcomes: dict[str, dict[str, m.RecordFinal]] = field(default_factory=lambda: defaultdict(dict))
    final_at: dict[str, float] = field(default_factory=dict)
    starts: Counter[str] = field(default_factory=Counter)
    completions: Counter[str] = field(default_factory=Counter)
    duplicates_dropped: int = 0
    moved: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    requeues: list[tuple[float, str, str, str]] = field(default_factory=list)
    rejected: int = 0
    violations: list[str] = field(default_factory=list)

    def on_command(self, now: float, node: str, cmd: m.Command) -> None:
        if isinstance(cmd, m.RecordFinal) and cmd.decided_here:
            runs = self.outcomes[cmd.copy.task_id]
            runs[cmd.copy.run_id or "?"] = cmd
            self.final_at.setdefault(cmd.copy.task_id, now)
            if len(runs) > 1:
                self.violations.append(f"{now:.3f} {cmd.copy.task_id} recorded twice: {list(runs)}")
        elif isinstance(cmd, m.DropDuplicateResult):
            self.duplicates_dropped += 1
        elif isinstance(cmd, m.Send) and isinstance(cmd.msg, m.HandOver):
            for c in cmd.msg.copies:
                self.moved[cmd.msg.reason].add(c.task_id)
        elif isinstance(cmd, m.RunLocally) and cmd.reason != "accepted":
            self.requeues.append((now, node, cmd.task_id, cmd.reason))

    def accept(self, now: float, task: SimTask) -> None:
        self.accepted[task.task_id] = task
        self.accepted_at[task.task_id] = now

    def check(self, holders: dict[str, list[str]]) -> list[str]:
        """Final check: `holders` maps task id -> run ids of the final copies held by
        live nodes. Returns the violations (empty = every invariant holds)."""
        out = list(self.violations)
        for task_id in self.accepted:
            runs = self.outcomes.get(task_id, {})
            held = holders.get(task_id, [])
            if not runs:
                out.append(f"{task_id} lost: accepted, never recorded final")
            elif len(runs) > 1:
                out.append(f"{task_id} finished twice: {sorted(runs)}")
            elif not held:
                out.append(f"{task_id} lost: recorded, but no live node holds it")
            elif set(held) != set(runs):
                out.append(f"{task_id} holders disagree: {sorted(set(held))} vs {sorted(runs)}")
        return out

    def reruns(self) -> int:
        """Runs started beyond the first, over all tasks (allowed after failures)."""
        return sum(n - 1 for n in self.starts.values() if n > 1)

    def duplicate_executions(self) -> int:
        """Runs that completed beyond the first (work done twice)."""
        return sum(n - 1 for n in self.completions.values() if n > 1)
