"""Gossip (SWIM + Lifeguard) on the deterministic simulator, against the issue's targets.

For N = 10, 100, 1000 (memberlist LAN defaults, 1 s period):
  A. crash -> first suspicion, and -> dead at every member (p50/p99 over many crashes);
  B. dissemination of a meta update to 100 % of members at 0 / 10 / 50 % loss;
  C. packets and bytes per member per second in steady state, largest packet;
  D. false deaths in 1 h virtual at 10 % loss;
  E. 5 % of members stalling 2-10 s, false deaths with Lifeguard on and off;
  F. wall time of 1000 nodes x 10 virtual minutes; one node's state at N = 1000;
  G. real UDP: 16 processes on loopback converge.
Prints a table and writes bench/results/gossip_sim.json.

    python bench/gossip_sim.py            # full run (several minutes)
    python bench/gossip_sim.py --quick    # smoke run (~30 s)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gossip_udp_procs import converge_processes
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.events import MemberDied, MemberSuspected, MetaChanged
from meshlb.gossip.membership import Membership
from meshlb.gossip.messages import ALIVE, MemberState
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
    }


def dissemination(n: int, loss: float, trials: int, seed: int) -> dict[str, Any]:
    sim = GossipSim(n, seed=seed, link=LinkModel(loss=loss), meta_for=lambda i: META)
    rng = random.Random(seed)
    sim.run_until(3.0)
    times: list[float] = []
    for k in range(trials):
        sim.run_for(rng.random())
        src = rng.randrange(n)
        node = sim.nodes[src].node_id
        mark, t0 = len(sim.log), sim.now
        sim.update_meta(src, META[:-4] + k.to_bytes(4, "big"))
        inc = sim.nodes[src].core.incarnation  # type: ignore[union-attr]
        seen: dict[int, float] = {}
        while len(seen) < n - 1 and sim.now - t0 < 300:
            sim.run_for(0.1)
            for t, i, e in sim.log[mark:]:
                if isinstance(e, MetaChanged) and e.node == node and e.incarnation == inc:
                    seen.setdefault(i, t)
            mark = len(sim.log)
        times.append(max(seen.values()) - t0 if len(seen) == n - 1 else float("inf"))
        sim.run_for(5.0)
    return {"loss": loss, "p50_s": pct(times, 0.5), "p99_s": pct(times, 0.99), "trials": trials}


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
