"""Residency benchmark: placement that knows where models are loaded (issue 11).

A discrete-event model of a heterogeneous fleet in virtual time (`_residency_fleet`:
each host is the simulator's memory core, meshlb's policy is the shipped placement
code fed by gossip as a node encodes and decodes it).

Fleet: 6 hosts with 8, 8, 12, 16, 24, 24 GB (faster the bigger), 4 slots per model,
loads at 1 GB/s + 0.5 s, keep_alive 5 min, at most 3 models each. Workload A: 3 000
requests over 6 models of 1.5-14 GB with Zipf popularity (s = 1.1), in bursts (3x the
mean rate for 20 s of every 60 s), each entering at a random node. Workload B: 200
conversations x 4 turns (each client talks to one node; 5-20 s between turns; each
conversation draws its texts and pauses from its own seeded rng, so every policy runs
the very same conversations), Zipf over the same models; meshlb with and without
conversation affinity (`--background N` adds N single requests over the same span,
reported, not part of the goals). At that
pace each model runs on about one host, so every later turn returns to its host with
or without affinity; B is run again with the same conversations starting 4x as fast
(over 75 s instead of 300 s), which spreads the hot model over 3-4 hosts, where a turn's
host is a real choice. Per-turn facts explain the prompt tokens: the share of later
turns on the previous turn's host, the share whose slot still held the previous prompt
(Ollama's runner has 4 slots per model and gives a request the free slot sharing the
longest prefix, so each new prompt overwrites one conversation's cache).

Policies: meshlb; round-robin; least-connections (fewest requests in hand, live);
residency-first (a host that has the model loaded, per /api/ps as gossiped once a
second, least loaded first; else the least loaded host: what ollama-herd does). The
baselines are given live connection counts, as a central proxy has them. B adds an
oracle, `static_plan_oracle`, not a policy anyone could deploy: every model on fixed
hosts chosen knowing the workload's mix (all fit at once, nothing is evicted), each
conversation pinned to the plan host with the fewest open conversations of its model.
It spreads conversations over more prompt caches than placement by load ever would,
and bounds what that can save.

    python bench/residency.py                  # full run, seed 11 (~1 min)
    python bench/residency.py --seeds 11,12,13 # one table per seed, goals for each
    python bench/residency.py --quick          # smaller run + a real-process smoke run
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
from bench._residency_fleet import CHARS_PER_TOKEN, MODELS, Conversation, Fleet, Req, plan_fits
from meshlb.sched.stats import percentile

ZIPF_S = 1.1
POLICIES = ("meshlb", "round_robin", "least_conn", "residency_first")


def zipf_weights(n: int) -> list[float]:
    return [1.0 / (k + 1) ** ZIPF_S for k in range(n)]


def burst_arrivals(rng: random.Random, n: int, mean_rate: float) -> list[float]:
    """Arrival times: 3x the base rate for 20 s of every 60 s (mean `mean_rate`)."""
    base = mean_rate / (20 / 60 * 3 + 40 / 60 * 1)
    t, out = 0.0, []
    while len(out) < n:
        rate = base * (3.0 if t % 60 < 20 else 1.0)
        t += rng.expovariate(rate)
        out.append(t)
    return out


def single_requests(rng: random.Random, n: int, rate: float, first_id: int = 0) -> list[Req]:
    weights = zipf_weights(len(MODELS))
    out = []
    for i, at in enumerate(burst_arrivals(rng, n, rate)):
        model = rng.choices(MODELS, weights)[0][0]
        tokens = rng.randint(100, 800)
        rid = first_id + i
        prompt = f"{rid:09d}|" + "p" * (tokens * CHARS_PER_TOKEN - 10)
        out.append(Req(rid, at, model, prompt, rng.randint(32, 256), rng.randrange(6)))
    return out


def workload_a(seed: int, n: int) -> list[Req]:
    return single_requests(random.Random(seed), n, rate=3.0)


def workload_b(
    seed: int, convs: int, background: int, faster: float = 1.0
) -> tuple[list[Req], list[tuple[float, Conversation]]]:
    """`faster`: conversations start this many times as fast (same ones, same turns)."""
    rng = random.Random(seed + 1)
    weights = zipf_weights(len(MODELS))
    span = convs * 1.5 / faster
    starts = []
    for i in range(convs):
        model = rng.choices(MODELS, weights)[0][0]
        at, entry = rng.uniform(0, span), rng.randrange(6)
        starts.append((at, Conversation(i, model, entry, 4, random.Random(seed * 1_000_003 + i))))
    bg = single_requests(rng, background, rate=background / (span + 60), first_id=5_000_000)
    return (bg if background else []), starts


def summarize(fleet: Fleet) -> dict[str, Any]:
    done = fleet.done
    lat = sorted(r.done - r.at for r in done)
    conv = [r for r in done if r.conv >= 0]
    loads = sum(h.mem.loads for h in fleet.hosts)
    first = min(r.at for r in done)
    return {
        "requests": len(done),
        "loads": loads,
        "loads_per_1000": round(loads / len(done) * 1000, 1),
        "gpu_s_loading": round(sum(h.load_s for h in fleet.hosts), 1),
        "p50_s": round(percentile(lat, 0.5), 2),
        "p99_s": round(percentile(lat, 0.99), 2),
        "makespan_s": round(max(r.done for r in done) - first, 1),
        "prompt_tokens": sum(r.evaluated for r in done),
        "conv_prompt_tokens": sum(r.evaluated for r in conv),
        "conv_p99_s": round(percentile(sorted(r.done - r.at for r in conv) or [0.0], 0.99), 2),
        "loads_by_host": [h.mem.loads for h in fleet.hosts],
        "forwarded": sum(1 for _, _, how in fleet.placements if how == "sent"),
        **turn_facts(conv),
    }


def turn_facts(conv: list[Req]) -> dict[str, Any]:
    """Why a conversation's prompt tokens are what they are: of the later turns, the
    share that ran on the previous turn's host, and the share whose slot held the
    previous prompt (a hit: over half the prompt cached); how many hosts ran the most
    used model's turns."""
    prev: dict[int, int] = {}
    later = same = hits = 0
    by_model: dict[str, set[int]] = {}
    for r in sorted(conv, key=lambda r: (r.conv, -r.rid)):  # rid counts turns down
        by_model.setdefault(r.model, set()).add(r.host)
        if r.conv in prev:
            later += 1
            same += prev[r.conv] == r.host
            hits += r.cached * 2 > len(r.prompt)
        prev[r.conv] = r.host
    hot = max(by_model, key=lambda m: sum(1 for r in conv if r.model == m), default="")
    return {
        "later_same_host_pct": round(100 * same / later, 1) if later else 0.0,
        "slot_hit_pct": round(100 * hits / later, 1) if later else 0.0,
        "hot_model_hosts": len(by_model.get(hot, ())),
    }


