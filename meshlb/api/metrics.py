"""Prometheus metrics of a node, read from its live state at scrape time.

Why a custom collector: the numbers already live in the scheduler core, the ownership
driver, the gossip driver and the node's request stats and event log; copying them into
prometheus_client objects on every change would be a second source of truth on the
hot path. A collector reads them only when scraped. Every family carries a `node`
label (the node id), so one Grafana panel can split a mesh by node.

Families (SPEC.md "Mesh and node", plus what the alerts use): counters end in
`_total`, gauges never do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshlb.api.ports import NodeCounters, PeerTable
from meshlb.events import PLACEMENT_DECISIONS, EventLog
from meshlb.sched.driver import LocalScheduler
from meshlb.telemetry import Histogram, RequestStats

TASK_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
MEMBER_STATES = ("alive", "suspect", "dead", "left")
TOKEN_KINDS = ("prompt", "completion")
# Label for a request no route matched (a 404 for an unknown path): one series for all
# of them, so a scanner cannot blow up the label set.
UNMATCHED_ROUTE = "unmatched"


class TaskFacts(Protocol):
    """What the metrics and `/v1/queue` read of the async tasks and their ownership."""

    def in_quorum(self) -> bool: ...

    def stats(self) -> dict[str, int]:
        """Tasks moved or decided by the ownership protocol, by kind."""
        ...

    def task_states(self) -> list[str]:
        """One state per task: the queued/running ones owned here, the final ones kept."""
        ...


@dataclass(frozen=True, slots=True)
class MetricsPorts:
    """What `/metrics` reads of the node, at scrape time."""

    node_id: str
    requests: RequestStats
    log: EventLog
    gossip_drops: Callable[[], Mapping[str, int]]
    mesh: PeerTable
    scheduler: LocalScheduler
    ollama_up: Callable[[], bool]
    tasks: TaskFacts
    counters: NodeCounters


async def run_counted(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    counts: Counter[tuple[str, str]],
    route_of: Callable[[], str],
) -> None:
    """Run `app` and count `(route, status sent)` in `counts` when it ends, even by an
    error ("none" when no answer began). Shared by Starlette's routes and the fast path."""
    status = 0

    async def watch(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, receive, watch)
    finally:
        counts[(route_of(), str(status) if status else "none")] += 1


def count_requests(requests: RequestStats, app: ASGIApp) -> ASGIApp:
    """ASGI wrapper: `meshlb_requests_total{route,status}` for every HTTP request.

    The route label is the matched route's template (`/v1/tasks/{task_id}`), read
    from the scope Starlette's router fills in; the status is the one sent."""
    counts = requests.http

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        def route_of() -> str:
            return getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE

        await run_counted(app, scope, receive, send, counts, route_of)

    return counted


def _histogram(
    name: str, doc: str, node: str, family: Mapping[str, Histogram]
) -> HistogramMetricFamily:
    metric = HistogramMetricFamily(name, doc, labels=["node", "model"])
    for model, h in sorted(family.items()):
        metric.add_metric([node, model], h.cumulative(), h.sum)
    return metric


def _gauge(name: str, doc: str, node: str, value: float) -> GaugeMetricFamily:
    metric = GaugeMetricFamily(name, doc, labels=["node"])
    metric.add_metric([node], value)
    return metric


def _counter(
    name: str, doc: str, node: str, label: str, values: Iterable[tuple[str, float]]
) -> CounterMetricFamily:
    metric = CounterMetricFamily(name, doc, labels=["node", label])
    for key, value in values:
        metric.add_metric([node, key], value)
    return metric


