"""A node's recent history, for the dashboard and `/metrics`: events, requests, series.

Three bounded parts, all in memory and all cheap to feed:

- `EventLog`: typed ring buffers of what happened and why — placement decisions with
  their reason ("sent to gpu2: 1.2 s expected there vs 4.0 s here"), membership
  changes (suspect, dead, alive, rejoined, left), take-overs, quorum lost/regained —
  each with a wall-clock time. Two rings, so a burst of placements never pushes the
  one "gpu3 dead" out of sight.
- `RequestStats`: what the relay observes per local request (queue wait, time to
  first token, duration, tokens, cold model loads) as fixed-bucket histograms; one
  `RequestTimer` per request, a few attribute writes and a `bisect` per observation
  (the relay is the hot path: no prometheus_client objects, no locks).
- `Series`: one sample of this node every `SAMPLE_INTERVAL_S` (requests/s, queue
  depth, running, TTFT p50/p99 over the interval, tokens/s), kept `WINDOW_S`.

Producers call one method each (ollama_routes' placement, the ownership driver,
the relay); `meshlb.api.node_routes` serves the JSON, `meshlb.api.metrics` exports.
Times: `at`/`t` are wall-clock seconds (`time.time`, comparable across hosts to the
precision of their clocks); durations use the Trio clock through `monotonic`.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from meshlb.backend.catalog import canonical_model
from meshlb.gossip.events import (
    Event as GossipEvent,
)
from meshlb.gossip.events import (
    MemberDied,
    MemberJoined,
    MemberLeft,
    MemberRefuted,
    MemberSuspected,
)
from meshlb.mesh.ownership_msgs import PeerRestarted
from meshlb.sched.stats import SchedulerStats, percentile

MAX_PLACEMENTS = 300
MAX_MESH_EVENTS = 500
SAMPLE_INTERVAL_S = 2.0
WINDOW_S = 15 * 60.0
# Take-overs closer together than this are one "took over N tasks of X" event.
TAKE_OVER_BATCH_S = 10.0
GONE_KINDS = frozenset({"dead", "left", "restarted"})
# A response whose load_duration exceeds this loaded its model cold.
COLD_LOAD_S = 0.1

Decision = Literal["local", "forwarded", "stolen", "taken_over", "handed_over"]
MeshKind = Literal[
    "alive",
    "rejoined",
    "suspect",
    "refuted",
    "dead",
    "left",
    "restarted",
    "took_over",
    "quorum_lost",
    "quorum_regained",
]
# The placement decisions `meshlb_placements_total{decision}` always exports.
PLACEMENT_DECISIONS: tuple[Decision, ...] = ("local", "forwarded", "stolen", "taken_over")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one request or task went, and why (`node`: where it runs)."""

    seq: int
    at: float
    decision: Decision
    model: str
    node: str
    reason: str
    task: str | None = None

    def to_public(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "type": "placement",
            "decision": self.decision,
            "model": self.model,
            "node": self.node,
            "reason": self.reason,
            "task": self.task,
        }


@dataclass(frozen=True, slots=True)
class MeshEvent:
    """A membership or failover change as this node saw it (`node`: whom it is about)."""

    seq: int
    at: float
    kind: MeshKind
    node: str
    text: str

    def to_public(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "type": "mesh",
            "kind": self.kind,
            "node": self.node,
            "text": self.text,
        }


def _s(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds:.1f} s"


