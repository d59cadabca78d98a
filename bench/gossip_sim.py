"""Gossip (SWIM + Lifeguard) on the deterministic simulator, against the issue's targets.

For N = 10, 100, 1000 (memberlist LAN defaults, 1 s period):
  A. crash -> first suspicion, and -> dead at every member (p50/p99 over many crashes);
  B. dissemination of a meta update to 100 % of members at 0 / 10 / 50 % loss;
  C. packets and bytes per member per second in steady state, largest packet;
  D. false deaths in 1 h virtual at 10 % loss;
  E. 5 % of members stalling 2-10 s, false deaths with Lifeguard on and off;
  F. wall time of 1000 nodes x 10 virtual minutes; one node's state at N = 1000;
  G. real UDP: 16 processes on loopback converge.
Prints a table and writes bench/results/gossip_sim.json (--quick: gossip_sim_quick.json;
--table-only reprints the last full run).

    python bench/gossip_sim.py            # full run (several minutes)
    python bench/gossip_sim.py --quick    # smoke run (~30 s)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _gossip_procs import converge_processes

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.events import MemberDied, MemberSuspected
from meshlb.gossip.membership import Membership
from meshlb.gossip.messages import ALIVE, MemberState
from meshlb.gossip.messages import Suspect as Suspect_
from meshlb.testing.gossip_sim import GossipSim
from meshlb.testing.memnet import LinkModel

SERF_MODEL_S = {10: 1.6, 100: 2.0, 1000: 2.2}
DETECT_TARGET_S = {10: 6.0, 100: 10.0, 1000: 14.0}
META = b"h=10.0.0.1:11435;m=llama3.2:1b,qwen2.5:7b;q=0;r=0;c=4;tps=42.0" * 2


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def crash_detection(n: int, crashes: int, seed: int) -> dict[str, Any]:
    """Crash one random member at a time; restart it once everybody saw it dead."""
    sim = GossipSim(n, seed=seed, meta_for=lambda i: META)
    rng = random.Random(seed)
    sim.run_until(5.0)
    first_susp: list[float] = []
    all_dead: list[float] = []
    member_dead: list[float] = []
    for _ in range(crashes):
        sim.run_for(rng.random() * 2)
        victim = rng.randrange(n)
        node = sim.nodes[victim].node_id
        mark = len(sim.log)
        t0 = sim.now
        sim.crash(victim)
        while not sim.all_see(victim, "dead") and sim.now - t0 < 120:
            sim.run_for(0.25)
        new = sim.log[mark:]
        sus = [t for t, _, e in new if isinstance(e, MemberSuspected) and e.node == node]
        dead = {i: t for t, i, e in reversed(new) if isinstance(e, MemberDied) and e.node == node}
        first_susp.append(min(sus) - t0 if sus else float("nan"))
        all_dead.append(max(dead.values()) - t0 if len(dead) == n - 1 else float("inf"))
        member_dead += [t - t0 for t in dead.values()]
        sim.restart(victim)
        sim.run_for(10.0)
    return {
        "crashes": crashes,
        "first_suspicion_p50_s": pct(first_susp, 0.5),
        "first_suspicion_p99_s": pct(first_susp, 0.99),
        "dead_at_all_p50_s": pct(all_dead, 0.5),
        "dead_at_all_p99_s": pct(all_dead, 0.99),
        "dead_per_member_p50_s": pct(member_dead, 0.5),
        "max_packet_bytes": sim.max_packet_bytes,
    }


def dissemination(n: int, loss: float, trials: int, seed: int) -> dict[str, Any]:
    """Time until every other member's view holds the new meta of one member.

    Polled from the views every 50 ms (not from events: a member that had the source
    suspect or dead learns the new meta through a refutation or a rejoin).
    """
    sim = GossipSim(n, seed=seed, link=LinkModel(loss=loss), meta_for=lambda i: META,
                    record_events=False)  # fmt: skip
    rng = random.Random(seed)
    sim.run_until(3.0)
    times: list[float] = []
    for k in range(trials):
        sim.run_for(rng.random())
        src = rng.randrange(n)
        node = sim.nodes[src].node_id
        new_meta = META[:-4] + k.to_bytes(4, "big")
        t0 = sim.now
        sim.update_meta(src, new_meta)
        waiting = {i for i in range(n) if i != src}
        while waiting and sim.now - t0 < 300:
            sim.run_for(0.05)
            for i in list(waiting):
                core = sim.nodes[i].core
                view = core.member(node) if core is not None else None
                if view is not None and view.meta == new_meta:
                    waiting.discard(i)
        times.append(sim.now - t0 if not waiting else float("inf"))
        sim.run_for(5.0)
    return {"loss": loss, "p50_s": pct(times, 0.5), "p99_s": pct(times, 0.99), "trials": trials,
            "max_packet_bytes": sim.max_packet_bytes}  # fmt: skip


def traffic(n: int, seconds: float, seed: int) -> dict[str, Any]:
    sim = GossipSim(n, seed=seed, meta_for=lambda i: META, record_events=False)
    sim.run_until(10.0)
    p0, b0 = sim.packets_out(), sim.bytes_out()
    sim.run_for(seconds)
    return {
        "packets_per_member_s": (sim.packets_out() - p0) / n / seconds,
        "bytes_per_member_s": (sim.bytes_out() - b0) / n / seconds,
        "max_packet_bytes": sim.max_packet_bytes,
    }


def false_deaths(n: int, seconds: float, loss: float, seed: int) -> int:
    sim = GossipSim(n, seed=seed, link=LinkModel(loss=loss), meta_for=lambda i: META)
    deaths = 0
    t = 0.0
    while t < seconds:
        t = min(seconds, t + 60)
        sim.run_until(t)
        deaths += sum(isinstance(e, MemberDied) for _, _, e in sim.log)
        sim.log.clear()
    return deaths


def stalls(n: int, seconds: float, lifeguard: bool, frozen: bool, seed: int) -> dict[str, int]:
    """5 % of members stall for 2-10 s, then run 5-30 s, over and over.

    Counts `dead` declarations (one per observer) of members that never stall
    ("healthy": the false positives Lifeguard is about) and of the stalling ones.
    """
    cfg = GossipConfig() if lifeguard else GossipConfig().without_lifeguard()
    sim = GossipSim(n, seed=seed, config=cfg)
    rng = random.Random(seed)
    flaky = rng.sample(range(n), max(1, n // 20))
    next_stall = {i: rng.uniform(5, 30) for i in flaky}
    flaky_ids = {sim.nodes[i].node_id for i in flaky}
    healthy_dead = stalled_dead = 0
    while sim.now < seconds:
        i = min(next_stall, key=next_stall.__getitem__)
        sim.run_until(min(next_stall[i], seconds))
        if sim.now >= seconds:
            break
        length = rng.uniform(2, 10)
        sim.stall(i, length, frozen=frozen)
        next_stall[i] = sim.now + length + rng.uniform(5, 30)
        for _, _, e in sim.log:
            if isinstance(e, MemberDied):
                if e.node in flaky_ids:
                    stalled_dead += 1
                else:
                    healthy_dead += 1
        sim.log.clear()
    return {"healthy": healthy_dead, "stalled": stalled_dead}


def state_bytes(n: int) -> int:
    """Heap bytes of one node's membership state at N members (tracemalloc).

    Every member gets its own meta bytes (as decoded from the wire); a tenth of them
    are suspected, so suspicion timers and queued updates are counted too.
    """
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    core = Membership(GossipConfig(), "node-x", ("10.9.9.9", 7946), META, random.Random(1), 0.0)
    for i in range(n):
        row = MemberState(f"node-{i:04d}", (f"10.0.{i >> 8}.{i & 255}", 7946), 3, ALIVE,
                          META + i.to_bytes(4, "big"))  # fmt: skip
        core.preload((row,), 0.0)
        if i % 10 == 0:
            core.on_suspect(Suspect_(row.node, 3, "node-y"), 1.0)
    core.snapshot()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(s.size_diff for s in after.compare_to(before, "filename"))


def sim_wall_time(n: int, seconds: float, seed: int) -> float:
    sim = GossipSim(n, seed=seed, meta_for=lambda i: META, record_events=False)
    t = time.perf_counter()
    sim.run_until(seconds)
    return time.perf_counter() - t


def run(quick: bool) -> dict[str, Any]:
    ns = (10, 100) if quick else (10, 100, 1000)
    out: dict[str, Any] = {"quick": quick, "per_n": {}}
    for n in ns:
        big = n >= 1000
        row: dict[str, Any] = {}
        crashes = 3 if quick else (8 if big else 25)
        row["crash"] = crash_detection(n, crashes, seed=n)
        trials = 3 if quick else (5 if big else 20)
        # 50 % loss at N=1000 is a suspicion storm the simulator needs many minutes for.
        losses = (0.0, 0.1) if quick or big else (0.0, 0.1, 0.5)
        row["dissemination"] = [
            dissemination(n, loss, trials if loss < 0.5 else max(2, trials // 4), seed=n + 1)
            for loss in losses
        ]
        row["traffic"] = traffic(n, 20 if quick else 60, seed=n + 2)
        # 1 h at 10 % loss for N <= 100; N=1000 costs ~0.6 s of wall per virtual second.
        fd_s = 120.0 if quick else (180.0 if big else 3600.0)
        row["false_deaths_10pct"] = {"virtual_s": fd_s, "deaths": false_deaths(n, fd_s, 0.1, n + 3)}
        out["per_n"][n] = row
        print(f"N={n} done", file=sys.stderr, flush=True)
    stall_n, stall_s = (100, 300.0) if quick else (100, 3600.0)
    out["stalls"] = {"n": stall_n, "virtual_s": stall_s}
    for mode in ("deaf", "frozen"):
        for lg in (True, False):
            key = f"{mode}_{'lifeguard' if lg else 'swim'}"
            out["stalls"][key] = stalls(stall_n, stall_s, lg, mode == "frozen", seed=7)
    print("stalls done", file=sys.stderr, flush=True)
    wall_n, wall_s = (1000, 60.0) if quick else (1000, 600.0)
    out["wall"] = {"n": wall_n, "virtual_s": wall_s, "wall_s": sim_wall_time(wall_n, wall_s, 9)}
    out["state_bytes_n1000"] = state_bytes(1000)
    out["udp"] = converge_processes(5 if quick else 16)
    return out


def verdict(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]missed[/red]"


def _rows_for_n(t: Table, n: int, row: dict[str, Any], base_pps: float) -> int:
    """Rows of one group size; returns the largest packet seen."""
    c = row["crash"]
    t.add_row(
        "crash -> first suspicion p50/p99",
        str(n),
        f"{c['first_suspicion_p50_s']:.2f} / {c['first_suspicion_p99_s']:.2f} s",
        "",
        "",
    )
    t.add_row(
        "crash -> dead at all p50/p99",
        str(n),
        f"{c['dead_at_all_p50_s']:.2f} / {c['dead_at_all_p99_s']:.2f} s",
        f"p50 <= {DETECT_TARGET_S[n]:.0f} s",
        verdict(c["dead_at_all_p50_s"] <= DETECT_TARGET_S[n]),
    )
    max_pkt = max(c["max_packet_bytes"], row["traffic"]["max_packet_bytes"])
    for d in row["dissemination"]:
        target = 1.2 * SERF_MODEL_S[n]
        ok = d["p99_s"] <= target if d["loss"] == 0 else math.isfinite(d["p99_s"])
        t.add_row(
            f"update -> 100 % at {d['loss']:.0%} loss p50/p99",
            str(n),
            f"{d['p50_s']:.2f} / {d['p99_s']:.2f} s",
            f"<= {target:.2f} s" if d["loss"] == 0 else "reaches 100 %",
            verdict(ok),
        )
        max_pkt = max(max_pkt, d["max_packet_bytes"])
    tr = row["traffic"]
    dev = tr["packets_per_member_s"] / base_pps - 1
    t.add_row(
        "packets / bytes per member per s",
        str(n),
        f"{tr['packets_per_member_s']:.2f} / {tr['bytes_per_member_s']:.0f} B",
        "flat +-10 % vs N=10",
        verdict(abs(dev) <= 0.10),
    )
    fd = row["false_deaths_10pct"]
    t.add_row(
        f"false deaths, {fd['virtual_s']:.0f} virtual s at 10 % loss",
        str(n),
        str(fd["deaths"]),
        "0 (1 h)",
        verdict(fd["deaths"] == 0),
    )
    return int(max_pkt)  # fmt: skip


def _rows_global(t: Table, out: dict[str, Any]) -> None:
    st = out["stalls"]
    for mode in ("deaf", "frozen"):
        lg, sw = st[f"{mode}_lifeguard"], st[f"{mode}_swim"]
        ratio = sw["healthy"] / max(lg["healthy"], 1)
        t.add_row(
            f"5 % stalling 2-10 s ({mode}): healthy dead, Lifeguard vs SWIM",
            str(st["n"]),
            f"{lg['healthy']} vs {sw['healthy']} ({ratio:.0f}x)",
            ">= 50x fewer",
            verdict(sw["healthy"] >= 50 * max(lg["healthy"], 1)),
        )
        t.add_row(
            f"  stalled members declared dead ({mode})",
            str(st["n"]),
            f"{lg['stalled']} vs {sw['stalled']}",
            "(info)",
            "",
        )
    w = out["wall"]
    t.add_row(
        f"wall time, {w['n']} nodes x {w['virtual_s']:.0f} virtual s",
        str(w["n"]),
        f"{w['wall_s']:.1f} s",
        "<= 120 s (600 virtual s)",
        verdict(w["wall_s"] * 600 / w["virtual_s"] <= 120),
    )
    mb = out["state_bytes_n1000"] / 1e6
    t.add_row("one node's state", "1000", f"{mb:.2f} MB", "<= 10 MB", verdict(mb <= 10))
    u = out["udp"]
    t.add_row(f"real UDP: {u['processes']} processes converge", str(u["processes"]),
              f"{u['converged_s']:.1f} s", "converge", verdict(bool(u["converged"])))  # fmt: skip


def report(out: dict[str, Any]) -> Table:
    t = Table(title="meshlb gossip (SWIM + Lifeguard) on the simulator, period 1 s")
    for col in ("measure", "N", "result", "target", "verdict"):
        t.add_column(col)
    per_n: dict[int, dict[str, Any]] = out["per_n"]
    base_pps = per_n[10]["traffic"]["packets_per_member_s"]
    max_pkt = max(_rows_for_n(t, n, row, base_pps) for n, row in per_n.items())
    t.add_row("largest packet", "all", f"{max_pkt} B", "<= 1400 B", verdict(max_pkt <= 1400))
    _rows_global(t, out)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (~30 s)")
    ap.add_argument("--table-only", action="store_true", help="reprint the last results")
    args = ap.parse_args()
    path = Path(__file__).resolve().parent / "results" / "gossip_sim.json"
    if args.table_only:
        out = json.loads(path.read_text())
        out["per_n"] = {int(k): v for k, v in out["per_n"].items()}
        Console(width=150).print(report(out))
        return
    if args.quick:  # keep the full run's figures; a smoke run writes beside them
        path = path.with_name("gossip_sim_quick.json")
    t0 = time.perf_counter()
    out = run(args.quick)
    out["bench_wall_s"] = time.perf_counter() - t0
    Console(width=150).print(report(out))
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
