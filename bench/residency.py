"""Residency benchmark: placement that knows where models are loaded (issue 11).

A discrete-event model of a heterogeneous fleet in virtual time. Each host is the
simulator's own memory core (`meshlb.backend.sim_memory.ModelMemory`: Ollama's
scheduler rules: VRAM, load time, keep_alive, LRU eviction of idle runners, parallel
slots with a prompt-prefix cache). meshlb's policy is the SHIPPED code: every host's
metadata is built as a node builds it, encoded and decoded as gossip carries it
(`encode_meta` / `decode_meta`, refreshed once per announce interval), turned into
candidates by `meshlb.mesh.candidates`, priced and chosen by `meshlb.mesh.placement.place`
with the inputs of `meshlb.mesh.residency_placement.task_needs` (size, conversation
affinity), and the entry node's `RecentlySent` (what it sent since a peer's last update).

Fleet: 6 hosts with 8, 8, 12, 16, 24, 24 GB (faster the bigger), 4 slots per model,
loads at 1 GB/s + 0.5 s, keep_alive 5 min, at most 3 models each. Workload A: 3 000
requests over 6 models of 1.5-14 GB with Zipf popularity (s = 1.1), in bursts (3x the
mean rate for 20 s of every 60 s), each entering at a random node. Workload B: 200
conversations x 4 turns (each client talks to one node; 5-20 s between turns) over a
background of single requests; meshlb with and without conversation affinity.

Policies: meshlb; round-robin; least-connections (fewest requests in hand, live);
residency-first (a host that has the model loaded, per /api/ps read once a second,
least loaded first; else the least loaded host: what ollama-herd does). The baselines
are given live connection counts, as a central proxy has them.

    python bench/residency.py            # full run (~1 min)
    python bench/residency.py --quick    # smaller run + a real-process smoke run
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from meshlb.backend.sim_memory import Ask, MemoryConfig, ModelMemory
from meshlb.mesh.candidates import RecentlySent, candidate, with_local_residency, with_sent
from meshlb.mesh.meta import Load, NodeMeta, decode_meta, encode_meta
from meshlb.mesh.placement import Candidate, RunHere, SendTo, place
from meshlb.mesh.residency import Residency, Resident
from meshlb.mesh.residency_placement import record_turn, task_needs
from meshlb.node_context import NodeContext
from meshlb.sched.stats import percentile

GB = 1_000_000_000
HOST_GB = (8, 8, 12, 16, 24, 24)
HOST_TPS = (30.0, 30.0, 40.0, 50.0, 60.0, 60.0)  # tokens/s per request
MODELS = (  # by popularity rank (Zipf)
    ("m:4.7b", 4.7),
    ("m:2b", 2.0),
    ("m:9b", 9.0),
    ("m:1.5b", 1.5),
    ("m:14b", 14.0),
    ("m:5b", 5.0),
)
ZIPF_S = 1.1
SLOTS = 4
LOAD_GBPS = 1.0
LOAD_FIXED_S = 0.5
PROMPT_FACTOR = 20.0  # prompt evaluation is this much faster than generation
ANNOUNCE_S = 1.0
POLICIES = ("meshlb", "round_robin", "least_conn", "residency_first")


@dataclass
class Req:
    rid: int
    at: float
    model: str
    prompt: str
    out_tokens: int
    entry: int
    messages: list[dict[str, str]] | None = None
    conv: int = -1
    turn: int = 0
    host: int = -1
    started: float = 0.0
    done: float = 0.0
    evaluated: int = 0


@dataclass
class Host:
    idx: int
    mem: ModelMemory
    tps: float
    memory_gb: float
    waiting: dict[int, Req] = field(default_factory=dict)
    running: dict[int, Req] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)
    loading: set[str] = field(default_factory=set)
    load_s: float = 0.0
    measured: bool = False
    meta: bytes = b""
    incarnation: int = 0
    timer_at: float = float("inf")

    def outstanding(self) -> int:
        return len(self.waiting) + len(self.running)


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
        prompt = f"{rid:09d}|" + "p" * (tokens * 4 - 10)
        out.append(Req(rid, at, model, prompt, rng.randint(32, 256), rng.randrange(6)))
    return out


@dataclass
class Conversation:
    cid: int
    model: str
    entry: int
    turns_left: int
    messages: list[dict[str, str]]


class World:
    """The fleet in virtual time, placing each arrival by one policy."""

    def __init__(self, policy: str, seed: int, affinity: bool = True) -> None:
        self.policy = policy
        self.affinity = affinity
        self.rng = random.Random(seed)
        self.hosts = [
            Host(
                i,
                ModelMemory(
                    MemoryConfig(
                        vram_bytes=HOST_GB[i] * GB,
                        max_loaded=3,
                        load_bytes_per_s=LOAD_GBPS * GB,
                        load_fixed_s=LOAD_FIXED_S,
                        keep_alive_s=300.0,
                        parallel=SLOTS,
                    )
                ),
                HOST_TPS[i],
                float(HOST_GB[i]),
            )
            for i in range(len(HOST_GB))
        ]
        self.sizes = dict(MODELS)
        self.sent = [RecentlySent() for _ in self.hosts]  # one per entry node
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.rr = 0
        self.done: list[Req] = []
        self.load_log: list[tuple[float, int, str]] = []
        self.convs: dict[int, Conversation] = {}
        for h in self.hosts:
            self.announce(h, 0.0)

    # ---- the event loop ----

    def push(self, at: float, kind: str, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, data))

    def run(self, reqs: list[Req], convs: list[tuple[float, Conversation]]) -> None:
        for r in reqs:
            self.push(r.at, "arrive", r)
        for at, c in convs:
            self.convs[c.cid] = c
            self.push(at, "turn", c.cid)
        self.push(ANNOUNCE_S, "announce", None)
        while self.events:
            now, _, kind, data = heapq.heappop(self.events)
            if kind == "arrive":
                self.arrive(data, now)
            elif kind == "turn":
                self.next_turn(data, now)
            elif kind == "finish":
                self.finish(data, now)
            elif kind == "timer":
                h = self.hosts[data]
                if now >= h.timer_at:
                    h.timer_at = float("inf")
                    h.mem.advance(now)
                    self.after(h, now)
            elif kind == "announce" and (len(self.events) > 0):
                for h in self.hosts:
                    self.announce(h, now)
                self.push(now + ANNOUNCE_S, "announce", None)

    def next_turn(self, cid: int, now: float) -> None:
        c = self.convs[cid]
        user = f"{cid:05d}/{c.turns_left}|" + "u" * self.rng.randint(200, 800)
        c.messages = [*c.messages, {"role": "user", "content": user}]
        prompt = "".join(m["content"] for m in c.messages)
        rid = 10_000_000 + cid * 10 + c.turns_left
        req = Req(
            rid,
            now,
            c.model,
            prompt,
            self.rng.randint(50, 200),
            c.entry,
            list(c.messages),
            cid,
            4 - c.turns_left,
        )
        c.turns_left -= 1
        self.arrive(req, now)

    def arrive(self, r: Req, now: float) -> None:
        r.at = now
        r.host = self.choose(r, now)
        h = self.hosts[r.host]
        h.waiting[r.rid] = r
        h.active[r.model] = h.active.get(r.model, 0) + 1
        h.mem.submit(Ask(r.rid, r.model, int(self.sizes[r.model] * GB), prompt=r.prompt), now)
        self.after(h, now)

    def after(self, h: Host, now: float) -> None:
        """Start what the memory core granted; note loads; set its next timer."""
        for rid in list(h.waiting):
            g = h.mem.grant(rid)
            if g is None:
                continue
            r = h.waiting.pop(rid)
            h.running[rid] = r
            cached = min(g.cached_chars, len(r.prompt))
            r.evaluated = (len(r.prompt) - cached) // 4
            r.started = g.started_at
            service = r.evaluated / (h.tps * PROMPT_FACTOR) + r.out_tokens / h.tps
            self.push(g.started_at + service, "finish", (h.idx, rid))
        loading = {x.model for x in h.mem.loaded(now) if x.loading}
        for model in loading - h.loading:
            h.load_s += LOAD_FIXED_S + self.sizes[model] / LOAD_GBPS
            self.load_log.append((round(now, 1), h.idx, model))
            h.measured = True
        h.loading = loading
        t = h.mem.next_deadline()
        if t < h.timer_at:
            h.timer_at = t
            self.push(t, "timer", h.idx)

    def finish(self, data: tuple[int, int], now: float) -> None:
        h = self.hosts[data[0]]
        r = h.running.pop(data[1])
        h.active[r.model] -= 1
        reply = "a" * (r.out_tokens * 4)
        h.mem.finish(r.rid, now, processed=r.prompt + reply)
        r.done = now
        self.done.append(r)
        self.after(h, now)
        if r.conv >= 0:
            c = self.convs[r.conv]
            c.messages = [*c.messages, {"role": "assistant", "content": reply}]
            if c.turns_left > 0:
                self.push(now + self.rng.uniform(5, 20), "turn", r.conv)

    # ---- what nodes gossip ----

    def residency(self, h: Host, now: float) -> Residency:
        loaded = tuple(
            Resident(x.model, x.size / GB, h.active.get(x.model, 0), x.expires_at)
            for x in h.mem.loaded(now)
        )
        return Residency(loaded, h.memory_gb, LOAD_GBPS if h.measured else None)

    def meta_of(self, h: Host, now: float) -> NodeMeta:
        res = self.residency(h, now)
        return NodeMeta(
            f"10.0.0.{h.idx}:11435",
            tuple(m for m, _ in MODELS),
            Load(len(h.waiting), len(h.running), SLOTS, tokens_per_s=h.tps),
            resident=res.loaded,
            memory_gb=res.memory_gb,
            load_gbps=res.load_gbps,
        )

    def announce(self, h: Host, now: float) -> None:
        data = encode_meta(self.meta_of(h, now))
        if data != h.meta:
            h.meta = data
            h.incarnation += 1

    # ---- policies ----

    def choose(self, r: Req, now: float) -> int:
        hosts = self.hosts
        if self.policy == "round_robin":
            self.rr += 1
            return self.rr % len(hosts)
        if self.policy == "least_conn":
            return min(hosts, key=lambda h: (h.outstanding(), self.rng.random())).idx
        if self.policy == "residency_first":
            warm = [
                h
                for h in hosts
                if decode_meta(h.meta) is not None
                and r.model in {x.model for x in (decode_meta(h.meta).resident or ())}
            ]  # type: ignore[union-attr]
            pool = warm or hosts
            return min(pool, key=lambda h: (h.outstanding(), self.rng.random())).idx
        return self.place_meshlb(r, now)

    def candidates(self, entry: int, now: float) -> list[Candidate]:
        out = []
        sent = self.sent[entry]
        for h in self.hosts:
            meta = decode_meta(h.meta)
            assert meta is not None
            c = candidate(str(h.idx), meta, h.idx == entry, now)
            extra = sent.pending(str(h.idx), h.incarnation)
            models = sent.pending_models(str(h.idx), h.incarnation)
            out.append(with_sent(c, extra, models) if extra or models else c)
        fresh = self.hosts[entry]  # the entry node knows its own load now, not as gossiped
        out = [
            replace(c, queued=len(fresh.waiting), running=len(fresh.running)) if c.is_local else c
            for c in out
        ]
        return with_local_residency(out, self.residency(fresh, now))

    def node_ctx(self, idx: int) -> NodeContext:
        """The parts of a node that `task_needs` reads, for host `idx`."""
        return cast(
            NodeContext,
            SimpleNamespace(
                catalog=SimpleNamespace(size_gb=lambda m: None),
                recently_sent=self.sent[idx],
                generation_rate=SimpleNamespace(value=self.hosts[idx].tps),
                node_id=str(idx),
            ),
        )

    def place_meshlb(self, r: Req, now: float) -> int:
        cands = self.candidates(r.entry, now)
        payload: dict[str, Any] | None = None
        if r.messages is not None and self.affinity:
            payload = {"model": r.model, "messages": r.messages}
        ctx = self.node_ctx(r.entry)
        est = r.out_tokens + len(r.prompt) // 4 // int(PROMPT_FACTOR)
        needs, turn = task_needs(ctx, payload, r.model, est, 0, cands)
        d = place(needs, cands, self.rng)
        if isinstance(d, SendTo):
            to = int(d.node_id)
            self.sent[r.entry].note(d.node_id, self.hosts[to].incarnation, model=r.model)
        else:
            assert isinstance(d, RunHere), d
            to = r.entry
        record_turn(ctx, turn, str(to))
        if to != r.entry and turn is not None:  # the serving node records what it ran
            record_turn(self.node_ctx(to), turn, str(to))
        return to


def summarize(world: World) -> dict[str, Any]:
    done = world.done
    lat = sorted(r.done - r.at for r in done)
    loads = sum(h.mem.loads for h in world.hosts)
    first = min(r.at for r in done)
    return {
        "requests": len(done),
        "loads": loads,
        "loads_per_1000": round(loads / len(done) * 1000, 1),
        "gpu_s_loading": round(sum(h.load_s for h in world.hosts), 1),
        "p50_s": round(percentile(lat, 0.5), 2),
        "p99_s": round(percentile(lat, 0.99), 2),
        "makespan_s": round(max(r.done for r in done) - first, 1),
        "prompt_tokens": sum(r.evaluated for r in done),
        "conv_prompt_tokens": sum(r.evaluated for r in done if r.conv >= 0),
        "conv_p99_s": round(
            percentile(sorted(r.done - r.at for r in done if r.conv >= 0) or [0.0], 0.99), 2
        ),
    }


def workload_a(seed: int, n: int) -> list[Req]:
    return single_requests(random.Random(seed), n, rate=3.0)


def workload_b(seed: int, convs: int, background: int) -> tuple[list[Req], list[Any]]:
    rng = random.Random(seed + 1)
    weights = zipf_weights(len(MODELS))
    span = convs * 1.5
    starts = [
        (
            rng.uniform(0, span),
            Conversation(i, rng.choices(MODELS, weights)[0][0], rng.randrange(6), 4, []),
        )
        for i in range(convs)
    ]
    bg = single_requests(rng, background, rate=background / (span + 60), first_id=5_000_000)
    return bg, starts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    n, convs, bg = (600, 40, 300) if args.quick else (3000, 200, 1500)
    console = Console()
    started = time.monotonic()
    results: dict[str, Any] = {"seed": args.seed, "requests": n, "conversations": convs}
    a: dict[str, Any] = {}
    for policy in POLICIES:
        w = World(policy, args.seed)
        w.run(workload_a(args.seed, n), [])
        a[policy] = summarize(w)
    results["single"] = a
    b: dict[str, Any] = {}
    for name, policy, aff in (
        ("meshlb", "meshlb", True),
        ("meshlb_no_affinity", "meshlb", False),
        ("least_conn", "least_conn", True),
        ("residency_first", "residency_first", True),
    ):
        w = World(policy, args.seed, affinity=aff)
        reqs, starts = workload_b(args.seed, convs, bg)
        w.run(reqs, starts)
        b[name] = summarize(w)
    results["multi_turn"] = b
    results["goals"] = goals(a, b)
    if args.quick:
        results["smoke"] = smoke()
    results["wall_s"] = round(time.monotonic() - started, 1)
    show(console, results)
    out = (
        Path(__file__).parent
        / "results"
        / ("residency.quick.json" if args.quick else "residency.json")
    )
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out}")


def goals(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    m, lc, rf = a["meshlb"], a["least_conn"], a["residency_first"]
    mb, na = b["meshlb"], b["meshlb_no_affinity"]
    ratio = lambda x, y: round(x / y, 2) if y else float("inf")  # noqa: E731
    g = {
        "loads_vs_least_conn": ratio(lc["loads"], m["loads"]),
        "loads_vs_residency_first": ratio(rf["loads"], m["loads"]),
        "p99_vs_least_conn": ratio(lc["p99_s"], m["p99_s"]),
        "p99_vs_residency_first": ratio(rf["p99_s"], m["p99_s"]),
        "conv_prompt_tokens_saved": round(
            1 - mb["conv_prompt_tokens"] / na["conv_prompt_tokens"], 3
        ),
        "conv_p99_vs_no_affinity": ratio(mb["conv_p99_s"], na["conv_p99_s"]),
    }
    g["met"] = {
        "loads >= 5x fewer than least-connections": g["loads_vs_least_conn"] >= 5,
        "loads >= 1.5x fewer than residency-first": g["loads_vs_residency_first"] >= 1.5,
        "p99 >= 2x better than least-connections": g["p99_vs_least_conn"] >= 2,
        "p99 no worse than residency-first": g["p99_vs_residency_first"] >= 1.0,
        "multi-turn prompt tokens >= 40% fewer than without affinity": g["conv_prompt_tokens_saved"]
        >= 0.4,
        "multi-turn p99 within 10% of without affinity": g["conv_p99_vs_no_affinity"] <= 1.1,
    }
    return g


def show(console: Console, results: dict[str, Any]) -> None:
    cols = ("loads_per_1000", "gpu_s_loading", "p50_s", "p99_s", "makespan_s", "prompt_tokens")
    for key, title in (
        ("single", "A: 3 000 requests, Zipf 1.1, bursts"),
        ("multi_turn", "B: conversations x 4 turns + background"),
    ):
        t = Table(title=title)
        t.add_column("policy")
        for c in (*cols, "conv_prompt_tokens", "conv_p99_s") if key == "multi_turn" else cols:
            t.add_column(c, justify="right")
        for policy, row in results[key].items():
            extra = (row["conv_prompt_tokens"], row["conv_p99_s"]) if key == "multi_turn" else ()
            t.add_row(policy, *(str(row[c]) for c in cols), *(str(x) for x in extra))
        console.print(t)
    for goal, ok in results["goals"]["met"].items():
        console.print(f"{'MET ' if ok else 'MISSED'}  {goal}")
    console.print({k: v for k, v in results["goals"].items() if k != "met"})
    if "smoke" in results:
        console.print({"smoke": results["smoke"]})


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


if __name__ == "__main__":
    main()
