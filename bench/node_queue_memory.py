"""Resident memory a real node adds for 10 000 queued async tasks.

A node with one slot sits beside a simulated Ollama with one slow slot, so nearly
every submitted task stays queued. RSS is read (psutil) before and after submitting.
Prints a table and writes bench/results/node_queue_memory.json.

    python bench/node_queue_memory.py            # 10 000 tasks
    python bench/node_queue_memory.py --quick    # 1 000 tasks
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx
import psutil
import trio
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.procs import meshlb_node, sim_ollama

TARGET_MB_PER_10K = 50.0


async def submit_all(url: str, count: int, concurrency: int = 32) -> int:
    accepted = 0
    body = {
        "kind": "generate",
        "model": "llama3.2:1b",
        "request": {"prompt": "a prompt of ordinary size " * 8, "options": {"num_predict": 64}},
    }
    async with httpx.AsyncClient(timeout=30) as client:
        next_index = 0

        async def worker() -> None:
            nonlocal accepted, next_index
            while next_index < count:
                next_index += 1
                r = await client.post(f"{url}/v1/tasks", json=body)
                accepted += r.status_code == 202

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    return accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench/results/node_queue_memory.json")
    args = parser.parse_args()
    count = 1000 if args.quick else 10_000
    with (
        sim_ollama(tokens_per_second=1, parallel=1) as sim,
        meshlb_node(
            sim.url,
            "--max-concurrency",
            "1",
            "--max-queue",
            str(count + 100),
            "--log-level",
            "warning",
            node_id="mem",
        ) as node,
    ):
        proc = psutil.Process(node.popen.pid)
        time.sleep(0.5)
        rss_before = proc.memory_info().rss / 2**20
        t0 = time.perf_counter()
        accepted = trio.run(submit_all, node.url, count)
        elapsed = time.perf_counter() - t0
        time.sleep(0.5)
        rss_after = proc.memory_info().rss / 2**20
        queued = httpx.get(f"{node.url}/v1/queue").json()["queued"]
    added = rss_after - rss_before
    per_10k = added * 10_000 / count
    data = {
        "tasks": count,
        "accepted": accepted,
        "queued_after": queued,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "added_mb": added,
        "added_mb_per_10k": per_10k,
        "target_mb_per_10k": TARGET_MB_PER_10K,
        "submit_per_s": accepted / elapsed,
    }
    table = Table(title="node memory for queued async tasks")
    for key in data:
        table.add_column(key)
    table.add_row(*[f"{v:.1f}" if isinstance(v, float) else str(v) for v in data.values()])
    Console(width=200).print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