def run_seed(seed: int, n: int, convs: int, background: int) -> dict[str, Any]:
    a: dict[str, Any] = {}
    for policy in POLICIES:
        fleet = Fleet(policy, seed)
        fleet.run(workload_a(seed, n), [])
        a[policy] = summarize(fleet)
    b = {key: multi_turn(seed, convs, background, faster) for key, faster in MULTI_TURN}
    return {"seed": seed, "single": a, **b, "goals": goals(a, b)}


# B at its own pace (each model on about one host: affinity is moot), and the same
# conversations starting SPREAD_FACTOR times as fast, which spreads the hot model over
# several hosts (where a turn goes is then a real choice).
SPREAD_FACTOR = 4.0
MULTI_TURN = (("multi_turn", 1.0), ("multi_turn_spread", SPREAD_FACTOR))


def multi_turn(seed: int, convs: int, background: int, faster: float) -> dict[str, Any]:
    assert plan_fits(), "STATIC_PLAN must fit every host at once"
    b: dict[str, Any] = {}
    for name, policy, aff in (
        ("meshlb", "meshlb", True),
        ("meshlb_no_affinity", "meshlb", False),
        ("least_conn", "least_conn", True),
        ("residency_first", "residency_first", True),
        ("static_plan_oracle", "static_plan", True),
    ):
        fleet = Fleet(policy, seed, affinity=aff)
        reqs, starts = workload_b(seed, convs, background, faster)
        fleet.run(reqs, starts)
        b[name] = summarize(fleet)
    return b


