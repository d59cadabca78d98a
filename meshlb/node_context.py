"""What every HTTP handler of a node may use: settings, backend, scheduler, counters.

Why one object: node.py builds the parts once and hands this to the app; handlers
never construct clients or read globals, so tests can assemble a node in-process.
"""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

import httpx

from meshlb.backend.catalog import ModelCatalog
from meshlb.backend.ollama import OllamaBackend
from meshlb.config import NodeSettings
from meshlb.events import Telemetry
from meshlb.mesh.auth import ReplayGuard
from meshlb.mesh.candidates import RecentlySent
from meshlb.mesh.mailer import PeerMailer
from meshlb.mesh.placement_service import PlacementService
from meshlb.mesh.view import MembershipSource
from meshlb.sched.driver import LocalScheduler
from meshlb.tasks.model import new_task_id
from meshlb.tasks.service import TaskService
from meshlb.tokens import RateAverage

__all__ = ["NodeContext", "new_task_id"]


@dataclass
class NodeContext:
    """The parts of one running node, wired by node.py."""

    settings: NodeSettings
    backend: OllamaBackend
    catalog: ModelCatalog
    scheduler: LocalScheduler
    tasks: TaskService
    started_at_wall: float = field(default_factory=time.time)
    counters: Counter[str] = field(default_factory=Counter)
    # Measured generation speed of the local Ollama (gossiped for placement).
    generation_rate: RateAverage = field(default_factory=RateAverage)
    # Placement's coin (power of two choices) and the client for node-to-node HTTP.
    rng: random.Random = field(default_factory=random.Random)
    peer_client: httpx.AsyncClient = field(
        default_factory=lambda: httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=2.0),
            # keep-alive shorter than a node's 5 s idle close (http_server): a pooled
            # connection is never reused just as the peer closes it
            limits=httpx.Limits(
                max_connections=64, max_keepalive_connections=32, keepalive_expiry=2.0
            ),
        )
    )
    # Work sent to each peer since its gossiped load last changed (anti-herding).
    recently_sent: RecentlySent = field(default_factory=RecentlySent)
    # Gossip membership (None until started, or in single-node tests).
    gossip: MembershipSource | None = None
    # Outbound ownership messages (None until started, or in single-node tests).
    mailer: PeerMailer | None = None
    # Random per process start, gossiped: peers tell a restart from a slow node by it.
    boot: str = field(default_factory=lambda: secrets.token_hex(4))
    # Signatures of node-to-node requests seen lately: each is accepted once.
    replay_guard: ReplayGuard = field(default_factory=ReplayGuard)
    # Set on SIGTERM: new work is refused with 503 while queued work finishes or moves.
    draining: bool = False
    # Recent events, request histograms and the sampled series (dashboard, /metrics).
    telemetry: Telemetry = field(default_factory=Telemetry)

    @cached_property
    def placement(self) -> PlacementService:
        """Where work runs, over this node's gossip view (built on first use)."""
        from meshlb.mesh.node_view import NodeMeshView

        return PlacementService(self.node_id, NodeMeshView(self), self.rng, self.recently_sent)

    @property
    def node_id(self) -> str:
        return self.settings.node_id

    def gossip_drops(self) -> dict[str, int]:
        """Gossip packets dropped by reason (malformed, auth_failed, replay, …)."""
        return {} if self.gossip is None else dict(self.gossip.dropped)

    def not_ready_reasons(self) -> list[str]:
        """Why `/readyz` says not ready (empty when ready); the log says the same."""
        reasons = []
        if self.draining:
            reasons.append("node is shutting down")
        if self.gossip is None or not self.gossip.joined:
            reasons.append("not joined to the mesh yet (no seed has answered)")
        if not self.catalog.reachable:
            reasons.append(f"the Ollama at {self.backend.base_url} {self.catalog.last_error}")
        return reasons
