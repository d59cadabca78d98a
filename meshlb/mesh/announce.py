"""What this node tells the mesh about itself, and when.

The local metadata (HTTP address, models, load) is rebuilt once per interval and
handed to gossip only when its bytes changed: each update bumps this node's
incarnation and is piggybacked to every member, so unchanged numbers cost nothing.
"""

from __future__ import annotations

from typing import Protocol

import structlog
import trio

from meshlb.mesh.meta import Load, Moves, NodeMeta, encode_meta
from meshlb.node_context import NodeContext

ANNOUNCE_INTERVAL_S = 1.0
log = structlog.get_logger()


class MetaSink(Protocol):
    def update_meta(self, meta: bytes) -> None: ...


def local_meta(ctx: NodeContext) -> NodeMeta:
    """This node's metadata right now."""
    stats = ctx.scheduler.stats()
    limits = stats.limits
    return NodeMeta(
        http_addr=f"{ctx.settings.advertised_host()}:{ctx.settings.http_bind[1]}",
        models=tuple(ctx.catalog.names),
        ollama_up=ctx.catalog.reachable,
        load=Load(
            queued=stats.queued,
            running=stats.running,
            max_concurrency=stats.effective_concurrency,
            rpm_used=stats.rpm_used,
            rpm_limit=limits.rpm,
            tpm_used=stats.tpm_used,
            tpm_limit=limits.tpm,
            tokens_per_s=ctx.generation_rate.value,
        ),
        boot=ctx.boot,
        moves=local_moves(ctx),
    )


def local_moves(ctx: NodeContext) -> Moves:
    forwarded, stolen, taken_over, duplicates = ctx.tasks.mesh.moves()
    return Moves(ctx.counters["forwarded"] + forwarded, stolen, taken_over, duplicates)


async def announce_loop(
    ctx: NodeContext, sink: MetaSink, interval_s: float = ANNOUNCE_INTERVAL_S
) -> None:
    """Forever: push changed metadata to gossip at most once per interval.

    A round that fails (a figure that cannot be encoded) is logged and skipped: the
    announcer must never take the node down with it."""
    last = b""
    while True:
        try:
            data = encode_meta(local_meta(ctx))
        except Exception as e:  # one bad round must not kill the node
            log.error("node metadata could not be encoded; round skipped", error=repr(e))
        else:
            if data != last:
                sink.update_meta(data)
                last = data
        await trio.sleep(interval_s)
