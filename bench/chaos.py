"""Chaos run (issue 15): a keyed mesh in network namespaces under packet loss, a node
SIGKILLed every K s and restarted R s later, thousands of keyed tasks from a careful
client and hundreds of streamed chats; then every task read from every node.

The harness is `tests/chaos/harness.py` (the CI test `tests/chaos/test_chaos.py` runs a
2-minute version of it). Prints a table (accepted, succeeded, lost, duplicated,
inconsistent, answered 202 with a single holder, streams ok/cut, dead-detection and
take-over times per kill) and writes JSON to bench/results/.

    sudo python bench/chaos.py                  # 5 nodes, 10 min, kill every 30 s, 10 tasks/s
    sudo python bench/chaos.py --data-dir       # the same with a durable journal per node
    sudo python bench/chaos.py --quick          # 3 nodes, ~1 min: CI's smoke run

Needs root (network namespaces, nftables/netem); elsewhere it says so and exits 0.
Exit code 0 also when promises were broken (it is a measurement; `--strict` exits 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Run as a script: the repo root on sys.path, so the chaos harness of the tests is reused.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.chaos.harness import ChaosConfig, problems, run_chaos


def config(args: argparse.Namespace) -> ChaosConfig:
    if args.quick:
        return ChaosConfig(
            nodes=3,
            duration_s=40.0,
            kill_every_s=15.0,
            restart_after_s=8.0,
            task_rate=2.0,
            stream_every_s=3.0,
            loss_pct=args.loss,
            data_dir=args.data_dir,
            drain_s=30.0,
            census_every_s=15.0,
            seed=args.seed,
            log_dir=args.keep_logs,
        )
    return ChaosConfig(
        nodes=args.nodes,
        duration_s=args.minutes * 60.0,
        kill_every_s=args.kill_every,
        restart_after_s=args.restart_after,
        task_rate=args.rate,
        stream_every_s=args.stream_every,
        loss_pct=args.loss,
        data_dir=args.data_dir,
        drain_s=args.drain_s,
        census_every_s=20.0,
        seed=args.seed,
        log_dir=args.keep_logs,
        extra_node_flags=tuple(args.node_flag or ()),
    )


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def report(result: dict[str, Any], wall_s: float) -> None:
    c = result["config"]
    console = Console(width=150)
    console.print(
        f"[bold]chaos[/bold]: {c['nodes']} nodes, {c['duration_s']:g} s, SIGKILL every "
        f"{c['kill_every_s']:g} s (restart after {c['restart_after_s']:g} s), "
        f"{c['task_rate']:g} tasks/s, a stream every {c['stream_every_s']:g} s, "
        f"--data-dir {'on' if c['data_dir'] else 'off'}, --cluster-key on"
    )
    console.print(f"packet loss: {result['loss_method']}")
    t = Table(title="tasks and streams", show_header=False)
    streams = result["streams"]
    ok = streams.get("complete", 0) + streams.get("error_object", 0)
    rows = [
        ("keys submitted", result["keys_submitted"]),
        (
            "accepted (202 / 200 on a retry)",
            f"{result['accepted']} ({result['accepted_202']} / {result['accepted_200']})",
        ),
        (
            "gave up (never accepted) / refused with a 4xx",
            f"{result['gave_up']} / {result['rejected_4xx']}",
        ),
        (
            "retried keys / cut submissions / 503 answers",
            f"{result['retried_keys']} / {result['cut_submissions']} / {result['refused_503']}",
        ),
        ("succeeded", result["succeeded"]),
        ("failed (final, not succeeded)", len(result["failed"])),
        ("lost", len(result["lost"])),
        ("duplicated (a key with 2+ task ids)", len(result["duplicated"])),
        ("inconsistent (state/node/result differ)", len(result["inconsistent"])),
        ("local copy not final on a live node", len(result["local_not_final"])),
        ("repeat with the same key -> another id", len(result["repeat_mismatch"])),
        (
            "answered 202 with a single holder" + (" (+ journal)" if c["data_dir"] else ""),
            len(result["single_holder_202"]),
        ),
        (
            "logged: accepted unheld / refused unreplicated",
            f"{result['accepted_unheld_logged']} / {result['refused_unreplicated_logged']}",
        ),
        (
            "streams ok (complete + error object) / cut",
            f"{ok} ({streams.get('complete', 0)} + {streams.get('error_object', 0)}) / "
            f"{streams.get('cut', 0)}",
        ),
        (
            "streams refused / cut by their entry node's kill",
            f"{streams.get('refused', 0)} / {streams.get('cut_entry_killed', 0)}",
        ),
        ("node crashes (unexpected exit codes)", len(result["crashes"])),
        ("tracebacks / unhandled errors in logs", result["bad_log_lines"]),
        ("'client disconnected' log lines", result["client_disconnect_logs"]),
        ("drain after the chaos", f"{result['drain_s']} s"),
        ("client clock's longest stall", f"{result['client_loop_max_stall_s']} s"),
        ("wall", f"{wall_s:.0f} s"),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    kt = Table(title="kills (seconds after the SIGKILL, first survivor to log it)")
    cols = ("#", "node", "suspected", "dead", "peer gone", "1st task taken over", "restarted")
    for col in cols:
        kt.add_column(col, justify="right")
    for i, kill in enumerate(result["kills"], 1):
        restart = None if kill["restarted_at"] is None else kill["restarted_at"] - kill["at"]
        kt.add_row(
            str(i),
            kill["node"],
            fmt(kill["suspected_s"]),
            fmt(kill["detected_s"]),
            fmt(kill["peer_gone_s"]),
            fmt(kill["taken_over_s"]),
            fmt(restart),
        )
    console.print(kt)
    d, o = result["detect_s"], result["takeover_s"]
    console.print(
        f"dead detection p50 {fmt(d['p50'])} s, max {fmt(d['max'])} s; "
        f"take-over p50 {fmt(o['p50'])} s, max {fmt(o['max'])} s"
    )
    found = problems(result)
    console.print("[bold]promises kept[/bold]" if not found else "[bold red]broken:[/bold red]")
    for p in found:
        console.print(f"  - {p[:1200]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 nodes, ~1 minute (CI's smoke run)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--kill-every", type=float, default=30.0, help="seconds between SIGKILLs")
    ap.add_argument("--restart-after", type=float, default=10.0, help="seconds down")
    ap.add_argument("--rate", type=float, default=10.0, help="task submissions per second")
    ap.add_argument("--stream-every", type=float, default=2.0, help="seconds between streams")
    ap.add_argument("--loss", type=float, default=5.0, help="packet loss per link, percent")
    ap.add_argument("--data-dir", action="store_true", help="each node with --data-dir")
    ap.add_argument("--drain-s", type=float, default=120.0, help="bound on the final wait")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--node-flag", action="append", help="extra flag for every node (repeat)")
    ap.add_argument("--keep-logs", metavar="DIR", help="copy every node life's log here")
    ap.add_argument("--out", help="JSON path [bench/results/chaos.json or chaos_quick.json]")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a promise was broken")
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("bench/chaos.py skipped: needs root and `ip` (network namespaces)")
        return
    cfg = config(args)
    started = time.monotonic()
    result = run_chaos(cfg)
    wall = time.monotonic() - started
    result["wall_s"] = round(wall, 1)
    report(result, wall)
    name = "chaos_quick.json" if args.quick else "chaos.json"
    path = Path(args.out or f"bench/results/{name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {path}")
    if args.strict and problems(result):
        sys.exit(1)


if __name__ == "__main__":
    main()
