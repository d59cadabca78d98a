"""What this node tells the mesh about itself, and when.

The local metadata (HTTP address, models, load) is rebuilt once per interval and
handed to gossip only when its bytes changed: each update bumps this node's
incarnation and is piggybacked to every member, so unchanged numbers cost nothing.
A kick (the local Ollama loaded or evicted a model) rebuilds it at once: peers place
by residency, and a round's delay is a window for each of them to load the model
somewhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

from meshlb.backend.catalog import LocalResidency
from meshlb.drivers.wakeup import Wakeup
from meshlb.mesh.candidates import candidate
from meshlb.mesh.meta import Load, Moves, NodeMeta, encode_meta
from meshlb.mesh.placement import Candidate
from meshlb.mesh.residency_watch import gossiped
from meshlb.sched.stats import SchedulerStats
from meshlb.tokens import RateAverage

ANNOUNCE_INTERVAL_S = 1.0
log = structlog.get_logger()


class MetaSink(Protocol):
    def update_meta(self, meta: bytes) -> None: ...


class SchedulerView(Protocol):
    def stats(self) -> SchedulerStats: ...


class ModelList(Protocol):
    """The local Ollama's models, as the catalog last read them."""

    @property
    def names(self) -> list[str]: ...
    @property
    def reachable(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class LocalStatus:
    """This node as it describes itself: where it listens, which process it is, and
    its live numbers (read on every call: the scheduler's, the catalog's, the rate)."""

    node_id: str
    http_addr: str
    boot: str  # random per process start: peers tell a restart from a slow node by it
    scheduler: SchedulerView
    catalog: ModelList
    generation_rate: RateAverage
    # What the local Ollama has loaded (issue 11; None: not gossiped) and --memory-gb.
    residency: LocalResidency | None = None
    memory_gb: float | None = None

    def meta(self, moves: Moves | None = None) -> NodeMeta:
        """This node's metadata right now; `moves` as counted so far (none yet: zeros)."""
        stats = self.scheduler.stats()
        limits = stats.limits
        return NodeMeta(
            http_addr=self.http_addr,
            models=tuple(self.catalog.names),
            ollama_up=self.catalog.reachable,
            load=Load(
                queued=stats.queued,
                running=stats.running,
                max_concurrency=stats.effective_concurrency,
                rpm_used=stats.rpm_used,
                rpm_limit=limits.rpm,
                tpm_used=stats.tpm_used,
                tpm_limit=limits.tpm,
                tokens_per_s=self.generation_rate.value,
            ),
            boot=self.boot,
            moves=moves if moves is not None else Moves(),
            **(gossiped(self.residency, self.memory_gb) if self.residency is not None else {}),
        )

    def candidate(self) -> Candidate:
        """This node as placement sees it, from its live numbers."""
        return candidate(self.node_id, self.meta(), is_local=True)


def local_moves(forwarded_requests: int, driver_moves: tuple[int, int, int, int]) -> Moves:
    """The moves this node gossips: Ollama-API requests it forwarded plus the ownership
    driver's (forwarded tasks, stolen, taken over, duplicates dropped)."""
    forwarded, stolen, taken_over, duplicates = driver_moves
    return Moves(forwarded_requests + forwarded, stolen, taken_over, duplicates)


async def announce_loop(
    meta: Callable[[], NodeMeta],
    sink: MetaSink,
    interval_s: float = ANNOUNCE_INTERVAL_S,
    kicks: Wakeup | None = None,
) -> None:
    """Forever: push changed metadata to gossip once per interval, or at once when
    `kicks` is kicked.

    A round that fails (a figure that cannot be encoded) is logged and skipped: the
    announcer must never take the node down with it."""
    wakeup = kicks if kicks is not None else Wakeup()
    last = b""
    while True:
        wakeup.rearm()
        try:
            data = encode_meta(meta())
        except Exception as e:  # one bad round must not kill the node
            log.error("node metadata could not be encoded; round skipped", error=repr(e))
        else:
            if data != last:
                sink.update_meta(data)
                last = data
        await wakeup.sleep_until(trio.current_time() + interval_s)