class EventLog:
    """Two bounded rings (placements, mesh events) and a counter per decision."""

    def __init__(self, node_id: str = "", clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self.clock = clock
        self.placements: deque[Placement] = deque(maxlen=MAX_PLACEMENTS)
        self.mesh: deque[MeshEvent] = deque(maxlen=MAX_MESH_EVENTS)
        self.decisions: Counter[str] = Counter(dict.fromkeys(PLACEMENT_DECISIONS, 0))
        self._seq = 0
        self._seen: set[str] = set()  # members ever seen alive (joined vs rejoined)
        self._took_over_count = 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def place(
        self, decision: Decision, model: str, node: str, reason: str, task: str | None = None
    ) -> None:
        self.decisions[decision] += 1
        self.placements.append(
            Placement(self._next(), self.clock(), decision, model, node, reason, task)
        )

    def note(self, kind: MeshKind, node: str, text: str) -> None:
        self.mesh.append(MeshEvent(self._next(), self.clock(), kind, node, text))

    # ---- producers: one call at each site --------------------------------------

    def forwarded(self, peer: str, model: str, eta_s: float, local_eta_s: float | None) -> None:
        """An Ollama-API request sent to `peer` by placement (ollama_routes)."""
        if local_eta_s is None:
            reason = f"sent to {peer}: model not runnable here ({_s(eta_s)} expected there)"
        else:
            reason = f"sent to {peer}: {_s(eta_s)} expected there vs {_s(local_eta_s)} here"
        self.place("forwarded", model, peer, reason)

    def kept(self, here: str, model: str, eta_s: float | None, hops: int) -> None:
        """An Ollama-API request placement decided to run here (node `here`)."""
        if hops:
            reason = f"forwarded here by a peer: runs here ({_s(eta_s)} expected), no 2nd hop"
        else:
            reason = f"runs here: {_s(eta_s)} expected, no peer clearly sooner"
        self.place("local", model, here, reason)

    def task_accepted(self, task: str, model: str, here: str, forward_to: str | None) -> None:
        """A new async task placed by expected completion time (POST /v1/tasks)."""
        if forward_to is None:
            self.place("local", model, here, "task queued here: no peer expected sooner", task)
        else:
            self.place(
                "forwarded", model, forward_to, f"task sent to {forward_to}: sooner there", task
            )

    def task_owned(self, task: str, model: str, why: str) -> None:
        """An async task became this node's to run (ownership driver, `why` as logged)."""
        decision: Decision = {"steal": "stolen", "taken over": "taken_over"}.get(why, "handed_over")  # type: ignore[assignment]
        text = {
            "steal": "stolen from a busy peer",
            "taken over": "taken over from a dead or departed peer",
            "adopted": "adopted (an orphan of a restarted peer)",
            "forward": "handed over by the node that accepted it",
            "leave": "handed over by a peer that is leaving",
        }.get(why, why)
        self.place(decision, model, self.node_id, f"task runs here: {text}", task)
        if why == "taken over":
            self._took_over_one()

    def task_sent(self, task: str, model: str, peer: str, why: str) -> None:
        """An async task this node holds placed on a peer (a take-over placed again)."""
        self.place("forwarded", model, peer, f"task sent to {peer}: {why}", task)
        if why == "taken over":
            self._took_over_one()

    def _took_over_one(self) -> None:
        """Count one task taken over into "took over N tasks of X": take-overs come one
        task at a time (each behind its fence), so consecutive ones within
        `TAKE_OVER_BATCH_S` are one event. X is the member this node last saw die,
        leave or restart (the core does not say whose copy it was)."""
        gone = next((e.node for e in reversed(self.mesh) if e.kind in GONE_KINDS), "a peer")
        last = self.mesh[-1] if self.mesh else None
        n = 1
        if (
            last is not None
            and last.kind == "took_over"
            and last.node == gone
            and self.clock() - last.at < TAKE_OVER_BATCH_S
        ):
            n = self._took_over_count + 1
            self.mesh.pop()
        self._took_over_count = n
        tasks = "task" if n == 1 else "tasks"
        self.note("took_over", gone, f"took over {n} {tasks} of {gone}")

    def gossip(self, ev: GossipEvent) -> None:
        """A membership event (ownership driver's `on_gossip`)."""
        node = getattr(ev, "node", "")
        if not node or node == self.node_id:
            return
        if isinstance(ev, MemberJoined):
            again = node in self._seen
            self._seen.add(node)
            kind: MeshKind = "rejoined" if again else "alive"
            self.note(kind, node, f"{node} {'rejoined' if again else 'joined'} the mesh")
        elif isinstance(ev, MemberSuspected):
            self.note("suspect", node, f"{node} suspected (by {ev.by})")
        elif isinstance(ev, MemberRefuted):
            self.note("refuted", node, f"{node} refuted the suspicion: alive")
        elif isinstance(ev, MemberDied):
            self.note("dead", node, f"{node} declared dead (by {ev.by})")
        elif isinstance(ev, MemberLeft):
            self.note("left", node, f"{node} left the mesh")

    def peer_event(self, event: object) -> None:
        """A peer event the ownership core is fed: a restart is worth showing (the
        other kinds are the gossip events already noted)."""
        if isinstance(event, PeerRestarted):
            node = event.node_id
            self.note("restarted", node, f"{node} restarted: its old tasks are orphans")

    def quorum(self, regained: bool, healthy: int, known: int) -> None:
        if regained:
            self.note("quorum_regained", self.node_id, f"quorum regained ({healthy}/{known})")
        else:
            self.note(
                "quorum_lost",
                self.node_id,
                f"quorum lost ({healthy}/{known} healthy): no take-overs until a majority",
            )

    def recent(self, limit: int = 100) -> dict[str, list[dict[str, Any]]]:
        """Newest first, at most `limit` of each ring."""
        return {
            "placements": [e.to_public() for e in _newest(self.placements, limit)],
            "mesh": [e.to_public() for e in _newest(self.mesh, limit)],
        }


def _newest(ring: deque[Any], limit: int) -> Iterator[Any]:
    for i, item in enumerate(reversed(ring)):
        if i >= limit:
            return
        yield item


# ---- request observations ----------------------------------------------------------

WAIT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
_TAIL_RE = re.compile(
    rb'"(prompt_eval_count|eval_count|prompt_tokens|completion_tokens|load_duration)"'
    rb"\s*:\s*(\d{1,20})"
)


@dataclass(slots=True)
class Histogram:
    """Fixed upper bounds; `counts[i]` holds values in (bounds[i-1], bounds[i]]."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (le, count of values <= le), ending with +Inf."""
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class RequestStats:
    """Histograms by model, token and cold-load counters, and this interval's TTFTs."""

    def __init__(self, monotonic: Callable[[], float] = trio.current_time) -> None:
        self.monotonic = monotonic
        self.queue_wait: dict[str, Histogram] = {}
        self.ttft: dict[str, Histogram] = {}
        self.duration: dict[str, Histogram] = {}
        self.tokens: Counter[str] = Counter(prompt=0, completion=0)
        self.model_loads: Counter[str] = Counter()
        self.http: Counter[tuple[str, str]] = Counter()  # (route, status) -> requests
        self.interval_ttft_s: list[float] = []
        self.interval_tokens = 0

    def timer(self, model: str) -> RequestTimer:
        """Start timing one local request (relay); the model is the histograms' label."""
        return RequestTimer(self, canonical_model(model), self.monotonic())

    @staticmethod
    def _hist(family: dict[str, Histogram], model: str, bounds: tuple[float, ...]) -> Histogram:
        h = family.get(model)
        if h is None:
            h = family[model] = Histogram(bounds)
        return h

    def tail_seen(self, model: str, tail: bytes) -> None:
        """Token counts and load_duration from the end of an answer."""
        found = {k: int(v) for k, v in _TAIL_RE.findall(tail)}
        prompt = found.get(b"prompt_eval_count", found.get(b"prompt_tokens", 0))
        completion = found.get(b"eval_count", found.get(b"completion_tokens", 0))
        self.tokens["prompt"] += prompt
        self.tokens["completion"] += completion
        self.interval_tokens += prompt + completion
        if found.get(b"load_duration", 0) > COLD_LOAD_S * 1e9:
            self.model_loads[model] += 1


class RequestTimer:
    """One relayed request: `turn` when its slot comes, `on_send` for every ASGI
    message (the first body chunk is its first token), `done` once at the end."""

    __slots__ = ("done_once", "first_at", "model", "started_at", "stats", "status")

    def __init__(self, stats: RequestStats, model: str, started_at: float) -> None:
        self.stats = stats
        self.model = model
        self.started_at = started_at
        self.first_at: float | None = None
        self.status = 0
        self.done_once = False

    def turn(self, waited_s: float) -> None:
        self.stats._hist(self.stats.queue_wait, self.model, WAIT_BUCKETS_S).observe(waited_s)

    def on_send(self, message: Any) -> None:
        if self.first_at is not None:
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message.get("body") and self.status == 200:
            self.first_at = now = self.stats.monotonic()
            ttft_s = now - self.started_at
            self.stats._hist(self.stats.ttft, self.model, TTFT_BUCKETS_S).observe(ttft_s)
            self.stats.interval_ttft_s.append(ttft_s)

    def done(self, tail: bytes) -> None:
        if self.done_once:
            return
        self.done_once = True
        s = self.stats
        s._hist(s.duration, self.model, DURATION_BUCKETS_S).observe(s.monotonic() - self.started_at)
        if tail and self.status == 200:
            s.tail_seen(self.model, tail)


# ---- the time series ---------------------------------------------------------------

SERIES_FIELDS = ("t", "rps", "queued", "running", "ttft_p50_ms", "ttft_p99_ms", "tokens_per_s")


class Series:
    """This node sampled every interval; `WINDOW_S` of samples (rows of SERIES_FIELDS)."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S, window_s: float = WINDOW_S) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self.rows: deque[tuple[float, ...]] = deque(maxlen=int(window_s / interval_s) + 1)
        self._last: tuple[float, int] | None = None  # (monotonic, finished count)

    def sample(
        self, wall: float, now: float, stats: SchedulerStats, requests: RequestStats
    ) -> None:
        finished = stats.counters.finished
        ttfts = sorted(requests.interval_ttft_s)
        tokens = requests.interval_tokens
        requests.interval_ttft_s, requests.interval_tokens = [], 0
        if self._last is None:
            self._last = (now, finished)
            return
        elapsed = max(1e-6, now - self._last[0])
        rps = max(0, finished - self._last[1]) / elapsed
        self._last = (now, finished)
        self.rows.append(
            (
                round(wall, 3),
                round(rps, 3),
                stats.queued,
                stats.running,
                round(percentile(ttfts, 0.5) * 1000, 1),
                round(percentile(ttfts, 0.99) * 1000, 1),
                round(tokens / elapsed, 1),
            )
        )

    def since(self, t: float) -> list[tuple[float, ...]]:
        return [r for r in self.rows if r[0] > t]


class Telemetry:
    """What `NodeContext.telemetry` holds: the log, the request stats, the series.

    `log` is the ownership driver's own (it is built before the context), so the
    driver's events and the routes' placements land in one log."""

    def __init__(self, log: EventLog | None = None, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.log = log if log is not None else EventLog(clock=clock)
        self.requests = RequestStats()
        self.series = Series()

    async def run(self, read_stats: Callable[[], SchedulerStats]) -> None:
        """Forever: one sample per interval (node.py starts it in the node's nursery)."""
        while True:
            self.series.sample(self.clock(), trio.current_time(), read_stats(), self.requests)
            await trio.sleep(self.series.interval_s)
