"""Whole-mesh benchmark in virtual time, on the shipped drivers (gossip, scheduler,
task service, ownership; `meshlb.testing.mesh_sim`), each policy a strategy injected
into the shipped placement service.

  A. placement: a heterogeneous mesh (8 nodes, 2 slots each at 10-80 tokens/s per
     slot, i.e. speeds 1x-8x; model m-a on nodes 0-5, m-b on nodes 2-7) under Poisson
     load at 50 %, 90 % and 120 % of total capacity, the same workload for meshlb
     (placement + stealing) and the peers' strategies (round-robin, random,
     least-connections; no stealing): makespan vs the lower bound
     max(sum(work) / sum(rate), last arrival), wait p50/p99 per priority, fraction
     of tasks moved (forwarded, stolen);
  B. failover: meshlb at 90 % load, a node crashes every 60 virtual seconds (each
     restarts 30 s later, empty): tasks accepted vs succeeded, lost, results recorded
     twice, duplicate executions, and the time from crash to re-queue vs the time
     gossip took to declare the node dead everywhere;
  C. scale: wall-clock time of 10 virtual minutes at N = 8 and N = 50 (every node a
     full composition of Trio drivers; the clock jumps when all of them wait).
Targets: at 120 % makespan <= 1.10 x bound and p99 wait >= 1.5x better than
round-robin and least-connections; 0 lost and 0 recorded twice under crashes;
re-queue <= dead-detection + 1 s. Writes bench/results/mesh_sim.json
(mesh_sim.quick.json with --quick).

    python bench/mesh_sim.py            # full run (~7 min: real drivers, 50 nodes in C)
    python bench/mesh_sim.py --quick    # smoke run (~1.5 min)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from meshlb.gossip.events import MemberDied
from meshlb.sched.stats import percentile
from meshlb.testing.mesh_check import SimTask, poisson_workload
from meshlb.testing.mesh_sim import MeshSim, NodeSpec, simulate

BASE_TPS = 10.0
SLOTS = 2
TOKENS = (50, 600)
MIX = (("m-a", 0.4), ("m-b", 0.6))
FAILOVER_LOAD = 0.9
RESTART_AFTER_S = 30.0
POLICIES = ("meshlb", "round_robin", "random", "least_conn")


def hetero_specs(n: int = 8) -> list[NodeSpec]:
    """Speeds 1x..8x (cycled for n > 8); m-a on the first 3/4, m-b on the last 3/4."""
    out = []
    for i in range(n):
        models = set()
        if i < n * 3 // 4:
            models.add("m-a")
        if i >= n // 4:
            models.add("m-b")
        out.append(NodeSpec(BASE_TPS * (1 + i % 8), SLOTS, frozenset(models)))
    return out


def capacity(specs: list[NodeSpec]) -> float:
    return sum(s.tokens_per_s * s.slots for s in specs)


def workload(specs: list[NodeSpec], load: float, duration_s: float, seed: int) -> list[SimTask]:
    rate = load * capacity(specs) / (sum(TOKENS) / 2)
    return poisson_workload(random.Random(seed), duration_s=duration_s, rate_per_s=rate,
                            models=MIX, tokens=TOKENS)  # fmt: skip


def waits(sim: MeshSim) -> dict[str, dict[str, float]]:
    """Queue wait of the run that produced each recorded result, per priority."""
    by_prio: dict[str, list[float]] = {}
    for runs in sim.ledger.outcomes.values():
        rec = next(iter(runs.values())).copy.record
        w = (rec.started_at or rec.created_at) - rec.created_at
        by_prio.setdefault(str(rec.priority), []).append(w)
        by_prio.setdefault("all", []).append(w)
    return {p: {"p50": percentile(sorted(v), 0.5), "p99": percentile(sorted(v), 0.99)}
            for p, v in sorted(by_prio.items())}  # fmt: skip


def run_placement(policy: str, load: float, duration_s: float, seed: int) -> dict[str, Any]:
    specs = hetero_specs()
    tasks = workload(specs, load, duration_s, seed)

    async def scenario(sim: MeshSim) -> None:
        sim.submit(tasks)
        await sim.drain(limit_s=20 * duration_s)

    t0 = time.perf_counter()
    sim = simulate(specs, scenario, seed=seed, policy=policy, validate=False)
    wall = time.perf_counter() - t0
    work = sum(t.tokens for t in tasks)
    bound = max(work / capacity(specs), tasks[-1].arrive_at)
    makespan = max(sim.ledger.final_at.values())
    n = len(sim.ledger.accepted)
    return {
        "policy": policy, "load": load, "tasks": n, "wall_s": wall,
        "makespan_s": makespan, "bound_s": bound, "makespan_ratio": makespan / bound,
        "wait_s": waits(sim),
        "forwarded": len(sim.ledger.moved["forward"]) / n,
        "stolen": len(sim.ledger.moved["steal"]) / n,
        "violations": len(sim.check()),
    }  # fmt: skip


def detection_all_s(sim: MeshSim, node_id: str, crashed_at: float) -> float:
    """Crash -> the last live member declares the node dead (before it restarts)."""
    times = [t for t, _, e in sim.gossip_log if isinstance(e, MemberDied)
             and e.node == node_id and crashed_at <= t < crashed_at + RESTART_AFTER_S]  # fmt: skip
    return max(times) - crashed_at if times else float("inf")


def requeue_delays(sim: MeshSim) -> list[tuple[float, float]]:
    """(crash -> re-queue, crash -> dead everywhere) for every task a crash orphaned."""
    out = []
    for crashed_at, node_id, owned in sim.crashes:
        detect = detection_all_s(sim, node_id, crashed_at)
        first: dict[str, float] = {}
        for t, _, task_id, reason in sim.ledger.requeues:
            if task_id in owned and t >= crashed_at and reason in ("taken over", "adopted"):
                first.setdefault(task_id, t - crashed_at)
        finished_first = {t for t in owned if sim.ledger.final_at.get(t, 1e18) < crashed_at}
        out += [(first.get(t, float("inf")), detect) for t in owned - finished_first]
    return out


def run_failover(duration_s: float, seed: int) -> dict[str, Any]:
    specs = hetero_specs()

    async def scenario(sim: MeshSim) -> None:
        sim.submit(workload(specs, FAILOVER_LOAD, duration_s, seed))
        for k in range(int(duration_s // 60)):
            victim = (5 * k + 3) % len(specs)
            sim.at(60.0 * (k + 1), lambda v=victim: sim.crash(v))  # type: ignore[misc]
            sim.at(60.0 * (k + 1) + RESTART_AFTER_S, lambda v=victim: sim.restart(v))  # type: ignore[misc]
        await sim.drain(limit_s=10 * duration_s)

    sim = simulate(specs, scenario, seed=seed)
    violations = sim.check()
    ledger = sim.ledger
    succeeded = sum(1 for runs in ledger.outcomes.values()
                    if next(iter(runs.values())).copy.record.state == "succeeded")  # fmt: skip
    delays = requeue_delays(sim)
    over = [d - det for d, det in delays]
    return {
        "crashes": len(sim.crashes), "accepted": len(ledger.accepted), "succeeded": succeeded,
        "lost": sum("lost" in v for v in violations),
        "recorded_twice": sum("twice" in v for v in violations),
        "duplicate_executions": ledger.duplicate_executions(),
        "duplicates_dropped": ledger.duplicates_dropped, "reruns": ledger.reruns(),
        "orphaned": len(delays),
        "requeue_p50_s": percentile(sorted(d for d, _ in delays), 0.5),
        "requeue_max_s": max((d for d, _ in delays), default=0.0),
        "detection_max_s": max((det for _, det in delays), default=0.0),
        "requeue_minus_detection_max_s": max(over, default=0.0),
        "violations": violations[:5],
    }  # fmt: skip


def run_scale(n: int, duration_s: float, seed: int) -> dict[str, Any]:
    specs = hetero_specs(n)
    tasks = workload(specs, 0.9, duration_s, seed)
    ended: list[float] = []

    async def scenario(sim: MeshSim) -> None:
        sim.submit(tasks)
        await sim.drain(limit_s=duration_s)
        ended.append(sim.now)

    t0 = time.perf_counter()
    sim = simulate(specs, scenario, seed=seed, validate=False)
    return {"n": n, "virtual_s": ended[0], "tasks": len(tasks),
            "wall_s": time.perf_counter() - t0, "violations": len(sim.check())}  # fmt: skip


def run(quick: bool) -> dict[str, Any]:
    duration = 120.0 if quick else 600.0
    placement = [run_placement(p, load, duration, seed=42)
                 for load in (0.5, 0.9, 1.2) for p in POLICIES]  # fmt: skip
    failover = run_failover(180.0 if quick else 600.0, seed=7)
    scale = [run_scale(n, duration, seed=3) for n in ((8, 20) if quick else (8, 50))]
    return {"quick": quick, "placement": placement, "failover": failover, "scale": scale,
            "targets": targets(placement, failover)}  # fmt: skip


def targets(placement: list[dict[str, Any]], failover: dict[str, Any]) -> dict[str, Any]:
    sat = {r["policy"]: r for r in placement if r["load"] == 1.2}
    p99 = {p: r["wait_s"]["all"]["p99"] for p, r in sat.items()}
    mine = max(p99["meshlb"], 1e-9)
    return {
        "makespan_ratio_at_120": sat["meshlb"]["makespan_ratio"],
        "makespan_met": sat["meshlb"]["makespan_ratio"] <= 1.10,
        "p99_vs_round_robin": p99["round_robin"] / mine,
        "p99_vs_least_conn": p99["least_conn"] / mine,
        "p99_met": min(p99["round_robin"], p99["least_conn"]) / mine >= 1.5,
        "failover_met": failover["lost"] == 0 and failover["recorded_twice"] == 0,
        "requeue_met": failover["requeue_minus_detection_max_s"] <= 1.0,
    }  # fmt: skip


def render(data: dict[str, Any]) -> list[Table]:
    a = Table(title="A. placement: same workload, 8 nodes 1x-8x, two models")
    for col in ("load", "policy", "tasks", "makespan / bound", "wait p50/p99 prio 9",
                "prio 5", "prio 2", "all", "fwd", "stolen", "viol."):  # fmt: skip
        a.add_column(col, justify="right")
    for r in data["placement"]:
        w = r["wait_s"]
        cells = [f"{w[p]['p50']:.1f}/{w[p]['p99']:.1f}" if p in w else "-"
                 for p in ("9", "5", "2", "all")]  # fmt: skip
        a.add_row(f"{r['load']:.0%}", r["policy"], str(r["tasks"]),
                  f"{r['makespan_s']:.0f}/{r['bound_s']:.0f} = {r['makespan_ratio']:.3f}",
                  *cells, f"{r['forwarded']:.0%}", f"{r['stolen']:.1%}",
                  str(r["violations"]))  # fmt: skip
    f = data["failover"]
    b = Table(title="B. failover: a crash every 60 s (restart 30 s later), 90 % load")
    for key in ("crashes", "accepted", "succeeded", "lost", "recorded_twice",
                "duplicate_executions", "duplicates_dropped", "reruns", "orphaned", "requeue_p50_s",
                "requeue_max_s", "detection_max_s", "requeue_minus_detection_max_s"):  # fmt: skip
        b.add_row(key, f"{f[key]:.2f}" if isinstance(f[key], float) else str(f[key]))
    c = Table(title="C. scale: 90 % load")
    for col in ("N", "virtual s", "tasks", "wall s", "violations"):
        c.add_column(col, justify="right")
    for s in data["scale"]:
        c.add_row(str(s["n"]), f"{s['virtual_s']:.0f}", str(s["tasks"]), f"{s['wall_s']:.2f}",
                  str(s["violations"]))  # fmt: skip
    t = Table(title="targets")
    for k, v in data["targets"].items():
        t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    return [a, b, c, t]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs for CI smoke")
    parser.add_argument("--out", default=None, help="default: bench/results/mesh_sim.json "
                        "(mesh_sim.quick.json with --quick, so a CI smoke run does not "
                        "overwrite the full figures)")  # fmt: skip
    args = parser.parse_args()
    default = "mesh_sim.quick.json" if args.quick else "mesh_sim.json"
    args.out = args.out or f"bench/results/{default}"
    data = run(args.quick)
    console = Console(width=160)
    for table in render(data):
        console.print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
