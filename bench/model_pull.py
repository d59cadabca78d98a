"""How long a mesh pull takes: a 2 GB model to 3 hosts versus to one (real processes).

Three `meshlb node`s beside simulated Ollamas that download at `--pull-mbps 500`
(llama3.2:latest, 2.0 GB in the simulator's library: 4.0 s of transfer per host).
Each run times, wall clock around the `meshlb pull` command (process start, the
per-host progress display, the wait for gossip to show the model): the pull to one
host (`--hosts 1`) and to all three (`--hosts all`), then `meshlb rm` between runs;
plus one host's own Ollama pulling directly, with no mesh, for reference. The goal
(issue 12): the 3-host pull within 10 % of the 1-host pull, because hosts pull in
parallel. Prints a table and writes bench/results/model_pull.json
(model_pull_quick.json with --quick: one run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.procs import Proc, alive_ids, meshlb_argv, meshlb_node, sim_ollama, wait_until

IDS = ("b0", "b1", "b2")
MODEL = "llama3.2:latest"
SIZE_GB = 2.0
GOAL = 1.10


def timed(*args: str) -> float:
    started = time.monotonic()
    done = subprocess.run(meshlb_argv(*args), capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"meshlb {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return took


def direct_pull(sim: Proc) -> float:
    """One Ollama pulling by itself (no mesh), then the model removed again."""
    started = time.monotonic()
    r = httpx.post(f"{sim.url}/api/pull", json={"model": MODEL, "stream": False}, timeout=300)
    took = time.monotonic() - started
    r.raise_for_status()
    httpx.request("DELETE", f"{sim.url}/api/delete", json={"model": MODEL}, timeout=30)
    return took


def on_hosts(sims: list[Proc]) -> int:
    return sum(
        MODEL in {m["name"] for m in httpx.get(f"{s.url}/api/tags", timeout=5).json()["models"]}
        for s in sims
    )


def run(runs: int, mbps: float) -> dict[str, Any]:
    times: dict[str, list[float]] = {"direct": [], "one": [], "all": []}
    with contextlib.ExitStack() as stack:
        sims = [
            stack.enter_context(sim_ollama("--pull-mbps", str(mbps), models="llama3.2:1b"))
            for _ in IDS
        ]
        first = stack.enter_context(meshlb_node(sims[0].url, node_id=IDS[0]))
        seed = ["--join", f"127.0.0.1:{first.extra['gossip_port']}"]
        nodes = [first] + [
            stack.enter_context(meshlb_node(s.url, *seed, node_id=i))
            for s, i in zip(sims[1:], IDS[1:], strict=True)
        ]
        wait_until(lambda: all(alive_ids(n) == set(IDS) for n in nodes), 20, "mesh formed")
        url = nodes[0].url
        for i in range(runs):
            times["direct"].append(direct_pull(sims[i % 3]))
            order = ("one", "all") if i % 2 == 0 else ("all", "one")
            for kind in order:
                hosts = "1" if kind == "one" else "all"
                times[kind].append(timed("pull", MODEL, "--hosts", hosts, "--node", url))
                expected = 1 if kind == "one" else 3
                if on_hosts(sims) != expected:
                    raise RuntimeError(f"--hosts {hosts}: model on {on_hosts(sims)} hosts")
                timed("rm", MODEL, "--node", url)
    p50 = {k: statistics.median(v) for k, v in times.items()}
    ratio = p50["all"] / p50["one"]
    return {
        "model": MODEL,
        "size_gb": SIZE_GB,
        "pull_mbps": mbps,
        "transfer_s_per_host": SIZE_GB * 1000 / mbps,
        "runs": runs,
        "seconds": times,
        "median_s": p50,
        "all_over_one": ratio,
        "all_over_direct": p50["all"] / p50["direct"],
        "goal": f"3-host pull within {GOAL - 1:.0%} of the 1-host pull",
        "goal_met": ratio <= GOAL,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one run instead of three")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pull-mbps", type=float, default=500.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = run(1 if args.quick else args.runs, args.pull_mbps)
    out = Path(args.out or f"bench/results/model_pull{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"meshlb pull {MODEL} ({SIZE_GB} GB) at {args.pull_mbps:g} MB/s")
    for col in ("pull", "median s", "runs (s)"):
        table.add_column(col, justify="right" if col != "pull" else "left")
    labels = {
        "direct": "one Ollama, no mesh",
        "one": "meshlb pull --hosts 1",
        "all": "meshlb pull (3 hosts)",
    }
    for kind, label in labels.items():
        runs = ", ".join(f"{t:.2f}" for t in result["seconds"][kind])
        table.add_row(label, f"{result['median_s'][kind]:.2f}", runs)
    console = Console()
    console.print(table)
    verdict = "met" if result["goal_met"] else "MISSED"
    console.print(
        f"3 hosts / 1 host = {result['all_over_one']:.3f} (goal ≤ {GOAL:.2f}: {verdict}); "
        f"3 hosts / direct = {result['all_over_direct']:.3f}; wrote {out}"
    )


if __name__ == "__main__":
    main()