class NodeCollector(Collector):
    """Counters, gauges and histograms of one node, labelled with its id."""

    def __init__(self, ctx: MetricsPorts) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx, node = self.ctx, self.ctx.node_id
        req = ctx.requests
        http = CounterMetricFamily(
            "meshlb_requests",
            "HTTP requests this node answered, by route template and status "
            "(a forwarded request counts on both nodes)",
            labels=["node", "route", "status"],
        )
        for (route, status), count in sorted(req.http.items()):
            http.add_metric([node, route, status], count)
        yield http
        yield _histogram(
            "meshlb_queue_wait_seconds",
            "Time a locally run request waited in the queue for its slot",
            node,
            req.queue_wait,
        )
        yield _histogram(
            "meshlb_time_to_first_token_seconds",
            "From a locally run request's arrival to its first answer byte (queue included)",
            node,
            req.ttft,
        )
        yield _histogram(
            "meshlb_request_duration_seconds",
            "From a locally run request's arrival to its last answer byte",
            node,
            req.duration,
        )
        yield _counter(
            "meshlb_tokens",
            "Tokens of locally run requests as Ollama counted them (prompt, completion)",
            node,
            "kind",
            ((k, req.tokens[k]) for k in TOKEN_KINDS),
        )
        yield _counter(
            "meshlb_model_loads",
            "Answers whose load_duration shows a cold model load (over 100 ms)",
            node,
            "model",
            sorted(req.model_loads.items()),
        )
        decisions = ctx.log.decisions
        yield _counter(
            "meshlb_placements",
            "Where work went: run here (local), sent to a peer (forwarded), "
            "stolen from a busy peer, taken over from a dead one",
            node,
            "decision",
            ((d, decisions[d]) for d in PLACEMENT_DECISIONS),
        )
        yield _counter(
            "meshlb_gossip_packets_dropped",
            "Gossip datagrams/streams dropped (malformed, failed authentication, replay...)",
            node,
            "reason",
            sorted(ctx.gossip_drops().items()),
        )
        yield from self._gauges(node)
        yield from self._legacy(node)

    def _gauges(self, node: str) -> Iterator[Metric]:
        ctx = self.ctx
        tasks = GaugeMetricFamily(
            "meshlb_tasks",
            "Async tasks: queued/running ones this node owns, final ones it retains",
            labels=["node", "state"],
        )
        counts = dict.fromkeys(TASK_STATES, 0) | Counter(ctx.tasks.task_states())
        for state, count in counts.items():
            tasks.add_metric([node, state], count)
        yield tasks
        members = GaugeMetricFamily(
            "meshlb_members",
            "Mesh members by state, as this node sees them",
            labels=["node", "state"],
        )
        by_state = Counter(p.state for p in ctx.mesh.peers())
        for state in MEMBER_STATES:
            members.add_metric([node, state], by_state[state])
        yield members
        stats = ctx.scheduler.stats()
        yield _gauge(
            "meshlb_ollama_up",
            "1 if the local Ollama answered lately",
            node,
            1.0 if ctx.ollama_up() else 0.0,
        )
        yield _gauge(
            "meshlb_quorum",
            "1 while this node sees a majority of the mesh healthy (take-overs allowed)",
            node,
            1.0 if ctx.tasks.in_quorum() else 0.0,
        )
        yield _gauge("meshlb_queue_depth", "Requests and tasks queued here", node, stats.queued)
        yield _gauge(
            "meshlb_queue_max",
            "Queue capacity of this node (--max-queue)",
            node,
            float(stats.limits.max_queue),
        )

    def _legacy(self, node: str) -> Iterator[Metric]:
        """Families that predate SPEC's list (kept: dashboards and tests read them)."""
        ctx = self.ctx
        yield _counter(
            "meshlb_node_events",
            "Node request events by kind",
            node,
            "event",
            sorted(ctx.counters.nonzero().items()),
        )
        yield _counter(
            "meshlb_mesh_tasks",
            "Async tasks moved or decided by the ownership protocol, by kind",
            node,
            "kind",
            sorted(ctx.tasks.stats().items()),
        )
        stats = ctx.scheduler.stats()
        yield _gauge("meshlb_queued", "Tasks waiting in the local queue", node, stats.queued)
        yield _gauge("meshlb_running", "Tasks running on the local Ollama", node, stats.running)


def node_registry(ctx: MetricsPorts) -> CollectorRegistry:
    """A registry of its own per node, so in-process test nodes do not collide."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(NodeCollector(ctx))
    return registry
