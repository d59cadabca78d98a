"""Work-stealing policy: whom an idle node asks, and what a busy node gives (pure).

The thief asks the member whose queue would keep a task waiting longest (queue per
slot, scaled by its speed), among the members that have a model the thief can run;
the victim gives, from the tail of its queue (the tasks that would wait longest), only
those the thief would finish sooner than the victim would — so a slow idle host does
not take work a fast busy one would finish first, and a task does not bounce back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshlb.mesh.placement import DEFAULT_TOKENS_PER_S, UNLIMITED_SLOTS, Candidate

# Moving a task costs a few messages and a little risk; demand at least this gain.
MIN_STEAL_GAIN_S = 0.5


@dataclass(frozen=True, slots=True)
class Waiting:
    """A queued task as the victim sees it, in expected start order."""

    task_id: str
    model: str
    est_tokens: int


def _rate(tokens_per_s: float) -> float:
    return tokens_per_s if tokens_per_s > 0 else DEFAULT_TOKENS_PER_S


def _slots(c: Candidate) -> int:
    return c.max_concurrency or UNLIMITED_SLOTS


def backlog_s(c: Candidate) -> float:
    """How long the last queued task on `c` would wait, roughly (queue per slot / speed):
    the thief's measure of "busiest"."""
    return c.queued / _slots(c) / _rate(c.tokens_per_s)


def choose_victim(local: Candidate, peers: Sequence[Candidate]) -> str | None:
    """The busiest live peer with queued work sharing a model with us, or None."""
    suitable = [p for p in peers if not p.is_local and p.queued > 0 and p.models & local.models]
    if not suitable:
        return None
    return max(suitable, key=lambda p: (backlog_s(p), p.node_id)).node_id


def choose_gifts(
    waiting: Sequence[Waiting],
    n: int,
    thief_models: frozenset[str],
    thief_tokens_per_s: float,
    local_tokens_per_s: float,
    local_slots: int,
) -> list[str]:
    """Up to `n` task ids from the tail of `waiting` (head first) worth moving.

    A task at position k waits about (tokens ahead) / (rate x slots) here; it moves
    only if the thief, idle, would finish it `MIN_STEAL_GAIN_S` sooner. A thief not
    measured yet is assumed as fast as this node (so it gets work and is measured)."""
    rate_here = _rate(local_tokens_per_s)
    rate_there = thief_tokens_per_s if thief_tokens_per_s > 0 else rate_here
    slots = max(1, local_slots)
    ahead = 0
    finish_here: list[float] = []
    for w in waiting:
        finish_here.append(ahead / (rate_here * slots) + max(1, w.est_tokens) / rate_here)
        ahead += max(1, w.est_tokens)
    gifts: list[str] = []
    for w, here_s in zip(reversed(waiting), reversed(finish_here), strict=True):
        if len(gifts) >= n:
            break
        there_s = max(1, w.est_tokens) / rate_there
        if w.model in thief_models and there_s + MIN_STEAL_GAIN_S < here_s:
            gifts.append(w.task_id)
    return gifts
