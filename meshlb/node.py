"""The composition root of a node: build the parts, wire them, run until told to stop.

Stopping (SIGINT/SIGTERM) is graceful: the node stops taking work (readyz turns 503,
new requests get 503 with Retry-After so clients go elsewhere), lets running work
finish for a bounded time, then exits 0.
"""

from __future__ import annotations

import signal

import structlog
import trio

from meshlb.advertise import resolve_advertise
from meshlb.api.app import build_app
from meshlb.backend.catalog import ModelCatalog
from meshlb.backend.ollama import OllamaBackend
from meshlb.config import NodeSettings, parse_host_port
from meshlb.events import EventLog, Telemetry
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.driver import GossipDriver
from meshlb.http_server import serve_app
from meshlb.mesh.announce import announce_loop, local_meta
from meshlb.mesh.mailer import HttpTransport, PeerMailer
from meshlb.mesh.meta import encode_meta
from meshlb.mesh.node_view import NodeMeshView
from meshlb.mesh.ownership_driver import (
    Executor,
    OwnershipConfig,
    OwnershipDriver,
    OwnershipPorts,
    ViewPlacer,
)
from meshlb.mesh.ownership_wire import NetworkCommand
from meshlb.mesh.placement import Candidate
from meshlb.node_context import NodeContext
from meshlb.ports import check_ports_free
from meshlb.sched.driver import LocalScheduler
from meshlb.sched.limits import Limits
from meshlb.tasks.journal import Journal
from meshlb.tasks.service import TaskService
from meshlb.tokens import RateAverage

log = structlog.get_logger()
DRAIN_TIMEOUT_S = 30.0
# A restarted node recovers its journal once it has joined (or after this long alone).
JOIN_WAIT_S = 5.0


def build_context(settings: NodeSettings) -> NodeContext:
    """Every part of a node, unstarted."""
    pool = (settings.max_concurrency or 16) + 4  # slots plus metadata calls
    backend = OllamaBackend(settings.ollama, pool_size=pool)
    limits = Limits(
        max_concurrency=settings.max_concurrency,
        rpm=settings.rpm,
        tpm=settings.tpm,
        max_queue=settings.max_queue,
        aging_s=settings.aging_s,
    )
    scheduler = LocalScheduler(limits)
    journal = Journal(settings.data_dir) if settings.data_dir is not None else None
    rate = RateAverage()
    later = _Later()
    config = OwnershipConfig(settings.node_id, settings.replication, settings.dead_quorum_after_s)
    events = EventLog(settings.node_id)

    def ownership(executor: Executor) -> OwnershipDriver:
        ports = OwnershipPorts(executor, later, later, later, events)
        return OwnershipDriver(config, ports)

    tasks = TaskService(
        settings.node_id,
        scheduler,
        backend,
        journal,
        settings.task_retention_s,
        settings.default_num_predict,
        rate,
        mesh=ownership,
    )
    later.ctx = ctx = NodeContext(
        settings=settings,
        backend=backend,
        catalog=ModelCatalog(backend, refresh_s=settings.models_refresh_s),
        scheduler=scheduler,
        tasks=tasks,
        generation_rate=rate,
        telemetry=Telemetry(tasks.mesh.events),
    )
    return ctx


class _Later:
    """The ownership driver's view, placer and outbox, read from the context built
    just after the task service (the service and its driver refer to each other, and
    the mailer starts with the node). The composition root's one forward reference."""

    ctx: NodeContext

    def local_candidate(self) -> Candidate:
        return self.ctx.placement.local_candidate()

    def peer_candidates(self) -> list[Candidate]:
        return self.ctx.placement.peer_candidates()

    def choose(self, model: str, est_tokens: int, *, here: bool) -> str | None:
        return ViewPlacer(self.ctx.placement, self.ctx.rng).choose(model, est_tokens, here=here)

    def send(self, cmd: NetworkCommand) -> None:
        if self.ctx.mailer is not None:
            self.ctx.mailer.send(cmd)


def build_gossip(ctx: NodeContext) -> GossipDriver:
    """The gossip member of this node, advertising where peers can reach it."""
    settings = ctx.settings
    host, port = settings.gossip_bind
    seeds = [parse_host_port(seed, default_host="127.0.0.1") for seed in settings.join]
    return GossipDriver(
        GossipConfig(),
        settings.node_id,
        (host, port),
        (settings.advertised_host(), port),
        seeds,
        encode_meta(local_meta(ctx)),
        settings.cluster_key,
        log,
    )


async def log_queue_stats(ctx: NodeContext, interval_s: float = 5.0) -> None:
    """Log the queue's numbers every interval in which they changed (not when idle)."""
    last: tuple[object, ...] = ()
    while True:
        await trio.sleep(interval_s)
        s = ctx.scheduler.stats()
        key = (s.queued, s.running, s.counters, s.effective_concurrency)
        if key == last:
            continue
        last = key
        log.info(
            "queue stats",
            queued=s.queued,
            running=s.running,
            depth_by_priority=s.depth_by_priority,
            effective_concurrency=s.effective_concurrency,
            rpm_used=s.rpm_used,
            tpm_used=s.tpm_used,
            wait_p50_ms=s.wait.p50_ms,
            wait_p99_ms=s.wait.p99_ms,
            started=s.counters.started,
            finished=s.counters.finished,
            rejected=s.counters.rejected,
        )


