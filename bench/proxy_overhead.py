"""Proxy overhead: the same workload straight to the backend and through a meshlb node.

Every target is measured in one run, scenario by scenario in turn (this machine is
shared and noisy: only ratios and differences within one run mean anything):
  - an instant stand-in Ollama (bench/instant_backend.py, ~70 µs a request) for the
    overhead rows, since sim-ollama's own ~0.8 ms would hide the node's cost;
  - tiny non-streamed /api/chat at c=1 and c=16 (wrk if installed, else aiohttp):
    req/s, added p50/p99, node CPU per request from /proc/<pid>/stat;
  - 50 and 200 streams x 32 chunks started at once (aiohttp): first-chunk p50/p99,
    node CPU per relayed chunk, peak RSS with 200 open streams; 8 steady streams x
    128 chunks for CPU per chunk without a burst;
  - 16 clients posting small /api/embed requests: req/s and node CPU per request;
  - sim-ollama rows (c=1, c=16) for realism.
With two or more cores the node(s) run on core 0, the backend and the load generators
on core 1. `--ab REV` also runs the node of git revision REV (a worktree in /tmp) beside
this checkout's, so before/after ratios come from the same run. `--runs N` takes the
median of N runs. Prints a table and writes bench/results/proxy_overhead*.json.

    python bench/proxy_overhead.py --ab fcbe39f --runs 3   # full A/B (~6 min)
    python bench/proxy_overhead.py --quick                 # smoke run (< 60 s)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _proxy_load import WRK, burst, closed_loop, rss_mib  # noqa: E402

from tests.procs import (  # noqa: E402
    Proc,
    free_gossip_port,
    free_port,
    sim_ollama,
    spawn,
    spawn_retrying,
)

MODEL = "llama3.2:1b"
TINY_CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "hi"}],
    "stream": False,
    "options": {"num_predict": 1},
}
TINY_GEN = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
EMBED = {"model": "nomic-embed-text", "input": "a short sentence to embed"}
TWO_CORES = (os.cpu_count() or 1) >= 2
NODE_CPUS = "0" if TWO_CORES else None
LOAD_CPUS = "1" if TWO_CORES else None


def stream_body(chunks: int) -> dict[str, Any]:
    return {**TINY_CHAT, "stream": True, "options": {"num_predict": chunks}}


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def worktree_of(rev: str) -> Path:
    """A checkout of `rev` in /tmp (made once, reused)."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = Path(f"/tmp/meshlb-ab-{sha}")
    if not (path / "meshlb").is_dir():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), sha],
            check=True,
            capture_output=True,
        )
    return path


@contextlib.contextmanager
def node_of(source: Path, backend_url: str, node_id: str) -> Iterator[Proc]:
    """A node whose code is imported from `source` (-P: not from the working directory)."""
    env = {"PYTHONPATH": str(source)}

    def make_args() -> tuple[list[str], str]:
        port = free_port()
        argv = [sys.executable, "-P", "-m", "meshlb", "node", "--node-id", node_id,
                "--http", f"127.0.0.1:{port}", "--gossip", f"127.0.0.1:{free_gossip_port()}",
                "--ollama", backend_url, "--max-concurrency", "512", "--max-queue", "100000",
                "--log-level", "warning"]  # fmt: skip
        return pinned(argv, NODE_CPUS), f"http://127.0.0.1:{port}"

    with spawn_retrying(make_args, env=env) as proc:
        check = [sys.executable, "-P", "-c", "import meshlb; print(meshlb.__file__)"]
        where = subprocess.run(check, env={**os.environ, **env}, capture_output=True, text=True)
        assert where.stdout.startswith(str(source)), f"{node_id} imports {where.stdout}"
        yield proc


@contextlib.contextmanager
def instant_backend(interval_ms: float) -> Iterator[Proc]:
    port = free_port()
    argv = [sys.executable, str(REPO / "bench" / "instant_backend.py"), "--port", str(port),
            "--chunk-interval-ms", str(interval_ms)]  # fmt: skip
    with spawn(pinned(argv, LOAD_CPUS), f"http://127.0.0.1:{port}", "/api/version") as proc:
        yield proc


