"""The composition root of a node: every part built once, in dependency order.

Why an order and not a context object filled in later: each part gets what it uses
at construction (narrow ports, `meshlb.api.ports`), nothing is assigned after, so a
part can never see a half-built node. The order, and why it is possible:

1. the local Ollama (backend, catalog), the scheduler, the journal, the counters,
   the event log and the request stats: they need nothing of the mesh;
2. `LocalStatus`, this node's own numbers (no moves yet: nothing has moved);
3. the gossip driver (built, not started), then `GossipMembers` over it;
4. the placement service over those members, and the mailer (peers' addresses);
5. the task service and, built by it, the ownership driver, which places through
   the placement service and sends through the mailer;
6. `MeshPeers` (what `/v1/peers` shows: this node's moves come from step 5);
7. the API's ports (`meshlb.node_api`).
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import httpx
import structlog
import trio

from meshlb.api.ports import Drain, NodeCounters
from meshlb.backend.catalog import ModelCatalog
from meshlb.backend.ollama import OllamaBackend
from meshlb.config import NodeSettings, parse_host_port
from meshlb.events import EventLog
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.driver import GossipDriver
from meshlb.mesh.announce import LocalStatus, local_moves
from meshlb.mesh.mailer import HttpTransport, PeerMailer
from meshlb.mesh.meta import NodeMeta, encode_meta
from meshlb.mesh.node_view import GossipMembers, MeshPeers
from meshlb.mesh.ownership import Ownership
from meshlb.mesh.ownership_driver import Executor, OwnershipConfig, OwnershipDriver, OwnershipPorts
from meshlb.mesh.peer_calls import PeerCalls
from meshlb.mesh.placement_service import PlacementService
from meshlb.sched.driver import LocalScheduler
from meshlb.sched.limits import Limits
from meshlb.tasks.journal import Journal
from meshlb.tasks.service import TaskService
from meshlb.tasks.store import TaskStore
from meshlb.telemetry import RequestStats, Series
from meshlb.tokens import RateAverage

log = structlog.get_logger()


def peer_client() -> httpx.AsyncClient:
    """The pooled client for node-to-node HTTP (lookups, fan-outs, ownership batches)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(None, connect=2.0),
        # keep-alive shorter than a node's 5 s idle close (http_server): a pooled
        # connection is never reused just as the peer closes it
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32, keepalive_expiry=2.0),
    )


class OwnershipFacts:
    """What the API and the drain read of the ownership protocol, in one place: the
    task routes (who is live, who holds a task), `/metrics` and `/v1/queue`. Built from
    the parts it reads (the core, its driver, the store of finished tasks), so no
    reader reaches through the task service to them."""

    def __init__(self, core: Ownership, driver: OwnershipDriver, store: TaskStore) -> None:
        self._core = core
        self._driver = driver
        self._store = store

    def is_live(self, node_id: str) -> bool:
        return node_id in self._core.live

    def holders(self, task_id: str) -> object:
        return self._core.holders(task_id)

    def in_quorum(self) -> bool:
        return self._core.in_quorum()

    def stats(self) -> dict[str, int]:
        return self._driver.stats()

    def owns_any(self) -> bool:
        return bool(self._core.owned())

    def task_states(self) -> list[str]:
        owned = [c.record.state for c in self._core.owned()]
        kept = [r.state for r in self._store.recent(None, 1 << 30) if r.final]
        return [s for s in owned if s in ("queued", "running")] + kept


@dataclass(frozen=True, slots=True)
class Readiness:
    """Why `/readyz` says not ready (empty when ready); the log says the same."""

    drain: Drain
    gossip: GossipDriver
    catalog: ModelCatalog
    ollama_url: str

    def not_ready_reasons(self) -> list[str]:
        reasons = []
        if self.drain.active:
            reasons.append("node is shutting down")
        if not self.gossip.joined:
            reasons.append("not joined to the mesh yet (no seed has answered)")
        if not self.catalog.reachable:
            reasons.append(f"the Ollama at {self.ollama_url} {self.catalog.last_error}")
        return reasons