def goals(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    m, lc, rf = a["meshlb"], a["least_conn"], a["residency_first"]
    mb, na = b["multi_turn"]["meshlb"], b["multi_turn"]["meshlb_no_affinity"]
    ms, ns = b["multi_turn_spread"]["meshlb"], b["multi_turn_spread"]["meshlb_no_affinity"]

    def ratio(x: float, y: float) -> float:
        return round(x / y, 2) if y else float("inf")

    g: dict[str, Any] = {
        "loads_vs_least_conn": ratio(lc["loads"], m["loads"]),
        "loads_vs_residency_first": ratio(rf["loads"], m["loads"]),
        "p99_vs_least_conn": ratio(lc["p99_s"], m["p99_s"]),
        "p99_vs_residency_first": ratio(rf["p99_s"], m["p99_s"]),
        "conv_prompt_tokens_saved": round(
            1 - mb["conv_prompt_tokens"] / na["conv_prompt_tokens"], 3
        ),
        "conv_p99_vs_no_affinity": ratio(mb["conv_p99_s"], na["conv_p99_s"]),
        "spread_conv_prompt_tokens_saved": round(
            1 - ms["conv_prompt_tokens"] / ns["conv_prompt_tokens"], 3
        ),
        "spread_conv_p99_vs_no_affinity": ratio(ms["conv_p99_s"], ns["conv_p99_s"]),
        # not a goal: the bound an oracle that spreads conversations reaches (see above)
        "oracle_conv_prompt_tokens_saved": round(
            1
            - b["multi_turn"]["static_plan_oracle"]["conv_prompt_tokens"]
            / na["conv_prompt_tokens"],
            3,
        ),
        "oracle_conv_p99_vs_no_affinity": ratio(
            b["multi_turn"]["static_plan_oracle"]["conv_p99_s"], na["conv_p99_s"]
        ),
    }
    g["met"] = {
        "loads >= 5x fewer than least-connections": g["loads_vs_least_conn"] >= 5,
        "loads >= 1.5x fewer than residency-first": g["loads_vs_residency_first"] >= 1.5,
        "p99 >= 2x better than least-connections": g["p99_vs_least_conn"] >= 2,
        "p99 no worse than residency-first": g["p99_vs_residency_first"] >= 1.0,
        "multi-turn prompt tokens >= 40% fewer than without affinity": (
            g["conv_prompt_tokens_saved"] >= 0.4
        ),
        "multi-turn p99 within 10% of without affinity": g["conv_p99_vs_no_affinity"] <= 1.1,
        f"spread ({SPREAD_FACTOR:g}x as fast): prompt tokens >= 40% fewer": (
            g["spread_conv_prompt_tokens_saved"] >= 0.4
        ),
        f"spread ({SPREAD_FACTOR:g}x as fast): p99 within 10%": (
            g["spread_conv_p99_vs_no_affinity"] <= 1.1
        ),
    }
    return g


def show(console: Console, run: dict[str, Any], n: int, convs: int) -> None:
    cols = ("loads_per_1000", "gpu_s_loading", "p50_s", "p99_s", "makespan_s", "prompt_tokens")
    conv_cols = ("conv_p99_s", "later_same_host_pct", "slot_hit_pct", "hot_model_hosts")
    b = f"seed {run['seed']} B: {convs} conversations x 4 turns"
    for key, title in (
        ("single", f"seed {run['seed']} A: {n} requests, Zipf 1.1, bursts"),
        ("multi_turn", b),
        ("multi_turn_spread", f"{b}, starting {SPREAD_FACTOR:g}x as fast"),
    ):
        t = Table(title=title)
        t.add_column("policy")
        extra_cols = ("loads", *conv_cols) if key != "single" else ("loads",)
        for c in (*cols, *extra_cols):
            t.add_column(c, justify="right")
        for policy, row in run[key].items():
            t.add_row(policy, *(str(row[c]) for c in (*cols, *extra_cols)))
        console.print(t)
    for goal, ok in run["goals"]["met"].items():
        console.print(f"{'MET   ' if ok else 'MISSED'}  {goal}")
    console.print({k: v for k, v in run["goals"].items() if k != "met"})


def smoke() -> dict[str, Any]:
    """Real processes: 3 nodes, 3 sims holding one of two 2 GB models at a time, 40
    requests alternating models round the nodes; cold loads counted from load_duration."""
    import httpx

    from tests.procs import alive_ids, small_memory_mesh, wait_until

    with small_memory_mesh("s") as (_sims, nodes):
        wait_until(lambda: all(len(alive_ids(x)) == 3 for x in nodes), 20, "3 nodes joined")
        cold = 0
        t0 = time.monotonic()
        for i in range(40):
            body = {
                "model": ("alpha", "beta")[i % 2],
                "prompt": "hi",
                "stream": False,
                "options": {"num_predict": 8},
            }
            answer = httpx.post(f"{nodes[i % 3].url}/api/generate", json=body, timeout=30).json()
            cold += answer.get("load_duration", 0) > 100_000_000
        return {"requests": 40, "cold_loads": cold, "wall_s": round(time.monotonic() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", default="11", help="comma-separated seeds")
    ap.add_argument("--background", type=int, default=0)
    ap.add_argument("--no-smoke", action="store_true", help="--quick without the real processes")
    args = ap.parse_args()
    n, convs = (600, 40) if args.quick else (3000, 200)
    console = Console(width=200)
    started = time.monotonic()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [run_seed(seed, n, convs, args.background) for seed in seeds]
    for run in runs:
        show(console, run, n, convs)
    results: dict[str, Any] = {"requests": n, "conversations": convs, "runs": runs}
    results["background"] = args.background
    if args.quick and not args.no_smoke:
        results["smoke"] = smoke()
        console.print({"smoke": results["smoke"]})
    results["wall_s"] = round(time.monotonic() - started, 1)
    out = Path(__file__).parent / "results" / f"residency{'.quick' if args.quick else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out} ({results['wall_s']} s)")


if __name__ == "__main__":
    main()
