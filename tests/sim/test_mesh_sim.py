"""The whole mesh in virtual time, on the shipped drivers: forward, steal, deaths,
partitions, and the exactly-once invariant over every task (`MeshSim.check`).

Each test is a scenario (an async function of the running mesh) that `simulate`
runs in its own `trio.run` under an autojumping mock clock."""

from __future__ import annotations

import random
from typing import Any

from meshlb.gossip.events import MemberDied
from meshlb.testing.mesh_check import SimTask, poisson_workload
from meshlb.testing.mesh_sim import MeshSim, NodeSpec, Scenario, simulate

XY = frozenset({"x", "y"})


def spec(speed: float = 20.0, slots: int = 1, models: frozenset[str] = XY) -> NodeSpec:
    return NodeSpec(speed, slots, models)


def burst(n: int, *, entry: int | None, at: float = 1.0, model: str = "x", tokens: int = 200,
          prefix: str = "t") -> list[SimTask]:  # fmt: skip
    return [SimTask(f"{prefix}-{i:03d}", at + i * 0.01, model, tokens, 5, entry) for i in range(n)]


def drained(*tasks: list[SimTask], limit_s: float = 600.0) -> Scenario:
    """Submit these tasks and run until every accepted one has its result."""

    async def scenario(sim: MeshSim) -> None:
        for batch in tasks:
            sim.submit(batch)
        await sim.drain(limit_s)

    return scenario


def ran_on(sim: MeshSim) -> dict[str, str]:
    """Task id -> the node whose result was recorded."""
    out = {}
    for task_id, runs in sim.ledger.outcomes.items():
        (rec,) = runs.values()
        out[task_id] = rec.copy.record.result["node"]
    return out


def detection_s(sim: MeshSim, node: int, crashed_at: float) -> float:
    """When the last live member declared `node` dead, relative to the crash."""
    name = sim.nodes[node].node_id
    times = [t for t, _, e in sim.gossip_log if isinstance(e, MemberDied) and e.node == name
             and t >= crashed_at]  # fmt: skip
    return max(times) - crashed_at


def takeover_delays(sim: MeshSim, crashed_at: float, tasks: frozenset[str]) -> list[float]:
    first: dict[str, float] = {}
    for t, _, task_id, reason in sim.ledger.requeues:
        if task_id in tasks and t >= crashed_at and reason in ("taken over", "adopted"):
            first.setdefault(task_id, t - crashed_at)
    assert set(first) == set(tasks), "some tasks of the dead node were never re-queued"
    return list(first.values())


# --------------------------------------------------------------------- placement


def test_forward_runs_a_task_on_a_node_that_has_its_model() -> None:
    specs = [spec(models=frozenset({"x"})), spec(), spec(), spec()]
    sim = simulate(specs, drained(burst(6, entry=0, model="y")), seed=1)
    assert sim.check() == []
    assert set(sim.ledger.accepted) <= sim.ledger.moved["forward"]
    assert set(ran_on(sim).values()) <= {"node-0001", "node-0002", "node-0003"}
    assert sim.ledger.reruns() == 0


def test_idle_nodes_steal_and_each_stolen_task_runs_once() -> None:
    def run(steal: bool) -> MeshSim:
        sim = simulate([spec() for _ in range(4)], drained(burst(20, entry=0)), seed=2,
                       policy="local", steal=steal)  # fmt: skip
        assert sim.check() == []
        return sim

    stealing, alone = run(True), run(False)
    assert set(ran_on(alone).values()) == {"node-0000"}
    assert len(set(ran_on(stealing).values())) == 4
    assert len(stealing.ledger.moved["steal"]) >= 8
    assert stealing.ledger.reruns() == 0  # a steal never makes two nodes run a task
    assert max(stealing.ledger.final_at.values()) < 0.5 * max(alone.ledger.final_at.values())


# --------------------------------------------------------------------- deaths


def crash_at(t: float, node: int, *tasks: list[SimTask], seen: dict[str, Any]) -> Scenario:
    """Submit, crash `node` at t (what ran there goes in `seen["running"]`), drain."""

    async def scenario(sim: MeshSim) -> None:
        for batch in tasks:
            sim.submit(batch)
        await sim.run_until(t)
        seen["running"] = [t for t in sim.ledger.accepted if t in sim.nodes[node].runs]
        sim.crash(node)
        await sim.drain()

    return scenario


def test_owner_death_requeues_its_queued_tasks_within_detection_plus_1s() -> None:
    seen: dict[str, Any] = {}
    sim = simulate([spec() for _ in range(5)], crash_at(5.0, 0, burst(12, entry=0), seen=seen),
                   seed=3, policy="local", steal=False)  # fmt: skip
    owned = sim.crashes[-1][2]
    assert len(owned) >= 10
    assert sim.check() == []
    assert max(takeover_delays(sim, 5.0, owned)) <= detection_s(sim, 0, 5.0) + 1.0
    assert "node-0000" not in {n for t, n in ran_on(sim).items() if t in owned}


def test_executor_death_the_forwarded_task_reruns_elsewhere() -> None:
    only_x = frozenset({"x"})
    seen: dict[str, Any] = {}
    specs = [spec(models=only_x), spec(), spec(), spec(models=only_x)]
    sim = simulate(specs, crash_at(3.0, 1, burst(4, entry=0, model="y", tokens=400), seen=seen),
                   seed=4)  # fmt: skip
    running_on_1 = seen["running"]
    assert running_on_1, "the scenario needs a task running on node 1"
    assert sim.check() == []
    assert all(ran_on(sim)[t] == "node-0002" for t in running_on_1)
    assert sim.ledger.reruns() >= len(running_on_1)


