"""The live dashboard (`GET /` from a browser) and the JSON it reads beyond SPEC's own.

The page is three package files (`meshlb/api/static/`: HTML, CSS, vanilla JS with
inline SVG charts): no build step, nothing fetched from the internet. It polls
endpoints of the node that served it only:

- `/v1/peers` (gossip's view: state, Ollama up, models, gossiped load), `/v1/tasks`;
- `GET /v1/series` and `GET /v1/events`, defined here; both are mesh-wide by default:
  the serving node asks its alive peers (`?local=1`, never further) and merges.

Why through the serving node and not each peer's `http_addr` from the browser: the
addresses peers advertise are the ones nodes reach each other on (a private or
cluster network the operator's browser may not reach), a cross-origin fetch would
need CORS on every node, and "the dashboard works from any node you can reach" is
the operator's promise. The cost is one fan-out per poll, bounded by the lookup
timeout, with incremental `since=` so a poll carries only the new samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import trio

from meshlb.api.ports import Drain, PeerLink, PeerTable
from meshlb.backend.catalog import ModelCatalog
from meshlb.backend.ollama import BackendError, OllamaBackend
from meshlb.events import EventLog
from meshlb.mesh.lookup import gather_from_peers
from meshlb.sched.driver import LocalScheduler
from meshlb.telemetry import SERIES_FIELDS, Series
from meshlb.tokens import RateAverage

# The package files the page is made of, by the name it requests them under.
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
MAX_EVENTS = 500
# How long the list of models loaded in Ollama (/api/ps) is reused between polls.
LOADED_CACHE_S = 5.0
# Membership events every node sees alike: shown as the serving node saw them only.
MEMBERSHIP_KINDS = frozenset({"alive", "rejoined", "suspect", "refuted", "dead", "left"})


def asset(name: str) -> bytes:
    """One file of `meshlb/api/static/` (package data)."""
    return (resources.files("meshlb.api") / "static" / name).read_bytes()


@dataclass(frozen=True, slots=True)
class DashboardPorts:
    """What the dashboard's JSON reads of the node."""

    node_id: str
    catalog: ModelCatalog
    backend: OllamaBackend  # /api/ps: the models loaded now
    scheduler: LocalScheduler
    generation_rate: RateAverage
    drain: Drain
    series: Series
    log: EventLog
    mesh: PeerTable
    link: PeerLink
    wall_clock: Callable[[], float] = time.time


class DashboardData:
    """Builds the `/v1/series` and `/v1/events` answers of one node."""

    def __init__(self, ctx: DashboardPorts) -> None:
        self.ctx = ctx
        self._loaded: tuple[float, list[str]] = (-1e9, [])

    async def loaded_models(self) -> list[str]:
        """Models the local Ollama has in memory (`/api/ps`), cached a few seconds."""
        at, names = self._loaded
        now = trio.current_time()
        if now - at < LOADED_CACHE_S:
            return names
        names = []
        if self.ctx.catalog.reachable:
            try:
                doc = await self.ctx.backend.get_json("/api/ps")
                names = [str(m.get("name")) for m in doc.get("models") or [] if isinstance(m, dict)]
            except BackendError:
                names = []
        self._loaded = (now, names)
        return names

    async def status(self) -> dict[str, Any]:
        """This node's numbers right now (what gossip does not carry, and fresher)."""
        ctx = self.ctx
        s = ctx.scheduler.stats()
        return {
            "ollama_up": ctx.catalog.reachable,
            "models": list(ctx.catalog.names),
            "loaded": await self.loaded_models(),
            "queued": s.queued,
            "running": s.running,
            "depth_by_priority": {str(k): v for k, v in sorted(s.depth_by_priority.items())},
            "max_concurrency": s.effective_concurrency,
            "max_queue": s.limits.max_queue,
            "rpm_used": s.rpm_used,
            "rpm_limit": s.limits.rpm,
            "tpm_used": s.tpm_used,
            "tpm_limit": s.limits.tpm,
            "tokens_per_s": round(ctx.generation_rate.value, 1),
            "wait_p50_ms": round(s.wait.p50_ms, 1),
            "wait_p99_ms": round(s.wait.p99_ms, 1),
            "draining": ctx.drain.active,
        }

    async def local_series(self, since: float) -> dict[str, Any]:
        series = self.ctx.series
        return {
            "node": self.ctx.node_id,
            "now": self.ctx.wall_clock(),
            "interval_s": series.interval_s,
            "window_s": series.window_s,
            "fields": list(SERIES_FIELDS),
            "samples": series.since(since),
            "status": await self.status(),
        }

    async def series(self, since: float, local_only: bool) -> dict[str, Any]:
        """`GET /v1/series`: this node's samples after `since` (wall clock), or every
        alive node's, keyed by node id."""
        mine = await self.local_series(since)
        if local_only:
            return mine
        urls = self.ctx.mesh.alive_peer_urls()
        answers = await gather_from_peers(
            self.ctx.link.client, urls, "/v1/series", {"since": repr(since)}
        )
        nodes = {mine["node"]: mine}
        for a in answers:
            if isinstance(a.get("node"), str) and isinstance(a.get("samples"), list):
                nodes.setdefault(a["node"], a)
        return {
            "node": self.ctx.node_id,
            "now": mine["now"],
            "fields": mine["fields"],
            "interval_s": mine["interval_s"],
            "window_s": mine["window_s"],
            "asked": 1 + len(urls),
            "nodes": nodes,
        }

    def local_events(self, limit: int) -> dict[str, Any]:
        recent = self.ctx.log.recent(limit)
        node = self.ctx.node_id
        for rows in recent.values():
            for row in rows:
                row["reporter"] = node
        return {"node": node, "now": self.ctx.wall_clock(), **recent}

    async def events(self, limit: int, local_only: bool) -> dict[str, Any]:
        """`GET /v1/events`: placements (newest first) of every alive node, and the
        membership/failover events: membership as this node saw it, take-overs and
        quorum changes as each node reported them."""
        mine = self.local_events(limit)
        if local_only:
            return mine
        urls = self.ctx.mesh.alive_peer_urls()
        answers = await gather_from_peers(
            self.ctx.link.client, urls, "/v1/events", {"limit": str(limit)}
        )
        placements = list(mine["placements"])
        mesh = list(mine["mesh"])
        for a in answers:
            placements += [p for p in a.get("placements") or [] if isinstance(p, dict)]
            mesh += [
                e
                for e in a.get("mesh") or []
                if isinstance(e, dict) and e.get("kind") not in MEMBERSHIP_KINDS
            ]

        def newest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            rows.sort(key=lambda r: float(r.get("at") or 0), reverse=True)
            return rows[:limit]

        return {
            "node": mine["node"],
            "now": mine["now"],
            "asked": 1 + len(urls),
            "answered": 1 + len(answers),
            "placements": newest(placements),
            "mesh": newest(mesh),
        }
