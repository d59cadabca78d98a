"""The placement strategies the mesh simulator compares, injected into the shipped
`PlacementService` (which keeps its candidates, exclusion and hop rule).

`meshlb` is the shipped `placement.place` (estimated completion, power of two
choices, one hop); the baselines are what other load balancers do: round-robin,
random, and least-connections (which reads every node's live numbers, an oracle no
real balancer has, so the comparison flatters it). `local` runs a task where it was
accepted, or on the first peer with its model, and relies on stealing to spread it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence

from meshlb.mesh.placement import Candidate, Decision, NoHost, RunHere, SendTo, TaskNeeds, place
from meshlb.mesh.placement_service import Strategy

POLICIES = ("meshlb", "local", "round_robin", "random", "least_conn")


def _able(task: TaskNeeds, candidates: Sequence[Candidate]) -> list[Candidate]:
    return [c for c in candidates if task.model in c.models]


def _to(c: Candidate) -> Decision:
    return RunHere(0.0) if c.is_local else SendTo(c.node_id, 0.0, None)


def local(task: TaskNeeds, candidates: Sequence[Candidate], rng: random.Random) -> Decision:
    able = _able(task, candidates)
    here = [c for c in able if c.is_local]
    return _to(here[0] if here else able[0]) if able else NoHost()


def round_robin() -> Strategy:
    """One turn counter for the whole mesh (as a central round-robin balancer)."""
    turn = itertools.count()

    def choose(task: TaskNeeds, candidates: Sequence[Candidate], rng: random.Random) -> Decision:
        able = sorted(_able(task, candidates), key=lambda c: c.node_id)
        return _to(able[next(turn) % len(able)]) if able else NoHost()

    return choose


def uniform(task: TaskNeeds, candidates: Sequence[Candidate], rng: random.Random) -> Decision:
    able = _able(task, candidates)
    return _to(rng.choice(able)) if able else NoHost()


def least_connections(load_of: Callable[[str], int]) -> Strategy:
    """The candidate with the fewest queued + running tasks right now (`load_of`)."""

    def choose(task: TaskNeeds, candidates: Sequence[Candidate], rng: random.Random) -> Decision:
        able = _able(task, candidates)
        if not able:
            return NoHost()
        return _to(min(able, key=lambda c: (load_of(c.node_id), rng.random())))

    return choose


def strategy(policy: str, load_of: Callable[[str], int]) -> Strategy:
    if policy == "meshlb":
        return place
    if policy == "local":
        return local
    if policy == "round_robin":
        return round_robin()
    if policy == "random":
        return uniform
    if policy == "least_conn":
        return least_connections(load_of)
    raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
