"""What a node measures of its requests, for `/metrics` and the dashboard's charts.

Two bounded parts, all in memory and all cheap to feed:

- `RequestStats`: what the relay observes per local request (queue wait, time to
  first token, duration, tokens, cold model loads) as fixed-bucket histograms; one
  `RequestTimer` per request, a few attribute writes and a `bisect` per observation
  (the relay is the hot path: no prometheus_client objects, no locks).
- `Series`: one sample of this node every `SAMPLE_INTERVAL_S` (requests/s, queue
  depth, running, TTFT p50/p99 over the interval, tokens/s), kept `WINDOW_S`.

Times: `t` is wall-clock seconds; durations use the Trio clock through `monotonic`.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from meshlb.model_names import canonical_model
from meshlb.sched.stats import SchedulerStats, percentile

SAMPLE_INTERVAL_S = 2.0
WINDOW_S = 15 * 60.0
# A response whose load_duration exceeds this loaded its model cold.
COLD_LOAD_S = 0.1

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


async def sample_forever(
    series: Series,
    requests: RequestStats,
    read_stats: Callable[[], SchedulerStats],
    wall_clock: Callable[[], float] = time.time,
) -> None:
    """Forever: one sample per interval (node.py starts it in the node's nursery)."""
    while True:
        series.sample(wall_clock(), trio.current_time(), read_stats(), requests)
        await trio.sleep(series.interval_s)