@dataclass(frozen=True, slots=True)
class Node:
    """Every part of one running node (unstarted until `meshlb.node.run_node`)."""

    settings: NodeSettings
    backend: OllamaBackend
    catalog: ModelCatalog
    scheduler: LocalScheduler
    journal: Journal | None
    generation_rate: RateAverage
    counters: NodeCounters
    drain: Drain
    log: EventLog
    requests: RequestStats
    series: Series
    peer_client: httpx.AsyncClient
    local: LocalStatus
    gossip: GossipDriver
    members: GossipMembers
    placement: PlacementService
    peer_calls: PeerCalls  # forwarded requests in flight, ended when a peer dies
    mailer: PeerMailer
    tasks: TaskService
    facts: OwnershipFacts
    mesh: MeshPeers
    readiness: Readiness
    started_at_wall: float
    own_meta: Callable[[], NodeMeta]  # this node's metadata now, moves included

    @property
    def node_id(self) -> str:
        return self.settings.node_id

    def announce_now(self) -> None:
        """Gossip this node's metadata now (after a model operation changed it)."""
        self.gossip.update_meta(encode_meta(self.own_meta()))

    def mailer_counters(self) -> dict[str, int]:
        return {name: value for name, value in asdict(self.mailer.counters).items() if value}


def build_gossip(settings: NodeSettings, meta: NodeMeta) -> GossipDriver:
    """The gossip member of this node, advertising where peers can reach it."""
    host, port = settings.gossip_bind
    seeds = [parse_host_port(seed, default_host="127.0.0.1") for seed in settings.join]
    return GossipDriver(
        GossipConfig(),
        settings.node_id,
        (host, port),
        (settings.advertised_host(), port),
        seeds,
        encode_meta(meta),
        settings.cluster_key,
        log,
    )


def build_node(settings: NodeSettings) -> Node:
    """Every part of a node, unstarted, in the order the module docstring gives."""
    node_id = settings.node_id
    pool = (settings.max_concurrency or 16) + 4  # slots plus metadata calls
    backend = OllamaBackend(settings.ollama, pool_size=pool)
    catalog = ModelCatalog(backend, refresh_s=settings.models_refresh_s)
    limits = Limits(
        max_concurrency=settings.max_concurrency,
        rpm=settings.rpm,
        tpm=settings.tpm,
        max_queue=settings.max_queue,
        aging_s=settings.aging_s,
    )
    scheduler = LocalScheduler(limits)
    journal = Journal(settings.data_dir) if settings.data_dir is not None else None
    rate = RateAverage()  # the local Ollama's measured generation speed (gossiped)
    events = EventLog(node_id)
    client = peer_client()
    http_addr = f"{settings.advertised_host()}:{settings.http_bind[1]}"
    # The boot id is random per process start: peers tell a restart from a slow node by it.
    local = LocalStatus(
        node_id,
        http_addr,
        secrets.token_hex(4),
        scheduler,
        catalog,
        rate,
        residency=catalog.residency,
        memory_gb=settings.memory_gb,
    )
    gossip = build_gossip(settings, local.meta())
    members = GossipMembers(local, gossip, trio.current_time, time.time)
    placement = PlacementService(node_id, members, random.Random())
    transport = HttpTransport(client, members.address_of, settings.cluster_key)
    mailer = PeerMailer(node_id, local.boot, transport)
    config = OwnershipConfig(node_id, settings.replication, settings.dead_quorum_after_s)

    def ownership(executor: Executor) -> OwnershipDriver:
        return OwnershipDriver(config, OwnershipPorts(executor, placement, mailer, events))

    tasks = TaskService(
        node_id,
        scheduler,
        backend,
        journal,
        settings.task_retention_s,
        settings.default_num_predict,
        rate,
        mesh=ownership,
    )
    counters = NodeCounters()
    started_at_wall = time.time()

    def own_meta() -> NodeMeta:
        """What gossip carries: the live numbers and the work moved so far."""
        return local.meta(local_moves(counters.forwarded, tasks.mesh.moves()))

    drain = Drain()
    return Node(
        settings=settings,
        backend=backend,
        catalog=catalog,
        scheduler=scheduler,
        journal=journal,
        generation_rate=rate,
        counters=counters,
        drain=drain,
        log=events,
        requests=RequestStats(),
        series=Series(),
        peer_client=client,
        local=local,
        gossip=gossip,
        members=members,
        placement=placement,
        peer_calls=PeerCalls(),
        mailer=mailer,
        tasks=tasks,
        facts=OwnershipFacts(tasks.mesh.core, tasks.mesh, tasks.store),
        mesh=MeshPeers(members, own_meta, settings.gossip, started_at_wall),
        readiness=Readiness(drain, gossip, catalog, backend.base_url),
        started_at_wall=started_at_wall,
        own_meta=own_meta,
    )
