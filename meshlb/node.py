"""Run a node: build its parts (`meshlb.node_build`), start them, stop gracefully.

Stopping (SIGINT/SIGTERM) is graceful: the node stops taking work (readyz turns 503,
new requests get 503 with Retry-After so clients go elsewhere), lets running work
finish for a bounded time, then exits 0.
"""

from __future__ import annotations

import gc
import signal

import structlog
import trio

from meshlb.advertise import resolve_advertise
from meshlb.api.app import build_app
from meshlb.config import NodeSettings
from meshlb.http_server import serve_app
from meshlb.mesh.announce import ANNOUNCE_INTERVAL_S, announce_loop
from meshlb.mesh.meta import encode_meta
from meshlb.node_api import api_parts
from meshlb.node_build import Node, build_node
from meshlb.ports import check_ports_free
from meshlb.telemetry import sample_forever

log = structlog.get_logger()
DRAIN_TIMEOUT_S = 30.0
# A restarted node recovers its journal once it has joined (or after this long alone).
JOIN_WAIT_S = 5.0


async def log_queue_stats(node: Node, interval_s: float = 5.0) -> None:
    """Log the queue's numbers every interval in which they changed (not when idle)."""
    last: tuple[object, ...] = ()
    while True:
        await trio.sleep(interval_s)
        s = node.scheduler.stats()
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


async def log_readiness(node: Node, interval_s: float = 0.5) -> None:
    """Log "node ready" when /readyz would say so, and every change after: the log
    says what is true (not ready while the local Ollama is down or no seed answered)."""
    last: tuple[str, ...] | None = None
    url = f"http://{node.settings.advertised_host()}:{node.settings.http_bind[1]}"
    while True:
        reasons = tuple(node.readiness.not_ready_reasons())
        if reasons != last:
            if reasons:
                log.warning("node not ready", node=node.node_id, url=url, reasons=list(reasons))
            else:
                log.info("node ready", node=node.node_id, url=url)
            last = reasons
        await trio.sleep(interval_s)


async def join_then_recover(node: Node) -> None:
    """Recover the journal once joined, so peers that took over our tasks can tell us."""
    with trio.move_on_after(JOIN_WAIT_S):
        while not node.gossip.joined:  # noqa: ASYNC110 - gossip has no "joined" event
            await trio.sleep(0.1)
    node.tasks.recover()


async def drain(node: Node, timeout_s: float) -> None:
    """Wait (bounded) until nothing is queued, running or being handed over here."""
    with trio.move_on_after(timeout_s):
        while True:
            stats = node.scheduler.stats()
            if stats.queued == 0 and stats.running == 0 and not node.facts.owns_any():
                return
            await trio.sleep(0.1)
    log.warning("drain timed out; stopping with work in flight", timeout_s=timeout_s)


async def run_node(
    settings: NodeSettings, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run one node until SIGINT/SIGTERM (or cancellation), then leave gracefully.

    Raises `PortInUse` (one sentence) before starting anything if a port is taken."""
    check_ports_free(settings.http_bind, settings.gossip_bind)
    advertised = resolve_advertise(settings)
    settings = settings.model_copy(update={"advertise": advertised.host})
    log.info("advertising address", address=advertised.host, how=advertised.how)
    if advertised.warning:
        log.warning(advertised.warning)
    node = build_node(settings)
    # Everything alive now (modules, the built node) lives as long as the process:
    # moved out of the collector's view, a full collection no longer walks it, which
    # took 14-52 ms pauses under load (issue 13's tail latency).
    gc.collect()
    gc.freeze()
    host, port = settings.http_bind
    shutdown = trio.Event()
    if settings.data_dir is None:
        log.warning(
            "no --data-dir: async tasks live in memory here and on their replicas; "
            "a restart of every node at once would lose them"
        )
    log.info(
        "node starting",
        node=node.node_id,
        http=f"{host}:{port}",
        ollama=settings.ollama,
        max_concurrency=settings.max_concurrency,
        rpm=settings.rpm,
        tpm=settings.tpm,
        journal=str(settings.data_dir) if settings.data_dir else "memory only",
    )
    try:
        async with trio.open_nursery() as nursery:
            await node.catalog.refresh()
            # The first gossiped metadata lists the models just read.
            node.gossip.update_meta(encode_meta(node.own_meta()))
            nursery.start_soon(node.catalog.run)
            nursery.start_soon(node.catalog.residency.run)  # /api/ps, for gossip
            nursery.start_soon(node.scheduler.run)
            await nursery.start(node.mailer.run)
            await nursery.start(node.tasks.run)
            nursery.start_soon(log_queue_stats, node)
            nursery.start_soon(sample_forever, node.series, node.requests, node.scheduler.stats)
            membership_events = node.gossip.subscribe()
            await nursery.start(node.gossip.run)
            nursery.start_soon(
                announce_loop,
                node.own_meta,
                node.gossip,
                ANNOUNCE_INTERVAL_S,
                node.catalog.residency.changed,
            )
            nursery.start_soon(node.tasks.mesh.follow_gossip, membership_events)
            nursery.start_soon(node.peer_calls.follow_gossip, node.gossip.subscribe())
            await nursery.start(serve_app, build_app(api_parts(node)), host, port, shutdown)
            nursery.start_soon(join_then_recover, node)
            log.info("node listening", node=node.node_id, http=f"{host}:{port}")
            nursery.start_soon(log_readiness, node)
            task_status.started(node)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("stopping", node=node.node_id, signal=signal.Signals(signum).name)
                    break
            node.drain.start()
            offered = node.tasks.mesh.offer_queued_to_peers()
            if offered:
                log.info("queued tasks offered to peers before leaving", count=offered)
            await drain(node, DRAIN_TIMEOUT_S)
            await node.gossip.leave()
            shutdown.set()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await node.backend.aclose()
            await node.peer_client.aclose()
        if node.journal is not None:
            node.journal.close()
    log.info("node stopped", node=node.node_id)
