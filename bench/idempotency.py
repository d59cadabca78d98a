"""What mesh-wide idempotency costs per submission (real processes, loopback).

Three nodes beside simulated Ollamas; the same client submits tasks to each node in
turn, alternating unkeyed and keyed submissions (new keys, so every keyed one takes
the full path: a hop to the key's arbiter when it is another node, then a lookup of
the alive peers). Then every keyed submission is sent again to another node: each
must come back 200 with the first id. Prints a table (submit latency p50/p99 for
each kind, measured side by side in one run) and writes bench/results/idempotency.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.procs import alive_ids, meshlb_node, sim_ollama, wait_until

IDS = ("p0", "p1", "p2")


def task(i: int, key: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "generate",
        "model": "llama3.2:1b",
        "request": {"prompt": f"bench {i}", "options": {"num_predict": 2}},
    }
    if key is not None:
        body["idempotency_key"] = key
    return body


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(n: int) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        sims = [stack.enter_context(sim_ollama(tokens_per_second=2000)) for _ in IDS]
        first = stack.enter_context(meshlb_node(sims[0].url, node_id=IDS[0]))
        seed = ("--join", f"127.0.0.1:{first.extra['gossip_port']}")
        nodes = [first] + [
            stack.enter_context(meshlb_node(s.url, *seed, node_id=i))
            for s, i in zip(sims[1:], IDS[1:], strict=True)
        ]
        for node in nodes:
            wait_until(lambda n=node: alive_ids(n) == set(IDS), 20, "all alive")
        times: dict[str, list[float]] = {"unkeyed": [], "keyed (new key)": [], "keyed (repeat)": []}
        first_ids: dict[str, str] = {}
        refused = dict.fromkeys(times, 0)
        mismatches = 0
        with httpx.Client(timeout=30) as client:
            for i in range(n):
                for kind, key in (("unkeyed", None), ("keyed (new key)", f"bench-{i}")):
                    node = nodes[i % len(nodes)]
                    t0 = time.perf_counter()
                    r = client.post(f"{node.url}/v1/tasks", json=task(i, key))
                    times[kind].append(time.perf_counter() - t0)
                    while r.status_code == 503:  # not held by two in time: retry, same key
                        refused[kind] += 1
                        r = client.post(f"{node.url}/v1/tasks", json=task(i, key))
                    assert r.status_code in (200, 202), r.text
                    if key is not None:
                        first_ids[key] = r.json()["id"]
            for i, (key, task_id) in enumerate(first_ids.items()):
                node = nodes[(i + 1) % len(nodes)]
                t0 = time.perf_counter()
                r = client.post(f"{node.url}/v1/tasks", json=task(i, key))
                times["keyed (repeat)"].append(time.perf_counter() - t0)
                mismatches += r.status_code != 200 or r.json()["id"] != task_id
    rows = {
        kind: {
            "n": len(v),
            "p50_ms": round(1000 * statistics.median(v), 2),
            "p99_ms": round(1000 * pct(v, 0.99), 2),
            "refused_503": refused[kind],
        }
        for kind, v in times.items()
    }
    base = rows["unkeyed"]["p50_ms"]
    return {
        "rows": rows,
        "keyed_over_unkeyed_p50": round(rows["keyed (new key)"]["p50_ms"] / base, 2),
        "repeats_not_the_same_task": mismatches,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="a smoke run (30 tasks)")
    ap.add_argument("--out", default="bench/results/idempotency.json")
    args = ap.parse_args()
    out = run(30 if args.quick else args.tasks)
    table = Table(title="POST /v1/tasks latency, 3 nodes on loopback (one run, side by side)")
    for col in ("submission", "n", "p50 ms", "p99 ms", "503 (retried)"):
        table.add_column(col)
    for kind, row in out["rows"].items():
        table.add_row(
            kind,
            str(row["n"]),
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            str(row["refused_503"]),
        )
    console = Console()
    console.print(table)
    console.print(
        f"keyed/unkeyed p50: {out['keyed_over_unkeyed_p50']}×; repeated keys that did not "
        f"return the first task: {out['repeats_not_the_same_task']}"
    )
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    if out["repeats_not_the_same_task"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