async def log_readiness(ctx: NodeContext, interval_s: float = 0.5) -> None:
    """Log "node ready" when /readyz would say so, and every change after: the log
    says what is true (not ready while the local Ollama is down or no seed answered)."""
    last: tuple[str, ...] | None = None
    url = f"http://{ctx.settings.advertised_host()}:{ctx.settings.http_bind[1]}"
    while True:
        reasons = tuple(ctx.not_ready_reasons())
        if reasons != last:
            if reasons:
                log.warning("node not ready", node=ctx.node_id, url=url, reasons=list(reasons))
            else:
                log.info("node ready", node=ctx.node_id, url=url)
            last = reasons
        await trio.sleep(interval_s)


async def join_then_recover(ctx: NodeContext, gossip: GossipDriver) -> None:
    """Recover the journal once joined, so peers that took over our tasks can tell us."""
    with trio.move_on_after(JOIN_WAIT_S):
        while not gossip.joined:  # noqa: ASYNC110 - gossip has no "joined" event to wait on
            await trio.sleep(0.1)
    ctx.tasks.recover()


async def drain(ctx: NodeContext, timeout_s: float) -> None:
    """Wait (bounded) until nothing is queued, running or being handed over here."""
    with trio.move_on_after(timeout_s):
        while True:
            stats = ctx.scheduler.stats()
            if stats.queued == 0 and stats.running == 0 and not ctx.tasks.mesh.core.owned():
                return
            await trio.sleep(0.1)
    log.warning("drain timed out; stopping with work in flight", timeout_s=timeout_s)


async def run_node(
    settings: NodeSettings, *, task_status: trio.TaskStatus[NodeContext] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run one node until SIGINT/SIGTERM (or cancellation), then leave gracefully.

    Raises `PortInUse` (one sentence) before starting anything if a port is taken."""
    check_ports_free(settings.http_bind, settings.gossip_bind)
    advertised = resolve_advertise(settings)
    settings = settings.model_copy(update={"advertise": advertised.host})
    log.info("advertising address", address=advertised.host, how=advertised.how)
    if advertised.warning:
        log.warning(advertised.warning)
    ctx = build_context(settings)
    host, port = settings.http_bind
    shutdown = trio.Event()
    if settings.data_dir is None:
        log.warning(
            "no --data-dir: async tasks live in memory here and on their replicas; "
            "a restart of every node at once would lose them"
        )
    log.info(
        "node starting",
        node=ctx.node_id,
        http=f"{host}:{port}",
        ollama=settings.ollama,
        max_concurrency=settings.max_concurrency,
        rpm=settings.rpm,
        tpm=settings.tpm,
        journal=str(settings.data_dir) if settings.data_dir else "memory only",
    )
    try:
        async with trio.open_nursery() as nursery:
            await ctx.catalog.refresh()
            nursery.start_soon(ctx.catalog.run)
            nursery.start_soon(ctx.scheduler.run)
            await nursery.start(ctx.tasks.run)
            nursery.start_soon(log_queue_stats, ctx)
            nursery.start_soon(ctx.telemetry.run, ctx.scheduler.stats)
            gossip = build_gossip(ctx)
            membership_events = gossip.subscribe()
            await nursery.start(gossip.run)
            ctx.gossip = gossip
            nursery.start_soon(announce_loop, ctx, gossip)
            view = NodeMeshView(ctx)
            transport = HttpTransport(ctx.peer_client, view.address_of, settings.cluster_key)
            mailer = PeerMailer(ctx.node_id, ctx.boot, transport)
            await nursery.start(mailer.run)
            ctx.mailer = mailer
            nursery.start_soon(ctx.tasks.mesh.follow_gossip, membership_events)
            await nursery.start(serve_app, build_app(ctx), host, port, shutdown)
            nursery.start_soon(join_then_recover, ctx, gossip)
            log.info("node listening", node=ctx.node_id, http=f"{host}:{port}")
            nursery.start_soon(log_readiness, ctx)
            task_status.started(ctx)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("stopping", node=ctx.node_id, signal=signal.Signals(signum).name)
                    break
            ctx.draining = True
            offered = ctx.tasks.mesh.offer_queued_to_peers()
            if offered:
                log.info("queued tasks offered to peers before leaving", count=offered)
            await drain(ctx, DRAIN_TIMEOUT_S)
            await gossip.leave()
            shutdown.set()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await ctx.backend.aclose()
            await ctx.peer_client.aclose()
        if ctx.tasks.journal is not None:
            ctx.tasks.journal.close()
    log.info("node stopped", node=ctx.node_id)