def one_run(targets: dict[str, tuple[str, int | None]], quick: bool) -> dict[str, dict[str, float]]:
    """Every scenario against every target in turn: {target: {metric: value}}."""
    dur = 1.0 if quick else 5.0
    out: dict[str, dict[str, float]] = {name: {} for name in targets}
    loops = [("chat_c1", "/api/chat", TINY_CHAT, 1), ("chat_c16", "/api/chat", TINY_CHAT, 16),
             ("embed_c16", "/api/embed", EMBED, 16)]  # fmt: skip
    for key, path, body, conc in loops:
        for name, (url, pid) in targets.items():
            r = closed_loop(url + path, body, conc, dur, pid, LOAD_CPUS)
            m = out[name]
            m[f"{key}_rps"], m[f"{key}_p50_ms"], m[f"{key}_p99_ms"] = r.rps, r.p50_ms, r.p99_ms
            m[f"{key}_errors"] = r.errors
            if pid:
                m[f"{key}_cpu_ms_per_req"] = r.cpu_ms_per_req
    bursts = [("burst50", 50, 32), ("burst200", 200, 32), ("steady8", 8, 32 if quick else 128)]
    for key, count, chunks in bursts:
        for name, (url, pid) in targets.items():
            b = burst(url + "/api/chat", stream_body(chunks), count, pid)
            m = out[name]
            m[f"{key}_first_p50_ms"], m[f"{key}_first_p99_ms"] = b.first_p50_ms, b.first_p99_ms
            m[f"{key}_errors"], m[f"{key}_chunks"] = b.errors, b.chunks
            if pid:
                m[f"{key}_cpu_us_per_chunk"] = b.cpu_us_per_chunk
                m[f"{key}_peak_rss_mib"] = b.peak_rss_mib
    return out


def sim_run(targets: dict[str, tuple[str, int | None]], quick: bool) -> dict[str, dict[str, float]]:
    dur = 1.0 if quick else 4.0
    out: dict[str, dict[str, float]] = {name: {} for name in targets}
    for conc in (1,) if quick else (1, 16):
        for name, (url, pid) in targets.items():
            r = closed_loop(url + "/api/generate", TINY_GEN, conc, dur, pid, LOAD_CPUS)
            out[name][f"sim_c{conc}_rps"], out[name][f"sim_c{conc}_p50_ms"] = r.rps, r.p50_ms
            if pid:
                out[name][f"sim_c{conc}_cpu_ms_per_req"] = r.cpu_ms_per_req
    return out


