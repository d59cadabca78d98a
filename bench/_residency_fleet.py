"""The residency benchmark's fleet: hosts with Ollama's memory model, in virtual time.

Each host is the simulator's own memory core (`meshlb.backend.sim_memory.ModelMemory`:
VRAM, load time, keep_alive, LRU eviction of idle runners, parallel slots with a
prompt-prefix cache). meshlb's policy is the SHIPPED code: every host's metadata is
built as a node builds it, encoded and decoded as gossip carries it (`encode_meta` /
`decode_meta`, refreshed once per announce interval), turned into candidates by
`meshlb.mesh.candidates.candidate` (residency included), and placed by each entry
node's own `meshlb.mesh.placement_service.PlacementService` (what it sent since a
peer's last update, its conversation map, `placement.place`); the serving node places
a forwarded turn again with hops=1, as a node does, so it records the turn too.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

from meshlb.backend.sim_memory import Ask, MemoryConfig, ModelMemory
from meshlb.mesh.candidates import candidate
from meshlb.mesh.meta import Load, NodeMeta, decode_meta, encode_meta
from meshlb.mesh.placement import Candidate, RunHere, SendTo
from meshlb.mesh.placement_service import MemberLoad, PlacementService
from meshlb.mesh.residency import Residency, Resident

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
SLOTS = 4
# The "static plan" oracle's layout: where each model lives, fixed in advance, so that
# every copy fits at once (<= 3 models, within memory, on every host) and nothing is
# ever evicted. It knows the workload's model mix, which no online policy does: it
# bounds what spreading conversations over more prompt caches can save.
STATIC_PLAN = {
    "m:4.7b": (0, 1, 2, 4),
    "m:2b": (0, 2),
    "m:9b": (4, 5),
    "m:1.5b": (1, 3),
    "m:14b": (3, 5),
    "m:5b": (2, 4),
}
LOAD_GBPS = 1.0
LOAD_FIXED_S = 0.5
PROMPT_FACTOR = 20.0  # prompt evaluation is this much faster than generation
ANNOUNCE_S = 1.0
CHARS_PER_TOKEN = 4


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
    host: int = -1
    done: float = 0.0
    evaluated: int = 0
    cached: int = 0  # leading prompt characters the slot it got held already


@dataclass
class Conversation:
    """One client's chat. Its own `rng` draws its messages, reply lengths and pauses,
    so every policy sees the same conversations: placement draws from the fleet's rng,
    and a shared one would let one placement change every later turn's text."""

    cid: int
    model: str
    entry: int
    turns_left: int
    rng: random.Random
    messages: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Host:
    idx: int
    mem: ModelMemory
    tps: float
    memory_gb: float
    waiting: dict[int, Req] = field(default_factory=dict)
    running: dict[int, Req] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)  # requests started per model
    loading: set[str] = field(default_factory=set)
    load_s: float = 0.0
    measured: bool = False
    meta: bytes = b""
    incarnation: int = 0
    timer_at: float = float("inf")

    def outstanding(self) -> int:
        return len(self.waiting) + len(self.running)


class Members:
    """One entry node's view of the fleet (the placement service's `MeshMembers`):
    itself with its live numbers, the others as last gossiped."""

    def __init__(self, fleet: Fleet, idx: int) -> None:
        self.fleet, self.idx = fleet, idx

    def local_candidate(self) -> Candidate:
        return candidate(str(self.idx), self.fleet.meta(self.fleet.hosts[self.idx]), True)

    def peers(self) -> list[MemberLoad]:
        return [
            MemberLoad(candidate(str(h.idx), meta_of(h.meta), False), "alive", h.incarnation)
            for h in self.fleet.hosts
            if h.idx != self.idx
        ]


