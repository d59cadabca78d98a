"""Where a task should run: here, on a peer, or nowhere (pure; no I/O, no clock).

The rule: estimate each candidate's completion time from its gossiped load (queue
ahead, free slots, measured tokens/s, rpm/tpm headroom); run here when this host has
the model and is about as good as the best; otherwise send the task to the better of
two random picks among the best few (power of two choices), so that many nodes acting
on the same stale gossip do not all herd onto one host. A task that has already been
forwarded runs where it lands (no ping-pong).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

# A host whose generation speed is unknown yet (it has not run anything) is assumed
# as fast as the median host that has been measured — so a new or idle host gets
# work and is measured, rather than being written off — or this fast if none has.
DEFAULT_TOKENS_PER_S = 20.0
# Unlimited concurrency still has a real ceiling; treat it as this many slots.
UNLIMITED_SLOTS = 16
# A host out of rpm/tpm budget cannot start anything for a while: this many seconds.
BUDGET_EXHAUSTED_PENALTY_S = 30.0
# One hop through a peer costs a little; below this gain a task stays where it is.
MIN_GAIN_S = 0.25
# ... and a remote host must be at least this much better in relative terms.
MIN_GAIN_FRACTION = 0.2
MAX_HOPS = 1
BEST_FEW = 3


@dataclass(frozen=True, slots=True)
class Candidate:
    """A host as placement sees it (this node included, with `is_local`)."""

    node_id: str
    models: frozenset[str]
    queued: int
    running: int
    max_concurrency: int | None
    tokens_per_s: float
    rpm_headroom: int | None = None
    tpm_headroom: int | None = None
    is_local: bool = False


@dataclass(frozen=True, slots=True)
class TaskNeeds:
    model: str
    est_tokens: int
    hops: int = 0


@dataclass(frozen=True, slots=True)
class RunHere:
    eta_s: float


@dataclass(frozen=True, slots=True)
class SendTo:
    node_id: str
    eta_s: float
    local_eta_s: float | None


@dataclass(frozen=True, slots=True)
class NoHost:
    """No candidate can run the model (none has it, or the task may not hop again)."""


Decision = RunHere | SendTo | NoHost


def assumed_rate(candidates: Sequence[Candidate]) -> float:
    """The speed to assume for a host not measured yet (see DEFAULT_TOKENS_PER_S)."""
    known = sorted(c.tokens_per_s for c in candidates if c.tokens_per_s > 0)
    return known[len(known) // 2] if known else DEFAULT_TOKENS_PER_S


def expected_completion_s(
    c: Candidate, task: TaskNeeds, unknown_rate: float = DEFAULT_TOKENS_PER_S
) -> float:
    """Seconds until `task` would finish on `c`: wait for a slot, then run."""
    rate = c.tokens_per_s if c.tokens_per_s > 0 else unknown_rate
    service_s = max(1, task.est_tokens) / rate
    slots = c.max_concurrency or UNLIMITED_SLOTS
    ahead = c.queued + c.running
    wait_s = 0.0 if ahead < slots else (ahead - slots + 1) / slots * service_s
    if (c.rpm_headroom is not None and c.rpm_headroom <= 0) or (
        c.tpm_headroom is not None and c.tpm_headroom < task.est_tokens
    ):
        wait_s += BUDGET_EXHAUSTED_PENALTY_S
    return wait_s + service_s


def place(task: TaskNeeds, candidates: Sequence[Candidate], rng: random.Random) -> Decision:
    """Decide where `task` runs. `candidates` are live hosts, this node among them."""
    local = next((c for c in candidates if c.is_local), None)
    local_has = local is not None and task.model in local.models
    unknown = assumed_rate(candidates)
    local_eta = (
        expected_completion_s(local, task, unknown) if local is not None and local_has else None
    )
    if task.hops >= MAX_HOPS:  # forwarded already: run here or nowhere, never a 2nd hop
        return RunHere(local_eta) if local_eta is not None else NoHost()
    remotes = sorted(
        (expected_completion_s(c, task, unknown), c.node_id)
        for c in candidates
        if not c.is_local and task.model in c.models
    )
    if not remotes:
        return RunHere(local_eta) if local_eta is not None else NoHost()
    best_few = remotes[:BEST_FEW]
    picks = rng.sample(best_few, k=min(2, len(best_few)))
    eta, node_id = min(picks)
    if local_eta is None:
        return SendTo(node_id, eta, None)
    if eta < local_eta * (1 - MIN_GAIN_FRACTION) and local_eta - eta >= MIN_GAIN_S:
        return SendTo(node_id, eta, local_eta)
    return RunHere(local_eta)
