"""Where a task should run: here, on a peer, or nowhere (pure; no I/O, no clock).

The rule: estimate each candidate's completion time from its gossiped load (queue
ahead, free slots, measured tokens/s, rpm/tpm headroom) and residency (a load, and
what it evicts, when the model is not loaded there: `meshlb.mesh.residency`); a
conversation's earlier host is credited with the prompt evaluation its cache saves;
run here when this host has the model and is about as good as the best; otherwise send
the task to the better of two random picks among the best few that are near the best
(power of two choices), so that many nodes acting on the same stale gossip do not all
herd onto one host, and a random pick never lands on a host that must load the model
when another has it loaded. A host that would have to load the model (a load timed to
take time) gets no such preference for itself: a hop costs far less than a load; where
a load must start, the emptier of the near-best hosts is chosen, ties by a rank every
node computes alike (`rendezvous`), so nodes behind stale gossip start one model's
load on one host. A task that has already been forwarded runs where it
lands, or nowhere when the model is not there: never a second hop (no ping-pong).

This is the pricing only: which members are candidates at all (alive, with the model,
minus those that failed or are left out, plus the work recently sent to them) is
`meshlb.mesh.placement_service`'s, the one caller every path goes through.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from meshlb.mesh.residency import (
    DEFAULT_MODEL_GB,
    Residency,
    cold_start_s,
    load_s,
    model_size_gb,
    sole_copies,
    with_assumed_rate,
)

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
# The random pick is among the best few whose estimate is within this of the best.
NEAR_BEST_FRACTION = 0.5
# Where a load must start, hosts within this of the cheapest are ranked alike.
COLD_NEAR_FRACTION = 0.1
# Ollama's parallel slots per loaded model (OLLAMA_NUM_PARALLEL; /api/ps omits it).
RUNNER_PARALLEL = 4


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
    # What the host has loaded (None: it gossips no residency; loads are not priced).
    residency: Residency | None = None


@dataclass(frozen=True, slots=True)
class TaskNeeds:
    model: str
    est_tokens: int
    hops: int = 0
    # The model's memory size (None: learned from the candidates, else a default).
    size_gb: float | None = None
    # Conversation affinity: the host that served this conversation's earlier turn,
    # and the prompt evaluation (seconds) its prompt cache would save there.
    prefer: str | None = None
    prefer_saving_s: float = 0.0


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
    c: Candidate,
    task: TaskNeeds,
    unknown_rate: float = DEFAULT_TOKENS_PER_S,
    sole: Collection[str] = frozenset(),
) -> float:
    """Seconds until `task` would finish on `c`: wait for a slot, load the model if it
    is not loaded there (and pay for what that evicts), then run; minus what the
    prompt cache saves on the conversation's earlier host. The wait is the longer of
    the host's (its concurrency limit over everything in hand) and the model's (its
    runner's `OLLAMA_PARALLEL` slots over the requests for it there). `sole`: the
    models loaded on this host only (evicting one costs a full reload)."""
    rate = c.tokens_per_s if c.tokens_per_s > 0 else unknown_rate
    service_s = max(1, task.est_tokens) / rate
    slots = c.max_concurrency or UNLIMITED_SLOTS
    size_gb = task.size_gb if task.size_gb is not None else DEFAULT_MODEL_GB
    parallel = min(slots, RUNNER_PARALLEL)
    cold_s = cold_start_s(c.residency, task.model, size_gb, service_s, parallel, sole)
    wait_s = _wait_s(c.queued + c.running, slots, service_s)
    mine = c.residency.resident(task.model) if c.residency is not None else None
    if mine is not None:
        wait_s = max(wait_s, _wait_s(mine.active, parallel, service_s))
    if (c.rpm_headroom is not None and c.rpm_headroom <= 0) or (
        c.tpm_headroom is not None and c.tpm_headroom < task.est_tokens
    ):
        wait_s += BUDGET_EXHAUSTED_PENALTY_S
    saving_s = task.prefer_saving_s if task.prefer == c.node_id else 0.0
    return max(0.0, wait_s + cold_s + service_s - saving_s)


def _wait_s(ahead: int, slots: int, service_s: float) -> float:
    return 0.0 if ahead < slots else (ahead - slots + 1) / slots * service_s


def must_load(c: Candidate, task: TaskNeeds, timed: bool = False) -> bool:
    """Running `task` there means a load that may take time: the host gossips
    residency, does not have the model loaded, and its loads are not known to be
    instant (timed so, or borrowed from hosts timed so). `timed`: only a load known
    to take time counts (this host keeps its own work until a load was timed)."""
    res = c.residency
    size_gb = task.size_gb if task.size_gb is not None else DEFAULT_MODEL_GB
    if res is None or res.has(task.model):
        return False
    return (res.load_gbps is None and not timed) or load_s(res, size_gb) > 0


def loaded_count(c: Candidate) -> int:
    return len(c.residency.loaded) if c.residency is not None else 0


def rendezvous(model: str, node_id: str) -> bytes:
    """A per-(model, host) rank every node computes alike (lowest first)."""
    return hashlib.blake2b(f"{model}\x00{node_id}".encode(), digest_size=8).digest()


def with_size(task: TaskNeeds, candidates: Sequence[Candidate]) -> TaskNeeds:
    """`task` with its model's size filled in from what the candidates have loaded."""
    if task.size_gb is not None:
        return task
    size = model_size_gb([c.residency for c in candidates], task.model)
    return replace(task, size_gb=size)


def with_assumed_load_rate(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates whose unmeasured load rate is the median measured one
    (`meshlb.mesh.residency.with_assumed_rate`)."""
    assumed = with_assumed_rate([c.residency for c in candidates])
    return [
        c if res is c.residency else replace(c, residency=res)
        for c, res in zip(candidates, assumed, strict=True)
    ]


def etas_s(task: TaskNeeds, candidates: Sequence[Candidate]) -> dict[str, float]:
    """Each candidate's expected completion (seconds) for `task`, by node id, for the
    hosts that have the model; residency priced against the whole mesh."""
    unknown = assumed_rate(candidates)
    sole = sole_copies([c.residency for c in candidates])
    return {
        c.node_id: expected_completion_s(c, task, unknown, sole.get(i, frozenset()))
        for i, c in enumerate(candidates)
        if task.model in c.models
    }


def place(task: TaskNeeds, candidates: Sequence[Candidate], rng: random.Random) -> Decision:
    """Decide where `task` runs. `candidates` are live hosts, this node among them."""
    task = with_size(task, candidates)
    candidates = with_assumed_load_rate(candidates)
    etas = etas_s(task, candidates)
    local = next((c for c in candidates if c.is_local), None)
    local_eta = etas.get(local.node_id) if local is not None else None
    if task.hops >= MAX_HOPS:  # forwarded already: run here or nowhere, never a 2nd hop
        return RunHere(local_eta) if local_eta is not None else NoHost()
    if local is not None and local_eta is not None and must_load(local, task, timed=True):
        return _place_load(task, candidates, etas, local_eta, rng)
    remotes = sorted((eta, node_id) for node_id, eta in etas.items() if node_id != local_id(local))
    if not remotes:
        return RunHere(local_eta) if local_eta is not None else NoHost()
    if local_eta is None and must_load_all(candidates, task, remotes):
        return _place_load(task, candidates, etas, None, rng)
    near = remotes[0][0] + max(MIN_GAIN_S, remotes[0][0] * NEAR_BEST_FRACTION)
    best_few = [r for r in remotes[:BEST_FEW] if r[0] <= near]
    picks = rng.sample(best_few, k=min(2, len(best_few)))
    eta, node_id = min(picks)
    if local_eta is None:
        return SendTo(node_id, eta, None)
    if eta < local_eta * (1 - MIN_GAIN_FRACTION) and local_eta - eta >= MIN_GAIN_S:
        return SendTo(node_id, eta, local_eta)
    return RunHere(local_eta)


def local_id(local: Candidate | None) -> str | None:
    return local.node_id if local is not None else None


def must_load_all(
    candidates: Sequence[Candidate], task: TaskNeeds, remotes: Sequence[tuple[float, str]]
) -> bool:
    """No remote among the best has the model loaded: wherever it goes, a load starts."""
    by_id = {c.node_id: c for c in candidates}
    return all(must_load(by_id[node_id], task) for _, node_id in remotes[:BEST_FEW])


def _place_load(
    task: TaskNeeds,
    candidates: Sequence[Candidate],
    etas: dict[str, float],
    local_eta: float | None,
    rng: random.Random,
) -> Decision:
    """This host would have to load the model (or cannot run it): no preference for
    here, since a load costs far more than a hop. A host that has it loaded and is near
    the best wins (power of two choices among those); else, among the near-best, the
    host with the fewest models loaded (memory may be unknown: an emptier host evicts
    less), ties ranked by `rendezvous`, so nodes that do not yet know of each other's
    loads (gossip is up to an interval old) start the same model's load on one host."""
    by_id = {c.node_id: c for c in candidates}
    ranked = sorted((eta, node_id) for node_id, eta in etas.items())
    best = ranked[0][0]
    warm = [e for e in ranked if not must_load(by_id[e[1]], task)]
    if warm and warm[0][0] <= best + max(MIN_GAIN_S, best * NEAR_BEST_FRACTION):
        near = warm[0][0] + max(MIN_GAIN_S, warm[0][0] * NEAR_BEST_FRACTION)
        few = [e for e in warm[:BEST_FEW] if e[0] <= near]
        eta, node_id = min(rng.sample(few, k=min(2, len(few))))
    else:
        near = best + max(MIN_GAIN_S, best * COLD_NEAR_FRACTION)
        eta, node_id = min(
            (e for e in ranked if e[0] <= near),
            key=lambda e: (loaded_count(by_id[e[1]]), rendezvous(task.model, e[1])),
        )
    return RunHere(eta) if by_id[node_id].is_local else SendTo(node_id, eta, local_eta)
