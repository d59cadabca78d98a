"""Proxy overhead: the same workload straight to sim-ollama and through a meshlb node.

Both paths are measured side by side in one run (this machine is shared and noisy;
only ratios and differences within one run mean anything):
  A. non-streamed tiny generate, closed loop at concurrency 1/16/64: req/s, p50/p99;
  B. non-streamed tiny generate, open loop at an offered 200 req/s: p50/p99;
  C. streamed generate of 64 tokens at 1/16/200 concurrent streams: time to first
     token, inter-token gap, total; the node's CPU seconds per 1000 relayed chunks;
  D. the node's resident memory idle and with 200 open streams.
Prints a table and writes bench/results/proxy_overhead.json.

    python bench/proxy_overhead.py            # full run (~2 min)
    python bench/proxy_overhead.py --quick    # smoke run (~20 s)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil
import trio
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.procs import meshlb_node, sim_ollama

MODEL = "llama3.2:1b"
TINY = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Row:
    scenario: str
    target: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


async def closed_loop(url: str, concurrency: int, duration_s: float) -> Row:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        stop_at = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = await client.post(f"{url}/api/generate", json=TINY)
                if r.status_code != 200:
                    errors += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - started
    return Row(
        "A closed-loop tiny",
        url,
        concurrency,
        len(latencies),
        errors,
        len(latencies) / elapsed,
        pct(latencies, 0.5) * 1e3,
        pct(latencies, 0.99) * 1e3,
    )


async def open_loop(url: str, rate: float, duration_s: float) -> Row:
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=256), timeout=30) as client:

        async def one() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            r = await client.post(f"{url}/api/generate", json=TINY)
            if r.status_code != 200:
                errors += 1
            latencies.append(time.perf_counter() - t0)

        started = trio.current_time()
        count = int(rate * duration_s)
        async with trio.open_nursery() as nursery:
            for i in range(count):
                await trio.sleep_until(started + i / rate)
                nursery.start_soon(one)
        elapsed = trio.current_time() - started
    return Row(
        "B open-loop 200 req/s",
        url,
        int(rate),
        len(latencies),
        errors,
        len(latencies) / elapsed,
        pct(latencies, 0.5) * 1e3,
        pct(latencies, 0.99) * 1e3,
    )


async def streams(
    url: str, count: int, tokens: int, node_pid: int | None, rss_probe: list[float]
) -> Row:
    ttft: list[float] = []
    gaps: list[float] = []
    totals: list[float] = []
    chunks = 0
    errors = 0
    body = {"model": MODEL, "prompt": "stream", "options": {"num_predict": tokens}}
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    proc = psutil.Process(node_pid) if node_pid else None
    cpu0 = sum(proc.cpu_times()[:2]) if proc else 0.0
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one() -> None:
            nonlocal chunks, errors
            t0 = time.perf_counter()
            last = None
            async with client.stream("POST", f"{url}/api/generate", json=body) as r:
                if r.status_code != 200:
                    errors += 1
                async for chunk in r.aiter_raw():
                    now = time.perf_counter()
                    if last is None:
                        ttft.append(now - t0)
                    else:
                        gaps.append(now - last)
                    last = now
                    chunks += chunk.count(b"\n")
            totals.append(time.perf_counter() - t0)

        async def probe_rss() -> None:
            await trio.sleep(tokens / 20 / 2)  # halfway through the streams
            if proc:
                rss_probe.append(proc.memory_info().rss / 2**20)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe_rss)
            for _ in range(count):
                nursery.start_soon(one)
    cpu_s = (sum(proc.cpu_times()[:2]) - cpu0) if proc else 0.0
    extra = {
        "ttft_p50_ms": pct(ttft, 0.5) * 1e3,
        "ttft_p99_ms": pct(ttft, 0.99) * 1e3,
        "gap_p50_ms": pct(gaps, 0.5) * 1e3,
        "gap_p99_ms": pct(gaps, 0.99) * 1e3,
        "total_p50_s": pct(totals, 0.5),
        "chunks": float(chunks),
    }
    if proc:
        extra["node_cpu_s_per_1000_chunks"] = cpu_s / max(1, chunks) * 1000
    return Row("C streamed 64 tokens", url, count, len(totals), errors, extra=extra)


async def run(args: argparse.Namespace) -> dict[str, object]:
    results: list[Row] = []
    dur = 2.0 if args.quick else 6.0
    with (
        sim_ollama(tokens_per_second=1e6, parallel=512) as fast_sim,
        meshlb_node(
            fast_sim.url,
            "--max-concurrency",
            "512",
            "--max-queue",
            "100000",
            "--log-level",
            "warning",
            node_id="bench",
        ) as node,
    ):
        targets = {"direct": fast_sim.url, "node": node.url}
        for conc in (1, 4) if args.quick else (1, 16, 64):
            for name, url in targets.items():
                row = await closed_loop(url, conc, dur)
                row.target = name
                results.append(row)
        for name, url in targets.items():
            row = await open_loop(url, 50 if args.quick else 200, dur)
            row.target = name
            results.append(row)
    memory: dict[str, float] = {}
    tps = 20.0
    with (
        sim_ollama(tokens_per_second=tps, parallel=512) as sim,
        meshlb_node(
            sim.url,
            "--max-concurrency",
            "512",
            "--max-queue",
            "100000",
            "--log-level",
            "warning",
            node_id="bench-stream",
        ) as node,
    ):
        pid = node.popen.pid
        memory["node_rss_idle_mb"] = psutil.Process(pid).memory_info().rss / 2**20
        tokens = 16 if args.quick else 64
        for count in (1, 16) if args.quick else (1, 16, 200):
            for name, url in (("direct", sim.url), ("node", node.url)):
                probe: list[float] = []
                row = await streams(url, count, tokens, pid if name == "node" else None, probe)
                row.target = name
                results.append(row)
                if probe and name == "node":
                    memory[f"node_rss_{count}_streams_mb"] = probe[0]
    return {"rows": [asdict(r) for r in results], "memory": memory}


def print_table(data: dict[str, object]) -> None:
    console = Console(width=220)
    table = Table(title="proxy overhead: direct to sim-ollama vs through one meshlb node")
    for col in (
        "scenario",
        "target",
        "conc",
        "req",
        "err",
        "req/s",
        "p50 ms",
        "p99 ms",
        "ttft p50",
        "gap p50",
        "gap p99",
        "node CPU s/1000 chunks",
    ):
        table.add_column(col)
    for r in data["rows"]:  # type: ignore[attr-defined]
        e = r["extra"]
        table.add_row(
            r["scenario"],
            r["target"],
            str(r["concurrency"]),
            str(r["requests"]),
            str(r["errors"]),
            f"{r['rps']:.0f}" if r["rps"] else "",
            f"{r['p50_ms']:.2f}" if r["p50_ms"] else "",
            f"{r['p99_ms']:.2f}" if r["p99_ms"] else "",
            f"{e.get('ttft_p50_ms', 0):.1f}" if e else "",
            f"{e.get('gap_p50_ms', 0):.1f}" if e else "",
            f"{e.get('gap_p99_ms', 0):.1f}" if e else "",
            f"{e['node_cpu_s_per_1000_chunks']:.3f}" if "node_cpu_s_per_1000_chunks" in e else "",
        )
    console.print(table)
    console.print("overhead (node - direct):")
    rows = data["rows"]  # type: ignore[assignment]
    for r in rows:
        if r["target"] != "node" or not r["p50_ms"]:
            continue
        d = next(
            x
            for x in rows
            if x["target"] == "direct"
            and x["scenario"] == r["scenario"]
            and x["concurrency"] == r["concurrency"]
        )
        console.print(
            f"  {r['scenario']} c={r['concurrency']}: "
            f"p50 +{r['p50_ms'] - d['p50_ms']:.2f} ms, "
            f"p99 +{r['p99_ms'] - d['p99_ms']:.2f} ms, "
            f"req/s {r['rps'] / d['rps']:.2f}x of direct"
        )
    console.print(f"memory: {data['memory']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--out", default="bench/results/proxy_overhead.json")
    args = parser.parse_args()
    data = trio.run(run, args)
    data["quick"] = args.quick
    print_table(data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