def merge_median(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    merged: dict[str, dict[str, float]] = {}
    for target in runs[0]:
        keys = runs[0][target]
        merged[target] = {k: statistics.median(r[target][k] for r in runs) for k in keys}
    return merged


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sources = {"node": Path(args.node_src) if args.node_src else REPO}
    if args.ab:
        sources["base"] = worktree_of(args.ab)
    if TWO_CORES:
        os.sched_setaffinity(0, {1})  # this process is a load generator
    runs: list[dict[str, dict[str, float]]] = []
    with contextlib.ExitStack() as stack:
        backend = stack.enter_context(instant_backend(10.0))
        targets: dict[str, tuple[str, int | None]] = {"direct": (backend.url, None)}
        for name, src in sources.items():
            p = stack.enter_context(node_of(src, backend.url, f"bench-{name}"))
            targets[name] = (p.url, p.popen.pid)
        # Idle means before any load: a later run starts with the heap the earlier grew.
        idle = {name: rss_mib(pid) for name, (_, pid) in targets.items() if pid}
        for _ in range(args.runs):
            runs.append(one_run(targets, args.quick))
    result = merge_median(runs)
    for name, mib in idle.items():
        result[name]["rss_idle_mib"] = mib
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(sim_ollama(tokens_per_second=1e6, parallel=512))
        targets = {"direct": (sim.url, None)}
        for name, src in sources.items():
            p = stack.enter_context(node_of(src, sim.url, f"bench-sim-{name}"))
            targets[name] = (p.url, p.popen.pid)
        sim_rows = merge_median([sim_run(targets, args.quick) for _ in range(args.runs)])
    for target, metrics in sim_rows.items():
        result[target].update(metrics)
    return {"targets": result, "runs": runs, "load_generator": WRK or "aiohttp"}


# (label, metric, how: "v" value | "add" minus direct, format, goal sentence)
ROWS = [
    ("tiny chat c=1: req/s", "chat_c1_rps", "v", "{:.0f}", ">= 4x base"),
    ("  added p50 ms", "chat_c1_p50_ms", "add", "{:+.2f}", "<= 1 ms"),
    ("  added p99 ms", "chat_c1_p99_ms", "add", "{:+.2f}", "<= 3 ms"),
    ("  node CPU ms/req", "chat_c1_cpu_ms_per_req", "v", "{:.2f}", "<= 1/4 base (~1 ms)"),
    ("tiny chat c=16: req/s", "chat_c16_rps", "v", "{:.0f}", ">= 4x base"),
    ("  added p50 ms", "chat_c16_p50_ms", "add", "{:+.2f}", ""),
    ("  node CPU ms/req", "chat_c16_cpu_ms_per_req", "v", "{:.2f}", "<= 1/4 base (~1 ms)"),
    ("50 streams: first chunk p50 ms", "burst50_first_p50_ms", "v", "{:.1f}", ""),
    ("  vs direct", "burst50_first_p50_ms", "add", "{:+.1f}", "<= +25 ms"),
    ("  first chunk p99 ms", "burst50_first_p99_ms", "v", "{:.1f}", ""),
    ("  vs direct", "burst50_first_p99_ms", "add", "{:+.1f}", "<= +25 ms"),
    ("  node CPU us/chunk", "burst50_cpu_us_per_chunk", "v", "{:.0f}", "<= 100 us"),
    ("200 streams: first chunk p50 ms", "burst200_first_p50_ms", "v", "{:.1f}", ""),
    ("  vs direct", "burst200_first_p50_ms", "add", "{:+.1f}", "<= +100 ms"),
    ("  first chunk p99 ms", "burst200_first_p99_ms", "v", "{:.1f}", ""),
    ("  vs direct", "burst200_first_p99_ms", "add", "{:+.1f}", "<= +100 ms"),
    ("  node CPU us/chunk", "burst200_cpu_us_per_chunk", "v", "{:.0f}", ""),
    ("8 steady streams: node CPU us/chunk", "steady8_cpu_us_per_chunk", "v", "{:.0f}", "<= 100"),
    ("embed 16 clients: req/s", "embed_c16_rps", "v", "{:.0f}", ""),
    ("  node CPU ms/req", "embed_c16_cpu_ms_per_req", "v", "{:.2f}", "<= 1/4 base (~1 ms)"),
    ("idle RSS MiB", "rss_idle_mib", "v", "{:.0f}", "<= 75"),
    ("RSS with 200 open streams MiB", "burst200_peak_rss_mib", "v", "{:.0f}", "<= 150"),
    ("sim-ollama c=1: req/s", "sim_c1_rps", "v", "{:.0f}", ""),
    ("  added p50 ms", "sim_c1_p50_ms", "add", "{:+.2f}", ""),
    ("  node CPU ms/req", "sim_c1_cpu_ms_per_req", "v", "{:.2f}", ""),
    ("sim-ollama c=16: req/s", "sim_c16_rps", "v", "{:.0f}", ""),
    ("  node CPU ms/req", "sim_c16_cpu_ms_per_req", "v", "{:.2f}", ""),
]


def print_table(data: dict[str, Any]) -> None:
    t: dict[str, dict[str, float]] = data["targets"]
    names = list(t)
    table = Table(title=f"proxy overhead ({data['load_generator']}; medians of {data['n_runs']})")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    if "base" in t:
        table.add_column("node/base", justify="right")
    table.add_column("goal")
    for label, key, how, fmt, goal in ROWS:
        if key not in t.get("node", {}):
            continue
        cells, values = [], {}
        for name in names:
            v = t[name].get(key)
            if v is not None and how == "add":
                v = None if name == "direct" else v - t["direct"][key]
            values[name] = v
            cells.append("" if v is None else fmt.format(v))
        if "base" in t:
            node, base = values.get("node"), values.get("base")
            cells.append(f"{node / base:.2f}" if node and base else "")
        table.add_row(label, *cells, goal)
    Console(width=160).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 60 s)")
    parser.add_argument("--ab", metavar="REV", help="also run the node of git revision REV")
    parser.add_argument("--node-src", help="checkout the 'node' target runs [this one]")
    parser.add_argument("--runs", type=int, default=1, help="median of this many runs")
    parser.add_argument("--out", help="JSON path [bench/results/proxy_overhead*.json]")
    args = parser.parse_args()
    data = measure(args)
    data.update(quick=args.quick, ab=args.ab, n_runs=args.runs)
    print_table(data)
    suffix = "_quick" if args.quick else ("_ab" if args.ab else "")
    out = Path(args.out or REPO / "bench" / "results" / f"proxy_overhead{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