def test_death_of_the_node_that_accepted_and_ran_it() -> None:
    seen: dict[str, Any] = {}
    sim = simulate([spec() for _ in range(4)], crash_at(3.0, 2, burst(3, entry=2, tokens=400),
                   seen=seen), seed=5, policy="local", steal=False)  # fmt: skip
    assert seen["running"], "a task must be running on the node that accepted it"
    assert sim.check() == []
    assert "node-0002" not in ran_on(sim).values()


def test_death_of_the_accepting_node_after_a_forward_loses_nothing() -> None:
    seen: dict[str, Any] = {}
    specs = [spec(models=frozenset({"x"})), spec(), spec(), spec()]
    sim = simulate(specs, crash_at(2.0, 0, burst(6, entry=0, model="y"), seen=seen), seed=6)
    assert sim.check() == []
    assert sim.ledger.reruns() == 0  # the executors never died: nothing ran twice


def test_the_checker_catches_a_loss_without_replication() -> None:
    async def scenario(sim: MeshSim) -> None:
        sim.submit(burst(8, entry=0))
        await sim.run_until(5.0)
        sim.crash(0)
        await sim.drain(limit_s=60.0)

    sim = simulate([spec() for _ in range(4)], scenario, seed=3, policy="local", steal=False,
                   replication=1)  # fmt: skip
    assert any("lost" in v for v in sim.check())


# --------------------------------------------------------------------- partitions


def _partition_run(groups: tuple[list[int], list[int]], seed: int) -> MeshSim:
    async def scenario(sim: MeshSim) -> None:
        rng = random.Random(seed)
        sim.submit(poisson_workload(rng, duration_s=60, rate_per_s=0.8, models=[("x", 1.0)]))
        sim.at(10.0, lambda: sim.partition(*groups))
        sim.at(35.0, sim.heal)
        await sim.run_until(70.0)
        await sim.drain()

    return simulate([spec(slots=2) for _ in range(6)], scenario, seed=seed)


def _counter(sim: MeshSim, name: str) -> int:
    cores = [sim.core(i) for i in range(len(sim.nodes))]
    return sum(getattr(c.counters, name) for c in cores if c is not None)


def test_uneven_partition_and_heal_keeps_every_task_exactly_once() -> None:
    taken = held = 0
    for seed in range(6):
        sim = _partition_run(([0, 1], [2, 3, 4, 5]), seed=seed)
        assert sim.check() == [], f"seed {seed}"
        taken += _counter(sim, "taken_over")
        held += _counter(sim, "results_held")
    assert taken > 0 and held > 0  # the majority took over; the minority held results


def test_even_partition_and_heal_keeps_every_task_exactly_once() -> None:
    held = 0
    for seed in range(6):
        sim = _partition_run(([0, 1, 2], [3, 4, 5]), seed=seed)
        assert sim.check() == [], f"seed {seed}"
        held += _counter(sim, "results_held")
    assert held > 0  # neither side had a quorum: results waited for the heal


# --------------------------------------------------------------------- invariant


def test_repeated_crashes_and_restarts_lose_nothing_and_record_once() -> None:
    async def scenario(sim: MeshSim) -> None:
        rng = random.Random(9)
        mix = [("x", 0.5), ("y", 0.5)]
        sim.submit(poisson_workload(rng, duration_s=240, rate_per_s=1.0, models=mix))
        for k in range(7):
            victim = (3 * k + 1) % 8
            sim.at(20.0 + 30 * k, lambda v=victim: sim.crash(v))  # type: ignore[misc]
            sim.at(35.0 + 30 * k, lambda v=victim: sim.restart(v))  # type: ignore[misc]
        await sim.run_until(250.0)
        await sim.drain()

    sim = simulate([spec(10.0 * (1 + i % 4), 2) for i in range(8)], scenario, seed=9)
    assert len(sim.crashes) == 7
    assert len(sim.ledger.accepted) > 200
    assert sim.check() == []


def test_same_seed_same_run() -> None:
    def run() -> list[tuple[str, float]]:
        async def scenario(sim: MeshSim) -> None:
            sim.submit(poisson_workload(random.Random(11), duration_s=30, rate_per_s=1.0,
                                        models=[("x", 1.0)]))  # fmt: skip
            sim.at(10.0, lambda: sim.crash(1))
            await sim.drain()

        sim = simulate([spec(slots=2) for _ in range(5)], scenario, seed=11)
        return sorted(sim.ledger.final_at.items())

    assert run() == run()


def test_restart_faster_than_dead_detection_still_requeues_its_tasks() -> None:
    async def scenario(sim: MeshSim) -> None:
        sim.submit(burst(8, entry=0))
        await sim.run_until(5.0)
        sim.crash(0)
        await sim.run_until(5.5)
        sim.restart(0)  # back, empty, before anyone declared it dead
        await sim.drain()

    sim = simulate([spec() for _ in range(5)], scenario, seed=12, policy="local", steal=False)
    owned = sim.crashes[0][2]
    assert sim.check() == []
    assert not any(isinstance(e, MemberDied) for _, _, e in sim.gossip_log)
    assert max(takeover_delays(sim, 5.0, owned)) < 5.0
