"""Prometheus metrics of a node, read from its live state at scrape time.

Why a custom collector: the numbers already live in the scheduler core and the node's
counters; copying them into prometheus_client objects on every change would be a
second source of truth on the hot path. A collector reads them only when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from meshlb.node_context import NodeContext


class NodeCollector(Collector):
    """Counters and gauges of one node, labelled with its id."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        node = self.ctx.node_id
        requests = CounterMetricFamily(
            "meshlb_node_events", "Node request events by kind", labels=["node", "event"]
        )
        for event, count in sorted(self.ctx.counters.items()):
            requests.add_metric([node, event], count)
        yield requests
        mesh = CounterMetricFamily(
            "meshlb_mesh_tasks",
            "Async tasks moved or decided by the ownership protocol, by kind",
            labels=["node", "kind"],
        )
        for kind, count in sorted(self.ctx.tasks.mesh.stats().items()):
            mesh.add_metric([node, kind], count)
        yield mesh
        stats = self.ctx.scheduler.stats()
        for name, help_text in (
            ("queued", "Tasks waiting in the local queue"),
            ("running", "Tasks running on the local Ollama"),
        ):
            gauge = GaugeMetricFamily(f"meshlb_{name}", help_text, labels=["node"])
            gauge.add_metric([node], float(getattr(stats, name, 0)))
            yield gauge
        up = GaugeMetricFamily(
            "meshlb_ollama_up", "1 if the local Ollama answered lately", labels=["node"]
        )
        up.add_metric([node], 1.0 if self.ctx.catalog.reachable else 0.0)
        yield up


def node_registry(ctx: NodeContext) -> CollectorRegistry:
    """A registry of its own per node, so in-process test nodes do not collide."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(NodeCollector(ctx))
    return registry