class Fleet:
    """The fleet in virtual time, placing each arrival by one policy."""

    def __init__(
        self, policy: str, seed: int, affinity: bool = True, think_s: tuple[float, float] = (5, 20)
    ) -> None:
        self.policy = policy
        self.affinity = affinity
        self.think_s = think_s  # a conversation's pause between a reply and its next turn
        self.rng = random.Random(seed)
        self.hosts = [
            Host(i, ModelMemory(memory_config(gb)), HOST_TPS[i], float(gb))
            for i, gb in enumerate(HOST_GB)
        ]
        self.sizes = dict(MODELS)
        self.services = [
            PlacementService(str(h.idx), Members(self, h.idx), self.rng) for h in self.hosts
        ]
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.rr = 0
        self.done: list[Req] = []
        self.placements: list[tuple[int, int, str]] = []  # (rid, host, "here"/"sent")
        self.now = 0.0
        self.convs: dict[int, Conversation] = {}
        self.pinned: dict[int, int] = {}  # static plan: conversation -> its host
        self.live: dict[tuple[int, str], int] = {}  # static plan: (host, model) -> open
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
            elif kind == "announce" and self.events:
                for h in self.hosts:
                    self.announce(h, now)
                self.push(now + ANNOUNCE_S, "announce", None)

    def next_turn(self, cid: int, now: float) -> None:
        c = self.convs[cid]
        user = f"{cid:05d}/{c.turns_left}|" + "u" * c.rng.randint(200, 800)
        c.messages = [*c.messages, {"role": "user", "content": user}]
        prompt = "".join(m["content"] for m in c.messages)
        rid = 10_000_000 + cid * 10 + c.turns_left
        out = c.rng.randint(50, 200)
        req = Req(rid, now, c.model, prompt, out, c.entry, list(c.messages), cid)
        c.turns_left -= 1
        self.arrive(req, now)

    def arrive(self, r: Req, now: float) -> None:
        r.at = now
        r.host = self.choose(r, now)
        h = self.hosts[r.host]
        h.waiting[r.rid] = r
        h.active[r.model] = h.active.get(r.model, 0) + 1
        h.served[r.model] = h.served.get(r.model, 0) + 1
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
            cached = r.cached = min(g.cached_chars, len(r.prompt))
            r.evaluated = max(1, (len(r.prompt) - cached) // CHARS_PER_TOKEN)
            service = r.evaluated / (h.tps * PROMPT_FACTOR) + r.out_tokens / h.tps
            self.push(g.started_at + service, "finish", (h.idx, rid))
        loading = {x.model for x in h.mem.loaded(now) if x.loading}
        for model in loading - h.loading:
            h.load_s += LOAD_FIXED_S + self.sizes[model] / LOAD_GBPS
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
        reply = "a" * (r.out_tokens * CHARS_PER_TOKEN)
        h.mem.finish(r.rid, now, processed=r.prompt + reply)
        r.done = now
        self.done.append(r)
        self.after(h, now)
        if r.conv >= 0:
            c = self.convs[r.conv]
            c.messages = [*c.messages, {"role": "assistant", "content": reply}]
            if c.turns_left > 0:
                self.push(now + c.rng.uniform(*self.think_s), "turn", r.conv)
            elif r.conv in self.pinned:
                self.live[(h.idx, r.model)] -= 1

    # ---- what nodes gossip ----

    def meta(self, h: Host) -> NodeMeta:
        """What host `h`'s node says of itself now (gossip carries it once a second)."""
        now = self.now
        loaded = tuple(
            Resident(
                x.model,
                x.size / GB,
                h.active.get(x.model, 0),
                x.expires_at,
                h.served.get(x.model, 0),
            )
            for x in h.mem.loaded(now)
        )
        res = Residency(loaded, h.memory_gb, LOAD_GBPS if h.measured else None)
        return NodeMeta(
            f"10.0.0.{h.idx}:11435",
            tuple(m for m, _ in MODELS),
            Load(len(h.waiting), len(h.running), SLOTS * 3, tokens_per_s=h.tps),
            resident=res.loaded,
            memory_gb=res.memory_gb,
            load_gbps=res.load_gbps,
        )

    def announce(self, h: Host, now: float) -> None:
        self.now = now
        data = encode_meta(self.meta(h))
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
            warm = [h for h in hosts if r.model in gossiped_models(h.meta)]
            pool = warm or hosts
            return min(pool, key=lambda h: (h.outstanding(), self.rng.random())).idx
        if self.policy == "static_plan":
            return self.place_static(r)
        return self.place_meshlb(r, now)

    def place_static(self, r: Req) -> int:
        """The oracle: a conversation stays on the plan host that had the fewest open
        conversations of its model when it began; a single request goes to the least
        loaded plan host."""
        if r.conv in self.pinned:
            return self.pinned[r.conv]
        hosts = STATIC_PLAN[r.model]
        if r.conv < 0:
            return min(hosts, key=lambda i: (self.hosts[i].outstanding(), i))
        to = min(hosts, key=lambda i: (self.live.get((i, r.model), 0), -HOST_GB[i]))
        self.pinned[r.conv] = to
        self.live[(to, r.model)] = self.live.get((to, r.model), 0) + 1
        return to

    def place_meshlb(self, r: Req, now: float) -> int:
        self.now = now
        svc = self.services[r.entry]
        payload = {"model": r.model, "messages": r.messages} if r.messages else None
        est = r.out_tokens + len(r.prompt) // CHARS_PER_TOKEN // int(PROMPT_FACTOR)
        # the size on disk, as the entry node's catalog has it from /api/tags
        known_gb = self.sizes[r.model]
        placed = svc.place(r.model, est, payload=self.chat(payload), known_gb=known_gb)
        d = placed.decision
        if isinstance(d, SendTo):
            to = int(d.node_id)
            svc.sent(d.node_id, placed.needs)
            # the serving node places the forwarded request again (hops=1), as a node does
            self.services[to].place(r.model, est, hops=1, payload=self.chat(payload))
        else:
            assert isinstance(d, RunHere), d
            to = r.entry
        self.placements.append((r.rid, to, "sent" if to != r.entry else "here"))
        return to

    def chat(self, payload: dict[str, Any] | None) -> dict[str, Any] | None:
        """The request as placement sees it: without its messages when affinity is off."""
        return payload if self.affinity else None


def plan_fits() -> bool:
    """Every host can hold its share of `STATIC_PLAN` at once."""
    sizes = dict(MODELS)
    on = [[m for m, hosts in STATIC_PLAN.items() if i in hosts] for i in range(len(HOST_GB))]
    return set(STATIC_PLAN) == set(sizes) and all(
        len(ms) <= 3 and sum(sizes[m] for m in ms) <= gb for ms, gb in zip(on, HOST_GB, strict=True)
    )


def memory_config(gb: int) -> MemoryConfig:
    return MemoryConfig(
        vram_bytes=gb * GB,
        max_loaded=3,
        load_bytes_per_s=LOAD_GBPS * GB,
        load_fixed_s=LOAD_FIXED_S,
        keep_alive_s=300.0,
        parallel=SLOTS,
    )


def meta_of(data: bytes) -> NodeMeta:
    meta = decode_meta(data)
    assert meta is not None
    return meta


def gossiped_models(data: bytes) -> set[str]:
    """What residency-first sees: the models /api/ps listed at the last read."""
    return {r.model for r in meta_of(data).resident or ()}
